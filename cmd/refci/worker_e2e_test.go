package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/queue"
)

// A fleet is a bare remote, a clone to push requests from, and worker
// processes, each with its own REFCI_HOME.
type fleet struct {
	*sandbox
	bare    string
	url     string // the workers' remote: "file://" + bare unless a test says otherwise
	mu      sync.Mutex
	workers []*exec.Cmd
	logs    []*fixtures.Buffer // written by the workers as they run
}

func newFleet(t *testing.T, script string) *fleet {
	s := newSandbox(t)
	p := fixtures.NewPipelineRepo(t, script)
	s.repo = p.Dir
	f := &fleet{sandbox: s, bare: p.Bare}
	t.Cleanup(f.stopAll)
	return f
}

// startWorker starts a worker process; extra flags are appended.
func (f *fleet) startWorker(name string, extra ...string) *exec.Cmd {
	f.t.Helper()
	home := filepath.Join(f.root, "worker-"+name)
	url := f.url
	if url == "" {
		url = "file://" + f.bare
	}
	args := append([]string{"worker", "--remote", url, "--poll", "200ms", "--lease", "3s", "--grace", "5s"}, extra...)
	cmd := exec.Command(refciBin, args...)
	cmd.Env = append(append([]string{}, f.env...), "REFCI_HOME="+home)
	buf := &fixtures.Buffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	if err := cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	f.workers = append(f.workers, cmd)
	f.logs = append(f.logs, buf)
	f.mu.Unlock()
	return cmd
}

func (f *fleet) stopAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.workers {
		if w.ProcessState == nil {
			w.Process.Signal(syscall.SIGTERM)
		}
	}
	for i, w := range f.workers {
		done := make(chan struct{})
		go func() { w.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			w.Process.Kill()
			<-done
		}
		if f.t.Failed() {
			f.t.Logf("worker %d log:\n%s", i, tail(f.logs[i].String()))
		}
	}
	f.workers = nil
	// A worker's push ends, as receive-pack's does, with `git gc --auto`,
	// which goes on in the background when there is work to do; the
	// remote is removed only once that is done.
	for deadline := time.Now().Add(2 * time.Minute); alive("--git-dir="+f.bare+" ") && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
}

// remoteRefs lists the remote's refs under prefix.
func (f *fleet) remoteRefs(prefix string) []string {
	b, _ := fixtures.RunGit(f.bare, nil, nil, "for-each-ref", "--format=%(refname)", prefix)
	out := strings.TrimSpace(string(b))
	if out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

// waitFor is fixtures.WaitFor for the fleet's test.
// On a timeout it shows the remote's refs, which say what was left.
func (f *fleet) waitFor(what string, d time.Duration, cond func() bool) {
	f.t.Helper()
	fixtures.WaitForShowing(f.t, d, what, cond, func() string {
		b, _ := fixtures.RunGit(f.bare, nil, nil, "for-each-ref", "refs/ci/")
		out := "the remote's refs:\n" + string(b)
		// What each claim left says, and whose renewal or takeover it is.
		claims, _ := fixtures.RunGit(f.bare, nil, nil, "for-each-ref", "--format=%(refname)", "refs/ci/claims/")
		for _, ref := range strings.Fields(string(claims)) {
			c, _ := fixtures.RunGit(f.bare, nil, nil, "log", "--format=%H (parents %P)", "-3", ref, "--")
			j, _ := fixtures.RunGit(f.bare, nil, nil, "show", ref+":claim.json")
			out += ref + ":\n" + string(c) + string(j) + "\n"
		}
		return out
	})
}

// pushRequests pushes n requests named prefix-i for HEAD in one push.
func (f *fleet) pushRequests(prefix string, n int) {
	f.t.Helper()
	args := []string{"push", "-q", "origin"}
	for i := 0; i < n; i++ {
		args = append(args, fmt.Sprintf("HEAD:refs/ci/requests/%s-%d", prefix, i))
	}
	f.git("", args...)
}

// finalResults reads every run ref of the remote and returns the final
// statuses by request.
func (f *fleet) finalResults() map[string][]*queue.Status {
	out := map[string][]*queue.Status{}
	for _, ref := range f.remoteRefs("refs/ci/runs/") {
		b, _ := fixtures.RunGit(f.bare, nil, nil, "show", ref+":status.json")
		st, err := queue.DecodeStatus(b)
		if err != nil {
			f.t.Fatalf("%s: %v", ref, err)
		}
		if st.State.Final() {
			out[st.Request] = append(out[st.Request], st)
		}
	}
	return out
}

func TestWorkersRunEveryRequestExactlyOnce(t *testing.T) {
	n, workers := 500, 4
	if testing.Short() {
		n, workers = 20, 2
	}
	side := t.TempDir()
	f := newFleet(t, fmt.Sprintf("echo \"$REFCI_RUN\" >> %s/\"$(echo \"$REFCI_REQUEST\" | tr / _)\"\n", side))
	f.pushRequests("load", n)
	for i := 0; i < workers; i++ {
		f.startWorker(fmt.Sprint(i), "--concurrency", "4")
	}
	f.waitFor("every request to be done", 3*time.Minute, func() bool {
		return len(f.remoteRefs("refs/ci/requests/")) == 0 && len(f.remoteRefs("refs/ci/claims/")) == 0
	})
	res := f.finalResults()
	if len(res) != n {
		t.Errorf("%d requests have a final result, want %d", len(res), n)
	}
	for req, sts := range res {
		if len(sts) != 1 || sts[0].State != queue.Success {
			t.Errorf("request %s: %d final results (%s)", req, len(sts), describeRuns(sts))
		}
	}
	// Side effects: each pipeline ran exactly once.
	ents, _ := os.ReadDir(side)
	if len(ents) != n {
		t.Errorf("%d requests ran, want %d", len(ents), n)
	}
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(side, e.Name()))
		if lines := strings.Count(string(b), "\n"); lines != 1 {
			t.Errorf("%s ran %d times", e.Name(), lines)
		}
	}
	if out := f.gitErr(f.bare, "fsck", "--no-dangling"); strings.Contains(out, "error") {
		t.Errorf("fsck: %s", out)
	}
	// The workers raced on a remote on this machine without hooks: they
	// updated it directly, not through git push; and ran their jobs
	// through the refci-shim beside refci.
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.logs {
		log := f.logs[i].String()
		if !strings.Contains(log, "updated directly") {
			t.Errorf("worker %d did not update the local remote directly:\n%s", i, tail(log))
		}
		if !strings.Contains(log, `msg="shim for runs" shim=`+filepath.Join(filepath.Dir(refciBin), "refci-shim")) {
			t.Errorf("worker %d does not run its jobs through the light shim:\n%s", i, tail(log))
		}
	}
}

