package worker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// resultOf reads the status and log of the one result of request name on
// the world's remote.
func (lw *loopWorld) resultOf(t *testing.T, name string) (*queue.Status, string) {
	t.Helper()
	for _, ref := range lw.refs(t, queue.RunsPrefix) {
		st, err := queue.DecodeStatus([]byte(fixtures.Git(t, lw.bare, "show", ref+":"+queue.StatusFile)))
		if err != nil {
			t.Fatal(err)
		}
		if st.Request == name && st.State.Final() {
			return st, fixtures.Git(t, lw.bare, "show", ref+":"+queue.LogFile)
		}
	}
	t.Fatalf("no result of request %s on the remote", name)
	return nil, ""
}

// consumed reports whether the remote holds neither request name nor its
// claim.
func (lw *loopWorld) consumed(t *testing.T, names ...string) bool {
	for _, n := range names {
		if fixtures.Git(t, lw.bare, "for-each-ref", queue.RequestRef(n), queue.ClaimRef(n)) != "" {
			return false
		}
	}
	return true
}

// pushTagRequest pushes an annotated tag on HEAD with message msg as
// request name.
func (lw *loopWorld) pushTagRequest(t *testing.T, name, msg string) {
	t.Helper()
	f := filepath.Join(lw.dir, "tagmsg-"+name)
	if err := os.WriteFile(f, []byte(msg), 0o644); err != nil {
		t.Fatal(err)
	}
	fixtures.Git(t, lw.clone, "tag", "-a", "--cleanup=verbatim", "-F", f, "req-"+name)
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "refs/tags/req-"+name+":"+queue.RequestRef(name))
}

// Bad request options end the run in state error naming the option, with
// the pipeline not run and the request consumed; good ones still work,
// and a timeout over the worker's cap is capped and said so.
func TestRequestOptionsErrorsAndTimeoutCap(t *testing.T) {
	exe := fixtures.Executable(t)
	lw := newLoopWorld(t, "echo pipeline-ran\n")
	bad := map[string][]string{ // request → what the reason must name
		"badtimeout": {"Timeout", `"soon"`, "positive duration"},
		"negtimeout": {"Timeout", `"-5m"`, "positive duration"},
		"badenv":     {"Env", `"../prod"`, "not a valid environment name"},
		"unknown":    {"Colour", `"blue"`, "is unknown", "Env, Timeout"},
		"twice":      {"Timeout", "given twice"},
		"twicecase":  {"env", "given twice"},
	}
	msgs := map[string]string{
		"badtimeout": "request\n\nTimeout: soon\n",
		"negtimeout": "request\n\nTimeout: -5m\n",
		"badenv":     "request\n\nEnv: ../prod\n",
		"unknown":    "request\n\nColour: blue\nTimeout: 1m\n",
		"twice":      "request\n\nTimeout: 1m\nTimeout: 2m\n",
		"twicecase":  "request\n\nEnv: staging\nenv: prod\n",
		"good":       "a free-text subject, with no option\n\nsome words. And more: text\nTimeout: 45s\n",
		"capped":     "request\n\nTimeout: 10h\n",
	}
	for name, msg := range msgs {
		lw.pushTagRequest(t, name, msg)
	}
	rem, err := gitproto.OpenRemote("file://"+lw.bare, filepath.Join(lw.dir, "cache.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	w := New(Config{
		Remotes: []*gitproto.Remote{rem}, Poll: 100 * time.Millisecond, Concurrency: 2, Grace: 5 * time.Second,
		Limits: Limits{Timeout: 30 * time.Second}, MaxTimeout: time.Minute,
		Signer: fixtures.OpenPGPIdentity(t, "Test Worker"), RefciPath: exe, TempDir: t.TempDir(),
	})
	startWorker(t, w)
	fixtures.WaitFor(t, 60*time.Second, "every request answered and consumed", func() bool {
		return len(lw.refs(t, queue.RunsPrefix)) == len(msgs) && len(lw.refs(t, queue.RequestsPrefix)) == 0 && len(lw.refs(t, queue.ClaimsPrefix)) == 0
	})
	for name, want := range bad {
		st, log := lw.resultOf(t, name)
		if st.State != queue.Error || st.ExitCode != nil {
			t.Errorf("%s: state %s, exit code %v; want error, not run", name, st.State, st.ExitCode)
		}
		for _, w := range append(want, "request option", "the pipeline did not run") {
			if !strings.Contains(st.Reason, w) {
				t.Errorf("%s: reason %q does not say %q", name, st.Reason, w)
			}
		}
		if strings.Contains(log, "pipeline-ran") || !strings.Contains(log, "request option") {
			t.Errorf("%s: log %q: the pipeline ran, or the log does not give the reason", name, log)
		}
	}
	st, log := lw.resultOf(t, "good")
	if st.State != queue.Success || !strings.Contains(log, "pipeline-ran") || st.Extra["timeout_requested"] != nil {
		t.Errorf("good options: state %s (%s), extra %v, log %q", st.State, st.Reason, st.Extra, log)
	}
	st, log = lw.resultOf(t, "capped")
	if st.State != queue.Success || st.Extra["timeout_requested"] != "10h0m0s" || st.Extra["timeout_cap"] != "1m0s" ||
		!strings.Contains(log, "asked for Timeout 10h0m0s; this worker allows at most 1m0s") {
		t.Errorf("capped timeout: state %s (%s), extra %v, log %q", st.State, st.Reason, st.Extra, log)
	}
}

