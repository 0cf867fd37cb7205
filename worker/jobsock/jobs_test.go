//go:build linux

package jobsock

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/queue"
	"refci.dev/refci/worker/jobsock/jobclient"
	"refci.dev/refci/worker/jobsock/jobwire"
)

// jobTestTimeout bounds every wait in these tests; generous, since they
// must pass on two noisy cores. Nothing waits for it in a passing run.
const jobTestTimeout = 60 * time.Second

// memJobLog is a Log in memory.
type memJobLog struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	closes int
}

func (l *memJobLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closes > 0 {
		return 0, errors.New("write after close")
	}
	return l.buf.Write(p)
}

func (l *memJobLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closes++
	return nil
}

// memJobLogs is a map-backed OpenLog.
type memJobLogs struct {
	mu   sync.Mutex
	logs map[string]*memJobLog
	fail map[string]bool
}

func (m *memJobLogs) open(name string) (Log, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail[name] {
		return nil, errors.New("disk on fire")
	}
	if m.logs[name] != nil {
		return nil, fmt.Errorf("log of %s opened twice", name)
	}
	l := &memJobLog{}
	m.logs[name] = l
	return l, nil
}

// get returns the content of name's log, whether it exists, and how often
// it was closed.
func (m *memJobLogs) get(name string) (content string, ok bool, closes int) {
	m.mu.Lock()
	l := m.logs[name]
	m.mu.Unlock()
	if l == nil {
		return "", false, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String(), true, l.closes
}

// testRun is a Run whose jobs' logs are in memory and that has no
// secrets.
type testRun struct{ logs *memJobLogs }

func (r testRun) OpenLog(name string) (Log, error) { return r.logs.open(name) }

func (testRun) Secret(string) ([]byte, error) {
	return nil, errors.New("secrets are not available in this run")
}

func (testRun) HoldsSecret(string) bool { return false }

type jobTestServer struct {
	t    *testing.T
	srv  *Server
	sock string
	dir  string // scratch directory for side-effect files
	logs *memJobLogs
}

func newJobTestServer(t *testing.T, grace time.Duration) *jobTestServer {
	t.Helper()
	// Not t.TempDir: socket paths must stay short.
	sockDir, err := os.MkdirTemp("", "rj")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	logs := &memJobLogs{logs: map[string]*memJobLog{}, fail: map[string]bool{}}
	ts := &jobTestServer{t: t, sock: filepath.Join(sockDir, "s"), dir: t.TempDir(), logs: logs}
	ts.srv, err = NewServer(Config{SocketPath: ts.sock, Run: testRun{logs}, NeedsGrace: grace})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ts.srv.Close() })
	return ts
}

type jobResult struct {
	code           int
	stdout, stderr string
}

func (ts *jobTestServer) getenv(k string) string {
	if k == "REFCI_SOCKET" {
		return ts.sock
	}
	return ""
}

// start runs RunJobCommand in the background.
func (ts *jobTestServer) start(ctx context.Context, args ...string) <-chan jobResult {
	ch := make(chan jobResult, 1)
	go func() {
		var out, errb bytes.Buffer
		code := jobclient.RunJobCommand(ctx, args, ts.getenv, &out, &errb)
		ch <- jobResult{code, out.String(), errb.String()}
	}()
	return ch
}

func (ts *jobTestServer) wait(ch <-chan jobResult) jobResult {
	ts.t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(jobTestTimeout):
		ts.t.Fatal("refci job did not return")
		return jobResult{}
	}
}

// run runs RunJobCommand and waits for it.
func (ts *jobTestServer) run(args ...string) jobResult {
	ts.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), jobTestTimeout)
	defer cancel()
	return ts.wait(ts.start(ctx, args...))
}

// job returns the recorded job name; ok is false if there is none.
func (ts *jobTestServer) job(name string) (queue.Job, bool) {
	for _, j := range ts.srv.Jobs() {
		if j.Name == name {
			return j, true
		}
	}
	return queue.Job{}, false
}

