package forgetest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"refci.dev/refci/forge"
	"refci.dev/refci/queue"
)

// Seen is a commit status as the forge shows it, in the forge's own
// words.
type Seen struct {
	Context     string
	State       string // the forge's word: "pending", "failed", ...
	Description string
	TargetURL   string
}

// Controls is what the contract needs of the forge behind an adapter,
// beyond the adapter itself: a real forge implements it with its API (a
// test user's token), a stand-in with its own state, Fake directly.
type Controls interface {
	// NewCommit makes a commit the forge has (pushed on a branch of its
	// own) and returns its full id.
	NewCommit(ctx context.Context) (string, error)
	// OpenPullRequest opens a pull request whose head is commit (made by
	// NewCommit) and returns its number.
	OpenPullRequest(ctx context.Context, head string) (int, error)
	// ClosePullRequest closes pull request n.
	ClosePullRequest(ctx context.Context, n int) error
	// Statuses returns the statuses the forge shows on commit, every row
	// set, oldest first.
	Statuses(ctx context.Context, commit string) ([]Seen, error)
	// Comments returns the bodies of pull request n's comments, oldest
	// first.
	Comments(ctx context.Context, n int) ([]string, error)
	// Refused returns an adapter of the same repository built with a
	// token the forge refuses.
	Refused() forge.Forge
	// Missing returns an adapter, with a good token, of a repository
	// that does not exist.
	Missing() forge.Forge
}

