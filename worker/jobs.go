//go:build linux

package worker

// Jobs: `refci job NAME [--needs A,B] -- CMD ARGS...` inside a pipeline, and
// the server side of $REFCI_SOCKET that records them.
//
// # Wire protocol of $REFCI_SOCKET (version 1)
//
// The socket is a Unix stream socket. Every message, in both directions, is
// one JSON object on one line terminated by '\n', at most 1 MiB long. Every
// message has an "op" field naming what it is. Fields a message does not use
// are omitted; unknown fields are ignored, so later versions can add fields
// without breaking older peers. Byte strings are base64 (encoding/json's
// encoding of []byte).
//
// One connection carries at most one job, from its start to its end:
//
//	client → server  {"op":"start","name":"test","needs":["build","lint"]}
//	server → client  one of:
//	                 {"op":"run"}
//	                     every need succeeded and the job log is open:
//	                     run CMD now.
//	                 {"op":"skipped","reason":"needs build, which failed"}
//	                     a need did not succeed (or never started within
//	                     the grace period, or the needs form a cycle):
//	                     don't run CMD. The job is recorded as skipped and
//	                     the server closes the connection.
//	                 {"op":"error","error":"..."}
//	                     the start is refused (invalid or duplicate name,
//	                     the pipeline has ended, the log could not be
//	                     opened). Nothing more happens on this connection.
//	                 The reply to "start" may take arbitrarily long: the
//	                 server answers only once every need has finished, and
//	                 it waits up to the grace period (JobServerConfig.
//	                 NeedsGrace) for a need that has not started yet.
//	client → server  {"op":"output","data":"aGVsbG8K"}
//	                     zero or more: CMD's raw output (stdout and stderr
//	                     through one pipe), in order. No reply. The server
//	                     appends it verbatim to the job log.
//	client → server  {"op":"end","exit_code":143,"signal":"SIGTERM","reason":"..."}
//	                     CMD is over. exit_code (0..255) is required: the
//	                     exit status, or 128+n when killed by signal n, in
//	                     which case "signal" names it. "reason" optionally
//	                     explains a failure ("command not found: foo").
//	server → client  {"op":"done"}
//	                     the end is recorded and the job log is closed; the
//	                     server closes the connection. The client exits
//	                     only after this, so when the pipeline has waited
//	                     for its jobs, their records are complete.
//
// Errors: a line that is not a JSON object, has no or an unknown "op", is
// too long, or is not valid at this point of the conversation is answered
// with {"op":"error","error":"..."} and otherwise ignored; the connection
// stays usable. After "run" the client reads such replies asynchronously
// (it prints them). Server replies are written with a deadline, so a
// client that does not read cannot stall the server.
//
// Disconnects: if the connection closes while the job waits for its needs
// or after "run" but before "end" (the `refci job` process was killed, for
// example by the pipeline's timeout), the job is recorded as cancelled.
// When the server is closed (the pipeline is over), jobs still waiting or
// running are recorded as cancelled, "the pipeline ended before the job
// finished".
//
// Secrets: `refci secret NAME` asks on its own connection (or before a
// "start" on the same one):
//
//	client → server  {"op":"secret","name":"NETLIFY_TOKEN"}
//	server → client  {"op":"secret","data":"<base64 of the value>"}
//	                 or {"op":"error","error":"why it is withheld"}
//
// The value is decrypted when asked and exists only in memory; before the
// reply is sent it is added to the run's masks (JobServerConfig.Secret
// does both).
//
// Security: the socket is chmod'ed to 0600 right after it is created. There
// is a short window between bind and chmod during which its mode derives
// from the umask, so the caller must put SocketPath in a directory only the
// worker's user can enter (0700; worker.Run uses <run dir>/sock). The
// server validates every job name with queue.ValidateJobName before it
// calls OpenLog, so a client can only ever reach its own jobs/NAME/log.txt.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"refci.dev/refci/queue"
)

// JobLog is where one job's raw output goes. Write is called from one
// goroutine at a time; Close once. If it also has a method Truncated() bool,
// that is consulted before Close and sets queue.Job.Truncated.
type JobLog interface {
	io.Writer
	Close() error
}

