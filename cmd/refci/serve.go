package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"refci.dev/refci/forge/site"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/gitproto/sshd"
	"refci.dev/refci/results"
	"refci.dev/refci/secrets"
	"refci.dev/refci/server"
	"refci.dev/refci/worker"
	"refci.dev/refci/worker/proc"
)

// serveFlags are the options of refci serve.
type serveFlags struct {
	listen, dataDir, rolesFile, httpAddr, maxPack string
	admins, secretsAdmins, trusted                multiFlag
	conc, maxSessions, keepLast, keepDays         int
	idle, handshake, poll, retention              time.Duration
	noWorker, verbose, requireIso, directClaims   bool
}

func cmdServe(ctx context.Context, e *env, args []string) int {
	var f serveFlags
	fs := newFlags(e, "serve")
	fs.StringVar(&f.listen, "listen", "127.0.0.1:2222", "the SSH address to listen on (port 0: any free port)")
	fs.StringVar(&f.dataDir, "data", "", "where repositories, keys and caches live (default $REFCI_HOME/serve)")
	fs.Var(&f.admins, "admin", "an OpenSSH public key file whose key becomes admin (repeatable; default ~/.ssh/*.pub on first start)")
	fs.StringVar(&f.rolesFile, "roles", "", "the roles file (default DATA/roles; see README, 'refci serve')")
	fs.IntVar(&f.conc, "concurrency", 0, "pipelines the embedded worker runs at once (default: the number of CPUs; 0 workers is not possible)")
	fs.StringVar(&f.httpAddr, "http", "", "also serve the static viewer read-only on this address (e.g. 8080 or 127.0.0.1:8080; loopback unless a host is given)")
	fs.IntVar(&f.maxSessions, "max-sessions", 64, "git sessions at once; more wait up to 10 s")
	fs.StringVar(&f.maxPack, "max-pack", "1G", "largest pack a push may send (bytes, or with K, M, G)")
	fs.DurationVar(&f.idle, "idle", 5*time.Minute, "close connections silent this long")
	fs.DurationVar(&f.handshake, "handshake-timeout", 15*time.Second, "close connections that have not logged in this long after connecting")
	fs.DurationVar(&f.poll, "poll", 30*time.Second, "how often the embedded worker polls without being woken")
	fs.BoolVar(&f.directClaims, "direct-claims", true, "the embedded worker claims a pushed request at once, in the repository itself (false: its loop polls, woken by the push)")
	fs.BoolVar(&f.noWorker, "no-worker", false, "serve git only; requests wait for workers elsewhere (refci worker --remote ssh://...)")
	fs.Var(&f.secretsAdmins, "secrets-admin", "OpenPGP public key of a secrets admin whose signed environments the embedded worker believes (repeatable; default: your own refci key)")
	fs.Var(&f.trusted, "trusted", "OpenPGP public key whose signed request tags or commits run trusted, besides pushes by keys with the trusted role (repeatable)")
	fs.BoolVar(&f.verbose, "v", false, "log debug details")
	fs.BoolVar(&f.requireIso, "require-isolation", false, "fail runs (state error) when the server's files cannot be hidden from pipelines (no user namespaces)")
	fs.DurationVar(&f.retention, "retention", 0, "run refci gc on every repository this often, e.g. 24h (0: never)")
	fs.IntVar(&f.keepLast, "keep-last", results.DefaultRetention.KeepLast, "with --retention: per request, keep its newest N runs")
	fs.IntVar(&f.keepDays, "keep-days", results.DefaultRetention.KeepDays, "with --retention: keep every run younger than D days")
	if _, code, ok := parse(e, fs, args, 0); !ok {
		return code
	}
	packBytes, err := server.ParseSize(f.maxPack)
	if err != nil {
		e.errorf("serve: --max-pack: %v", err)
		return exitUsage
	}
	if f.maxSessions <= 0 || f.idle <= 0 || f.handshake <= 0 || f.conc < 0 {
		e.errorf("serve: --max-sessions, --idle, --handshake-timeout and --concurrency must be positive")
		return exitUsage
	}
	if f.retention < 0 || f.retention > 0 && f.retention < time.Minute {
		e.errorf("serve: --retention %s: use a minute or more (a day is plenty), or 0 for never", f.retention)
		return exitUsage
	}
	if f.keepLast < 0 || f.keepDays < 0 {
		e.errorf("serve: --keep-last and --keep-days take 0 or more")
		return exitUsage
	}
	proc.SetNotDumpable()
	if f.dataDir == "" {
		h, err := e.home()
		if err != nil {
			e.errorf("%v", err)
			return exitUsage
		}
		f.dataDir = filepath.Join(h, "serve")
	}
	self, err := os.Executable()
	if err != nil {
		e.errorf("serve: %v", err)
		return exitInfra
	}
	level := slog.LevelInfo
	if f.verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))

	hookClient, note := sshd.ChooseHookClient(self)
	if note != "" {
		logger.Warn("not using the refci-hook beside refci: every push runs refci itself for its hooks, which costs a few milliseconds more per push; reinstall refci-hook from the same build as refci, or remove it", "reason", note)
	} else if hookClient != "" {
		logger.Debug("hook client for pushes", "refci-hook", hookClient)
	}
	// The embedded worker is made once the server is, for it asks the
	// server about trust; the server, once serving, wakes it and hands it
	// the repositories pushes create.
	var ew *embeddedWorker
	srv, err := server.New(server.Config{
		DataDir: f.dataDir, RolesFile: f.rolesFile, AdminKeyFiles: f.admins, Home: e.getenv("HOME"),
		Addr: f.listen, Logger: logger,
		MaxSessions: f.maxSessions, MaxPackBytes: packBytes, IdleTimeout: f.idle, HandshakeTimeout: f.handshake,
		HookCommand:      []string{self, sshd.HookArg},
		HookClient:       hookClient,
		OnCreate:         func(name, _ string) { ew.addRepo(name) },
		OnRequest:        func(path string, names []string) { ew.dispatch(path, names) },
		OnRequestAllowed: func(path, name, value string) { ew.prepare(path, name, value) },
	})
	switch {
	case errors.Is(err, server.ErrRoles):
		e.errorf("serve: %v", err)
		return exitUsage
	case err != nil:
		e.errorf("serve: %v", err)
		return exitInfra
	}
	defer srv.Close()
	id, err := e.identity("")
	if err != nil {
		e.errorf("%v", err)
		return exitFor(err)
	}
	if f.conc == 0 {
		f.conc = runtime.NumCPU()
	}
	ew, removeRuns, code := newEmbeddedWorker(e, &f, srv, id, self, logger)
	if code != exitOK {
		return code
	}
	defer removeRuns()
	repos, err := srv.Repos()
	if err != nil {
		e.errorf("serve: %v", err)
		return exitInfra
	}
	for _, r := range repos {
		ew.addRepo(r)
	}

	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		e.errorf("serve: listen on %s: %v (choose another address with --listen)", f.listen, err)
		return exitInfra
	}
	var httpSrv *http.Server
	httpURL := ""
	if f.httpAddr != "" {
		if httpSrv, httpURL, code = serveSite(e, f.httpAddr, srv, logger); code != exitOK {
			ln.Close()
			return code
		}
	}

	banner := srv.Banner(ln.Addr().String())
	banner.Signer, banner.Repos, banner.Concurrency, banner.HTTP = id.Fingerprint(), repos, f.conc, httpURL
	if f.noWorker {
		banner.Concurrency = 0
	}
	server.WriteBanner(e.stdout, banner)
	var gc func(context.Context)
	if f.retention > 0 {
		policy := results.Retention{KeepLast: f.keepLast, KeepDays: f.keepDays}
		gc = func(ctx context.Context) { serveRetention(ctx, srv, policy, f.retention, logger) }
	}
	return runServe(ctx, srv, ln, ew, httpSrv, gc, logger, id.Fingerprint(), f.conc)
}

