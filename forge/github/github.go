// Package github shows refci's results on GitHub (and GitHub Enterprise
// Server): a commit status per request and one comment per pull request,
// through the REST API with a token (go-github). Configured as a GitHub
// App (NewApp), it shows each status as a check run with a Markdown
// summary instead.
//
// What the token needs: for a classic token, the repo:status scope for
// statuses and public_repo or repo to comment; for a fine-grained token,
// "Commit statuses: write", "Pull requests: write" and "Metadata: read"
// on the repository.
package github

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	gh "github.com/google/go-github/v93/github"

	"refci.dev/refci/forge"
	"refci.dev/refci/queue"
)

// Limits of GitHub's API that an adapter must respect (the REST API's
// documented validation: longer values are refused with 422).
const (
	DescriptionLimit = 140   // characters of a status description
	ContextLimit     = 255   // characters of a status context
	CommentLimit     = 65536 // characters of a comment body
)

// Config says which repository on which GitHub.
type Config struct {
	Repo  string // "owner/name"
	Token string // a personal access token (classic or fine-grained) or an installation token
	// BaseURL is the REST API's root for GitHub Enterprise Server
	// ("https://github.example.com/api/v3/"); "" is github.com.
	BaseURL string
	// HTTP is the client requests go through; nil is one with a 30 s
	// timeout per request.
	HTTP *http.Client
}

// Forge is one GitHub repository. Safe for concurrent use.
type Forge struct {
	c           *gh.Client
	owner, name string
	where       string  // "github.com org/app", for messages
	writes      *budget // the token's (or the installation's) content-creating requests
	// authHint and permHint say what to do about a refused token and a
	// missing permission; New's are for a token, NewApp's for an App.
	authHint, permHint string

	// As a GitHub App (NewApp; else nil): statuses are check runs.
	app    *appAuth
	runsMu sync.Mutex
	runs   map[string]int64 // "commit context" → the App's check run id
}

// New returns the adapter for cfg. It does not call GitHub.
func New(cfg Config) (*Forge, error) {
	owner, name, ok := strings.Cut(cfg.Repo, "/")
	if !ok || owner == "" || name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("github: repo %q: write it as owner/name", cfg.Repo)
	}
	if cfg.Token == "" {
		return nil, fmt.Errorf("github %s: no token; put one in token_file (see the README, 'Showing results on a forge')", cfg.Repo)
	}
	hc := cfg.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	opts := []gh.ClientOptionsFunc{gh.WithHTTPClient(hc), gh.WithAuthToken(cfg.Token), gh.WithUserAgent("refci")}
	host := "github.com"
	if cfg.BaseURL != "" {
		opts = append(opts, gh.WithEnterpriseURLs(cfg.BaseURL, cfg.BaseURL))
		host = strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(cfg.BaseURL, "https://"), "http://"), "/")
	}
	c, err := gh.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("github %s: %w", cfg.Repo, err)
	}
	return &Forge{c: c, owner: owner, name: name, where: "github " + host + " " + cfg.Repo, writes: budgetOf(host + "\x00" + cfg.Token),
		authHint: "check token_file (the token may have expired or been revoked)",
		permHint: "give the token the repo:status and public_repo (or repo) scopes, or, fine-grained, Commit statuses and Pull requests: write"}, nil
}

// write spends one content-creating request of the token's budget, or
// says until when to wait.
func (f *Forge) write(what string) error {
	if ok, until := f.writes.take(time.Now()); !ok {
		return &forge.RateLimitError{Until: until, Err: fmt.Errorf("%s: %s: waiting to stay under GitHub's limits on content-creating requests (%d a minute, %d an hour per token)", f.where, what, WritesPerMinute, WritesPerHour)}
	}
	return nil
}

// state maps a run's state to a GitHub status state. GitHub has no
// cancelled status: a cancelled run shows as error (not failure, which
// says the code is wrong), and its description says it was cancelled.
func state(s queue.State) (string, error) {
	switch s {
	case queue.Running:
		return "pending", nil
	case queue.Success:
		return "success", nil
	case queue.Failure:
		return "failure", nil
	case queue.Error, queue.Cancelled:
		return "error", nil
	}
	return "", fmt.Errorf("no GitHub status for state %q", s)
}

