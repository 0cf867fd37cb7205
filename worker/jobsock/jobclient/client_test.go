//go:build linux

package jobclient

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/queue"
	"refci.dev/refci/worker/jobsock"
)

// testTimeout bounds every wait in these tests; generous, since they
// must pass on two noisy cores. Nothing waits for it in a passing run.
const testTimeout = 60 * time.Second

// memLog is a job log in memory.
type memLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *memLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *memLog) Close() error { return nil }

func (l *memLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// memRun is a jobsock.Run with logs in memory and no secrets.
type memRun struct {
	mu   sync.Mutex
	logs map[string]*memLog
}

func (r *memRun) OpenLog(name string) (jobsock.Log, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := &memLog{}
	r.logs[name] = l
	return l, nil
}

func (r *memRun) log(name string) string {
	r.mu.Lock()
	l := r.logs[name]
	r.mu.Unlock()
	if l == nil {
		return ""
	}
	return l.String()
}

func (*memRun) Secret(string) ([]byte, error) { return nil, fmt.Errorf("no secrets in this test") }
func (*memRun) HoldsSecret(string) bool       { return false }

// testServer is a real job socket server for the client to talk to.
type testServer struct {
	srv  *jobsock.Server
	run  *memRun
	sock string
	dir  string
}

func newTestServer(t *testing.T) *testServer {
	t.Helper()
	// Not t.TempDir: socket paths must stay short.
	dir, err := os.MkdirTemp("", "jobc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ts := &testServer{run: &memRun{logs: map[string]*memLog{}}, sock: filepath.Join(dir, "s"), dir: dir}
	ts.srv, err = jobsock.NewServer(jobsock.Config{SocketPath: ts.sock, Run: ts.run})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ts.srv.Close() })
	return ts
}

func (ts *testServer) getenv(k string) string {
	if k == "REFCI_SOCKET" {
		return ts.sock
	}
	return os.Getenv(k)
}

type result struct {
	code           int
	stdout, stderr string
}

// runJob runs RunJobCommand in this process.
func (ts *testServer) runJob(args ...string) result {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var out, errb bytes.Buffer
	code := RunJobCommand(ctx, args, ts.getenv, &out, &errb)
	return result{code, out.String(), errb.String()}
}

func (ts *testServer) job(t *testing.T, name string) queue.Job {
	t.Helper()
	for _, j := range ts.srv.Jobs() {
		if j.Name == name {
			return j
		}
	}
	t.Fatalf("no job %q in %+v", name, ts.srv.Jobs())
	return queue.Job{}
}

func checkState(t *testing.T, j queue.Job, state queue.State, exit *int) {
	t.Helper()
	if j.State != state {
		t.Errorf("job %s: state %s (%s), want %s", j.Name, j.State, j.Reason, state)
	}
	if (exit == nil) != (j.ExitCode == nil) || exit != nil && *exit != *j.ExitCode {
		t.Errorf("job %s: exit code %v, want %v", j.Name, j.ExitCode, exit)
	}
}

func TestJobNoSocket(t *testing.T) {
	var out, errb bytes.Buffer
	code := RunJobCommand(context.Background(), []string{"build", "--", "true"}, func(string) string { return "" }, &out, &errb)
	want := "refci job: not inside a refci pipeline (REFCI_SOCKET is not set); run jobs from .refci/run\n"
	if code != 2 || errb.String() != want || out.Len() != 0 {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
}

func TestJobSocketUnreachable(t *testing.T) {
	var out, errb bytes.Buffer
	getenv := func(string) string { return filepath.Join(t.TempDir(), "nope") }
	code := RunJobCommand(context.Background(), []string{"build", "--", "true"}, getenv, &out, &errb)
	if code != 2 || !strings.Contains(errb.String(), "cannot reach refci") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
}

// A socket that takes the connection but never answers (a stuck worker):
// `refci job` gives up with a clear error instead of hanging the
// pipeline, and does not run the command.
func TestJobSocketSilent(t *testing.T) {
	defer func(d time.Duration) { jobVerdictWait = d }(jobVerdictWait)
	jobVerdictWait = 500 * time.Millisecond
	dir, err := os.MkdirTemp("", "job")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", sock) // never accepts: the kernel queues the connection
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	marker := filepath.Join(dir, "ran")
	var out, errb bytes.Buffer
	code := RunJobCommand(context.Background(), []string{"build", "--", "touch", marker}, func(string) string { return sock }, &out, &errb)
	if code != 2 || !strings.Contains(errb.String(), "refci did not answer on REFCI_SOCKET="+sock) || !strings.Contains(errb.String(), "did not run") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the job's command ran although refci never said so")
	}
}

func TestJobHelp(t *testing.T) {
	for _, h := range []string{"-h", "--help"} {
		var out, errb bytes.Buffer
		code := RunJobCommand(context.Background(), []string{h}, func(string) string { return "" }, &out, &errb)
		if code != 0 || !strings.HasPrefix(out.String(), "usage: refci job NAME") || errb.Len() != 0 {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", h, code, out.String(), errb.String())
		}
	}
}

