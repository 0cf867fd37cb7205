package main

import (
	"context"
	"os"

	"refci.dev/refci/cmd/internal/cli"
	"refci.dev/refci/cmd/internal/forgecmd"
	"refci.dev/refci/forge/mail"
	"refci.dev/refci/gitproto"
)

// mailCommandConfig is the TOML configuration of `refci mail --config`.
type mailCommandConfig struct {
	State string        `toml:"state"` // the bridge's directory (default $REFCI_HOME/mail)
	Mail  mail.Settings `toml:"mail"`
}

func cmdMail(ctx context.Context, e *cli.Env, args []string) int {
	fs := cli.NewFlags(forgecmd.Mail)
	configFile := fs.String("config", "", "a TOML file with a [mail] table (see README)")
	keyFile := fs.String("key", "", "the key replies are signed with when sign = true (default: refci's key in $REFCI_HOME)")
	if _, code, ok := cli.Parse(e, fs, args, 0); !ok {
		return code
	}
	if *configFile == "" {
		e.Errorf("mail: no configuration; pass --config FILE with a [mail] table")
		return cli.ExitUsage
	}
	var cfg mailCommandConfig
	md, ok := cli.ReadConfig(e, *configFile, &cfg, "state, and in [mail]: "+mail.SettingNames, nil)
	if !ok {
		return cli.ExitUsage
	}
	if !md.IsDefined("mail") {
		e.Errorf("config %s: no [mail] table; add one with imap, smtp, user, password_file, from and remote", *configFile)
		return cli.ExitUsage
	}
	if err := e.DefaultInHome(&cfg.State, "mail"); err != nil {
		e.Errorf("%v", err)
		return cli.ExitUsage
	}
	logger := e.Logger(false)
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	// Signals stop the startup checks too.
	stopSignals := cli.OnStopSignals(context.WithoutCancel(ctx), func(s os.Signal) {
		stop()
		logger.Info("signal: stopping the mail bridge", "signal", s.String())
	}, func(os.Signal) {})
	defer stopSignals()
	var signer mail.Signer
	if cfg.Mail.Sign {
		id, err := e.Identity(*keyFile)
		if err != nil {
			e.Errorf("sign: %v", err)
			return cli.ExitUsage
		}
		signer = id
	}
	mb, err := mail.Start(ctx, cfg.Mail, mail.StartOptions{Dir: cfg.State, Signer: signer, Logger: logger})
	if err != nil && ctx.Err() != nil {
		logger.Info("mail bridge stopped before it started")
		return cli.ExitOK
	}
	if err != nil {
		e.Errorf("config %s: %v", *configFile, err)
		return mailExit(err)
	}
	defer mb.Close()
	logger.Info("mail bridge started", "imap", cfg.Mail.IMAP, "smtp", cfg.Mail.SMTP, "remote", gitproto.RedactURL(mb.Remote), "state", cfg.State)
	mb.Bridge.Run(ctx)
	logger.Info("mail bridge stopped")
	return cli.ExitOK
}

// mailExit is the exit code of mail.Start's error: the user's mistakes
// 2, the rest (a server down, TLS, git) 3.
func mailExit(err error) int {
	if mail.IsConfigError(err) {
		return cli.ExitUsage
	}
	return cli.ExitInfra
}