func TestWorkerSupersedeCancelAndOddRequests(t *testing.T) {
	f := newFleet(t, "echo started; sleep 30\n")
	first := f.git("", "rev-parse", "HEAD")
	f.git("", "push", "-q", "origin", "HEAD:refs/ci/requests/topic")
	f.git("", "push", "-q", "origin", "HEAD:refs/ci/requests/to-delete")
	f.startWorker("a", "--concurrency", "4")
	f.waitFor("both claimed", time.Minute, func() bool { return len(f.remoteRefs("refs/ci/claims/")) == 2 })
	// Supersede: re-push the name with another target.
	f.write("x", "second\n", 0o644)
	f.pipeline("echo second; exit 0\n")
	second := f.git("", "rev-parse", "HEAD")
	f.git("", "push", "-q", "-f", "origin", "HEAD:refs/ci/requests/topic")
	// Cancel: delete the other request.
	f.git("", "push", "-q", "origin", ":refs/ci/requests/to-delete")
	f.waitFor("the queue to drain", time.Minute, func() bool {
		return len(f.remoteRefs("refs/ci/requests/")) == 0 && len(f.remoteRefs("refs/ci/claims/")) == 0
	})
	res := f.finalResults()
	byTarget := map[string]*queue.Status{}
	for _, sts := range res {
		for _, st := range sts {
			byTarget[st.Request+"@"+st.Target] = st
		}
	}
	if st := byTarget["topic@"+first]; st == nil || st.State != queue.Cancelled || !strings.Contains(st.Reason, second[:12]) {
		t.Errorf("superseded run: %+v", st)
	}
	if st := byTarget["topic@"+second]; st == nil || st.State != queue.Success {
		t.Errorf("superseding run: %+v", st)
	}
	if st := byTarget["to-delete@"+first]; st == nil || st.State != queue.Cancelled || !strings.Contains(st.Reason, "deleted") {
		t.Errorf("deleted request: %+v", st)
	}

	// Odd requests: a blob, a tree, a tag of a tag, a commit without .refci/run, odd names.
	blob := f.gitStdin("not a commit\n", "hash-object", "-w", "--stdin")
	tree := f.git("", "rev-parse", "HEAD^{tree}")
	f.git("", "tag", "-a", "-m", "inner", "inner", "HEAD")
	f.git("", "tag", "-a", "-m", "outer", "outer", "inner")
	outer := f.git("", "rev-parse", "refs/tags/outer")
	f.git("", "checkout", "-q", "--orphan", "bare-branch")
	f.git("", "rm", "-rq", "--cached", ".")
	os.RemoveAll(filepath.Join(f.repo, ".refci"))
	nopipe := f.commitAll("no pipeline")
	f.git("", "push", "-q", "origin",
		blob+":refs/ci/requests/odd/blob", tree+":refs/ci/requests/odd/tree", outer+":refs/ci/requests/odd/tag-of-tag",
		nopipe+":refs/ci/requests/odd/no-pipeline", second+":refs/ci/requests/odd/we+ird=name,x@y")
	f.waitFor("odd requests to drain", time.Minute, func() bool { return len(f.remoteRefs("refs/ci/requests/")) == 0 })
	res = f.finalResults()
	want := map[string]queue.State{"odd/blob": queue.Error, "odd/tree": queue.Error, "odd/tag-of-tag": queue.Success,
		"odd/no-pipeline": queue.Error, "odd/we+ird=name,x@y": queue.Success}
	for req, state := range want {
		if sts := res[req]; len(sts) != 1 || sts[0].State != state {
			t.Errorf("%s: %+v, want one %s", req, sts, state)
		} else if state == queue.Error && sts[0].Reason == "" {
			t.Errorf("%s: error without a reason", req)
		}
	}
}

