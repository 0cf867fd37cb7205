//go:build linux

package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/worker/shim"
)

// Generous bounds: these tests must pass on a loaded two-core machine.
const (
	testSafety   = 2 * time.Minute  // no Run in a test may take longer
	testQuick    = 30 * time.Second // "returns quickly"
	testReadyMax = 30 * time.Second // waiting for a script to get ready
)

var testEnv = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C"}

// testShim, when set (by TestShimMode in shim_linux_test.go), is the Shim
// of every Run call of the process tests.
var testShim string

// testHide, when set (by TestShimHideMode in hide_linux_test.go), is the
// Hide of every Run call of the process tests.
var testHide []string

// withTestShim sets spec's Shim to testShim and its Hide to testHide.
func withTestShim(spec Spec) Spec {
	spec.Shim = testShim
	spec.Hide = testHide
	return spec
}

// runSh runs script with /bin/sh -c, bounded by testSafety.
func runSh(t *testing.T, ctx context.Context, script string, mod func(*Spec)) (Result, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, testSafety)
	defer cancel()
	var out fixtures.Buffer
	spec := Spec{Path: "/bin/sh", Args: []string{"-c", script}, Env: testEnv, Output: &out}
	spec = withTestShim(spec)
	if mod != nil {
		mod(&spec)
	}
	res, err := Run(ctx, spec)
	if ctx.Err() != nil && !res.Cancelled {
		t.Fatalf("safety timeout hit")
	}
	return res, out.String(), err
}

// newMarker returns a unique sleep duration: sleep accepts it, and a
// process with it as an argument is one of this test's.
func newMarker() string {
	return fmt.Sprintf("%d.%06d", 100000+rand.IntN(800000), rand.IntN(1000000))
}

// markerPids lists live processes that have marker as one of their
// arguments (zombies have no command line).
func markerPids(marker string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		for _, a := range bytes.Split(b, []byte{0}) {
			if string(a) == marker {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

func assertGone(t *testing.T, markers ...string) {
	t.Helper()
	for _, m := range markers {
		if pids := markerPids(m); len(pids) > 0 {
			t.Errorf("processes with marker %s still alive: %v", m, pids)
			for _, p := range pids {
				syscallKill(p)
			}
		}
	}
}

func assertAlive(t *testing.T, markers ...string) {
	t.Helper()
	for _, m := range markers {
		if pids := markerPids(m); len(pids) == 0 {
			t.Errorf("no process with marker %s is alive", m)
		}
	}
}

// waitAlive waits until a process with each marker is alive.
func waitAlive(t *testing.T, markers ...string) {
	t.Helper()
	for _, m := range markers {
		fixtures.WaitFor(t, testReadyMax, "a process with marker "+m, func() bool { return len(markerPids(m)) > 0 })
	}
}

func syscallKill(pid int) {
	if p, err := os.FindProcess(pid); err == nil {
		p.Kill()
	}
}

// waitFiles waits until each of paths exists.
func waitFiles(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		fixtures.WaitFor(t, testReadyMax, p+" to appear", func() bool { _, err := os.Stat(p); return err == nil })
	}
}

// zombieChildren lists zombies whose parent is this process, outside our
// own process group (those, sweeps deliberately leave to whoever started
// them: other tests of the package may leave some there).
func zombieChildren(t *testing.T) []int {
	t.Helper()
	procs, err := shim.ListProcs()
	if err != nil {
		t.Fatal(err)
	}
	var z []int
	for pid, p := range procs {
		if p.PPid == os.Getpid() && p.State == 'Z' && p.Pgrp != unix.Getpgrp() {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			t.Logf("zombie child: %s (our process group is %d)", bytes.TrimSpace(b), unix.Getpgrp())
			z = append(z, pid)
		}
	}
	return z
}

func TestProcessInterleaving(t *testing.T) {
	res, out, err := runSh(t, t.Context(), `echo a; echo b >&2; echo c`, nil)
	if err != nil {
		t.Fatal(err)
	}
	if out != "a\nb\nc\n" || res.ExitCode != 0 || res.Signal != "" {
		t.Fatalf("out %q, result %+v", out, res)
	}

	res, out, err = runSh(t, t.Context(), `i=0; while [ $i -lt 300 ]; do echo "o$i"; echo "e$i" >&2; i=$((i+1)); done`, nil)
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for i := range 300 {
		fmt.Fprintf(&want, "o%d\ne%d\n", i, i)
	}
	if out != want.String() {
		t.Fatalf("order not preserved: got %d bytes, want %d; result %+v", len(out), want.Len(), res)
	}
}

func TestProcessExitCodes(t *testing.T) {
	for _, tc := range []struct {
		script string
		code   int
		signal string
	}{
		{"exit 0", 0, ""},
		{"exit 1", 1, ""},
		{"exit 42", 42, ""},
		{"kill -9 $$", 137, "killed"},
		{"kill -TERM $$", 143, "terminated"},
	} {
		res, out, err := runSh(t, t.Context(), tc.script, nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.script, err)
		}
		if res.ExitCode != tc.code || res.Signal != tc.signal || res.TimedOut || res.Cancelled || res.Leftovers != 0 {
			t.Errorf("%s: got %+v (output %q), want exit %d signal %q", tc.script, res, out, tc.code, tc.signal)
		}
		if res.Duration <= 0 {
			t.Errorf("%s: no duration", tc.script)
		}
	}
}

func TestProcessEnvIsExact(t *testing.T) {
	envBin, err := exec.LookPath("env")
	if err != nil {
		t.Skip("no env binary")
	}
	run := func(env []string, tag string) string {
		t.Helper()
		var out fixtures.Buffer
		res, err := Run(t.Context(), withTestShim(Spec{Path: envBin, Env: env, Output: &out, ReapTag: tag, Timeout: testSafety}))
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("env: %+v %v", res, err)
		}
		return out.String()
	}
	env := []string{"FOO=bar", "EMPTY=", "SPACES=a b  c", "UTF8=héllo"}
	if got, want := run(env, ""), strings.Join(env, "\n")+"\n"; got != want {
		t.Errorf("env output %q, want %q", got, want)
	}
	if got := run(nil, ""); got != "" {
		t.Errorf("nil Env gave %q, want nothing (os.Environ must not leak in)", got)
	}
	if got, want := run([]string{"A=1"}, "run-7"), "A=1\nREFCI_REAP_TAG=run-7\n"; got != want {
		t.Errorf("env with ReapTag %q, want %q", got, want)
	}
}

