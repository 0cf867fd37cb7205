// Package gitea is the forge adapter for Gitea and Forgejo: commit
// statuses, the one sticky comment on a pull request, and the open pull
// requests of a repository, through Gitea's REST API (/api/v1), which
// Forgejo serves too.
//
// It uses the Gitea SDK built without its connect-on-create call (no
// request until the first status), one SDK client per call bound to the
// caller's context, and an HTTP client with a timeout as a guard.
//
// A real Gitea accepts any status state and any description and keeps a
// row per status it is sent: it never stops an adapter from spamming it,
// so this adapter keeps to Gitea's documented states and to one short
// line, and the mirror decides what is worth sending.
package gitea

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	sdk "code.gitea.io/sdk/gitea"

	"refci.dev/refci/forge"
	"refci.dev/refci/queue"
)

// Config says which repository on which Gitea or Forgejo an adapter
// shows. The zero value is not usable: BaseURL, Repo and Token are
// required.
type Config struct {
	// BaseURL is the forge's web address, such as
	// "https://codeberg.org" or "http://127.0.0.1:3000", without /api/v1.
	BaseURL string
	// Repo is "owner/name".
	Repo string
	// Token is an access token with the scopes write:repository (commit
	// statuses, pull requests) and write:issue (comments).
	Token string
	// HTTPClient sends the requests; nil means a client with a timeout of
	// DefaultTimeout. Its Timeout bounds every call.
	HTTPClient *http.Client
	// Name is the forge's name in error messages: "" means "Gitea" (say
	// "Forgejo" for a Forgejo).
	Name string
}

// DefaultTimeout bounds each API call when Config.HTTPClient is nil.
const DefaultTimeout = 30 * time.Second

// MaxDescription is the most characters of a status description this
// adapter sends: Gitea takes anything, but one line of at most 140
// characters (GitHub's limit) keeps its commit and pull request pages
// readable.
const MaxDescription = 140

// pageSize is the number of items asked per page: Gitea's default
// MAX_RESPONSE_ITEMS is 50; a server that sends fewer per page is
// followed by its Link header.
const pageSize = 50

// rateLimitBackoff is how long to pause on a 429 without Retry-After.
const rateLimitBackoff = time.Minute

// Forge is one repository on one Gitea or Forgejo. It implements
// forge.Forge and forge.PullRequestLister. Safe for concurrent use; it
// keeps no state between calls. Errors wrap forge.ErrAuth (401),
// forge.ErrPermission (403), forge.ErrNotFound (404) or are a
// *forge.RateLimitError (429), and otherwise name the HTTP status or the
// network error; a cancelled context gives the context's error.
type Forge struct {
	base        string
	owner, name string
	token       string
	http        *http.Client
	forgeName   string
}

var (
	_ forge.Forge             = (*Forge)(nil)
	_ forge.PullRequestLister = (*Forge)(nil)
)

// New returns the adapter for cfg. It sends nothing: a wrong URL or token
// shows in the first call's error.
func New(cfg Config) (*Forge, error) {
	u, err := url.Parse(cfg.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("gitea: base URL %q is not an http(s) address such as https://gitea.example.com", cfg.BaseURL)
	}
	owner, name, ok := strings.Cut(cfg.Repo, "/")
	if !ok || owner == "" || name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("gitea: repository %q is not owner/name", cfg.Repo)
	}
	if cfg.Token == "" {
		return nil, fmt.Errorf("gitea: no token for %s on %s: give it an access token with the write:repository and write:issue scopes", cfg.Repo, cfg.BaseURL)
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: DefaultTimeout}
	}
	fn := cfg.Name
	if fn == "" {
		fn = "Gitea"
	}
	return &Forge{
		base:      strings.TrimSuffix(strings.TrimSuffix(cfg.BaseURL, "/"), "/api/v1"),
		owner:     owner,
		name:      name,
		token:     cfg.Token,
		http:      hc,
		forgeName: fn,
	}, nil
}

// client returns an SDK client whose requests carry ctx. The SDK's calls
// take no context of their own; a client is a small struct and, with
// SetGiteaVersion(""), costs no request to make.
func (f *Forge) client(ctx context.Context) (*sdk.Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return sdk.NewClient(f.base,
		sdk.SetGiteaVersion(""),
		sdk.SetToken(f.token),
		sdk.SetHTTPClient(f.http),
		sdk.SetContext(ctx),
		sdk.SetUserAgent("refci"),
	)
}

// State maps a run's state to Gitea's. Gitea has no cancelled state:
// a cancelled run is shown as "warning", not "error" (which says the
// machine failed) nor "failure" (which says the code did), and not
// "skipped" (which Gitea counts as a success, and Forgejo lacks). Gitea
// draws a warning amber and combines it as not passing, so a cancelled
// run never lets a pull request look green.
func State(s queue.State) sdk.StatusState {
	switch s {
	case queue.Success:
		return sdk.StatusSuccess
	case queue.Failure:
		return sdk.StatusFailure
	case queue.Error:
		return sdk.StatusError
	case queue.Cancelled:
		return sdk.StatusWarning
	default: // running, and anything not final
		return sdk.StatusPending
	}
}

