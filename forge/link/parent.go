package link

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Config is how a worker starts and supervises its refci-forge child.
type Config struct {
	Path string   // the refci-forge executable
	Args []string // after Mode: --config FILE [--key FILE] [-v]
	// Env is the child's environment; nil is the worker's own.
	Env   []string
	Start Start
	// Asked is called, from one goroutine, with the remote URL (as
	// configured) of each "asked" of the child; nil ignores them.
	Asked func(url string)
	// Log receives the child's log, a whole line per Write; nil is
	// os.Stderr.
	Log io.Writer
	// Logger says what the supervisor does (restarts); nil says nothing.
	Logger *slog.Logger
	// Backoff is the first wait before restarting a child that exited
	// (default a second), doubling up to MaxBackoff (default a minute);
	// it starts again from Backoff after a child ran for MaxBackoff.
	Backoff, MaxBackoff time.Duration
	// StopGrace is how long a child may take to stop once its input is
	// closed before it is killed (default 30s).
	StopGrace time.Duration
	// Check, when set, is asked before each restart whether Path may be
	// started (e.g. that it is still of the worker's build, not half of
	// an upgrade); an error is said in the log and the restart is tried
	// again after the next backoff. Open does not call it.
	Check func() error
}

// FailError is the child's refusal to start (a Fail): Exit is the exit
// status the worker should end with (2 or 3: any other the child asks
// for is 3), Error the line to print.
type FailError struct{ Fail }

func (f *FailError) Error() string { return f.Fail.Error }

// Child is a supervised refci-forge. Its methods are safe for
// concurrent use.
type Child struct {
	cfg Config

	mu      sync.Mutex
	cur     *proc // nil between a child's exit and the next start
	starts  int
	stopped bool
}

// proc is one started child process.
type proc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	pushes chan string   // to its stdin, dropped when full
	ready  chan Ready    // one value, when it says ready
	exited chan struct{} // closed once it exited and its output is read
	fail   *Fail         // set before exited is closed, when it failed
	err    error         // its wait error

	mu     sync.Mutex // guards closed and sending on pushes
	closed bool
}

// Open starts the child and waits until it says it is ready. A
// configuration the child refuses is a *FailError; a child that cannot
// start or that exits without a word is another error. Then call
// Supervise, which restarts the child when it exits.
func Open(ctx context.Context, cfg Config) (*Child, error) {
	if cfg.Log == nil {
		cfg.Log = os.Stderr
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 30 * time.Second
	}
	cfg.Start.Version = Version
	c := &Child{cfg: cfg}
	p, err := c.start(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.cur = p
	c.mu.Unlock()
	return c, nil
}

// start starts one child and waits until it is ready, or fails.
func (c *Child) start(ctx context.Context) (*proc, error) {
	cmd := exec.Command(c.cfg.Path, append([]string{Mode}, c.cfg.Args...)...)
	cmd.Env = c.cfg.Env
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", c.cfg.Path, err)
	}
	c.mu.Lock()
	c.starts++
	c.mu.Unlock()
	p := &proc{cmd: cmd, stdin: stdin, pushes: make(chan string, 64), ready: make(chan Ready, 1), exited: make(chan struct{})}
	enc := NewEncoder(stdin)
	// The start message first; then the pushes, never blocking the
	// worker: a wake-up that does not fit is dropped (the next one, or
	// the poll, does its work).
	go func() {
		if enc.Send(Message{Start: &c.cfg.Start}) != nil {
			return
		}
		for u := range p.pushes {
			if enc.Send(Message{Pushed: u}) != nil {
				return
			}
		}
	}()
	var reading sync.WaitGroup
	reading.Add(2)
	go func() { defer reading.Done(); c.copyLog(stderr) }()
	go func() {
		defer reading.Done()
		dec := NewDecoder(stdout)
		for {
			m, err := dec.Next()
			if err == io.EOF {
				return
			}
			var bad *LineError
			if errors.As(err, &bad) {
				c.cfg.Logger.Warn("refci-forge said something that is not of the link protocol; ignored", "err", err)
				continue
			}
			if err != nil {
				c.cfg.Logger.Warn("refci-forge's link broke; it is stopped and started again", "err", err)
				cmd.Process.Signal(syscall.SIGKILL)
				io.Copy(io.Discard, stdout)
				return
			}
			switch {
			case m.Ready != nil:
				select {
				case p.ready <- *m.Ready:
				default:
				}
			case m.Fail != nil:
				p.fail = m.Fail
			case m.Asked != "" && c.cfg.Asked != nil:
				c.cfg.Asked(m.Asked)
			}
		}
	}()
	go func() {
		reading.Wait()
		p.err = cmd.Wait()
		p.closePushes()
		close(p.exited)
	}()
	select {
	case <-p.ready:
		return p, nil
	case <-p.exited:
		if f := p.fail; f != nil {
			// Only the two statuses of a refusal: a child's word never
			// makes the worker end in success, nor say a pipeline failed.
			if f.Exit != 2 {
				f.Exit = 3
			}
			return nil, &FailError{*f}
		}
		return nil, fmt.Errorf("%s exited before it was ready (%v); its log says why", c.cfg.Path, p.err)
	case <-ctx.Done():
		p.stop(c.cfg.StopGrace)
		return nil, ctx.Err()
	}
}

