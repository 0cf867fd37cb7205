// Package sshd is an SSH endpoint that serves bare git repositories to the
// stock git client: `git clone ssh://host:port/app.git`, fetch and push.
//
// It knows git and SSH, nothing about CI. The git side is the system's
// own `git upload-pack` and `git receive-pack` (never go-git's server
// side, which accepts stale ref updates); the client's GIT_PROTOCOL is
// passed through, so protocol v2, shallow clones, partial clones, atomic
// pushes and push options all work as with any git server. Who may do
// what is asked of a Policy: per repository at the start of a session,
// and per ref during a push, through receive-pack hooks that call back
// into the running server (see hook.go). A repository pushed to for the
// first time is created when the policy allows it and the push carries a
// branch or a tag.
//
// Identity is always the public key the session authenticated with, as
// the SSH library verified it (not the last key the client offered: the
// lesson of CVE-2024-45337).
package sshd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/gitproto/sshd/hookclient"
)

// Identity is who a session is: the key it authenticated with. The zero
// value names nobody. Plain value, safe to copy and share.
type Identity struct {
	Fingerprint string          // SHA256:... as ssh-keygen -lf prints it
	Key         gossh.PublicKey // the verified key
	User        string          // the SSH user name (informational only)
	Addr        string          // the client's address
}

// Op is what a session wants to do with a repository; the zero value is
// OpRead.
type Op int

// The operations a Policy is asked about.
const (
	OpRead   Op = iota // clone, fetch (git upload-pack)
	OpPush             // push (git receive-pack); each ref is checked again with AllowRef
	OpCreate           // push to a repository that does not exist yet: create it
)

func (o Op) String() string {
	return [...]string{"read", "push", "create"}[o]
}

// RefUpdate is one ref a push changes. Old is the zero id for a new ref,
// New the zero id for a deletion (full hex object ids). Plain value.
type RefUpdate struct {
	Name, Old, New string
}

// Deleting reports whether the update removes the ref.
func (u RefUpdate) Deleting() bool { return u.New == ZeroID }

// ZeroID is the object id git uses for "no ref": the Old of a ref a push
// creates, the New of one it deletes.
const ZeroID = "0000000000000000000000000000000000000000"

const zeroID = ZeroID

// Policy decides who may do what. Its methods are called from many
// sessions at once and must be safe for concurrent use. An error is
// shown to the git client as is: it should say what was refused and why.
type Policy interface {
	// Known reports whether a key may log in at all. It is asked on
	// every authentication attempt, so a policy can reload its file.
	Known(fingerprint string) bool
	// AllowRepo decides at the start of a session whether id may read
	// or push to repo (a clean name, see CleanRepoName), or create it.
	AllowRepo(id Identity, repo string, op Op) error
	// AllowRef decides each ref update of a push; a refusal rejects that
	// ref only (the push report names it), or the whole push when the
	// client asked for an atomic push. p tells who pushes where and
	// reads the repository with the pushed objects.
	AllowRef(p *Push, u RefUpdate) error
}

// Receive is a successful push, as Config.OnReceive gets it. Read-only
// for the callback; not shared after it returns.
type Receive struct {
	ID          Identity
	Repo        string      // clean repository name
	Path        string      // the bare repository's directory
	Updates     []RefUpdate // the refs that were changed, as git applied them
	PushOptions []string    // `git push -o` values, in order
}

