//go:build linux

package jobclient

// The conversation of `refci job` and the run of its command.
//
// `refci job` starts once per job, so its own cost is on every job's path:
// it runs on one goroutine, waiting with poll(2) on the connection, the
// command's output pipe, the command's pidfd and a wake pipe (signals,
// ctx), rather than on a goroutine per source. A goroutine that blocks
// hands its thread's work to another thread, and in a process that lives
// a few milliseconds each such hand-over (a thread started or woken) is a
// real share of its cost.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"refci.dev/refci/worker/jobsock/jobwire"
)

type jobClient struct {
	name           string
	stdout, stderr io.Writer
	fd             int  // the connection (blocking); -1 once closed
	lost           bool // the connection failed; output is no longer sent
	in             []byte

	// wake is a pipe a byte is written to when a signal arrives or ctx
	// ends, so that poll returns.
	wake     [2]int
	wakeMu   sync.Mutex // guards wakeOpen and sigs, and the wake pipe's writes against its close
	wakeOpen bool
	sigs     []syscall.Signal
}

func (c *jobClient) errorf(format string, args ...any) {
	fmt.Fprintf(c.stderr, "refci job: %s: %s\n", c.name, fmt.Sprintf(format, args...))
}

// send writes one message. A connection that fails is lost for good.
func (c *jobClient) send(m jobwire.Msg) error {
	if c.lost || c.fd < 0 {
		return errors.New("connection lost")
	}
	b := jobwire.Encode(m)
	for len(b) > 0 {
		// MSG_NOSIGNAL: a server gone is an error here, not SIGPIPE.
		n, err := unix.SendmsgN(c.fd, b, nil, nil, unix.MSG_NOSIGNAL)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			c.lost = true
			return err
		}
		b = b[n:]
	}
	return nil
}

// hangUp ends the connection: the server records a job that has not
// ended as cancelled.
func (c *jobClient) hangUp() {
	if c.fd >= 0 {
		syscall.Close(c.fd)
		c.fd = -1
	}
}

// readReplies reads what the connection has (poll said it is readable)
// and returns the whole messages received; eof when it is closed.
// Malformed lines are dropped.
func (c *jobClient) readReplies() (msgs []jobwire.Msg, eof bool) {
	var buf [4096]byte
	n, err := syscall.Read(c.fd, buf[:])
	if errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.EAGAIN) {
		return nil, false
	}
	if n <= 0 {
		return nil, true
	}
	c.in = append(c.in, buf[:n]...)
	for {
		i := bytes.IndexByte(c.in, '\n')
		if i < 0 {
			break
		}
		if in := jobwire.Parse(bytes.TrimSpace(c.in[:i])); in.Err == nil {
			msgs = append(msgs, in.Msg)
		}
		c.in = c.in[i+1:]
	}
	if len(c.in) > jobwire.MaxMsg {
		c.in = nil // a reply too long to be one: dropped
	}
	return msgs, false
}

