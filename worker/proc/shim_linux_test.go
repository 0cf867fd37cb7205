//go:build linux

package proc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/worker/shim"
)

// The test binary is its own shim: run as "worker.test __refci-shim ...",
// it is ShimMain, as the refci binary dispatches on its first argument.
// (An init function rather than TestMain, so that it stays out of the way
// of a TestMain of the package.) syscall.Exit rather than os.Exit: with
// -race, os.Exit sleeps a second (GORACE atexit_sleep_ms) before it exits,
// and the shim's environment is the pipeline's, without GORACE. Races are
// still reported when they happen.
func init() {
	if len(os.Args) > 1 && os.Args[1] == ShimArg {
		syscall.Exit(ShimMain(os.Args[2:]))
	}
}

// useShim runs the rest of the test with testShim set.
func useShim(t *testing.T) string {
	exe := fixtures.Executable(t)
	testShim = exe
	t.Cleanup(func() { testShim = "" })
	return exe
}

// The process tests again, through a shim: same results.
func TestShimMode(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"Interleaving", TestProcessInterleaving},
		{"ExitCodes", TestProcessExitCodes},
		{"EnvIsExact", TestProcessEnvIsExact},
		{"ArgsDirAndStdin", TestProcessArgsDirAndStdin},
		{"LargeOutput", TestProcessLargeOutput},
		{"Timeout", TestProcessTimeout},
		{"TimeoutKillsAfterGrace", TestProcessTimeoutKillsAfterGrace},
		{"DaemonsAreKilled", TestProcessDaemonsAreKilled},
		{"Cancel", TestProcessCancel},
		{"HardCancel", TestProcessHardCancel},
		{"HardOnly", TestProcessHardOnly},
		{"AlreadyCancelled", TestProcessAlreadyCancelled},
		{"ConcurrentTaggedRuns", TestProcessConcurrentTaggedRuns},
		{"DuplicateReapTag", TestProcessDuplicateReapTag},
		{"StartErrors", TestProcessStartErrors},
		{"OutputFailureDoesNotBlock", TestProcessOutputFailureDoesNotBlock},
		{"LeavesForeignChildrenAlone", TestReapLeavesForeignChildrenAlone},
		{"FastPathSkipsSweep", TestReapFastPathSkipsSweep},
		// Not here, because a shim changes them for the better:
		// TestProcessConcurrentUntaggedRun (see
		// TestShimConcurrentUntaggedRuns) and
		// TestReapForeignPipeHolderDoesNotHang (a process that joins our
		// process group is still below the shim: it is killed).
	} {
		t.Run(tc.name, func(t *testing.T) {
			useShim(t)
			tc.f(t)
		})
	}
}

// The exit codes and signals the shim could use itself pass through
// unchanged.
func TestShimExitStatusPassesThrough(t *testing.T) {
	useShim(t)
	for _, tc := range []struct {
		script string
		code   int
		signal string
	}{
		{"exit 2", 2, ""},
		{"exit 125", 125, ""},
		{"exit 127", 127, ""},
		{"kill -HUP $$", 129, "hangup"},
		{"kill -USR1 $$", 138, "user defined signal 1"},
	} {
		res, out, err := runSh(t, t.Context(), tc.script, nil)
		if err != nil || res.ExitCode != tc.code || res.Signal != tc.signal || res.Leftovers != 0 {
			t.Errorf("%s: got %+v %v (output %q), want exit %d signal %q", tc.script, res, err, out, tc.code, tc.signal)
		}
	}
}

