package main

import (
	"context"
	"errors"
	"os"
	"sync/atomic"

	"refci.dev/refci/cmd/internal/cli"
	"refci.dev/refci/forge/link"
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
	logger := e.cli().Logger(*verbose)
	rems, err := worker.OpenRemotes(cfg.Remotes, cfg.Cache)
	if err != nil {
		e.errorf("%v", err)
		return exitInfra
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
				for _, u := range rems.Opened(url) {
					w.Poke(u)
				}
			}
		}
		fc, err = link.Open(ctx, link.Config{Path: path, Args: link.WorkerArgs(*configFile, cfg.Key, *verbose), Asked: asked, Log: e.stderr, Logger: logger,
			Start: link.Start{Remotes: cfg.Remotes, Cache: cfg.Cache, Poll: cfg.Poll},
			// A restart runs what is on disk then: not half of an upgrade.
			Check: func() error { return forgeOfThisBuild(path) }})
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
			for _, c := range rems.Configured(u) {
				fc.Pushed(c)
			}
		}
	}
	self, _ := os.Executable()
	// What refci's own git, ssh and gpg read stays read-only for
	// pipelines, and so do the remotes on this machine.
	sb, err := worker.NewSandbox(worker.SandboxSpec{Isolate: true, Getenv: e.getenv, Self: self, Private: private,
		ReadOnly: rems.LocalDirs(), Writable: cfg.Writable, Require: cfg.RequireIsolation, Log: logger})
	if err != nil {
		if fc != nil { // stop it (Supervise of an ended context stops the child)
			done, cancel := context.WithCancel(ctx)
			cancel()
			fc.Supervise(done)
		}
		e.errorf("worker: %v", err)
		return exitInfra
	}
	defer sb.Close()
	host, _ := os.Hostname()
	opener := secretsOpener(admins, id, rems.Lookup)
	w := worker.New(worker.Config{
		Remotes: rems.List(), Poll: cfg.Poll.Duration, Concurrency: cfg.Concurrency, Lease: cfg.Lease.Duration,
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
	logger.Info("worker started", "key", id.Fingerprint(), "remotes", rems.String(), "concurrency", cfg.Concurrency, "cache", cfg.Cache,
		"admins", admins.Len(), "trusted", trusted.Len())
	rems.LogLocal(ctx, logger)
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
			targets := rems.RetentionTargets(cfg.Cache, logger)
			s := results.Schedule{Policy: retention, Every: cfg.Retention.Every.Duration, Logger: logger,
				Targets: func(context.Context) ([]*results.Target, error) { return targets, nil }}
			s.Run(mirrorCtx)
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
