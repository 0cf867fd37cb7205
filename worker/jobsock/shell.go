//go:build linux

package jobsock

// In-shell jobs: the server side of the channel described in
// jobwire/shell.go. A Shell reads the control FIFO and the jobs' output
// files and feeds the Server's record of jobs through the same methods
// the socket's connections use (register, startRunning, write, finish),
// so that a job declared in the shell is recorded, logged, masked and
// capped exactly as one run through `refci job`.
//
// Threat notes. The FIFO and the output files lie in a directory the
// pipeline can write, and carry no credentials: anything that can write
// them is taken to speak for the pipeline, which could declare the same
// jobs through `refci job` anyway. What a line can never do: reach a file
// outside Dir (names pass queue.ValidateJobName; output files are opened
// without following symbolic links and must be regular files with one
// link), end or restart a job run through the socket, or one that has
// ended, or stop the run (every refused line is noted and skipped; a line
// cut short at the end is dropped). The FIFO is opened read-write by the
// worker, so a writer never blocks for want of a reader, and the worker
// never sees end-of-file from it.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"refci.dev/refci/queue"
	"refci.dev/refci/worker/jobsock/jobwire"
)

// ShellConfig configures a Shell.
type ShellConfig struct {
	// Dir is the directory of the channel: the FIFO Dir/ctl, which
	// ServeShell makes, and the jobs' output files Dir/NAME.out, which
	// the shell makes. It must exist. Required.
	Dir string
	// Echo, when set, gets each job's output as well, every line
	// prefixed "[NAME] " (as `refci job` prints it on the pipeline's
	// stdout). Written from the Shell's goroutine; the writer masks.
	Echo io.Writer
	// Note, when set, is told of every control line refused, in a line
	// meant for the run's log (at most shellMaxNotes of them).
	Note func(string)
	// Poll is how often the output of running jobs is read while no
	// line arrives. 0 → 100ms.
	Poll time.Duration
	// MaxOutput bounds what is read of one job's output: when more than
	// this is waiting to be read, what comes before its last MaxOutput
	// bytes is skipped (counted, and said in a note; the job's log keeps
	// its head and its tail, as a capped log does). A job's file can grow
	// faster than it is read, or be made huge at no cost (truncate -s).
	// 0 → 64 MiB.
	MaxOutput int64
}

const (
	shellCtl              = "ctl"
	shellOutSuffix        = ".out"
	defaultShellPoll      = 100 * time.Millisecond
	shellMaxNotes         = 50
	shellReadChunk        = 64 << 10
	shellMaxLineBytes     = jobwire.ShellMaxLine
	shellMaxReads         = 64 // reads of the FIFO, or of one job's output, in a row before the rest gets a turn
	defaultShellMaxOutput = 64 << 20
)

// ShellCtlPath is the control FIFO of the in-shell channel in dir.
func ShellCtlPath(dir string) string { return filepath.Join(dir, shellCtl) }

// Shell serves one run's in-shell job channel for a Server. Make it with
// Server.ServeShell; it reads in a goroutine of its own until Close.
// Close is safe for concurrent use; nothing else is exported.
type Shell struct {
	srv  *Server
	cfg  ShellConfig
	fifo *os.File // the control FIFO, read-write, in the runtime's poller
	done chan struct{}

	closeOnce sync.Once
	mu        sync.Mutex // guards closing and the FIFO's read deadline
	closing   bool

	// Owned by the loop goroutine.
	line    []byte // a control line read in part
	tooLong bool   // the line being read is over the limit: dropped
	running map[string]*shellJob
	notes   int
	buf     []byte
}

// shellJob is an in-shell job that runs.
type shellJob struct {
	e       *jobEntry
	path    string
	f       *os.File // nil until the shell made the file
	off     int64    // how much of it was read
	skipped bool     // output was skipped (said once)
	bad     bool     // the output file is refused; nothing more is read
	echo    *jobwire.LinePrefixer
}

