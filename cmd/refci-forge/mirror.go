package main

import (
	"context"
	"os"

	"refci.dev/refci/cmd/internal/cli"
	"refci.dev/refci/cmd/internal/forgecmd"
	"refci.dev/refci/forge"
	"refci.dev/refci/forge/forgeconf"
)

// mirrorConfig is the TOML configuration of `refci mirror --config`.
type mirrorConfig struct {
	State  string            `toml:"state"` // where what was mirrored is recorded (default $REFCI_HOME/mirror)
	Poll   forge.Duration    `toml:"poll"`
	Forges []forgeconf.Entry `toml:"forge"`
}

func cmdMirror(ctx context.Context, e *cli.Env, args []string) int {
	fs := cli.NewFlags(forgecmd.Mirror)
	configFile := fs.String("config", "", "a TOML file of [[forge]] entries (see README)")
	if _, code, ok := cli.Parse(e, fs, args, 0); !ok {
		return code
	}
	if *configFile == "" {
		e.Errorf("mirror: no configuration; pass --config FILE with one [[forge]] entry per forge repository")
		return cli.ExitUsage
	}
	var cfg mirrorConfig
	if _, ok := cli.ReadConfig(e, *configFile, &cfg, "state, poll, and in [[forge]]: "+forgeconf.Settings, nil); !ok {
		return cli.ExitUsage
	}
	if len(cfg.Forges) == 0 {
		e.Errorf("config %s: no [[forge]] entry; add one per forge repository that shows a remote's runs", *configFile)
		return cli.ExitUsage
	}
	for i, f := range cfg.Forges {
		if f.Remote == "" {
			e.Errorf("config %s: [[forge]] %d (%s %s) has no remote: name the git remote whose runs it shows", *configFile, i+1, f.Kind, f.Repo)
			return cli.ExitUsage
		}
	}
	if err := e.DefaultInHome(&cfg.State, "mirror"); err != nil {
		e.Errorf("%v", err)
		return cli.ExitUsage
	}
	logger := e.Logger(false)
	mirrors, err := forgeconf.Build(ctx, forgeconf.Options{Entries: cfg.Forges, State: cfg.State, Poll: cfg.Poll.Duration, Logger: logger, Kinds: forgeKinds})
	if err != nil {
		e.Errorf("config %s: %v", *configFile, err)
		return forgeExit(err)
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	stopSignals := cli.OnStopSignals(context.WithoutCancel(ctx), func(os.Signal) { stop() }, func(os.Signal) {})
	defer stopSignals()
	logger.Info("mirror started", "remotes", len(mirrors), "forges", len(cfg.Forges), "state", cfg.State)
	forgeconf.Run(ctx, mirrors)
	logger.Info("mirror stopped")
	return cli.ExitOK
}

// forgeExit is the exit code of forgeconf.Build's error: the user's
// mistakes 2, the rest 3.
func forgeExit(err error) int { return cli.ExitFor(err, forgeconf.ErrConfig) }
