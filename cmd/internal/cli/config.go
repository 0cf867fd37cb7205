package cli

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"

	"refci.dev/refci/secrets"

	"github.com/BurntSushi/toml"
)

// DefaultInHome sets *dir, when it is empty, to sub in refci's
// configuration directory (Home): the default place of a state directory.
func (e *Env) DefaultInHome(dir *string, sub string) error {
	if *dir != "" {
		return nil
	}
	h, err := e.Home()
	if err != nil {
		return err
	}
	*dir = filepath.Join(h, sub)
	return nil
}

// Home is refci's configuration directory: $REFCI_HOME, else
// $XDG_CONFIG_HOME/refci, else ~/.config/refci.
func (e *Env) Home() (string, error) {
	if h := e.Getenv("REFCI_HOME"); h != "" {
		return h, nil
	}
	if x := e.Getenv("XDG_CONFIG_HOME"); x != "" {
		return filepath.Join(x, "refci"), nil
	}
	h, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cannot find a home directory; set REFCI_HOME")
	}
	return filepath.Join(h, ".config", "refci"), nil
}

// ErrKeyConfig marks a key file the user must fix (exit 2): Identity's
// errors match it with errors.Is when the key cannot be read or made.
var ErrKeyConfig = errors.New("key configuration")

// keyError carries a key problem's message and matches ErrKeyConfig.
type keyError struct{ err error }

func (k keyError) Error() string        { return k.err.Error() }
func (k keyError) Unwrap() error        { return k.err }
func (k keyError) Is(target error) bool { return target == ErrKeyConfig }

// Identity loads the signing key: keyFile when given, else
// $REFCI_HOME/key.asc, created on first use (and said on stderr).
func (e *Env) Identity(keyFile string) (*secrets.Identity, error) {
	if keyFile != "" {
		id, err := secrets.Load(keyFile)
		if err != nil {
			return nil, keyError{err}
		}
		return id, nil
	}
	h, err := e.Home()
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
		e.Errorf("created a signing key %s at %s (share its public part with 'refci keys export')", id.Fingerprint(), path)
	}
	return id, nil
}

// ReadConfig decodes the TOML file into v. A file that cannot be read or
// parsed, or that holds a setting v has no place for, is said (naming
// the known settings) and it returns false: a usage error. A setting
// that ignore accepts (ignore may be nil) is left undecoded without
// complaint: another program reads it from the same file.
func ReadConfig(e *Env, file string, v any, known string, ignore func(key []string) bool) (toml.MetaData, bool) {
	md, err := DecodeConfig(file, v, known, ignore)
	if err != nil {
		e.Errorf("%v", err)
		return md, false
	}
	return md, true
}

// DecodeConfig is ReadConfig returning the mistake ("config FILE: ...")
// instead of printing it.
func DecodeConfig(file string, v any, known string, ignore func(key []string) bool) (toml.MetaData, error) {
	md, err := toml.DecodeFile(file, v)
	if err != nil {
		return md, fmt.Errorf("config %s: %v", file, err)
	}
	for _, k := range md.Undecoded() {
		if ignore != nil && ignore(k) {
			continue
		}
		return md, fmt.Errorf("config %s: unknown setting %q; known: %s", file, k.String(), known)
	}
	return md, nil
}
