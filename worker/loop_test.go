package worker

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

func TestClaimAheadFollowsRunDurations(t *testing.T) {
	w := New(Config{Concurrency: 2})
	if got := w.claimAhead(); got != 2 {
		t.Fatalf("with no runs seen, claimAhead = %d, want one per slot (2)", got)
	}
	for range 30 {
		w.noteRunTime(20 * time.Millisecond)
	}
	if got := w.claimAhead(); got != 2*maxClaimAhead {
		t.Fatalf("after 20 ms runs, claimAhead = %d, want the cap %d", got, 2*maxClaimAhead)
	}
	for range 30 {
		w.noteRunTime(10 * time.Minute)
	}
	if got := w.claimAhead(); got != 2 {
		t.Fatalf("after 10 minute runs, claimAhead = %d, want one per slot (2): a queue here would keep other workers idle", got)
	}
	for range 40 {
		w.noteRunTime(250 * time.Millisecond)
	}
	if got := w.claimAhead(); got < 2*6 || got > 2*10 {
		t.Fatalf("after 250 ms runs, claimAhead = %d, want about two seconds of work per slot (16)", got)
	}
}

func TestMain(m *testing.M) { os.Exit(fixtures.PrivateHome(m)) }

// loopWorld is a bare remote with one commit that has a pipeline, the
// clone it was pushed from, to push requests from, and a directory for
// the worker's caches.
type loopWorld struct {
	dir, bare, clone string
}

func newLoopWorld(t *testing.T, pipeline string) *loopWorld {
	t.Helper()
	p := fixtures.NewPipelineRepo(t, pipeline)
	return &loopWorld{dir: t.TempDir(), bare: p.Bare, clone: p.Dir}
}

// refs lists the remote's refs under prefix.
func (lw *loopWorld) refs(t *testing.T, prefix string) []string {
	out := fixtures.Git(t, lw.bare, "for-each-ref", "--format=%(refname)", prefix)
	if out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

// startWorker runs w until the test ends.
func startWorker(t *testing.T, w *Worker) {
	stop, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(stop, stop) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("the worker did not stop within 30 s")
		}
	})
}

func TestAddRemoteWhileRunningAndPoke(t *testing.T) {
	exe := fixtures.Executable(t)
	lw := newLoopWorld(t, "echo ran\n")
	w := New(Config{
		Poll: time.Hour, Concurrency: 1, Lease: time.Minute, Grace: 5 * time.Second,
		Signer: fixtures.OpenPGPIdentity(t, "Test Worker"), RefciPath: exe, TempDir: t.TempDir(),
	})
	startWorker(t, w)
	rem, err := gitproto.OpenRemote("file://"+lw.bare, filepath.Join(lw.dir, "cache.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if w.Poke(rem.URL) {
		t.Fatal("Poke of a remote the worker does not serve reported true")
	}
	w.AddRemote(rem)
	w.AddRemote(rem) // a second time: nothing more
	// The new loop polls at once; wait until that poll is over (the
	// cache holds the fetched refs) so the request below is new to it.
	fixtures.WaitFor(t, 10*time.Second, "the first poll of the added remote", func() bool {
		_, err := os.Stat(filepath.Join(lw.dir, "cache.git", "HEAD"))
		return err == nil
	})
	time.Sleep(300 * time.Millisecond)
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "HEAD:refs/ci/requests/poked")
	if !w.Poke(rem.URL) {
		t.Fatal("Poke of a served remote reported false")
	}
	// The poll interval is an hour: only the poke can start this run.
	fixtures.WaitFor(t, 20*time.Second, "the poked request's result", func() bool {
		return len(lw.refs(t, queue.RunsPrefix)) == 1 && len(lw.refs(t, queue.RequestsPrefix)) == 0 && len(lw.refs(t, queue.ClaimsPrefix)) == 0
	})
	// Once published, the cache forgets its own copy of the run ref.
	fixtures.WaitFor(t, 10*time.Second, "the cache to drop the published run ref", func() bool {
		return fixtures.Git(t, lw.dir, "--git-dir="+filepath.Join(lw.dir, "cache.git"), "for-each-ref", queue.RunsPrefix) == ""
	})
	w.mu.Lock()
	n := len(w.cfg.Remotes)
	w.mu.Unlock()
	if n != 1 {
		t.Fatalf("the worker serves %d remotes after adding one twice", n)
	}
}

