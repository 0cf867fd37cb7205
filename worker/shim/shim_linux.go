//go:build linux

package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"refci.dev/refci/lightbin/buildstamp"
)

// The per-run shim.
//
// Reaping in the worker (worker/proc/reap_linux.go) cannot survive the worker:
// when the worker is killed with SIGKILL, the pipeline's processes are
// orphaned to init and run on. With proc.Spec.Shim, a small process
// sits between the worker and each pipeline and outlives neither:
//
//	worker ── shim (own process group, child subreaper) ── pipeline main (own process group) ── ...
//
// The shim is the refci binary itself, or the light refci-shim binary
// beside it (cmd/refci-shim: this package and little else; see
// proc.ChooseShim), started as
//
//	refci __refci-shim --kill-grace=DURATION -- PATH ARGS...
//
// with the pipeline's directory and environment, stdout and stderr the
// pipeline's output pipe, stdin /dev/null, fd 3 the write end of a report
// pipe, in a process group of its own, and SIGHUP as its parent-death
// signal (PR_SET_PDEATHSIG). It makes itself a child subreaper before it
// starts anything, so every process the pipeline starts stays below it,
// whatever it does (setsid, double fork), until the shim has reaped it:
// everything below the shim is this run's and nothing else's, which makes
// killing all of it simple and cheap (no attribution, no scan of /proc).
//
// The pipeline's main process gets a process group of its own under the
// shim, as it would without a shim: a pipeline that signals its own group
// (kill 0) does not hit the shim.
//
// Signals the shim acts on:
//
//   - SIGTERM (the worker's stop: timeout, cancellation): SIGTERM to every
//     process below it, parents first, and to processes that appear later,
//     until the tree is gone; when the main process exits meanwhile, what
//     is left gets the rest of the grace to go by itself, as without a
//     shim. The worker sends SIGUSR1 when the grace is over; the shim also
//     counts it (--kill-grace) from the SIGTERM, so that a SIGTERM from
//     elsewhere (a pipeline doing kill $PPID) cannot leave it waiting for
//     leftovers forever: once the main process has exited and the grace is
//     over, it kills them.
//   - SIGUSR1 (the worker's kill, after KillGrace or for Hard), SIGHUP (the
//     parent-death signal), the parent's death seen otherwise (fd 3's read
//     end closed: poll says POLLERR; or getppid changed, checked every
//     second): SIGKILL everything below it now.
//
// Before the shim has installed its handlers, SIGHUP and SIGTERM kill it
// (the default action, and Go's), but SIGUSR1 is ignored by the Go runtime:
// so the worker sends SIGHUP rather than SIGUSR1 until the shim has
// reported that it is ready, and a shim killed by SIGTERM or SIGHUP has not
// started the pipeline. Should the worker be killed before the shim
// installed its handlers while SIGHUP is ignored (nohup), the shim notices
// through fd 3 (it checks once more just before it starts the pipeline).
//
// When the main process has exited (and no stop is under way), the shim
// SIGKILLs everything left below it: every descendant found by walking the
// children lists (/proc/PID/task/TID/children) from itself down, parents
// first, and the pipeline's group while the main process has not been
// reaped, again and again, reaping with wait4(-1, WNOHANG) until it has no
// child left. Then it exits.
//
// The report pipe (fd 3, close-on-exec in the shim so the pipeline never
// holds it) carries JSON lines (Report): {"pid":N} once the pipeline
// runs (N is its main process and process group), then a final line with
// "done":true and either the main process' exit status (exit_code, signal
// number), the number of leftovers killed after it exited and of processes
// that survived SIGKILL, or why the pipeline could not be started
// (start_errno, start_error). The exit status of the shim is the
// pipeline's (128+signal when killed by one) for people running it by
// hand; the worker goes by the report only, so it is never confused by a
// pipeline that exits with a code the shim might use.

// Arg is the first argument that makes the refci binary (or refci-shim)
// run Main.
const Arg = "__refci-shim"

// Protocol names the shim's protocol: its arguments, its report lines,
// the signals it acts on and what it does on them. `refci __refci-shim
// --protocol` prints it, and a worker uses a refci-shim executable
// (cmd/refci-shim) beside its own only when that prints exactly the
// Protocol the worker was built with, so that a stale refci-shim left
// from another build is never used. Change it with any change to this
// package that a worker of one build and a shim of another would not
// agree on.
const Protocol = "refci-shim 1"

// ProtocolArg, as the only argument after Arg, makes Main print Identity.
const ProtocolArg = "--protocol"