func TestWorkerKilledMidRunIsTakenOver(t *testing.T) {
	marker := fmt.Sprintf("%d.%03d", 5000+time.Now().UnixNano()%1000, time.Now().Nanosecond()%997)
	f := newFleet(t, fmt.Sprintf(`echo "attempt $REFCI_ATTEMPT started"
if [ "$REFCI_ATTEMPT" = 1 ]; then
	setsid sleep %[1]s >/dev/null 2>&1 &
	sleep %[1]s
fi
echo "attempt $REFCI_ATTEMPT done"
`, marker))
	f.git("", "push", "-q", "origin", "HEAD:refs/ci/requests/crash")
	a := f.startWorker("a")
	f.waitFor("the pipeline to start", time.Minute, func() bool { return alive("sleep " + marker) })
	// Someone follows the run; it must not wait for ever on a run whose
	// worker died, but follow the attempt that takes the request over.
	follow := startRefci(t, f.repo, f.env, "log", "-f", "crash")
	fout, ferr := follow.out, follow.errOut
	f.waitFor("log -f to follow attempt 1", time.Minute, func() bool {
		return strings.Contains(ferr.String(), "(attempt 1)") && strings.Contains(fout.String(), "attempt 1 started")
	})
	a.Process.Signal(syscall.SIGKILL)
	a.Wait()
	f.waitFor("the killed run's processes to die", time.Minute, func() bool { return !alive("sleep " + marker) })
	// Before any worker takes over, the follower says why nothing moves.
	f.waitFor("log -f to see the claim expire", time.Minute, func() bool {
		return strings.Contains(ferr.String(), "stopped renewing its claim on run")
	})
	f.startWorker("b")
	f.waitFor("the request to be done", time.Minute, func() bool {
		return len(f.remoteRefs("refs/ci/requests/")) == 0 && len(f.remoteRefs("refs/ci/claims/")) == 0
	})
	res := f.finalResults()["crash"]
	if len(res) != 1 || res[0].State != queue.Success || res[0].Attempt != 2 {
		t.Fatalf("results: %+v", res)
	}
	if res[0].PreviousRun() == "" {
		t.Fatalf("attempt 2 does not name the run it replaces: %+v", res[0].Extra)
	}
	select {
	case <-follow.done:
		err := follow.err
		if err != nil || !strings.Contains(fout.String(), "attempt 2 done") || !strings.Contains(fout.String(), "refci: success") ||
			!strings.Contains(ferr.String(), "lost its worker; run "+res[0].Run+" (attempt 2)") {
			t.Errorf("log -f across the takeover: %v\nstdout:\n%s\nstderr:\n%s", err, fout.String(), ferr.String())
		}
	case <-time.After(2 * time.Minute): // a guard only
		t.Errorf("log -f still follows the lost run after attempt 2 ended\nstdout:\n%s\nstderr:\n%s", fout.String(), ferr.String())
	}
	// Readers show the lost attempt as an error, not as running for ever.
	f.git("", "fetch", "-q", "origin", "+refs/ci/*:refs/ci/*")
	lost := f.refci("status", res[0].Target+"/"+res[0].PreviousRun())
	if lost.code != 3 || !strings.Contains(lost.stdout, "worker lost") || !strings.Contains(lost.stdout, res[0].Run) {
		t.Errorf("status of the lost run: %d\n%s%s", lost.code, lost.stdout, lost.stderr)
	}
	runs := f.refci("runs").want(t, 0).stdout
	if !strings.Contains(runs, res[0].PreviousRun()) || !strings.Contains(runs, "worker lost, taken over by "+res[0].Run) || strings.Contains(runs, "running") {
		t.Errorf("refci runs:\n%s", runs)
	}
}