// serveRetention applies policy to every repository the server holds, at
// once and then every interval, until ctx ends (results.Schedule),
// logging one line per repository that had runs to remove. It deletes in
// the repositories themselves, with the same lock-file compare-and-swap
// as git: a push or a run finishing meanwhile is never undone, and the
// runs a claim names are kept.
func serveRetention(ctx context.Context, srv *server.Server, policy results.Retention, every time.Duration, logger *slog.Logger) {
	s := results.Schedule{Policy: policy, Every: every, Logger: logger, Quiet: true,
		Targets: func(context.Context) ([]*results.Target, error) {
			names, err := srv.Repos()
			if err != nil {
				return nil, err
			}
			var targets []*results.Target
			for _, name := range names {
				repo, err := gitproto.Open(filepath.Join(srv.Paths().Repos, filepath.FromSlash(name)))
				if err != nil {
					logger.Warn("retention: cannot open a repository; trying again at the next pass", "repo", name, "err", err)
					continue
				}
				targets = append(targets, results.LocalTarget(repo, name))
			}
			return targets, nil
		}}
	s.Run(ctx)
}

// runServe serves until the first signal (or ctx ends), then drains: no
// new connections, running git sessions finish (bounded), then the
// worker finishes its runs and pushes their results. A second signal, at
// any time until serve returns, cancels the running pipelines. key
// and conc are logged: the worker's signer and concurrency.
func runServe(ctx context.Context, srv *server.Server, ln net.Listener, ew *embeddedWorker, httpSrv *http.Server, gc func(context.Context), logger *slog.Logger, key string, conc int) int {
	stop, stopFn := context.WithCancel(ctx)
	defer stopFn()
	abort, abortFn := context.WithCancel(context.WithoutCancel(ctx))
	defer abortFn()
	serving, drain := context.WithCancel(ctx)
	defer drain()
	stopSignals := onStopSignals(abort, func(s os.Signal) {
		logger.Info("signal: finishing git sessions and running pipelines, accepting nothing new (again to cancel them at once)", "signal", s.String())
		drain()
	}, func(s os.Signal) {
		logger.Warn("second signal: cancelling running pipelines now", "signal", s.String())
		abortFn()
	})
	defer stopSignals()
	workerDone := make(chan error, 1)
	go func() { workerDone <- ew.run(stop, abort) }()
	gcDone := make(chan struct{})
	go func() {
		defer close(gcDone)
		if gc != nil {
			gc(serving)
		}
	}()
	logger.Info("serving", "ssh", ln.Addr().String(), "data", srv.Paths().Root, "key", key, "concurrency", conc)

	code := exitOK
	if err := srv.Serve(serving, ln); err != nil {
		logger.Error("the SSH server stopped", "err", err)
		code = exitInfra
	}
	if httpSrv != nil {
		httpSrv.Close()
	}
	drain()
	<-gcDone
	stopFn()
	if err := <-workerDone; err != nil {
		logger.Error("worker", "err", err)
		code = exitInfra
	}
	logger.Info("stopped")
	return code
}