// Contract runs the contract every forge adapter passes against the
// forge newForge returns (a fresh repository, or one that no other test
// uses, each call).
func Contract(t *testing.T, newForge func(t *testing.T) (forge.Forge, Controls)) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)

	t.Run("every state", func(t *testing.T) {
		f, c := newForge(t)
		commit := must[string](t)(c.NewCommit(ctx))
		words := map[queue.State]string{}
		for _, st := range []queue.State{queue.Running, queue.Success, queue.Failure, queue.Error, queue.Cancelled} {
			ctxName := "refci/contract-" + string(st)
			s := forge.Status{Context: ctxName, State: st, Description: "refci contract: " + string(st) + " " + strings.Repeat("long ", 80), TargetURL: "https://ci.example.invalid/runs/" + commit + "/r/"}
			if err := f.SetStatus(ctx, commit, s); err != nil {
				t.Fatalf("SetStatus %s: %v", st, err)
			}
			seen := must[[]Seen](t)(c.Statuses(ctx, commit))
			var last *Seen
			for i := range seen {
				if seen[i].Context == ctxName {
					last = &seen[i]
				}
			}
			if last == nil {
				t.Fatalf("status %s is not shown on the commit: %+v", ctxName, seen)
			}
			if n := utf8.RuneCountInString(last.Description); last.Description == "" || n > 255 || strings.Contains(last.Description, "\n") {
				t.Errorf("%s: the description is %d characters; one line within the forge's limit expected", st, n)
			}
			if last.TargetURL != s.TargetURL {
				t.Errorf("%s: target URL %q, want %q", st, last.TargetURL, s.TargetURL)
			}
			words[st] = last.State
		}
		if words[queue.Error] == words[queue.Failure] {
			t.Errorf("error and failure show as the same state %q: the machine's fault must stay apart from the code's", words[queue.Error])
		}
		for _, st := range []queue.State{queue.Running, queue.Failure, queue.Error, queue.Cancelled} {
			if words[st] == words[queue.Success] {
				t.Errorf("%s shows as success (%q)", st, words[st])
			}
		}
		if words[queue.Running] == words[queue.Failure] || words[queue.Running] == words[queue.Error] {
			t.Errorf("running shows as a final state %q", words[queue.Running])
		}
	})

	t.Run("a state after another", func(t *testing.T) {
		f, c := newForge(t)
		commit := must[string](t)(c.NewCommit(ctx))
		for _, st := range []queue.State{queue.Running, queue.Failure} {
			if err := f.SetStatus(ctx, commit, forge.Status{Context: "refci/ci", State: st, Description: "refci ci: " + string(st)}); err != nil {
				t.Fatalf("SetStatus %s: %v", st, err)
			}
		}
		seen := must[[]Seen](t)(c.Statuses(ctx, commit))
		if len(seen) == 0 || seen[len(seen)-1].Context != "refci/ci" {
			t.Fatalf("statuses: %+v", seen)
		}
	})

	t.Run("one comment, edited in place", func(t *testing.T) {
		f, c := newForge(t)
		commit := must[string](t)(c.NewCommit(ctx))
		pr := must[int](t)(c.OpenPullRequest(ctx, commit))
		const marker = "<!-- refci:contract -->"
		for _, body := range []string{marker + "\nfirst", marker + "\nsecond"} {
			if err := f.UpsertComment(ctx, pr, marker, body); err != nil {
				t.Fatalf("UpsertComment: %v", err)
			}
		}
		got := must[[]string](t)(c.Comments(ctx, pr))
		n := 0
		for _, b := range got {
			if strings.Contains(b, marker) {
				n++
				if !strings.HasSuffix(strings.TrimSpace(b), "second") {
					t.Errorf("the comment was not edited: %q", b)
				}
			}
		}
		if n != 1 {
			t.Errorf("%d comments hold the marker after two upserts, want 1: %q", n, got)
		}
		// Another marker is another comment; the first stays as it is.
		if err := f.UpsertComment(ctx, pr, "<!-- other -->", "<!-- other -->\nx"); err != nil {
			t.Fatal(err)
		}
		if got := must[[]string](t)(c.Comments(ctx, pr)); len(got) != n+1 {
			t.Errorf("%d comments after a comment of another marker, want %d: %q", len(got), n+1, got)
		}
	})

	t.Run("pull requests by head", func(t *testing.T) {
		f, c := newForge(t)
		a, b := must[string](t)(c.NewCommit(ctx)), must[string](t)(c.NewCommit(ctx))
		pa := must[int](t)(c.OpenPullRequest(ctx, a))
		pb := must[int](t)(c.OpenPullRequest(ctx, b))
		prs, err := f.PullRequestsOf(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		if len(prs) != 1 || prs[0].Number != pa || prs[0].Head != a {
			t.Errorf("PullRequestsOf(%s) = %+v, want only #%d", a, prs, pa)
		}
		if err := c.ClosePullRequest(ctx, pb); err != nil {
			t.Fatal(err)
		}
		if prs, err := f.PullRequestsOf(ctx, b); err != nil || len(prs) != 0 {
			t.Errorf("PullRequestsOf a closed pull request's head = %+v, %v; want none", prs, err)
		}
		if l, ok := f.(forge.PullRequestLister); ok {
			open, err := l.OpenPullRequests(ctx)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, p := range open {
				found = found || p.Number == pa && p.Head == a
				if p.Number == pb {
					t.Errorf("OpenPullRequests lists the closed #%d", pb)
				}
			}
			if !found {
				t.Errorf("OpenPullRequests = %+v, missing #%d", open, pa)
			}
		}
	})

	t.Run("errors wrap the forge errors", func(t *testing.T) {
		_, c := newForge(t)
		commit := must[string](t)(c.NewCommit(ctx))
		s := forge.Status{Context: "refci/ci", State: queue.Running, Description: "refci ci: running"}
		if err := c.Refused().SetStatus(ctx, commit, s); !errors.Is(err, forge.ErrAuth) {
			t.Errorf("a refused token: %v, want an error wrapping ErrAuth", err)
		}
		if err := c.Missing().SetStatus(ctx, commit, s); !errors.Is(err, forge.ErrNotFound) {
			t.Errorf("a missing repository: %v, want an error wrapping ErrNotFound", err)
		}
		if _, err := c.Missing().PullRequestsOf(ctx, commit); !errors.Is(err, forge.ErrNotFound) {
			t.Errorf("a missing repository's pull requests: %v, want an error wrapping ErrNotFound", err)
		}
	})
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}