// poll waits until one of fds is readable (or hung up), or timeout
// passes (negative: no timeout). fds < 0 are left out. It reports which
// are ready, in the order given.
func poll(timeout time.Duration, fds ...int) []bool {
	pfds := make([]unix.PollFd, 0, len(fds))
	for _, fd := range fds {
		if fd >= 0 {
			pfds = append(pfds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
		}
	}
	ms := -1
	if timeout >= 0 {
		ms = int((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	for {
		_, err := unix.Poll(pfds, ms)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	ready := make([]bool, len(fds))
	j := 0
	for i, fd := range fds {
		if fd >= 0 {
			ready[i] = pfds[j].Revents != 0
			j++
		}
	}
	return ready
}

// until is how long until t (0 when past); -1 for a zero t.
func until(t time.Time) time.Duration {
	if t.IsZero() {
		return -1
	}
	return max(time.Until(t), 0)
}

func minWait(a, b time.Duration) time.Duration {
	switch {
	case a < 0:
		return b
	case b < 0:
		return a
	}
	return min(a, b)
}

// startWaking opens the wake pipe and has signals (SIGINT, SIGTERM) and
// the end of ctx write to it. The returned func undoes that.
func (c *jobClient) startWaking(ctx context.Context) (func(), error) {
	if err := syscall.Pipe2(c.wake[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("cannot create a pipe: %w", err)
	}
	c.wakeOpen = true
	poke := func(sig syscall.Signal) {
		c.wakeMu.Lock()
		defer c.wakeMu.Unlock()
		if sig != 0 {
			c.sigs = append(c.sigs, sig)
		}
		if c.wakeOpen {
			syscall.Write(c.wake[1], []byte{0}) // full means a wake is pending anyway
		}
	}
	sigc := make(chan os.Signal, 4)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM)
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case s := <-sigc:
				poke(s.(syscall.Signal))
			case <-quit:
				return
			}
		}
	}()
	stopCtx := context.AfterFunc(ctx, func() { poke(0) })
	return func() {
		stopCtx()
		signal.Stop(sigc)
		close(quit)
		wg.Wait()
		c.wakeMu.Lock()
		c.wakeOpen = false
		syscall.Close(c.wake[0])
		syscall.Close(c.wake[1])
		c.wakeMu.Unlock()
	}, nil
}

// woken empties the wake pipe and returns the signals received since.
func (c *jobClient) woken() []syscall.Signal {
	var b [64]byte
	for {
		if n, _ := syscall.Read(c.wake[0], b[:]); n <= 0 {
			break
		}
	}
	c.wakeMu.Lock()
	defer c.wakeMu.Unlock()
	s := c.sigs
	c.sigs = nil
	return s
}

func (c *jobClient) run(ctx context.Context, sock string, ja jobArgs) int {
	fd, err := dialFD(ctx, sock, time.Now().Add(jobDialWait))
	if err == nil {
		err = syscall.SetNonblock(fd, false)
		if err != nil {
			syscall.Close(fd)
		}
	}
	if err != nil {
		c.errorf("cannot reach refci at REFCI_SOCKET=%s: %v", sock, err)
		return 2
	}
	c.fd = fd
	defer c.hangUp()
	if err := c.send(jobwire.Msg{Op: jobwire.OpStart, Name: ja.name, Needs: ja.needs}); err != nil {
		if ctx.Err() != nil {
			return c.abandoned()
		}
		c.errorf("cannot talk to refci: %v", err)
		return 2
	}
	// What does not depend on the answer is done while refci answers:
	// catching signals and, for a job without needs, finding CMD (a
	// need may make it; and one that is not found is looked for again).
	// A signal before that ends this process, and the job is recorded
	// as cancelled, as after.
	stopWaking, err := c.startWaking(ctx)
	if err != nil {
		c.errorf("%v", err)
		return 2
	}
	defer stopWaking()
	var plan cmdPlan
	if len(ja.needs) == 0 {
		plan = c.plan(ja.argv)
	}
	var silent time.Time
	if len(ja.needs) == 0 {
		silent = time.Now().Add(jobVerdictWait)
	}
	for {
		if ctx.Err() != nil {
			return c.abandoned()
		}
		ready := poll(until(silent), c.fd, c.wake[0])
		if ready[1] {
			if sigs := c.woken(); len(sigs) > 0 {
				c.hangUp()
				c.errorf("%s while waiting for its needs; the job is recorded as cancelled", jobSignalName(sigs[0]))
				return 128 + int(sigs[0])
			}
			continue // ctx, checked above
		}
		if !ready[0] {
			if !silent.IsZero() && !time.Now().Before(silent) {
				c.errorf("refci did not answer on REFCI_SOCKET=%s within %s; the worker is stuck, overloaded or gone (see its log). The job did not run", sock, jobVerdictWait)
				return 2
			}
			continue
		}
		msgs, eof := c.readReplies()
		for _, m := range msgs {
			switch m.Op {
			case jobwire.OpRun:
				if plan.path == "" || plan.err != nil {
					plan = c.plan(ja.argv)
				}
				return c.runCmd(ctx, ja.argv, plan)
			case jobwire.OpSkipped:
				fmt.Fprintf(c.stderr, "refci job: %s skipped: %s\n", c.name, m.Reason)
				return 1
			case jobwire.OpError:
				c.errorf("%s", m.Error)
				return 2
			}
		}
		if eof {
			if ctx.Err() != nil {
				return c.abandoned()
			}
			c.errorf("lost the connection to refci before the job started")
			return 2
		}
	}
}

func (c *jobClient) abandoned() int {
	c.hangUp()
	c.errorf("abandoned; the job is recorded as cancelled")
	return 1
}

// output sends raw CMD output to the server and, prefixed, to stdout.
func (c *jobClient) output(ctx context.Context, pre *jobwire.LinePrefixer, b []byte) {
	if !c.lost {
		for rest := b; len(rest) > 0; {
			n := min(len(rest), jobwire.Chunk)
			if err := c.send(jobwire.Msg{Op: jobwire.OpOutput, Data: rest[:n]}); err != nil {
				if ctx.Err() == nil {
					c.errorf("lost the connection to refci (%v); the output is no longer recorded in the job log", err)
				}
				break
			}
			rest = rest[n:]
		}
	}
	pre.Write(b)
}

// noPidfdPoll is how often the exit of a command is checked for where
// the kernel gives no pidfd to wait on.
const noPidfdPoll = 5 * time.Millisecond

// cmdPlan is how CMD will be started: its path as a shell would find
// it (or why it cannot be), and its environment.
type cmdPlan struct {
	path string
	err  error
	env  []string
}

func (c *jobClient) plan(argv []string) cmdPlan {
	path, err := exec.LookPath(argv[0])
	if errors.Is(err, exec.ErrDot) {
		err = nil // like a shell: "." in PATH is the user's choice
	}
	return cmdPlan{path: path, err: err, env: jobEnv(os.Environ(), c.name)}
}

// startCmd starts argv as planned, with stdin /dev/null and stdout and
// stderr the write end out; it dies (SIGKILL) with the calling thread,
// which the caller keeps locked. pidfd is -1 where the kernel gives none.
func startCmd(argv []string, p cmdPlan, out int) (pid, pidfd int, err error) {
	if p.err != nil {
		return 0, -1, p.err
	}
	null, err := syscall.Open(os.DevNull, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, -1, err
	}
	defer syscall.Close(null)
	pidfd = -1
	pid, err = syscall.ForkExec(p.path, argv, &syscall.ProcAttr{
		Env:   p.env,
		Files: []uintptr{uintptr(null), uintptr(out), uintptr(out)},
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, PidFD: &pidfd},
	})
	if err != nil {
		return 0, -1, &os.PathError{Op: "fork/exec", Path: p.path, Err: err}
	}
	return pid, pidfd, nil
}

// jobEnv is env with REFCI_JOB=name in place of any REFCI_JOB it has (a
// job run from inside another job): a C program's getenv takes the first.
func jobEnv(env []string, name string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, "REFCI_JOB=") {
			out = append(out, kv)
		}
	}
	return append(out, "REFCI_JOB="+name)
}

