package worker

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// preparedFor waits for PrepareClaim's claim of name and returns it.
func preparedFor(t *testing.T, w *Worker, rem *gitproto.Remote, name string) preparedClaim {
	t.Helper()
	var p preparedClaim
	fixtures.WaitFor(t, time.Minute, "the prepared claim", func() bool {
		w.dispatchMu.Lock()
		defer w.dispatchMu.Unlock()
		var ok bool
		p, ok = w.prepared[preparedKey{rem, name}]
		return ok
	})
	return p
}

// claimOf reads the claim the remote's claim ref of name holds.
func (lw *loopWorld) claimOf(t *testing.T, name string) (string, *queue.Claim) {
	t.Helper()
	var val string
	fixtures.WaitFor(t, time.Minute, "the claim of "+name, func() bool {
		val, _ = lw.ref(t, queue.ClaimRef(name))
		return val != ""
	})
	c, err := queue.DecodeClaim([]byte(fixtures.Git(t, lw.bare, "show", val+":"+queue.ClaimFile)))
	if err != nil {
		t.Fatal(err)
	}
	return val, c
}

// A claim prepared while the push runs is the claim Dispatch makes once
// the request holds that value: the same commit, in the remote and the
// cache, and the run is the one it names.
func TestDispatchTakesThePreparedClaim(t *testing.T) {
	gate := gateFile(t)
	lw := newLoopWorld(t, "if [ \"$REFCI_REQUEST\" = prep ]; then read go < "+gate+"; fi\necho done\n")
	w, rem := quietWorker(t, lw)
	commit := lw.newRequestCommit(t, "prep")
	w.PrepareClaim(rem.URL, "prep", commit)
	w.PrepareClaim(rem.URL, "not a/valid name", commit)
	w.PrepareClaim(rem.URL, "bad", "not a hash")
	p := preparedFor(t, w, rem, "prep")
	if p.claim.RequestObject != commit || p.claim.Target != commit || p.claim.Attempt != 1 {
		t.Errorf("prepared %+v", p.claim)
	}
	if got := fixtures.Git(t, lw.dir, "--git-dir="+rem.Cache, "cat-file", "-t", p.commit.String()); got != "commit" {
		t.Errorf("the prepared claim in the cache: %q", got)
	}
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "HEAD:refs/ci/requests/prep")
	w.Dispatch(rem.URL, []string{"prep"})
	val, c := lw.claimOf(t, "prep")
	if val != p.commit.String() || c.Run != p.claim.Run {
		t.Errorf("the claim is %s (run %s), not the prepared %s (run %s)", val, c.Run, p.commit, p.claim.Run)
	}
	openGate(t, gate)
	lw.waitDone(t, 2)
	st := lw.results(t)["prep"]
	if len(st) != 1 || st[0].State != queue.Success || st[0].Run != p.claim.Run || st[0].Target != commit {
		t.Fatalf("results %s; want one success, run %s", show(st), p.claim.Run)
	}
	w.dispatchMu.Lock()
	n := len(w.prepared)
	w.dispatchMu.Unlock()
	if n != 0 {
		t.Errorf("%d prepared claims left", n)
	}
}

// A prepared claim is not taken for another value of the request (the
// push failed and another came, or post-receive wrapped it into a tag),
// nor once it is old: Dispatch makes its own claim.
func TestDispatchLeavesAPreparedClaimThatDoesNotFit(t *testing.T) {
	lw := newLoopWorld(t, "echo done\n")
	w, rem := quietWorker(t, lw)
	other := lw.newRequestCommit(t, "other")
	commit := lw.newRequestCommit(t, "pushed")
	w.PrepareClaim(rem.URL, "moved", other)
	p := preparedFor(t, w, rem, "moved")
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "HEAD:refs/ci/requests/moved")
	w.Dispatch(rem.URL, []string{"moved"})
	val, c := lw.claimOf(t, "moved")
	if val == p.commit.String() || c.RequestObject != commit || c.Target != commit {
		t.Errorf("the claim of another value: %s %+v", val, c)
	}
	lw.waitDone(t, 2)

	w.PrepareClaim(rem.URL, "old", commit)
	p = preparedFor(t, w, rem, "old")
	w.dispatchMu.Lock()
	p.claim.Claimed = p.claim.Claimed.Add(-time.Minute)
	w.prepared[preparedKey{rem, "old"}] = p
	w.dispatchMu.Unlock()
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "HEAD:refs/ci/requests/old")
	w.Dispatch(rem.URL, []string{"old"})
	val, c = lw.claimOf(t, "old")
	if val == p.commit.String() || c.RequestObject != commit {
		t.Errorf("an old prepared claim was taken: %s %+v", val, c)
	}
	lw.waitDone(t, 3)
	for _, name := range []string{"moved", "old"} {
		if st := lw.results(t)[name]; len(st) != 1 || st[0].State != queue.Success || st[0].Target != commit {
			t.Errorf("results of %s: %s", name, show(st))
		}
	}
}

// gateFile makes a FIFO a pipeline can wait on (read go < FIFO) until
// the test calls openGate.
func gateFile(t *testing.T) string {
	t.Helper()
	gate := filepath.Join(t.TempDir(), "gate")
	if err := syscall.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	return gate
}

func openGate(t *testing.T, gate string) {
	t.Helper()
	f, err := os.OpenFile(gate, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("go\n")
	f.Close()
}
