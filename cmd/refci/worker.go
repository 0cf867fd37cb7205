package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"refci.dev/refci/forge/mail"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/results"
	"refci.dev/refci/secrets"
	"refci.dev/refci/worker"
	"refci.dev/refci/worker/proc"
)

// workerConfig is the TOML configuration of `refci worker --config`.
// Flags given on the command line win over the file.
type workerConfig struct {
	Remotes           []string `toml:"remotes"`
	Poll              duration `toml:"poll"`
	Concurrency       int      `toml:"concurrency"`
	Lease             duration `toml:"lease"`
	Grace             duration `toml:"grace"`
	Timeout           duration `toml:"timeout"`
	MaxTimeout        duration `toml:"max_timeout"`
	MaxAttempts       int      `toml:"max_attempts"`
	KillGrace         duration `toml:"kill_grace"`
	LogCap            int64    `toml:"log_cap"`
	ArtifactCap       int64    `toml:"artifact_cap"`
	ArtifactsTotalCap int64    `toml:"artifacts_total_cap"`
	Key               string   `toml:"key"`
	Cache             string   `toml:"cache"`
	RequireIsolation  bool     `toml:"require_isolation"`
	// Writable lists paths isolated pipelines may write besides their
	// run directory and the scratch places (/tmp, /var/tmp, /dev/shm):
	// the rest of the file system is read-only for them.
	Writable []string `toml:"writable"`
	// Admins and Trusted are public key files: the secrets admins whose
	// signed environments are believed, and the requesters whose signed
	// requests are trusted (given secrets).
	Admins  []string `toml:"admins"`
	Trusted []string `toml:"trusted"`
	// Forges show the runs of the remotes on forges ([[forge]] entries);
	// MirrorState records what each shows (default $REFCI_HOME/mirror).
	Forges      []forgeConfig `toml:"forge"`
	MirrorState string        `toml:"mirror_state"`
	// Mail runs the mail bridge beside the worker ([mail]), in a
	// directory under the cache.
	Mail *mailConfig `toml:"mail"`
	// Retention, when its every is set, runs refci gc on each remote
	// that often (off by default).
	Retention *retentionConfig `toml:"retention"`
}

// retentionConfig is [retention] of worker.toml: the policy of refci gc
// (unset: its defaults) and how often a worker applies it to each of its
// remotes.
type retentionConfig struct {
	KeepLast *int     `toml:"keep_last"`
	KeepDays *int     `toml:"keep_days"`
	Every    duration `toml:"every"`
}

// policy checks the section and returns the policy it sets.
func (r *retentionConfig) policy() (results.Retention, error) {
	p := results.DefaultRetention
	if r.Every.Duration <= 0 {
		return p, errors.New(`[retention]: set every (how often to collect, e.g. "24h") to turn it on, or remove the section`)
	}
	if r.Every.Duration < time.Minute {
		return p, fmt.Errorf("[retention]: every = %q is too often; use a minute or more (a day is plenty)", r.Every.Duration)
	}
	if r.KeepLast != nil {
		p.KeepLast = *r.KeepLast
	}
	if r.KeepDays != nil {
		p.KeepDays = *r.KeepDays
	}
	if p.KeepLast < 0 || p.KeepDays < 0 {
		return p, errors.New("[retention]: keep_last and keep_days take 0 or more")
	}
	return p, nil
}

