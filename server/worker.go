package server

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/worker"
)

// WorkerConfig says how Server.NewWorker builds the embedded worker.
type WorkerConfig struct {
	// Worker configures the worker itself (poll interval, concurrency,
	// signer, logger, page renderer...). NewWorker sets its Remotes
	// (the server's repositories), TempDir, Shim and Isolation (from
	// the sandbox it prepares) and wraps its Trust: a request pushed
	// over SSH by a key with the trusted or admin role is trusted, and
	// any other is trusted when Worker.Trust (nil: none) says so.
	Worker worker.Config
	// Secrets, when set, makes the worker's Secrets (the opener of a
	// run's secrets environment), given the worker's remotes by URL:
	// an environment is read from the repository the request was
	// pushed to. Nil: Worker.Secrets is kept.
	Secrets func(remotes func(url string) *gitproto.Remote) worker.SecretsFunc
	// Direct: the requests a push queues are claimed at once, in the
	// repository itself (worker.Worker.Dispatch, prepared by
	// PrepareClaim while the push is checked); false: a push only wakes
	// the worker's loop of that repository, which polls.
	Direct bool
	// Private lists more paths no pipeline may see (the signer's key,
	// $REFCI_HOME), besides the data directory and the roles file,
	// which NewWorker hides always.
	Private []string
	// RequireIsolation fails runs (state error) when pipelines cannot
	// be isolated (no user namespaces) instead of running them
	// unisolated.
	RequireIsolation bool
	// Getenv reads the process environment (for the credentials every
	// user has, which pipelines may not see); nil is os.Getenv.
	Getenv func(string) string
	// Self is refci's executable: the per-run shim is chosen beside it.
	Self string
}

// Worker is the worker refci serve runs beside its SSH server, on the
// same machine: it serves every repository of the server (each one a
// remote that is a directory, with its cache in Paths.Cache), the ones
// pushes create included; a push that queues requests hands them to it
// at once; it trusts what keys with the trusted role pushed; and its
// pipelines run isolated from the server's own files.
//
// Lifecycle: Server.NewWorker makes it and attaches it to the server;
// Run runs it until stop (run it once, while or before the server
// serves); Close removes the directory of its runs once Run returned.
// A nil *Worker is a server without a worker (refci serve --no-worker):
// Run waits for stop, Close does nothing. The methods are safe for
// concurrent use.
type Worker struct {
	w       *worker.Worker
	srv     *Server
	direct  bool
	sandbox *worker.Sandbox
	byURL   sync.Map // remote URL → *gitproto.Remote, for the secrets opener
}

// ErrHasWorker is returned by NewWorker for a server that has a worker
// already.
var ErrHasWorker = errors.New("the server has a worker already")

// NewWorker prepares the embedded worker of s (see Worker) from cfg and
// attaches it: from now on a push that creates a repository or queues
// requests tells it. It serves the repositories s holds now, and those
// pushes create. Errors: ErrHasWorker, a runs directory that cannot be
// made, a failure to list the repositories. (Isolation that this machine
// cannot give is no error here: runs then go unisolated, or end in state
// error with RequireIsolation.)
func (s *Server) NewWorker(cfg WorkerConfig) (*Worker, error) {
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	log := cfg.Worker.Logger
	// The data dir (host key, roles, repositories, caches, trust
	// records) and the roles file: a pipeline needs none of them; its
	// checkout and socket are in its run directory, under the runs
	// directory, of which it sees only its own.
	sb, err := worker.NewSandbox(worker.SandboxSpec{Isolate: true, Getenv: getenv, Self: cfg.Self,
		Private: append([]string{s.paths.Root, s.paths.Roles}, cfg.Private...), Require: cfg.RequireIsolation, Log: log})
	if err != nil {
		return nil, err
	}
	ew := &Worker{srv: s, direct: cfg.Direct, sandbox: sb}
	wc := cfg.Worker
	wc.Remotes = nil
	wc.TempDir, wc.Shim, wc.Isolation = sb.RunsDir, sb.Shim, sb.Isolation
	pushedByTrustedKey := func(q worker.TrustQuery) (bool, string) {
		return s.PushedByTrustedKey(q.Remote, q.RequestObject.String())
	}
	if wc.Trust != nil {
		wc.Trust = worker.AnyTrust(pushedByTrustedKey, wc.Trust)
	} else {
		wc.Trust = pushedByTrustedKey
	}
	if cfg.Secrets != nil {
		wc.Secrets = cfg.Secrets(ew.remote)
	}
	ew.w = worker.New(wc)
	if !s.worker.CompareAndSwap(nil, ew) {
		sb.Close()
		return nil, ErrHasWorker
	}
	// Attached first, listed second: a repository a push creates
	// meanwhile is added twice, which does nothing the second time.
	repos, err := s.Repos()
	if err != nil {
		s.worker.Store(nil)
		sb.Close()
		return nil, err
	}
	for _, name := range repos {
		ew.addRepo(name)
	}
	return ew, nil
}