// Description returns s as Gitea is sent it: one line (control
// characters and runs of white space become one space) of at most
// MaxDescription characters, cut with "…" when longer.
func Description(s string) string {
	var b strings.Builder
	space := false
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			space = b.Len() > 0
			continue
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		b.WriteRune(r)
	}
	out := b.String()
	if utf8.RuneCountInString(out) <= MaxDescription {
		return out
	}
	runes := []rune(out)
	return strings.TrimRightFunc(string(runes[:MaxDescription-1]), unicode.IsSpace) + "…"
}

// SetStatus adds a status to commit with context s.Context. Gitea keeps
// every status it is sent and shows the newest per context.
func (f *Forge) SetStatus(ctx context.Context, commit string, s forge.Status) error {
	c, err := f.client(ctx)
	if err != nil {
		return err
	}
	_, resp, err := c.CreateStatus(f.owner, f.name, commit, sdk.CreateStatusOption{
		State:       State(s.State),
		TargetURL:   s.TargetURL,
		Description: Description(s.Description),
		Context:     s.Context,
	})
	if err != nil {
		return f.fail(ctx, "set status "+s.Context+" on "+short(commit), resp, err)
	}
	return nil
}

// PullRequestsOf returns the open pull requests whose head is commit. It
// lists the repository's open pull requests (one call per page of 50,
// or of the server's MAX_RESPONSE_ITEMS when smaller), since Gitea has no
// search by head commit.
func (f *Forge) PullRequestsOf(ctx context.Context, commit string) ([]forge.PullRequest, error) {
	all, err := f.OpenPullRequests(ctx)
	if err != nil {
		return nil, err
	}
	var out []forge.PullRequest
	for _, pr := range all {
		if strings.EqualFold(pr.Head, commit) {
			out = append(out, pr)
		}
	}
	return out, nil
}

// OpenPullRequests lists the repository's open pull requests, oldest
// first, all pages (one call per page of 50, or of the server's
// MAX_RESPONSE_ITEMS when smaller). A pull request from another
// repository (a fork) has Fork set.
func (f *Forge) OpenPullRequests(ctx context.Context) ([]forge.PullRequest, error) {
	var out []forge.PullRequest
	for page := 1; ; page++ {
		c, err := f.client(ctx)
		if err != nil {
			return nil, err
		}
		prs, resp, err := c.ListRepoPullRequests(f.owner, f.name, sdk.ListPullRequestsOptions{
			ListOptions: sdk.ListOptions{Page: page, PageSize: pageSize},
			State:       sdk.StateOpen,
			Sort:        "oldest",
		})
		if err != nil {
			return nil, f.fail(ctx, "list open pull requests", resp, err)
		}
		for _, pr := range prs {
			if pr == nil || pr.Head == nil || pr.State != sdk.StateOpen {
				continue
			}
			p := forge.PullRequest{
				Number:  int(pr.Index),
				Head:    pr.Head.Sha,
				Title:   pr.Title,
				URL:     pr.HTMLURL,
				HeadRef: pr.Head.Ref,
			}
			if pr.Base != nil {
				p.Fork = pr.Head.RepoID != pr.Base.RepoID
			}
			out = append(out, p)
		}
		if len(prs) == 0 || resp == nil || resp.NextPage == 0 {
			return out, nil
		}
	}
}

// UpsertComment makes body the one comment on pull request pr that holds
// marker. It reads the pull request's comments (all pages) and edits the
// oldest that holds marker (unless it already says body), else creates
// one. Copies that a race left (two mirrors creating at once, each seeing
// none) are deleted: after creating, it reads the comments again, and
// every caller keeps the oldest copy and deletes the others, so racing
// callers converge on one comment. Calls: one list per page, plus one
// edit, or one create, one list and one delete per extra copy.
func (f *Forge) UpsertComment(ctx context.Context, pr int, marker, body string) error {
	if marker == "" || !strings.Contains(body, marker) {
		return fmt.Errorf("%s %s: comment on pull request %d: the body does not hold its marker %q", f.forgeName, f.repo(), pr, marker)
	}
	// Gitea refuses an edit that races another edit of the same comment
	// ("the comment is already changed"): read it again and retry.
	var err error
	for range 3 {
		if err = f.upsertComment(ctx, pr, marker, body); !errors.Is(err, errEditConflict) {
			return err
		}
	}
	return err
}

// errEditConflict marks an edit that lost a race with another edit.
var errEditConflict = errors.New("another edit of the comment came first")

func (f *Forge) upsertComment(ctx context.Context, pr int, marker, body string) error {
	return forge.UpsertOne(ctx, prComments{f, pr}, marker, body)
}

// prComments is pull request pr's comments (forge.Comments).
type prComments struct {
	f  *Forge
	pr int
}

