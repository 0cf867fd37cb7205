// Package gitlab shows refci's results on GitLab (gitlab.com or a
// self-managed instance): a commit status per request and one note per
// merge request, through the REST API v4 with a token (client-go).
//
// The token needs the api scope (a project access token with the
// Developer role or more), since commit statuses are written.
package gitlab

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	gl "gitlab.com/gitlab-org/api/client-go/v2"

	"refci.dev/refci/forge"
	"refci.dev/refci/queue"
)

// Limits of GitLab's API: longer values are refused with 400.
const (
	FieldLimit = 255       // characters of a status's description, ref and target URL
	NoteLimit  = 1_000_000 // characters of a note
)

// Config says which project on which GitLab.
type Config struct {
	Project string // the project's path, "group/subgroup/name"
	Token   string
	// BaseURL is the instance's root ("https://gitlab.example.org");
	// "" is gitlab.com.
	BaseURL string
	// HTTP is the client requests go through; nil is one with a 30 s
	// timeout per request.
	HTTP *http.Client
}

// Forge is one GitLab project. Safe for concurrent use.
type Forge struct {
	c       *gl.Client
	project string
	where   string
}

// New returns the adapter for cfg. It does not call GitLab. The client
// retries at most twice, and a POST (which could post a note twice) only
// when GitLab refused it unprocessed (429).
func New(cfg Config) (*Forge, error) {
	if cfg.Project == "" || !strings.Contains(cfg.Project, "/") || strings.HasPrefix(cfg.Project, "/") || strings.HasSuffix(cfg.Project, "/") {
		return nil, fmt.Errorf("gitlab: repo %q: write the project's path, group/name", cfg.Project)
	}
	if cfg.Token == "" {
		return nil, fmt.Errorf("gitlab %s: no token; put one in token_file (see the README, 'Showing results on a forge')", cfg.Project)
	}
	hc := cfg.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	opts := []gl.ClientOptionFunc{gl.WithHTTPClient(hc), gl.WithOnlyIdempotentRetries(), gl.WithCustomRetryMax(2),
		gl.WithCustomBackoff(retryWait), gl.WithUserAgent("refci")}
	host := "gitlab.com"
	if cfg.BaseURL != "" {
		opts = append(opts, gl.WithBaseURL(cfg.BaseURL))
		host = strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(cfg.BaseURL, "https://"), "http://"), "/")
	}
	c, err := gl.NewClient(cfg.Token, opts...)
	if err != nil {
		return nil, fmt.Errorf("gitlab %s: %w", cfg.Project, err)
	}
	return &Forge{c: c, project: cfg.Project, where: "gitlab " + host + " " + cfg.Project}, nil
}

// state maps a run's state to a GitLab commit status. GitLab has no
// state for refci's error (the machine, not the code): failed would blame
// the code, so it shows as canceled (not success, and not red), and its
// description says "error".
func state(s queue.State) (gl.BuildStateValue, error) {
	switch s {
	case queue.Running:
		return gl.Running, nil
	case queue.Success:
		return gl.Success, nil
	case queue.Failure:
		return gl.Failed, nil
	case queue.Error, queue.Cancelled:
		return gl.Canceled, nil
	}
	return "", fmt.Errorf("no GitLab status for state %q", s)
}

// SetStatus posts the status of (commit, s.Context). GitLab refuses to
// post the state a status already has (400 "Cannot transition status");
// then the status shows what was asked, and SetStatus succeeds.
func (f *Forge) SetStatus(ctx context.Context, commit string, s forge.Status) error {
	st, err := state(s.State)
	if err != nil {
		return fmt.Errorf("%s: %w", f.where, err)
	}
	desc := s.Description
	if s.State == queue.Error && !strings.HasPrefix(strings.ToLower(desc), "error") {
		desc = "error: " + desc
	}
	name := forge.OneLine(s.Context, FieldLimit)
	opt := &gl.SetCommitStatusOptions{State: st, Name: &name, Description: gl.Ptr(forge.OneLine(desc, FieldLimit))}
	if u := s.TargetURL; u != "" && utf8.RuneCountInString(u) <= FieldLimit && (strings.HasPrefix(u, "https://") || strings.HasPrefix(u, "http://")) {
		opt.TargetURL = &u
	}
	_, _, err = f.c.Commits.SetCommitStatus(f.project, commit, opt, gl.WithContext(ctx))
	if code, msg := answer(err); code == http.StatusBadRequest && strings.Contains(msg, "Cannot transition status") {
		cur, cerr := f.current(ctx, commit, name)
		if cerr == nil && cur == string(st) {
			return nil // it shows that state already
		}
	}
	return f.wrap("set the status of "+short(commit), err)
}

