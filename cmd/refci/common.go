package main

import (
	"context"
	"io"
	"os"

	"refci.dev/refci/cmd/internal/cli"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/render"
	"refci.dev/refci/results"
	"refci.dev/refci/secrets"
)

// home is refci's configuration directory (cli.Env.Home).
func (e *env) home() (string, error) { return e.cli().Home() }

// identity loads the signing key: keyFile when given, else
// $REFCI_HOME/key.asc, created on first use (cli.Env.Identity).
func (e *env) identity(keyFile string) (*secrets.Identity, error) { return e.cli().Identity(keyFile) }

// openRepo opens the repository at or above dir ("" is the working
// directory).
func openRepo(dir string) (*gitproto.Repo, error) { return gitproto.Open(dir) }

// exitFor maps an error to an exit code: configuration and usage
// problems (and errors marked with cli.AsUsage) 2, the rest 3.
func exitFor(err error) int {
	return cli.ExitFor(err, gitproto.ErrNotRepo, gitproto.ErrNoCommits, gitproto.ErrUnknownRev, gitproto.ErrNotCommit,
		results.ErrNoRuns, gitproto.ErrNotFound, cli.ErrKeyConfig)
}

// logWriter is where a pipeline's log goes: to a terminal through
// render.TermLog (colours kept when e.color, every other control sequence
// dropped), anywhere else byte for byte. done ends the log.
func (e *env) logWriter() (w io.Writer, done func()) {
	if !cli.IsTerminal(e.stdout) {
		return e.stdout, func() {}
	}
	t := render.NewTermLog(e.stdout, e.color(e.stdout))
	return t, func() { t.Flush() }
}

// color reports whether output to w may be coloured (cli.Env.Color).
func (e *env) color(w any) bool { return e.cli().Color(w) }

// onStopSignals handles the two stages of stopping a command
// (cli.OnStopSignals).
func onStopSignals(ctx context.Context, first, again func(os.Signal), extra ...os.Signal) (stop func()) {
	return cli.OnStopSignals(ctx, first, again, extra...)
}
