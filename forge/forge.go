// Package forge shows signed results outward, on the forges where people
// read them: a commit status per request on every run's commit, and one
// comment per pull request, edited in place as its runs progress. Forges
// are views, never the source of truth: a forge that is down, slow or
// rate-limiting never blocks or loses a run, and the mirror catches up
// when it returns.
//
// Each forge has an adapter in a package of its own (forge/gitea,
// forge/github, forge/gitlab) that implements Forge for one repository;
// cmd lists them explicitly. The mirror (built on results.WatchRuns)
// decides what to send and when; adapters only speak their forge's API.
package forge

import (
	"context"
	"errors"
	"fmt"
	"time"

	"refci.dev/refci/queue"
)

// Status is a commit status as refci shows it, before an adapter maps it
// to its forge's words and limits. A plain value.
type Status struct {
	// Context names the status on the commit: "refci/<request>".
	Context string
	// State is the run's: running, success, failure, error or cancelled
	// (a lost run that was taken over shows the takeover's state). Each
	// adapter maps it to its forge's states, keeping error (the machine)
	// apart from failure (the code).
	State queue.State
	// Description is one line; the adapter shortens it to its forge's
	// limit.
	Description string
	// TargetURL is the run's page, when a public URL is known; else "".
	TargetURL string
	// Summary is the run in Markdown, for forges that show more than a
	// line (GitHub check runs); "" shows the description instead.
	Summary string
}

// PullRequest is an open pull (or merge) request. A plain value.
type PullRequest struct {
	Number  int    // the number (GitLab: the merge request's iid)
	Head    string // the full hex id of its head commit
	Title   string
	URL     string // its web page
	Fork    bool   // its head is in another repository than its base
	HeadRef string // the head branch's name, informational
}

// Forge is one repository on one forge, as the mirror uses it. Adapters
// are safe for concurrent use. Errors wrap ErrAuth, ErrPermission,
// ErrNotFound or a *RateLimitError where the forge said so, for the
// mirror to report once and to pause.
type Forge interface {
	// SetStatus sets the status of (commit, s.Context). The mirror never
	// sends a state the forge already shows.
	SetStatus(ctx context.Context, commit string, s Status) error
	// PullRequestsOf returns the open pull requests whose head is commit.
	PullRequestsOf(ctx context.Context, commit string) ([]PullRequest, error)
	// UpsertComment makes body the one comment on pull request pr that
	// holds marker (a hidden line the mirror puts in body): it edits the
	// comment holding it when there is one, else creates it.
	UpsertComment(ctx context.Context, pr int, marker, body string) error
}

// PullRequestLister lists a repository's open pull requests, for taking
// them in as requests.
type PullRequestLister interface {
	OpenPullRequests(ctx context.Context) ([]PullRequest, error)
}

// Errors adapters wrap, for the mirror to say what to do once per
// problem.
var (
	ErrAuth       = errors.New("the forge refused the token")
	ErrPermission = errors.New("the token lacks a permission")
	ErrNotFound   = errors.New("no such repository, commit or pull request")
)

// RateLimitError is the forge asking to wait until Until before sending
// more (Retry-After, a reset header, or a backoff for a secondary limit).
type RateLimitError struct {
	Until time.Time
	Err   error // the forge's answer
}

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("rate limited until %s: %v", e.Until.UTC().Format(time.RFC3339), e.Err)
}

func (e *RateLimitError) Unwrap() error { return e.Err }