// duration reads "10s" style values from TOML.
type duration struct{ time.Duration }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (write e.g. \"10s\", \"2m\")", b)
	}
	d.Duration = v
	return nil
}

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
	var cfg workerConfig
	if *configFile != "" {
		if _, ok := readConfig(e, *configFile, &cfg, "remotes, poll, concurrency, lease, grace, timeout, max_timeout, max_attempts, kill_grace, log_cap, artifact_cap, artifacts_total_cap, key, cache, require_isolation, writable, admins, trusted, mirror_state, in [retention]: keep_last, keep_days, every, in [[forge]]: "+forgeSettings+"; in [mail]: "+mailSettings); !ok {
			return exitUsage
		}
	}
	if len(remotes) > 0 {
		cfg.Remotes = remotes
	}
	cfg.Admins = append(cfg.Admins, adminFiles...)
	cfg.Trusted = append(cfg.Trusted, trustedFiles...)
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
	if len(cfg.Remotes) == 0 {
		e.errorf("worker: no remote to serve; pass --remote URL (repeatable) or --config FILE")
		return exitUsage
	}
	set := func(dst *duration, v time.Duration) {
		if v > 0 {
			dst.Duration = v
		}
	}
	set(&cfg.Poll, *poll)
	set(&cfg.Lease, *lease)
	set(&cfg.Grace, *grace)
	set(&cfg.Timeout, *timeout)
	set(&cfg.MaxTimeout, *maxTimeout)
	if *maxAttempts != 0 {
		cfg.MaxAttempts = *maxAttempts
	}
	if cfg.MaxAttempts < 0 {
		e.errorf("worker: --max-attempts %d: give a positive number of attempts (default 3)", cfg.MaxAttempts)
		return exitUsage
	}
	if cfg.MaxTimeout.Duration < 0 {
		e.errorf("worker: max_timeout %s: give a positive duration (default 6h)", cfg.MaxTimeout.Duration)
		return exitUsage
	}
	if *conc > 0 {
		cfg.Concurrency = *conc
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = runtime.NumCPU()
	}
	if *keyFile != "" {
		cfg.Key = *keyFile
	}
	if *cache != "" {
		cfg.Cache = *cache
	}
	if *logCap > 0 {
		cfg.LogCap = *logCap
	}
	if *requireIso {
		cfg.RequireIsolation = true
	}
	if cfg.Lease.Duration > 0 && cfg.Lease.Duration < 3*time.Second {
		e.errorf("worker: --lease %s is too short; use at least 3s", cfg.Lease.Duration)
		return exitUsage
	}

	var retention results.Retention
	if cfg.Retention != nil {
		if retention, err = cfg.Retention.policy(); err != nil {
			e.errorf("config %s: %v", *configFile, err)
			return exitUsage
		}
	}

	for _, p := range cfg.Writable {
		if !filepath.IsAbs(p) {
			e.errorf("config %s: writable: %q is not an absolute path; name the directories pipelines may write in full", *configFile, p)
			return exitUsage
		}
	}

	proc.SetNotDumpable()
	id, err := e.identity(cfg.Key)
	if err != nil {
		e.errorf("%v", err)
		return exitFor(err)
	}
	// Hidden from pipelines: the key (all of $REFCI_HOME when it is
	// there), the caches, the configuration.
	private := []string{cfg.Key, cfg.Cache, *configFile}
	if cfg.Key == "" || cfg.Cache == "" {
		h, err := e.home()
		if err != nil {
			e.errorf("%v", err)
			return exitUsage
		}
		if cfg.Cache == "" {
			cfg.Cache = filepath.Join(h, "cache")
			private = append(private, cfg.Cache)
		}
		if cfg.Key == "" {
			private = append(private, h)
		}
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
	var rems []*gitproto.Remote
	for _, u := range cfg.Remotes {
		r, err := gitproto.OpenRemote(u, filepath.Join(cfg.Cache, cacheName(u)), nil)
		if err != nil {
			e.errorf("remote %s: %v", gitproto.RedactURL(u), err)
			return exitInfra
		}
		rems = append(rems, r)
	}
	var mirrors []runner
	if len(cfg.Forges) > 0 {
		if cfg.MirrorState == "" {
			h, err := e.home()
			if err != nil {
				e.errorf("%v", err)
				return exitUsage
			}
			cfg.MirrorState = filepath.Join(h, "mirror")
		}
		private = append(private, cfg.MirrorState)
		for _, f := range cfg.Forges {
			private = append(private, f.TokenFile)
		}
		if mirrors, err = newMirrors(ctx, cfg.Forges, cfg.Remotes, cfg.MirrorState, cfg.Poll.Duration, logger); err != nil {
			e.errorf("config %s: %v", *configFile, err)
			if errors.Is(err, errForgeConfig) {
				return exitUsage
			}
			return exitInfra
		}
	}
	// The mail bridge: a mistake in [mail] stops the worker at once; mail
	// servers that cannot be reached do not (a mail outage must not stop
	// CI): the bridge starts once they answer.
	var mbp atomic.Pointer[mailBridge]
	var startMail func(context.Context) (*mailBridge, error)
	var mailRemote string
	var w *worker.Worker // set before the bridge runs
	if cfg.Mail != nil {
		private = append(private, cfg.Mail.PasswordFile)
		remote := cfg.Mail.Remote
		if remote == "" && len(cfg.Remotes) == 1 {
			remote = cfg.Remotes[0]
		}
		dir := filepath.Join(cfg.Cache, "mail", strings.TrimSuffix(cacheName(remote+" "+cfg.Mail.Name), ".git"))
		// The worker polls the remote at once when the bridge asks for a
		// run of a series.
		asked := func() {
			for i, r := range rems {
				if cfg.Remotes[i] == remote {
					w.Poke(r.URL)
				}
			}
		}
		mailRemote = remote
		startMail = func(ctx context.Context) (*mailBridge, error) {
			var signer mail.Signer
			if cfg.Mail.Sign {
				signer = id
			}
			return newMailBridge(ctx, *cfg.Mail, cfg.Remotes, dir, signer, asked, logger)
		}
		mb, err := startMail(ctx)
		switch {
		case err == nil:
			mbp.Store(mb)
		case mailExit(err) == exitUsage:
			e.errorf("config %s: %v", *configFile, err)
			return exitUsage
		default:
			logger.Warn("the mail bridge cannot start: the worker runs without it, and it starts once the mail servers answer", "err", err)
		}
		defer func() {
			if mb := mbp.Load(); mb != nil {
				mb.close()
			}
		}()
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
	w = worker.New(worker.Config{
		Remotes: rems, Poll: cfg.Poll.Duration, Concurrency: cfg.Concurrency, Lease: cfg.Lease.Duration,
		Grace: cfg.Grace.Duration, MaxTimeout: cfg.MaxTimeout.Duration, MaxAttempts: cfg.MaxAttempts,
		Limits: worker.Limits{Timeout: cfg.Timeout.Duration, KillGrace: cfg.KillGrace.Duration,
			LogCap: cfg.LogCap, ArtifactFileCap: cfg.ArtifactCap, ArtifactTotalCap: cfg.ArtifactsTotalCap},
		Signer: id, RefciPath: self, Shim: sb.Shim, Host: host, Version: version, Logger: logger,
		Trust: worker.SignatureTrust(trusted), Secrets: opener, Page: renderPage, Pushed: wakeAll(wakeMirrors(rems, cfg.Remotes, mirrors), wakeMail(rems, cfg.Remotes, mailRemote, mbp.Load)),
		Isolation: sb.Isolation, TempDir: sb.RunsDir,
	})
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
	// The mirror shows results beside the loop, and stops after it.
	mirrorCtx, stopMirrors := context.WithCancel(context.WithoutCancel(ctx))
	mirrorsDone := make(chan struct{})
	go func() { defer close(mirrorsDone); runMirrors(mirrorCtx, mirrors) }()
	// So does the mail bridge.
	mailDone := make(chan struct{})
	go func() {
		defer close(mailDone)
		if startMail == nil {
			return
		}
		mb := mbp.Load()
		if mb == nil {
			if mb = retryMail(mirrorCtx, startMail, logger); mb == nil {
				return
			}
			mbp.Store(mb)
		}
		logger.Info("mail bridge started", "imap", cfg.Mail.IMAP, "smtp", cfg.Mail.SMTP, "remote", gitproto.RedactURL(mb.remote))
		mb.bridge.Run(mirrorCtx)
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
	<-mirrorsDone
	<-mailDone
	<-retentionDone
	if err != nil {
		e.errorf("worker: %v", err)
		return exitInfra
	}
	logger.Info("worker stopped")
	return exitOK
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// cacheName is a stable, readable directory name for a remote's cache.
func cacheName(url string) string {
	sum := sha256.Sum256([]byte(url))
	base := unsafeChars.ReplaceAllString(gitproto.RedactURL(url), "_")
	base = strings.Trim(base, "_.")
	if len(base) > 60 {
		base = base[len(base)-60:]
	}
	return base + "-" + hex.EncodeToString(sum[:6]) + ".git"
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
		r, err := gitproto.OpenRemote(u, filepath.Join(cacheDir, strings.TrimSuffix(cacheName(u), ".git")+"-gc.git"), nil)
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