func TestTrustHookDecidesPerRun(t *testing.T) {
	exe := fixtures.Executable(t)
	lw := newLoopWorld(t, "echo \"trusted=$REFCI_TRUSTED\"\n")
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "HEAD:refs/ci/requests/good", "HEAD:refs/ci/requests/bad")
	rem, err := gitproto.OpenRemote("file://"+lw.bare, filepath.Join(lw.dir, "cache.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	w := New(Config{
		Remotes: []*gitproto.Remote{rem}, Poll: 100 * time.Millisecond, Concurrency: 2, Grace: 5 * time.Second,
		Signer: fixtures.OpenPGPIdentity(t, "Test Worker"), RefciPath: exe, TempDir: t.TempDir(),
		Trust: func(q TrustQuery) (bool, string) {
			if q.Target.String() == "" || q.Repo == nil || q.Remote != rem.URL {
				return false, "incomplete query"
			}
			if q.Request == "good" {
				return true, "test says so"
			}
			return false, "test says no"
		},
	})
	startWorker(t, w)
	fixtures.WaitFor(t, 20*time.Second, "both results", func() bool { return len(lw.refs(t, queue.RunsPrefix)) == 2 })
	for _, ref := range lw.refs(t, queue.RunsPrefix) {
		st, err := queue.DecodeStatus([]byte(fixtures.Git(t, lw.bare, "show", ref+":"+queue.StatusFile)))
		if err != nil {
			t.Fatal(err)
		}
		log := fixtures.Git(t, lw.bare, "show", ref+":"+queue.LogFile)
		want := st.Request == "good"
		if st.Trusted != want || !strings.Contains(log, "trusted="+map[bool]string{true: "1", false: "0"}[want]) {
			t.Errorf("request %s: trusted=%v, log %q; want trusted=%v", st.Request, st.Trusted, log, want)
		}
		if wantWhy := map[bool]string{true: "test says so", false: "test says no"}[want]; st.TrustNote != wantWhy {
			t.Errorf("request %s: trust_reason %q, want %q", st.Request, st.TrustNote, wantWhy)
		}
	}
}

