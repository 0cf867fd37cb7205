// Package forgetest is for tests only: an in-memory forge that keeps a
// forge's semantics and records every call (Fake), and the contract
// every forge adapter passes (Contract), run against the fake here and
// against each adapter's real or stand-in forge in its own tests.
package forgetest

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"refci.dev/refci/forge"
)

// Failure is what the fake answers every call with while it is set.
type Failure int

const (
	OK          Failure = iota
	Auth                // 401: wraps forge.ErrAuth
	Permission          // 403: wraps forge.ErrPermission
	NotFound            // 404: wraps forge.ErrNotFound
	RateLimited         // 429: a *forge.RateLimitError until the time set with FailWith
	Down                // 502: an outage, a plain error
)

// DescriptionLimit is the most characters of a status description the
// fake keeps, as GitHub (the strictest forge); longer ones are shortened
// as an adapter does.
const DescriptionLimit = 140

// Call is one call the fake received.
type Call struct {
	Method string // SetStatus, PullRequestsOf, UpsertComment, OpenPullRequests
	Commit string
	PR     int
	Status forge.Status
	Body   string
	Err    error // what the fake answered
}

// StatusRecord is one status as the forge keeps it: every SetStatus adds
// a row, as on GitHub and Gitea.
type StatusRecord struct {
	forge.Status
	At time.Time
}

// Comment is one comment on a pull request.
type Comment struct {
	ID    int
	Body  string
	Edits int
}

// Fake is an in-memory forge.Forge and forge.PullRequestLister of one
// repository. The zero value is not ready; use NewFake. Safe for
// concurrent use.
type Fake struct {
	mu       sync.Mutex
	calls    []Call
	statuses map[string][]StatusRecord // by commit, oldest first
	prs      map[int]*fakePR
	nextID   int
	fail     Failure
	until    time.Time
	commits  int
}

type fakePR struct {
	forge.PullRequest
	open     bool
	comments []*Comment
}

// NewFake returns an empty forge that answers every call.
func NewFake() *Fake {
	return &Fake{statuses: map[string][]StatusRecord{}, prs: map[int]*fakePR{}, nextID: 1}
}

// FailWith makes every later call fail as f says (OK to answer again);
// until is the end of a rate limit.
func (f *Fake) FailWith(fl Failure, until time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail, f.until = fl, until
}

// NewCommit returns a new commit id (Controls): the fake takes any.
func (f *Fake) NewCommit(context.Context) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.commits++
	return fmt.Sprintf("%040x", 0xc0ffee000+f.commits), nil
}

// OpenPullRequest opens a pull request whose head is head and returns
// its number (Controls).
func (f *Fake) OpenPullRequest(_ context.Context, head string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.prs) + 1
	f.prs[n] = &fakePR{PullRequest: forge.PullRequest{Number: n, Head: head, Title: fmt.Sprintf("change %d", n),
		URL: fmt.Sprintf("https://forge.example.invalid/org/app/pulls/%d", n), HeadRef: fmt.Sprintf("topic-%d", n)}, open: true}
	return n, nil
}

// ClosePullRequest closes pull request n (Controls).
func (f *Fake) ClosePullRequest(_ context.Context, n int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.prs[n]
	if p == nil {
		return fmt.Errorf("fake forge: no pull request %d: %w", n, forge.ErrNotFound)
	}
	p.open = false
	return nil
}

// Statuses returns every status set on commit, oldest first (Controls);
// the fake's words for states are refci's.
func (f *Fake) Statuses(_ context.Context, commit string) ([]Seen, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Seen
	for _, r := range f.statuses[commit] {
		out = append(out, Seen{Context: r.Context, State: string(r.State), Description: r.Description, TargetURL: r.TargetURL})
	}
	return out, nil
}

// StatusesOf returns every status set on commit, oldest first, as sent.
func (f *Fake) StatusesOf(commit string) []forge.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []forge.Status
	for _, r := range f.statuses[commit] {
		out = append(out, r.Status)
	}
	return out
}

// Refused returns a forge of the same repository whose token is refused
// (Controls).
func (f *Fake) Refused() forge.Forge {
	g := NewFake()
	g.FailWith(Auth, time.Time{})
	return g
}

// Missing returns a forge of a repository that does not exist
// (Controls).
func (f *Fake) Missing() forge.Forge {
	g := NewFake()
	g.FailWith(NotFound, time.Time{})
	return g
}

