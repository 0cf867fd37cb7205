package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"refci.dev/refci/cmd/internal/cli"
	"refci.dev/refci/forge/forgeconf"
	"refci.dev/refci/forge/link"
	"refci.dev/refci/forge/mail"
	"refci.dev/refci/gitproto"
)

// linkConfig is what refci-forge reads of worker.toml; the worker reads
// and checks the rest, and the names of these settings (forge/link), so
// that an unknown setting is said once, by the worker.
type linkConfig struct {
	Forges      []forgeconf.Entry `toml:"forge"`
	MirrorState string            `toml:"mirror_state"`
	Mail        *mail.Settings    `toml:"mail"`
}

// cmdLink is refci-forge link: a worker's supervised child, which runs
// the mirrors of [[forge]] and the bridge of [mail] until the worker
// closes its input (see package forge/link).
func cmdLink(ctx context.Context, e *cli.Env, args []string) int {
	fs := flag.NewFlagSet(link.Mode, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	configFile := fs.String("config", "", "")
	keyFile := fs.String("key", "", "")
	verbose := fs.Bool("v", false, "")
	if err := fs.Parse(args); err != nil || *configFile == "" || fs.NArg() > 0 {
		e.Errorf("refci-forge link runs as refci worker's child, as refci-forge link --config FILE [--key FILE] [-v]; not for use by hand")
		return cli.ExitUsage
	}
	parent, err := link.Accept(e.Stdin, e.Stdout)
	if err != nil {
		e.Errorf("%v", err)
		return cli.ExitUsage
	}
	fail := func(code int, err error) int {
		parent.Fail(code, err.Error())
		return code
	}
	logger := e.Logger(*verbose)
	// The worker stops this child by closing its input, after its own
	// loop: signals sent to the whole group (a terminal's ^C, a service
	// manager's SIGTERM) are the worker's to handle.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		for s := range sigs {
			logger.Debug("refci-forge: a signal; the worker stops the forges and mail after its loop", "signal", s.String())
		}
	}()

	var cfg linkConfig
	if _, err := cli.DecodeConfig(*configFile, &cfg, "", func([]string) bool { return true }); err != nil {
		return fail(cli.ExitUsage, err)
	}
	start := parent.Start
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var runners []forgeconf.Runner
	if len(cfg.Forges) > 0 {
		if err := e.DefaultInHome(&cfg.MirrorState, link.MirrorStateDir); err != nil {
			return fail(cli.ExitUsage, err)
		}
		runners, err = forgeconf.Build(ctx, forgeconf.Options{Entries: cfg.Forges, Remotes: start.Remotes, State: cfg.MirrorState,
			Poll: start.Poll.Duration, Logger: logger, Kinds: forgeKinds})
		if err != nil {
			return fail(forgeExit(err), errors.New("config "+*configFile+": "+err.Error()))
		}
	}
	wakeForges := forgeconf.Waker(runners)

	// The mail bridge: a mistake in [mail] stops the worker at once; mail
	// servers that cannot be reached do not (a mail outage must not stop
	// CI): the bridge starts once they answer.
	var mb atomic.Pointer[mail.Running]
	var startMail func(context.Context) (*mail.Running, error)
	var mailRemote string
	if cfg.Mail != nil {
		mailRemote = cfg.Mail.RemoteOf(start.Remotes)
		dir := filepath.Join(start.Cache, "mail", strings.TrimSuffix(gitproto.CacheName(mailRemote+" "+cfg.Mail.Name), ".git"))
		var signer mail.Signer
		if cfg.Mail.Sign {
			id, err := e.Identity(*keyFile)
			if err != nil {
				return fail(cli.ExitUsage, errors.New("sign: "+err.Error()))
			}
			signer = id
		}
		startMail = func(ctx context.Context) (*mail.Running, error) {
			// The worker polls the remote at once when the bridge asks
			// for a run of a series.
			return mail.Start(ctx, *cfg.Mail, mail.StartOptions{Remotes: start.Remotes, Dir: dir, Signer: signer,
				Asked: func() { parent.Asked(mailRemote) }, Logger: logger})
		}
		r, err := startMail(ctx)
		switch {
		case err == nil:
			mb.Store(r)
		case mail.IsConfigError(err):
			return fail(cli.ExitUsage, errors.New("config "+*configFile+": "+err.Error()))
		default:
			logger.Warn("the mail bridge cannot start: the worker runs without it, and it starts once the mail servers answer", "err", err)
		}
	}
	defer func() {
		if r := mb.Load(); r != nil {
			r.Close()
		}
	}()
	if err := parent.Ready(link.Ready{Mirrors: len(runners), Mail: cfg.Mail != nil}); err != nil {
		return cli.ExitInfra
	}
	// The worker's wake-ups, until it closes the input: then stop.
	go func() {
		defer stop()
		if err := parent.Listen(func(url string) {
			wakeForges(url)
			if r := mb.Load(); r != nil && url == mailRemote {
				r.Bridge.Wake()
			}
		}); err != nil {
			logger.Warn("refci-forge: the worker's link broke; stopping", "err", err)
		}
	}()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); forgeconf.Run(ctx, runners) }()
	go func() {
		defer wg.Done()
		if startMail == nil {
			return
		}
		r := mb.Load()
		if r == nil {
			if r = mail.Retry(ctx, startMail, logger); r == nil {
				return
			}
			mb.Store(r)
		}
		logger.Info("mail bridge started", "imap", cfg.Mail.IMAP, "smtp", cfg.Mail.SMTP, "remote", gitproto.RedactURL(r.Remote))
		r.Bridge.Run(ctx)
	}()
	wg.Wait()
	return cli.ExitOK
}
