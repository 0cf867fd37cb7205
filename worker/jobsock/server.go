//go:build linux

package jobsock

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"refci.dev/refci/queue"
	"refci.dev/refci/worker/jobsock/jobwire"
)

// Log is where one job's raw output goes. Write is called from one
// goroutine at a time; Close once. If it also has a method Truncated() bool,
// that is consulted before Close and sets queue.Job.Truncated.
type Log interface {
	io.Writer
	Close() error
}

// Run is the run whose pipeline a Server serves: where its jobs' output
// goes, and its secrets. Its methods are called from the connections'
// goroutines, concurrently.
type Run interface {
	// OpenLog opens the log of job name when the job starts running
	// (not for skipped jobs); name passed queue.ValidateJobName.
	OpenLog(name string) (Log, error)
	// Secret answers the "secret" op: the value of secret name, already
	// added to the run's masks, or why it is withheld (the error's text
	// is the reply).
	Secret(name string) ([]byte, error)
	// HoldsSecret says whether s holds a secret value handed out to the
	// run: a job whose name or needs do is refused, since names are
	// stored in the result unmasked (status.json, the jobs/NAME/ path).
	HoldsSecret(s string) bool
}

// Config configures a Server.
type Config struct {
	// SocketPath is where to listen. It must not exist yet; its directory
	// should be private to the worker (0700): see the protocol comment.
	SocketPath string
	// Run is the run served. Required.
	Run Run
	// NeedsGrace is how long a job waits for a need that has not started
	// yet (it may be starting concurrently, `refci job a ... &`). 0 → 5s.
	NeedsGrace time.Duration
	// Now stamps Started and Finished. nil → time.Now.
	Now func() time.Time
	// OwnTree, when set, admits only connections from the process tree
	// of the run (see Admit): every run's socket lives in a directory of
	// the same Unix user, so without it another run's pipeline could
	// connect and ask for this run's secrets. Until Admit is called no
	// connection is served.
	OwnTree bool
	// Socket, when set, is a listening socket at SocketPath that outlives
	// this server (a run directory's, handed from run to run; see
	// Socket). The server takes what is queued on it as stale, and
	// Close leaves it open and in place. nil: the server makes its own
	// and removes it on Close.
	Socket *Socket
}

// Socket is a job socket kept listening from one run to the next of a
// reused run directory: binding a socket makes a file, and on some file
// systems every new file is a real cost. Only one Server uses it at a
// time. Make it with Listen; the zero value is not usable.
type Socket struct {
	ln   *net.UnixListener
	path string
	file os.FileInfo // the socket file as bound, to tell it from one put in its place
}

// Listen binds a job socket at path, mode 0600.
func Listen(path string) (*Socket, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		if len(path) >= 100 {
			return nil, fmt.Errorf("job server: listen on %s (%d bytes; Unix socket paths are limited to about 100): %w", path, len(path), err)
		}
		return nil, fmt.Errorf("job server: listen on %s: %w", path, err)
	}
	fi, err := os.Lstat(path)
	if err == nil {
		err = os.Chmod(path, 0o600)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("job server: %w", err)
	}
	return &Socket{ln: ln, path: path, file: fi}, nil
}

// Intact reports whether the socket file at its path is still the one
// bound, with mode 0600: a pipeline could have removed it, put another in
// its place or opened it to others.
func (rs *Socket) Intact() bool {
	fi, err := os.Lstat(rs.path)
	return err == nil && fi.Mode()&os.ModeSocket != 0 && fi.Mode().Perm() == 0o600 && os.SameFile(fi, rs.file)
}

// Close stops listening and removes the socket file.
func (rs *Socket) Close() error {
	err := rs.ln.Close() // also removes the file
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	if rmErr := os.Remove(rs.path); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) && err == nil {
		err = rmErr
	}
	return err
}