// embeddedWorker is the worker refci serve runs beside its SSH server.
// With --no-worker it is made but never run: it serves no repository
// and is never woken. Its methods may be called on nil (they do
// nothing), as the server's hooks may before it is made.
type embeddedWorker struct {
	w      *worker.Worker
	off    bool // --no-worker
	direct bool // --direct-claims
	paths  server.Paths
	byURL  sync.Map // remote URL → *gitproto.Remote, for the secrets opener
	log    *slog.Logger
}

// newEmbeddedWorker makes the embedded worker; removeRuns removes the
// directory of its runs.
func newEmbeddedWorker(e *env, f *serveFlags, srv *server.Server, id *secrets.Identity, self string, logger *slog.Logger) (ew *embeddedWorker, removeRuns func(), code int) {
	refciHome, err := e.home()
	if err != nil {
		e.errorf("%v", err)
		return nil, nil, exitUsage
	}
	secretsAdmins, err := secrets.ReadKeyringFiles(f.secretsAdmins...)
	if err != nil {
		e.errorf("serve: --secrets-admin: %v", err)
		return nil, nil, exitUsage
	}
	if len(f.secretsAdmins) == 0 {
		secretsAdmins.Add(id)
	}
	trusted, err := secrets.ReadKeyringFiles(f.trusted...)
	if err != nil {
		e.errorf("serve: --trusted: %v", err)
		return nil, nil, exitUsage
	}
	ew = &embeddedWorker{off: f.noWorker, direct: f.directClaims, paths: srv.Paths(), log: logger}
	opener := secretsOpener(secretsAdmins, id, func(u string) *gitproto.Remote {
		if r, ok := ew.byURL.Load(u); ok {
			return r.(*gitproto.Remote)
		}
		return nil
	})
	// The data dir (host key, roles, repositories, caches, trust
	// records), the roles file and $REFCI_HOME (the key): a pipeline
	// needs none of them; its checkout and socket are in its run
	// directory, under the runs directory, of which it sees only its own.
	sb, err := worker.NewSandbox(worker.SandboxSpec{Isolate: !f.noWorker, Getenv: e.getenv, Self: self,
		Private: []string{ew.paths.Root, ew.paths.Roles, refciHome}, Require: f.requireIso, Log: logger.With("component", "worker")})
	if err != nil {
		e.errorf("serve: %v", err)
		return nil, nil, exitInfra
	}
	pushedByTrustedKey := func(q worker.TrustQuery) (bool, string) {
		return srv.PushedByTrustedKey(q.Remote, q.RequestObject.String())
	}
	host, _ := os.Hostname()
	ew.w = worker.New(worker.Config{
		Poll: f.poll, Concurrency: f.conc, Signer: id, RefciPath: self, Shim: sb.Shim, Host: host, Version: version, TempDir: sb.RunsDir,
		Logger:  logger.With("component", "worker"),
		Trust:   worker.AnyTrust(pushedByTrustedKey, worker.SignatureTrust(trusted)),
		Secrets: opener, Page: renderPage,
		Isolation: sb.Isolation,
	})
	return ew, sb.Close, exitOK
}