// Config configures a Server. Root, StateDir, HostKey and Policy are
// required; zero limits mean the defaults; nil callbacks are skipped.
// The callbacks are called from many sessions at once.
type Config struct {
	Root     string // directory holding the bare repositories
	StateDir string // private directory (made 0700) for the hooks and the hook socket
	HostKey  gossh.Signer
	Policy   Policy
	Logger   *slog.Logger

	// CheckPushOptions, when set, is called once per push that carries
	// push options (git push -o), before any ref is updated, with every
	// update and the options; an error refuses the whole push (e.g. an
	// unknown option). Pushes without options do not call it (and so
	// cost one hook process less).
	CheckPushOptions func(id Identity, repo string, updates []RefUpdate, options []string) error
	// OnReceive, when set, is called after a push updated refs, before
	// the client's git exits; what it returns is shown to the client.
	OnReceive func(ctx context.Context, r *Receive) string
	// OnCreate, when set, is called after a repository was created.
	OnCreate func(repo, path string)

	MaxSessions  int           // git sessions at once (default 64); more wait up to 10 s, then are refused
	MaxPackBytes int64         // largest pack a push may send (default 1 GiB)
	IdleTimeout  time.Duration // a connection silent this long is closed (default 5 min)
	// Connection limits (see limit.go): a connection must authenticate
	// within HandshakeTimeout (default 15 s); at most MaxUnauthPerAddr
	// connections per source address (default MaxSessions, at least 8)
	// and MaxUnauth in all (default 4 x MaxSessions) wait to
	// authenticate, a new one closing the one idle longest if it has been
	// idle for EvictIdle (default 2 s), else being turned away; at most
	// MaxConns are authenticated (default 4 x MaxSessions).
	HandshakeTimeout time.Duration
	MaxUnauthPerAddr int
	MaxUnauth        int
	MaxConns         int
	EvictIdle        time.Duration
	// HookCommand runs the hook client: default the running executable
	// with HookArg (its main must call HookMain for that argument).
	HookCommand []string
	// HookClient, when set, is the light hook client (cmd/refci-hook; see
	// ChooseHookClient), which the hooks exec instead of HookCommand
	// while it is an executable file. Empty: always HookCommand.
	HookClient string
	// OnAllowed, when set, hears of each ref update the update hook
	// allowed in an existing repository (path, its directory), with the
	// push's options, before receive-pack applies it: a hint, for the
	// push can still fail (another ref refused in an atomic push, a lost
	// race). It is called from the hook, which waits for it: it must not
	// block.
	OnAllowed func(path string, u RefUpdate, options []string)
}

// Server is the SSH endpoint. Make it with New (the zero value is not
// usable), then Serve; Shutdown or Close stops it. Safe for concurrent
// use.
type Server struct {
	cfg      Config
	log      *slog.Logger
	srv      *ssh.Server
	hooksDir string
	hooks    *hookServer
	slots    chan struct{}
	lim      *limiter

	mu        sync.Mutex
	draining  bool
	gcRunning map[string]bool // repositories with a git gc --auto running
	// refusedSeen dedupes the log of refused keys: key and host -> last logged
	refusedSeen map[string]time.Time
	gcs         sync.WaitGroup
	sessions    sync.WaitGroup
	createMu    sync.Mutex
	creating    map[string]bool // repositories a push is creating (reserve), by path
}

