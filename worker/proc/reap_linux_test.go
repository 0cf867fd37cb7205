//go:build linux

package proc

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"refci.dev/refci/worker/shim"
)

func TestReapReadTag(t *testing.T) {
	m := newMarker()
	// sleep directly, not through a shell: a shell killed while its child
	// is running would orphan that child into our own process group, where
	// sweeps deliberately never reap.
	cmd := exec.Command("/bin/sleep", m)
	cmd.Env = []string{reapTagEnv + "=first", "X=1", reapTagEnv + "=second"}
	// Deduplicated by os/exec: the last one wins.
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	deadline := time.Now().Add(testReadyMax)
	for len(markerPids(m)) == 0 { // until exec'd: before, environ is ours
		if time.Now().After(deadline) {
			t.Fatal("sleep did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if tag, ok := readReapTag(cmd.Process.Pid); !ok || tag != "second" {
		t.Errorf("tag %q %v", tag, ok)
	}
	if _, ok := readReapTag(os.Getpid()); ok && os.Getenv(reapTagEnv) == "" {
		t.Error("found a tag in our own environment")
	}
}

func TestReapSubreaperIsSet(t *testing.T) {
	if _, _, err := runSh(t, t.Context(), "exit 0", nil); err != nil {
		t.Fatal(err)
	}
	var v int32
	if _, _, e := unix.Syscall(unix.SYS_PRCTL, unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&v)), 0); e != 0 {
		t.Fatal(e)
	}
	if v != 1 || subreaperErr != nil {
		t.Errorf("child subreaper = %d, err %v", v, subreaperErr)
	}
}