// Identity is Protocol and the build it comes from: the git commit the
// binary was built at (with "+dirty" for a modified tree), or the module
// version when it was built from a released module. A worker takes a
// refci-shim only when its Identity is the worker's own, so a shim left
// from another commit is refused even where Protocol was not bumped.
func Identity() string {
	bi, _ := debug.ReadBuildInfo()
	return Protocol + " (" + buildstamp.Of(bi) + ")"
}

const (
	KillSignal  = syscall.SIGUSR1 // worker → ready shim: kill everything now
	DeathSignal = syscall.SIGHUP  // the shim's Pdeathsig; also "kill everything now"
	ReportFD    = 3               // the report pipe's write end, in the shim
	// DefaultKillGrace is the grace without --kill-grace.
	DefaultKillGrace = 5 * time.Second
	// ReapGiveUp bounds the SIGKILL phase: processes that survive SIGKILL
	// this long (stuck in uninterruptible sleep) make the shim give up on
	// them and report them (Report.Stuck) rather than hang forever.
	ReapGiveUp = time.Minute
)

// Report is one line on the report pipe (fd 3, ReportFD).
type Report struct {
	Pid        int    `json:"pid,omitempty"`  // ready: the pipeline's main process runs, with this pid
	Done       bool   `json:"done,omitempty"` // the final line
	ExitCode   int    `json:"exit_code"`      // as proc.Result.ExitCode
	Signal     int    `json:"signal,omitempty"`
	Leftovers  int    `json:"leftovers,omitempty"`
	Stuck      int    `json:"stuck,omitempty"`   // processes that survived SIGKILL for ReapGiveUp
	Partial    bool   `json:"partial,omitempty"` // not a subreaper: orphans may have escaped to the worker
	StartErrno int    `json:"start_errno,omitempty"`
	StartError string `json:"start_error,omitempty"`
	// Unisolated, in the ready line, says why the paths to hide are not
	// hidden from the pipeline (user namespaces are unavailable).
	Unisolated string `json:"unisolated,omitempty"`
	// ProcReads, in the final line, is how many files and directories
	// under /proc the shim read (ProcReads): what finding the processes
	// below it cost. A pipeline that leaves nothing behind costs none.
	ProcReads int64 `json:"proc_reads,omitempty"`
}