// Comments returns the bodies of pull request n's comments, oldest first
// (Controls).
func (f *Fake) Comments(_ context.Context, n int) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.prs[n]
	if p == nil {
		return nil, fmt.Errorf("pull request %d: %w", n, forge.ErrNotFound)
	}
	var out []string
	for _, c := range p.comments {
		out = append(out, c.Body)
	}
	return out, nil
}

// CommentEdits returns how many times each comment of pull request n was
// edited after it was made.
func (f *Fake) CommentEdits(n int) []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int
	if p := f.prs[n]; p != nil {
		for _, c := range p.comments {
			out = append(out, c.Edits)
		}
	}
	return out
}

// Calls returns every call received so far, in order.
func (f *Fake) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Call(nil), f.calls...)
}

// Count returns how many calls of method were answered without an error.
func (f *Fake) Count(method string) int {
	n := 0
	for _, c := range f.Calls() {
		if c.Method == method && c.Err == nil {
			n++
		}
	}
	return n
}

// answer records c and returns the failure set, if any. Called with mu
// held.
func (f *Fake) answer(c Call) error {
	var err error
	switch f.fail {
	case Auth:
		err = fmt.Errorf("fake forge: 401 Bad credentials: %w", forge.ErrAuth)
	case Permission:
		err = fmt.Errorf("fake forge: 403 Resource not accessible by token: %w", forge.ErrPermission)
	case NotFound:
		err = fmt.Errorf("fake forge: 404 Not Found: %w", forge.ErrNotFound)
	case RateLimited:
		if time.Now().Before(f.until) {
			err = &forge.RateLimitError{Until: f.until, Err: fmt.Errorf("fake forge: 429 Too Many Requests")}
		}
	case Down:
		err = fmt.Errorf("fake forge: 502 Bad Gateway")
	}
	c.Err = err
	f.calls = append(f.calls, c)
	return err
}

// SetStatus adds a status row to commit.
func (f *Fake) SetStatus(ctx context.Context, commit string, s forge.Status) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.answer(Call{Method: "SetStatus", Commit: commit, Status: s}); err != nil {
		return err
	}
	if !validCommit(commit) {
		return fmt.Errorf("fake forge: 422 no commit %q: %w", commit, forge.ErrNotFound)
	}
	if r := []rune(s.Description); len(r) > DescriptionLimit { // as an adapter shortens it
		s.Description = string(r[:DescriptionLimit-1]) + "…"
	}
	f.statuses[commit] = append(f.statuses[commit], StatusRecord{Status: s, At: time.Now()})
	return nil
}

// PullRequestsOf returns the open pull requests whose head is commit.
func (f *Fake) PullRequestsOf(ctx context.Context, commit string) ([]forge.PullRequest, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.answer(Call{Method: "PullRequestsOf", Commit: commit}); err != nil {
		return nil, err
	}
	var out []forge.PullRequest
	for _, p := range f.prs {
		if p.open && p.Head == commit {
			out = append(out, p.PullRequest)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Number < out[j].Number })
	return out, nil
}

// UpsertComment edits the comment of pr holding marker, or adds one.
func (f *Fake) UpsertComment(ctx context.Context, pr int, marker, body string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.answer(Call{Method: "UpsertComment", PR: pr, Body: body}); err != nil {
		return err
	}
	p := f.prs[pr]
	if p == nil {
		return fmt.Errorf("fake forge: 404 no pull request %d: %w", pr, forge.ErrNotFound)
	}
	if len(body) > 65536 {
		return fmt.Errorf("fake forge: 422 body is too long (%d characters, at most 65536)", len(body))
	}
	for _, c := range p.comments {
		if strings.Contains(c.Body, marker) {
			c.Body = body
			c.Edits++
			return nil
		}
	}
	p.comments = append(p.comments, &Comment{ID: f.nextID, Body: body})
	f.nextID++
	return nil
}

// OpenPullRequests lists the open pull requests.
func (f *Fake) OpenPullRequests(ctx context.Context) ([]forge.PullRequest, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.answer(Call{Method: "OpenPullRequests"}); err != nil {
		return nil, err
	}
	var out []forge.PullRequest
	for _, p := range f.prs {
		if p.open {
			out = append(out, p.PullRequest)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Number < out[j].Number })
	return out, nil
}

func validCommit(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

var (
	_ forge.Forge             = (*Fake)(nil)
	_ forge.PullRequestLister = (*Fake)(nil)
	_ Controls                = (*Fake)(nil)
)