// JobServerConfig configures a JobServer.
type JobServerConfig struct {
	// SocketPath is where to listen. It must not exist yet; its directory
	// should be private to the worker (0700): see the protocol comment.
	SocketPath string
	// OpenLog is called when a job starts running (not for skipped jobs),
	// with a name that passed queue.ValidateJobName. Required.
	OpenLog func(name string) (JobLog, error)
	// NeedsGrace is how long a job waits for a need that has not started
	// yet (it may be starting concurrently, `refci job a ... &`). 0 → 5s.
	NeedsGrace time.Duration
	// Now stamps Started and Finished. nil → time.Now.
	Now func() time.Time
	// Secret answers the "secret" op: the value of a secret, or why it
	// is withheld. nil: every secret is refused.
	Secret func(name string) ([]byte, error)
	// Masks, when set, holds the secret values handed out to the run: a
	// job whose name or needs hold one is refused, since names are stored
	// in the result unmasked (status.json, the jobs/NAME/ path).
	Masks *MaskSet
	// OwnTree, when set, admits only connections from the process tree
	// of the run (see Admit): every run's socket lives in a directory of
	// the same Unix user, so without it another run's pipeline could
	// connect and ask for this run's secrets. Until Admit is called no
	// connection is served.
	OwnTree bool
	// Socket, when set, is a listening socket at SocketPath that outlives
	// this server (a run directory's, handed from run to run; see
	// RunSocket). The server takes what is queued on it as stale, and
	// Close leaves it open and in place. nil: the server makes its own
	// and removes it on Close.
	Socket *RunSocket
}

// RunSocket is a job socket kept listening from one run to the next of a
// reused run directory: binding a socket makes a file, and on some file
// systems every new file is a real cost. Only one JobServer uses it at a
// time.
type RunSocket struct {
	ln   *net.UnixListener
	path string
	file os.FileInfo // the socket file as bound, to tell it from one put in its place
}

// ListenRunSocket binds a job socket at path, mode 0600.
func ListenRunSocket(path string) (*RunSocket, error) {
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
	return &RunSocket{ln: ln, path: path, file: fi}, nil
}

// Intact reports whether the socket file at its path is still the one
// bound, with mode 0600: a pipeline could have removed it, put another in
// its place or opened it to others.
func (rs *RunSocket) Intact() bool {
	fi, err := os.Lstat(rs.path)
	return err == nil && fi.Mode()&os.ModeSocket != 0 && fi.Mode().Perm() == 0o600 && os.SameFile(fi, rs.file)
}