// Main is the per-run shim (see above). args are the arguments after
// "__refci-shim": options (--kill-grace=DURATION, default 5s), "--", then
// the program and its arguments; or only --protocol (ProtocolArg), which
// prints Protocol. It returns the exit status for os.Exit.
//
// The binary must dispatch to it first thing, before flags, config or
// anything else expensive (the shim's start is on every run's path):
//
//	func main() {
//		if len(os.Args) > 1 && os.Args[1] == shim.Arg {
//			os.Exit(shim.Main(os.Args[2:]))
//		}
//		...
//	}
//
// (Package initialisation of the binary still runs before main: keep it
// cheap. cmd/refci-shim is a binary that holds this package and little
// else.) Main installs signal handlers and makes the process a child
// subreaper, so it must not be called in a process that does anything
// else.
func Main(args []string) int {
	if len(args) == 1 && args[0] == ProtocolArg {
		fmt.Println(Identity())
		return 0
	}
	grace := DefaultKillGrace
	var ns nsPaths
	require, inNS, probe := false, false, false
	for len(args) > 0 && args[0] != "--" {
		a := args[0]
		args = args[1:]
		if v, ok := strings.CutPrefix(a, "--kill-grace="); ok {
			d, err := time.ParseDuration(v)
			if err == nil && d > 0 {
				grace = d
				continue
			}
		} else if ns.parse(a) {
			continue
		} else if a == NoMountSetattrArg {
			noMountSetattr = true
			continue
		} else if a == RequireArg || a == inNSArg || a == ProbeArg {
			require = require || a == RequireArg
			inNS = inNS || a == inNSArg
			probe = probe || a == ProbeArg
			continue
		}
		args = nil
		break
	}
	if len(args) < 2 || args[0] != "--" || args[1] == "" {
		fmt.Fprintf(os.Stderr, "refci: usage: refci %s [--kill-grace=DURATION] [--hide=ABSPATH]... [--keep=ABSPATH]... [--writable=ABSPATH]... [--read-only=ABSPATH]... [--require-isolation] -- PROGRAM [ARG...] (internal: the refci worker runs it)\n", Arg)
		return 2
	}
	switch {
	case inNS:
		return nsExec(ns, probe, args[1], args[1:])
	case probe:
		return probeMain()
	}
	// A pipeline runs as this process' user: without this, it could
	// read this process' memory and, through /proc/PID/root, the files
	// hidden from it.
	unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
	s := &shim{
		grace:     grace,
		stoppedBy: syscall.SIGKILL,
		ns:        ns,
		require:   require,
		self:      os.Getpid(),
		ppid:      os.Getppid(),
		reportFD:  -1,
		ctl:       make(chan os.Signal, 8),
		chld:      make(chan os.Signal, 1),
		sent:      map[ProcKey]syscall.Signal{},
		leftovers: map[ProcKey]struct{}{},
	}
	var st unix.Stat_t
	if unix.Fstat(ReportFD, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFIFO {
		unix.CloseOnExec(ReportFD)
		s.reportFD = ReportFD
	}
	return s.run(args[1], args[1:])
}

type shim struct {
	grace      time.Duration
	ns         nsPaths        // what the pipeline's namespace hides, keeps, leaves writable (hide_linux.go)
	require    bool           // do not run the pipeline when they cannot be hidden
	stoppedBy  syscall.Signal // SIGTERM when that stopped the start (start), else SIGKILL
	self, ppid int
	reportFD   int // -1 without a report pipe
	ctl, chld  chan os.Signal

	mainPid     int
	mainDone    bool
	groupKilled bool // the main's group got SIGKILL before the main was reaped
	status      unix.WaitStatus
	sent        map[ProcKey]syscall.Signal
	leftovers   map[ProcKey]struct{}
}

func (s *shim) run(path string, argv []string) int {
	signal.Notify(s.ctl, syscall.SIGTERM, KillSignal, DeathSignal)
	signal.Notify(s.chld, syscall.SIGCHLD)
	partial := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != nil
	gone := make(chan struct{})
	go s.watchParent(gone)

	// A stop that came before the pipeline started, or a worker that is
	// gone already: do not start it.
	if s.workerGone(0) {
		return s.notStarted(syscall.SIGKILL)
	}
	for pending := true; pending; {
		select {
		case sig := <-s.ctl:
			if sig == syscall.SIGTERM {
				return s.notStarted(syscall.SIGTERM)
			}
			return s.notStarted(syscall.SIGKILL)
		case <-gone:
			return s.notStarted(syscall.SIGKILL)
		default:
			pending = false
		}
	}

	pid, unisolated, err := s.start(path, argv, gone)
	if errors.Is(err, errShimStopped) {
		return s.notStarted(s.stoppedBy)
	}
	if err != nil {
		rep := Report{Done: true, ExitCode: -1, StartError: err.Error()}
		var errno syscall.Errno
		if errors.As(err, &errno) {
			rep.StartErrno = int(errno)
		}
		s.report(rep)
		return 127
	}
	s.mainPid = pid
	s.report(Report{Pid: pid, Unisolated: unisolated})

	terminating, killNow := false, false
	var graceEnd time.Time
	poll := NewBackoff()
	for {
		left := s.reap()
		if killNow {
			break
		}
		if terminating {
			s.signalTree(syscall.SIGTERM)
			if s.mainDone && (!left || time.Now().After(graceEnd)) {
				break
			}
		} else if s.mainDone {
			break
		}
		var tick <-chan time.Time
		if terminating {
			tick = poll.Next()
		}
		select {
		case sig := <-s.ctl:
			if sig != syscall.SIGTERM {
				killNow = true
			} else if !terminating {
				terminating, graceEnd = true, time.Now().Add(s.grace)
				poll.Reset()
			}
		case <-s.chld:
		case <-gone:
			killNow = true
		case <-tick:
		}
	}
	stuck := s.killAll()

	rep := Report{Done: true, ExitCode: -1, Leftovers: len(s.leftovers), Stuck: stuck, Partial: partial, ProcReads: ProcReads.Load()}
	if s.mainDone {
		if s.status.Signaled() {
			rep.Signal = int(s.status.Signal())
			rep.ExitCode = 128 + rep.Signal
		} else {
			rep.ExitCode = s.status.ExitStatus()
		}
	}
	s.report(rep)
	if rep.ExitCode < 0 || rep.ExitCode > 255 {
		return 125
	}
	return rep.ExitCode
}

// notStarted reports that a stop came before the pipeline was started, as
// if its main process had been killed by sig at once.
func (s *shim) notStarted(sig syscall.Signal) int {
	s.report(Report{Done: true, ExitCode: 128 + int(sig), Signal: int(sig)})
	return 128 + int(sig)
}

// errShimStopped: the worker stopped the run (or died) while the
// pipeline was being started in its namespaces.
var errShimStopped = errors.New("stopped while starting")

// start starts the pipeline's main process, with the paths in s.ns.hide
// hidden from it when there are any (hide_linux.go). unisolated, when not
// empty, says why they are not hidden although the pipeline runs. A stop
// (or the worker's death, gone) while the namespace is set up kills the
// set-up and returns errShimStopped; a SIGTERM is taken for a kill then,
// as the pipeline never ran.
func (s *shim) start(path string, argv []string, gone <-chan struct{}) (pid int, unisolated string, err error) {
	if len(s.ns.hide) == 0 {
		pid, err = shimStart(path, argv)
		return pid, "", err
	}
	pid, r, err := startHidden(argv, s.ns, false)
	fallback, note, err := isolationDecision(err, s.require)
	if fallback {
		pid, err = shimStart(path, argv)
		return pid, note, err
	}
	if err != nil {
		return 0, "", err
	}
	res := make(chan error, 1)
	go func() {
		res <- nsSetupResult(r)
		r.Close()
	}()
	select {
	case err = <-res:
	case sig := <-s.ctl:
		err = errShimStopped
		if sig == syscall.SIGTERM {
			s.stoppedBy = syscall.SIGTERM
		}
	case <-gone:
		err = errShimStopped
	}
	if err == nil {
		return pid, "", nil
	}
	// The set-up failed, or is stopped: kill it, and what it may have
	// become and started in the meantime, all below this subreaper.
	unix.Kill(-pid, unix.SIGKILL)
	s.killAll()
	return 0, "", err
}

// shimStart starts the pipeline's main process in a process group of its
// own, with the shim's directory, environment, stdin, stdout and stderr.
// ETXTBSY is retried for up to a second, as in the worker's startProcess.
func shimStart(path string, argv []string) (int, error) {
	attr := &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: []uintptr{0, 1, 2},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	}
	delay := 5 * time.Millisecond
	deadline := time.Now().Add(time.Second)
	for {
		pid, err := syscall.ForkExec(path, argv, attr)
		if err == nil {
			return pid, nil
		}
		if errors.Is(err, syscall.ETXTBSY) && time.Now().Before(deadline) {
			time.Sleep(delay)
			delay *= 2
			continue
		}
		return 0, err
	}
}