// SetStatus posts the status of (commit, s.Context); as a GitHub App, it
// creates or updates the App's check run of that name (setCheckRun).
func (f *Forge) SetStatus(ctx context.Context, commit string, s forge.Status) error {
	if f.app != nil {
		return f.setCheckRun(ctx, commit, s)
	}
	st, err := state(s.State)
	if err != nil {
		return fmt.Errorf("%s: %w", f.where, err)
	}
	desc := s.Description
	if s.State == queue.Cancelled && !strings.HasPrefix(strings.ToLower(desc), "cancelled") {
		desc = "cancelled: " + desc
	}
	rs := gh.RepoStatus{State: &st, Context: gh.Ptr(forge.OneLine(s.Context, ContextLimit)), Description: gh.Ptr(forge.OneLine(desc, DescriptionLimit))}
	if s.TargetURL != "" {
		rs.TargetURL = &s.TargetURL
	}
	if err := f.write("set the status of " + short(commit)); err != nil {
		return err
	}
	_, _, err = f.c.Repositories.CreateStatus(ctx, f.owner, f.name, commit, rs)
	return f.wrap("set the status of "+short(commit), err)
}

// PullRequestsOf returns the open pull requests whose head is commit.
func (f *Forge) PullRequestsOf(ctx context.Context, commit string) ([]forge.PullRequest, error) {
	var out []forge.PullRequest
	opts := &gh.ListOptions{PerPage: 100}
	for {
		prs, resp, err := f.c.PullRequests.ListPullRequestsWithCommit(ctx, f.owner, f.name, commit, opts)
		if err != nil {
			return nil, f.wrap("list the pull requests of "+short(commit), err)
		}
		for _, p := range prs {
			if p.GetState() == "open" && strings.EqualFold(p.GetHead().GetSHA(), commit) {
				out = append(out, pull(p))
			}
		}
		if resp.NextPage == 0 {
			return out, nil
		}
		opts.Page = resp.NextPage
	}
}

// OpenPullRequests lists the repository's open pull requests.
func (f *Forge) OpenPullRequests(ctx context.Context) ([]forge.PullRequest, error) {
	var out []forge.PullRequest
	opts := &gh.PullRequestListOptions{State: "open", ListOptions: gh.ListOptions{PerPage: 100}}
	for {
		prs, resp, err := f.c.PullRequests.List(ctx, f.owner, f.name, opts)
		if err != nil {
			return nil, f.wrap("list the open pull requests", err)
		}
		for _, p := range prs {
			out = append(out, pull(p))
		}
		if resp.NextPage == 0 {
			return out, nil
		}
		opts.Page = resp.NextPage
	}
}

// pull is a GitHub pull request in the mirror's words. A head whose
// repository is gone (a deleted fork) counts as a fork.
func pull(p *gh.PullRequest) forge.PullRequest {
	head, base := p.GetHead().GetRepo(), p.GetBase().GetRepo()
	return forge.PullRequest{
		Number: p.GetNumber(), Head: strings.ToLower(p.GetHead().GetSHA()), Title: p.GetTitle(), URL: p.GetHTMLURL(),
		Fork:    head == nil || !strings.EqualFold(head.GetFullName(), base.GetFullName()),
		HeadRef: p.GetHead().GetRef(),
	}
}

// UpsertComment makes body the one comment of pull request pr that holds
// marker (forge.UpsertOne). Comments are read 100 a page, every page.
func (f *Forge) UpsertComment(ctx context.Context, pr int, marker, body string) error {
	if !strings.Contains(body, marker) {
		return fmt.Errorf("%s: a comment must hold its marker", f.where)
	}
	body = forge.Cut(body, CommentLimit)
	if !strings.Contains(body, marker) {
		return fmt.Errorf("%s: a comment of %d characters would lose its marker when shortened to GitHub's %d; put the marker first", f.where, utf8.RuneCountInString(body), CommentLimit)
	}
	return forge.UpsertOne(ctx, prComments{f, pr}, marker, body)
}

// prComments is pull request pr's comments (forge.Comments).
type prComments struct {
	f  *Forge
	pr int
}

func (c prComments) Holding(ctx context.Context, marker string) ([]forge.Comment, error) {
	var out []forge.Comment
	opts := &gh.IssueListCommentsOptions{ListOptions: gh.ListOptions{PerPage: 100}}
	for {
		cs, resp, err := c.f.c.Issues.ListComments(ctx, c.f.owner, c.f.name, c.pr, opts)
		if err != nil {
			return nil, c.f.wrap(fmt.Sprintf("read the comments of pull request #%d", c.pr), err)
		}
		for _, cm := range cs {
			if strings.Contains(cm.GetBody(), marker) {
				out = append(out, forge.Comment{ID: cm.GetID(), Body: cm.GetBody()})
			}
		}
		if resp.NextPage == 0 {
			sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
			return out, nil
		}
		opts.Page = resp.NextPage
	}
}