func (p prComments) Holding(ctx context.Context, marker string) ([]forge.Comment, error) {
	var out []forge.Comment
	for page := 1; ; page++ {
		c, err := p.f.client(ctx)
		if err != nil {
			return nil, err
		}
		comments, resp, err := c.ListIssueComments(p.f.owner, p.f.name, int64(p.pr), sdk.ListIssueCommentOptions{
			ListOptions: sdk.ListOptions{Page: page, PageSize: pageSize},
		})
		if err != nil {
			return nil, p.f.fail(ctx, fmt.Sprintf("list the comments of pull request %d", p.pr), resp, err)
		}
		for _, cm := range comments {
			if cm != nil && strings.Contains(cm.Body, marker) {
				out = append(out, forge.Comment{ID: cm.ID, Body: cm.Body})
			}
		}
		if len(comments) == 0 || resp == nil || resp.NextPage == 0 {
			slices.SortFunc(out, func(a, b forge.Comment) int { return cmp.Compare(a.ID, b.ID) })
			return out, nil
		}
	}
}

func (p prComments) Create(ctx context.Context, body string) (int64, error) {
	c, err := p.f.client(ctx)
	if err != nil {
		return 0, err
	}
	created, resp, err := c.CreateIssueComment(p.f.owner, p.f.name, int64(p.pr), sdk.CreateIssueCommentOption{Body: body})
	if err != nil {
		return 0, p.f.fail(ctx, fmt.Sprintf("comment on pull request %d", p.pr), resp, err)
	}
	return created.ID, nil
}

// Edit refuses with errEditConflict an edit that lost a race with
// another edit of the same comment (Gitea answers 409, or 500 "the
// comment is already changed").
func (p prComments) Edit(ctx context.Context, id int64, body string) error {
	c, err := p.f.client(ctx)
	if err != nil {
		return err
	}
	_, resp, err := c.EditIssueComment(p.f.owner, p.f.name, id, sdk.EditIssueCommentOption{Body: body})
	if err != nil && resp != nil && resp.Response != nil && (resp.StatusCode == http.StatusConflict ||
		resp.StatusCode == http.StatusInternalServerError && strings.Contains(err.Error(), "already changed")) {
		return fmt.Errorf("%w: %v", errEditConflict, err)
	}
	if err != nil {
		return p.f.fail(ctx, fmt.Sprintf("edit comment %d on pull request %d", id, p.pr), resp, err)
	}
	return nil
}

func (p prComments) Delete(ctx context.Context, id int64) error {
	c, err := p.f.client(ctx)
	if err != nil {
		return err
	}
	resp, err := c.DeleteIssueComment(p.f.owner, p.f.name, id)
	if err != nil && (resp == nil || resp.Response == nil || resp.StatusCode != http.StatusNotFound) {
		return p.f.fail(ctx, fmt.Sprintf("delete the extra comment %d on pull request %d", id, p.pr), resp, err)
	}
	return nil
}

func (f *Forge) repo() string { return f.owner + "/" + f.name }

// fail turns a failed call into an error that says what happened and
// what to do, naming the forge and the repository, and wraps the forge
// package's error for the status codes callers branch on.
func (f *Forge) fail(ctx context.Context, what string, resp *sdk.Response, err error) error {
	where := fmt.Sprintf("%s %s (%s)", f.forgeName, f.repo(), f.base)
	if ctx.Err() != nil && (resp == nil || resp.Response == nil) {
		return fmt.Errorf("%s: %s: %w", where, what, ctx.Err())
	}
	if resp == nil || resp.Response == nil {
		return fmt.Errorf("%s: %s: %v (is the forge reachable at %s?)", where, what, err, f.base)
	}
	code := resp.StatusCode
	switch {
	case code == http.StatusUnauthorized:
		return fmt.Errorf("%s: %s: the token was refused (HTTP 401: %v); put a valid access token in the token file: %w", where, what, err, forge.ErrAuth)
	case code == http.StatusForbidden:
		return fmt.Errorf("%s: %s: the token lacks a permission (HTTP 403: %v); give it the write:repository and write:issue scopes and write access to %s: %w", where, what, err, f.repo(), forge.ErrPermission)
	case code == http.StatusNotFound:
		return fmt.Errorf("%s: %s: not found (HTTP 404: %v); check the repository's name and base URL, and that the token's user can see it: %w", where, what, err, forge.ErrNotFound)
	case code == http.StatusTooManyRequests:
		until := retryAfter(resp.Header.Get("Retry-After"), time.Now())
		return &forge.RateLimitError{Until: until, Err: fmt.Errorf("%s: %s: rate limited (HTTP 429: %v); pausing until %s", where, what, err, until.UTC().Format(time.RFC3339))}
	}
	return fmt.Errorf("%s: %s: HTTP %d: %v", where, what, code, err)
}

// retryAfter reads a Retry-After header (seconds or an HTTP date) as the
// time to wait until; absent or unreadable, it waits rateLimitBackoff.
func retryAfter(h string, now time.Time) time.Time {
	h = strings.TrimSpace(h)
	if n, err := strconv.Atoi(h); err == nil && n >= 0 {
		return now.Add(time.Duration(n) * time.Second)
	}
	if t, err := http.ParseTime(h); err == nil {
		if t.Before(now) {
			return now
		}
		return t
	}
	return now.Add(rateLimitBackoff)
}

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}