func TestWorkerSurvivesRemoteOutage(t *testing.T) {
	outage := 30 * time.Second
	if testing.Short() {
		outage = 8 * time.Second
	}
	side := t.TempDir()
	f := newFleet(t, fmt.Sprintf("echo \"$REFCI_RUN\" >> %s/\"$REFCI_REQUEST\"\nsleep 2\necho done\n", side))
	// A receive setting makes the workers use git push here (the other
	// fleet tests update the remote directly): both ways survive outages.
	f.git(f.bare, "config", "receive.fsckObjects", "true")
	// The workers reach the remote through a symbolic link, and the outage
	// takes the link away: new connections fail as they would to a server
	// that is down, while a git process already at work in the repository
	// finishes there, as a server's would. (Renaming the repository itself
	// is not an outage but a move under a running receive-pack, which
	// then cannot commit or remove its ref locks, and leaves
	// "<ref>.lock" files that refuse every later update of those refs.)
	link := filepath.Join(t.TempDir(), "remote.git")
	if err := os.Symlink(f.bare, link); err != nil {
		t.Fatal(err)
	}
	f.url = "file://" + link
	f.pushRequests("out", 6)
	f.startWorker("a", "--concurrency", "3")
	f.startWorker("b", "--concurrency", "3")
	f.waitFor("runs to start", time.Minute, func() bool { ents, _ := os.ReadDir(side); return len(ents) >= 2 })
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	time.Sleep(outage)
	if err := os.Symlink(f.bare, link); err != nil {
		t.Fatal(err)
	}
	f.waitFor("every request to be done", 2*time.Minute, func() bool {
		return len(f.remoteRefs("refs/ci/requests/")) == 0 && len(f.remoteRefs("refs/ci/claims/")) == 0
	})
	res := f.finalResults()
	if len(res) != 6 {
		t.Errorf("%d requests have results, want 6", len(res))
	}
	for req, sts := range res {
		if len(sts) != 1 || sts[0].State != queue.Success {
			for _, st := range sts {
				t.Errorf("%s: run %s attempt %d: %s (%s)", req, st.Run, st.Attempt, st.State, st.Reason)
			}
		}
	}
	ents, _ := os.ReadDir(side)
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(side, e.Name()))
		if n := strings.Count(string(b), "\n"); n != 1 {
			t.Errorf("%s ran %d times", e.Name(), n)
		}
	}
	f.mu.Lock()
	logs := f.logs[0].String() + f.logs[1].String()
	f.mu.Unlock()
	if n := strings.Count(logs, "updated with git push"); n != 2 {
		t.Errorf("%d workers said they use git push for a remote with receive.fsckObjects, want 2", n)
	}
	if n := strings.Count(logs, "remote problem"); n == 0 || n > 8 {
		t.Errorf("%d 'remote problem' lines for one outage; want one or a few per worker, not one per retry", n)
	}
}

