//go:build linux

package proc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"refci.dev/refci/worker/shim"
)

// Spec describes one pipeline process.
type Spec struct {
	// Started, when set, is called with the pid of the started process
	// (the shim, with Shim) before Run waits for it.
	Started func(pid int)
	Path    string   // executable to run; a relative Path is resolved against Dir
	Args    []string // arguments after Path (argv[0] is Path)
	Dir     string   // working directory; "" means the current one
	// Env is the complete environment; nothing from os.Environ() is added
	// (nil means an empty environment). When ReapTag is set,
	// REFCI_REAP_TAG=<ReapTag> is appended.
	Env []string
	// Output receives stdout and stderr interleaved in the exact order they
	// were written: the child gets one pipe as both fd 1 and fd 2. Stdin is
	// /dev/null. Output is written from one goroutine at a time and never
	// after Run returns. nil discards the output.
	Output    io.Writer
	Timeout   time.Duration // 0 = none
	KillGrace time.Duration // after SIGTERM to the whole tree, wait this long before SIGKILL (0 → 5s)

	// Hard, when done, kills the whole tree with SIGKILL at once, skipping
	// KillGrace: a second, harder cancel (a second Ctrl-C). It also cancels
	// the run by itself. nil means never.
	Hard context.Context

	// ReapTag, when not empty, is appended to Env as REFCI_REAP_TAG=<tag>;
	// it lets Run attribute daemons that left the process group and
	// were orphaned to this run when several runs are in flight (see the
	// note in reap_linux.go). It must be unique among in-flight runs and
	// must not contain NUL.
	ReapTag string

	// Shim, when not empty, is the absolute path of the refci executable
	// or of refci-shim (cmd/refci-shim; in tests, the test binary), run as
	// a shim between this process and the pipeline: Run starts
	//
	//	Shim __refci-shim --kill-grace=KillGrace -- Path Args...
	//
	// instead of Path, and the shim (ShimMain: package shim) runs the
	// pipeline below itself and kills all of it when the pipeline is over,
	// when told to, or when this process dies, even by SIGKILL. Without a
	// shim, processes of a pipeline survive a SIGKILL of this process. The
	// executable must call ShimMain when its first argument is
	// "__refci-shim" (see ShimMain). Results are the same as without a
	// shim.
	Shim string

	// Hide lists absolute paths (files or directories) that the pipeline
	// must not see: the shim runs it in a user and mount namespace of its
	// own where each is covered by an empty read-only directory or by
	// /dev/null (see hide_linux.go). It needs Shim. Where user
	// namespaces are unavailable the pipeline runs with nothing hidden and
	// Result.Unisolated says why, unless RequireIsolation is set: then
	// it is not started (a start error). nil hides nothing.
	Hide []string
	// Keep lists absolute paths under hidden ones that stay visible to
	// the pipeline (its own run directory among other runs', say).
	Keep []string
	// With Hide, the whole file system is read-only for the pipeline
	// but for shim.ScratchDirs and Writable (its run directory, say);
	// ReadOnly lists paths under those that stay read-only nonetheless
	// (the user's home, PATH, where refci's own git and ssh take their
	// configuration from). See hide_linux.go in package shim.
	Writable, ReadOnly []string
	RequireIsolation   bool
}

// Result says how the process ended.
type Result struct {
	ExitCode  int    // exit status, or 128+signal number when killed by a signal; -1 when it never ran
	Signal    string // e.g. "killed", "terminated" (syscall.Signal.String()) when killed by a signal, else ""
	TimedOut  bool
	Cancelled bool // ctx (or Hard) was done (Ctrl-C / stop) before the process exited
	// Leftovers is the number of processes (background jobs, setsid'd or
	// double-forked daemons) that were still alive after the main process
	// had exited and had to be killed.
	Leftovers int
	Duration  time.Duration // from the start until the main process and every descendant were gone
	// Unisolated, when not empty, says why Spec.Hide was not
	// honoured although the process ran (user namespaces unavailable).
	Unisolated string
}

// defaultProcKillGrace is the KillGrace used when Spec.KillGrace is 0.
const defaultProcKillGrace = shim.DefaultKillGrace

// Tunables of Run; variables so tests can shorten them.
var (
	// reapGiveUp bounds the SIGKILL phase: processes that survive SIGKILL
	// this long (stuck in uninterruptible sleep) make Run give up
	// and return an error rather than hang forever.
	reapGiveUp = shim.ReapGiveUp
	// drainGiveUp: once no process of the run is left, a read of the
	// output pipe that blocks this long means a process outside the run
	// still holds its write end; the read end is then closed.
	drainGiveUp = 5 * time.Second
)

