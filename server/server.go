// Package server is `refci serve` without its command line: an SSH git
// server (gitproto/sshd) whose access is decided by a roles file, that
// records who owns the claims and runs pushed through it (section 9 of
// docs/PROTOCOL.md), which request values keys with the trusted role
// pushed, and turns push options into request tags.
//
// Everything lives under one data directory (see Paths). The embedded
// worker (Worker, made by NewWorker) serves its repositories, is handed
// the requests pushes queue, and trusts what keys with the trusted role
// pushed; Site serves the static site read-only over HTTP.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"refci.dev/refci/gitproto/sshd"
	"refci.dev/refci/queue"
)

// ShutdownGrace is how long Serve lets running git sessions finish once
// its context ends, before it cuts them off.
const ShutdownGrace = 30 * time.Second

// Config says how to build a Server. The zero value of a limit takes the
// default of gitproto/sshd.
type Config struct {
	// DataDir holds all the server's files (see Paths); it is made
	// (mode 0700) when missing. Required.
	DataDir string
	// RolesFile is the roles file; "" is DataDir/roles.
	RolesFile string
	// AdminKeyFiles are OpenSSH public key files whose keys become admins:
	// New adds the missing ones to the roles file. With none, a roles file
	// that names no admin takes the keys of Home/.ssh/*.pub.
	AdminKeyFiles []string
	// Home is the user's home directory; "" is os.UserHomeDir.
	Home string
	// Addr is the address ListenAndServe listens on (host:port).
	Addr string
	// Logger receives the server's log; nil discards it.
	Logger *slog.Logger

	MaxSessions      int           // git sessions at once
	MaxPackBytes     int64         // largest pack a push may send
	IdleTimeout      time.Duration // a silent connection is closed after this
	HandshakeTimeout time.Duration // a connection not logged in after this is closed
	// HookCommand is the program git's hooks run, and HookClient the
	// light one they run instead while it is there (see sshd.Config).
	HookCommand []string
	HookClient  string

	// OnCreate, when set, is called after a push created the repository
	// repo (its name) at path (its directory). The embedded worker
	// (NewWorker) is told after it.
	OnCreate func(repo, path string)
	// OnRequest, when set, is called after a push queued requests in the
	// repository at path (its directory), with their names (without
	// refs/ci/requests/): a worker can look at once. It is called from
	// the push's post-receive hook, which waits for it: it must not
	// block. The embedded worker is told after it.
	OnRequest func(path string, names []string)
	// OnRequestAllowed, when set, is called when a push's update hook
	// allowed request name (without refs/ci/requests/) in the repository
	// at path to move to value, in a push without options, before the
	// push is applied: a worker can prepare its claim. The push may
	// still fail. It must not block. The embedded worker is told after
	// it.
	OnRequestAllowed func(path, name, value string)
}

// Paths is where a Server keeps its files, all under Root.
type Paths struct {
	Root    string // the data directory
	Repos   string // the bare repositories, by name (Root/repos)
	State   string // the SSH endpoint's hooks and socket (Root/state)
	Cache   string // the embedded worker's caches (Root/cache)
	Trust   string // the records of requests pushed by trusted keys (Root/trust)
	Owners  string // the records of who owns claims and runs (Root/owners)
	WWW     string // for the caller: the static site (Root/www)
	HostKey string // the SSH host key (Root/host_key, and .pub)
	Roles   string // the roles file
}

func newPaths(root string) Paths {
	return Paths{
		Root: root, Repos: filepath.Join(root, "repos"), State: filepath.Join(root, "state"),
		Cache: filepath.Join(root, "cache"), Trust: filepath.Join(root, "trust"), Owners: filepath.Join(root, "owners"), WWW: filepath.Join(root, "www"),
		HostKey: filepath.Join(root, "host_key"), Roles: filepath.Join(root, "roles"),
	}
}

// ErrRoles is matched (errors.Is) by the errors of New that the user
// fixes in the roles file or the admin key files, as opposed to failures
// of the machine.
var ErrRoles = errors.New("roles file or admin keys")

// rolesError marks an error as ErrRoles without changing its text.
type rolesError struct{ error }

func (e rolesError) Unwrap() error        { return e.error }
func (e rolesError) Is(target error) bool { return target == ErrRoles }

// Server is `refci serve`'s git endpoint: the SSH server, the roles
// policy, the owner and trust records and what happens on a push.
// Lifecycle: New prepares it (directories, host key, admins, the
// endpoint's hook socket); Serve (or ListenAndServe) runs it until its
// context ends, then drains it; Close releases a server that is never
// served (and does nothing after Serve). The methods are safe for
// concurrent use.
type Server struct {
	cfg     Config
	paths   Paths
	log     *slog.Logger
	hostKey gossh.Signer
	admins  []string
	access  *queue.AccessFile
	trust   *trustStore
	policy  *rolesPolicy
	ssh     *sshd.Server
	worker  atomic.Pointer[Worker] // the embedded worker; nil: none
}