func (ts *jobTestServer) mustJob(name string) queue.Job {
	ts.t.Helper()
	j, ok := ts.job(name)
	if !ok {
		ts.t.Fatalf("job %s not recorded; jobs: %+v", name, ts.srv.Jobs())
	}
	return j
}

// path is a side-effect file in the scratch directory.
func (ts *jobTestServer) path(name string) string { return filepath.Join(ts.dir, name) }

func jobFileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func checkJobState(t *testing.T, j queue.Job, state queue.State, exit *int) {
	t.Helper()
	if j.State != state {
		t.Errorf("job %s: state %s (reason %q), want %s", j.Name, j.State, j.Reason, state)
	}
	switch {
	case exit == nil && j.ExitCode != nil:
		t.Errorf("job %s: exit code %d, want none", j.Name, *j.ExitCode)
	case exit != nil && j.ExitCode == nil:
		t.Errorf("job %s: no exit code, want %d", j.Name, *exit)
	case exit != nil && *j.ExitCode != *exit:
		t.Errorf("job %s: exit code %d, want %d", j.Name, *j.ExitCode, *exit)
	}
}

func TestJobSuccess(t *testing.T) {
	ts := newJobTestServer(t, 0)
	r := ts.run("build", "--", "sh", "-c", `printf 'one\ntwo\n'; printf 'err\n' >&2; printf partial`)
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if want := "[build] one\n[build] two\n[build] err\n[build] partial\n"; r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
	log, ok, closes := ts.logs.get("build")
	if want := "one\ntwo\nerr\npartial"; !ok || log != want {
		t.Errorf("job log %q (exists %v), want %q", log, ok, want)
	}
	if closes != 1 {
		t.Errorf("job log closed %d times, want 1", closes)
	}
	j := ts.mustJob("build")
	checkJobState(t, j, queue.Success, queue.IntPtr(0))
	if j.Reason != "" || j.Log != "jobs/build/log.txt" || j.LogBytes != int64(len(log)) {
		t.Errorf("job %+v", j)
	}
	if j.Started.IsZero() || j.Finished.Before(j.Started) || j.DurationMS < 0 {
		t.Errorf("times: started %v finished %v duration %d", j.Started, j.Finished, j.DurationMS)
	}
}

func TestJobEnvironment(t *testing.T) {
	ts := newJobTestServer(t, 0)
	r := ts.run("env-check", "--", "sh", "-c", `echo "$REFCI_JOB"; cat`)
	if r.code != 0 || r.stdout != "[env-check] env-check\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestJobFailureExitCode(t *testing.T) {
	ts := newJobTestServer(t, 0)
	r := ts.run("lint", "--", "sh", "-c", "echo bad; exit 3")
	if r.code != 3 {
		t.Fatalf("exit %d, want 3; stderr %q", r.code, r.stderr)
	}
	j := ts.mustJob("lint")
	checkJobState(t, j, queue.Failure, queue.IntPtr(3))
	if j.Reason != "" { // the exit code says it: no "exit 3  exited with code 3"
		t.Errorf("reason %q, want none beside the exit code", j.Reason)
	}
}

func TestJobCommandNotFound(t *testing.T) {
	ts := newJobTestServer(t, 0)
	r := ts.run("nf", "--", "refci-no-such-command-x7")
	if r.code != 127 {
		t.Fatalf("exit %d, want 127", r.code)
	}
	if !strings.Contains(r.stdout, "[nf] refci job: refci-no-such-command-x7: command not found") {
		t.Errorf("stdout %q", r.stdout)
	}
	j := ts.mustJob("nf")
	checkJobState(t, j, queue.Failure, queue.IntPtr(127))
	if !strings.Contains(j.Reason, "command not found") {
		t.Errorf("reason %q", j.Reason)
	}
	if log, _, _ := ts.logs.get("nf"); !strings.Contains(log, "command not found") {
		t.Errorf("log %q", log)
	}
}