// drain closes every connection queued and not accepted: they are of an
// earlier run, all of whose processes are gone.
func (rs *Socket) drain() error {
	raw, err := rs.ln.SyscallConn()
	if err != nil {
		return err
	}
	return raw.Control(func(fd uintptr) {
		for {
			nfd, _, err := unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			if err != nil {
				return // EAGAIN: none left
			}
			unix.Close(nfd)
		}
	})
}

const (
	jobMaxReason    = 500  // longest reason the server keeps from a client
	jobMaxErrReply  = 1000 // longest error text in a reply
	jobReplyTimeout = 5 * time.Second

	defaultNeedsGrace = 5 * time.Second

	jobReasonPipelineEnded = "the pipeline ended before the job finished"
)

var (
	// jobServerCloseWait bounds how long Close waits for connection
	// handlers to finish after closing their connections.
	jobServerCloseWait = 5 * time.Second
)

// Server serves one run's $REFCI_SOCKET. Safe for concurrent use.
type Server struct {
	cfg     Config
	sock    *Socket
	closing chan struct{} // closed by Close
	wg      sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	jobs    map[string]*jobEntry
	order   []*jobEntry
	changed chan struct{} // closed and replaced whenever a job registers or finishes
	conns   map[net.Conn]struct{}
	root    int // the run's root process (OwnTree); 0 before Admit
	// admitted is closed by the first Admit: the run's process can
	// connect before its starter has told the server its pid.
	admitted chan struct{}
}

// Admit sets the run's root process (the shim, or the pipeline without
// one): with OwnTree, only it and its descendants may use the socket.
func (s *Server) Admit(pid int) {
	s.mu.Lock()
	s.root = pid
	if pid > 0 {
		select {
		case <-s.admitted:
		default:
			close(s.admitted)
		}
	}
	s.mu.Unlock()
}

// peerAdmitted reports whether the process at the other end of conn
// belongs to the run's process tree. The kernel records the connecting
// process (SO_PEERCRED); orphans of the run are re-parented to the shim,
// a child subreaper, so they stay in the tree.
func (s *Server) peerAdmitted(conn net.Conn) (bool, string) {
	// The pipeline may connect before the worker has its pid: the
	// process starts, then its starter calls Admit.
	t := time.NewTimer(jobReplyTimeout)
	select {
	case <-s.admitted:
	case <-s.closing:
	case <-t.C:
	}
	t.Stop()
	s.mu.Lock()
	root := s.root
	s.mu.Unlock()
	if root <= 0 {
		return false, "the run has not started"
	}
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return false, "not a unix socket"
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return false, err.Error()
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil || cerr != nil {
		return false, fmt.Sprint("cannot read the peer's credentials: ", err, cerr)
	}
	for pid, steps := int(cred.Pid), 0; pid > 1 && steps < 4096; steps++ {
		if pid == root {
			return true, ""
		}
		pid = parentPid(pid)
	}
	return false, fmt.Sprintf("process %d is not part of this run", cred.Pid)
}

