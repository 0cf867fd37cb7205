package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"refci.dev/refci/cmd/internal/cli"
	"refci.dev/refci/forge/link"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/results"
	"refci.dev/refci/secrets"
	"refci.dev/refci/worker"
	"refci.dev/refci/worker/proc"
	"refci.dev/refci/worker/workerconf"
)

func cmdWorker(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "worker")
	var remotes multiFlag
	fs.Var(&remotes, "remote", "a git remote to serve (repeatable): file://, ssh://, https:// or scp-like host:path")
	configFile := fs.String("config", "", "a TOML configuration file (see README)")
	poll := fs.Duration("poll", 0, "how often to poll each remote (default 10s)")
	conc := fs.Int("concurrency", 0, "pipelines run at once (default: the number of CPUs)")
	lease := fs.Duration("lease", 0, "claim lease; renewed every third of it (default 60s)")
	grace := fs.Duration("grace", 0, "on the first SIGTERM/SIGINT, how long running pipelines may finish (default 30s)")
	timeout := fs.Duration("timeout", 0, "default pipeline timeout (default 1h; a request may ask for another)")
	maxTimeout := fs.Duration("max-timeout", 0, "the longest timeout a request may ask for; longer ones are capped (default 6h)")
	maxAttempts := fs.Int("max-attempts", 0, "attempts of a request whose worker is lost each time before it ends in state error (default 3)")
	keyFile := fs.String("key", "", "sign with this private key instead of $REFCI_HOME/key.asc")
	cache := fs.String("cache", "", "where the bare cache repositories live (default $REFCI_HOME/cache)")
	logCap := fs.Int64("log-cap", 0, "bytes of log kept per run and per job")
	verbose := fs.Bool("v", false, "log every claim race and poll")
	requireIso := fs.Bool("require-isolation", false, "fail runs (state error) when the worker's files cannot be hidden from pipelines (no user namespaces)")
	var adminFiles, trustedFiles multiFlag
	fs.Var(&adminFiles, "admin", "public key of a secrets admin: environments signed by it are believed (repeatable; added to admins in the config)")
	fs.Var(&trustedFiles, "trusted", "public key of a trusted requester: requests whose tag or commit it signed get secrets (repeatable; added to trusted in the config)")
	if _, code, ok := parse(e, fs, args, 0); !ok {
		return code
	}
	var cfg workerconf.Config
	if *configFile != "" {
		if _, ok := cli.ReadConfig(e.cli(), *configFile, &cfg, workerconf.Settings, link.IsChildSetting); !ok {
			return exitUsage
		}
	}
	cfg.Apply(workerconf.Flags{Remotes: remotes, Poll: *poll, Lease: *lease, Grace: *grace, Timeout: *timeout, MaxTimeout: *maxTimeout,
		MaxAttempts: *maxAttempts, Concurrency: *conc, Key: *keyFile, Cache: *cache, LogCap: *logCap, RequireIsolation: *requireIso,
		Admins: adminFiles, Trusted: trustedFiles})
	admins, err := secrets.ReadKeyringFiles(cfg.Admins...)
	if err != nil {
		e.errorf("worker: admins: %v", err)
		return exitUsage
	}
	trusted, err := secrets.ReadKeyringFiles(cfg.Trusted...)
	if err != nil {
		e.errorf("worker: trusted: %v", err)
		return exitUsage
	}
	retention, err := cfg.Check(*configFile)
	if err != nil {
		e.errorf("%v", err)
		return exitUsage
	}

	proc.SetNotDumpable()
	id, err := e.identity(cfg.Key)
	if err != nil {
		e.errorf("%v", err)
		return exitFor(err)
	}
	// Hidden from pipelines: the key (all of $REFCI_HOME when it is
	// there), the caches, the configuration, the forges' and mail's
	// secrets.
	var home string
	if cfg.NeedsHome() {
		if home, err = e.home(); err != nil {
			e.errorf("%v", err)
			return exitUsage
		}
	}
	private := cfg.Private(home, *configFile)
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
	var rems []*gitproto.Remote
	for _, u := range cfg.Remotes {
		r, err := gitproto.OpenRemote(u, filepath.Join(cfg.Cache, gitproto.CacheName(u)), nil)
		if err != nil {
			e.errorf("remote %s: %v", gitproto.RedactURL(u), err)
			return exitInfra
		}
		rems = append(rems, r)
	}
	// The forges and the mail bridge run in refci-forge, a supervised
	// child: a mistake in [[forge]] or [mail] stops the worker at once
	// (the child says it before it is ready); mail servers that cannot
	// be reached do not (a mail outage must not stop CI).
	var fc *link.Child
	var wp atomic.Pointer[worker.Worker] // set before the loop runs
	if cfg.Wanted() {
		path, code := findForge(e, "worker: [[forge]] and [mail]")
		if path == "" {
			return code
		}
		// The bridge asked for a run: the worker polls that remote now.
		asked := func(url string) {
			if w := wp.Load(); w != nil {
				for i, r := range rems {
					if cfg.Remotes[i] == url {
						w.Poke(r.URL)
					}
				}
			}
		}
		fc, err = link.Open(ctx, link.Config{Path: path, Args: link.WorkerArgs(*configFile, cfg.Key, *verbose), Asked: asked, Log: e.stderr, Logger: logger,
			Start: link.Start{Remotes: cfg.Remotes, Cache: cfg.Cache, Poll: cfg.Poll}})
		var refused *link.FailError
		switch {
		case errors.As(err, &refused):
			e.errorf("%s", refused.Error())
			return refused.Exit
		case err != nil:
			e.errorf("worker: the forges and mail (refci-forge): %v", err)
			return exitInfra
		}
	}
	// After a push of run refs to a remote, the mirrors and the bridge of
	// that remote look at once.
	var pushed func(string)
	if fc != nil {
		pushed = func(u string) {
			for i, r := range rems {
				if r.URL == u {
					fc.Pushed(cfg.Remotes[i])
				}
			}
		}
	}
	self, _ := os.Executable()
	// What refci's own git, ssh and gpg read stays read-only for
	// pipelines, and so do the remotes on this machine.
	var localRemotes []string
	for _, r := range rems {
		localRemotes = append(localRemotes, r.LocalDir())
	}
	sb, err := worker.NewSandbox(worker.SandboxSpec{Isolate: true, Getenv: e.getenv, Self: self, Private: private,
		ReadOnly: localRemotes, Writable: cfg.Writable, Require: cfg.RequireIsolation, Log: logger})
	if err != nil {
		e.errorf("worker: %v", err)
		return exitInfra
	}
	defer sb.Close()
	host, _ := os.Hostname()
	byURL := map[string]*gitproto.Remote{}
	for _, r := range rems {
		byURL[r.URL] = r
	}
	opener := secretsOpener(admins, id, func(u string) *gitproto.Remote { return byURL[u] })
	w := worker.New(worker.Config{
		Remotes: rems, Poll: cfg.Poll.Duration, Concurrency: cfg.Concurrency, Lease: cfg.Lease.Duration,
		Grace: cfg.Grace.Duration, MaxTimeout: cfg.MaxTimeout.Duration, MaxAttempts: cfg.MaxAttempts,
		Limits: worker.Limits{Timeout: cfg.Timeout.Duration, KillGrace: cfg.KillGrace.Duration,
			LogCap: cfg.LogCap, ArtifactFileCap: cfg.ArtifactCap, ArtifactTotalCap: cfg.ArtifactsTotalCap},
		Signer: id, RefciPath: self, Shim: sb.Shim, Host: host, Version: version, Logger: logger,
		Trust: worker.SignatureTrust(trusted), Secrets: opener, Page: renderPage, Pushed: pushed,
		Isolation: sb.Isolation, TempDir: sb.RunsDir,
	})
	wp.Store(w)
	stop, stopFn := context.WithCancel(ctx)
	defer stopFn()
	abort, abortFn := context.WithCancel(context.WithoutCancel(ctx))
	defer abortFn()
	// Logged once done: a line read means claiming has stopped.
	stopSignals := onStopSignals(context.WithoutCancel(ctx), func(s os.Signal) {
		stopFn()
		logger.Info("signal: finishing running pipelines, claiming nothing more (again to cancel them at once)", "signal", s.String())
	}, func(s os.Signal) {
		abortFn()
		logger.Warn("second signal: cancelling running pipelines now", "signal", s.String())
	})
	defer stopSignals()
	var names []string
	for _, r := range rems {
		names = append(names, gitproto.RedactURL(r.URL))
	}
	logger.Info("worker started", "key", id.Fingerprint(), "remotes", strings.Join(names, " "), "concurrency", cfg.Concurrency, "cache", cfg.Cache,
		"admins", admins.Len(), "trusted", trusted.Len())
	for _, r := range rems {
		if r.LocalDir() == "" {
			continue
		}
		if direct, why := r.Direct(ctx); direct {
			logger.Info("a remote on this machine: updated directly (index-pack and update-ref), not with git push", "remote", gitproto.RedactURL(r.URL))
		} else {
			logger.Info("a remote on this machine: updated with git push", "remote", gitproto.RedactURL(r.URL), "because", why)
		}
	}
	// The forges and mail run beside the loop, and stop after it.
	mirrorCtx, stopMirrors := context.WithCancel(context.WithoutCancel(ctx))
	forgeDone := make(chan struct{})
	go func() {
		defer close(forgeDone)
		if fc != nil {
			fc.Supervise(mirrorCtx)
		}
	}()
	retentionDone := make(chan struct{})
	go func() {
		defer close(retentionDone)
		if cfg.Retention != nil {
			runRetention(mirrorCtx, cfg.Remotes, cfg.Cache, retention, cfg.Retention.Every.Duration, logger)
		}
	}()
	err = w.Run(stop, abort)
	stopMirrors()
	<-forgeDone
	<-retentionDone
	if err != nil {
		e.errorf("worker: %v", err)
		return exitInfra
	}
	logger.Info("worker stopped")
	return exitOK
}

// runRetention applies policy to each remote at once and then every
// interval, until ctx ends (results.Schedule). Each remote's runs are
// read through a cache of their own beside the worker's
// (<cache>/<name>-gc.git), never the worker's, whose run refs are its
// outbox's. A run the worker is running or has yet to publish is named
// by its claim on the remote, so gc keeps it; a result waiting in the
// outbox is not on the remote at all.
func runRetention(ctx context.Context, urls []string, cacheDir string, policy results.Retention, every time.Duration, logger *slog.Logger) {
	var targets []*results.Target
	for _, u := range urls {
		r, err := gitproto.OpenRemote(u, filepath.Join(cacheDir, strings.TrimSuffix(gitproto.CacheName(u), ".git")+"-gc.git"), nil)
		if err != nil {
			logger.Warn("retention: cannot open the remote's cache; no gc for it", "remote", gitproto.RedactURL(u), "err", err)
			continue
		}
		targets = append(targets, results.RemoteTarget(r))
	}
	s := results.Schedule{Policy: policy, Every: every, Logger: logger,
		Targets: func(context.Context) ([]*results.Target, error) { return targets, nil }}
	s.Run(ctx)
}
