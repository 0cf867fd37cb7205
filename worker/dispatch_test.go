package worker

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
)

// quietWorker starts a worker with an hour's poll, lease and snapshot
// interval on lw's remote, given by its path as refci serve gives its
// repositories, once its first poll has run a first request: from then
// on the worker looks at the remote only when Poke or Dispatch tells it
// to. (The poll that claims something is followed at once by another,
// in the same loop that later pushes the result: once the result is on
// the remote, both are over.)
func quietWorker(t *testing.T, lw *loopWorld) (*Worker, *gitproto.Remote) {
	t.Helper()
	return quietWorkerLease(t, lw, time.Hour)
}

// quietWorkerLease is quietWorker with another lease (renewed every
// third of it, and the loop's tick no longer).
func quietWorkerLease(t *testing.T, lw *loopWorld, lease time.Duration) (*Worker, *gitproto.Remote) {
	t.Helper()
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "HEAD:refs/ci/requests/first")
	rem, err := gitproto.OpenRemote(lw.bare, filepath.Join(lw.dir, "cache.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	w := New(Config{
		Remotes: []*gitproto.Remote{rem}, Poll: time.Hour, Lease: lease, Snapshot: time.Hour, Concurrency: 4, Grace: 5 * time.Second,
		Signer: fixtures.OpenPGPIdentity(t, "Test Worker"), RefciPath: fixtures.Executable(t), TempDir: t.TempDir(),
	})
	startWorker(t, w)
	lw.waitDone(t, 1)
	return w, rem
}

// waitDone waits until no request is left on the remote and it holds
// runs results.
func (lw *loopWorld) waitDone(t *testing.T, runs int) {
	t.Helper()
	fixtures.WaitForShowing(t, time.Minute, "every request run and published", func() bool {
		return len(lw.refs(t, queue.RequestsPrefix)) == 0 && len(lw.refs(t, queue.ClaimsPrefix)) == 0 && len(lw.refs(t, queue.RunsPrefix)) == runs
	}, func() string { return fixtures.Git(t, lw.bare, "for-each-ref") })
}

// newRequestCommit commits a change in the clone (objects the worker's
// cache has never seen) and returns it.
func (lw *loopWorld) newRequestCommit(t *testing.T, what string) string {
	t.Helper()
	fixtures.WriteFile(t, lw.clone, "src/"+what+".txt", what+"\n", 0o644)
	return fixtures.CommitAll(t, lw.clone, what)
}

// results returns the status of every run on the remote, by request.
func (lw *loopWorld) results(t *testing.T) map[string][]*queue.Status {
	t.Helper()
	out := map[string][]*queue.Status{}
	for _, ref := range lw.refs(t, queue.RunsPrefix) {
		st, err := queue.DecodeStatus([]byte(fixtures.Git(t, lw.bare, "show", ref+":"+queue.StatusFile)))
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		out[st.Request] = append(out[st.Request], st)
	}
	return out
}

// A pushed request is claimed and run by Dispatch alone: the worker's
// poll is an hour away, and its cache never fetches the request.
func TestDispatchClaimsWithoutAPoll(t *testing.T) {
	lw := newLoopWorld(t, "echo ran\n")
	w, rem := quietWorker(t, lw)
	commit := lw.newRequestCommit(t, "fast")
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "HEAD:refs/ci/requests/fast")
	if w.Dispatch(rem.URL+"-elsewhere", []string{"fast"}) {
		t.Fatal("Dispatch to a remote the worker does not serve reported true")
	}
	if !w.Dispatch(rem.URL, []string{"fast", "not a/valid name", "fast"}) {
		t.Fatal("Dispatch to a served remote reported false")
	}
	lw.waitDone(t, 2)
	st := lw.results(t)["fast"]
	if len(st) != 1 || st[0].State != queue.Success || st[0].Target != commit || st[0].RequestObject != commit || st[0].Attempt != 1 {
		t.Fatalf("the dispatched request's results: %s; want one success of %s", show(st), commit)
	}
	if got := fixtures.Git(t, lw.dir, "--git-dir="+rem.Cache, "for-each-ref", queue.RequestRef("fast")); got != "" {
		t.Errorf("the cache fetched the request (%s): a poll ran it, not Dispatch", got)
	}
}