func TestProcessArgsDirAndStdin(t *testing.T) {
	dir := t.TempDir()
	var out fixtures.Buffer
	res, err := Run(t.Context(), withTestShim(Spec{
		Path:    "/bin/sh",
		Args:    []string{"-c", `printf '%s|' "$0" "$@"; pwd; cat; echo "stdin done"`, "zero", "one", "two words"},
		Dir:     dir,
		Env:     testEnv,
		Output:  &out,
		Timeout: testSafety,
	}))
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	real, _ := filepath.EvalSymlinks(dir)
	if want := "zero|one|two words|" + real + "\nstdin done\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
}

func TestProcessLargeOutput(t *testing.T) {
	const n = 3_000_000
	res, out, err := runSh(t, t.Context(), fmt.Sprintf(`head -c %d /dev/zero; echo; echo end >&2`, n), nil)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	if len(out) != n+5 || !strings.HasSuffix(out, "\x00\nend\n") {
		t.Fatalf("got %d bytes, want %d", len(out), n+5)
	}
}

func TestProcessTimeout(t *testing.T) {
	m1, m2 := newMarker(), newMarker()
	start := time.Now()
	res, _, err := runSh(t, t.Context(), fmt.Sprintf(`sleep %s & sleep %s`, m1, m2), func(s *Spec) {
		s.Timeout = 200 * time.Millisecond
	})
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if !res.TimedOut || res.Cancelled || res.Signal != "terminated" || res.ExitCode != 143 {
		t.Errorf("got %+v, want timed out by SIGTERM", res)
	}
	// SIGTERM kills all of it: no waiting for the 5s default grace needed,
	// but only an upper bound is safe to assert on a loaded machine.
	if elapsed > testQuick {
		t.Errorf("took %s", elapsed)
	}
	assertGone(t, m1, m2)
}