// New prepares a server: the state directory, the hook scripts and the
// hook socket. Call Shutdown (or Close) to remove the socket.
func New(cfg Config) (*Server, error) {
	if cfg.Root == "" || cfg.StateDir == "" || cfg.HostKey == nil || cfg.Policy == nil {
		return nil, errors.New("sshd: Root, StateDir, HostKey and Policy are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = 64
	}
	if cfg.MaxPackBytes <= 0 {
		cfg.MaxPackBytes = 1 << 30
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 15 * time.Second
	}
	if cfg.MaxUnauthPerAddr <= 0 {
		cfg.MaxUnauthPerAddr = max(8, cfg.MaxSessions)
	}
	if cfg.EvictIdle <= 0 {
		cfg.EvictIdle = 2 * time.Second
	}
	if cfg.MaxUnauth <= 0 {
		cfg.MaxUnauth = 4 * cfg.MaxSessions
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 4 * cfg.MaxSessions
	}
	if len(cfg.HookCommand) == 0 {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("sshd: find the hook program: %w", err)
		}
		cfg.HookCommand = []string{self, HookArg}
	}
	for _, d := range []string{cfg.Root, cfg.StateDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("sshd: %w", err)
		}
	}
	if err := os.Chmod(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("sshd: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, slots: make(chan struct{}, cfg.MaxSessions)}
	s.lim = &limiter{log: s.log, handshake: cfg.HandshakeTimeout, perAddr: cfg.MaxUnauthPerAddr,
		maxUnauth: cfg.MaxUnauth, maxAuth: cfg.MaxConns, idle: cfg.EvictIdle, byAddr: map[string]int{}}
	var err error
	if s.hooksDir, err = writeHooks(cfg.StateDir, cfg.HookClient, cfg.HookCommand); err != nil {
		return nil, err
	}
	if s.hooks, err = startHookServer(cfg.StateDir, s); err != nil {
		return nil, err
	}
	s.srv = &ssh.Server{
		Handler:     s.handle,
		HostSigners: []ssh.Signer{cfg.HostKey},
		Version:     "refci",
		IdleTimeout: cfg.IdleTimeout,
		ConnCallback: func(ctx ssh.Context, c net.Conn) net.Conn {
			if lc, ok := c.(*limitConn); ok {
				ctx.SetValue(connKey{}, lc)
			}
			return c
		},
		PublicKeyHandler: func(ctx ssh.Context, key ssh.PublicKey) bool {
			fp := gossh.FingerprintSHA256(key)
			if cfg.Policy.Known(fp) {
				return true
			}
			s.refusedKey(ctx, key, fp)
			return false
		},
		PtyCallback: func(ssh.Context, ssh.Pty) bool { return false },
		ServerConfigCallback: func(ctx ssh.Context) *gossh.ServerConfig {
			lc, _ := ctx.Value(connKey{}).(*limitConn)
			return &gossh.ServerConfig{
				MaxAuthTries: 6,
				// Called only for the key whose signature was verified:
				// the session's identity is taken from here.
				VerifiedPublicKeyCallback: func(_ gossh.ConnMetadata, key gossh.PublicKey, _ *gossh.Permissions, _ string) (*gossh.Permissions, error) {
					if lc != nil && !lc.authenticated() {
						s.log.Warn("too many connections; turning one away", "addr", lc.RemoteAddr().String(), "key", gossh.FingerprintSHA256(key), "max", cfg.MaxConns)
					}
					return &gossh.Permissions{ExtraData: map[any]any{verifiedKey{}: key}}, nil
				},
			}
		},
		ConnectionFailedCallback: func(c net.Conn, err error) {
			s.log.Debug("ssh handshake failed", "addr", c.RemoteAddr().String(), "err", err)
		},
	}
	return s, nil
}

type verifiedKey struct{}

type connKey struct{}

// refusedKey logs a key the policy does not know, so an admin can add
// it: the first one each connection offers (a client may offer every key
// of its agent), and the same key from the same address at most once a
// minute.
func (s *Server) refusedKey(ctx ssh.Context, key ssh.PublicKey, fp string) {
	lc, _ := ctx.Value(connKey{}).(*limitConn)
	if lc != nil && !lc.refusedKey() {
		return
	}
	addr := ctx.RemoteAddr().String()
	dedupe := fp + " " + hostOf(ctx.RemoteAddr())
	s.mu.Lock()
	if s.refusedSeen == nil || len(s.refusedSeen) > 1024 {
		s.refusedSeen = map[string]time.Time{}
	}
	last, seen := s.refusedSeen[dedupe]
	if seen && time.Since(last) < time.Minute {
		s.mu.Unlock()
		return
	}
	s.refusedSeen[dedupe] = time.Now()
	s.mu.Unlock()
	s.log.Warn("refused an unknown key; an admin can add it to the roles file", "key", fp, "type", key.Type(), "addr", addr, "user", ctx.User())
}

// Serve accepts connections on ln until Shutdown or Close. It returns
// nil after a Shutdown. Connections are limited as Config says.
func (s *Server) Serve(ln net.Listener) error {
	err := s.srv.Serve(&limitListener{Listener: ln, lim: s.lim})
	if errors.Is(err, ssh.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting connections, refuses new sessions, and waits
// for running git sessions to finish until ctx ends; then it closes
// what is left (killing its git processes) and the hook socket.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.sessions.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("sshd: git sessions still running at shutdown were cut off: %w", ctx.Err())
	}
	s.srv.Close()
	s.sessions.Wait()
	s.gcs.Wait()
	s.hooks.close()
	return err
}

// Close stops everything at once.
func (s *Server) Close() error {
	err := s.srv.Close()
	s.hooks.close()
	return err
}

// identity returns the key the session authenticated with, from the
// permissions the SSH library attached to the connection for the
// verified key.
func identity(sess ssh.Session) (Identity, error) {
	conn, ok := sess.Context().Value(ssh.ContextKeyConn).(*gossh.ServerConn)
	if !ok || conn.Permissions == nil {
		return Identity{}, errors.New("no authenticated key")
	}
	key, ok := conn.Permissions.ExtraData[verifiedKey{}].(gossh.PublicKey)
	if !ok {
		return Identity{}, errors.New("no authenticated key")
	}
	return Identity{Fingerprint: gossh.FingerprintSHA256(key), Key: key, User: sess.User(), Addr: sess.RemoteAddr().String()}, nil
}

// validGitProtocol reports whether v may be passed on as GIT_PROTOCOL:
// key=value pairs separated by colons (e.g. version=2), nothing else.
// (Checked by hand: a regexp compiled at start-up costs every refci
// process, and the hook client is one.)
func validGitProtocol(v string) bool {
	if v == "" || len(v) > 64 {
		return false
	}
	for _, c := range v {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._=:-", c)) {
			return false
		}
	}
	return true
}