// Run runs one pipeline process and waits for it and everything it
// started.
//
// The process starts in its own process group. When ctx is done or Timeout
// passes, every process of its tree (see below) gets SIGTERM; whatever is
// still alive after KillGrace gets SIGKILL. When spec.Hard is done the
// grace is skipped and everything gets SIGKILL at once.
//
// When the main process has exited, for whatever reason, every remaining
// descendant is killed with SIGKILL straight away (no grace: the pipeline
// is over, and it had its chance to clean up): not only its process group
// but also processes that called setsid() or double-forked to become
// daemons. This process becomes a child subreaper for that (once, for its
// whole life), and orphans are attributed to their run as described in
// reap_linux.go; descendants of other in-flight runs are left alone.
// Run returns only when no descendant survives and all output has
// been copied to Output. Checking that costs almost nothing when the
// pipeline left nothing behind (see nothingLeft in reap_linux.go); a scan
// of all processes is needed only otherwise, and while the main process
// runs only to stop it.
//
// With spec.Shim, the shim is the main process and does the work on the
// pipeline's tree: a stop becomes SIGTERM to the shim, which passes it on
// to every process of the pipeline, and the kill after KillGrace (or
// Hard) becomes SIGUSR1 (SIGHUP until the shim said it is ready: see
// shim_linux.go), on which it SIGKILLs them all. The shim reports how the
// pipeline ended on a pipe of its own; if the shim dies without a report,
// its orphans are reaped here as without a shim, and the error says so.
//
// The shim is started with a parent-death signal, which the kernel sends
// when the *thread* that forked it exits. So the goroutine calling
// Run is locked to its OS thread (runtime.LockOSThread) from the
// start of the shim until the shim has been waited for: no other
// goroutine can run on that thread and end it (a goroutine that exits
// while locked to its thread takes the thread with it). That costs one
// parked OS thread per run in flight.
//
// A non-zero exit, a signal, a timeout or a cancellation is a result, not
// an error. The error is for infrastructure problems: the process could
// not be started (no such file, not executable, bad interpreter, bad
// working directory; Result is then zero with ExitCode -1), or, with a
// valid Result, Output failed (the rest of the output was discarded)
// or processes survived SIGKILL for a minute. If ctx or Hard is already
// done, nothing is started and the result says Cancelled.
func Run(ctx context.Context, spec Spec) (Result, error) {
	res := Result{ExitCode: -1}
	if spec.Path == "" {
		return res, errors.New("worker: cannot start process: empty path")
	}
	if strings.IndexByte(spec.ReapTag, 0) >= 0 {
		return res, errors.New("worker: ReapTag contains a NUL byte")
	}
	if spec.Shim != "" && !filepath.IsAbs(spec.Shim) {
		return res, fmt.Errorf("worker: cannot start %q: the shim path %q is not absolute", spec.Path, spec.Shim)
	}
	if len(spec.Hide) > 0 && spec.Shim == "" {
		return res, fmt.Errorf("worker: cannot start %q: hiding paths from it needs the shim (Spec.Shim)", spec.Path)
	}
	for _, h := range slices.Concat(spec.Hide, spec.Keep, spec.Writable, spec.ReadOnly) {
		if !filepath.IsAbs(h) || strings.IndexByte(h, 0) >= 0 {
			return res, fmt.Errorf("worker: cannot start %q: the path to hide, keep, leave writable or make read-only %q is not absolute", spec.Path, h)
		}
	}
	hardDone := doneChan(spec.Hard)
	if ctx.Err() != nil || isDone(hardDone) {
		res.Cancelled = true
		return res, nil
	}
	grace := spec.KillGrace
	if grace <= 0 {
		grace = defaultProcKillGrace
	}
	out := spec.Output
	if out == nil {
		out = io.Discard
	}
	if spec.Shim == "" {
		// Without a shim this process reaps the pipeline's orphans. With
		// one, it must not be a subreaper: other processes it starts
		// (git fetch and push in their own sessions) would be taken for
		// a pipeline's leftovers.
		_ = ensureSubreaper() // without it, orphans escape to init; everything else still works
	}

	env := make([]string, 0, len(spec.Env)+1) // never nil: nil would mean os.Environ()
	env = append(env, spec.Env...)
	if spec.ReapTag != "" {
		env = append(env, reapTagEnv+"="+spec.ReapTag)
	}

	pr, pw, err := os.Pipe()
	if err != nil {
		return res, fmt.Errorf("worker: cannot start %q: output pipe: %w", spec.Path, err)
	}
	defer pr.Close()
	run := &reapRun{tag: spec.ReapTag}
	if fi, err := pr.Stat(); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			run.pipeIno = st.Ino
		}
	}

	var sh *shimConn
	unlockThread := func() {}
	if spec.Shim != "" {
		// See the note on Pdeathsig above.
		runtime.LockOSThread()
		locked := true
		unlockThread = func() {
			if locked {
				locked = false
				runtime.UnlockOSThread()
			}
		}
		defer unlockThread()
		if sh, err = newShimConn(); err != nil {
			pw.Close()
			return res, fmt.Errorf("worker: cannot start %q: shim report pipe: %w", spec.Path, err)
		}
		defer sh.r.Close()
	}

	cmd, start, err := startProcess(run, spec, env, pw, sh, grace)
	pw.Close() // the child has its copies; ours must go for EOF to come
	if sh != nil {
		sh.w.Close() // likewise: EOF on the report pipe then means the shim is gone
	}
	if err != nil {
		return res, err
	}
	defer run.unregister()
	if sh != nil {
		go sh.read(run)
	}

	cp := &pipeCopier{r: pr, w: out, done: make(chan struct{})}
	go cp.run()
	waitCh := make(chan error, 1)
	go func() { waitCh <- cmd.Wait() }()

	var timeoutC <-chan time.Time
	if spec.Timeout > 0 {
		t := time.NewTimer(spec.Timeout)
		defer t.Stop()
		timeoutC = t.C
	}

	var waitErr error
	mainExited := false
	onExit := func(err error) {
		waitErr, mainExited = err, true
		run.markMainGone()
		if sh != nil {
			unlockThread()
			sh.awaitReport()
		}
	}
	// stop sends sig to what is left of the run and says how many of its
	// processes are still there (the main process counts while it has not
	// been reaped).
	termSent, killSent := false, false
	stop := func(sig syscall.Signal) (int, error) {
		if mainExited {
			if sh != nil && sh.clean() {
				return 0, nil // the shim killed and reaped all of it
			}
			if run.nothingLeft() {
				return 0, nil
			}
			return run.sweep(sig)
		}
		if sh == nil {
			return run.sweep(sig)
		}
		switch {
		case sig != syscall.SIGTERM:
			// Sent again on every poll: harmless, and a signal the shim
			// missed while starting (see killSignal) gets through later.
			killSent = true
			cmd.Process.Signal(sh.killSignal())
		case !termSent:
			termSent = true
			cmd.Process.Signal(syscall.SIGTERM)
		}
		return 1, nil
	}
	terminate, hard := false, false
	select {
	case err := <-waitCh:
		onExit(err)
	case <-ctx.Done():
		res.Cancelled, terminate = true, true
	case <-timeoutC:
		res.TimedOut, terminate = true, true
	case <-hardDone:
		res.Cancelled, terminate, hard = true, true, true
	}
	if terminate {
		select {
		case err := <-waitCh: // it exited by itself at the same moment: that is the result
			onExit(err)
			res.Cancelled, res.TimedOut, terminate, hard = false, false, false, false
		default:
		}
	}

	var errs []error
	poll := shim.NewBackoff()
	if terminate && !hard {
		// SIGTERM to the whole tree, then wait for it to go, at most grace.
		graceT := time.NewTimer(grace)
	term:
		for {
			remaining, err := stop(syscall.SIGTERM)
			if err != nil {
				errs = appendOnce(errs, err)
			}
			if mainExited && remaining == 0 {
				break
			}
			select {
			case err := <-waitCh:
				onExit(err)
				poll.Reset()
			case <-graceT.C:
				break term
			case <-hardDone:
				break term
			case <-poll.Next():
			}
		}
		graceT.Stop()
	}

	// SIGKILL whatever is left, until nothing is.
	giveUpAfter := reapGiveUp
	if sh != nil {
		giveUpAfter += shimGiveUpMargin // the shim gives up after reapGiveUp and says so
	}
	giveUp := time.NewTimer(giveUpAfter)
	defer giveUp.Stop()
	stuck := false
	poll.Reset()