// remote returns the served remote whose URL is url, or nil.
func (ew *Worker) remote(url string) *gitproto.Remote {
	if r, ok := ew.byURL.Load(url); ok {
		return r.(*gitproto.Remote)
	}
	return nil
}

// addRepo has the worker serve the repository name; a failure is logged.
func (ew *Worker) addRepo(name string) {
	if ew == nil {
		return
	}
	path := filepath.Join(ew.srv.paths.Repos, filepath.FromSlash(name))
	rem, err := gitproto.OpenRemote(path, filepath.Join(ew.srv.paths.Cache, gitproto.CacheName(path)), nil)
	if err != nil {
		ew.srv.log.Error("the embedded worker cannot serve a repository", "repo", name, "err", err)
		return
	}
	ew.byURL.Store(rem.URL, rem)
	ew.w.AddRemote(rem)
}

// pushed has the worker take the requests names a push queued in the
// repository at path: with Direct it claims them itself
// (worker.Worker.Dispatch), else its loop polls at once.
func (ew *Worker) pushed(path string, names []string) {
	switch {
	case ew == nil:
	case ew.direct:
		ew.w.Dispatch(path, names)
	default:
		ew.w.Poke(path)
	}
}

// allowed tells the worker that a push is about to set request name to
// value in the repository at path (see worker.Worker.PrepareClaim).
func (ew *Worker) allowed(path, name, value string) {
	if ew != nil && ew.direct {
		ew.w.PrepareClaim(path, name, value)
	}
}

// Run runs the worker until stop ends (see worker.Worker.Run: stop ends
// claiming, and the running pipelines finish and their results are
// pushed; abort cancels them). On a nil Worker it waits for stop and
// returns nil.
func (ew *Worker) Run(stop, abort context.Context) error {
	if ew == nil {
		<-stop.Done()
		return nil
	}
	return ew.w.Run(stop, abort)
}

// Close detaches the worker from its server and removes the directory of
// its runs; call it once Run returned (or if Run is never called).
func (ew *Worker) Close() {
	if ew == nil {
		return
	}
	ew.srv.worker.CompareAndSwap(ew, nil)
	ew.sandbox.Close()
}

// Config.OnCreate, OnRequest and OnRequestAllowed, then the worker: the
// hooks New gives the SSH endpoint and the receiver.

func (s *Server) onCreate(repo, path string) {
	if s.cfg.OnCreate != nil {
		s.cfg.OnCreate(repo, path)
	}
	s.worker.Load().addRepo(repo)
}

func (s *Server) onRequest(path string, names []string) {
	if s.cfg.OnRequest != nil {
		s.cfg.OnRequest(path, names)
	}
	s.worker.Load().pushed(path, names)
}

func (s *Server) onRequestAllowed(path, name, value string) {
	if s.cfg.OnRequestAllowed != nil {
		s.cfg.OnRequestAllowed(path, name, value)
	}
	s.worker.Load().allowed(path, name, value)
}