// Dispatch and another worker claim the same requests at once; that one
// pushes its claims with git push (receive-pack's compare-and-swap, as
// over SSH). Each request runs exactly once.
func TestDispatchRacesAPushingWorker(t *testing.T) {
	lw := newLoopWorld(t, "echo ran\n")
	w, rem := quietWorker(t, lw)
	lw.newRequestCommit(t, "race")
	var names, specs []string
	for i := range 8 {
		names = append(names, "race-"+string(rune('a'+i)))
		specs = append(specs, "HEAD:"+queue.RequestRef(names[i]))
	}
	fixtures.Git(t, lw.clone, append([]string{"push", "-q", lw.bare}, specs...)...)
	other, err := gitproto.OpenRemote("file://"+lw.bare, filepath.Join(lw.dir, "other.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	other.NoDirect = true
	rival := New(Config{
		Remotes: []*gitproto.Remote{other}, Poll: time.Hour, Lease: time.Hour, Snapshot: time.Hour, Concurrency: 8, Grace: 5 * time.Second,
		Signer: fixtures.OpenPGPIdentity(t, "Rival Worker"), RefciPath: fixtures.Executable(t), TempDir: t.TempDir(),
	})
	startWorker(t, rival) // its first poll claims at once
	w.Dispatch(rem.URL, names)
	lw.waitDone(t, 1+len(names))
	results := lw.results(t)
	workers := map[string]int{}
	for _, name := range names {
		st := results[name]
		if len(st) != 1 || st[0].State != queue.Success {
			t.Errorf("request %s: results %s; want exactly one success", name, show(st))
			continue
		}
		workers[st[0].Worker]++
	}
	t.Logf("runs by worker: %v", workers)
}

// What Dispatch cannot claim itself goes to the loop, which it wakes: the
// run starts although the poll is an hour away.
func TestDispatchFallsBackToTheLoop(t *testing.T) {
	for _, tc := range []struct {
		name  string // short: the run's socket lives under the test's directory
		setup func(t *testing.T, lw *loopWorld)
	}{
		// The repository has receive settings, so it is pushed to.
		{"pushed", func(t *testing.T, lw *loopWorld) {
			fixtures.Git(t, lw.bare, "config", "receive.fsckObjects", "true")
		}},
		// The request has more objects than Dispatch copies.
		{"fetched", func(t *testing.T, lw *loopWorld) {
			old := dispatchMaxObjects
			dispatchMaxObjects = 2 // the new commit brings four
			t.Cleanup(func() { dispatchMaxObjects = old })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lw := newLoopWorld(t, "echo ran\n")
			tc.setup(t, lw)
			w, rem := quietWorker(t, lw)
			if ok, why := rem.Direct(t.Context()); ok == (tc.name == "pushed") {
				t.Fatalf("Direct() = %v, %s", ok, why)
			}
			commit := lw.newRequestCommit(t, "slow")
			fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "HEAD:refs/ci/requests/slow")
			w.Dispatch(rem.URL, []string{"slow"})
			lw.waitDone(t, 2)
			if st := lw.results(t)["slow"]; len(st) != 1 || st[0].State != queue.Success || st[0].Target != commit {
				t.Fatalf("results %s; want one success of %s", show(st), commit)
			}
		})
	}
}

// A request that was claimed already (here by a worker that is still
// holding it) is not claimed by Dispatch again: that is the loop's to
// judge, after the lease.
func TestDispatchLeavesClaimedRequests(t *testing.T) {
	lw := newLoopWorld(t, "echo ran\n")
	w, rem := quietWorker(t, lw)
	repo, head := lw.head(t)
	now := time.Now()
	c := queue.Claim{Format: queue.Format, Request: "held", RequestObject: head.String(), Target: head.String(),
		Run: queue.NewRunID(now), Attempt: 1, Worker: strings.Repeat("B", 40), Claimed: now, Renewed: now, LeaseExpires: now.Add(time.Hour)}
	claim, err := w.writeClaim(repo, &c, gitproto.ZeroHash)
	if err != nil {
		t.Fatal(err)
	}
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, claim.String()+":"+queue.ClaimRef("held"), "HEAD:"+queue.RequestRef("held"))
	cache, err := gitproto.Open(rem.Cache)
	if err != nil {
		t.Fatal(err)
	}
	served, err := rem.DirectRepo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	handled, err := w.claimHere(t.Context(), t.Context(), rem, served, cache, "held")
	if handled || err != nil {
		t.Errorf("claimHere of a held request = %v, %v; want it left to the loop", handled, err)
	}
	if got := fixtures.Git(t, lw.bare, "rev-parse", queue.ClaimRef("held")); got != claim.String() {
		t.Errorf("the held claim changed to %s", got)
	}
	if names := lw.refs(t, queue.RunsPrefix); len(names) != 1 || slices.ContainsFunc(names, func(n string) bool { return strings.Contains(n, c.Run) }) {
		t.Errorf("runs %v; want only the first request's", names)
	}
}