// The pipeline runs below a shim, in a process group of its own (not the
// shim's), and has the same file descriptors open as without a shim (not
// the report pipe).
func TestShimProcessLayout(t *testing.T) {
	const script = `echo "$$ $(cut -d' ' -f4,5 /proc/$$/stat) $(cut -d' ' -f5 /proc/$PPID/stat)"
for f in /proc/$$/fd/*; do printf '%s ' "${f##*/}"; readlink "$f" || echo; done`
	fds := func(out string) map[string]string {
		m := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
			if fd, target, ok := strings.Cut(l, " "); ok && target != "" { // "": the glob's own directory
				m[fd] = target
			}
		}
		return m
	}
	_, plain, err := runSh(t, t.Context(), script, nil)
	if err != nil {
		t.Fatal(err)
	}
	useShim(t)
	res, out, err := runSh(t, t.Context(), script, nil)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%+v %v %q", res, err, out)
	}
	f := strings.Fields(strings.SplitN(out, "\n", 2)[0])
	if len(f) != 4 {
		t.Fatalf("output %q", out)
	}
	pid, ppid, pgrp, shimPgrp := f[0], f[1], f[2], f[3]
	if ppid == strconv.Itoa(os.Getpid()) {
		t.Error("the pipeline is our child: no shim")
	}
	if pgrp != pid {
		t.Errorf("the pipeline's process group is %s, want its own (%s)", pgrp, pid)
	}
	if shimPgrp != ppid {
		t.Errorf("the shim's process group is %s, want its own (%s)", shimPgrp, ppid)
	}
	want, got := fds(plain), fds(out)
	if len(got) != len(want) || got["1"] != got["2"] || !strings.HasPrefix(got["1"], "pipe:") {
		t.Errorf("file descriptors with a shim %v, without %v", got, want)
	}
	for fd := range want {
		if _, ok := got[fd]; !ok {
			t.Errorf("file descriptors with a shim %v, without %v", got, want)
		}
	}
}

// Cheap: the worker neither sweeps nor reads /proc when the shim reports
// that it killed everything.
func TestShimNoSweep(t *testing.T) {
	useShim(t)
	s0, r0 := sweeps.Load(), procReads.Load()
	res, _, err := runSh(t, t.Context(), "exit 0", nil)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	if s, r := sweeps.Load()-s0, procReads.Load()-r0; s != 0 || r != 0 {
		t.Errorf("%d sweeps, %d reads of /proc", s, r)
	}
}

// A stop that comes while the shim is starting gives the same result as
// one that comes later.
func TestShimStopWhileStarting(t *testing.T) {
	useShim(t)
	for range 5 {
		m := newMarker()
		res, _, err := runSh(t, t.Context(), "sleep "+m, func(s *Spec) { s.Timeout = time.Nanosecond })
		if err != nil || !res.TimedOut || res.ExitCode != 143 || res.Signal != "terminated" {
			t.Errorf("timeout: %+v %v", res, err)
		}
		assertGone(t, m)

		m = newMarker()
		hard, cancel := context.WithCancel(t.Context())
		time.AfterFunc(time.Millisecond, cancel)
		res, _, err = runSh(t, t.Context(), "sleep "+m, func(s *Spec) { s.Hard = hard })
		notStarted := res.ExitCode == -1 && res.Duration == 0 // cancelled before Run started anything: fine too
		if err != nil || !res.Cancelled || !notStarted && (res.ExitCode != 137 || res.Signal != "killed") {
			t.Errorf("hard cancel: %+v %v", res, err)
		}
		cancel()
		assertGone(t, m)
	}
}

// A SIGTERM that does not come from the worker (the pipeline signals its
// parent) cannot leave the shim waiting forever for leftovers that
// ignore it: after the grace, it kills them. (The main process ignores it
// too, so that its exit status does not depend on whether the shim passed
// the SIGTERM on before it exited.)
func TestShimForeignTerm(t *testing.T) {
	useShim(t)
	d := t.TempDir()
	m := newMarker()
	res, _, err := runSh(t, t.Context(), fmt.Sprintf(`trap '' TERM
(touch %[1]s/a; exec sleep %[2]s) </dev/null >/dev/null 2>&1 &
while [ ! -e %[1]s/a ]; do sleep 0.02; done
kill -TERM $PPID
exit 4`, d, m), func(s *Spec) { s.KillGrace = 300 * time.Millisecond })
	if err != nil || res.ExitCode != 4 || res.Signal != "" || res.TimedOut || res.Cancelled || res.Leftovers < 1 {
		t.Errorf("got %+v %v", res, err)
	}
	assertGone(t, m)
}