func TestJobKilledBySignal(t *testing.T) {
	ts := newJobTestServer(t, 0)
	r := ts.run("sig", "--", "sh", "-c", "kill -KILL $$")
	if r.code != 137 {
		t.Fatalf("exit %d, want 137", r.code)
	}
	j := ts.mustJob("sig")
	checkJobState(t, j, queue.Failure, queue.IntPtr(137))
	if !strings.Contains(j.Reason, "SIGKILL") {
		t.Errorf("reason %q", j.Reason)
	}
}

func TestJobNeedsFailed(t *testing.T) {
	ts := newJobTestServer(t, 0)
	if r := ts.run("build", "--", "sh", "-c", "exit 2"); r.code != 2 {
		t.Fatalf("build exit %d", r.code)
	}
	marker := ts.path("test-ran")
	r := ts.run("test", "--needs", "build", "--", "touch", marker)
	if r.code != 1 {
		t.Fatalf("exit %d, want 1", r.code)
	}
	if !strings.Contains(r.stderr, "test skipped: needs build, which failed") {
		t.Errorf("stderr %q", r.stderr)
	}
	if jobFileExists(marker) {
		t.Error("the command of a skipped job ran")
	}
	j := ts.mustJob("test")
	checkJobState(t, j, queue.Skipped, nil)
	if j.Reason != "needs build, which failed" || j.Log != "" || len(j.Needs) != 1 || j.Needs[0] != "build" {
		t.Errorf("job %+v", j)
	}
	if _, ok, _ := ts.logs.get("test"); ok {
		t.Error("OpenLog was called for a skipped job")
	}
	// Skips propagate.
	r = ts.run("deploy", "--needs=test", "--", "touch", marker)
	if r.code != 1 || jobFileExists(marker) {
		t.Errorf("deploy: exit %d, ran %v", r.code, jobFileExists(marker))
	}
	if j := ts.mustJob("deploy"); j.Reason != "needs test, which was skipped" {
		t.Errorf("deploy reason %q", j.Reason)
	}
}

func TestJobNeedsWaitsForRunningNeed(t *testing.T) {
	ts := newJobTestServer(t, jobTestTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), jobTestTimeout)
	defer cancel()
	release, aDone, bRan := ts.path("release"), ts.path("a-done"), ts.path("b-ran")
	a := ts.start(ctx, "a", "--", "sh", "-c",
		fmt.Sprintf(`while [ ! -e %s ]; do sleep 0.01; done; touch %s`, release, aDone))
	fixtures.WaitFor(t, jobTestTimeout, "a to run", func() bool { j, ok := ts.job("a"); return ok && !j.Started.IsZero() })
	b := ts.start(ctx, "b", "--needs", "a", "--", "sh", "-c",
		fmt.Sprintf(`test -e %s && touch %s`, aDone, bRan))
	fixtures.WaitFor(t, jobTestTimeout, "b to register", func() bool { _, ok := ts.job("b"); return ok })
	if j := ts.mustJob("b"); j.State != queue.Running || !j.Started.IsZero() || !strings.Contains(j.Reason, "waiting") {
		t.Errorf("b while a runs: %+v", j)
	}
	if jobFileExists(bRan) {
		t.Fatal("b ran before a finished")
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := ts.wait(a); r.code != 0 {
		t.Fatalf("a: %+v", r)
	}
	if r := ts.wait(b); r.code != 0 {
		t.Fatalf("b: %+v", r)
	}
	if !jobFileExists(bRan) {
		t.Error("b did not see a's side effect")
	}
	ja, jb := ts.mustJob("a"), ts.mustJob("b")
	checkJobState(t, jb, queue.Success, queue.IntPtr(0))
	if jb.Started.Before(ja.Finished) {
		t.Errorf("b started %v before a finished %v", jb.Started, ja.Finished)
	}
	if jobs := ts.srv.Jobs(); jobs[0].Name != "a" || jobs[1].Name != "b" {
		t.Errorf("order %v", jobs)
	}
}