// New prepares a server from cfg. The errors of the roles file and of
// the admin keys match ErrRoles.
func New(cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("server: no data directory")
	}
	root, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	p := newPaths(root)
	if cfg.RolesFile != "" {
		if p.Roles, err = filepath.Abs(cfg.RolesFile); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{p.Root, p.Repos, p.Cache, p.Trust, p.Owners, p.WWW} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	os.Chmod(p.Root, 0o700)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, paths: p, log: log, trust: &trustStore{dir: p.Trust}}
	if s.hostKey, err = loadOrCreateHostKey(p.HostKey); err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	if s.admins, err = ensureAdmins(p.Roles, cfg.AdminKeyFiles, cfg.Home); err != nil {
		return nil, rolesError{err}
	}
	if s.access, err = queue.NewAccessFile(p.Roles); err != nil {
		return nil, rolesError{fmt.Errorf("%w; fix the file and start again", err)}
	}
	owners := &ownerStore{dir: p.Owners}
	s.policy = &rolesPolicy{file: s.access, owners: owners, log: log}
	recv := &receiver{access: s.access, trust: s.trust, owners: owners, onRequest: s.onRequest, log: log}
	s.ssh, err = sshd.New(sshd.Config{
		Root: p.Repos, StateDir: p.State, HostKey: s.hostKey, Policy: s.policy,
		Logger:           log.With("component", "ssh"),
		CheckPushOptions: checkPushOptions,
		OnReceive:        recv.onReceive,
		OnCreate:         s.onCreate,
		MaxSessions:      cfg.MaxSessions, MaxPackBytes: cfg.MaxPackBytes, IdleTimeout: cfg.IdleTimeout, HandshakeTimeout: cfg.HandshakeTimeout,
		HookCommand: cfg.HookCommand, HookClient: cfg.HookClient,
		OnAllowed: func(path string, u sshd.RefUpdate, options []string) {
			name, ok := strings.CutPrefix(u.Name, queue.RequestsPrefix)
			// Options make the request a tag in post-receive: nothing
			// to prepare for the pushed value.
			if ok && !u.Deleting() && len(options) == 0 {
				s.onRequestAllowed(path, name, u.New)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Paths says where the server keeps its files.
func (s *Server) Paths() Paths { return s.paths }

// Repos lists the repositories served, by name.
func (s *Server) Repos() ([]string, error) { return sshd.ListRepos(s.paths.Repos) }

// Access returns the roles file as it is now (it is re-read when it
// changes; a file that no longer parses is logged and the last good one
// kept).
func (s *Server) Access() *queue.Access { return s.policy.access() }

// PushedByTrustedKey is the server's trust decision for a worker: a
// request is trusted when its value (object, a hex object id) was pushed
// over SSH by a key with the trusted or admin role into the repository
// whose directory is repoDir. why says which key, or why not.
func (s *Server) PushedByTrustedKey(repoDir, object string) (trusted bool, why string) {
	return s.trust.pushedByTrustedKey(s.paths.Repos, repoDir, object)
}

// Banner returns what the start banner says about this server listening
// on addr: the caller adds the repositories and what it knows (the
// worker's signer and concurrency, the site's URL).
func (s *Server) Banner(addr string) Banner {
	pub := s.hostKey.PublicKey()
	return Banner{
		Data: s.paths.Root, Roles: s.paths.Roles, Admins: s.admins, Addr: addr,
		HostKey: strings.TrimSpace(string(gossh.MarshalAuthorizedKey(pub))),
		HostFP:  gossh.FingerprintSHA256(pub),
	}
}

// Serve accepts SSH connections on ln until ctx ends or the SSH server
// fails; then it stops accepting and lets running git sessions finish
// for up to ShutdownGrace (a shutdown that cuts sessions off is logged).
// It returns the error the SSH server failed with, or nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	done := make(chan error, 1)
	go func() { done <- s.ssh.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-done:
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownGrace)
	defer cancel()
	if err := s.ssh.Shutdown(sctx); err != nil {
		s.log.Warn("shutdown", "err", err)
	}
	return err
}

// ListenAndServe listens on Config.Addr and serves there as Serve does.
func (s *Server) ListenAndServe(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		s.Close()
		return fmt.Errorf("listen on %s: %w", s.cfg.Addr, err)
	}
	return s.Serve(ctx, ln)
}

// Close stops the server at once and removes its hook socket; it is for
// a server that is never served, and harmless after Serve returned.
func (s *Server) Close() error { return s.ssh.Close() }