// push queues a wake-up for the child, dropped when the queue is full or
// closed.
func (p *proc) push(url string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	select {
	case p.pushes <- url:
	default:
	}
}

// closePushes ends the queue and the child's input.
func (p *proc) closePushes() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		close(p.pushes)
		p.stdin.Close()
	}
}

// stop closes the child's input, which asks it to stop, and kills it
// when it has not after grace.
func (p *proc) stop(grace time.Duration) {
	p.closePushes()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
	}
}

// copyLog copies the child's log into the worker's, a line at a time.
func (c *Child) copyLog(r io.Reader) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if err == bufio.ErrBufferFull {
				line = append(line[:len(line):len(line)], '\n')
			}
			c.cfg.Log.Write(line)
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}

// Pushed tells the child that run refs were pushed to the remote url (as
// configured). It never blocks: with no child running, or a child that
// does not keep up, the wake-up is dropped.
func (c *Child) Pushed(url string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil || c.stopped {
		return
	}
	c.cur.push(url)
}

// Starts is how many children were started, the first included.
func (c *Child) Starts() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.starts
}

// Pid is the process id of the running child, 0 when none runs.
func (c *Child) Pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return 0
	}
	return c.cur.cmd.Process.Pid
}

// Supervise watches the child until ctx ends, then stops it (closing its
// input, killing it after StopGrace) and returns. A child that exits
// before is said in the log and started again after a backoff; one that
// then refuses its configuration (edited meanwhile) is said and tried
// again later. Nothing the child does ends Supervise early.
func (c *Child) Supervise(ctx context.Context) {
	wait := c.cfg.Backoff
	c.mu.Lock()
	p := c.cur
	c.mu.Unlock()
	began := time.Now()
	for {
		if p != nil {
			select {
			case <-ctx.Done():
				c.mu.Lock()
				c.stopped = true
				c.mu.Unlock()
				p.stop(c.cfg.StopGrace)
				return
			case <-p.exited:
			}
			c.mu.Lock()
			c.cur = nil
			c.mu.Unlock()
			if time.Since(began) >= c.cfg.MaxBackoff {
				wait = c.cfg.Backoff
			}
			c.cfg.Logger.Warn("refci-forge (the forges and mail) exited; starting it again", "err", exitOf(p), "in", wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, c.cfg.MaxBackoff)
		if c.cfg.Check != nil {
			if err := c.cfg.Check(); err != nil {
				c.cfg.Logger.Error("refci-forge (the forges and mail) is not started again: restart the worker", "err", err, "retry in", wait)
				p = nil
				continue
			}
		}
		began = time.Now()
		np, err := c.start(ctx)
		if ctx.Err() != nil {
			if err == nil {
				np.stop(c.cfg.StopGrace)
			}
			return
		}
		if err != nil {
			c.cfg.Logger.Warn("refci-forge (the forges and mail) did not start again; trying later", "err", err, "in", wait)
			p = nil
			continue
		}
		c.cfg.Logger.Info("refci-forge (the forges and mail) started again")
		c.mu.Lock()
		c.cur = np
		c.mu.Unlock()
		p = np
	}
}

func exitOf(p *proc) string {
	if p.err == nil {
		return "exit status 0"
	}
	return p.err.Error()
}