// fail tells the client what went wrong and ends the session.
func fail(sess ssh.Session, code int, format string, args ...any) {
	fmt.Fprintf(sess.Stderr(), "refci: "+format+"\n", args...)
	sess.Exit(code)
}

func (s *Server) handle(sess ssh.Session) {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		fail(sess, 1, "the server is shutting down; try again in a moment")
		return
	}
	s.sessions.Add(1)
	s.mu.Unlock()
	defer s.sessions.Done()

	if lc, _ := sess.Context().Value(connKey{}).(*limitConn); lc != nil && lc.over() {
		fail(sess, 1, "the server is busy (%d connections at once); try again", s.cfg.MaxConns)
		lc.Close()
		return
	}
	id, err := identity(sess)
	if err != nil {
		fail(sess, 1, "%v", err)
		return
	}
	log := s.log.With("key", id.Fingerprint, "addr", id.Addr)
	if sess.RawCommand() == "" {
		log.Warn("refused an interactive shell")
		fail(sess, 1, "this server offers no shell, only git: git clone ssh://HOST:PORT/REPO.git")
		return
	}
	argv := sess.Command()
	if len(argv) == 3 && argv[0] == "git" {
		argv = []string{"git-" + argv[1], argv[2]}
	}
	if len(argv) != 2 || (argv[0] != "git-upload-pack" && argv[0] != "git-receive-pack") {
		log.Warn("refused a command", "command", truncate(sess.RawCommand(), 200))
		fail(sess, 1, "only git fetch and push are served (git-upload-pack, git-receive-pack); refused: %q", truncate(sess.RawCommand(), 200))
		return
	}
	push := argv[0] == "git-receive-pack"
	name, err := CleanRepoName(argv[1])
	if err != nil {
		log.Warn("refused a repository name", "repo", truncate(argv[1], 200), "err", err)
		fail(sess, 1, "%v", err)
		return
	}
	log = log.With("repo", name)
	op := OpRead
	if push {
		op = OpPush
	}
	path, exists, err := repoPath(s.cfg.Root, name)
	if err != nil {
		log.Warn("refused a repository", "err", err)
		fail(sess, 1, "%v", err)
		return
	}
	final := "" // the repository's place, when this push creates it
	if !exists {
		if !push || s.cfg.Policy.AllowRepo(id, name, OpCreate) != nil {
			log.Info("no such repository", "op", op)
			fail(sess, 1, "%s", s.missingRepo(id, name))
			return
		}
		// One creating push at a time per name: a second one would pass
		// pre-receive too and see its refs dropped after git said ok.
		if !s.reserve(path) {
			log.Info("repository being created by another push", "op", op)
			fail(sess, 1, "repository %s is being created by another push; push again once it is done", name)
			return
		}
		defer s.release(path)
		tmp, err := s.newRepo(path)
		if err != nil {
			log.Error("create repository", "err", err)
			fail(sess, 1, "creating repository %s failed: %v", name, err)
			return
		}
		defer os.RemoveAll(tmp) // gone once renamed into place
		final, path = path, tmp
	}
	if err := s.cfg.Policy.AllowRepo(id, name, op); err != nil {
		log.Info("refused", "op", op, "err", err)
		fail(sess, 1, "%v", err)
		return
	}
	select {
	case s.slots <- struct{}{}:
	case <-time.After(10 * time.Second):
		log.Warn("too many git sessions; refused one", "max", s.cfg.MaxSessions)
		fail(sess, 1, "the server is busy (%d git sessions at once); try again", s.cfg.MaxSessions)
		return
	case <-sess.Context().Done():
		return
	}
	defer func() { <-s.slots }()
	s.serveGit(sess, log, id, name, path, final, push)
}