func (s *shim) report(rep Report) {
	if s.reportFD < 0 {
		return
	}
	b, err := json.Marshal(rep)
	if err != nil {
		return
	}
	b = append(b, '\n')
	for len(b) > 0 {
		n, err := unix.Write(s.reportFD, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return // the worker is gone: nobody to tell
		}
		b = b[n:]
	}
}

// watchParent closes gone when the worker is gone (see workerGone),
// checking every second and as soon as the report pipe loses its reader.
func (s *shim) watchParent(gone chan<- struct{}) {
	for !s.workerGone(time.Second) {
	}
	close(gone)
}

// workerGone says whether the worker is gone: the report pipe has no
// reader left (poll reports POLLERR on its write end), or the parent pid
// changed. It waits up to wait for the former.
func (s *shim) workerGone(wait time.Duration) bool {
	if s.reportFD >= 0 {
		fds := []unix.PollFd{{Fd: int32(s.reportFD)}} // no events: only POLLERR and POLLHUP come back
		n, err := unix.Poll(fds, int(wait.Milliseconds()))
		if err == nil && n > 0 && fds[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
			return true
		}
	} else {
		time.Sleep(wait)
	}
	return os.Getppid() != s.ppid
}

// reap reaps every child that has exited, noting the main process' status,
// and says whether any child is left.
func (s *shim) reap() (childrenLeft bool) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil: // ECHILD
			return false
		case pid == 0:
			return true
		}
		if pid == s.mainPid && !s.mainDone {
			s.mainDone, s.status = true, ws
		}
	}
}