// parentPid reads a process's parent from /proc (0 if it is gone).
func parentPid(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// jobEntry is one job. Lock order: Server.mu, then logMu.
type jobEntry struct {
	job       queue.Job // guarded by Server.mu; LogBytes and Truncated live below
	logBytes  atomic.Int64
	truncated atomic.Bool

	logMu     sync.Mutex
	log       Log // nil before it runs and once closed
	logFailed bool
}

// NewServer listens on cfg.SocketPath (mode 0600) and serves it in
// background goroutines until Close.
func NewServer(cfg Config) (*Server, error) {
	if cfg.SocketPath == "" {
		return nil, errors.New("job server: no socket path")
	}
	if cfg.Run == nil {
		return nil, errors.New("job server: no Run")
	}
	if cfg.NeedsGrace <= 0 {
		cfg.NeedsGrace = defaultNeedsGrace
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	sock := cfg.Socket
	if sock == nil {
		var err error
		if sock, err = Listen(cfg.SocketPath); err != nil {
			return nil, err
		}
	} else {
		if sock.path != cfg.SocketPath {
			return nil, fmt.Errorf("job server: the socket given listens at %s, not %s", sock.path, cfg.SocketPath)
		}
		if err := sock.drain(); err != nil {
			return nil, fmt.Errorf("job server: %w", err)
		}
		sock.ln.SetDeadline(time.Time{}) // the last server stopped it with one
	}
	s := &Server{
		cfg:      cfg,
		sock:     sock,
		closing:  make(chan struct{}),
		admitted: make(chan struct{}),
		jobs:     map[string]*jobEntry{},
		changed:  make(chan struct{}),
		conns:    map[net.Conn]struct{}{},
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		conn, err := s.sock.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.isClosed() {
				return
			}
			// Out of file descriptors or similar: back off and retry.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(delay):
			case <-s.closing:
				return
			}
			continue
		}
		delay = 0
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return
		}
		s.conns[conn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(conn)
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Jobs returns a snapshot of the jobs, in the order they were started.
// A job waiting for its needs is Running with a zero Started time.
func (s *Server) Jobs() []queue.Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]queue.Job, 0, len(s.order))
	for _, e := range s.order {
		j := e.job
		j.Needs = slices.Clone(j.Needs)
		if j.ExitCode != nil {
			j.ExitCode = queue.IntPtr(*j.ExitCode)
		}
		j.LogBytes = e.logBytes.Load()
		j.Truncated = e.truncated.Load()
		out = append(out, j)
	}
	return out
}

// Close stops accepting connections, closes the open ones, waits (at most
// a few seconds) for their handlers, removes the socket file, and records
// every job still waiting or running as cancelled, closing its log. It is
// safe to call more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closing)
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()

	var err error
	if s.cfg.Socket != nil {
		s.sock.ln.SetDeadline(time.Now()) // stops the accept loop; the socket stays for the next run
	} else {
		err = s.sock.Close()
	}

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(jobServerCloseWait)
	select {
	case <-done:
	case <-t.C:
	}
	t.Stop()

	// Handlers normally record their job on the way out; this catches
	// those that did not finish in time.
	var left []*jobEntry
	s.mu.Lock()
	for _, e := range s.order {
		if s.finishLocked(e, queue.Cancelled, jobReasonPipelineEnded, nil) {
			left = append(left, e)
		}
	}
	s.mu.Unlock()
	for _, e := range left {
		// A handler stuck in Write still holds the log; leave it rather
		// than close it under its feet.
		e.closeLog(false)
	}
	return err
}

func (s *Server) reply(conn net.Conn, m jobwire.Msg) error {
	conn.SetWriteDeadline(time.Now().Add(jobReplyTimeout))
	_, err := conn.Write(jobwire.Encode(m))
	return err
}

func (s *Server) replyError(conn net.Conn, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if len(msg) > jobMaxErrReply {
		msg = truncateUTF8(msg, jobMaxErrReply) + "..."
	}
	s.reply(conn, jobwire.Msg{Op: jobwire.OpError, Error: msg})
}

func (s *Server) serveConn(conn net.Conn) {
	defer s.wg.Done()
	defer func() {
		conn.Close()
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
	}()
	if s.cfg.OwnTree {
		if ok, why := s.peerAdmitted(conn); !ok {
			// Take the request first, so the client reads the refusal
			// rather than a broken pipe.
			conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			bufio.NewReader(io.LimitReader(conn, jobwire.MaxMsg)).ReadSlice('\n')
			s.replyError(conn, "refused: this socket serves only the processes of its own run (%s)", why)
			return
		}
	}
	quit := make(chan struct{})
	defer close(quit)
	msgs := make(chan jobwire.In)
	go jobwire.ReadMsgs(conn, msgs, quit)
	for in := range msgs {
		if in.Err != nil {
			s.replyError(conn, "%v", in.Err)
			continue
		}
		switch in.Msg.Op {
		case jobwire.OpStart:
			if s.serveJob(conn, in.Msg, msgs) {
				return
			}
		case jobwire.OpOutput, jobwire.OpEnd:
			s.replyError(conn, "%q before %q: no job runs on this connection", in.Msg.Op, jobwire.OpStart)
		case jobwire.OpSecret:
			v, err := s.cfg.Run.Secret(in.Msg.Name)
			if err != nil {
				s.replyError(conn, "%v", err)
				continue
			}
			s.reply(conn, jobwire.Msg{Op: jobwire.OpSecret, Data: v})
		default:
			s.replyError(conn, "unknown op %q", in.Msg.Op)
		}
	}
}