func (c prComments) Create(ctx context.Context, body string) (int64, error) {
	what := fmt.Sprintf("comment on pull request #%d", c.pr)
	if err := c.f.write(what); err != nil {
		return 0, err
	}
	cm, _, err := c.f.c.Issues.CreateComment(ctx, c.f.owner, c.f.name, c.pr, gh.IssueCommentRequest{Body: body})
	return cm.GetID(), c.f.wrap(what, err)
}

func (c prComments) Edit(ctx context.Context, id int64, body string) error {
	what := fmt.Sprintf("edit the comment on pull request #%d", c.pr)
	if err := c.f.write(what); err != nil {
		return err
	}
	_, _, err := c.f.c.Issues.UpdateComment(ctx, c.f.owner, c.f.name, id, gh.IssueCommentRequest{Body: body})
	return c.f.wrap(what, err)
}

func (c prComments) Delete(ctx context.Context, id int64) error {
	_, err := c.f.c.Issues.DeleteComment(ctx, c.f.owner, c.f.name, id)
	return c.f.wrap(fmt.Sprintf("delete a copy of the comment on pull request #%d", c.pr), err)
}

// wrap says what failed, where, and what to do, wrapping the forge error
// the mirror branches on.
func (f *Forge) wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	var rl *gh.RateLimitError
	var ab *gh.AbuseRateLimitError
	var er *gh.ErrorResponse
	var te *tokenError
	switch {
	case errors.As(err, &te) && !errors.As(err, &rl) && !errors.As(err, &ab):
		return fmt.Errorf("%s: %s: %w", f.where, what, te) // a GitHub App's token, not the request, failed
	case errors.As(err, &rl):
		until := rl.Rate.Reset.Time
		if until.IsZero() {
			until = time.Now().Add(time.Minute)
		}
		return &forge.RateLimitError{Until: until, Err: fmt.Errorf("%s: %s: the token's hourly limit is used up (%d requests)", f.where, what, rl.Rate.Limit)}
	case errors.As(err, &ab):
		until := time.Now().Add(time.Minute) // no Retry-After: at least a minute
		if ab.RetryAfter != nil {
			until = time.Now().Add(*ab.RetryAfter)
		}
		return &forge.RateLimitError{Until: until, Err: fmt.Errorf("%s: %s: GitHub's secondary rate limit (about 80 comments or statuses a minute and 500 an hour): %s", f.where, what, ab.Message)}
	case errors.As(err, &er) && er.Response != nil:
		switch code := er.Response.StatusCode; code {
		case http.StatusUnauthorized:
			return fmt.Errorf("%s: %s: %w: %s", f.where, what, forge.ErrAuth, f.authHint)
		case http.StatusForbidden:
			if strings.Contains(strings.ToLower(er.Message), "rate limit") || er.Response.Header.Get("Retry-After") != "" {
				// A secondary limit not told by its documentation URL.
				return &forge.RateLimitError{Until: retryAfter(er.Response), Err: fmt.Errorf("%s: %s: GitHub's secondary rate limit: %s", f.where, what, er.Message)}
			}
			return fmt.Errorf("%s: %s: %w (%s): %s", f.where, what, forge.ErrPermission, er.Message, f.permHint)
		case http.StatusNotFound:
			return fmt.Errorf("%s: %s: %w: check repo = \"owner/name\" and that the token may see the repository", f.where, what, forge.ErrNotFound)
		case http.StatusTooManyRequests:
			return &forge.RateLimitError{Until: retryAfter(er.Response), Err: fmt.Errorf("%s: %s: too many requests", f.where, what)}
		default:
			return fmt.Errorf("%s: %s: GitHub answered %d: %s", f.where, what, code, er.Message)
		}
	}
	return fmt.Errorf("%s: %s: %w", f.where, what, err)
}

// retryAfter is when the response says to try again: its Retry-After, else
// a minute from now (GitHub: wait at least a minute).
func retryAfter(r *http.Response) time.Time {
	if s, err := strconv.Atoi(r.Header.Get("Retry-After")); err == nil && s > 0 {
		return time.Now().Add(time.Duration(s) * time.Second)
	}
	return time.Now().Add(time.Minute)
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}