func TestJobArgs(t *testing.T) {
	good := []struct {
		args  []string
		name  string
		needs []string
		argv  []string
	}{
		{[]string{"build", "--", "make", "-j4"}, "build", nil, []string{"make", "-j4"}},
		{[]string{"test", "--needs", "a,b", "--", "make", "test"}, "test", []string{"a", "b"}, []string{"make", "test"}},
		{[]string{"--needs", "a", "test", "--", "x"}, "test", []string{"a"}, []string{"x"}},
		{[]string{"--needs=a,b", "test", "--needs=c", "--", "x", "--needs", "y"}, "test", []string{"a", "b", "c"}, []string{"x", "--needs", "y"}},
		{[]string{"test", "--needs", "a, b,,a", "make", "--", "t"}, "test", []string{"a", "b"}, []string{"make", "--", "t"}},
		{[]string{"t", "--", "--weird"}, "t", nil, []string{"--weird"}},
	}
	for _, c := range good {
		ja, err := parseJobArgs(c.args)
		if err != nil {
			t.Errorf("%q: %v", c.args, err)
			continue
		}
		if ja.name != c.name || fmt.Sprint(ja.needs) != fmt.Sprint(c.needs) || fmt.Sprint(ja.argv) != fmt.Sprint(c.argv) {
			t.Errorf("%q: got %+v", c.args, ja)
		}
	}
	bad := map[string][]string{
		"missing job NAME":       {"--", "make"},
		"missing command":        {"build"},
		"missing command: put":   {"build", "--"},
		"unknown option":         {"build", "-x", "--", "make"},
		"cannot need itself":     {"build", "--needs", "a,build", "--", "make"},
		"needs a value":          {"build", "--needs"},
		"names no job":           {"build", "--needs=", "--", "make"},
		`job name "a/b" is not`:  {"build", "--needs", "a/b", "--", "make"},
		`job name "-" is not`:    {"-", "--", "make"},
		`job name "a..b" is not`: {"a..b", "--", "make"},
	}
	for want, args := range bad {
		if _, err := parseJobArgs(args); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", args, err, want)
		}
	}
}

func TestJobBackgroundProcessHoldsOutput(t *testing.T) {
	defer func(d time.Duration) { jobOutputDrain = d }(jobOutputDrain)
	jobOutputDrain = 50 * time.Millisecond
	ts := newTestServer(t)
	stop := filepath.Join(ts.dir, "stop")
	defer os.WriteFile(stop, nil, 0o644)
	r := ts.runJob("daemon", "--", "sh", "-c",
		// The loop also ends when the test's directory is gone or after
		// 30 s, so that it never outlives the test.
		fmt.Sprintf(`(i=0; while [ ! -e %s ] && [ -d %s ] && [ $i -lt 1500 ]; do sleep 0.02; i=$((i+1)); done) & echo early`, stop, filepath.Dir(stop)))
	if r.code != 0 || r.stdout != "[daemon] early\n" || !strings.Contains(r.stderr, "still open") {
		t.Errorf("%+v", r)
	}
	checkState(t, ts.job(t, "daemon"), queue.Success, queue.IntPtr(0))
}

// Output of many chunks reaches the job log whole and in order, and the
// pipeline's log line by line with the prefix; stdout and stderr share
// one pipe.
func TestJobLargeOutput(t *testing.T) {
	ts := newTestServer(t)
	const lines = 20000 // about 250 KB: many reads of the pipe, many output messages
	r := ts.runJob("big", "--", "sh", "-c", fmt.Sprintf(`i=0; while [ $i -lt %d ]; do echo "line $i of the output"; i=$((i+1)); done; echo to-stderr >&2; printf no-newline`, lines))
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	var want strings.Builder
	for i := range lines {
		fmt.Fprintf(&want, "line %d of the output\n", i)
	}
	want.WriteString("to-stderr\nno-newline")
	if got := ts.run.log("big"); got != want.String() {
		t.Errorf("job log: %d bytes, want %d", len(got), want.Len())
	}
	wantOut := "[big] " + strings.ReplaceAll(strings.TrimSuffix(want.String(), "no-newline"), "\n", "\n[big] ") + "no-newline\n"
	if r.stdout != wantOut {
		t.Errorf("stdout: %d bytes, want %d", len(r.stdout), len(wantOut))
	}
	checkState(t, ts.job(t, "big"), queue.Success, intPtr(0))
}

// A job run from inside another job sees its own name in REFCI_JOB, once.
func TestJobNestedEnvironment(t *testing.T) {
	ts := newTestServer(t)
	t.Setenv("REFCI_JOB", "outer")
	r := ts.runJob("inner", "--", "sh", "-c", `env | grep -c '^REFCI_JOB='; echo "$REFCI_JOB"`)
	if r.code != 0 || r.stdout != "[inner] 1\n[inner] inner\n" {
		t.Errorf("%+v", r)
	}
}

// A job's command may be made by a job it needs: it is looked for once
// the needs are met, not when the job starts waiting.
func TestJobCommandMadeByANeed(t *testing.T) {
	ts := newTestServer(t)
	tool := filepath.Join(ts.dir, "tool")
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	res := make(chan result, 1)
	go func() {
		var out, errb bytes.Buffer
		code := RunJobCommand(ctx, []string{"use", "--needs", "make", "--", tool}, ts.getenv, &out, &errb)
		res <- result{code, out.String(), errb.String()}
	}()
	// "use" waits for "make" (the grace period is seconds): make the tool
	// only once it is registered.
	fixtures.WaitFor(t, testTimeout, "use to register", func() bool { return len(ts.srv.Jobs()) == 1 })
	if r := ts.runJob("make", "--", "sh", "-c", fmt.Sprintf("printf '#!/bin/sh\\necho made\\n' > %s && chmod +x %s", tool, tool)); r.code != 0 {
		t.Fatalf("make: %+v", r)
	}
	if r := <-res; r.code != 0 || r.stdout != "[use] made\n" {
		t.Errorf("use: %+v", r)
	}
}
