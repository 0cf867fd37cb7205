package github

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"refci.dev/refci/fixtures/githubapi"
	"refci.dev/refci/forge"
	"refci.dev/refci/queue"
)

const sha = "6dcb09b5b57875f334f61aebed695e2e4193db5e"

func newForge(t *testing.T) (*Forge, *githubapi.Server) {
	t.Helper()
	s := githubapi.New(t, "org", "app", "t0ken")
	f, err := New(Config{Repo: "org/app", Token: "t0ken", BaseURL: s.URL})
	if err != nil {
		t.Fatal(err)
	}
	return f, s
}

func TestStatusesMapEachState(t *testing.T) {
	f, s := newForge(t)
	ctx := context.Background()
	long := strings.Repeat("é", 300) // characters, not bytes, count
	for _, tc := range []struct {
		state queue.State
		want  string
	}{{queue.Running, "pending"}, {queue.Success, "success"}, {queue.Failure, "failure"}, {queue.Error, "error"}, {queue.Cancelled, "error"}} {
		err := f.SetStatus(ctx, sha, forge.Status{Context: "refci/" + string(tc.state), State: tc.state, Description: long + "\nsecond line", TargetURL: "https://ci.example.org/run"})
		if err != nil {
			t.Fatalf("%s: %v", tc.state, err)
		}
	}
	got := s.Statuses(sha)
	if len(got) != 5 {
		t.Fatalf("%d statuses, want 5", len(got))
	}
	for i, want := range []string{"pending", "success", "failure", "error", "error"} {
		if got[i].State != want || got[i].TargetURL != "https://ci.example.org/run" || strings.Contains(got[i].Description, "\n") || !strings.HasSuffix(got[i].Description, "…") {
			t.Errorf("status %d: %+v, want state %s, one line shortened to 140 characters", i, got[i], want)
		}
	}
	if !strings.HasPrefix(got[4].Description, "cancelled: ") {
		t.Errorf("a cancelled run's status does not say so: %q", got[4].Description)
	}
	if err := f.SetStatus(ctx, sha, forge.Status{Context: "refci/x", State: "queued"}); err == nil {
		t.Error("a state refci never has was posted")
	}
}

func TestCommentIsEditedInPlaceAcrossPages(t *testing.T) {
	f, s := newForge(t)
	ctx := context.Background()
	s.AddPull(githubapi.Pull{Number: 7, Head: sha, Open: true, Title: "topic"})
	for i := 0; i < 150; i++ { // two pages of others' comments before refci's
		s.AddComment(7, "a review remark")
	}
	const marker = "<!-- refci:comment -->"
	for _, body := range []string{"first", "second"} {
		if err := f.UpsertComment(ctx, 7, marker, marker+"\n"+body); err != nil {
			t.Fatal(err)
		}
	}
	var ours []githubapi.Comment
	for _, c := range s.Comments(7) {
		if strings.Contains(c.Body, marker) {
			ours = append(ours, c)
		}
	}
	if len(ours) != 1 || !strings.HasSuffix(ours[0].Body, "second") {
		t.Fatalf("refci's comments: %+v; want one, edited to the second body", ours)
	}
	huge := marker + "\n" + strings.Repeat("x", 70000)
	if err := f.UpsertComment(ctx, 7, marker, huge); err != nil {
		t.Fatalf("a comment over GitHub's limit is shortened, not refused: %v", err)
	}
	if err := f.UpsertComment(ctx, 7, marker, "no marker"); err == nil {
		t.Error("a comment without its marker was posted (it could never be found again)")
	}
}

func TestPullRequests(t *testing.T) {
	f, s := newForge(t)
	ctx := context.Background()
	other := strings.Repeat("1", 40)
	s.AddPull(githubapi.Pull{Number: 1, Head: sha, Open: true, Title: "mine"})
	s.AddPull(githubapi.Pull{Number: 2, Head: sha, Open: false, Title: "closed"})
	s.AddPull(githubapi.Pull{Number: 3, Head: other, Open: true, Title: "from a fork", HeadRepo: "mallory/app"})
	for i := 10; i < 250; i++ {
		s.AddPull(githubapi.Pull{Number: i, Head: other, Open: true})
	}
	prs, err := f.PullRequestsOf(ctx, sha)
	if err != nil || len(prs) != 1 || prs[0].Number != 1 || prs[0].Fork || prs[0].Head != sha || prs[0].URL == "" {
		t.Fatalf("PullRequestsOf: %+v %v; want the open one only", prs, err)
	}
	open, err := f.OpenPullRequests(ctx)
	if err != nil || len(open) != 242 {
		t.Fatalf("OpenPullRequests: %d, %v; want 242 over three pages", len(open), err)
	}
	for _, p := range open {
		if p.Number == 3 && !p.Fork || p.Number == 1 && p.Fork {
			t.Errorf("pull request %d: fork %v", p.Number, p.Fork)
		}
	}
}