kill:
	for {
		remaining, err := stop(syscall.SIGKILL)
		if err != nil {
			errs = appendOnce(errs, err)
		}
		if mainExited && remaining == 0 {
			break
		}
		select {
		case err := <-waitCh:
			onExit(err)
			poll.Reset()
		case <-giveUp.C:
			stuck = true
			errs = append(errs, fmt.Errorf("worker: %d process(es) of %q survived SIGKILL for %s; giving up on them", remaining, spec.Path, giveUpAfter))
			break kill
		case <-poll.Next():
		}
	}
	res.Duration = time.Since(start)

	// Every writer of ours is dead: the pipe reaches EOF once the buffered
	// output is copied, unless a process outside the run holds it.
	if stuck {
		pr.Close()
	}
	drainStart := time.Now()
	drainPoll := time.NewTicker(50 * time.Millisecond)
	abandoned := false
	for waiting := true; waiting; {
		select {
		case <-cp.done:
			waiting = false
		case <-drainPoll.C:
			if !abandoned && cp.readBlockedSince(drainStart) > drainGiveUp {
				abandoned = true
				pr.Close() // unblocks the read with os.ErrClosed
			}
		}
	}
	drainPoll.Stop()
	switch {
	case cp.writeErr != nil:
		errs = append(errs, fmt.Errorf("worker: writing the output of %q: %w (the rest was discarded)", spec.Path, cp.writeErr))
	case abandoned:
		errs = append(errs, fmt.Errorf("worker: a process outside the pipeline's tree still holds the output pipe of %q; stopped reading it", spec.Path))
	case cp.readErr != nil && !stuck:
		errs = append(errs, fmt.Errorf("worker: reading the output of %q: %w", spec.Path, cp.readErr))
	}

	res.Leftovers = len(run.leftovers) // no sweep of run runs any more
	if mainExited && sh != nil {
		r, startErr, err := sh.result(spec, cmd.ProcessState, termSent || killSent)
		if startErr != nil {
			return Result{ExitCode: -1}, startErr
		}
		if err != nil {
			errs = append(errs, err)
		}
		res.ExitCode, res.Signal = r.ExitCode, r.Signal
		res.Leftovers += r.Leftovers
		res.Unisolated = sh.unisolated
	} else if mainExited {
		if ps := cmd.ProcessState; ps != nil {
			if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				res.ExitCode = 128 + int(ws.Signal())
				res.Signal = ws.Signal().String()
			} else {
				res.ExitCode = ps.ExitCode()
			}
		} else if waitErr != nil {
			errs = append(errs, fmt.Errorf("worker: waiting for %q: %w", spec.Path, waitErr))
		}
	}
	return res, errors.Join(errs...)
}