// checkJobStart validates a start message and returns its needs without
// duplicates.
func checkJobStart(m jobwire.Msg) ([]string, error) {
	if err := queue.ValidateJobName(m.Name); err != nil {
		return nil, err
	}
	var needs []string
	for _, n := range m.Needs {
		if err := queue.ValidateJobName(n); err != nil {
			return nil, fmt.Errorf("needs: %v", err)
		}
		if n == m.Name {
			return nil, fmt.Errorf("job %q cannot need itself", n)
		}
		if !slices.Contains(needs, n) {
			needs = append(needs, n)
		}
	}
	return needs, nil
}

// serveJob runs one job's conversation after its start message. It reports
// whether the connection is finished; false means the start was refused
// and the connection may still be used.
func (s *Server) serveJob(conn net.Conn, start jobwire.Msg, msgs <-chan jobwire.In) bool {
	needs, err := checkJobStart(start)
	if err != nil {
		s.replyError(conn, "%v", err)
		return false
	}
	if s.cfg.Run.HoldsSecret(start.Name) || slices.ContainsFunc(needs, s.cfg.Run.HoldsSecret) {
		// Said without the name: the reply goes to the pipeline's log,
		// which is masked, but nothing is gained by echoing it.
		s.replyError(conn, "refused: the job name or a --needs name holds a secret value handed out to this run; job names are stored in the result as they are, so name the job something else")
		return false
	}
	name := start.Name
	e, skip, err := s.register(name, needs)
	if err != nil {
		s.replyError(conn, "%v", err)
		return false
	}
	if skip != "" {
		s.reply(conn, jobwire.Msg{Op: jobwire.OpSkipped, Reason: skip})
		return true
	}

	if len(needs) > 0 {
		ok, state, reason := s.waitNeeds(conn, e, msgs)
		if !ok {
			if s.finish(e, state, reason, nil) && state == queue.Skipped {
				s.reply(conn, jobwire.Msg{Op: jobwire.OpSkipped, Reason: reason})
			}
			return true
		}
	}

	if err := s.startRunning(e); err != nil {
		s.replyError(conn, "%v", err)
		return true
	}
	s.reply(conn, jobwire.Msg{Op: jobwire.OpRun})

	for in := range msgs {
		if in.Err != nil {
			s.replyError(conn, "%v", in.Err)
			continue
		}
		switch in.Msg.Op {
		case jobwire.OpOutput:
			e.write(in.Msg.Data)
		case jobwire.OpEnd:
			state, reason, code, err := jobEndResult(in.Msg)
			if err != nil {
				s.replyError(conn, "%v", err)
				continue
			}
			s.finish(e, state, reason, code)
			s.reply(conn, jobwire.Msg{Op: jobwire.OpDone})
			return true
		case jobwire.OpStart:
			s.replyError(conn, "this connection already runs job %q; use one connection per job", name)
		default:
			s.replyError(conn, "unknown op %q", in.Msg.Op)
		}
	}
	// The connection is gone without an end.
	reason := "the refci job process went away before the job finished (was it killed?)"
	if s.isClosed() {
		reason = jobReasonPipelineEnded
	}
	s.finish(e, queue.Cancelled, reason, nil)
	return true
}