// addRepo has the worker serve the repository name.
func (ew *embeddedWorker) addRepo(name string) {
	if ew == nil || ew.off {
		return
	}
	path := filepath.Join(ew.paths.Repos, filepath.FromSlash(name))
	rem, err := gitproto.OpenRemote(path, filepath.Join(ew.paths.Cache, cacheName(path)), nil)
	if err != nil {
		ew.log.Error("the embedded worker cannot serve a repository", "repo", name, "err", err)
		return
	}
	ew.byURL.Store(rem.URL, rem)
	ew.w.AddRemote(rem)
}

// dispatch has the worker take the requests names a push queued in the
// repository at path now: with --direct-claims it claims them itself
// (worker.Dispatch), else its loop polls at once.
func (ew *embeddedWorker) dispatch(path string, names []string) {
	switch {
	case ew == nil || ew.off:
	case ew.direct:
		ew.w.Dispatch(path, names)
	default:
		ew.w.Poke(path)
	}
}

// prepare tells the worker that a push is about to queue request name
// with value in the repository at path (see worker.PrepareClaim).
func (ew *embeddedWorker) prepare(path, name, value string) {
	if ew != nil && !ew.off && ew.direct {
		ew.w.PrepareClaim(path, name, value)
	}
}

// run runs the worker until stop (see worker.Run); with --no-worker it
// only waits for stop.
func (ew *embeddedWorker) run(stop, abort context.Context) error {
	if ew.off {
		<-stop.Done()
		return nil
	}
	return ew.w.Run(stop, abort)
}

// serveSite serves the static viewer read-only on addr (loopback unless
// it names a host) and returns its server and URL.
func serveSite(e *env, addr string, srv *server.Server, logger *slog.Logger) (*http.Server, string, int) {
	if h, p, err := net.SplitHostPort(addr); err == nil && h == "" {
		addr = net.JoinHostPort("127.0.0.1", p) // loopback unless told otherwise
	} else if err != nil && !strings.Contains(addr, ":") {
		addr = net.JoinHostPort("127.0.0.1", addr)
	}
	hl, err := net.Listen("tcp", addr)
	if err != nil {
		e.errorf("serve: --http %s: %v", addr, err)
		return nil, "", exitInfra
	}
	// The site believes what refci view would on this account: this
	// server's own key and $REFCI_HOME/trusted/*.asc.
	siteKeys, err := e.keyring(nil, "")
	if err != nil {
		hl.Close()
		e.errorf("serve: --http: the keys the site trusts: %v", err)
		return nil, "", exitUsage
	}
	lay := srv.Paths()
	viewer := site.NewHandler(lay.Repos, lay.WWW, func() ([]string, error) { return site.ReposOnSite(lay.Repos, srv.Access()) }, siteKeys, logger.With("component", "http"))
	httpSrv := &http.Server{Handler: readOnly(viewer), ReadHeaderTimeout: 10 * time.Second}
	go httpSrv.Serve(hl)
	return httpSrv, "http://" + hl.Addr().String() + "/", exitOK
}

// readOnly refuses every method but GET and HEAD.
func readOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "read-only", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("X-Content-Type-Options", "nosniff")
		h.ServeHTTP(w, r)
	})
}