// current is the state of the newest status of commit named name, or "".
func (f *Forge) current(ctx context.Context, commit, name string) (string, error) {
	sts, _, err := f.c.Commits.GetCommitStatuses(f.project, commit, &gl.GetCommitStatusesOptions{Name: &name, ListOptions: gl.ListOptions{PerPage: 100}}, gl.WithContext(ctx))
	if err != nil {
		return "", err
	}
	var newest *gl.CommitStatus
	for _, s := range sts {
		if s.Name == name && (newest == nil || s.ID > newest.ID) {
			newest = s
		}
	}
	if newest == nil {
		return "", nil
	}
	return newest.Status, nil
}

// PullRequestsOf returns the open merge requests whose head is commit.
func (f *Forge) PullRequestsOf(ctx context.Context, commit string) ([]forge.PullRequest, error) {
	mrs, _, err := f.c.Commits.ListMergeRequestsByCommit(f.project, commit, gl.WithContext(ctx))
	if err != nil {
		return nil, f.wrap("list the merge requests of "+short(commit), err)
	}
	var out []forge.PullRequest
	for _, m := range mrs {
		if m.State == "opened" && strings.EqualFold(m.SHA, commit) {
			out = append(out, mr(m))
		}
	}
	return out, nil
}

// OpenPullRequests lists the project's open merge requests.
func (f *Forge) OpenPullRequests(ctx context.Context) ([]forge.PullRequest, error) {
	var out []forge.PullRequest
	opt := &gl.ListProjectMergeRequestsOptions{State: gl.Ptr("opened"), ListOptions: gl.ListOptions{PerPage: 100}}
	for {
		mrs, resp, err := f.c.MergeRequests.ListProjectMergeRequests(f.project, opt, gl.WithContext(ctx))
		if err != nil {
			return nil, f.wrap("list the open merge requests", err)
		}
		for _, m := range mrs {
			out = append(out, mr(m))
		}
		if resp.NextPage == 0 {
			return out, nil
		}
		opt.Page = resp.NextPage
	}
}

func mr(m *gl.BasicMergeRequest) forge.PullRequest {
	return forge.PullRequest{Number: int(m.IID), Head: strings.ToLower(m.SHA), Title: m.Title, URL: m.WebURL,
		Fork: m.SourceProjectID != m.TargetProjectID, HeadRef: m.SourceBranch}
}

// UpsertComment makes body the one note of merge request pr that holds
// marker (forge.UpsertOne); system notes are never refci's.
func (f *Forge) UpsertComment(ctx context.Context, pr int, marker, body string) error {
	if !strings.Contains(body, marker) {
		return fmt.Errorf("%s: a note must hold its marker", f.where)
	}
	return forge.UpsertOne(ctx, mrNotes{f, int64(pr)}, marker, forge.Cut(body, NoteLimit))
}

// mrNotes is merge request iid's notes (forge.Comments).
type mrNotes struct {
	f   *Forge
	iid int64
}

func (n mrNotes) Holding(ctx context.Context, marker string) ([]forge.Comment, error) {
	var out []forge.Comment
	opt := &gl.ListMergeRequestNotesOptions{ListOptions: gl.ListOptions{PerPage: 100}, Sort: gl.Ptr("asc"), OrderBy: gl.Ptr("created_at")}
	for {
		notes, resp, err := n.f.c.Notes.ListMergeRequestNotes(n.f.project, n.iid, opt, gl.WithContext(ctx))
		if err != nil {
			return nil, n.f.wrap(fmt.Sprintf("read the notes of merge request !%d", n.iid), err)
		}
		for _, note := range notes {
			if !note.System && strings.Contains(note.Body, marker) {
				out = append(out, forge.Comment{ID: note.ID, Body: note.Body})
			}
		}
		if resp.NextPage == 0 {
			sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
			return out, nil
		}
		opt.Page = resp.NextPage
	}
}