// startProcess starts the main process (with sh, the shim) and registers
// it, atomically with respect to sweeps. A start failing with ETXTBSY (the
// executable was just written and another goroutine's fork inherited a
// descriptor of it for a moment) is retried for up to a second.
func startProcess(run *reapRun, spec Spec, env []string, out *os.File, sh *shimConn, grace time.Duration) (*exec.Cmd, time.Time, error) {
	delay := 5 * time.Millisecond
	deadline := time.Now().Add(time.Second)
	for {
		cmd := &exec.Cmd{
			Path:        spec.Path,
			Args:        append([]string{spec.Path}, spec.Args...),
			Dir:         spec.Dir,
			Env:         env,
			Stdout:      out, // an *os.File: passed as is, no copying goroutine
			Stderr:      out, // the same one: one pipe, order preserved
			SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
		}
		if sh != nil {
			cmd.Path = spec.Shim
			cmd.Args = []string{spec.Shim, ShimArg, "--kill-grace=" + grace.String()}
			for _, h := range spec.Hide {
				cmd.Args = append(cmd.Args, shim.HideArg+h)
			}
			for _, k := range spec.Keep {
				cmd.Args = append(cmd.Args, shim.KeepArg+k)
			}
			if len(spec.Hide) > 0 {
				for _, p := range spec.Writable {
					cmd.Args = append(cmd.Args, shim.WritableArg+p)
				}
				for _, p := range spec.ReadOnly {
					cmd.Args = append(cmd.Args, shim.ReadOnlyArg+p)
				}
			}
			if spec.RequireIsolation && len(spec.Hide) > 0 {
				cmd.Args = append(cmd.Args, shim.RequireArg)
			}
			cmd.Args = append(append(cmd.Args, "--", spec.Path), spec.Args...)
			cmd.ExtraFiles = []*os.File{sh.w} // fd 3
			cmd.SysProcAttr.Pdeathsig = shim.DeathSignal
		}
		registry.mu.Lock()
		if err := run.registerLocked(); err != nil {
			registry.mu.Unlock()
			return nil, time.Time{}, err
		}
		start := time.Now()
		err := cmd.Start()
		if err == nil {
			run.mainPid = cmd.Process.Pid
			registry.mu.Unlock()
			if spec.Started != nil {
				spec.Started(cmd.Process.Pid)
			}
			return cmd, start, nil
		}
		delete(registry.runs, run)
		registry.mu.Unlock()
		if errors.Is(err, syscall.ETXTBSY) && time.Now().Before(deadline) {
			time.Sleep(delay)
			delay *= 2
			continue
		}
		if sh != nil {
			return nil, time.Time{}, shimStartError(spec, err)
		}
		return nil, time.Time{}, startError(spec, err)
	}
}

