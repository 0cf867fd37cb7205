package results

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/queue"
)

// A watch reads the run refs of a remote on this machine and looks again
// as soon as one changes (issue 16, item 8); a remote over the network, or
// a path that is not a repository itself, is not watched.
func TestFollowWatchesALocalRemote(t *testing.T) {
	dir := t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		return fixtures.Git(t, dir, args...)
	}
	bare := filepath.Join(dir, "remote.git")
	run("init", "-q", "--bare", bare)
	run("init", "-q", "clone")
	clone := filepath.Join(dir, "clone")
	run("-C", clone, "commit", "-q", "--allow-empty", "-m", "c")
	head := run("-C", clone, "rev-parse", "HEAD")
	run("-C", clone, "remote", "add", "origin", "file://"+bare)
	run("-C", clone, "push", "-q", "origin", "HEAD:refs/heads/main")
	run("-C", clone, "remote", "add", "rel", "../remote.git")
	run("-C", clone, "remote", "add", "net", "ssh://example.invalid/remote.git")
	run("-C", clone, "remote", "add", "scp", "example.invalid:remote.git")
	ctx := context.Background()
	for _, remote := range []string{"net", "scp", filepath.Join(clone, ".refci")} {
		if (Source{Dir: clone, Remote: remote}).localWatch(ctx, head) != nil {
			t.Errorf("remote %s is watched as a local repository", remote)
		}
	}
	for _, remote := range []string{"origin", "rel", bare} {
		w := Source{Dir: clone, Remote: remote}.Follow(ctx, head, Want{})
		if w.watch == nil {
			t.Fatalf("remote %s is not watched", remote)
		}
		w.seen = w.watch()
		ref := queue.RunRef(head, queue.NewRunID(time.Now()))
		done := make(chan bool, 1)
		go func() { done <- w.wait(ctx, time.Hour) }()
		run("--git-dir="+bare, "update-ref", ref, head)
		select {
		case ok := <-done:
			if !ok {
				t.Fatalf("remote %s: the wait reported its context ended", remote)
			}
		case <-time.After(time.Minute):
			t.Fatalf("remote %s: a new run ref did not end the wait", remote)
		}
		if w.watch() == w.seen {
			t.Fatalf("remote %s: the watch did not change with a new run ref", remote)
		}
	}
}

func TestWhichRunIsFollowed(t *testing.T) {
	now := time.Now()
	obj, other := strings.Repeat("a", 40), strings.Repeat("b", 40)
	st := func(run, prev, object string, started time.Time) *queue.Status {
		s := &queue.Status{Run: run, RequestObject: object, Started: started, Request: "topic"}
		if prev != "" {
			s.Extra = map[string]any{queue.ExtraPreviousRun: prev}
		}
		return s
	}
	for _, tc := range []struct {
		name string
		want Want
		st   *queue.Status
		ok   bool
	}{
		{"the run", ThisRun("r1", ""), st("r1", "", obj, now), true},
		{"its takeover", ThisRun("r1", ""), st("r2", "r1", obj, now), true},
		{"another run", ThisRun("r1", ""), st("r2", "", obj, now), false},
		{"another push", ThisRun("r1", obj), st("r1", "", other, now), false},
		{"a worker that records no object", ThisRun("r1", obj), st("r1", "", "", now), true},
		{"a recent run", LatestRun(now), st("r1", "", "", now.Add(-time.Minute)), true},
		{"an old run", LatestRun(now), st("r1", "", "", now.Add(-2*time.Hour)), false},
		{"the claimed run", ClaimedRun(&queue.Claim{Request: "topic", Run: "r1", RequestObject: obj}), st("r1", "", obj, now), true},
		{"the claimed push's takeover", ClaimedRun(&queue.Claim{Request: "topic", Run: "r1", RequestObject: obj}), st("r2", "r1", obj, now), true},
	} {
		if got := tc.want.Match(tc.st); got != tc.ok {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.ok)
		}
	}
	w := ClaimedRun(&queue.Claim{Request: "topic", RequestObject: obj, Claimed: now})
	if w.Request != "topic" || w.Object != obj || !w.After.Equal(now.Add(-queue.ClockSkew)) || w.Match != nil {
		t.Errorf("a claim without a run (the request ran between two looks) follows that push: %+v", w)
	}
}

// A slow read of a local remote's refs (many loose run refs) is made
// less often: reading takes at most 1/readShare of the time.
func TestWaitForRefsBoundsItsReading(t *testing.T) {
	reads := 0
	read := func() string { reads++; time.Sleep(10 * time.Millisecond); return "same" }
	if !waitForRefs(context.Background(), 300*time.Millisecond, nil, read, "same", time.Millisecond) {
		t.Fatal("the wait ended as if its context had")
	}
	if reads > 4 { // every 1 ms unbounded: about 27
		t.Errorf("%d reads of 10 ms in 300 ms; want at most 4", reads)
	}
	n := 0
	changed := func() string { n++; return fmt.Sprint(n > 2) }
	if !waitForRefs(context.Background(), time.Hour, nil, changed, "false", time.Millisecond) {
		t.Fatal("a change did not end the wait")
	}
}

// RemoteURL says where a remote is as git would reach it: a configured
// remote's URL, else the argument itself, a relative path read from the
// repository's directory.
func TestRemoteURL(t *testing.T) {
	dir := fixtures.NewRepo(t)
	fixtures.Git(t, dir, "remote", "add", "origin", "../bare.git")
	fixtures.Git(t, dir, "remote", "add", "net", "https://ci@example.invalid/r.git")
	for remote, want := range map[string]string{
		"origin":                      filepath.Join(filepath.Dir(dir), "bare.git"),
		"net":                         "https://ci@example.invalid/r.git",
		"sub/x.git":                   filepath.Join(dir, "sub", "x.git"),
		"/srv/git/a.git":              "/srv/git/a.git",
		"host:path/a.git":             "host:path/a.git",
		"file:///srv/git/a.git":       "file:///srv/git/a.git",
		"-not-a-remote-nor-an-option": filepath.Join(dir, "-not-a-remote-nor-an-option"),
	} {
		if got := (Source{Dir: dir, Remote: remote}).RemoteURL(context.Background()); got != want {
			t.Errorf("RemoteURL(%q) = %q, want %q", remote, got, want)
		}
	}
}
