//go:build linux

package proc

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"refci.dev/refci/worker/shim"
)

// The worker's side of the per-run shim. The shim itself, what it does and
// the protocol between the two, is package shim (worker/shim): it runs in
// a process of its own, the refci binary or the light refci-shim beside
// it (see ChooseShim), and holds nothing of the worker.

// ShimArg is the first argument that makes the refci binary run ShimMain.
const ShimArg = shim.Arg

// shimGiveUpMargin: the worker waits this much longer than reapGiveUp
// for a shim that is killing processes that will not die, so that the
// shim's report of them comes first.
const shimGiveUpMargin = 10 * time.Second

// ShimMain is the per-run shim: shim.Main, which see. The refci binary
// must dispatch to it first thing, before flags, config or anything else
// expensive (the shim's start is on every run's path):
//
//	func main() {
//		if len(os.Args) > 1 && os.Args[1] == proc.ShimArg {
//			os.Exit(proc.ShimMain(os.Args[2:]))
//		}
//		...
//	}
func ShimMain(args []string) int { return shim.Main(args) }

// shimConn is the worker's side of a shim: the report pipe and what came
// through it.
type shimConn struct {
	r, w  *os.File
	done  chan struct{} // closed at EOF of the report pipe
	pid   atomic.Int64  // the pipeline's main pid once the shim reported it ready
	final *shim.Report  // the final line; read after done
	// unisolated is the ready line's Unisolated; read after done.
	unisolated string
}

func newShimConn() (*shimConn, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	return &shimConn{r: r, w: w, done: make(chan struct{})}, nil
}

// read reads the report pipe until EOF.
func (c *shimConn) read(run *reapRun) {
	defer close(c.done)
	br := bufio.NewReader(c.r)
	for {
		line, err := br.ReadBytes('\n')
		var rep shim.Report
		if len(line) > 0 && json.Unmarshal(line, &rep) == nil {
			switch {
			case rep.Done:
				if c.final == nil {
					c.final = &rep
				}
			case rep.Pid > 0 && c.pid.Load() == 0:
				c.unisolated = rep.Unisolated
				c.pid.Store(int64(rep.Pid))
				run.setPipelinePgid(rep.Pid)
			}
		}
		if err != nil {
			return
		}
	}
}

// awaitReport waits, once the shim has been reaped, until the report pipe
// is read to its end. Only the shim holds its write end (it is
// close-on-exec there), so that is at once; drainGiveUp bounds it anyway.
func (c *shimConn) awaitReport() {
	t := time.NewTimer(drainGiveUp)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		c.r.Close()
		<-c.done
	}
}

// killSignal is what tells the shim to kill everything now: SIGUSR1 once
// it is ready, SIGHUP before (SIGUSR1 would be ignored by the Go runtime
// until the shim installed its handlers, while SIGHUP kills it: it has not
// started anything then).
func (c *shimConn) killSignal() syscall.Signal {
	if c.pid.Load() > 0 {
		return shim.KillSignal
	}
	return shim.DeathSignal
}

// clean says whether the shim reported that it killed and reaped every
// process of the run: nothing can be left anywhere.
func (c *shimConn) clean() bool {
	return c.final != nil && c.final.Stuck == 0 && !c.final.Partial
}

// shimResult is what the report (or its absence) says about the pipeline.
type shimResult struct {
	ExitCode  int
	Signal    string
	Leftovers int
}

// result turns the report into a result; ps is the shim's own state,
// signalled whether the worker signalled it. startErr is set when the
// pipeline could not be started; err when the shim could not tell.
func (c *shimConn) result(spec Spec, ps *os.ProcessState, signalled bool) (r shimResult, startErr, err error) {
	r.ExitCode = -1
	if rep := c.final; rep != nil {
		if rep.StartErrno != 0 || rep.StartError != "" {
			if rep.StartErrno != 0 {
				return r, startError(spec, syscall.Errno(rep.StartErrno)), nil
			}
			return r, fmt.Errorf("worker: cannot start %q: %s", spec.Path, rep.StartError), nil
		}
		r.ExitCode, r.Leftovers = rep.ExitCode, rep.Leftovers
		if rep.Signal > 0 {
			r.Signal = syscall.Signal(rep.Signal).String()
		}
		if rep.Stuck > 0 {
			err = fmt.Errorf("worker: %d process(es) of %q survived SIGKILL for %s; giving up on them", rep.Stuck, spec.Path, reapGiveUp)
		}
		return r, nil, err
	}
	how := "in an unknown way"
	var ws syscall.WaitStatus
	if ps != nil {
		how = ps.String()
		ws, _ = ps.Sys().(syscall.WaitStatus)
	}
	if ps != nil && ws.Signaled() && signalled {
		switch ws.Signal() {
		case syscall.SIGTERM, shim.DeathSignal, shim.KillSignal:
			// Killed by our stop before it had installed its handlers,
			// so before it started the pipeline: as if the pipeline had
			// been killed at once.
			sig := syscall.SIGKILL
			if ws.Signal() == syscall.SIGTERM {
				sig = syscall.SIGTERM
			}
			r.ExitCode, r.Signal = 128+int(sig), sig.String()
			return r, nil, nil
		}
	}
	if c.pid.Load() == 0 {
		return r, fmt.Errorf("worker: cannot start %q: the shim %q ended (%s) without reporting anything: is it refci, calling ShimMain for %q?", spec.Path, spec.Shim, how, ShimArg), nil
	}
	if ps != nil {
		if ws.Signaled() {
			r.ExitCode, r.Signal = 128+int(ws.Signal()), ws.Signal().String()
		} else {
			r.ExitCode = ws.ExitStatus()
		}
	}
	return r, nil, fmt.Errorf("worker: the shim running %q (pid %s) ended (%s) without reporting how the pipeline ended; the exit status is the shim's; the processes it left were killed", spec.Path, shimPid(ps), how)
}

// shimPid is for messages.
func shimPid(ps *os.ProcessState) string {
	if ps == nil {
		return "?"
	}
	return strconv.Itoa(ps.Pid())
}