func TestErrorsSayWhatToDo(t *testing.T) {
	ctx := context.Background()
	st := forge.Status{Context: "refci/main", State: queue.Success}

	s := githubapi.New(t, "org", "app", "t0ken")
	bad, _ := New(Config{Repo: "org/app", Token: "wrong", BaseURL: s.URL})
	if err := bad.SetStatus(ctx, sha, st); !errors.Is(err, forge.ErrAuth) || !strings.Contains(err.Error(), "org/app") || !strings.Contains(err.Error(), "token_file") {
		t.Errorf("a bad token: %v", err)
	}
	missing, _ := New(Config{Repo: "org/nothing", Token: "t0ken", BaseURL: s.URL})
	if err := missing.SetStatus(ctx, sha, st); !errors.Is(err, forge.ErrNotFound) {
		t.Errorf("a missing repository: %v", err)
	}

	f, s := newForge(t)
	s.Fail(githubapi.NoPermission)
	if err := f.SetStatus(ctx, sha, st); !errors.Is(err, forge.ErrPermission) || !strings.Contains(err.Error(), "repo:status") {
		t.Errorf("no permission: %v", err)
	}
	var rl *forge.RateLimitError
	s.Fail(githubapi.SecondaryLimit)
	if err := f.SetStatus(ctx, sha, st); !errors.As(err, &rl) || time.Until(rl.Until) < 50*time.Second {
		t.Errorf("the secondary limit: %v; want a pause of its Retry-After (60 s)", err)
	}

	f, s = newForge(t) // a client remembers a limit and refuses locally
	s.Fail(githubapi.SecondaryLimitBare)
	if err := f.SetStatus(ctx, sha, st); !errors.As(err, &rl) || time.Until(rl.Until) < 50*time.Second {
		t.Errorf("a secondary limit told only by its message: %v; want a pause of at least a minute", err)
	}

	f, s = newForge(t)
	reset := time.Now().Add(20 * time.Minute).Truncate(time.Second)
	s.Fail(githubapi.PrimaryLimit(reset))
	if err := f.SetStatus(ctx, sha, st); !errors.As(err, &rl) || !rl.Until.Equal(reset) {
		t.Errorf("the primary limit: %v; want a pause until its reset %s", err, reset)
	}

	f, s = newForge(t)
	s.Fail(githubapi.TooMany)
	if err := f.SetStatus(ctx, sha, st); !errors.As(err, &rl) || time.Until(rl.Until) < 20*time.Second {
		t.Errorf("429: %v; want a pause of its Retry-After", err)
	}
	if err := f.SetStatus(ctx, sha, st); err != nil {
		t.Errorf("after the failure: %v", err)
	}

	if _, err := New(Config{Repo: "app", Token: "x"}); err == nil {
		t.Error("a repo without its owner was taken")
	}
	if _, err := New(Config{Repo: "org/app"}); err == nil {
		t.Error("no token was taken")
	}
}

// Copies of the comment (two mirrors racing to create it, or pasted by
// hand) end as one: the oldest, with the newest body.
func TestCommentCopiesConverge(t *testing.T) {
	f, s := newForge(t)
	ctx := context.Background()
	const marker = "<!-- refci:comment -->"
	s.AddPull(githubapi.Pull{Number: 1, Head: sha, Open: true})
	s.AddComment(1, marker+"\nold")
	s.AddComment(1, "a remark")
	s.AddComment(1, marker+"\ncopy")
	if err := f.UpsertComment(ctx, 1, marker, marker+"\nnew"); err != nil {
		t.Fatal(err)
	}
	if c := s.Comments(1); len(c) != 2 || c[0].Body != marker+"\nnew" || c[1].Body != "a remark" {
		t.Fatalf("comments %+v; want the oldest copy, edited, and the remark", c)
	}
	before := len(s.Calls())
	if err := f.UpsertComment(ctx, 1, marker, marker+"\nnew"); err != nil {
		t.Fatal(err)
	}
	for _, c := range s.Calls()[before:] {
		if !strings.HasPrefix(c, "GET ") {
			t.Errorf("an unchanged comment was written: %s", c)
		}
	}

	s.AddPull(githubapi.Pull{Number: 2, Head: sha, Open: true})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f.UpsertComment(ctx, 2, marker, marker+"\nrace"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if c := s.Comments(2); len(c) != 1 || c[0].Body != marker+"\nrace" {
		t.Fatalf("after 4 racing upserts: %+v; want one comment", c)
	}
}