func TestJobNeedStartsLater(t *testing.T) {
	ts := newJobTestServer(t, jobTestTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), jobTestTimeout)
	defer cancel()
	aDone := ts.path("a-done")
	b := ts.start(ctx, "b", "--needs", "a", "--", "test", "-e", aDone)
	fixtures.WaitFor(t, jobTestTimeout, "b to register", func() bool { _, ok := ts.job("b"); return ok })
	if r := ts.run("a", "--", "touch", aDone); r.code != 0 {
		t.Fatalf("a: %+v", r)
	}
	if r := ts.wait(b); r.code != 0 {
		t.Fatalf("b: %+v", r)
	}
	if jb, ja := ts.mustJob("b"), ts.mustJob("a"); jb.Started.Before(ja.Finished) {
		t.Errorf("b started before a finished")
	}
}

func TestJobNeedNeverStarted(t *testing.T) {
	ts := newJobTestServer(t, 50*time.Millisecond)
	marker := ts.path("ran")
	r := ts.run("b", "--needs", "ghost", "--", "touch", marker)
	if r.code != 1 || !strings.Contains(r.stderr, "needs ghost, which was never started") {
		t.Fatalf("%+v", r)
	}
	if jobFileExists(marker) {
		t.Error("command ran")
	}
	j := ts.mustJob("b")
	checkJobState(t, j, queue.Skipped, nil)
	if j.Reason != "needs ghost, which was never started" {
		t.Errorf("reason %q", j.Reason)
	}
}

func TestJobDependencyCycle(t *testing.T) {
	ts := newJobTestServer(t, jobTestTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), jobTestTimeout)
	defer cancel()
	a := ts.start(ctx, "a", "--needs", "b", "--", "true")
	fixtures.WaitFor(t, jobTestTimeout, "a to register", func() bool { _, ok := ts.job("a"); return ok })
	rb := ts.run("b", "--needs", "a", "--", "true")
	ra := ts.wait(a)
	if ra.code != 1 || rb.code != 1 {
		t.Fatalf("a %+v, b %+v", ra, rb)
	}
	if j := ts.mustJob("b"); j.State != queue.Skipped || j.Reason != "dependency cycle: b -> a -> b" {
		t.Errorf("b: %+v", j)
	}
	if j := ts.mustJob("a"); j.State != queue.Skipped || j.Reason != "needs b, which was skipped" {
		t.Errorf("a: %+v", j)
	}
}

func TestJobConcurrent(t *testing.T) {
	ts := newJobTestServer(t, jobTestTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), jobTestTimeout)
	defer cancel()
	const n = 20
	release := ts.path("release")
	// base holds the fan-out jobs (every odd one needs it) until released.
	base := ts.start(ctx, "base", "--", "sh", "-c", fmt.Sprintf(`while [ ! -e %s ]; do sleep 0.01; done`, release))
	var results [n]<-chan jobResult
	for i := range n {
		args := []string{fmt.Sprintf("j%d", i)}
		if i%2 == 1 {
			args = append(args, "--needs", "base")
		}
		script := fmt.Sprintf(`for k in 1 2 3 4 5; do echo "job %d line $k"; done; exit %d`, i, i%3)
		results[i] = ts.start(ctx, append(args, "--", "sh", "-c", script)...)
	}
	fixtures.WaitFor(t, jobTestTimeout, "all jobs to register", func() bool { return len(ts.srv.Jobs()) == n+1 })
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := ts.wait(base); r.code != 0 {
		t.Fatalf("base: %+v", r)
	}
	for i := range n {
		r := ts.wait(results[i])
		name := fmt.Sprintf("j%d", i)
		if r.code != i%3 {
			t.Errorf("%s: exit %d, want %d; stderr %q", name, r.code, i%3, r.stderr)
		}
		var want, wantOut strings.Builder
		for k := 1; k <= 5; k++ {
			fmt.Fprintf(&want, "job %d line %d\n", i, k)
			fmt.Fprintf(&wantOut, "[%s] job %d line %d\n", name, i, k)
		}
		if log, _, closes := ts.logs.get(name); log != want.String() || closes != 1 {
			t.Errorf("%s: log %q closed %d times", name, log, closes)
		}
		if r.stdout != wantOut.String() {
			t.Errorf("%s: stdout %q", name, r.stdout)
		}
		state := queue.Success
		if i%3 != 0 {
			state = queue.Failure
		}
		checkJobState(t, ts.mustJob(name), state, queue.IntPtr(i%3))
	}
}

