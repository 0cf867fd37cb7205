package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/render"
	"refci.dev/refci/results"
	"refci.dev/refci/secrets"

	"github.com/BurntSushi/toml"
)

// home is refci's configuration directory: $REFCI_HOME, else
// $XDG_CONFIG_HOME/refci, else ~/.config/refci.
func (e *env) home() (string, error) {
	if h := e.getenv("REFCI_HOME"); h != "" {
		return h, nil
	}
	if x := e.getenv("XDG_CONFIG_HOME"); x != "" {
		return filepath.Join(x, "refci"), nil
	}
	h, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cannot find a home directory; set REFCI_HOME")
	}
	return filepath.Join(h, ".config", "refci"), nil
}

// errKeyConfig marks a key file the user must fix (exit 2).
var errKeyConfig = errors.New("key configuration")

// keyError carries a key problem's message and matches errKeyConfig.
type keyError struct{ err error }

func (k keyError) Error() string        { return k.err.Error() }
func (k keyError) Unwrap() error        { return k.err }
func (k keyError) Is(target error) bool { return target == errKeyConfig }

// identity loads the signing key: keyFile when given, else
// $REFCI_HOME/key.asc, created on first use.
func (e *env) identity(keyFile string) (*secrets.Identity, error) {
	if keyFile != "" {
		id, err := secrets.Load(keyFile)
		if err != nil {
			return nil, keyError{err}
		}
		return id, nil
	}
	h, err := e.home()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(h, "key.asc")
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	name := "refci"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = "refci " + u.Username + "@" + host
	}
	id, created, err := secrets.LoadOrCreate(path, name, "refci@"+host)
	if err != nil {
		return nil, keyError{err}
	}
	if created {
		e.errorf("created a signing key %s at %s (share its public part with 'refci keys export')", id.Fingerprint(), path)
	}
	return id, nil
}

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

// readConfig decodes the TOML file into v. A file that cannot be read or
// parsed, or that holds a setting v has no place for, is said (naming
// the known settings) and it returns false: a usage error.
func readConfig(e *env, file string, v any, known string) (toml.MetaData, bool) {
	md, err := toml.DecodeFile(file, v)
	if err != nil {
		e.errorf("config %s: %v", file, err)
		return md, false
	}
	if und := md.Undecoded(); len(und) > 0 {
		e.errorf("config %s: unknown setting %q; known: %s", file, und[0].String(), known)
		return md, false
	}
	return md, true
}