// Close stops listening and removes the socket file.
func (rs *RunSocket) Close() error {
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
func (rs *RunSocket) drain() error {
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

// Protocol constants.
const (
	jobOpStart   = "start"
	jobOpOutput  = "output"
	jobOpEnd     = "end"
	jobOpRun     = "run"
	jobOpSkipped = "skipped"
	jobOpError   = "error"
	jobOpDone    = "done"
	jobOpSecret  = "secret"

	jobMaxMsg       = 1 << 20  // longest message line, both ways
	jobReadBuf      = 64 << 10 // per-connection read buffer; longer lines are assembled up to jobMaxMsg
	jobChunk        = 32 << 10 // output bytes per "output" message
	jobMaxReason    = 500      // longest reason the server keeps from a client
	jobMaxErrReply  = 1000     // longest error text in a reply
	jobReplyTimeout = 5 * time.Second

	defaultNeedsGrace = 5 * time.Second

	jobReasonPipelineEnded = "the pipeline ended before the job finished"
)

// Tunables; variables so that tests can shorten them.
var (
	// jobServerCloseWait bounds how long Close waits for connection
	// handlers to finish after closing their connections.
	jobServerCloseWait = 5 * time.Second
	// jobOutputDrain: after CMD exits, how long `refci job` keeps reading
	// its output pipe, which a background process CMD started may still
	// hold open.
	jobOutputDrain = 2 * time.Second
	// jobPartialFlush: a partial line (no newline yet) is held back from
	// the prefixed stdout at most this long, so that parallel jobs'
	// lines do not interleave mid-line, yet progress output still shows.
	jobPartialFlush = 200 * time.Millisecond
	// jobDoneWait bounds the wait for the server's "done" after "end".
	jobDoneWait = 30 * time.Second
	// jobVerdictWait bounds the wait for the server's answer to the
	// start of a job without needs (it answers at once; a job with needs
	// waits as long as they run).
	jobVerdictWait = 30 * time.Second
)

// jobMsg is every message of the protocol, both ways.
type jobMsg struct {
	Op       string   `json:"op"`
	Name     string   `json:"name,omitempty"`      // start
	Needs    []string `json:"needs,omitempty"`     // start
	Data     []byte   `json:"data,omitempty"`      // output
	ExitCode *int     `json:"exit_code,omitempty"` // end
	Signal   string   `json:"signal,omitempty"`    // end
	Reason   string   `json:"reason,omitempty"`    // end, skipped
	Error    string   `json:"error,omitempty"`     // error
}

// jobIn is one received line: a message or why it is not one.
type jobIn struct {
	m   jobMsg
	err error
}

// readJobLine reads one '\n'-terminated line of at most max bytes. A longer
// line is consumed and reported with tooLong. err is the read error, if
// any, after the line (a final line without '\n' comes with io.EOF).
func readJobLine(br *bufio.Reader, max int) (line []byte, tooLong bool, err error) {
	frag, err := br.ReadSlice('\n')
	if !errors.Is(err, bufio.ErrBufferFull) {
		if len(frag) > max {
			return nil, true, err
		}
		return frag, false, err
	}
	buf := append([]byte(nil), frag...)
	for errors.Is(err, bufio.ErrBufferFull) {
		frag, err = br.ReadSlice('\n')
		if !tooLong {
			if len(buf)+len(frag) > max {
				tooLong, buf = true, nil
			} else {
				buf = append(buf, frag...)
			}
		}
	}
	if tooLong {
		return nil, true, err
	}
	return buf, false, err
}

func parseJobMsg(b []byte) jobIn {
	var m jobMsg
	if err := json.Unmarshal(b, &m); err != nil {
		return jobIn{err: fmt.Errorf("malformed message (want one JSON object per line): %v", err)}
	}
	if m.Op == "" {
		return jobIn{err: errors.New(`malformed message: no "op"`)}
	}
	return jobIn{m: m}
}

// readJobMsgs sends every message read from r to out until r fails, then
// closes out. It stops early when quit is closed.
func readJobMsgs(r io.Reader, out chan<- jobIn, quit <-chan struct{}) {
	defer close(out)
	br := bufio.NewReaderSize(r, jobReadBuf)
	for {
		line, tooLong, err := readJobLine(br, jobMaxMsg)
		var in jobIn
		send := false
		if tooLong {
			in, send = jobIn{err: fmt.Errorf("message longer than %d bytes", jobMaxMsg)}, true
		} else if t := bytes.TrimSpace(line); len(t) > 0 {
			in, send = parseJobMsg(t), true
		}
		if send {
			select {
			case out <- in:
			case <-quit:
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func encodeJobMsg(m jobMsg) []byte {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err) // jobMsg always marshals
	}
	return append(b, '\n')
}

// JobServer serves one run's $REFCI_SOCKET. Safe for concurrent use.
type JobServer struct {
	cfg     JobServerConfig
	sock    *RunSocket
	closing chan struct{} // closed by Close
	wg      sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	jobs    map[string]*jobEntry
	order   []*jobEntry
	changed chan struct{} // closed and replaced whenever a job registers or finishes
	conns   map[net.Conn]struct{}
	root    int // the run's root process (OwnTree); 0 before Admit
}

// Admit sets the run's root process (the shim, or the pipeline without
// one): with OwnTree, only it and its descendants may use the socket.
func (s *JobServer) Admit(pid int) {
	s.mu.Lock()
	s.root = pid
	s.mu.Unlock()
}

// peerAdmitted reports whether the process at the other end of conn
// belongs to the run's process tree. The kernel records the connecting
// process (SO_PEERCRED); orphans of the run are re-parented to the shim,
// a child subreaper, so they stay in the tree.
func (s *JobServer) peerAdmitted(conn net.Conn) (bool, string) {
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

// jobEntry is one job. Lock order: JobServer.mu, then logMu.
type jobEntry struct {
	job       queue.Job // guarded by JobServer.mu; LogBytes and Truncated live below
	logBytes  atomic.Int64
	truncated atomic.Bool

	logMu     sync.Mutex
	log       JobLog // nil before it runs and once closed
	logFailed bool
}

// NewJobServer listens on cfg.SocketPath (mode 0600) and serves it in
// background goroutines until Close.
func NewJobServer(cfg JobServerConfig) (*JobServer, error) {
	if cfg.SocketPath == "" {
		return nil, errors.New("job server: no socket path")
	}
	if cfg.OpenLog == nil {
		return nil, errors.New("job server: no OpenLog")
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
		if sock, err = ListenRunSocket(cfg.SocketPath); err != nil {
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
	s := &JobServer{
		cfg:     cfg,
		sock:    sock,
		closing: make(chan struct{}),
		jobs:    map[string]*jobEntry{},
		changed: make(chan struct{}),
		conns:   map[net.Conn]struct{}{},
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

func (s *JobServer) acceptLoop() {
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

func (s *JobServer) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Jobs returns a snapshot of the jobs, in the order they were started.
// A job waiting for its needs is Running with a zero Started time.
func (s *JobServer) Jobs() []queue.Job {
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
func (s *JobServer) Close() error {
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

func (s *JobServer) reply(conn net.Conn, m jobMsg) error {
	conn.SetWriteDeadline(time.Now().Add(jobReplyTimeout))
	_, err := conn.Write(encodeJobMsg(m))
	return err
}

func (s *JobServer) replyError(conn net.Conn, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if len(msg) > jobMaxErrReply {
		msg = truncateUTF8(msg, jobMaxErrReply) + "..."
	}
	s.reply(conn, jobMsg{Op: jobOpError, Error: msg})
}

func (s *JobServer) serveConn(conn net.Conn) {
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
			bufio.NewReader(io.LimitReader(conn, jobMaxMsg)).ReadSlice('\n')
			s.replyError(conn, "refused: this socket serves only the processes of its own run (%s)", why)
			return
		}
	}
	quit := make(chan struct{})
	defer close(quit)
	msgs := make(chan jobIn)
	go readJobMsgs(conn, msgs, quit)
	for in := range msgs {
		if in.err != nil {
			s.replyError(conn, "%v", in.err)
			continue
		}
		switch in.m.Op {
		case jobOpStart:
			if s.serveJob(conn, in.m, msgs) {
				return
			}
		case jobOpOutput, jobOpEnd:
			s.replyError(conn, "%q before %q: no job runs on this connection", in.m.Op, jobOpStart)
		case jobOpSecret:
			if s.cfg.Secret == nil {
				s.replyError(conn, "secrets are not available in this run")
				continue
			}
			v, err := s.cfg.Secret(in.m.Name)
			if err != nil {
				s.replyError(conn, "%v", err)
				continue
			}
			s.reply(conn, jobMsg{Op: jobOpSecret, Data: v})
		default:
			s.replyError(conn, "unknown op %q", in.m.Op)
		}
	}
}

// checkJobStart validates a start message and returns its needs without
// duplicates.
func checkJobStart(m jobMsg) ([]string, error) {
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
func (s *JobServer) serveJob(conn net.Conn, start jobMsg, msgs <-chan jobIn) bool {
	needs, err := checkJobStart(start)
	if err != nil {
		s.replyError(conn, "%v", err)
		return false
	}
	if s.cfg.Masks.Holds(start.Name) || slices.ContainsFunc(needs, s.cfg.Masks.Holds) {
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
		s.reply(conn, jobMsg{Op: jobOpSkipped, Reason: skip})
		return true
	}

	if len(needs) > 0 {
		ok, state, reason := s.waitNeeds(conn, e, msgs)
		if !ok {
			if s.finish(e, state, reason, nil) && state == queue.Skipped {
				s.reply(conn, jobMsg{Op: jobOpSkipped, Reason: reason})
			}
			return true
		}
	}

	l, err := s.cfg.OpenLog(name)
	if err != nil {
		reason := fmt.Sprintf("cannot open the job log: %v", err)
		s.finish(e, queue.Error, reason, nil)
		s.replyError(conn, "%s", reason)
		return true
	}
	s.mu.Lock()
	if e.job.State.Final() { // Close got here first
		s.mu.Unlock()
		l.Close()
		s.replyError(conn, "%s", jobReasonPipelineEnded)
		return true
	}
	e.job.Started = s.cfg.Now()
	e.job.Reason = ""
	e.job.Log = queue.JobLogPath(name)
	e.logMu.Lock()
	e.log = l
	e.logMu.Unlock()
	s.mu.Unlock()
	s.reply(conn, jobMsg{Op: jobOpRun})

	for in := range msgs {
		if in.err != nil {
			s.replyError(conn, "%v", in.err)
			continue
		}
		switch in.m.Op {
		case jobOpOutput:
			e.write(in.m.Data)
		case jobOpEnd:
			state, reason, code, err := jobEndResult(in.m)
			if err != nil {
				s.replyError(conn, "%v", err)
				continue
			}
			s.finish(e, state, reason, code)
			s.reply(conn, jobMsg{Op: jobOpDone})
			return true
		case jobOpStart:
			s.replyError(conn, "this connection already runs job %q; use one connection per job", name)
		default:
			s.replyError(conn, "unknown op %q", in.m.Op)
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

// register adds a job in state running. If its needs close a cycle it is
// recorded as skipped at once and skip says why.
func (s *JobServer) register(name string, needs []string) (e *jobEntry, skip string, err error) {
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
func (s *JobServer) cycleLocked(name string, needs []string) []string {
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

func (s *JobServer) broadcastLocked() {
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
func (s *JobServer) needsVerdictLocked(needs []string, graceOver bool) (run bool, skip string) {
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
func (s *JobServer) waitNeeds(conn net.Conn, e *jobEntry, msgs <-chan jobIn) (ok bool, state queue.State, reason string) {
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
			if in.err != nil {
				s.replyError(conn, "%v", in.err)
			} else {
				s.replyError(conn, "unexpected %q: the job is waiting for its needs", in.m.Op)
			}
		}
	}
}

// finish records e's final state and closes its log. It reports whether it
// did; false if e was final already.
func (s *JobServer) finish(e *jobEntry, state queue.State, reason string, code *int) bool {
	e.closeLog(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.finishLocked(e, state, reason, code)
}

func (s *JobServer) finishLocked(e *jobEntry, state queue.State, reason string, code *int) bool {
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
func jobEndResult(m jobMsg) (queue.State, string, *int, error) {
	if m.ExitCode == nil {
		return "", "", nil, fmt.Errorf("%q needs \"exit_code\"", jobOpEnd)
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

// ---- The client: `refci job`. ----

const jobUsage = `usage: refci job NAME [--needs A,B] -- CMD [ARGS...]

Runs CMD as job NAME of the current refci pipeline (only inside .refci/run).
CMD's output goes to the pipeline log with each line prefixed "[NAME] ", and
verbatim to jobs/NAME/log.txt in the result. refci job exits with CMD's exit
code.

  --needs A,B   run only after jobs A and B succeeded; if one of them did
                not, the job is recorded as skipped, CMD does not run, and
                refci job exits 1. A job that has not started yet is waited
                for a few seconds (it may be starting in parallel with &).

Example .refci/run:

  refci job build -- make build
  refci job lint -- make lint &
  refci job test --needs build -- make test &
  wait
`

var errJobHelp = errors.New("help requested")

type jobArgs struct {
	name  string
	needs []string
	argv  []string
}

// parseJobArgs parses what follows "job": NAME and --needs in any order,
// then "--" and the command. The "--" may be left out: the first argument
// after NAME that is not an option starts the command.
func parseJobArgs(args []string) (jobArgs, error) {
	var ja jobArgs
	addNeeds := func(v string) error {
		added := false
		for n := range strings.SplitSeq(v, ",") {
			n = strings.TrimSpace(n)
			if n == "" {
				continue
			}
			if err := queue.ValidateJobName(n); err != nil {
				return fmt.Errorf("--needs: %v", err)
			}
			added = true
			if !slices.Contains(ja.needs, n) {
				ja.needs = append(ja.needs, n)
			}
		}
		if !added {
			return fmt.Errorf("--needs %q names no job; give a comma-separated list of job names", v)
		}
		return nil
	}
	cmdAt := -1
loop:
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			cmdAt = i + 1
			break loop
		case a == "-h" || a == "-help" || a == "--help":
			return jobArgs{}, errJobHelp
		case a == "--needs" || a == "-needs":
			if i+1 >= len(args) {
				return jobArgs{}, fmt.Errorf("%s needs a value: a comma-separated list of job names", a)
			}
			i++
			if err := addNeeds(args[i]); err != nil {
				return jobArgs{}, err
			}
		case strings.HasPrefix(a, "--needs=") || strings.HasPrefix(a, "-needs="):
			_, v, _ := strings.Cut(a, "=")
			if err := addNeeds(v); err != nil {
				return jobArgs{}, err
			}
		case strings.HasPrefix(a, "-") && a != "-":
			return jobArgs{}, fmt.Errorf("unknown option %q", a)
		case ja.name == "":
			ja.name = a
		default:
			cmdAt = i
			break loop
		}
	}
	if ja.name == "" {
		return jobArgs{}, errors.New("missing job NAME")
	}
	if err := queue.ValidateJobName(ja.name); err != nil {
		return jobArgs{}, err
	}
	if slices.Contains(ja.needs, ja.name) {
		return jobArgs{}, fmt.Errorf("job %q cannot need itself", ja.name)
	}
	if cmdAt >= 0 {
		ja.argv = args[cmdAt:]
	}
	if len(ja.argv) == 0 {
		return jobArgs{}, fmt.Errorf("missing command: put it after --, e.g. refci job %s -- make %s", ja.name, ja.name)
	}
	return ja, nil
}

// RunJobCommand implements `refci job`; args are what follows "job" on the
// command line. It reads REFCI_SOCKET from getenv and returns the exit
// code: CMD's (128+n if a signal n killed it; 127 if it was not found,
// 126 if it could not be executed), 1 if the job was skipped or
// abandoned, 2 for usage errors, a refused start (invalid or duplicate
// name) or when refci cannot be reached.
//
// CMD runs as a child of this process, in the same process group, with
// stdin /dev/null and REFCI_JOB=NAME added to the environment; its stdout
// and stderr share one pipe. It is killed (SIGKILL) if this process dies.
// SIGINT and SIGTERM received while CMD runs are forwarded to it; received
// while the job waits for its needs they end RunJobCommand (exit 128+n)
// and the job is recorded as cancelled. RunJobCommand handles these
// signals itself (signal.Notify for its duration), so callers should not
// turn them into cancelling ctx.
//
// Cancelling ctx abandons the job: the connection is closed without an
// end, so the server records it cancelled, and CMD is killed.
func RunJobCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	ja, err := parseJobArgs(args)
	if errors.Is(err, errJobHelp) {
		io.WriteString(stdout, jobUsage)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "refci job: %v\nusage: refci job NAME [--needs A,B] -- CMD [ARGS...] (refci job --help for more)\n", err)
		return 2
	}
	sock := getenv("REFCI_SOCKET")
	if sock == "" {
		fmt.Fprintln(stderr, "refci job: not inside a refci pipeline (REFCI_SOCKET is not set); run jobs from .refci/run")
		return 2
	}
	c := &jobClient{name: ja.name, stdout: stdout, stderr: stderr}
	return c.run(ctx, sock, ja)
}

type jobClient struct {
	name           string
	stdout, stderr io.Writer
	conn           net.Conn
	lost           bool // the connection failed; output is no longer sent
}

func (c *jobClient) errorf(format string, args ...any) {
	fmt.Fprintf(c.stderr, "refci job: %s: %s\n", c.name, fmt.Sprintf(format, args...))
}

func (c *jobClient) send(m jobMsg) error {
	if c.lost {
		return errors.New("connection lost")
	}
	if _, err := c.conn.Write(encodeJobMsg(m)); err != nil {
		c.lost = true
		return err
	}
	return nil
}

// readJobReplies sends the server's messages to out until the connection
// fails, then closes out. Malformed lines are dropped.
func readJobReplies(r io.Reader, out chan<- jobMsg, quit <-chan struct{}) {
	in := make(chan jobIn)
	go readJobMsgs(r, in, quit)
	defer close(out)
	for m := range in {
		if m.err != nil {
			continue
		}
		select {
		case out <- m.m:
		case <-quit:
			return
		}
	}
}

func (c *jobClient) run(ctx context.Context, sock string, ja jobArgs) int {
	d := net.Dialer{Timeout: 10 * time.Second}
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		c.errorf("cannot reach refci at REFCI_SOCKET=%s: %v", sock, err)
		return 2
	}
	c.conn = conn
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	quit := make(chan struct{})
	defer close(quit)
	replies := make(chan jobMsg, 16)
	go readJobReplies(conn, replies, quit)

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	if err := c.send(jobMsg{Op: jobOpStart, Name: ja.name, Needs: ja.needs}); err != nil {
		if ctx.Err() != nil {
			return c.abandoned()
		}
		c.errorf("cannot talk to refci: %v", err)
		return 2
	}
	var silent <-chan time.Time
	if len(ja.needs) == 0 {
		t := time.NewTimer(jobVerdictWait)
		defer t.Stop()
		silent = t.C
	}
	for verdict := false; !verdict; {
		select {
		case <-silent:
			c.errorf("refci did not answer on REFCI_SOCKET=%s within %s; the worker is stuck, overloaded or gone (see its log). The job did not run", sock, jobVerdictWait)
			return 2
		case m, ok := <-replies:
			if !ok {
				if ctx.Err() != nil {
					return c.abandoned()
				}
				c.errorf("lost the connection to refci before the job started")
				return 2
			}
			switch m.Op {
			case jobOpRun:
				verdict = true
			case jobOpSkipped:
				fmt.Fprintf(c.stderr, "refci job: %s skipped: %s\n", c.name, m.Reason)
				return 1
			case jobOpError:
				c.errorf("%s", m.Error)
				return 2
			}
		case sig := <-sigs:
			conn.Close()
			c.errorf("%s while waiting for its needs; the job is recorded as cancelled", jobSignalName(sig.(syscall.Signal)))
			return 128 + int(sig.(syscall.Signal))
		case <-ctx.Done():
			return c.abandoned()
		}
	}
	return c.runCmd(ctx, ja.argv, replies, sigs)
}

func (c *jobClient) abandoned() int {
	c.conn.Close()
	c.errorf("abandoned; the job is recorded as cancelled")
	return 1
}

// output sends raw CMD output to the server and, prefixed, to stdout.
func (c *jobClient) output(ctx context.Context, pre *linePrefixer, b []byte) {
	if !c.lost {
		for rest := b; len(rest) > 0; {
			n := min(len(rest), jobChunk)
			if err := c.send(jobMsg{Op: jobOpOutput, Data: rest[:n]}); err != nil {
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

// jobStartFailure is what a shell would say and exit with when it cannot
// start cmd.
func jobStartFailure(cmd string, err error) (code int, msg, reason string) {
	switch {
	case errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist):
		return 127, fmt.Sprintf("refci job: %s: command not found", cmd), "command not found: " + cmd
	case errors.Is(err, fs.ErrPermission):
		return 126, fmt.Sprintf("refci job: %s: permission denied", cmd), "permission denied: " + cmd
	}
	return 126, fmt.Sprintf("refci job: %s: cannot run: %v", cmd, err), fmt.Sprintf("cannot run %s: %v", cmd, err)
}

func (c *jobClient) runCmd(ctx context.Context, argv []string, replies <-chan jobMsg, sigs <-chan os.Signal) int {
	pre := newLinePrefixer(c.stdout, "["+c.name+"] ")
	cmd := exec.Command(argv[0], argv[1:]...)
	if errors.Is(cmd.Err, exec.ErrDot) {
		cmd.Err = nil // like a shell: "." in PATH is the user's choice
	}
	cmd.Env = append(os.Environ(), "REFCI_JOB="+c.name)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	pr, pw, err := os.Pipe()
	if err != nil {
		return c.end(ctx, pre, replies, 126, "", fmt.Sprintf("cannot create a pipe: %v", err))
	}
	cmd.Stdout, cmd.Stderr = pw, pw

	// Pdeathsig fires when the thread that started the child exits, not
	// the process: keep this goroutine on its thread until CMD is gone.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		pw.Close()
		pr.Close()
		code, msg, reason := jobStartFailure(argv[0], err)
		c.output(ctx, pre, []byte(msg+"\n"))
		return c.end(ctx, pre, replies, code, "", reason)
	}
	pw.Close()

	readerQuit := make(chan struct{})
	defer close(readerQuit)
	chunks := make(chan []byte, 4)
	go func() {
		defer close(chunks)
		for {
			buf := make([]byte, jobChunk)
			n, err := pr.Read(buf)
			if n > 0 {
				select {
				case chunks <- buf[:n]:
				case <-readerQuit:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	defer pr.Close()
	waitc := make(chan error, 1)
	go func() { waitc <- cmd.Wait() }()

	var (
		exited, eof bool
		drain       <-chan time.Time
		flush       *time.Timer
		flushc      <-chan time.Time
	)
	defer func() {
		if flush != nil {
			flush.Stop()
		}
	}()
	for !exited || !eof {
		select {
		case b, ok := <-chunks:
			if !ok {
				eof, chunks = true, nil
				continue
			}
			c.output(ctx, pre, b)
			if pre.pending() && flushc == nil {
				flush = time.NewTimer(jobPartialFlush)
				flushc = flush.C
			}
		case <-flushc:
			pre.Flush()
			flushc = nil
		case <-waitc:
			exited = true
			if !eof {
				drain = time.After(jobOutputDrain)
			}
		case <-drain:
			drain = nil
			pr.Close() // ends the reader; whatever is still buffered is lost
			c.errorf("%s exited but its output is still open (a background process?); stopped reading it", argv[0])
		case sig := <-sigs:
			if !exited {
				cmd.Process.Signal(sig)
			}
		case m, ok := <-replies:
			if !ok {
				replies = nil
				if !c.lost && ctx.Err() == nil {
					c.errorf("lost the connection to refci; the output is no longer recorded in the job log")
				}
				c.lost = true
			} else if m.Op == jobOpError {
				c.errorf("refci: %s", m.Error)
			}
		case <-ctx.Done():
			c.conn.Close()
			if !exited {
				cmd.Process.Kill()
				select {
				case <-waitc:
				case <-time.After(5 * time.Second):
				}
			}
			pre.Close()
			return c.abandoned()
		}
	}
	code, sig := jobExitStatus(cmd.ProcessState)
	return c.end(ctx, pre, replies, code, sig, "")
}

// end reports the end of CMD and waits for the server to record it.
func (c *jobClient) end(ctx context.Context, pre *linePrefixer, replies <-chan jobMsg, code int, sig, reason string) int {
	pre.Close()
	if c.lost {
		return code
	}
	if err := c.send(jobMsg{Op: jobOpEnd, ExitCode: queue.IntPtr(code), Signal: sig, Reason: reason}); err != nil {
		if ctx.Err() == nil {
			c.errorf("could not report the end of the job to refci: %v", err)
		}
		return code
	}
	t := time.NewTimer(jobDoneWait)
	defer t.Stop()
	for {
		select {
		case m, ok := <-replies:
			if !ok {
				if ctx.Err() == nil {
					c.errorf("lost the connection to refci before it recorded the end of the job")
				}
				return code
			}
			switch m.Op {
			case jobOpDone:
				return code
			case jobOpError:
				c.errorf("refci: %s", m.Error)
			}
		case <-t.C:
			c.errorf("refci did not confirm the end of the job")
			return code
		case <-ctx.Done():
			return code
		}
	}
}

func jobExitStatus(ps *os.ProcessState) (code int, sig string) {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), jobSignalName(ws.Signal())
	}
	code = ps.ExitCode()
	if code < 0 || code > 255 {
		code = 255
	}
	return code, ""
}

var jobSignalNames = map[syscall.Signal]string{
	syscall.SIGHUP: "SIGHUP", syscall.SIGINT: "SIGINT", syscall.SIGQUIT: "SIGQUIT",
	syscall.SIGILL: "SIGILL", syscall.SIGTRAP: "SIGTRAP", syscall.SIGABRT: "SIGABRT",
	syscall.SIGBUS: "SIGBUS", syscall.SIGFPE: "SIGFPE", syscall.SIGKILL: "SIGKILL",
	syscall.SIGUSR1: "SIGUSR1", syscall.SIGSEGV: "SIGSEGV", syscall.SIGUSR2: "SIGUSR2",
	syscall.SIGPIPE: "SIGPIPE", syscall.SIGALRM: "SIGALRM", syscall.SIGTERM: "SIGTERM",
	syscall.SIGXCPU: "SIGXCPU", syscall.SIGXFSZ: "SIGXFSZ", syscall.SIGSYS: "SIGSYS",
}

func jobSignalName(s syscall.Signal) string {
	if n, ok := jobSignalNames[s]; ok {
		return n
	}
	return fmt.Sprintf("signal %d", int(s))
}

// linePrefixer writes its input to w with prefix at the start of every
// line. Complete lines are written at once, one Write per input chunk, so
// that parallel jobs sharing w interleave whole lines. A partial line is
// held back until its newline, Flush, or until it reaches
// linePrefixerMaxPending bytes, so memory stays bounded on a huge line.
type linePrefixer struct {
	w       io.Writer
	prefix  []byte
	buf     []byte // pending partial line, prefix included where it starts a line
	atStart bool   // the next input byte starts a line
}

const linePrefixerMaxPending = 64 << 10

func newLinePrefixer(w io.Writer, prefix string) *linePrefixer {
	return &linePrefixer{w: w, prefix: []byte(prefix), atStart: true}
}

// Write never fails: errors of w are ignored (the job goes on).
func (p *linePrefixer) Write(b []byte) (int, error) {
	n := len(b)
	out := p.buf
	for len(b) > 0 {
		if p.atStart {
			out = append(out, p.prefix...)
			p.atStart = false
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			out = append(out, b...)
			break
		}
		out = append(out, b[:i+1]...)
		b = b[i+1:]
		p.atStart = true
	}
	j := bytes.LastIndexByte(out, '\n') + 1
	if len(out)-j >= linePrefixerMaxPending {
		j = len(out)
	}
	if j > 0 {
		p.w.Write(out[:j])
	}
	p.buf = append([]byte(nil), out[j:]...)
	return n, nil
}

func (p *linePrefixer) pending() bool { return len(p.buf) > 0 }

// Flush writes the pending partial line; the rest of the line will follow
// without a prefix.
func (p *linePrefixer) Flush() {
	if len(p.buf) > 0 {
		p.w.Write(p.buf)
		p.buf = p.buf[:0]
	}
}

// Close flushes and ends an unterminated last line with a newline.
func (p *linePrefixer) Close() {
	p.Flush()
	if !p.atStart {
		p.w.Write([]byte{'\n'})
		p.atStart = true
	}
}