func TestJobDuplicateName(t *testing.T) {
	ts := newJobTestServer(t, 0)
	if r := ts.run("build", "--", "true"); r.code != 0 {
		t.Fatalf("%+v", r)
	}
	marker := ts.path("ran")
	r := ts.run("build", "--", "touch", marker)
	if r.code != 2 || !strings.Contains(r.stderr, `job "build" was already started`) {
		t.Fatalf("%+v", r)
	}
	if jobFileExists(marker) {
		t.Error("duplicate ran")
	}
	if jobs := ts.srv.Jobs(); len(jobs) != 1 || jobs[0].State != queue.Success {
		t.Errorf("jobs %+v", jobs)
	}
}

func TestJobInvalidName(t *testing.T) {
	ts := newJobTestServer(t, 0)
	for _, args := range [][]string{
		{"../x", "--", "true"},
		{"a/b", "--", "true"},
		{".hidden", "--", "true"},
		{"ok", "--needs", "../x", "--", "true"},
	} {
		r := ts.run(args...)
		if r.code != 2 || !strings.Contains(r.stderr, "not valid") {
			t.Errorf("%q: %+v", args, r)
		}
	}
	if jobs := ts.srv.Jobs(); len(jobs) != 0 {
		t.Errorf("jobs %+v", jobs)
	}
}

// A command line refci job refuses never reaches the server.
func TestJobUsageError(t *testing.T) {
	ts := newJobTestServer(t, 0)
	if r := ts.run("build"); r.code != 2 || !strings.Contains(r.stderr, "usage:") {
		t.Errorf("%+v", r)
	}
	if len(ts.srv.Jobs()) != 0 {
		t.Errorf("jobs recorded: %+v", ts.srv.Jobs())
	}
}

func TestJobOpenLogFails(t *testing.T) {
	ts := newJobTestServer(t, 0)
	ts.logs.mu.Lock() // the server reads it on its own goroutine
	ts.logs.fail["broken"] = true
	ts.logs.mu.Unlock()
	marker := ts.path("ran")
	r := ts.run("broken", "--", "touch", marker)
	if r.code != 2 || !strings.Contains(r.stderr, "disk on fire") || jobFileExists(marker) {
		t.Errorf("%+v", r)
	}
	j := ts.mustJob("broken")
	checkJobState(t, j, queue.Error, nil)
	if j.Log != "" {
		t.Errorf("log %q", j.Log)
	}
}