// signalTree sends sig to every live process below the shim that has not
// been sent sig or SIGKILL yet, parents before children, and returns how
// many live processes it found. A process' children are listed before it
// is signalled: once it dies they move to the shim, whose list was read
// already. (A child it forks between the two is found next time.)
// Processes signalled after the main process was reaped are leftovers.
func (s *shim) signalTree(sig syscall.Signal) (live int) {
	type node struct{ pid, parent int }
	var queue []node
	children := func(pid int) []int {
		kids, _, _ := ReadProcChildren(pid)
		return kids
	}
	own, _, err := ReadProcChildren(s.self)
	if err != nil {
		// No children files (CONFIG_PROC_CHILDREN): from one scan of
		// /proc instead.
		byParent := map[int][]int{}
		if procs, err := ListProcs(); err == nil {
			for _, p := range procs {
				byParent[p.PPid] = append(byParent[p.PPid], p.Pid)
			}
		}
		children = func(pid int) []int { return byParent[pid] }
	}
	add := func(parent int) {
		for _, k := range children(parent) {
			queue = append(queue, node{k, parent})
		}
	}
	if err == nil {
		for _, k := range own {
			queue = append(queue, node{k, s.self})
		}
	} else {
		add(s.self)
	}
	for i := 0; i < len(queue); i++ {
		n := queue[i]
		if s.signalChild(n.pid, n.parent, sig, func() { add(n.pid) }) {
			live++
		}
	}
	return live
}

// signalChild signals pid if it is still a live child of parent, unless
// it was sent sig or SIGKILL before, calling listChildren before. The
// pidfd is opened before the check, so a pid reused after the check is
// never signalled. It says whether pid was a live child.
func (s *shim) signalChild(pid, parent int, sig syscall.Signal, listChildren func()) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	switch {
	case err == nil:
		defer unix.Close(fd)
	case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM):
		fd = -1
	default:
		return false // gone
	}
	p, err := ReadStat(pid)
	if err != nil || p.PPid != parent && p.PPid != s.self || p.State == 'Z' {
		// Gone (the pid may name another process now), or a zombie,
		// whose children are the shim's already. (A child of parent that
		// parent's death gave to the shim is still ours.)
		return false
	}
	listChildren()
	if prev, ok := s.sent[p.Key()]; ok && (prev == sig || prev == syscall.SIGKILL) {
		return true
	}
	if fd >= 0 {
		err = unix.PidfdSendSignal(fd, unix.Signal(sig), nil, 0)
	} else {
		err = unix.Kill(pid, unix.Signal(sig))
	}
	if err == nil {
		s.sent[p.Key()] = sig
		// A member of the main's group got killAll's group SIGKILL
		// before the main process was reaped: killed again here only
		// because that SIGKILL was not recorded, it is no leftover.
		if s.mainDone && !(s.groupKilled && p.Pgrp == s.mainPid) {
			s.leftovers[p.Key()] = struct{}{}
		}
	}
	return true
}

// killAll SIGKILLs everything below the shim until it has no child left,
// and returns how many processes were still alive when it gave up after
// ReapGiveUp (0 when none).
func (s *shim) killAll() (stuck int) {
	giveUp := time.Now().Add(ReapGiveUp)
	poll := NewBackoff()
	for first := true; ; first = false {
		if !s.reap() {
			// No child, not even a zombie: nothing is below the shim, as
			// every orphan of the pipeline becomes the shim's child (it
			// is their subreaper). The usual end of a run, found without
			// reading /proc, whose entries then make the shim's own reap
			// dearer for the worker (each one read is invalidated then).
			return 0
		}
		live := s.signalTree(syscall.SIGKILL)
		if first && s.mainPid > 0 && !s.mainDone {
			// The main process is not reaped: its pid, the group's id,
			// cannot name anything else. This catches what its group
			// forked during the walk. Its members were killed before the
			// main process was reaped: not leftovers (see signalChild).
			unix.Kill(-s.mainPid, unix.SIGKILL)
			s.groupKilled = true
		}
		if !s.reap() {
			return 0
		}
		if time.Now().After(giveUp) {
			return max(live, 1)
		}
		select {
		case <-s.chld:
		case <-s.ctl:
		case <-poll.Next():
		}
	}
}

// Backoff yields growing poll intervals, 2ms to 100ms (the shim's and
// the worker's waits for processes).
type Backoff struct {
	d time.Duration
	t *time.Timer
}

// NewBackoff starts at 2ms.
func NewBackoff() *Backoff { return &Backoff{d: 2 * time.Millisecond} }

// Reset starts over at 2ms.
func (b *Backoff) Reset() { b.d = 2 * time.Millisecond }

// Next is a timer for the current interval, which then doubles.
func (b *Backoff) Next() <-chan time.Time {
	if b.t == nil {
		b.t = time.NewTimer(b.d)
	} else {
		b.t.Reset(b.d)
	}
	if b.d < 100*time.Millisecond {
		b.d = min(2*b.d, 100*time.Millisecond)
	}
	return b.t.C
}