func (n mrNotes) Create(ctx context.Context, body string) (int64, error) {
	note, _, err := n.f.c.Notes.CreateMergeRequestNote(n.f.project, n.iid, &gl.CreateMergeRequestNoteOptions{Body: &body}, gl.WithContext(ctx))
	if err != nil {
		return 0, n.f.wrap(fmt.Sprintf("comment on merge request !%d", n.iid), err)
	}
	return note.ID, nil
}

func (n mrNotes) Edit(ctx context.Context, id int64, body string) error {
	_, _, err := n.f.c.Notes.UpdateMergeRequestNote(n.f.project, n.iid, id, &gl.UpdateMergeRequestNoteOptions{Body: &body}, gl.WithContext(ctx))
	return n.f.wrap(fmt.Sprintf("edit the note on merge request !%d", n.iid), err)
}

func (n mrNotes) Delete(ctx context.Context, id int64) error {
	_, err := n.f.c.Notes.DeleteMergeRequestNote(n.f.project, n.iid, id, gl.WithContext(ctx))
	return n.f.wrap(fmt.Sprintf("delete a copy of the note on merge request !%d", n.iid), err)
}

// wrap says what failed, where, and what to do, wrapping the forge error
// the mirror branches on.
func (f *Forge) wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	code, msg := answer(err)
	if code == 0 {
		return fmt.Errorf("%s: %s: %w", f.where, what, err)
	}
	var er *gl.ErrorResponse
	errors.As(err, &er)
	switch code {
	case http.StatusUnauthorized:
		return fmt.Errorf("%s: %s: %w: check token_file (the token may have expired or been revoked)", f.where, what, forge.ErrAuth)
	case http.StatusForbidden:
		return fmt.Errorf("%s: %s: %w: give the token the api scope and the Developer role on the project", f.where, what, forge.ErrPermission)
	case http.StatusNotFound:
		return fmt.Errorf("%s: %s: %w: check repo = \"group/name\" and that the token may see the project", f.where, what, forge.ErrNotFound)
	case http.StatusTooManyRequests:
		return &forge.RateLimitError{Until: resetAt(er.Response), Err: fmt.Errorf("%s: %s: too many requests (the client tried twice more)", f.where, what)}
	case http.StatusConflict:
		return fmt.Errorf("%s: %s: another update of it is in progress (409); it is tried again", f.where, what)
	}
	return fmt.Errorf("%s: %s: GitLab answered %d: %s", f.where, what, code, msg)
}

// answer is the HTTP status and message of a GitLab error; 0 for an
// error that is no answer of GitLab's (the network).
func answer(err error) (int, string) {
	var er *gl.ErrorResponse
	if !errors.As(err, &er) {
		return 0, ""
	}
	code := er.StatusCode
	if er.Response != nil {
		code = er.Response.StatusCode
	}
	return code, er.Message
}

// maxRetryWait bounds the client's own wait before it retries a call
// (client-go waits until a 429's RateLimit-Reset, however far): a reset
// further off is not waited out inside the call, which then fails with
// forge.RateLimitError, and the mirror pauses this forge instead,
// without holding a call open.
const maxRetryWait = 5 * time.Second

// retryWait is the client's wait before retry attempt of a call: until
// the reset a 429 names, else exponential from lo, with jitter up to hi;
// at most maxRetryWait.
func retryWait(lo, hi time.Duration, attempt int, resp *http.Response) time.Duration {
	w := lo << attempt
	if resp != nil && resp.StatusCode == http.StatusTooManyRequests {
		w = max(w, time.Until(resetAt(resp)))
	}
	if hi > lo {
		w += time.Duration(rand.Int64N(int64(hi - lo)))
	}
	return min(w, maxRetryWait)
}

// resetAt is when GitLab says to try again: Retry-After, else
// RateLimit-Reset, else a minute from now.
func resetAt(r *http.Response) time.Time {
	if r == nil {
		return time.Now().Add(time.Minute)
	}
	if s, err := strconv.Atoi(r.Header.Get("Retry-After")); err == nil && s > 0 {
		return time.Now().Add(time.Duration(s) * time.Second)
	}
	if t, err := strconv.ParseInt(r.Header.Get("RateLimit-Reset"), 10, 64); err == nil && t > 0 {
		return time.Unix(t, 0)
	}
	return time.Now().Add(time.Minute)
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}