func show(sts []*queue.Status) string {
	var b strings.Builder
	for _, st := range sts {
		fmt.Fprintf(&b, "[%s %s target %s attempt %d: %s] ", st.Run, st.State, st.Target, st.Attempt, st.Reason)
	}
	return b.String()
}

// A pusher's request that is not a commit (here a tree) is claimed and
// answered like any other: an error result that says so, nothing run.
func TestDispatchRequestOfATree(t *testing.T) {
	lw := newLoopWorld(t, "echo ran\n")
	w, rem := quietWorker(t, lw)
	lw.newRequestCommit(t, "tree")
	tree := fixtures.Git(t, lw.clone, "rev-parse", "HEAD^{tree}")
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, tree+":refs/ci/requests/tree")
	w.Dispatch(rem.URL, []string{"tree"})
	lw.waitDone(t, 2)
	st := lw.results(t)["tree"]
	if len(st) != 1 || st[0].State != queue.Error || !strings.Contains(st[0].Reason, "points at a tree, not a commit") {
		t.Fatalf("results %s; want one error saying the request is a tree", show(st))
	}
}

// A dispatched run outlives its lease: the loop renews the claim Dispatch
// made (its commit is in the cache, as the renewal's parent), and the
// run ends with its first attempt.
func TestDispatchedClaimIsRenewed(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "gate")
	if err := syscall.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	lw := newLoopWorld(t, "if [ \"$REFCI_REQUEST\" = long ]; then read go < "+gate+"; fi\necho done\n")
	w, rem := quietWorkerLease(t, lw, 3*time.Second)
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "HEAD:refs/ci/requests/long")
	w.Dispatch(rem.URL, []string{"long"})
	var first string
	fixtures.WaitFor(t, time.Minute, "the dispatched claim", func() bool {
		first, _ = lw.ref(t, queue.ClaimRef("long"))
		return first != ""
	})
	fixtures.WaitFor(t, time.Minute, "a renewal of the dispatched claim", func() bool {
		cur, _ := lw.ref(t, queue.ClaimRef("long"))
		return cur != "" && cur != first && fixtures.Git(t, lw.bare, "rev-parse", cur+"^") == first
	})
	f, err := os.OpenFile(gate, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("go\n")
	f.Close()
	lw.waitDone(t, 2)
	if st := lw.results(t)["long"]; len(st) != 1 || st[0].State != queue.Success || st[0].Attempt != 1 {
		t.Fatalf("results %s; want one success, attempt 1", show(st))
	}
}

// ref returns the remote's value of ref name, if it has one.
func (lw *loopWorld) ref(t *testing.T, name string) (string, bool) {
	t.Helper()
	out, err := fixtures.RunGit(lw.bare, nil, nil, "rev-parse", "--verify", "-q", name)
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(out)), true
}

// Dispatch writes its claim commit into the served repository and into
// the cache, signed once: the same commit in both, whose signature is
// the worker's.
func TestDispatchedClaimIsOneSignedCommitInBoth(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "gate")
	if err := syscall.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	lw := newLoopWorld(t, "if [ \"$REFCI_REQUEST\" = held ]; then read go < "+gate+"; fi\necho done\n")
	w, rem := quietWorker(t, lw)
	lw.newRequestCommit(t, "held")
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "HEAD:refs/ci/requests/held")
	w.Dispatch(rem.URL, []string{"held"})
	var claim string
	fixtures.WaitFor(t, time.Minute, "the dispatched claim", func() bool {
		claim, _ = lw.ref(t, queue.ClaimRef("held"))
		return claim != ""
	})
	inRemote := fixtures.Git(t, lw.bare, "cat-file", "commit", claim)
	inCache := fixtures.Git(t, lw.dir, "--git-dir="+rem.Cache, "cat-file", "commit", claim)
	if inRemote != inCache || !strings.Contains(inRemote, "gpgsig ") {
		t.Errorf("the claim commit in the remote:\n%s\nin the cache:\n%s", inRemote, inCache)
	}
	for _, dir := range []string{lw.bare, rem.Cache} {
		repo, err := gitproto.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		c, err := repo.Commit(gitproto.NewHash(claim))
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		payload, sig, err := gitproto.SignedPayload(c)
		if err != nil {
			t.Fatal(err)
		}
		var kr secrets.Keyring
		kr.Add(w.cfg.Signer.(*secrets.Identity))
		if s, err := kr.VerifyDetached(payload, sig); err != nil || s.Fingerprint != w.cfg.Signer.Fingerprint() {
			t.Errorf("the claim commit's signature in %s: %+v, %v", dir, s, err)
		}
	}
	f, err := os.OpenFile(gate, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("go\n")
	f.Close()
	lw.waitDone(t, 2)
}