// A request whose attempts all lost their worker ends, after MaxAttempts
// of them, in state error with a signed result, and is consumed; one that
// has attempts left is still run.
func TestGiveUpAfterMaxAttempts(t *testing.T) {
	exe := fixtures.Executable(t)
	lw := newLoopWorld(t, "echo pipeline-ran\n")
	repo, head := lw.head(t)
	signer := fixtures.OpenPGPIdentity(t, "Test Worker")
	w := New(Config{
		Poll: 100 * time.Millisecond, Concurrency: 2, Grace: 5 * time.Second, Lease: 600 * time.Millisecond,
		Signer: signer, RefciPath: exe, TempDir: t.TempDir(),
	})
	// Claims of workers that vanished: their leases ran out long ago.
	long := time.Now().Add(-time.Hour)
	for name, attempt := range map[string]int{"doomed": 3, "lucky": 2} {
		fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "HEAD:"+queue.RequestRef(name))
		c := queue.Claim{Format: queue.Format, Request: name, RequestObject: head.String(), Target: head.String(),
			Run: queue.NewRunID(long), Attempt: attempt, Worker: strings.Repeat("DEAD", 10), Claimed: long, Renewed: long, LeaseExpires: long}
		// The dead worker's last progress snapshot: state running, for good.
		st := &queue.Status{Format: queue.Format, State: queue.Running, Target: head.String(), Request: name, Run: c.Run,
			Attempt: attempt, Worker: strings.Repeat("DEAD", 10), Started: long, Jobs: []queue.Job{}, Artifacts: []queue.Artifact{}}
		b, err := queue.EncodeStatus(st)
		if err != nil {
			t.Fatal(err)
		}
		blob, err := repo.WriteBlob(b)
		if err != nil {
			t.Fatal(err)
		}
		tree, err := repo.WriteTree([]gitproto.TreeFile{{Path: queue.StatusFile, Hash: blob}})
		if err != nil {
			t.Fatal(err)
		}
		snap := fixtures.Git(t, lw.clone, "commit-tree", "-m", "refci: running", tree.String())
		fixtures.Git(t, lw.clone, "push", "-q", lw.bare, snap+":"+queue.RunRef(head.String(), c.Run))
		h, err := w.writeClaim(repo, &c, gitproto.ZeroHash)
		if err != nil {
			t.Fatal(err)
		}
		fixtures.Git(t, lw.clone, "push", "-q", lw.bare, h.String()+":"+queue.ClaimRef(name))
	}
	rem, err := gitproto.OpenRemote("file://"+lw.bare, filepath.Join(lw.dir, "cache.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	w.AddRemote(rem)
	startWorker(t, w)
	fixtures.WaitFor(t, 60*time.Second, "both requests answered and consumed", func() bool {
		return len(lw.refs(t, queue.RunsPrefix)) == 4 && lw.consumed(t, "doomed", "lucky")
	})
	st, log := lw.resultOf(t, "doomed")
	if st.State != queue.Error || st.Attempt != 4 || !strings.HasPrefix(st.Reason, "gave up after 3 attempts: the worker was lost each time") ||
		st.PreviousRun() == "" || st.Worker != signer.Fingerprint() || st.ExitCode != nil {
		t.Errorf("doomed: state %s, attempt %d, reason %q, previous run %q, worker %s, exit code %v",
			st.State, st.Attempt, st.Reason, st.PreviousRun(), st.Worker, st.ExitCode)
	}
	if strings.Contains(log, "pipeline-ran") {
		t.Errorf("doomed: the pipeline ran a fourth time: %q", log)
	}
	st, log = lw.resultOf(t, "lucky")
	if st.State != queue.Success || st.Attempt != 3 || !strings.Contains(log, "pipeline-ran") {
		t.Errorf("lucky: state %s (%s), attempt %d, log %q; want attempt 3 run", st.State, st.Reason, st.Attempt, log)
	}
	// The results are signed by the worker that gave up.
	for _, name := range []string{"doomed", "lucky"} {
		st, _ := lw.resultOf(t, name)
		if c := fixtures.Git(t, lw.bare, "cat-file", "commit", queue.RunRef(st.Target, st.Run)); !strings.Contains(c, "gpgsig") {
			t.Errorf("the result of %s is not signed", name)
		}
	}
}