// ServeShell serves the control FIFO in cfg.Dir until Close: the one
// there when it is a FIFO of this user with mode 0600 (kept from an
// earlier run of a reused run directory: making a file is a real cost on
// some file systems; what it may still hold is dropped), else one made
// in place of whatever is at its path. Jobs it records are the Server's,
// beside those of the socket.
func (s *Server) ServeShell(cfg ShellConfig) (*Shell, error) {
	if cfg.Dir == "" {
		return nil, errors.New("in-shell jobs: no directory")
	}
	if cfg.MaxOutput <= 0 {
		cfg.MaxOutput = defaultShellMaxOutput
	}
	if cfg.Poll <= 0 {
		cfg.Poll = defaultShellPoll
	}
	ctl := ShellCtlPath(cfg.Dir)
	fd, err := openKeptFIFO(ctl)
	if err != nil {
		if err := os.Remove(ctl); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("in-shell jobs: %w", err)
		}
		if err := unix.Mkfifo(ctl, 0o600); err != nil {
			return nil, fmt.Errorf("in-shell jobs: make %s: %w", ctl, err)
		}
		if fd, err = unix.Open(ctl, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0); err != nil {
			return nil, fmt.Errorf("in-shell jobs: open %s: %w", ctl, err)
		}
	}
	// Non-blocking: the runtime's poller waits on it, not a thread.
	sh := &Shell{srv: s, cfg: cfg, fifo: os.NewFile(uintptr(fd), ctl), done: make(chan struct{}), running: map[string]*shellJob{}}
	rc, err := sh.fifo.SyscallConn()
	if err != nil {
		sh.fifo.Close()
		return nil, fmt.Errorf("in-shell jobs: %w", err)
	}
	go sh.loop(rc)
	return sh, nil
}

// openKeptFIFO opens the FIFO at path, read-write and non-blocking, if it
// is one of this user with mode 0600, and empties it.
func openKeptFIFO(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return -1, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO || st.Mode&0o7777 != 0o600 || int(st.Uid) != os.Getuid() {
		unix.Close(fd)
		return -1, errors.New("not the FIFO refci made")
	}
	var buf [4096]byte
	for {
		if n, _ := unix.Read(fd, buf[:]); n <= 0 {
			break
		}
	}
	return fd, nil
}

// Close reads what is left: every control line written so far and the
// output of the jobs still running, then stops. Call it once the
// pipeline's processes are gone and before Server.Close, which records
// the jobs still running as cancelled, as it does those of the socket.
// It is safe to call more than once.
func (sh *Shell) Close() {
	sh.closeOnce.Do(func() {
		sh.mu.Lock()
		sh.closing = true
		sh.fifo.SetReadDeadline(time.Now()) // wakes the loop
		sh.mu.Unlock()
		<-sh.done
		sh.fifo.Close()
	})
}

// loop reads control lines as they come, and the running jobs' output
// every Poll, until Close.
func (sh *Shell) loop(rc syscall.RawConn) {
	defer close(sh.done)
	buf := make([]byte, 16<<10)
	lastOutputs := time.Now()
	for {
		sh.mu.Lock()
		closing := sh.closing
		if !closing {
			var deadline time.Time // none while no job runs
			if len(sh.running) > 0 {
				deadline = lastOutputs.Add(sh.cfg.Poll)
			}
			sh.fifo.SetReadDeadline(deadline)
		}
		sh.mu.Unlock()
		if closing {
			// Whatever was written before the pipeline ended.
			rc.Control(func(fd uintptr) {
				// Bounded, in case a writer outlived the pipeline.
				for i := 0; i < 1024 && sh.readLines(int(fd), buf); i++ {
				}
			})
			if len(sh.line) > 0 || sh.tooLong {
				sh.note("a control line cut short at the end was dropped")
			}
			sh.finishAll()
			return
		}
		err := rc.Read(func(fd uintptr) bool { return sh.readLines(int(fd), buf) })
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			sh.note(fmt.Sprintf("cannot read the control channel (%v); in-shell jobs are no longer followed", err))
			sh.finishAll()
			return
		}
		if len(sh.running) > 0 && time.Since(lastOutputs) >= sh.cfg.Poll {
			sh.readOutputs()
			lastOutputs = time.Now()
		}
	}
}