func (c *jobClient) runCmd(ctx context.Context, argv []string, plan cmdPlan) int {
	pre := jobwire.NewLinePrefixer(c.stdout, "["+c.name+"] ")
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		return c.end(ctx, pre, 126, "", fmt.Sprintf("cannot create a pipe: %v", err))
	}
	outR := p[0]
	defer func() {
		if outR >= 0 {
			syscall.Close(outR)
		}
	}()
	// Pdeathsig fires when the thread that started the child exits, not
	// the process: stay on this thread until CMD is gone.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pid, pidfd, err := startCmd(argv, plan, p[1])
	syscall.Close(p[1])
	if err != nil {
		code, msg, reason := jobStartFailure(argv[0], err)
		c.output(ctx, pre, []byte(msg+"\n"))
		return c.end(ctx, pre, code, "", reason)
	}
	defer func() {
		if pidfd >= 0 {
			syscall.Close(pidfd)
		}
	}()

	var (
		ws               syscall.WaitStatus
		exited, eof      bool
		drainAt, flushAt time.Time
		buf              = make([]byte, jobwire.Chunk)
	)
	reap := func() {
		if got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); got == pid && err == nil {
			exited = true
			if !eof {
				drainAt = time.Now().Add(jobOutputDrain)
			}
		}
	}
	for !exited || !eof {
		wait := minWait(until(flushAt), until(drainAt))
		waitFd := pidfd
		if exited {
			waitFd = -1
		} else if pidfd < 0 {
			wait = minWait(wait, noPidfdPoll)
		}
		sock := c.fd
		if c.lost {
			sock = -1
		}
		ready := poll(wait, outR, waitFd, sock, c.wake[0])
		if ready[0] {
			n, err := syscall.Read(outR, buf)
			switch {
			case n > 0:
				c.output(ctx, pre, buf[:n])
				if pre.Pending() && flushAt.IsZero() {
					flushAt = time.Now().Add(jobPartialFlush)
				}
			case errors.Is(err, syscall.EINTR):
			default:
				syscall.Close(outR)
				outR, eof = -1, true
			}
		}
		if !flushAt.IsZero() && !time.Now().Before(flushAt) {
			pre.Flush()
			flushAt = time.Time{}
		}
		if !exited && (ready[1] || pidfd < 0) {
			reap()
		}
		if exited && !eof && !time.Now().Before(drainAt) {
			syscall.Close(outR) // whatever is still buffered is lost
			outR, eof = -1, true
			c.errorf("%s exited but its output is still open (a background process?); stopped reading it", argv[0])
		}
		if ready[3] {
			for _, sig := range c.woken() {
				if !exited {
					syscall.Kill(pid, sig)
				}
			}
		}
		if ctx.Err() != nil {
			c.hangUp()
			if !exited {
				syscall.Kill(pid, syscall.SIGKILL)
				if pidfd >= 0 {
					poll(5*time.Second, pidfd)
				}
				reap()
			}
			pre.Close()
			return c.abandoned()
		}
		if ready[2] {
			msgs, gone := c.readReplies()
			for _, m := range msgs {
				if m.Op == jobwire.OpError {
					c.errorf("refci: %s", m.Error)
				}
			}
			if gone {
				if !c.lost && ctx.Err() == nil {
					c.errorf("lost the connection to refci; the output is no longer recorded in the job log")
				}
				c.lost = true
			}
		}
	}
	code, sig := jobExitStatus(ws)
	return c.end(ctx, pre, code, sig, "")
}

