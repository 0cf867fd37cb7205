package gitea_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	giteafix "refci.dev/refci/fixtures/gitea"
	"refci.dev/refci/forge"
	"refci.dev/refci/forge/gitea"
	"refci.dev/refci/queue"
)

func TestMain(m *testing.M) { os.Exit(giteafix.Main(m)) }

func newForge(t *testing.T, r *giteafix.Repo) *gitea.Forge {
	t.Helper()
	f, err := newForgeTB(r)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func newForgeTB(r *giteafix.Repo) (*gitea.Forge, error) {
	return gitea.New(gitea.Config{BaseURL: r.Server.URL, Repo: r.FullName(), Token: r.Server.Token})
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func TestState(t *testing.T) {
	for in, want := range map[queue.State]string{
		queue.Running:   "pending",
		queue.Success:   "success",
		queue.Failure:   "failure",
		queue.Error:     "error",
		queue.Cancelled: "warning",
		"":              "pending",
	} {
		if got := string(gitea.State(in)); got != want {
			t.Errorf("State(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDescription(t *testing.T) {
	long := strings.Repeat("é", 200)
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"tests passed", "tests passed"},
		{"  two\nlines\t\tand\r\ncontrols\x00 ", "two lines and controls"},
		{long, strings.Repeat("é", 139) + "…"},
		{strings.Repeat("a", 138) + " bc", strings.Repeat("a", 138) + "…"},
		{strings.Repeat("a", 140), strings.Repeat("a", 140)},
	} {
		got := gitea.Description(tc.in)
		if got != tc.want {
			t.Errorf("Description(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if n := len([]rune(got)); n > gitea.MaxDescription || strings.ContainsAny(got, "\n\r\t") {
			t.Errorf("Description(%q) = %q: %d characters or not one line", tc.in, got, n)
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	for _, cfg := range []gitea.Config{
		{BaseURL: "", Repo: "o/r", Token: "t"},
		{BaseURL: "ftp://x", Repo: "o/r", Token: "t"},
		{BaseURL: "http://x", Repo: "o", Token: "t"},
		{BaseURL: "http://x", Repo: "o/r/s", Token: "t"},
		{BaseURL: "http://x", Repo: "o/r", Token: ""},
	} {
		if _, err := gitea.New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// TestStatusesOnRealGitea sends a status of each state and reads them
// back from the API: the mapped state, the context, the one-line
// description and the link.
func TestStatusesOnRealGitea(t *testing.T) {
	srv := giteafix.Shared(t)
	repo := srv.NewRepo(t)
	commit := repo.Push(t, "main", "first")
	f := newForge(t, repo)
	want := map[string]string{}
	for _, st := range []queue.State{queue.Running, queue.Success, queue.Failure, queue.Error, queue.Cancelled} {
		s := forge.Status{
			Context:     "refci/" + string(st),
			State:       st,
			Description: "the run is " + string(st) + "\nsecond line " + strings.Repeat("x", 200),
			TargetURL:   "https://ci.example.invalid/runs/" + string(st),
		}
		if err := f.SetStatus(ctx(t), commit, s); err != nil {
			t.Fatalf("SetStatus %s: %v", st, err)
		}
		want[s.Context] = string(gitea.State(st))
	}
	got := repo.Latest(t, commit)
	if len(got) != len(want) {
		t.Fatalf("statuses on the commit: %+v, want contexts %v", got, want)
	}
	for c, state := range want {
		s := got[c]
		if s.State != state {
			t.Errorf("%s: state %q, want %q", c, s.State, state)
		}
		if !strings.HasPrefix(s.Description, "the run is ") || strings.Contains(s.Description, "\n") || len([]rune(s.Description)) > 140 {
			t.Errorf("%s: description %q, want one line of at most 140 characters", c, s.Description)
		}
		if s.TargetURL != "https://ci.example.invalid/runs/"+strings.TrimPrefix(c, "refci/") {
			t.Errorf("%s: target %q", c, s.TargetURL)
		}
	}

	// A newer status of the same context is the one the commit shows.
	if err := f.SetStatus(ctx(t), commit, forge.Status{Context: "refci/running", State: queue.Success, Description: "done"}); err != nil {
		t.Fatal(err)
	}
	if s := repo.Latest(t, commit)["refci/running"]; s.State != "success" || s.Description != "done" {
		t.Errorf("refci/running shows %+v, want success", s)
	}
	if n := len(repo.Statuses(t, commit)); n != 6 {
		t.Errorf("%d statuses on the commit, want 6", n)
	}
}

// TestUpsertCommentOnRealGitea: the comment is created once and then
// edited in place, also when it is past the first page of comments, and
// the other comments are left alone.
func TestUpsertCommentOnRealGitea(t *testing.T) {
	srv := giteafix.Shared(t)
	repo := srv.NewRepo(t)
	repo.Push(t, "main", "first")
	repo.Push(t, "feature", "a change")
	pr := repo.OpenPullRequest(t, "feature", "main", "a change")
	f := newForge(t, repo)

	// More than a page of other comments before it.
	for i := range 52 {
		srv.API(t, "", "POST", fmt.Sprintf("/repos/%s/issues/%d/comments", repo.FullName(), pr), map[string]string{"body": fmt.Sprintf("comment %d", i)}, nil)
	}
	const marker = "<!-- refci:comment -->"
	if err := f.UpsertComment(ctx(t), pr, marker, marker+"\nfirst body"); err != nil {
		t.Fatal(err)
	}
	if err := f.UpsertComment(ctx(t), pr, marker, marker+"\nsecond body"); err != nil {
		t.Fatal(err)
	}
	if err := f.UpsertComment(ctx(t), pr, marker, marker+"\nsecond body"); err != nil {
		t.Fatal(err)
	}
	comments := repo.Comments(t, pr)
	var ours []giteafix.Comment
	for _, c := range comments {
		if strings.Contains(c.Body, marker) {
			ours = append(ours, c)
		}
	}
	if len(ours) != 1 || ours[0].Body != marker+"\nsecond body" {
		t.Fatalf("comments holding the marker: %+v, want one with the second body", ours)
	}
	if len(comments) != 53 {
		t.Errorf("%d comments, want 52 others and ours", len(comments))
	}

	// Another marker is another comment.
	if err := f.UpsertComment(ctx(t), pr, "<!-- refci:other -->", "<!-- refci:other -->\nbody"); err != nil {
		t.Fatal(err)
	}
	if n := len(repo.Comments(t, pr)); n != 54 {
		t.Errorf("%d comments after another marker, want 54", n)
	}
	if err := f.UpsertComment(ctx(t), pr, marker, "no marker here"); err == nil {
		t.Error("UpsertComment accepted a body without its marker")
	}
}

// TestPullRequestsOfOnRealGitea finds an open pull request by its head
// commit, and neither a closed one nor one whose head moved on.
func TestPullRequestsOfOnRealGitea(t *testing.T) {
	srv := giteafix.Shared(t)
	repo := srv.NewRepo(t)
	base := repo.Push(t, "main", "first")
	head := repo.Push(t, "feature", "a change")
	pr := repo.OpenPullRequest(t, "feature", "main", "a change")
	closedHead := repo.Push(t, "closed", "another change")
	closed := repo.OpenPullRequest(t, "closed", "main", "another change")
	repo.ClosePullRequest(t, closed)
	f := newForge(t, repo)

	got, err := f.PullRequestsOf(ctx(t), head)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Number != pr || got[0].Head != head || got[0].HeadRef != "feature" || got[0].Fork || got[0].Title != "a change" || !strings.Contains(got[0].URL, fmt.Sprintf("/pulls/%d", pr)) {
		t.Fatalf("PullRequestsOf(head) = %+v, want pull request %d", got, pr)
	}
	for what, c := range map[string]string{"the closed pull request's head": closedHead, "the base": base} {
		if got, err := f.PullRequestsOf(ctx(t), c); err != nil || len(got) != 0 {
			t.Errorf("PullRequestsOf(%s) = %+v, %v; want none", what, got, err)
		}
	}

	// A new push moves the head: the old commit has no pull request.
	newHead := repo.Push(t, "feature", "more")
	fixtures.WaitFor(t, time.Minute, "the pull request's head to move", func() bool {
		got, err := f.PullRequestsOf(ctx(t), newHead)
		return err == nil && len(got) == 1
	})
	if got, err := f.PullRequestsOf(ctx(t), head); err != nil || len(got) != 0 {
		t.Errorf("PullRequestsOf(old head) = %+v, %v; want none", got, err)
	}
}

// TestOpenPullRequestsWithForkOnRealGitea lists a pull request from
// another user's fork, marked Fork, beside one from the repository.
func TestOpenPullRequestsWithForkOnRealGitea(t *testing.T) {
	srv := giteafix.Shared(t)
	repo := srv.NewRepo(t)
	repo.Push(t, "main", "first")
	ownHead := repo.Push(t, "own", "own change")
	own := repo.OpenPullRequest(t, "own", "main", "own change")

	user := srv.NewUser(t)
	fork := repo.Fork(t, user)
	forkHead := fork.Push(t, "contribution", "a contribution")
	fromFork := repo.OpenPullRequest(t, user.Name+":contribution", "main", "a contribution")

	got, err := newForge(t, repo).OpenPullRequests(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []forge.PullRequest{
		{Number: own, Head: ownHead, HeadRef: "own", Title: "own change"},
		{Number: fromFork, Head: forkHead, HeadRef: "contribution", Title: "a contribution", Fork: true},
	}
	if len(got) != len(want) {
		t.Fatalf("OpenPullRequests = %+v, want %+v", got, want)
	}
	for i := range want {
		got[i].URL = ""
		if got[i] != want[i] {
			t.Errorf("pull request %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

// TestErrorsOnRealGitea: a bad token is ErrAuth, a missing repository
// ErrNotFound, a user without write access ErrPermission; each message
// names the forge and the repository.
func TestErrorsOnRealGitea(t *testing.T) {
	srv := giteafix.Shared(t)
	repo := srv.NewRepo(t)
	commit := repo.Push(t, "main", "first")
	st := forge.Status{Context: "refci/x", State: queue.Success}

	bad, _ := gitea.New(gitea.Config{BaseURL: srv.URL, Repo: repo.FullName(), Token: "0123456789abcdef0123456789abcdef01234567"})
	err := bad.SetStatus(ctx(t), commit, st)
	if !errors.Is(err, forge.ErrAuth) || !strings.Contains(err.Error(), repo.FullName()) || !strings.Contains(err.Error(), "Gitea") {
		t.Errorf("bad token: %v, want ErrAuth naming Gitea and %s", err, repo.FullName())
	}

	missing, _ := gitea.New(gitea.Config{BaseURL: srv.URL, Repo: giteafix.Admin + "/no-such-repo", Token: srv.Token})
	if err := missing.SetStatus(ctx(t), commit, st); !errors.Is(err, forge.ErrNotFound) {
		t.Errorf("missing repository, SetStatus: %v, want ErrNotFound", err)
	}
	if _, err := missing.OpenPullRequests(ctx(t)); !errors.Is(err, forge.ErrNotFound) {
		t.Errorf("missing repository, OpenPullRequests: %v, want ErrNotFound", err)
	}

	user := srv.NewUser(t)
	other, _ := gitea.New(gitea.Config{BaseURL: srv.URL, Repo: repo.FullName(), Token: user.Token, Name: "Forgejo"})
	err = other.SetStatus(ctx(t), commit, st)
	if !errors.Is(err, forge.ErrPermission) || !strings.Contains(err.Error(), "Forgejo") {
		t.Errorf("no write access: %v, want ErrPermission naming Forgejo", err)
	}
}

// TestRateLimitAndCancel: a 429 is a *forge.RateLimitError until its
// Retry-After (Gitea has no rate limit of its own, hence a stand-in); a
// cancelled context sends nothing.
func TestRateLimitAndCancel(t *testing.T) {
	var calls atomic.Int64
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.Header.Get("Authorization") != "token tok" || r.URL.Path != "/api/v1/repos/o/r/statuses/abc" || r.Method != "POST" {
			t.Errorf("request %s %s %q", r.Method, r.URL.Path, r.Header.Get("Authorization"))
		}
		w.Header().Set("Retry-After", "7")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		w.Write([]byte(`{"message":"slow down"}`))
	}))
	defer ts.Close()
	f, err := gitea.New(gitea.Config{BaseURL: ts.URL, Repo: "o/r", Token: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	err = f.SetStatus(ctx(t), "abc", forge.Status{Context: "refci/x", State: queue.Running})
	var rl *forge.RateLimitError
	if !errors.As(err, &rl) {
		t.Fatalf("429: %v, want a *forge.RateLimitError", err)
	}
	if d := rl.Until.Sub(before); d < 7*time.Second || d > 8*time.Second {
		t.Errorf("rate limited for %s, want 7s", d)
	}
	if !strings.Contains(err.Error(), "o/r") || !strings.Contains(err.Error(), "slow down") {
		t.Errorf("message %q names neither the repository nor the forge's answer", err)
	}

	c, cancel := context.WithCancel(context.Background())
	cancel()
	n := calls.Load()
	if err := f.SetStatus(c, "abc", forge.Status{Context: "refci/x", State: queue.Running}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
	if calls.Load() != n {
		t.Error("a cancelled call reached the forge")
	}
}

// TestPagesOnRealGitea: more open pull requests than a page (the test
// server sends giteafix.PageSize at most, whatever the adapter asks) are
// all listed, and all found by their head commit.
func TestPagesOnRealGitea(t *testing.T) {
	srv := giteafix.Shared(t)
	repo := srv.NewRepo(t)
	repo.Push(t, "main", "first")
	head := repo.Push(t, "b0", "a change")
	var names []string
	for i := 1; i < 2*giteafix.PageSize+2; i++ {
		names = append(names, fmt.Sprintf("b%d", i))
	}
	repo.PushBranches(t, head, names...)
	want := map[int]bool{}
	for _, b := range append([]string{"b0"}, names...) {
		want[repo.OpenPullRequest(t, b, "main", "change on "+b)] = true
	}
	f := newForge(t, repo)
	open, err := f.OpenPullRequests(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	of, err := f.PullRequestsOf(ctx(t), head)
	if err != nil {
		t.Fatal(err)
	}
	for what, got := range map[string][]forge.PullRequest{"OpenPullRequests": open, "PullRequestsOf": of} {
		seen := map[int]bool{}
		for _, pr := range got {
			if !want[pr.Number] || seen[pr.Number] || pr.Head != head {
				t.Errorf("%s: unexpected %+v", what, pr)
			}
			seen[pr.Number] = true
		}
		if len(seen) != len(want) {
			t.Errorf("%s: %d pull requests, want %d", what, len(seen), len(want))
		}
	}
}

// TestForgeDownOnRealGitea: while the forge is stopped, calls fail with an
// error that is none of the ones about the token or the repository and
// says to check the forge; after its restart they work again.
func TestForgeDownOnRealGitea(t *testing.T) {
	srv := giteafix.Start(t)
	repo := srv.NewRepo(t)
	commit := repo.Push(t, "main", "first")
	f := newForge(t, repo)
	st := forge.Status{Context: "refci/ci", State: queue.Running, Description: "running"}
	if err := f.SetStatus(ctx(t), commit, st); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)
	st.State = queue.Success
	err := f.SetStatus(ctx(t), commit, st)
	var rl *forge.RateLimitError
	if err == nil || errors.Is(err, forge.ErrAuth) || errors.Is(err, forge.ErrNotFound) || errors.Is(err, forge.ErrPermission) || errors.As(err, &rl) {
		t.Fatalf("forge down: %v", err)
	}
	if !strings.Contains(err.Error(), repo.FullName()) || !strings.Contains(err.Error(), "reachable") {
		t.Errorf("forge down: %q does not name the repository and say to check the forge", err)
	}
	srv.Restart(t)
	if err := f.SetStatus(ctx(t), commit, st); err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	if s := repo.Latest(t, commit)["refci/ci"]; s.State != "success" {
		t.Errorf("after the restart the commit shows %+v", s)
	}
}

// TestUpsertCommentCopiesOnRealGitea: copies of the comment (left by a
// race or by hand) are deleted, the oldest kept; callers racing on a pull
// request without the comment end with exactly one.
func TestUpsertCommentCopiesOnRealGitea(t *testing.T) {
	srv := giteafix.Shared(t)
	repo := srv.NewRepo(t)
	repo.Push(t, "main", "first")
	repo.Push(t, "feature", "a change")
	pr := repo.OpenPullRequest(t, "feature", "main", "a change")
	f := newForge(t, repo)
	const marker = "<!-- refci:copies -->"
	path := fmt.Sprintf("/repos/%s/issues/%d/comments", repo.FullName(), pr)
	srv.API(t, "", "POST", path, map[string]string{"body": marker + "\nold one"}, nil)
	srv.API(t, "", "POST", path, map[string]string{"body": "unrelated"}, nil)
	srv.API(t, "", "POST", path, map[string]string{"body": marker + "\nold two"}, nil)
	oldest := repo.Comments(t, pr)[0].ID
	if err := f.UpsertComment(ctx(t), pr, marker, marker+"\nnew"); err != nil {
		t.Fatal(err)
	}
	cs := repo.Comments(t, pr)
	if len(cs) != 2 || cs[0].ID != oldest || cs[0].Body != marker+"\nnew" || cs[1].Body != "unrelated" {
		t.Fatalf("comments %+v, want the oldest copy edited and the unrelated one", cs)
	}

	// Racing callers, counting the comments they create.
	var creates atomic.Int64
	f, err := gitea.New(gitea.Config{BaseURL: srv.URL, Repo: repo.FullName(), Token: srv.Token, HTTPClient: &http.Client{
		Timeout: time.Minute,
		Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
			if r.Method == "POST" && strings.HasSuffix(r.URL.Path, "/comments") {
				creates.Add(1)
			}
			return http.DefaultTransport.RoundTrip(r)
		}),
	}})
	if err != nil {
		t.Fatal(err)
	}
	repo.Push(t, "other", "another change")
	pr2 := repo.OpenPullRequest(t, "other", "main", "another change")
	const racers = 4
	errs := make(chan error, racers)
	start := make(chan struct{})
	for i := range racers {
		go func() {
			<-start
			errs <- f.UpsertComment(ctx(t), pr2, marker, fmt.Sprintf("%s\nracer %d", marker, i))
		}()
	}
	close(start)
	for range racers {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	cs = repo.Comments(t, pr2)
	if len(cs) != 1 || !strings.HasPrefix(cs[0].Body, marker+"\nracer ") {
		t.Fatalf("after %d racing upserts: %+v, want one comment", racers, cs)
	}
	t.Logf("%d racing upserts created %d comments", racers, creates.Load())
}

type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