// missingRepo says that repository name does not exist, which ones id
// may read, and how one is made.
func (s *Server) missingRepo(id Identity, name string) string {
	var readable []string
	names, _ := ListRepos(s.cfg.Root)
	for _, r := range names {
		if s.cfg.Policy.AllowRepo(id, r, OpRead) == nil {
			readable = append(readable, r)
		}
	}
	have := "there is no repository you may read here yet"
	if len(readable) > 0 {
		have = "repositories you may read here: " + strings.Join(readable, " ")
	}
	return fmt.Sprintf("repository %s does not exist (%s).\n"+
		"An admin creates it by pushing a branch to it, e.g. git push REMOTE HEAD; requests alone (refs/ci/*) do not create a repository.", name, have)
}

// newRepo makes a new, empty bare repository in a temporary sibling of
// path. A push into it that carries a branch or a tag renames it into
// place (see hookSession.create); else it is removed, so that no
// half-made repository is ever served and a mistyped name made by a
// request alone leaves nothing behind.
func (s *Server) newRepo(path string) (string, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".new-")
	if err != nil {
		return "", err
	}
	cmd := exec.Command("git", "-c", "init.defaultBranch=main", "init", "--bare", "-q", "--template=", tmp)
	cmd.Env = s.gitEnv("")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("git init: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return tmp, nil
}

// reserve marks path as being created by one push; false when another
// push is creating it already. release ends that.
func (s *Server) reserve(path string) bool {
	s.createMu.Lock()
	defer s.createMu.Unlock()
	if s.creating[path] {
		return false
	}
	if s.creating == nil {
		s.creating = map[string]bool{}
	}
	s.creating[path] = true
	return true
}

func (s *Server) release(path string) {
	s.createMu.Lock()
	defer s.createMu.Unlock()
	delete(s.creating, path)
}