func TestProcessTimeoutKillsAfterGrace(t *testing.T) {
	m1, m2 := newMarker(), newMarker()
	const grace = 500 * time.Millisecond
	var res Result
	var elapsed time.Duration
	// The shell must ignore SIGTERM before the timeout sends it; on a
	// loaded machine it may not have started by then, and dies of the
	// SIGTERM (the only way it can: its first command ignores it). That
	// run proves nothing: try again with a longer timeout.
	for timeout := 200 * time.Millisecond; ; timeout *= 2 {
		start := time.Now()
		r, _, err := runSh(t, t.Context(), fmt.Sprintf(`trap '' TERM; sleep %s & sleep %s; :`, m1, m2), func(s *Spec) {
			s.Timeout = timeout
			s.KillGrace = grace
		})
		elapsed = time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		res = r
		if res.Signal != "terminated" || timeout > 30*time.Second {
			break
		}
		t.Logf("the shell died of the SIGTERM %s after its start, before it could ignore it: again with a longer timeout", timeout)
	}
	if !res.TimedOut || res.Signal != "killed" || res.ExitCode != 137 {
		t.Errorf("got %+v, want timed out and SIGKILLed", res)
	}
	if elapsed < grace || elapsed > testQuick {
		t.Errorf("took %s; want at least the grace %s and well under %s", elapsed, grace, testQuick)
	}
	if res.Leftovers != 0 {
		t.Errorf("Leftovers %d: the children died with the main process, they are not leftovers", res.Leftovers)
	}
	assertGone(t, m1, m2)
}

