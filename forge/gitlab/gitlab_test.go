package gitlab

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"refci.dev/refci/fixtures/gitlabapi"
	"refci.dev/refci/forge"
	"refci.dev/refci/queue"
)

const sha = "6dcb09b5b57875f334f61aebed695e2e4193db5e"

func newForge(t *testing.T) (*Forge, *gitlabapi.Server) {
	t.Helper()
	s := gitlabapi.New(t, "group/app", "glpat-t0ken")
	f, err := New(Config{Project: "group/app", Token: "glpat-t0ken", BaseURL: s.URL})
	if err != nil {
		t.Fatal(err)
	}
	return f, s
}

func TestStatusesMapEachStateAndNeverRepeat(t *testing.T) {
	f, s := newForge(t)
	ctx := context.Background()
	long := strings.Repeat("ö", 400)
	for _, st := range []queue.State{queue.Running, queue.Success, queue.Failure, queue.Error, queue.Cancelled} {
		if err := f.SetStatus(ctx, sha, forge.Status{Context: "refci/" + string(st), State: st, Description: long, TargetURL: "https://ci.example.org/r"}); err != nil {
			t.Fatalf("%s: %v", st, err)
		}
	}
	got := s.Statuses(sha)
	want := []string{"running", "success", "failed", "canceled", "canceled"}
	if len(got) != len(want) {
		t.Fatalf("%d statuses, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].State != w || got[i].TargetURL != "https://ci.example.org/r" {
			t.Errorf("status %d: %+v, want %s", i, got[i], w)
		}
	}
	if !strings.HasPrefix(got[3].Description, "error: ") {
		t.Errorf("an error does not say it is the machine's: %q", got[3].Description)
	}
	// GitLab refuses the state a status already has; the status shows it,
	// so that is no error, and nothing is posted twice.
	if err := f.SetStatus(ctx, sha, forge.Status{Context: "refci/running", State: queue.Running}); err != nil {
		t.Errorf("the same state again: %v", err)
	}
	if n := len(s.Statuses(sha)); n != 5 {
		t.Errorf("%d statuses after the same state again, want 5", n)
	}
	// A target URL GitLab would refuse is left out, not the status.
	if err := f.SetStatus(ctx, sha, forge.Status{Context: "refci/x", State: queue.Success, TargetURL: "file:///etc/passwd"}); err != nil {
		t.Errorf("a status with a target URL that is not http(s): %v", err)
	}
}

func TestNoteIsEditedInPlace(t *testing.T) {
	f, s := newForge(t)
	ctx := context.Background()
	s.AddMergeRequest(gitlabapi.MergeRequest{IID: 4, SHA: sha, Open: true, Title: "topic"})
	const marker = "<!-- refci:comment -->"
	s.AddNote(4, "changed the description "+marker, true) // a system note quoting the marker is never ours
	for i := 0; i < 130; i++ {
		s.AddNote(4, "a review remark", false)
	}
	for _, body := range []string{"first", "second"} {
		if err := f.UpsertComment(ctx, 4, marker, marker+"\n"+body); err != nil {
			t.Fatal(err)
		}
	}
	var ours []gitlabapi.Note
	for _, n := range s.Notes(4) {
		if strings.Contains(n.Body, marker) && !n.System {
			ours = append(ours, n)
		}
	}
	if len(ours) != 1 || !strings.HasSuffix(ours[0].Body, "second") {
		t.Fatalf("refci's notes: %+v; want one, edited", ours)
	}
}

func TestMergeRequests(t *testing.T) {
	f, s := newForge(t)
	ctx := context.Background()
	other := strings.Repeat("2", 40)
	s.AddMergeRequest(gitlabapi.MergeRequest{IID: 1, SHA: sha, Open: true})
	s.AddMergeRequest(gitlabapi.MergeRequest{IID: 2, SHA: sha})
	s.AddMergeRequest(gitlabapi.MergeRequest{IID: 3, SHA: other, Open: true, Fork: true})
	for i := 10; i < 160; i++ {
		s.AddMergeRequest(gitlabapi.MergeRequest{IID: i, SHA: other, Open: true})
	}
	mrs, err := f.PullRequestsOf(ctx, sha)
	if err != nil || len(mrs) != 1 || mrs[0].Number != 1 || mrs[0].Fork {
		t.Fatalf("PullRequestsOf: %+v %v", mrs, err)
	}
	open, err := f.OpenPullRequests(ctx)
	if err != nil || len(open) != 152 {
		t.Fatalf("OpenPullRequests: %d %v; want 152 over two pages", len(open), err)
	}
	for _, m := range open {
		if m.Number == 3 && !m.Fork {
			t.Error("a merge request from a fork is not marked so")
		}
	}
}

func Failure500() gitlabapi.Failure {
	return gitlabapi.Failure{Code: 500, Message: "500 Internal Server Error"}
}