// publish renames a repository a push made (tmp) into its place (final),
// unless a repository appeared there meanwhile.
func (s *Server) publish(name, tmp, final string) error {
	s.createMu.Lock()
	defer s.createMu.Unlock()
	if _, exists, err := repoPath(s.cfg.Root, name); err != nil || exists {
		if err == nil {
			err = fmt.Errorf("repository %s was created by another push meanwhile; push again", name)
		}
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	s.log.Info("repository created", "repo", name)
	if s.cfg.OnCreate != nil {
		s.cfg.OnCreate(name, final)
	}
	return nil
}

// gitEnv is the whole environment of a git process: nothing of the
// server's own environment but PATH, git's configuration isolated from
// the user's, and from the client only GIT_PROTOCOL (checked).
func (s *Server) gitEnv(protocol string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + s.cfg.StateDir,
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_TERMINAL_PROMPT=0",
	}
	if protocol != "" {
		env = append(env, "GIT_PROTOCOL="+protocol)
	}
	return env
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// serveGit runs upload-pack or receive-pack on path; final, when set, is
// where the repository a push creates at path goes.
func (s *Server) serveGit(sess ssh.Session, log *slog.Logger, id Identity, name, path, final string, push bool) {
	protocol := ""
	for _, kv := range sess.Environ() {
		if v, ok := strings.CutPrefix(kv, "GIT_PROTOCOL="); ok && validGitProtocol(v) {
			protocol = v
		}
	}
	var args []string
	var hs *hookSession
	if push {
		hs = s.hooks.register(id, name, path)
		if final != "" {
			hs.final, hs.missing = final, s.missingRepo(id, name)
		}
		defer s.hooks.unregister(hs)
		args = []string{
			"-c", "core.hooksPath=" + s.hooksDir,
			"-c", "receive.advertisePushOptions=true",
			"-c", "receive.advertiseAtomic=true",
			"-c", "receive.fsckObjects=true",
			"-c", "receive.denyDeletes=false",
			"-c", "receive.denyNonFastForwards=false",
			"-c", "receive.maxInputSize=" + strconv.FormatInt(s.cfg.MaxPackBytes, 10),
			// No `git gc --auto` while the client waits: the server runs
			// it after the session (see housekeeping).
			"-c", "receive.autogc=false",
			"-c", "core.logAllRefUpdates=false",
			"receive-pack", path,
		}
	} else {
		args = []string{
			"-c", "uploadpack.allowFilter=true",
			"-c", "core.hooksPath=/dev/null",
			"upload-pack", "--strict", "--timeout=" + strconv.Itoa(int(s.cfg.IdleTimeout/time.Second)), path,
		}
	}
	ctx := sess.Context()
	cmd := exec.Command("git", args...)
	cmd.Dir = path
	cmd.Env = s.gitEnv(protocol)
	if hs != nil {
		cmd.Env = append(cmd.Env, hookclient.EnvSocket+"="+s.hooks.path, hookclient.EnvToken+"="+hs.token)
		if final != "" {
			cmd.Env = append(cmd.Env, hookclient.EnvCreate+"=1")
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &countingWriter{w: sess}
	cmd.Stdout = out
	cmd.Stderr = sess.Stderr()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		fail(sess, 1, "internal error")
		return
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		log.Error("start git", "err", err)
		fail(sess, 1, "the server could not start git")
		return
	}
	in := &sniffer{r: sess}
	go func() {
		io.Copy(stdin, in)
		stdin.Close()
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-waited:
	case <-ctx.Done():
		// The client went away (or the server is closing): stop git and
		// every hook it started.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case werr = <-waited:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			werr = <-waited
		}
	}
	code := 0
	if werr != nil {
		code = 1
		var ee *exec.ExitError
		if errors.As(werr, &ee) && ee.ExitCode() > 0 {
			code = ee.ExitCode()
		}
	}
	attrs := []any{"duration_ms", time.Since(t0).Milliseconds(), "bytes_in", in.n.Load(), "bytes_out", out.n.Load(), "exit", code}
	if protocol != "" {
		attrs = append(attrs, "protocol", protocol)
	}
	if push {
		updated, refused := hs.refs()
		attrs = append(attrs, "updated", strings.Join(updated, " "), "refused", strings.Join(refused, " "))
		log.Info("git push", attrs...)
		if len(updated) > 0 && (final == "" || hs.published()) {
			s.housekeeping(name, hs.repoPath())
		}
		if final != "" && !hs.published() {
			os.RemoveAll(path) // before the client learns the push ended
		}
	} else {
		prefixes, wants := in.summary()
		if len(prefixes) > 0 {
			attrs = append(attrs, "refs", strings.Join(prefixes, " "))
		}
		log.Info("git fetch", append(attrs, "wants", wants)...)
	}
	sess.Exit(code)
}

// housekeeping runs `git gc --auto` on a repository after a push, in the
// background and at most once at a time per repository, instead of
// receive-pack running it while the client waits.
func (s *Server) housekeeping(name, path string) {
	s.mu.Lock()
	if s.gcRunning == nil {
		s.gcRunning = map[string]bool{}
	}
	if s.gcRunning[name] || s.draining {
		s.mu.Unlock()
		return
	}
	s.gcRunning[name] = true
	s.gcs.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.gcs.Done()
		defer func() {
			s.mu.Lock()
			delete(s.gcRunning, name)
			s.mu.Unlock()
		}()
		cmd := exec.Command("git", "-c", "core.hooksPath=/dev/null", "gc", "--auto", "--quiet")
		cmd.Dir = path
		cmd.Env = s.gitEnv("")
		if out, err := cmd.CombinedOutput(); err != nil {
			s.log.Warn("git gc --auto failed", "repo", name, "err", err, "output", truncate(string(out), 500))
		}
	}()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// newToken is a random secret naming one push session to the hooks.
func newToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// sortedCopy returns s sorted.
func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

// openRepo opens a served repository for reading refs.
func openRepo(path string) (*gitproto.Repo, error) { return gitproto.Open(path) }