func TestJobSocketMode(t *testing.T) {
	ts := newJobTestServer(t, 0)
	fi, err := os.Stat(ts.sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	if _, err := NewServer(Config{SocketPath: ts.sock, Run: testRun{ts.logs}}); err == nil {
		t.Error("a second server on the same path started")
	}
}

func TestJobClientCancelled(t *testing.T) {
	ts := newJobTestServer(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := ts.path("stop")
	defer os.WriteFile(stop, nil, 0o644) // ends any leftover shell loop
	res := ts.start(ctx, "slow", "--", "sh", "-c",
		fmt.Sprintf(`echo started; while [ ! -e %s ]; do sleep 0.02; done`, stop))
	fixtures.WaitFor(t, jobTestTimeout, "output in the job log", func() bool { log, _, _ := ts.logs.get("slow"); return log == "started\n" })
	cancel()
	r := ts.wait(res)
	if r.code != 1 || !strings.Contains(r.stderr, "cancelled") {
		t.Errorf("%+v", r)
	}
	fixtures.WaitFor(t, jobTestTimeout, "the job to be recorded", func() bool { return ts.mustJob("slow").State.Final() })
	j := ts.mustJob("slow")
	checkJobState(t, j, queue.Cancelled, nil)
	if !strings.Contains(j.Reason, "went away") || j.Started.IsZero() || j.Finished.IsZero() {
		t.Errorf("job %+v", j)
	}
	if _, _, closes := ts.logs.get("slow"); closes != 1 {
		t.Errorf("log closed %d times", closes)
	}
}

// rawJobConn speaks the protocol by hand.
type rawJobConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRawJob(t *testing.T, sock string) *rawJobConn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawJobConn{t: t, c: c, r: bufio.NewReader(c)}
}

func (rc *rawJobConn) send(line string) {
	rc.t.Helper()
	if _, err := rc.c.Write([]byte(line + "\n")); err != nil {
		rc.t.Fatal(err)
	}
}

func (rc *rawJobConn) recv() jobwire.Msg {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(jobTestTimeout))
	line, err := rc.r.ReadBytes('\n')
	if err != nil {
		rc.t.Fatalf("reading reply: %v", err)
	}
	var m jobwire.Msg
	if err := json.Unmarshal(line, &m); err != nil {
		rc.t.Fatalf("reply %q: %v", line, err)
	}
	return m
}

func (rc *rawJobConn) expect(op, contains string) {
	rc.t.Helper()
	m := rc.recv()
	if m.Op != op || !strings.Contains(m.Error+m.Reason, contains) {
		rc.t.Errorf("reply %+v, want op %q containing %q", m, op, contains)
	}
}

// expectEOF checks that the server closed the connection.
func (rc *rawJobConn) expectEOF() {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(jobTestTimeout))
	if line, err := rc.r.ReadBytes('\n'); err == nil {
		rc.t.Errorf("unexpected reply %q", line)
	}
}

func TestJobRawConnectionDrop(t *testing.T) {
	ts := newJobTestServer(t, 0)
	rc := dialRawJob(t, ts.sock)
	rc.send(`{"op":"start","name":"raw"}`)
	rc.expect("run", "")
	rc.send(`{"op":"output","data":"YWJj"}`) // "abc"
	fixtures.WaitFor(t, jobTestTimeout, "output", func() bool { log, _, _ := ts.logs.get("raw"); return log == "abc" })
	rc.c.Close()
	fixtures.WaitFor(t, jobTestTimeout, "the job to be recorded", func() bool { return ts.mustJob("raw").State.Final() })
	j := ts.mustJob("raw")
	checkJobState(t, j, queue.Cancelled, nil)
	if !strings.Contains(j.Reason, "went away") || j.LogBytes != 3 {
		t.Errorf("job %+v", j)
	}
}