// shimStartError explains why the shim could not be started.
func shimStartError(spec Spec, err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		err = errno
	}
	if errno == syscall.ENOENT && spec.Dir != "" {
		if _, serr := os.Stat(spec.Dir); serr != nil {
			return fmt.Errorf("worker: cannot start %q: working directory %q: %w", spec.Path, spec.Dir, err)
		}
	}
	return fmt.Errorf("worker: cannot start %q: cannot start the shim %q: %w", spec.Path, spec.Shim, err)
}

// startError explains why the process could not be started.
func startError(spec Spec, err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		err = errno // the path is in the message already
	}
	path := spec.Path
	if !filepath.IsAbs(path) && spec.Dir != "" {
		path = filepath.Join(spec.Dir, path)
	}
	what := fmt.Sprintf("cannot start %q", spec.Path)
	switch errno {
	case syscall.ENOENT:
		if spec.Dir != "" {
			if _, serr := os.Stat(spec.Dir); serr != nil {
				return fmt.Errorf("worker: %s: working directory %q: %w", what, spec.Dir, err)
			}
		}
		if _, serr := os.Stat(path); serr == nil {
			return fmt.Errorf("worker: %s: the interpreter named on its #! line was not found: %w", what, err)
		}
		return fmt.Errorf("worker: %s: %w", what, err)
	case syscall.EACCES:
		if fi, serr := os.Stat(path); serr == nil {
			switch {
			case fi.IsDir():
				return fmt.Errorf("worker: %s: it is a directory: %w", what, err)
			case fi.Mode().Perm()&0o111 == 0:
				return fmt.Errorf("worker: %s: it is not executable (mode %v): %w", what, fi.Mode().Perm(), err)
			}
		}
		return fmt.Errorf("worker: %s: %w (is it executable, are the directories on its path searchable, is its file system mounted noexec?)", what, err)
	case syscall.ENOEXEC:
		return fmt.Errorf("worker: %s: not an executable format this system can run (a script needs a #! line): %w", what, err)
	case syscall.ENOTDIR:
		return fmt.Errorf("worker: %s: a component of its path or of the working directory is not a directory: %w", what, err)
	}
	return fmt.Errorf("worker: %s: %w", what, err)
}

// pipeCopier copies the output pipe to the Output writer. After a write
// error it keeps draining the pipe (so the pipeline never blocks on a full
// pipe) and discards the rest.
type pipeCopier struct {
	r        *os.File
	w        io.Writer
	done     chan struct{}
	readFrom atomic.Int64 // UnixNano when the pending read began, 0 while not reading
	writeErr error        // read after done
	readErr  error        // read after done; nil at EOF
}

func (c *pipeCopier) run() {
	defer close(c.done)
	buf := make([]byte, 64<<10)
	for {
		c.readFrom.Store(time.Now().UnixNano())
		n, err := c.r.Read(buf)
		c.readFrom.Store(0)
		if n > 0 && c.writeErr == nil {
			if _, werr := c.w.Write(buf[:n]); werr != nil {
				c.writeErr = werr
			}
		}
		if err != nil {
			if err != io.EOF {
				c.readErr = err
			}
			return
		}
	}
}

// readBlockedSince says how long the pending read has been waiting,
// counting from since at the earliest; 0 when no read is pending.
func (c *pipeCopier) readBlockedSince(since time.Time) time.Duration {
	t := c.readFrom.Load()
	if t == 0 {
		return 0
	}
	from := time.Unix(0, t)
	if from.Before(since) {
		from = since
	}
	return time.Since(from)
}

func doneChan(ctx context.Context) <-chan struct{} {
	if ctx == nil {
		return nil
	}
	return ctx.Done()
}

func isDone(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// appendOnce appends err unless an error with the same text is there.
func appendOnce(errs []error, err error) []error {
	for _, e := range errs {
		if e.Error() == err.Error() {
			return errs
		}
	}
	return append(errs, err)
}
