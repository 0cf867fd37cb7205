package main

import (
	"errors"
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

// errKeyConfig marks a key file the user must fix (exit 2).
var errKeyConfig = cli.ErrKeyConfig

// identity loads the signing key: keyFile when given, else
// $REFCI_HOME/key.asc, created on first use (cli.Env.Identity).
func (e *env) identity(keyFile string) (*secrets.Identity, error) { return e.cli().Identity(keyFile) }

func openRepo(dir string) (*gitproto.Repo, error) {
	if dir == "" {
		dir = "."
	}
	return gitproto.Open(dir)
}

// exitFor maps an error to an exit code: configuration and usage
// problems 2, the rest 3.
func exitFor(err error) int {
	switch {
	case errors.Is(err, gitproto.ErrNotRepo), errors.Is(err, gitproto.ErrNoCommits),
		errors.Is(err, gitproto.ErrUnknownRev), errors.Is(err, gitproto.ErrNotCommit),
		errors.Is(err, results.ErrNoRuns), errors.Is(err, gitproto.ErrNotFound),
		errors.Is(err, errKeyConfig):
		return exitUsage
	}
	return exitInfra
}

// isTerminal reports whether f is a character device (a TTY).
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// logWriter is where a pipeline's log goes: to a terminal through
// render.TermLog (colours kept when e.color, every other control sequence
// dropped), anywhere else byte for byte. done ends the log.
func (e *env) logWriter() (w io.Writer, done func()) {
	if !isTerminal(e.stdout) {
		return e.stdout, func() {}
	}
	t := render.NewTermLog(e.stdout, e.color(e.stdout))
	return t, func() { t.Flush() }
}

func (e *env) color(w any) bool {
	return isTerminal(w) && e.getenv("NO_COLOR") == "" && e.getenv("TERM") != "dumb"
}