func TestJobMalformedMessages(t *testing.T) {
	ts := newJobTestServer(t, 0)
	rc := dialRawJob(t, ts.sock)
	rc.send(`this is not json`)
	rc.expect("error", "malformed")
	rc.send(`[1,2]`)
	rc.expect("error", "malformed")
	rc.send(`{}`)
	rc.expect("error", `no "op"`)
	rc.send(`{"op":"secret","name":"TOKEN"}`)
	rc.expect("error", "secrets are not available in this run")
	rc.send(`{"op":"frobnicate"}`)
	rc.expect("error", `unknown op "frobnicate"`)
	rc.send(`{"op":"output","data":"eA=="}`)
	rc.expect("error", "no job runs")
	rc.send(`{"op":"end","exit_code":0}`)
	rc.expect("error", "no job runs")
	rc.send(strings.Repeat("x", jobwire.MaxMsg+10))
	rc.expect("error", "longer than")
	rc.send(`{"op":"start","name":"../../etc/passwd"}`)
	rc.expect("error", "not valid")
	rc.send(`{"op":"start","name":"ok","needs":["../x"]}`)
	rc.expect("error", "not valid")
	rc.send(`{"op":"start","name":"self","needs":["self"]}`)
	rc.expect("error", "cannot need itself")
	// The same connection can still start a job.
	rc.send(`{"op":"start","name":"raw","extra":"ignored"}`)
	rc.expect("run", "")
	rc.send(`{"op":"output","data":"!!! not base64"}`)
	rc.expect("error", "malformed")
	rc.send(`{"op":"output","data":"aGVsbG8K"}`)
	rc.send(`{"op":"end"}`)
	rc.expect("error", "exit_code")
	rc.send(`{"op":"end","exit_code":300}`)
	rc.expect("error", "0..255")
	rc.send(`{"op":"start","name":"again"}`)
	rc.expect("error", "already runs")
	rc.send(`{"op":"bogus"}`)
	rc.expect("error", "unknown op")
	rc.send(`{"op":"end","exit_code":1,"reason":"multi\nline\u0000reason"}`)
	rc.expect("done", "")
	rc.expectEOF()
	j := ts.mustJob("raw")
	checkJobState(t, j, queue.Failure, queue.IntPtr(1))
	if j.Reason != "multi line reason" {
		t.Errorf("reason %q", j.Reason)
	}
	if log, _, _ := ts.logs.get("raw"); log != "hello\n" {
		t.Errorf("log %q", log)
	}
	if jobs := ts.srv.Jobs(); len(jobs) != 1 {
		t.Errorf("jobs %+v", jobs)
	}
	// A client that sends garbage and vanishes does not hurt others.
	c, err := net.Dial("unix", ts.sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte(`{"op":"start","na`))
	c.Close()
	if r := ts.run("after", "--", "echo", "fine"); r.code != 0 || r.stdout != "[after] fine\n" {
		t.Errorf("%+v", r)
	}
}

func TestJobServerCloseCancels(t *testing.T) {
	ts := newJobTestServer(t, jobTestTimeout)
	running := dialRawJob(t, ts.sock)
	running.send(`{"op":"start","name":"running"}`)
	running.expect("run", "")
	running.send(`{"op":"output","data":"cGFydGlhbA=="}`) // "partial"
	waiting := dialRawJob(t, ts.sock)
	waiting.send(`{"op":"start","name":"waiting","needs":["ghost"]}`)
	fixtures.WaitFor(t, jobTestTimeout, "output and the waiting job", func() bool {
		log, _, _ := ts.logs.get("running")
		_, ok := ts.job("waiting")
		return log == "partial" && ok
	})
	if err := ts.srv.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"running", "waiting"} {
		j := ts.mustJob(name)
		checkJobState(t, j, queue.Cancelled, nil)
		if j.Reason != "the pipeline ended before the job finished" {
			t.Errorf("%s: reason %q", name, j.Reason)
		}
	}
	if _, _, closes := ts.logs.get("running"); closes != 1 {
		t.Errorf("log closed %d times", closes)
	}
	if _, ok, _ := ts.logs.get("waiting"); ok {
		t.Error("log of the waiting job was opened")
	}
	if _, err := os.Stat(ts.sock); !os.IsNotExist(err) {
		t.Errorf("socket still there: %v", err)
	}
	if r := ts.run("late", "--", "true"); r.code != 2 {
		t.Errorf("after Close: %+v", r)
	}
	if err := ts.srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestJobServerCloseWithRefciJob(t *testing.T) {
	ts := newJobTestServer(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), jobTestTimeout)
	defer cancel()
	stop := ts.path("stop")
	res := ts.start(ctx, "long", "--", "sh", "-c",
		fmt.Sprintf(`echo started; while [ ! -e %s ]; do sleep 0.02; done; echo after`, stop))
	fixtures.WaitFor(t, jobTestTimeout, "output", func() bool { log, _, _ := ts.logs.get("long"); return log == "started\n" })
	ts.srv.Close()
	j := ts.mustJob("long")
	checkJobState(t, j, queue.Cancelled, nil)
	// The command keeps running and still prints to the pipeline log.
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r := ts.wait(res)
	if r.code != 0 || r.stdout != "[long] started\n[long] after\n" || !strings.Contains(r.stderr, "lost the connection") {
		t.Errorf("%+v", r)
	}
}