// startRunning opens e's log and records that it runs from now on. On
// error the job is final (error: its log could not be opened; or
// cancelled, by Close) and the error says why.
func (s *Server) startRunning(e *jobEntry) error {
	name := e.job.Name
	l, err := s.cfg.Run.OpenLog(name)
	if err != nil {
		reason := fmt.Sprintf("cannot open the job log: %v", err)
		s.finish(e, queue.Error, reason, nil)
		return errors.New(reason)
	}
	s.mu.Lock()
	if e.job.State.Final() { // Close got here first
		s.mu.Unlock()
		l.Close()
		return errors.New(jobReasonPipelineEnded)
	}
	e.job.Started = s.cfg.Now()
	e.job.Reason = ""
	e.job.Log = queue.JobLogPath(name)
	e.logMu.Lock()
	e.log = l
	e.logMu.Unlock()
	s.mu.Unlock()
	return nil
}

// register adds a job in state running. If its needs close a cycle it is
// recorded as skipped at once and skip says why.
func (s *Server) register(name string, needs []string) (e *jobEntry, skip string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, "", errors.New("the pipeline has ended; no new job can start")
	}
	if _, dup := s.jobs[name]; dup {
		return nil, "", fmt.Errorf("job %q was already started in this run; job names must be unique", name)
	}
	e = &jobEntry{job: queue.Job{Name: name, Needs: needs, State: queue.Running}}
	if len(needs) > 0 {
		e.job.Reason = "waiting for " + strings.Join(needs, ", ")
	}
	s.jobs[name] = e
	s.order = append(s.order, e)
	if cycle := s.cycleLocked(name, needs); cycle != nil {
		skip = "dependency cycle: " + strings.Join(cycle, " -> ")
		s.finishLocked(e, queue.Skipped, skip, nil)
	}
	s.broadcastLocked()
	return e, skip, nil
}

// cycleLocked returns a path name -> need -> ... -> name if the registered
// jobs' needs lead back to name.
func (s *Server) cycleLocked(name string, needs []string) []string {
	seen := map[string]bool{}
	var path []string
	var visit func(n string) bool
	visit = func(n string) bool {
		path = append(path, n)
		if n == name {
			return true
		}
		if !seen[n] {
			seen[n] = true
			if d, ok := s.jobs[n]; ok {
				for _, m := range d.job.Needs {
					if visit(m) {
						return true
					}
				}
			}
		}
		path = path[:len(path)-1]
		return false
	}
	for _, n := range needs {
		path = []string{name}
		if visit(n) {
			return path
		}
	}
	return nil
}

func (s *Server) broadcastLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// jobStateWords describes a need's final state for a skip reason.
func jobStateWords(st queue.State) string {
	switch st {
	case queue.Failure:
		return "failed"
	case queue.Skipped:
		return "was skipped"
	case queue.Cancelled:
		return "was cancelled"
	case queue.Error:
		return "could not run (error)"
	}
	return "ended " + string(st)
}

// needsVerdictLocked: run (all succeeded), skip with a reason, or wait.
func (s *Server) needsVerdictLocked(needs []string, graceOver bool) (run bool, skip string) {
	waiting := false
	for _, n := range needs {
		d, ok := s.jobs[n]
		switch {
		case !ok && graceOver:
			return false, fmt.Sprintf("needs %s, which was never started", n)
		case !ok || d.job.State == queue.Running:
			waiting = true
		case d.job.State != queue.Success:
			return false, fmt.Sprintf("needs %s, which %s", n, jobStateWords(d.job.State))
		}
	}
	return !waiting, ""
}