// A run whose socket cannot be made (here: its path is over the 108 bytes
// a Unix socket path may have) is answered with an error result naming
// the cause, not retried for ever without one.
func TestRunSocketFailureIsAnErrorResult(t *testing.T) {
	lw := newLoopWorld(t, "echo ran\n")
	repo, head := lw.head(t)
	deep := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	if err := os.MkdirAll(deep, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := Run(t.Context(), RunSpec{Repo: repo, Target: head, Request: "local", TempDir: deep}, fixtures.OpenPGPIdentity(t, "Test Worker"))
	if err != nil {
		t.Fatalf("no result: %v", err)
	}
	if out.Status.State != queue.Error || !strings.Contains(out.Status.Reason, "cannot create the run's socket") || !strings.Contains(out.Status.Reason, "limited to about 100") {
		t.Errorf("state %s, reason %q", out.Status.State, out.Status.Reason)
	}
}

func TestBackoffStaysUnderTheTakeoverWait(t *testing.T) {
	for _, lease := range []time.Duration{600 * time.Millisecond, 3 * time.Second, 12 * time.Second, 60 * time.Second, 10 * time.Minute} {
		var b time.Duration
		var seen []time.Duration
		for i := 0; i < 12; i++ {
			b = nextBackoff(b, lease)
			seen = append(seen, b)
			if b <= 0 || b > lease/6 || b > 10*time.Second {
				t.Fatalf("lease %v: backoff %v after %v; it must be positive and at most min(lease/6, 10s)", lease, b, seen)
			}
		}
		if want := min(10*time.Second, lease/6); b != want {
			t.Errorf("lease %v: backoff settles at %v, want %v", lease, b, want)
		}
		if lease >= 6*time.Second && seen[0] != time.Second {
			t.Errorf("lease %v: first backoff %v, want 1s", lease, seen[0])
		}
	}
}

// head opens the world's clone and resolves its HEAD.
func (lw *loopWorld) head(t *testing.T) (*gitproto.Repo, gitproto.Hash) {
	t.Helper()
	repo, err := gitproto.Open(lw.clone)
	if err != nil {
		t.Fatal(err)
	}
	head, err := repo.ResolveCommit("HEAD")
	if err != nil {
		t.Fatal(err)
	}
	return repo, head
}

// A worker that took an expired claim over must not cancel its own run
// when its cache still shows the claim it replaced (the cache is fetched
// before the takeover's push); it must cancel when the claim was taken
// from it in turn.
func TestTakeoverIsNotCancelledByTheClaimItReplaced(t *testing.T) {
	lw := newLoopWorld(t, "echo ran\n")
	repo, head := lw.head(t)
	w := New(Config{Concurrency: 1, Signer: fixtures.OpenPGPIdentity(t, "Test Worker")})
	rem := &gitproto.Remote{URL: "file://" + lw.bare, Cache: lw.clone}
	now := time.Now()
	claim := func(run string, attempt int, old gitproto.Hash) gitproto.Hash {
		t.Helper()
		c := queue.Claim{Format: queue.Format, Request: "r", RequestObject: head.String(), Target: head.String(),
			Run: run, Attempt: attempt, Worker: strings.Repeat("A", 40), Claimed: now, Renewed: now, LeaseExpires: now.Add(time.Minute)}
		h, err := w.writeClaim(repo, &c, old)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	// Claims are checked when read (queue.Claim.Validate): real run ids.
	deadRun, ourRun, laterRun := queue.NewRunID(now.Add(-time.Hour)), queue.NewRunID(now), queue.NewRunID(now.Add(time.Second))
	dead := claim(deadRun, 1, gitproto.ZeroHash)
	ours := claim(ourRun, 2, dead)
	renewed := claim(ourRun, 2, ours)
	theirs := claim(laterRun, 3, renewed)
	requests := map[string]gitproto.Hash{"r": head}
	for _, tc := range []struct {
		name   string
		cached gitproto.Hash
		cancel bool
	}{
		{"the cache shows the claim we took over", dead, false},
		{"the cache shows our claim before a renewal", ours, false},
		{"the cache shows our claim", renewed, false},
		{"the cache shows a takeover of our claim", theirs, true},
	} {
		var cause error
		a := &activeRun{remote: rem, claim: queue.Claim{Request: "r", RequestObject: head.String(), Run: ourRun}, claimVal: renewed,
			cancel: func(err error) { cause = err }}
		w.mu.Lock()
		w.active = map[string]*activeRun{"r": a}
		w.mu.Unlock()
		w.checkSupersede(rem, repo, requests, map[string]gitproto.Hash{"r": tc.cached})
		if (cause != nil) != tc.cancel {
			t.Errorf("%s: cancelled %v (%v), want %v", tc.name, cause != nil, cause, tc.cancel)
		}
	}
}

// A running pipeline's first output reaches the remote soon, not a whole
// snapshot interval later, and each snapshot is pushed as it is written,
// not at the remote loop's next tick (issue 16, item 8): here both the
// interval and the tick are an hour. Its status.json names the request
// object run.
func TestFirstSnapshotIsPushedAtOnce(t *testing.T) {
	exe := fixtures.Executable(t)
	gate := filepath.Join(t.TempDir(), "gate")
	if err := syscall.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	lw := newLoopWorld(t, "echo first-output\nread go < "+gate+"\necho done\n")
	fixtures.Git(t, lw.clone, "tag", "-a", "-m", "refci request snap", "req", "HEAD")
	tag := fixtures.Git(t, lw.clone, "rev-parse", "req")
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "refs/tags/req:refs/ci/requests/snap")
	rem, err := gitproto.OpenRemote("file://"+lw.bare, filepath.Join(lw.dir, "cache.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	w := New(Config{
		Remotes: []*gitproto.Remote{rem}, Poll: time.Hour, Lease: time.Hour, Snapshot: time.Hour, Concurrency: 1, Grace: 5 * time.Second,
		Signer: fixtures.OpenPGPIdentity(t, "Test Worker"), RefciPath: exe, TempDir: t.TempDir(),
	})
	startWorker(t, w)
	var ref string
	fixtures.WaitFor(t, time.Minute, "a snapshot with the first output on the remote", func() bool {
		refs := lw.refs(t, queue.RunsPrefix)
		if len(refs) != 1 {
			return false
		}
		ref = refs[0]
		return strings.Contains(fixtures.Git(t, lw.bare, "show", ref+":"+queue.LogFile), "first-output")
	})
	st, err := queue.DecodeStatus([]byte(fixtures.Git(t, lw.bare, "show", ref+":"+queue.StatusFile)))
	if err != nil || st.State != queue.Running || st.RequestObject != tag {
		t.Fatalf("snapshot status %+v, %v; want running, request_object %s", st, err, tag)
	}
	f, err := os.OpenFile(gate, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("go\n")
	f.Close()
	fixtures.WaitFor(t, time.Minute, "the result", func() bool { return len(lw.refs(t, queue.RequestsPrefix)) == 0 })
	st, err = queue.DecodeStatus([]byte(fixtures.Git(t, lw.bare, "show", ref+":"+queue.StatusFile)))
	if err != nil || st.State != queue.Success || st.RequestObject != tag {
		t.Fatalf("result %+v, %v; want success, request_object %s", st, err, tag)
	}
}

// A claim left without its request (its worker died between deleting the
// request and the claim, or a claim won for a request deleted meanwhile)
// is removed once it has expired.
func TestOrphanClaimIsRemoved(t *testing.T) {
	lw := newLoopWorld(t, "echo ran\n")
	fixtures.Git(t, lw.bare, "config", "receive.fsckObjects", "true")
	repo, head := lw.head(t)
	signer := fixtures.OpenPGPIdentity(t, "Test Worker")
	w := New(Config{Poll: 100 * time.Millisecond, Concurrency: 1, Lease: 3 * time.Second, Grace: time.Second,
		Signer: signer, RefciPath: fixtures.Executable(t), TempDir: t.TempDir()})
	rem, err := gitproto.OpenRemote("file://"+lw.bare, filepath.Join(lw.dir, "cache.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	w.AddRemote(rem)
	then := time.Now().Add(-time.Hour)
	c := queue.Claim{Format: queue.Format, Request: "gone", RequestObject: head.String(), Target: head.String(),
		Run: queue.NewRunID(then), Attempt: 1, Worker: signer.Fingerprint(), Claimed: then, Renewed: then, LeaseExpires: then.Add(3 * time.Second)}
	h, err := w.writeClaim(repo, &c, gitproto.ZeroHash)
	if err != nil {
		t.Fatal(err)
	}
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, h.String()+":"+queue.ClaimRef("gone"))
	startWorker(t, w)
	fixtures.WaitFor(t, 30*time.Second, "the orphan claim to go", func() bool { return len(lw.refs(t, queue.ClaimsPrefix)) == 0 })
}

// A lock file left on the remote (by a git process killed while it
// updated the ref) refuses every update of the ref; the worker says so
// once, when it has lasted, with git's words and what to do.
func TestStaleLockOnTheRemoteIsSaidOnce(t *testing.T) {
	lw := newLoopWorld(t, "echo ran\n")
	fixtures.Git(t, lw.bare, "config", "receive.fsckObjects", "true") // a real git push
	_, head := lw.head(t)
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "HEAD:"+queue.ClaimRef("held"))
	lock := filepath.Join(lw.bare, "refs", "ci", "claims", "held.lock")
	if err := os.WriteFile(lock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rem, err := gitproto.OpenRemote("file://"+lw.bare, filepath.Join(lw.dir, "cache.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var logs fixtures.Buffer
	w := New(Config{Concurrency: 1, Signer: fixtures.OpenPGPIdentity(t, "Test Worker"), Now: func() time.Time { return now },
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	push := func() []gitproto.PushResult {
		t.Helper()
		res, err := rem.Push(context.Background(), []gitproto.RefUpdate{{Name: queue.ClaimRef("held"), Old: head}}, false)
		if err != nil || len(res) != 1 || res[0].OK {
			t.Fatalf("deleting a locked ref: %+v, %v", res, err)
		}
		return res
	}
	for _, step := range []time.Duration{0, staleLockAfter / 2, staleLockAfter / 2, time.Minute, time.Hour} {
		now = now.Add(step)
		w.noteRefusals(rem, push(), "cleanup")
	}
	out := logs.String()
	if n := strings.Count(out, "level=WARN"); n != 1 || !strings.Contains(out, "held.lock") || !strings.Contains(out, "remove the file") {
		t.Fatalf("want one warning naming the lock file and what to do; log:\n%s", out)
	}
	// Once the file is gone, the cleanup goes through, and a new lock
	// is new again.
	os.Remove(lock)
	res, err := rem.Push(context.Background(), []gitproto.RefUpdate{{Name: queue.ClaimRef("held"), Old: head}}, false)
	if err != nil || !res[0].OK {
		t.Fatalf("deleting once the lock is gone: %+v, %v", res, err)
	}
	w.noteRefusals(rem, res, "cleanup")
	if len(w.locked) != 0 {
		t.Fatalf("a ref updated since still counts as locked: %v", w.locked)
	}
}