// readLines reads the FIFO (fd, non-blocking) until it is empty, or for
// a while (a flood of lines must not keep the jobs' output from being
// read), acts on every whole line, and reports whether it read anything.
func (sh *Shell) readLines(fd int, buf []byte) (read bool) {
	for range shellMaxReads {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n <= 0 {
			return read
		}
		read = true
		b := buf[:n]
		for len(b) > 0 {
			i := bytes.IndexByte(b, '\n')
			part := b
			if i >= 0 {
				part = b[:i]
			}
			if !sh.tooLong {
				if len(sh.line)+len(part) >= shellMaxLineBytes {
					sh.tooLong, sh.line = true, sh.line[:0]
				} else {
					sh.line = append(sh.line, part...)
				}
			}
			if i < 0 {
				break
			}
			if sh.tooLong {
				sh.note(fmt.Sprintf("refused a control line longer than %d bytes", shellMaxLineBytes))
			} else {
				sh.handle(string(sh.line))
			}
			sh.line, sh.tooLong = sh.line[:0], false
			b = b[i+1:]
		}
	}
	return read
}

// note tells Note of a refused line, at most shellMaxNotes times.
func (sh *Shell) note(msg string) {
	if sh.cfg.Note == nil {
		return
	}
	sh.notes++
	switch {
	case sh.notes < shellMaxNotes:
		sh.cfg.Note("refci: in-shell jobs: " + msg)
	case sh.notes == shellMaxNotes:
		sh.cfg.Note("refci: in-shell jobs: " + msg + " (further refused lines are not reported)")
	}
}

func (sh *Shell) handle(line string) {
	ev, err := jobwire.ParseShellLine(line)
	if err == nil {
		switch ev.Op {
		case jobwire.ShellStart:
			err = sh.start(ev)
		case jobwire.ShellSkip:
			err = sh.skip(ev)
		case jobwire.ShellEnd:
			err = sh.end(ev)
		}
	}
	switch {
	case errors.Is(err, errShellNameHoldsSecret):
		// Said without the line, as the socket's refusal is.
		sh.note(fmt.Sprintf("refused a %s: %v", ev.Op, err))
	case err != nil:
		sh.note(fmt.Sprintf("refused %q: %v", cleanJobText(line, 200), err))
	}
}

var errShellNameHoldsSecret = errors.New("the job name or a need holds a secret value handed out to this run; job names are stored in the result as they are, so name the job something else")

// admit validates a start or skip and registers the job.
func (sh *Shell) admit(ev jobwire.ShellEvent) (*jobEntry, string, error) {
	needs, err := checkJobStart(jobwire.Msg{Name: ev.Name, Needs: ev.Needs})
	if err != nil {
		return nil, "", err
	}
	run := sh.srv.cfg.Run
	if run.HoldsSecret(ev.Name) || slices.ContainsFunc(needs, run.HoldsSecret) {
		return nil, "", errShellNameHoldsSecret
	}
	return sh.srv.register(ev.Name, needs)
}

func (sh *Shell) start(ev jobwire.ShellEvent) error {
	e, skip, err := sh.admit(ev)
	if err != nil {
		return err
	}
	if skip != "" {
		return fmt.Errorf("job %s recorded as skipped (%s), though the shell runs it", ev.Name, skip)
	}
	if err := sh.srv.startRunning(e); err != nil {
		return fmt.Errorf("job %s: %v", ev.Name, err)
	}
	j := &shellJob{e: e, path: filepath.Join(sh.cfg.Dir, ev.Name+shellOutSuffix)}
	if sh.cfg.Echo != nil {
		j.echo = jobwire.NewLinePrefixer(sh.cfg.Echo, "["+ev.Name+"] ")
	}
	sh.running[ev.Name] = j
	return nil
}

func (sh *Shell) skip(ev jobwire.ShellEvent) error {
	e, skip, err := sh.admit(ev)
	if err != nil {
		return err
	}
	if skip != "" {
		return nil // a cycle: recorded skipped already
	}
	sh.srv.mu.Lock()
	_, reason := sh.srv.needsVerdictLocked(e.job.Needs, true)
	sh.srv.mu.Unlock()
	if reason == "" {
		// The shell saw a need fail that the record has not (a line
		// refused or lost): say what it saw.
		reason = fmt.Sprintf("needs %s, which did not all succeed as the pipeline's shell saw them", strings.Join(e.job.Needs, ", "))
	}
	sh.srv.finish(e, queue.Skipped, reason, nil)
	return nil
}

func (sh *Shell) end(ev jobwire.ShellEvent) error {
	j := sh.running[ev.Name]
	if j == nil {
		if err := queue.ValidateJobName(ev.Name); err != nil {
			return err
		}
		return fmt.Errorf("job %s was not started on this channel, or has ended", ev.Name)
	}
	delete(sh.running, ev.Name)
	sh.drain(j)
	state, reason, code, _ := jobEndResult(jobwire.Msg{ExitCode: &ev.Code})
	sh.srv.finish(j.e, state, reason, code)
	return nil
}

