package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
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
	logger := e.cli().Logger(f.verbose)

	hookClient, note := sshd.ChooseHookClient(self)
	if note != "" {
		logger.Warn("not using the refci-hook beside refci: every push runs refci itself for its hooks, which costs a few milliseconds more per push; reinstall refci-hook from the same build as refci, or remove it", "reason", note)
	} else if hookClient != "" {
		logger.Debug("hook client for pushes", "refci-hook", hookClient)
	}
	srv, err := server.New(server.Config{
		DataDir: f.dataDir, RolesFile: f.rolesFile, AdminKeyFiles: f.admins, Home: e.getenv("HOME"),
		Addr: f.listen, Logger: logger,
		MaxSessions: f.maxSessions, MaxPackBytes: packBytes, IdleTimeout: f.idle, HandshakeTimeout: f.handshake,
		HookCommand: []string{self, sshd.HookArg},
		HookClient:  hookClient,
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
	ew, code := newEmbeddedWorker(e, &f, srv, id, self, logger)
	if code != exitOK {
		return code
	}
	defer ew.Close()
	repos, err := srv.Repos()
	if err != nil {
		e.errorf("serve: %v", err)
		return exitInfra
	}

	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		e.errorf("serve: listen on %s: %v (choose another address with --listen)", f.listen, err)
		return exitInfra
	}
	var httpSite *server.Site
	if f.httpAddr != "" {
		if httpSite, code = serveSite(e, f.httpAddr, srv, logger); code != exitOK {
			ln.Close()
			return code
		}
	}

	banner := srv.Banner(ln.Addr().String())
	banner.Signer, banner.Repos, banner.Concurrency = id.Fingerprint(), repos, f.conc
	if httpSite != nil {
		banner.HTTP = httpSite.URL()
	}
	if f.noWorker {
		banner.Concurrency = 0
	}
	server.WriteBanner(e.stdout, banner)
	var gc *results.Schedule
	if f.retention > 0 {
		gc = srv.Retention(results.Retention{KeepLast: f.keepLast, KeepDays: f.keepDays}, f.retention)
	}
	return runServe(ctx, srv, ln, ew, httpSite, gc, logger, id.Fingerprint(), f.conc)
}

// runServe serves until the first signal (or ctx ends), then drains
// (server.Server.Run). A second signal, at any time until serve returns,
// cancels the running pipelines. key and conc are logged: the worker's
// signer and concurrency.
func runServe(ctx context.Context, srv *server.Server, ln net.Listener, ew *server.Worker, httpSite *server.Site, gc *results.Schedule, logger *slog.Logger, key string, conc int) int {
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
	logger.Info("serving", "ssh", ln.Addr().String(), "data", srv.Paths().Root, "key", key, "concurrency", conc)
	code := exitOK
	if err := srv.Run(serving, ctx, abort, ln, ew, httpSite, gc); err != nil {
		code = exitInfra
	}
	logger.Info("stopped")
	return code
}

// newEmbeddedWorker makes the worker refci serve runs beside its SSH
// server (nil with --no-worker: the server only serves git).
func newEmbeddedWorker(e *env, f *serveFlags, srv *server.Server, id *secrets.Identity, self string, logger *slog.Logger) (*server.Worker, int) {
	refciHome, err := e.home()
	if err != nil {
		e.errorf("%v", err)
		return nil, exitUsage
	}
	secretsAdmins, err := secrets.ReadKeyringFiles(f.secretsAdmins...)
	if err != nil {
		e.errorf("serve: --secrets-admin: %v", err)
		return nil, exitUsage
	}
	if len(f.secretsAdmins) == 0 {
		secretsAdmins.Add(id)
	}
	trusted, err := secrets.ReadKeyringFiles(f.trusted...)
	if err != nil {
		e.errorf("serve: --trusted: %v", err)
		return nil, exitUsage
	}
	if f.noWorker {
		return nil, exitOK
	}
	host, _ := os.Hostname()
	ew, err := srv.NewWorker(server.WorkerConfig{
		Worker: worker.Config{
			Poll: f.poll, Concurrency: f.conc, Signer: id, RefciPath: self, Host: host, Version: version,
			Logger: logger.With("component", "worker"),
			Trust:  worker.SignatureTrust(trusted),
			Page:   renderPage,
		},
		Secrets: func(remotes func(string) *gitproto.Remote) worker.SecretsFunc {
			return secretsOpener(secretsAdmins, id, remotes)
		},
		Direct:           f.directClaims,
		Private:          []string{refciHome}, // the key
		RequireIsolation: f.requireIso,
		Getenv:           e.getenv,
		Self:             self,
	})
	if err != nil {
		e.errorf("serve: %v", err)
		return nil, exitInfra
	}
	return ew, exitOK
}

// serveSite serves the static viewer read-only on addr (loopback unless
// it names a host).
func serveSite(e *env, addr string, srv *server.Server, logger *slog.Logger) (*server.Site, int) {
	hs, err := server.ListenSite(addr)
	if err != nil {
		e.errorf("serve: --http %v", err)
		return nil, exitInfra
	}
	// The site believes what refci view would on this account: this
	// server's own key and $REFCI_HOME/trusted/*.asc.
	siteKeys, err := e.keyring(nil, "")
	if err != nil {
		hs.Close()
		e.errorf("serve: --http: the keys the site trusts: %v", err)
		return nil, exitUsage
	}
	lay := srv.Paths()
	viewer := site.NewHandler(lay.Repos, lay.WWW, func() ([]string, error) { return site.ReposOnSite(lay.Repos, srv.Access()) }, siteKeys, logger.With("component", "http"))
	go hs.Serve(viewer)
	return hs, exitOK
}