func TestProcessDaemonsAreKilled(t *testing.T) {
	d := t.TempDir()
	m1, m2, m3 := newMarker(), newMarker(), newMarker()
	script := fmt.Sprintf(`
setsid sh -c 'touch %[1]s/a; sleep %[2]s; :' &
( (sh -c 'touch %[1]s/b; exec sleep %[3]s' </dev/null >/dev/null 2>&1 &) & )
sleep %[4]s </dev/null >/dev/null 2>&1 &
while [ ! -e %[1]s/a ] || [ ! -e %[1]s/b ]; do sleep 0.02; done
echo started
exit 0`, d, m1, m2, m3)
	start := time.Now()
	res, out, err := runSh(t, t.Context(), script, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || res.Signal != "" || res.TimedOut || res.Cancelled {
		t.Errorf("got %+v", res)
	}
	// The setsid'd sh and its sleep, the double-forked sleep, the background sleep.
	if res.Leftovers < 3 {
		t.Errorf("Leftovers = %d, want >= 3", res.Leftovers)
	}
	if out != "started\n" {
		t.Errorf("output %q", out)
	}
	// The setsid'd daemon held the output pipe: Run must not wait
	// for it.
	if elapsed := time.Since(start); elapsed > testQuick {
		t.Errorf("took %s", elapsed)
	}
	assertGone(t, m1, m2, m3)
	if z := zombieChildren(t); len(z) > 0 {
		t.Errorf("zombie children left: %v", z)
	}
}

func TestProcessCancel(t *testing.T) {
	d := t.TempDir()
	m1, m2, m3 := newMarker(), newMarker(), newMarker()
	script := fmt.Sprintf(`
sleep %[2]s &
(setsid sh -c 'touch %[1]s/a; exec sleep %[3]s' </dev/null >/dev/null 2>&1 &)
sh -c 'sleep %[4]s' &
touch %[1]s/ready
wait`, d, m1, m2, m3)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		waitFiles(t, filepath.Join(d, "ready"), filepath.Join(d, "a"))
		cancel()
	}()
	start := time.Now()
	res, _, err := runSh(t, ctx, script, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Cancelled || res.TimedOut || res.Signal != "terminated" {
		t.Errorf("got %+v, want cancelled by SIGTERM", res)
	}
	if elapsed := time.Since(start); elapsed > testQuick {
		t.Errorf("took %s", elapsed)
	}
	assertGone(t, m1, m2, m3)
}

func TestProcessHardCancel(t *testing.T) {
	d := t.TempDir()
	m := newMarker()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	hard, hardCancel := context.WithCancel(t.Context())
	defer hardCancel()
	go func() {
		waitFiles(t, filepath.Join(d, "ready"))
		cancel()
		time.Sleep(200 * time.Millisecond)
		hardCancel()
	}()
	start := time.Now()
	res, _, err := runSh(t, ctx, fmt.Sprintf(`trap '' TERM; sleep %s & touch %s/ready; wait`, m, d), func(s *Spec) {
		s.KillGrace = 10 * time.Minute
		s.Hard = hard
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Cancelled || res.Signal != "killed" || res.ExitCode != 137 {
		t.Errorf("got %+v, want cancelled and SIGKILLed", res)
	}
	if elapsed := time.Since(start); elapsed > testQuick {
		t.Errorf("took %s: the grace was not skipped", elapsed)
	}
	assertGone(t, m)
}

func TestProcessHardOnly(t *testing.T) {
	m, d := newMarker(), t.TempDir()
	hard, hardCancel := context.WithCancel(t.Context())
	go func() {
		waitFiles(t, filepath.Join(d, "ready")) // started, and ignoring SIGTERM
		hardCancel()
	}()
	res, _, err := runSh(t, t.Context(), fmt.Sprintf(`trap '' TERM; touch %s/ready; sleep %s`, d, m), func(s *Spec) {
		s.KillGrace = 10 * time.Minute
		s.Hard = hard
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Cancelled || res.Signal != "killed" {
		t.Errorf("got %+v", res)
	}
	assertGone(t, m)
}

func TestProcessAlreadyCancelled(t *testing.T) {
	d := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	res, _, err := runSh(t, ctx, "touch "+d+"/ran", nil)
	if err != nil || !res.Cancelled || res.ExitCode != -1 {
		t.Fatalf("got %+v %v", res, err)
	}
	if _, err := os.Stat(filepath.Join(d, "ran")); err == nil {
		t.Error("the process ran")
	}
}

// concurrentB starts run B, tagged, with four kinds of process that must
// survive while another run cleans up: a child in its tree, a setsid'd
// orphan carrying its tag, a setsid'd orphan with a scrubbed environment
// holding B's output pipe, and a setsid'd orphan with a scrubbed
// environment and no link to B at all (ambiguous).
func concurrentB(t *testing.T, ctx context.Context) (markers [4]string, done <-chan Result) {
	d := t.TempDir()
	sleepBin, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	for i := range markers {
		markers[i] = newMarker()
	}
	script := fmt.Sprintf(`
sleep %[2]s &
(setsid sh -c "touch %[1]s/tagged; exec sleep %[3]s" </dev/null >/dev/null 2>&1 &)
(setsid /usr/bin/env -i /bin/sh -c "touch %[1]s/piped; exec %[6]s %[4]s" </dev/null &)
(setsid /usr/bin/env -i /bin/sh -c "touch %[1]s/scrubbed; exec %[6]s %[5]s" </dev/null >/dev/null 2>&1 &)
while [ ! -e %[1]s/tagged ] || [ ! -e %[1]s/piped ] || [ ! -e %[1]s/scrubbed ]; do sleep 0.02; done
touch %[1]s/ready
wait`, d, markers[0], markers[1], markers[2], markers[3], sleepBin)
	ch := make(chan Result, 1)
	go func() {
		res, err := Run(ctx, withTestShim(Spec{Path: "/bin/sh", Args: []string{"-c", script}, Env: testEnv,
			ReapTag: "B-" + newMarker(), Timeout: testSafety}))
		if err != nil {
			t.Error(err)
		}
		ch <- res
	}()
	waitFiles(t, filepath.Join(d, "ready"))
	waitAlive(t, markers[:]...) // the daemons exec sleep after touching their files
	return markers, ch
}

// runA runs a pipeline that leaves two daemons behind and exits.
func runA(t *testing.T, tag string) {
	d := t.TempDir()
	a1, a2 := newMarker(), newMarker()
	script := fmt.Sprintf(`
(setsid sh -c "touch %[1]s/a1; exec sleep %[2]s" </dev/null >/dev/null 2>&1 &)
( (sh -c "touch %[1]s/a2; exec sleep %[3]s" </dev/null >/dev/null 2>&1 &) & )
while [ ! -e %[1]s/a1 ] || [ ! -e %[1]s/a2 ]; do sleep 0.02; done
exit 0`, d, a1, a2)
	res, _, err := runSh(t, t.Context(), script, func(s *Spec) { s.ReapTag = tag })
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 || res.Leftovers < 2 {
		t.Errorf("run A: %+v, want exit 0 and >= 2 leftovers", res)
	}
	assertGone(t, a1, a2)
}

func finishB(t *testing.T, cancel context.CancelFunc, done <-chan Result, markers [4]string) {
	t.Helper()
	cancel()
	select {
	case res := <-done:
		if !res.Cancelled {
			t.Errorf("run B: %+v, want cancelled", res)
		}
	case <-time.After(testSafety):
		t.Fatal("run B did not return")
	}
	assertGone(t, markers[:]...)
	if z := zombieChildren(t); len(z) > 0 {
		t.Errorf("zombie children left: %v", z)
	}
}

func TestProcessConcurrentTaggedRuns(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	markers, done := concurrentB(t, ctx)
	runA(t, "A-"+newMarker())
	// A is tagged and B in flight: even B's ambiguous daemon survives A.
	assertAlive(t, markers[:]...)
	// B is the last run: its sweep kills all of it, the ambiguous one too.
	finishB(t, cancel, done, markers)
}

func TestProcessConcurrentUntaggedRun(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	markers, done := concurrentB(t, ctx)
	runA(t, "")
	// B's tree, its tagged orphan and the orphan holding its pipe are B's;
	// the ambiguous one is killed by the untagged run A, as documented.
	assertAlive(t, markers[0], markers[1], markers[2])
	assertGone(t, markers[3])
	finishB(t, cancel, done, markers)
}

func TestProcessDuplicateReapTag(t *testing.T) {
	d := t.TempDir()
	m := newMarker()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runSh(t, ctx, fmt.Sprintf("touch %s/ready; sleep %s", d, m), func(s *Spec) { s.ReapTag = "dup" })
	}()
	waitFiles(t, filepath.Join(d, "ready"))
	_, _, err := runSh(t, t.Context(), "exit 0", func(s *Spec) { s.ReapTag = "dup" })
	if err == nil || !strings.Contains(err.Error(), "dup") {
		t.Errorf("second run with the same ReapTag: err = %v", err)
	}
	cancel()
	<-done
	assertGone(t, m)
}

func TestProcessStartErrors(t *testing.T) {
	d := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(d, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, path, dir string
		is              error
		msg             string
	}{
		{"missing", filepath.Join(d, "nope"), "", fs.ErrNotExist, "no such file"},
		{"not executable", write("plain", "#!/bin/sh\necho hi\n", 0o644), "", fs.ErrPermission, "not executable"},
		{"no #! line", write("garbage", "\x00\x01\x02 not a program\n", 0o755), "", nil, "#! line"},
		{"missing interpreter", write("badinterp", "#!/nonexistent/interpreter\n", 0o755), "", fs.ErrNotExist, "interpreter"},
		{"directory", d, "", fs.ErrPermission, "directory"},
		{"missing dir", "/bin/sh", filepath.Join(d, "nodir"), fs.ErrNotExist, "working directory"},
	} {
		var out fixtures.Buffer
		res, err := Run(t.Context(), withTestShim(Spec{Path: tc.path, Dir: tc.dir, Env: testEnv, Output: &out, Timeout: testSafety}))
		if err == nil {
			t.Errorf("%s: no error; result %+v", tc.name, res)
			continue
		}
		if !strings.Contains(err.Error(), tc.path) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: error %q should name %s and say %q", tc.name, err, tc.path, tc.msg)
		}
		if tc.is != nil && !errors.Is(err, tc.is) {
			t.Errorf("%s: error %q is not %v", tc.name, err, tc.is)
		}
		if res.ExitCode != -1 || out.String() != "" {
			t.Errorf("%s: result %+v output %q", tc.name, res, out.String())
		}
	}
	if _, err := Run(t.Context(), withTestShim(Spec{})); err == nil {
		t.Error("empty path: no error")
	}
}

type failingWriter struct{ n int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.n+len(p) > 100_000 {
		return 0, errors.New("disk full")
	}
	w.n += len(p)
	return len(p), nil
}

func TestProcessOutputFailureDoesNotBlock(t *testing.T) {
	res, _, err := runSh(t, t.Context(), `head -c 5000000 /dev/zero; exit 3`, func(s *Spec) {
		s.Output = &failingWriter{}
	})
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("err = %v, want the write error", err)
	}
	if res.ExitCode != 3 || res.TimedOut {
		t.Errorf("got %+v: the process should have run to its end", res)
	}
}

func cpuTimes() (self, children time.Duration) {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	unix.Getrusage(unix.RUSAGE_CHILDREN, &ru)
	return self, time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchRunProcess runs /bin/true; besides ns/op it reports the CPU time
// of this process and of its (reaped) children per run, the files read
// under /proc and the sweeps.
func benchRunProcess(b *testing.B, shimPath string) {
	ctx := context.Background()
	r0, s0 := procReads.Load(), sweeps.Load()
	c0, ch0 := cpuTimes()
	for b.Loop() {
		res, err := Run(ctx, Spec{Path: "/bin/true", Shim: shimPath})
		if err != nil || res.ExitCode != 0 {
			b.Fatal(res, err)
		}
	}
	c1, ch1 := cpuTimes()
	n := float64(b.N)
	b.ReportMetric(float64(c1-c0)/n, "cpu-ns/op")
	b.ReportMetric(float64(ch1-ch0)/n, "child-cpu-ns/op")
	b.ReportMetric(float64(procReads.Load()-r0)/n, "procreads/op")
	b.ReportMetric(float64(sweeps.Load()-s0)/n, "sweeps/op")
}

func BenchmarkRunProcessTrue(b *testing.B) { benchRunProcess(b, "") }