func TestTriggerWaitAndLogFollow(t *testing.T) {
	f := newFleet(t, "echo line-one\nsleep 3\necho line-two\n[ \"$REFCI_ENV\" = staging ] || exit 4\n")
	wa := f.startWorker("a")
	r := f.refci("trigger", "--wait", "--name", "w1", "--env", "staging", "--timeout", "1m")
	if r.code != 0 || !strings.Contains(r.stdout, "line-one") || !strings.Contains(r.stdout, "line-two") || !strings.Contains(r.stdout, "refci: success") {
		t.Fatalf("trigger --wait: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	// Without the env option the pipeline fails: exit 1.
	r = f.refci("trigger", "--wait", "--name", "w2")
	if r.code != 1 || !strings.Contains(r.stdout, "refci: failure") {
		t.Fatalf("failing trigger --wait: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	// log -f follows a run named by its id, from its claim.
	f.refci("trigger", "--name", "w3", "--env", "staging").want(t, 0)
	var claim queue.Claim
	f.waitFor("the claim", time.Minute, func() bool {
		b := f.gitErr(f.bare, "show", "refs/ci/claims/w3:claim.json")
		c, err := queue.DecodeClaim([]byte(b))
		if err == nil {
			claim = *c
		}
		return err == nil
	})
	r = f.refci("log", "-f", claim.Target+"/"+claim.Run)
	if r.code != 0 || !strings.Contains(r.stdout, "line-one") || !strings.Contains(r.stdout, "line-two") {
		t.Fatalf("log -f: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	// ... or by the request's name, from before a worker claims it (the
	// worker is stopped meanwhile) to its end.
	wa.Process.Signal(syscall.SIGTERM)
	wa.Wait()
	f.refci("trigger", "--name", "by-name", "--env", "staging").want(t, 0)
	follow := startRefci(t, f.repo, f.env, "log", "-f", "by-name")
	// The worker starts once log -f says it waits, not after a guess at
	// how long that takes.
	f.waitFor("log -f to wait for a worker", time.Minute, func() bool { return strings.Contains(follow.errOut.String(), "waiting for a worker") })
	f.startWorker("a")
	select {
	case <-follow.done:
	case <-time.After(2 * time.Minute):
		t.Fatal("log -f by request name did not end")
	}
	if follow.err != nil || !strings.Contains(follow.out.String(), "line-two") || !strings.Contains(follow.out.String(), "refci: success") {
		t.Fatalf("log -f by request name: %v\n%s\n%s", follow.err, follow.out.String(), follow.errOut.String())
	}
	r = f.refci("log", "-f", "no-such-request")
	if r.code != 2 || !strings.Contains(r.stderr, "no request or claim named no-such-request") {
		t.Fatalf("log -f of an unknown name: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	// Every result verifies against the worker's exported key.
	env := f.env
	f.env = append(append([]string{}, env...), "REFCI_HOME="+filepath.Join(f.root, "worker-a"))
	pub := f.refci("keys", "export").want(t, 0).stdout
	f.env = env
	keyFile := filepath.Join(f.root, "worker-a.asc")
	os.WriteFile(keyFile, []byte(pub), 0o644)
	f.git("", "fetch", "-q", "origin", "+refs/ci/*:refs/ci/*")
	for _, ref := range f.runRefs() {
		f.refci("verify", "--keyring", keyFile, ref).want(t, 0)
	}
}

// describeRuns says who ran what, for a failure message.
func describeRuns(sts []*queue.Status) string {
	var b strings.Builder
	for _, st := range sts {
		fmt.Fprintf(&b, "[run %s attempt %d worker %.8s state %s started %s reason %q] ", st.Run, st.Attempt, st.Worker, st.State, st.Started.Format("15:04:05.000"), st.Reason)
	}
	return b.String()
}

// log -f on a run whose worker died goes on to the attempt that took it
// over even when that attempt came and went between two looks at the
// claim: here there is never a claim, only the two results.
func TestFollowFindsTakeoverByResult(t *testing.T) {
	f := newFleet(t, "echo hi\n")
	target := f.git("", "rev-parse", "HEAD")
	started := time.Now().UTC()
	a1 := &queue.Status{Format: queue.Format, State: queue.Running, Target: target, Request: "gone", Run: queue.NewRunID(started),
		Attempt: 1, Worker: strings.Repeat("A", 40), Started: started} // readers believe only a worker's values
	ref1 := f.putRun(a1)
	f.git("", "push", "-q", "origin", ref1+":"+ref1)
	follow := startRefci(t, f.repo, f.env, "log", "-f", target+"/"+a1.Run)
	fout, ferr := follow.out, follow.errOut
	f.waitFor("log -f to follow attempt 1", time.Minute, func() bool { return strings.Contains(ferr.String(), "(attempt 1)") })

	exit := 0
	a2 := &queue.Status{Format: queue.Format, State: queue.Success, Target: target, Request: "gone", Run: queue.NewRunID(started.Add(time.Second)),
		Attempt: 2, Worker: strings.Repeat("B", 40), Started: started.Add(time.Second), ExitCode: &exit, Extra: map[string]any{queue.ExtraPreviousRun: a1.Run}}
	ref2 := f.putRun(a2)
	f.git("", "push", "-q", "origin", ref2+":"+ref2)
	select {
	case <-follow.done:
		err := follow.err
		if err != nil || !strings.Contains(fout.String(), "refci: success") || !strings.Contains(ferr.String(), "lost its worker; run "+a2.Run+" (attempt 2) on worker "+a2.Worker) {
			t.Errorf("log -f: %v\nstdout:\n%s\nstderr:\n%s", err, fout.String(), ferr.String())
		}
	case <-time.After(2 * time.Minute): // a guard only
		t.Errorf("log -f still follows the lost run\nstdout:\n%s\nstderr:\n%s", fout.String(), ferr.String())
	}
}

// The first SIGTERM stops claiming and lets running pipelines finish
// within the grace period, then cancels them; a second signal cancels at
// once. Every run ends with a pushed result, and the worker exits 0.
func TestWorkerGracefulShutdown(t *testing.T) {
	marker := fmt.Sprintf("%d.%03d", 6000+time.Now().UnixNano()%1000, time.Now().Nanosecond()%997)
	side := t.TempDir()
	f := newFleet(t, fmt.Sprintf(`touch %s/"$REFCI_REQUEST"
case "$REFCI_REQUEST" in
long*) sleep %s ;;
*) sleep 2 ;;
esac
echo end
`, side, marker))
	started := func(req string) func() bool {
		return func() bool { _, err := os.Stat(filepath.Join(side, req)); return err == nil }
	}
	exited := func(w *exec.Cmd, within time.Duration) time.Duration {
		t.Helper()
		t0 := time.Now()
		done := make(chan error, 1)
		go func() { done <- w.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("worker exited with %v", err)
			}
		case <-time.After(within):
			t.Fatalf("the worker is still running %s after the signal", within)
		}
		return time.Since(t0)
	}

	// signal sends SIGTERM and waits until the worker has taken it (it
	// logs so): a request pushed then, or a second signal, comes after it
	// however slowly the worker runs (signals sent too close together are
	// one signal).
	signal := func(w *exec.Cmd, want string) {
		t.Helper()
		n := 0
		f.mu.Lock()
		for i, c := range f.workers {
			if c == w {
				n = i
			}
		}
		f.mu.Unlock()
		w.Process.Signal(syscall.SIGTERM)
		f.waitFor("the worker to take the signal", time.Minute, func() bool {
			f.mu.Lock()
			defer f.mu.Unlock()
			return strings.Contains(f.logs[n].String(), want)
		})
	}
	const first, second = "signal: finishing running pipelines", "second signal: cancelling"

	// Grace long enough: the run finishes, nothing more is claimed.
	a := f.startWorker("a", "--grace", "1m")
	f.git("", "push", "-q", "origin", "HEAD:refs/ci/requests/short")
	f.waitFor("short to start", time.Minute, started("short"))
	signal(a, first)
	f.git("", "push", "-q", "origin", "HEAD:refs/ci/requests/after-signal")
	exited(a, 2*time.Minute)
	if st := f.finalResults()["short"]; len(st) != 1 || st[0].State != queue.Success {
		t.Errorf("the run within the grace period: %s", describeRuns(st))
	}
	if claims := f.remoteRefs("refs/ci/claims/"); len(claims) != 0 || len(f.remoteRefs("refs/ci/requests/after-signal")) != 1 {
		t.Errorf("after the signal the worker claimed %v; the request pushed then must wait", claims)
	}

	// Grace too short: the run is cancelled when it is over.
	f.git("", "push", "-q", "origin", ":refs/ci/requests/after-signal")
	b := f.startWorker("b", "--grace", "1s")
	f.git("", "push", "-q", "origin", "HEAD:refs/ci/requests/long-1")
	f.waitFor("long-1 to start", time.Minute, started("long-1"))
	signal(b, first)
	took := exited(b, 2*time.Minute)
	if st := f.finalResults()["long-1"]; len(st) != 1 || st[0].State != queue.Cancelled || !strings.Contains(st[0].Reason, "shut down") {
		t.Errorf("the run past the grace period (worker exited after %s): %s", took, describeRuns(st))
	}

	// A second signal cancels at once, long before the grace period ends.
	c := f.startWorker("c", "--grace", "10m")
	f.git("", "push", "-q", "origin", "HEAD:refs/ci/requests/long-2")
	f.waitFor("long-2 to start", time.Minute, started("long-2"))
	signal(c, first)
	signal(c, second)
	exited(c, 2*time.Minute) // the grace is 10 minutes
	if st := f.finalResults()["long-2"]; len(st) != 1 || st[0].State != queue.Cancelled {
		t.Errorf("the run after a second signal: %s", describeRuns(st))
	}
	if left := f.remoteRefs("refs/ci/requests/"); len(left) != 0 || len(f.remoteRefs("refs/ci/claims/")) != 0 {
		t.Errorf("requests or claims left behind: %v %v", left, f.remoteRefs("refs/ci/claims/"))
	}
	f.waitFor("the cancelled pipelines' processes to die", time.Minute, func() bool { return !alive("sleep " + marker) })
}

// A worker killed mid-run, with --max-attempts 1: the worker that finds
// the expired claim does not run the request again but ends it in state
// error, signed, naming the lost run, and consumes it. The same worker
// answers a request tag with a bad option with an error naming it, and
// caps a requested timeout at --max-timeout.
func TestWorkerGivesUpAndReportsBadOptions(t *testing.T) {
	marker := fmt.Sprintf("%d.%03d", 6000+time.Now().UnixNano()%1000, time.Now().Nanosecond()%997)
	f := newFleet(t, fmt.Sprintf(`echo "attempt $REFCI_ATTEMPT of $REFCI_REQUEST started"
if [ "$REFCI_REQUEST" = crash ]; then sleep %[1]s; fi
echo done
`, marker))
	f.git("", "push", "-q", "origin", "HEAD:refs/ci/requests/crash")
	a := f.startWorker("a", "--max-attempts", "1")
	f.waitFor("the pipeline to start", time.Minute, func() bool { return alive("sleep " + marker) })
	a.Process.Signal(syscall.SIGKILL)
	a.Wait()
	f.waitFor("the killed run's processes to die", time.Minute, func() bool { return !alive("sleep " + marker) })
	for name, msg := range map[string]string{"badopt": "refci request\n\nTimeout: soon", "capped": "refci request\n\nTimeout: 10h"} {
		f.git("", "tag", "-a", "-m", msg, "req-"+name, "HEAD")
		f.git("", "push", "-q", "origin", "refs/tags/req-"+name+":refs/ci/requests/"+name)
	}
	if r := f.refci("worker", "--remote", "file://"+f.bare, "--max-attempts", "-1"); r.code != 2 || !strings.Contains(r.stderr, "--max-attempts -1") {
		t.Errorf("worker --max-attempts -1: %d %q", r.code, r.stderr)
	}
	f.startWorker("b", "--max-attempts", "1", "--timeout", "1m", "--max-timeout", "2m")
	f.waitFor("every request to be done", 2*time.Minute, func() bool {
		return len(f.remoteRefs("refs/ci/requests/")) == 0 && len(f.remoteRefs("refs/ci/claims/")) == 0
	})
	res := f.finalResults()
	crash := res["crash"]
	if len(crash) != 1 || crash[0].State != queue.Error || crash[0].Attempt != 2 || crash[0].PreviousRun() == "" ||
		!strings.HasPrefix(crash[0].Reason, "gave up after 1 attempt: the worker was lost each time (the last attempt was run "+crash[0].PreviousRun()) {
		t.Fatalf("the crashed request: %+v", crash)
	}
	if l := f.resultFile("crash", "log.txt"); strings.Contains(l, "attempt 2") {
		t.Errorf("the pipeline ran again:\n%s", l)
	}
	f.git("", "fetch", "-q", "origin", "+refs/ci/*:refs/ci/*")
	if r := f.refci("verify", "--keyring", filepath.Join(f.root, "worker-b", "key.asc"), crash[0].Target+"/"+crash[0].Run); r.code != 0 {
		t.Errorf("the give-up result does not verify: %d %s%s", r.code, r.stdout, r.stderr)
	}
	if b := res["badopt"]; len(b) != 1 || b[0].State != queue.Error || !strings.Contains(b[0].Reason, `request option Timeout: "soon" is not a positive duration`) {
		t.Errorf("the bad option: %+v", b)
	}
	if c := res["capped"]; len(c) != 1 || c[0].State != queue.Success || c[0].Extra["timeout_cap"] != "2m0s" || c[0].Extra["timeout_requested"] != "10h0m0s" {
		t.Errorf("the capped timeout: %d results, %+v", len(c), *c[0])
	}
}

// Two `refci trigger --wait` in a row for one commit and one name each
// follow their own run (issue 16, item 1): the second reports its own
// success, not the first run's failure. A waiter whose run is superseded
// by a new push reports its run cancelled, and `log -f NAME` on a request
// pushed again waits for the new push's claim.
func TestTriggerWaitFollowsItsOwnRun(t *testing.T) {
	marker := fmt.Sprintf("%d.%03d", 7000+time.Now().UnixNano()%1000, time.Now().Nanosecond()%991)
	dir := t.TempDir() // outside HOME, which pipelines cannot write; they read it here
	flag := filepath.Join(dir, "flag")
	setFlag := func(v string) {
		if err := os.WriteFile(flag, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f := newFleet(t, fmt.Sprintf("flag=$(cat %s)\necho \"flag=$flag\"\nif [ \"$flag\" = hang ]; then sleep %s; fi\n[ \"$flag\" = ok ]\n", flag, marker))
	wa := f.startWorker("a")
	resultOf := func(out string) string {
		_, ref, _ := strings.Cut(out, "refci: result ")
		return strings.TrimSpace(ref)
	}

	setFlag("bad")
	r1 := f.refci("trigger", "--wait", "--name", "fix")
	if r1.code != 1 || !strings.Contains(r1.stdout, "flag=bad") || !strings.Contains(r1.stdout, "refci: failure") {
		t.Fatalf("first trigger --wait: %d\n%s\n%s", r1.code, r1.stdout, r1.stderr)
	}
	setFlag("ok")
	r2 := f.refci("trigger", "--wait", "--name", "fix")
	if r2.code != 0 || !strings.Contains(r2.stdout, "flag=ok") || strings.Contains(r2.stdout, "flag=bad") || !strings.Contains(r2.stdout, "refci: success") {
		t.Fatalf("second trigger --wait followed another run: %d\n%s\n%s", r2.code, r2.stdout, r2.stderr)
	}
	ref1, ref2 := resultOf(r1.stdout), resultOf(r2.stdout)
	if ref1 == "" || ref1 == ref2 {
		t.Fatalf("both waits report result %q and %q", ref1, ref2)
	}
	// Each result records the request tag it ran, one per trigger.
	objs := map[string]bool{}
	for _, ref := range []string{ref1, ref2} {
		st, err := queue.DecodeStatus([]byte(f.gitErr(f.bare, "show", ref+":status.json")))
		if err != nil {
			t.Fatal(err)
		}
		if typ := f.gitErr(f.bare, "cat-file", "-t", st.RequestObject); strings.TrimSpace(typ) != "tag" {
			t.Fatalf("%s: request_object %q is a %q, not the request tag", ref, st.RequestObject, typ)
		}
		objs[st.RequestObject] = true
	}
	if len(objs) != 2 {
		t.Fatalf("the two triggers' results record the same request object: %v", objs)
	}

	// A waiter whose run is superseded by a new push reports its own run
	// cancelled; the new push's waiter reports the new run.
	setFlag("hang")
	w1 := startRefci(t, f.repo, f.env, "trigger", "--wait", "--name", "sup")
	f.waitFor("the first pipeline to start", time.Minute, func() bool { return alive("sleep " + marker) })
	setFlag("ok")
	r3 := f.refci("trigger", "--wait", "--name", "sup")
	if r3.code != 0 || !strings.Contains(r3.stdout, "flag=ok") || !strings.Contains(r3.stdout, "refci: success") {
		t.Fatalf("superseding trigger --wait: %d\n%s\n%s", r3.code, r3.stdout, r3.stderr)
	}
	select {
	case <-w1.done:
	case <-time.After(time.Minute):
		t.Fatalf("the superseded waiter goes on\n%s\n%s", w1.out.String(), w1.errOut.String())
	}
	if ee, ok := w1.err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(w1.out.String(), "flag=hang") ||
		!strings.Contains(w1.out.String(), "refci: cancelled") || resultOf(w1.out.String()) == resultOf(r3.stdout) {
		t.Fatalf("superseded waiter: %v\n%s\n%s", w1.err, w1.out.String(), w1.errOut.String())
	}

	// log -f NAME while the claim there is of an earlier push (its worker
	// was killed): it waits for the new push's claim and follows that run.
	setFlag("hang")
	f.refci("trigger", "--name", "re").want(t, 0)
	f.waitFor("the pipeline to start", time.Minute, func() bool { return alive("sleep " + marker) })
	wa.Process.Signal(syscall.SIGKILL)
	wa.Wait()
	f.waitFor("the killed run's processes to die", 15*time.Second, func() bool { return !alive("sleep " + marker) })
	setFlag("ok")
	f.refci("trigger", "--name", "re").want(t, 0)
	lf := startRefci(t, f.repo, f.env, "log", "-f", "re")
	f.waitFor("log -f to see the earlier push's claim", time.Minute, func() bool { return strings.Contains(lf.errOut.String(), "was pushed again") })
	f.startWorker("b")
	select {
	case <-lf.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("log -f re goes on\n%s\n%s", lf.out.String(), lf.errOut.String())
	}
	if lf.err != nil || !strings.Contains(lf.out.String(), "flag=ok") || strings.Contains(lf.out.String(), "flag=hang") || !strings.Contains(lf.out.String(), "refci: success") {
		t.Fatalf("log -f re: %v\n%s\n%s", lf.err, lf.out.String(), lf.errOut.String())
	}
}

// A trigger --wait whose request is pushed over, or deleted, before any
// worker claimed it says so and exits 1 instead of waiting for ever (no
// worker runs here).
func TestTriggerWaitForARequestGoneBeforeItRan(t *testing.T) {
	f := newFleet(t, "echo hi\n")
	w1 := startRefci(t, f.repo, f.env, "trigger", "--wait", "--name", "over")
	w2 := startRefci(t, f.repo, f.env, "trigger", "--wait", "--name", "gone")
	f.waitFor("both requests on the remote", time.Minute, func() bool { return len(f.remoteRefs("refs/ci/requests/")) == 2 })
	f.refci("trigger", "--name", "over").want(t, 0)
	f.git("", "push", "-q", "origin", ":refs/ci/requests/gone")
	for _, c := range []struct {
		w    *background
		want string
	}{{w1, "request over was pushed again (it now holds "}, {w2, "request gone was deleted before a worker ran it"}} {
		select {
		case <-c.w.done:
		case <-time.After(time.Minute):
			t.Fatalf("the waiter goes on\n%s", c.w.errOut.String())
		}
		if ee, ok := c.w.err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(c.w.errOut.String(), c.want) {
			t.Errorf("waiter: %v\n%s\nwant %q", c.w.err, c.w.errOut.String(), c.want)
		}
	}
}

// trigger --wait on a commit without .refci/run exits 2 (the user's
// configuration, as documented), saying why once; trigger and log -f
// without the remote they look for say which one and what to do.
func TestTriggerConfigurationMessages(t *testing.T) {
	f := newFleet(t, "true\n")
	f.startWorker("a")
	f.git("", "rm", "-q", ".refci/run")
	f.commitAll("no pipeline")
	r := f.refci("trigger", "--wait", "--name", "nopipe")
	const why = "this commit has no .refci/run"
	if r.code != 2 || strings.Count(r.stdout+r.stderr, why) != 1 || !strings.Contains(r.stdout, "refci: error in ") {
		t.Errorf("trigger --wait without .refci/run: exit %d, want 2 and %q once\n%s\n%s", r.code, why, r.stdout, r.stderr)
	}
	f.git("", "remote", "rename", "origin", "upstream")
	for _, args := range [][]string{{"trigger"}, {"log", "-f"}} {
		r := f.refci(args...)
		want := `this repository has no remote named "origin" (it has upstream); pass --remote NAME or a URL, or add one with: git remote add origin URL`
		if r.code != 2 || r.stderr != "refci: "+strings.Join(args, " ")+": "+want+"\n" {
			t.Errorf("%s without origin: exit %d, want 2 and %q\n%s", args, r.code, want, r.stderr)
		}
	}
	// A remote named by --remote, or a path, is used as it is.
	f.refci("trigger", "--remote", "upstream", "--name", "named").want(t, 0)
	f.refci("trigger", "--remote", f.bare, "--name", "by-path").want(t, 0)
}