// waitNeeds blocks until every need of e has succeeded (ok), or returns the
// final state to record: skipped, or cancelled because the client or the
// pipeline went away.
func (s *Server) waitNeeds(conn net.Conn, e *jobEntry, msgs <-chan jobwire.In) (ok bool, state queue.State, reason string) {
	grace := time.NewTimer(s.cfg.NeedsGrace)
	defer grace.Stop()
	graceOver := false
	for {
		s.mu.Lock()
		if s.closed || e.job.State.Final() {
			s.mu.Unlock()
			return false, queue.Cancelled, jobReasonPipelineEnded
		}
		run, skip := s.needsVerdictLocked(e.job.Needs, graceOver)
		changed := s.changed
		s.mu.Unlock()
		if run {
			return true, "", ""
		}
		if skip != "" {
			return false, queue.Skipped, skip
		}
		select {
		case <-changed:
		case <-grace.C:
			graceOver = true
		case <-s.closing:
		case in, open := <-msgs:
			if !open {
				if s.isClosed() {
					return false, queue.Cancelled, jobReasonPipelineEnded
				}
				return false, queue.Cancelled, "the refci job process went away while waiting for its needs (was it killed?)"
			}
			if in.Err != nil {
				s.replyError(conn, "%v", in.Err)
			} else {
				s.replyError(conn, "unexpected %q: the job is waiting for its needs", in.Msg.Op)
			}
		}
	}
}

// finish records e's final state and closes its log. It reports whether it
// did; false if e was final already.
func (s *Server) finish(e *jobEntry, state queue.State, reason string, code *int) bool {
	e.closeLog(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.finishLocked(e, state, reason, code)
}

func (s *Server) finishLocked(e *jobEntry, state queue.State, reason string, code *int) bool {
	if e.job.State.Final() {
		return false
	}
	now := s.cfg.Now()
	e.job.State, e.job.Reason, e.job.ExitCode = state, reason, code
	e.job.Finished = now
	if !e.job.Started.IsZero() {
		e.job.DurationMS = max(now.Sub(e.job.Started).Milliseconds(), 0)
	}
	s.broadcastLocked()
	return true
}

func (e *jobEntry) write(data []byte) {
	if len(data) == 0 {
		return
	}
	e.logBytes.Add(int64(len(data)))
	e.logMu.Lock()
	defer e.logMu.Unlock()
	if e.log == nil || e.logFailed {
		e.truncated.Store(true)
		return
	}
	if _, err := e.log.Write(data); err != nil {
		e.logFailed = true
		e.truncated.Store(true)
	}
}

// closeLog closes e's log once. Without block it gives up if a Write is in
// progress.
func (e *jobEntry) closeLog(block bool) {
	if block {
		e.logMu.Lock()
	} else if !e.logMu.TryLock() {
		return
	}
	defer e.logMu.Unlock()
	if e.log == nil {
		return
	}
	if t, ok := e.log.(interface{ Truncated() bool }); ok && t.Truncated() {
		e.truncated.Store(true)
	}
	if err := e.log.Close(); err != nil {
		e.truncated.Store(true)
	}
	e.log = nil
}

// jobEndResult turns an end message into the job's final state.
func jobEndResult(m jobwire.Msg) (queue.State, string, *int, error) {
	if m.ExitCode == nil {
		return "", "", nil, fmt.Errorf("%q needs \"exit_code\"", jobwire.OpEnd)
	}
	code := *m.ExitCode
	if code < 0 || code > 255 {
		return "", "", nil, fmt.Errorf("exit_code %d is not in 0..255", code)
	}
	sig := cleanJobText(m.Signal, 32)
	reason := cleanJobText(m.Reason, jobMaxReason)
	switch {
	case sig != "":
		reason = "killed by signal " + sig
	case code == 0:
		return queue.Success, "", queue.IntPtr(0), nil
	}
	// A plain exit code needs no reason: readers show the code.
	return queue.Failure, reason, queue.IntPtr(code), nil
}

// cleanJobText makes client-supplied text safe to store: one line, no
// control characters, at most max bytes.
func cleanJobText(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > max {
		s = truncateUTF8(s, max)
	}
	return s
}

func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