// Children started by other code of the program (in our own process
// group) are neither killed nor reaped by a sweep: their exec.Cmd still
// gets their exit status.
func TestReapLeavesForeignChildrenAlone(t *testing.T) {
	m := newMarker()
	live := exec.Command("sleep", m)
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { live.Process.Kill(); live.Wait() }()
	exited := exec.Command("/bin/sh", "-c", "exit 7")
	if err := exited.Start(); err != nil {
		t.Fatal(err)
	}
	// Let it become a zombie that nobody has waited for yet.
	for {
		p, err := shim.ReadStat(exited.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		if p.State == 'Z' {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}

	d := t.TempDir()
	dm := newMarker()
	res, _, err := runSh(t, t.Context(), fmt.Sprintf(`(setsid sh -c "touch %[1]s/a; exec sleep %[2]s" </dev/null >/dev/null 2>&1 &)
while [ ! -e %[1]s/a ]; do sleep 0.02; done`, d, dm), nil)
	if err != nil || res.Leftovers < 1 {
		t.Fatalf("%+v %v", res, err)
	}
	assertGone(t, dm)
	assertAlive(t, m)
	err = exited.Wait()
	if exited.ProcessState == nil || exited.ProcessState.ExitCode() != 7 {
		t.Errorf("the foreign zombie's status was stolen: %v", err)
	}
}

// A process that escapes into our own process group (where sweeps never
// kill) while holding the output pipe must not make Run wait
// forever: the drain gives up.
func TestReapForeignPipeHolderDoesNotHang(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("needs python3 for setpgid")
	}
	defer func(d time.Duration) { drainGiveUp = d }(drainGiveUp)
	drainGiveUp = 300 * time.Millisecond
	d := t.TempDir()
	m := newMarker()
	script := fmt.Sprintf(`(%s -c 'import os, sys, time
os.setpgid(0, %d)
open(sys.argv[2], "w").close()
time.sleep(float(sys.argv[1]))' %s %s/joined &)
while [ ! -e %s/joined ]; do sleep 0.02; done
echo done`, py, unix.Getpgrp(), m, d, d)
	start := time.Now()
	res, out, err := runSh(t, t.Context(), script, nil)
	defer func() {
		for _, pid := range markerPids(m) {
			syscallKill(pid)
			var ws unix.WaitStatus
			unix.Wait4(pid, &ws, 0, nil) // it was reparented to us
		}
	}()
	if err == nil || !strings.Contains(err.Error(), "still holds the output pipe") {
		t.Errorf("err = %v", err)
	}
	if res.ExitCode != 0 || out != "done\n" {
		t.Errorf("result %+v, output %q", res, out)
	}
	if elapsed := time.Since(start); elapsed > testQuick {
		t.Errorf("took %s", elapsed)
	}
	assertAlive(t, m) // foreign to the sweep: left alone
}

// A pipeline that leaves nothing behind needs no sweep; one that leaves a
// daemon behind gets one, which kills it.
func TestReapFastPathSkipsSweep(t *testing.T) {
	s0 := sweeps.Load()
	res, _, err := runSh(t, t.Context(), "exit 0", nil)
	if err != nil || res.ExitCode != 0 || res.Leftovers != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	if n := sweeps.Load() - s0; n != 0 {
		t.Errorf("%d sweep(s) for a pipeline that left nothing behind", n)
	}

	d := t.TempDir()
	m := newMarker()
	s0 = sweeps.Load()
	res, _, err = runSh(t, t.Context(), fmt.Sprintf(`(setsid sh -c "touch %[1]s/a; exec sleep %[2]s" </dev/null >/dev/null 2>&1 &)
while [ ! -e %[1]s/a ]; do sleep 0.02; done`, d, m), nil)
	if err != nil || res.Leftovers < 1 {
		t.Fatalf("%+v %v", res, err)
	}
	if testShim == "" && sweeps.Load() == s0 {
		t.Error("no sweep, yet a daemon was left behind")
	}
	assertGone(t, m)
}

// nothingLeft says "nothing left" only when every direct child of ours is
// another run's live main process or in our own process group, and the
// run's process group is empty.
func TestReapNothingLeft(t *testing.T) {
	if err := ensureSubreaper(); err != nil {
		t.Skip(err)
	}
	d := t.TempDir()
	m := newMarker()
	// The run's main process: reaped, leaving a background job in its group.
	main := exec.Command("/bin/sh", "-c", fmt.Sprintf(`sleep %s </dev/null >/dev/null 2>&1 & touch %s/bg`, m, d))
	main.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := main.Run(); err != nil {
		t.Fatal(err)
	}
	waitAlive(t, m)
	r := &reapRun{}
	registry.mu.Lock()
	if err := r.registerLocked(); err != nil {
		registry.mu.Unlock()
		t.Fatal(err)
	}
	r.mainPid, r.mainGone = main.Process.Pid, true
	registry.mu.Unlock()
	defer r.unregister()

	if r.nothingLeft() {
		t.Error("nothing left, with the main's background job alive (an orphan in its group)")
	}
	for _, pid := range markerPids(m) {
		syscallKill(pid)
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, 0, nil) // reparented to us
	}
	if !r.nothingLeft() {
		t.Fatal("something left after the background job was reaped")
	}

	// A child of other code in our own process group.
	m1 := newMarker()
	own := exec.Command("sleep", m1)
	if err := own.Start(); err != nil {
		t.Fatal(err)
	}
	if !r.nothingLeft() {
		t.Error("a child in our own process group counts")
	}
	own.Process.Kill()
	own.Wait()

	// A child in a process group of its own could be an orphan of r...
	m2 := newMarker()
	other := exec.Command("sleep", m2)
	other.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	if r.nothingLeft() {
		t.Error("nothing left, with a direct child in a group of its own")
	}
	// ...unless it is the live main process of another run.
	r2 := &reapRun{}
	registry.mu.Lock()
	if err := r2.registerLocked(); err != nil {
		registry.mu.Unlock()
		t.Fatal(err)
	}
	r2.mainPid = other.Process.Pid
	registry.mu.Unlock()
	defer r2.unregister()
	if !r.nothingLeft() {
		t.Error("another run's live main counts")
	}
	r2.markMainGone()
	if r.nothingLeft() {
		t.Error("nothing left, with a direct child that is no longer a live main")
	}
}