// With shims, a run kills only what is below its own shim: even an
// untagged run leaves the daemons of another run alone, including those
// that no sweep could attribute.
func TestShimConcurrentUntaggedRuns(t *testing.T) {
	useShim(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	markers, done := concurrentB(t, ctx)
	runA(t, "")
	assertAlive(t, markers[:]...)
	finishB(t, cancel, done, markers)
}

// When the shim dies without a report (here SIGKILLed), the worker kills
// what it left, as without a shim, and says so.
func TestShimDiesWithoutReport(t *testing.T) {
	useShim(t)
	d := t.TempDir()
	m1, m2 := newMarker(), newMarker()
	type result struct {
		res Result
		err error
	}
	ch := make(chan result, 1)
	go func() {
		res, _, err := runSh(t, t.Context(), fmt.Sprintf(`(setsid sh -c "touch %[1]s/a; exec sleep %[2]s" </dev/null >/dev/null 2>&1 &)
while [ ! -e %[1]s/a ]; do sleep 0.02; done
sleep %[3]s`, d, m1, m2), func(s *Spec) { s.ReapTag = "T-" + m1 })
		ch <- result{res, err}
	}()
	waitAlive(t, m1, m2)
	kids, _, err := shim.ReadProcChildren(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	killed := false
	for _, k := range kids {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", k)); err == nil && bytes.Contains(b, []byte(ShimArg)) && bytes.Contains(b, []byte(m2)) {
			syscall.Kill(k, syscall.SIGKILL)
			killed = true
		}
	}
	if !killed {
		t.Fatal("shim not found")
	}
	select {
	case r := <-ch:
		if r.err == nil || !strings.Contains(r.err.Error(), "without reporting") {
			t.Errorf("err = %v", r.err)
		}
		if r.res.Signal != "killed" || r.res.Leftovers < 2 {
			t.Errorf("got %+v, want the shim's status and the leftovers", r.res)
		}
	case <-time.After(testSafety):
		t.Fatal("Run did not return")
	}
	assertGone(t, m1, m2)
	if z := zombieChildren(t); len(z) > 0 {
		t.Errorf("zombie children left: %v", z)
	}
}

func TestShimStartFailures(t *testing.T) {
	d := t.TempDir()
	for _, tc := range []struct {
		name, shim, msg string
	}{
		{"relative", "refci", "not absolute"},
		{"missing", filepath.Join(d, "nope"), "cannot start the shim"},
		{"not a shim", "/bin/true", "without reporting"},
	} {
		var out fixtures.Buffer
		res, err := Run(t.Context(), Spec{Path: "/bin/sh", Args: []string{"-c", "echo ran"}, Env: testEnv,
			Output: &out, Shim: tc.shim, Timeout: testSafety})
		if err == nil || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), "/bin/sh") {
			t.Errorf("%s: error %v, want one about %q naming /bin/sh", tc.name, err, tc.msg)
		}
		// As a start failure: run.go relies on ExitCode -1 and no Duration.
		if res.ExitCode != -1 || res.Duration != 0 || out.String() != "" {
			t.Errorf("%s: result %+v, output %q", tc.name, res, out.String())
		}
	}
}

func TestShimUsage(t *testing.T) {
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	defer func(f *os.File) { os.Stderr = f }(os.Stderr)
	os.Stderr = null
	for _, args := range [][]string{nil, {"--"}, {"/bin/true"}, {"--kill-grace=soon", "--", "/bin/true"}, {"--other", "--", "/bin/true"}} {
		if code := ShimMain(args); code != 2 {
			t.Errorf("ShimMain(%q) = %d, want 2", args, code)
		}
	}
}

// TestShimCrashHelper is the worker for TestShimWorkerKilled, in a child
// process; it does nothing in a normal test run.
func TestShimCrashHelper(t *testing.T) {
	if os.Getenv("REFCI_SHIM_CRASH_HELPER") != "1" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), testSafety) // should the test forget us
	defer cancel()
	Run(ctx, Spec{Path: "/bin/sh", Args: []string{"-c", os.Getenv("REFCI_SHIM_CRASH_SCRIPT")},
		Env: testEnv, Shim: fixtures.Executable(t)})
}