func TestJobSignalForwarded(t *testing.T) {
	ts := newJobTestServer(t, jobTestTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), jobTestTimeout)
	defer cancel()
	res := ts.start(ctx, "trapper", "--", "sh", "-c",
		`trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.02; done`)
	fixtures.WaitFor(t, jobTestTimeout, "the command to be ready", func() bool { log, _, _ := ts.logs.get("trapper"); return log == "ready\n" })
	// RunJobCommand has SIGTERM under signal.Notify while CMD runs, so
	// this does not kill the test binary.
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	r := ts.wait(res)
	if r.code != 7 || r.stdout != "[trapper] ready\n[trapper] got-term\n" {
		t.Errorf("%+v", r)
	}
	checkJobState(t, ts.mustJob("trapper"), queue.Failure, queue.IntPtr(7))

	// While waiting for its needs, a signal ends the job as cancelled.
	res = ts.start(ctx, "waiter", "--needs", "ghost", "--", "true")
	fixtures.WaitFor(t, jobTestTimeout, "waiter to register", func() bool { _, ok := ts.job("waiter"); return ok })
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	if r := ts.wait(res); r.code != 128+int(syscall.SIGTERM) || !strings.Contains(r.stderr, "SIGTERM while waiting") {
		t.Errorf("%+v", r)
	}
	fixtures.WaitFor(t, jobTestTimeout, "waiter to be recorded", func() bool { return ts.mustJob("waiter").State.Final() })
	checkJobState(t, ts.mustJob("waiter"), queue.Cancelled, nil)
}

// TestJobHelperProcess is `refci job` in a child process for
// TestJobClientKilled; it does nothing in a normal test run.
func TestJobHelperProcess(t *testing.T) {
	if os.Getenv("REFCI_JOB_TEST_HELPER") != "1" {
		return
	}
	args := strings.Split(os.Getenv("REFCI_JOB_TEST_ARGS"), "\x1f")
	os.Exit(jobclient.RunJobCommand(context.Background(), args, os.Getenv, os.Stdout, os.Stderr))
}

func TestJobClientKilled(t *testing.T) {
	ts := newJobTestServer(t, 0)
	pidFile, stop := ts.path("pid"), ts.path("stop")
	defer os.WriteFile(stop, nil, 0o644)
	script := fmt.Sprintf(`echo $$ > %s.tmp && mv %s.tmp %s; i=0; while [ ! -e %s ] && [ -d %s ] && [ $i -lt 3000 ]; do sleep 0.02; i=$((i+1)); done`, pidFile, pidFile, pidFile, stop, filepath.Dir(stop))
	cmd := exec.Command(os.Args[0], "-test.run=^TestJobHelperProcess$")
	cmd.Env = append(os.Environ(), "REFCI_JOB_TEST_HELPER=1", "REFCI_SOCKET="+ts.sock,
		"REFCI_JOB_TEST_ARGS="+strings.Join([]string{"victim", "--", "sh", "-c", script}, "\x1f"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var pid int
	fixtures.WaitFor(t, jobTestTimeout, "the command to start", func() bool {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	if !fixtures.ProcessRunning(pid) {
		t.Fatal("command is not running")
	}
	cmd.Process.Kill()
	cmd.Wait()
	fixtures.WaitFor(t, jobTestTimeout, "the command to die with refci job (Pdeathsig)", func() bool { return !fixtures.ProcessRunning(pid) })
	fixtures.WaitFor(t, jobTestTimeout, "the job to be recorded", func() bool { j, ok := ts.job("victim"); return ok && j.State.Final() })
	j := ts.mustJob("victim")
	checkJobState(t, j, queue.Cancelled, nil)
	if !strings.Contains(j.Reason, "went away") {
		t.Errorf("reason %q", j.Reason)
	}
}