// finishAll reads the rest of the output of the jobs still running; the
// Server's Close records them.
func (sh *Shell) finishAll() {
	for name, j := range sh.running {
		sh.drain(j)
		delete(sh.running, name)
	}
}

// drain reads j's output to its end, ends its echo, and closes and
// removes its file. A file that keeps growing (a process of the job still
// writes) is read at most twice MaxOutput further.
func (sh *Shell) drain(j *shellJob) {
	// Each call reads at most shellMaxReads chunks.
	for calls := 2*sh.cfg.MaxOutput/(shellMaxReads*shellReadChunk) + 2; calls > 0 && sh.readOutput(j); calls-- {
	}
	if j.echo != nil {
		j.echo.Close()
	}
	if j.f != nil {
		j.f.Close()
		j.f = nil
		os.Remove(j.path)
	}
}

// readOutputs reads the output of the running jobs, and echoes the
// partial line of a job that wrote nothing since the last look, as
// `refci job` does after a moment.
func (sh *Shell) readOutputs() {
	for _, j := range sh.running {
		if !sh.readOutput(j) && j.echo != nil {
			j.echo.Flush()
		}
	}
}

// readOutput reads what j's output file holds beyond what was read, at
// most shellMaxReads chunks at a time, and reports whether it read any.
// When more than MaxOutput waits, it skips to the last MaxOutput bytes.
func (sh *Shell) readOutput(j *shellJob) (read bool) {
	if j.bad {
		return false
	}
	if j.f == nil {
		f, err := openOutput(j.path)
		if errors.Is(err, os.ErrNotExist) {
			return false // not yet (or the shell could not make it: it said so)
		}
		if err != nil {
			j.bad = true
			j.e.truncated.Store(true)
			sh.note(fmt.Sprintf("job %s: its output is not read: %v", j.e.job.Name, err))
			return false
		}
		j.f = f
	}
	if sh.buf == nil {
		sh.buf = make([]byte, shellReadChunk)
	}
	if fi, err := j.f.Stat(); err == nil && fi.Size()-j.off > sh.cfg.MaxOutput {
		to := fi.Size() - sh.cfg.MaxOutput
		if _, err := j.f.Seek(to, io.SeekStart); err == nil {
			j.e.logBytes.Add(to - j.off)
			j.e.truncated.Store(true)
			if !j.skipped {
				j.skipped = true
				sh.note(fmt.Sprintf("job %s: more than %d bytes of its output waited to be read; what came before its last %d bytes is skipped", j.e.job.Name, sh.cfg.MaxOutput, sh.cfg.MaxOutput))
			}
			j.off = to
		}
	}
	buf := sh.buf
	for range shellMaxReads {
		n, err := j.f.Read(buf)
		if n > 0 {
			read = true
			j.off += int64(n)
			j.e.write(buf[:n])
			if j.echo != nil {
				j.echo.Write(buf[:n])
			}
		}
		if err != nil || n == 0 {
			break
		}
	}
	// A file cut shorter than what was read (made anew by a second
	// redirection, or truncated) is read again from its start, next time.
	if fi, err := j.f.Stat(); err == nil && fi.Size() < j.off {
		if _, err := j.f.Seek(0, io.SeekStart); err == nil {
			j.off = 0
			read = true
		}
	}
	return read
}

// openOutput opens a job's output file: a regular file with one link, not
// reached through a symbolic link.
func openOutput(path string) (*os.File, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		what := "a special file"
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			what = "a symbolic link"
		case fi.IsDir():
			what = "a directory"
		case fi.Mode()&os.ModeNamedPipe != 0:
			what = "a named pipe"
		}
		return nil, fmt.Errorf("%s is %s, not a regular file", filepath.Base(path), what)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	ofi, err := f.Stat()
	if err == nil && (!os.SameFile(fi, ofi) || !ofi.Mode().IsRegular()) {
		err = fmt.Errorf("%s changed while it was opened", filepath.Base(path))
	}
	if st, ok := ofi.Sys().(*syscall.Stat_t); err == nil && ok && st.Nlink != 1 {
		err = fmt.Errorf("%s has %d links; a job's output file is made by its redirection and has one", filepath.Base(path), st.Nlink)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
