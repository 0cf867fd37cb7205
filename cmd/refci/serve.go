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

	"refci.dev/refci/gitproto"
	"refci.dev/refci/gitproto/sshd"
	"refci.dev/refci/secrets"
	"refci.dev/refci/server"
	"refci.dev/refci/worker"
)

func cmdServe(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "serve")
	listen := fs.String("listen", "127.0.0.1:2222", "the SSH address to listen on (port 0: any free port)")
	dataDir := fs.String("data", "", "where repositories, keys and caches live (default $REFCI_HOME/serve)")
	var admins multiFlag
	fs.Var(&admins, "admin", "an OpenSSH public key file whose key becomes admin (repeatable; default ~/.ssh/*.pub on first start)")
	rolesFile := fs.String("roles", "", "the roles file (default DATA/roles; see README, 'refci serve')")
	conc := fs.Int("concurrency", 0, "pipelines the embedded worker runs at once (default: the number of CPUs; 0 workers is not possible)")
	httpAddr := fs.String("http", "", "also serve the static viewer read-only on this address (e.g. 8080 or 127.0.0.1:8080; loopback unless a host is given)")
	maxSessions := fs.Int("max-sessions", 64, "git sessions at once; more wait up to 10 s")
	maxPack := fs.String("max-pack", "1G", "largest pack a push may send (bytes, or with K, M, G)")
	idle := fs.Duration("idle", 5*time.Minute, "close connections silent this long")
	handshake := fs.Duration("handshake-timeout", 15*time.Second, "close connections that have not logged in this long after connecting")
	poll := fs.Duration("poll", 30*time.Second, "how often the embedded worker polls without being woken")
	noWorker := fs.Bool("no-worker", false, "serve git only; requests wait for workers elsewhere (refci worker --remote ssh://...)")
	var secretsAdminFiles, trustedFiles multiFlag
	fs.Var(&secretsAdminFiles, "secrets-admin", "OpenPGP public key of a secrets admin whose signed environments the embedded worker believes (repeatable; default: your own refci key)")
	fs.Var(&trustedFiles, "trusted", "OpenPGP public key whose signed request tags or commits run trusted, besides pushes by keys with the trusted role (repeatable)")
	verbose := fs.Bool("v", false, "log debug details")
	requireIso := fs.Bool("require-isolation", false, "fail runs (state error) when the server's files cannot be hidden from pipelines (no user namespaces)")
	if _, code, ok := parse(e, fs, args, 0); !ok {
		return code
	}
	packBytes, err := server.ParseSize(*maxPack)
	if err != nil {
		e.errorf("serve: --max-pack: %v", err)
		return exitUsage
	}
	if *maxSessions <= 0 || *idle <= 0 || *handshake <= 0 || *conc < 0 {
		e.errorf("serve: --max-sessions, --idle, --handshake-timeout and --concurrency must be positive")
		return exitUsage
	}
	noDump()
	if *dataDir == "" {
		h, err := e.home()
		if err != nil {
			e.errorf("%v", err)
			return exitUsage
		}
		*dataDir = filepath.Join(h, "serve")
	}
	self, err := os.Executable()
	if err != nil {
		e.errorf("serve: %v", err)
		return exitInfra
	}

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))

	// The embedded worker is made after the server, which it asks about
	// trust; the server wakes it and adds the repositories pushes create.
	var w *worker.Worker
	var addRepo func(name string)
	srv, err := server.New(server.Config{
		DataDir: *dataDir, RolesFile: *rolesFile, AdminKeyFiles: admins, Home: e.getenv("HOME"),
		Addr: *listen, Logger: logger,
		MaxSessions: *maxSessions, MaxPackBytes: packBytes, IdleTimeout: *idle, HandshakeTimeout: *handshake,
		HookCommand: []string{self, sshd.HookArg},
		OnCreate:    func(name, _ string) { addRepo(name) },
		OnRequest: func(path string) {
			if !*noWorker {
				w.Poke(path)
			}
		},
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
	lay := srv.Paths()
	id, err := e.identity("")
	if err != nil {
		e.errorf("%v", err)
		return exitFor(err)
	}
	refciHome, err := e.home()
	if err != nil {
		e.errorf("%v", err)
		return exitUsage
	}
	if *conc == 0 {
		*conc = runtime.NumCPU()
	}

	secretsAdmins, err := secrets.ReadKeyringFiles(secretsAdminFiles...)
	if err != nil {
		e.errorf("serve: --secrets-admin: %v", err)
		return exitUsage
	}
	if len(secretsAdminFiles) == 0 {
		secretsAdmins.Add(id)
	}
	trusted, err := secrets.ReadKeyringFiles(trustedFiles...)
	if err != nil {
		e.errorf("serve: --trusted: %v", err)
		return exitUsage
	}
	host, _ := os.Hostname()
	var byPath sync.Map // remote URL → *gitproto.Remote, for the secrets opener
	opener := &envOpener{admins: secretsAdmins, key: id, remotes: func(u string) *gitproto.Remote {
		if r, ok := byPath.Load(u); ok {
			return r.(*gitproto.Remote)
		}
		return nil
	}}
	runs, runsHide, removeRuns, err := runsDir()
	if err != nil {
		e.errorf("serve: %v", err)
		return exitInfra
	}
	defer removeRuns()
	shim := self
	if !*noWorker {
		warnIfRoot(logger)
		shim = chooseShim(logger.With("component", "worker"), self)
	}
	pushedByTrustedKey := func(q worker.TrustQuery) (bool, string) {
		return srv.PushedByTrustedKey(q.Remote, q.RequestObject.String())
	}
	w = worker.New(worker.Config{
		Poll: *poll, Concurrency: *conc, Signer: id, RefciPath: self, Shim: shim, Host: host, Version: version, TempDir: runs,
		Logger:  logger.With("component", "worker"),
		Trust:   anyTrust(pushedByTrustedKey, signatureTrust(trusted)),
		Secrets: opener.open, Page: renderPage,
		// The data dir (host key, roles, repositories, caches, trust
		// records), the roles file and $REFCI_HOME (the key): a pipeline
		// needs none of them; its checkout and socket are in its run
		// directory, under runs, of which it sees only its own. What
		// refci's own git, ssh and gpg read stays read-only.
		Hide:     hidePaths(append(append([]string{lay.Root, lay.Roles, refciHome}, defaultHomes(e)...), runsHide...)...),
		ReadOnly: readOnlyPaths(e, []string{self, shim}), RequireIsolation: *requireIso,
	})
	if !*noWorker {
		checkIsolation(logger.With("component", "worker"), shim, *requireIso)
	}
	addRepo = func(name string) {
		if *noWorker {
			return
		}
		path := filepath.Join(lay.Repos, filepath.FromSlash(name))
		rem, err := gitproto.OpenRemote(path, filepath.Join(lay.Cache, cacheName(path)), nil)
		if err != nil {
			logger.Error("the embedded worker cannot serve a repository", "repo", name, "err", err)
			return
		}
		byPath.Store(rem.URL, rem)
		w.AddRemote(rem)
	}
	repos, err := srv.Repos()
	if err != nil {
		e.errorf("serve: %v", err)
		return exitInfra
	}
	for _, r := range repos {
		addRepo(r)
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		e.errorf("serve: listen on %s: %v (choose another address with --listen)", *listen, err)
		return exitInfra
	}
	var httpSrv *http.Server
	httpURL := ""
	if *httpAddr != "" {
		if h, p, err := net.SplitHostPort(*httpAddr); err == nil && h == "" {
			*httpAddr = net.JoinHostPort("127.0.0.1", p) // loopback unless told otherwise
		} else if err != nil && !strings.Contains(*httpAddr, ":") {
			*httpAddr = net.JoinHostPort("127.0.0.1", *httpAddr)
		}
		hl, err := net.Listen("tcp", *httpAddr)
		if err != nil {
			ln.Close()
			e.errorf("serve: --http %s: %v", *httpAddr, err)
			return exitInfra
		}
		// The site believes what refci view would on this account: this
		// server's own key and $REFCI_HOME/trusted/*.asc.
		siteKeys, err := e.keyring(nil, "")
		if err != nil {
			hl.Close()
			ln.Close()
			e.errorf("serve: --http: the keys the site trusts: %v", err)
			return exitUsage
		}
		site := &siteServer{Repos: lay.Repos, WWW: lay.WWW, Keys: siteKeys, List: func() ([]string, error) { return siteRepos(lay.Repos, srv.Access()) }, Log: logger.With("component", "http")}
		httpSrv = &http.Server{Handler: readOnly(site), ReadHeaderTimeout: 10 * time.Second}
		httpURL = "http://" + hl.Addr().String() + "/"
		go httpSrv.Serve(hl)
	}

	banner := srv.Banner(ln.Addr().String())
	banner.Signer, banner.Repos, banner.Concurrency, banner.HTTP = id.Fingerprint(), repos, *conc, httpURL
	if *noWorker {
		banner.Concurrency = 0
	}
	server.WriteBanner(e.stdout, banner)

	// Two stages: the first signal drains the SSH server, then the worker
	// finishes its runs and pushes their results; the second (until the
	// worker is told to stop) cancels the running pipelines.
	stop, stopFn := context.WithCancel(ctx)
	defer stopFn()
	abort, abortFn := context.WithCancel(context.WithoutCancel(ctx))
	defer abortFn()
	serving, drain := context.WithCancel(ctx)
	defer drain()
	stopSignals := onStopSignals(stop, func(s os.Signal) {
		logger.Info("signal: finishing git sessions and running pipelines, accepting nothing new (again to cancel them at once)", "signal", s.String())
		drain()
	}, func(s os.Signal) {
		logger.Warn("second signal: cancelling running pipelines now", "signal", s.String())
		abortFn()
	})
	defer stopSignals()
	workerDone := make(chan error, 1)
	if *noWorker {
		go func() { <-stop.Done(); workerDone <- nil }()
	} else {
		go func() { workerDone <- w.Run(stop, abort) }()
	}
	logger.Info("serving", "ssh", ln.Addr().String(), "data", lay.Root, "key", id.Fingerprint(), "concurrency", *conc)

	code := exitOK
	// Drain: no new connections, running git sessions finish (bounded),
	// then the worker finishes its runs and pushes their results.
	if err := srv.Serve(serving, ln); err != nil {
		logger.Error("the SSH server stopped", "err", err)
		code = exitInfra
	}
	if httpSrv != nil {
		httpSrv.Close()
	}
	stopFn()
	if err := <-workerDone; err != nil {
		logger.Error("worker", "err", err)
		code = exitInfra
	}
	logger.Info("stopped")
	return code
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