func TestErrorsSayWhatToDo(t *testing.T) {
	ctx := context.Background()
	st := forge.Status{Context: "refci/main", State: queue.Success}
	s := gitlabapi.New(t, "group/app", "glpat-t0ken")
	bad, _ := New(Config{Project: "group/app", Token: "wrong", BaseURL: s.URL})
	if err := bad.SetStatus(ctx, sha, st); !errors.Is(err, forge.ErrAuth) || !strings.Contains(err.Error(), "group/app") {
		t.Errorf("a bad token: %v", err)
	}
	missing, _ := New(Config{Project: "group/none", Token: "glpat-t0ken", BaseURL: s.URL})
	if err := missing.SetStatus(ctx, sha, st); !errors.Is(err, forge.ErrNotFound) {
		t.Errorf("a missing project: %v", err)
	}
	f, s := newForge(t)
	s.Fail(gitlabapi.Forbidden)
	if err := f.SetStatus(ctx, sha, st); !errors.Is(err, forge.ErrPermission) || !strings.Contains(err.Error(), "api scope") {
		t.Errorf("no permission: %v", err)
	}
	s.Fail(gitlabapi.Conflict)
	if err := f.SetStatus(ctx, sha, st); err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("409: %v", err)
	}
	// A 429 is refused unprocessed: the client tries twice more, then it
	// is a pause.
	s.Fail(gitlabapi.RateLimited, gitlabapi.RateLimited, gitlabapi.RateLimited)
	before := len(s.Calls())
	var rl *forge.RateLimitError
	if err := f.SetStatus(ctx, sha, st); !errors.As(err, &rl) || time.Until(rl.Until) < 20*time.Second {
		t.Errorf("429: %v; want a pause of its Retry-After", err)
	}
	if n := len(s.Calls()) - before; n != 3 {
		t.Errorf("a status POST answered 429 was sent %d times, want 3", n)
	}
	// A POST that failed in another way is never sent again by the
	// client: a note could be posted twice.
	s.Fail(Failure500())
	before = len(s.Calls())
	if err := f.SetStatus(ctx, sha, forge.Status{Context: "refci/other", State: queue.Success}); err == nil {
		t.Error("a 500 was taken for success")
	}
	if n := len(s.Calls()) - before; n != 1 {
		t.Errorf("a status POST answered 500 was sent %d times, want once", n)
	}
	if _, err := New(Config{Project: "app", Token: "x"}); err == nil {
		t.Error("a project without its group was taken")
	}
}

// Copies of the note end as one: the oldest, with the newest body; racing
// mirrors leave one.
func TestNoteCopiesConverge(t *testing.T) {
	f, s := newForge(t)
	ctx := context.Background()
	const marker = "<!-- refci:comment -->"
	s.AddMergeRequest(gitlabapi.MergeRequest{IID: 1, SHA: sha, Open: true})
	s.AddNote(1, marker+"\nold", false)
	s.AddNote(1, marker+"\ncopy", false)
	if err := f.UpsertComment(ctx, 1, marker, marker+"\nnew"); err != nil {
		t.Fatal(err)
	}
	if n := s.Notes(1); len(n) != 1 || n[0].Body != marker+"\nnew" {
		t.Fatalf("notes %+v; want the oldest copy, edited", n)
	}
	s.AddMergeRequest(gitlabapi.MergeRequest{IID: 2, SHA: sha, Open: true})
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
	if n := s.Notes(2); len(n) != 1 || n[0].Body != marker+"\nrace" {
		t.Fatalf("after 4 racing upserts: %+v; want one note", n)
	}
}

// A 429 that gives only RateLimit-Reset (no Retry-After): the client
// waits for the reset between its tries, and the pause the adapter
// returns ends at that reset.
func TestRateLimitReset(t *testing.T) {
	f, s := newForge(t)
	reset := time.Now().Add(2 * time.Second).Truncate(time.Second)
	s.Fail(gitlabapi.RateLimitedUntil(reset), gitlabapi.RateLimitedUntil(reset), gitlabapi.RateLimitedUntil(reset))
	start := time.Now()
	err := f.SetStatus(context.Background(), sha, forge.Status{Context: "refci/main", State: queue.Success})
	var rl *forge.RateLimitError
	if !errors.As(err, &rl) || !rl.Until.Equal(reset) {
		t.Fatalf("429 until %v: %v; want a pause until then", reset, err)
	}
	if n := len(s.Calls()); n != 3 {
		t.Errorf("%d calls, want 3", n)
	}
	if !time.Now().After(reset) || time.Since(start) > time.Minute {
		t.Errorf("the client did not wait for the reset (took %v)", time.Since(start))
	}
	// Then it is served again.
	if err := f.SetStatus(context.Background(), sha, forge.Status{Context: "refci/main", State: queue.Success}); err != nil {
		t.Errorf("after the reset: %v", err)
	}
}

// A 429 whose reset is far off (an hour; a broken or hostile server may
// name any time) is not waited out inside the call: the call fails soon
// with the reset, for the mirror to pause this forge.
func TestFarRateLimitResetIsNotWaitedOut(t *testing.T) {
	f, s := newForge(t)
	reset := time.Now().Add(time.Hour).Truncate(time.Second)
	s.Fail(gitlabapi.RateLimitedUntil(reset), gitlabapi.RateLimitedUntil(reset), gitlabapi.RateLimitedUntil(reset))
	start := time.Now()
	err := f.SetStatus(context.Background(), sha, forge.Status{Context: "refci/main", State: queue.Success})
	var rl *forge.RateLimitError
	if !errors.As(err, &rl) || !rl.Until.Equal(reset) {
		t.Fatalf("429 until %v: %v; want a rate-limit error naming it", reset, err)
	}
	if d := time.Since(start); d > 3*maxRetryWait {
		t.Errorf("the call took %v: the client waited for a reset an hour away", d)
	}
}