// end reports the end of CMD and waits for the server to record it.
func (c *jobClient) end(ctx context.Context, pre *jobwire.LinePrefixer, code int, sig, reason string) int {
	pre.Close()
	if c.lost {
		return code
	}
	if err := c.send(jobwire.Msg{Op: jobwire.OpEnd, ExitCode: intPtr(code), Signal: sig, Reason: reason}); err != nil {
		if ctx.Err() == nil {
			c.errorf("could not report the end of the job to refci: %v", err)
		}
		return code
	}
	deadline := time.Now().Add(jobDoneWait)
	for {
		if ctx.Err() != nil {
			return code
		}
		ready := poll(until(deadline), c.fd, c.wake[0])
		if ready[1] {
			c.woken() // CMD is over: nothing to forward a signal to
			continue
		}
		if !ready[0] {
			if !time.Now().Before(deadline) {
				c.errorf("refci did not confirm the end of the job")
				return code
			}
			continue
		}
		msgs, eof := c.readReplies()
		for _, m := range msgs {
			switch m.Op {
			case jobwire.OpDone:
				return code
			case jobwire.OpError:
				c.errorf("refci: %s", m.Error)
			}
		}
		if eof {
			if ctx.Err() == nil {
				c.errorf("lost the connection to refci before it recorded the end of the job")
			}
			return code
		}
	}
}