// When the worker is killed with SIGKILL, nothing of its pipeline survives.
func TestShimWorkerKilled(t *testing.T) {
	m := [4]string{newMarker(), newMarker(), newMarker(), newMarker()}
	script := fmt.Sprintf(`setsid sleep %s </dev/null >/dev/null 2>&1 &
sleep %s &
( (setsid sh -c 'exec sleep %s' </dev/null >/dev/null 2>&1 &) & )
sleep %s`, m[0], m[1], m[2], m[3])
	helper := exec.Command(fixtures.Executable(t), "-test.run=^TestShimCrashHelper$", "-test.count=1")
	helper.Env = append(os.Environ(), "REFCI_SHIM_CRASH_HELPER=1", "REFCI_SHIM_CRASH_SCRIPT="+script)
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			helper.Process.Kill()
			helper.Wait()
		}
		for _, mk := range m { // only after a failure
			for _, p := range markerPids(mk) {
				syscallKill(p)
			}
		}
	}()
	waitAlive(t, m[:]...)

	// The shim, to reap it should it be reparented to us.
	kids, _, err := shim.ReadProcChildren(helper.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	shimPid := 0
	for _, k := range kids {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", k)); err == nil && bytes.Contains(b, []byte("\x00"+ShimArg+"\x00")) {
			shimPid = k
		}
	}
	if shimPid == 0 {
		t.Fatalf("no shim among the helper's children %v", kids)
	}

	helper.Process.Signal(syscall.SIGKILL)
	helper.Wait()
	killed = true

	deadline := time.Now().Add(10 * time.Second)
	for {
		var alive []int
		for _, mk := range m {
			alive = append(alive, markerPids(mk)...)
		}
		if len(alive) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("processes of the pipeline survived the worker's death: %v", alive)
			for _, p := range alive {
				syscallKill(p)
			}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The shim exits too; if it was reparented to us (we are a subreaper
	// when an earlier test ran a pipeline), reap it.
	for deadline := time.Now().Add(testQuick); ; {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(shimPid, &ws, unix.WNOHANG, nil)
		if pid == shimPid || err != nil && !fixtures.ProcessRunning(shimPid) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the shim (pid %d) did not exit", shimPid)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func BenchmarkRunProcessTrueShim(b *testing.B) { benchRunProcess(b, fixtures.Executable(b)) }

// shimReport runs the shim (the test binary) on script by hand and
// returns its final report line.
func shimReport(t *testing.T, script string) shim.Report {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command(fixtures.Executable(t), ShimArg, "--kill-grace=5s", "--", "/bin/sh", "-c", script)
	cmd.Env = testEnv
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	done := make(chan struct{})
	timer := time.AfterFunc(testSafety, func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	defer timer.Stop()
	var last shim.Report
	dec := json.NewDecoder(r)
	go func() {
		defer close(done)
		for {
			var rep shim.Report
			if dec.Decode(&rep) != nil {
				return
			}
			last = rep
		}
	}()
	<-done
	cmd.Wait()
	if !last.Done {
		t.Fatalf("%q: no final report (last %+v)", script, last)
	}
	return last
}

// A pipeline that leaves nothing behind costs the shim no read of /proc
// (reading a process's entries makes its reap dearer); one that leaves
// a process behind is still walked, and the leftover killed.
func TestShimReadsProcOnlyForLeftovers(t *testing.T) {
	if rep := shimReport(t, "exit 3"); rep.ExitCode != 3 || rep.Leftovers != 0 || rep.ProcReads != 0 {
		t.Errorf("nothing left: report %+v, want exit 3, no leftover and no read of /proc", rep)
	}
	m := newMarker()
	rep := shimReport(t, fmt.Sprintf("(setsid sleep %s </dev/null >/dev/null 2>&1 &); sleep 0.2", m))
	if rep.ExitCode != 0 || rep.Leftovers != 1 || rep.ProcReads == 0 {
		t.Errorf("a leftover: report %+v, want exit 0, one leftover found through /proc", rep)
	}
	assertGone(t, m)
}
