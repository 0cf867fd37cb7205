package link

import (
	"path/filepath"
	"slices"
	"strings"
)

// WorkerSettings is what a worker reads of the settings its refci-forge
// child runs ([[forge]], mirror_state, [mail]): whether there are any,
// and the files among them that pipelines must not read. Embedded in the
// worker's configuration type, it decodes from worker.toml; IsChildSetting
// says which other keys to leave to the child. The zero value is no
// child.
type WorkerSettings struct {
	Forges []struct {
		TokenFile      string `toml:"token_file"`
		PrivateKeyFile string `toml:"private_key_file"`
	} `toml:"forge"`
	// MirrorState records what each forge shows (default
	// $REFCI_HOME/mirror).
	MirrorState string `toml:"mirror_state"`
	Mail        *struct {
		PasswordFile string `toml:"password_file"`
	} `toml:"mail"`
}

// Wanted reports whether the configuration asks for a child.
func (s WorkerSettings) Wanted() bool { return len(s.Forges) > 0 || s.Mail != nil }

// MirrorStateDir is where the mirrors' state lives in refci's home when
// mirror_state is not set: the child writes there, and the worker hides
// it from pipelines.
const MirrorStateDir = "mirror"

// Private lists what pipelines must not read: the token and key files,
// the mail password file and the mirror's state (under home when
// mirror_state is not set).
func (s WorkerSettings) Private(home string) []string {
	var out []string
	if len(s.Forges) > 0 {
		state := s.MirrorState
		if state == "" {
			state = filepath.Join(home, MirrorStateDir)
		}
		out = append(out, state)
	}
	for _, f := range s.Forges {
		out = append(out, f.TokenFile, f.PrivateKeyFile)
	}
	if s.Mail != nil {
		out = append(out, s.Mail.PasswordFile)
	}
	return slices.DeleteFunc(out, func(p string) bool { return p == "" })
}

// IsChildSetting reports whether key (a key of worker.toml, as the TOML
// decoder names it) is a setting of [[forge]] or [mail], which the child
// decodes and checks: the worker leaves it undecoded without complaint,
// and says any other unknown key.
func IsChildSetting(key []string) bool {
	if len(key) != 2 {
		return false
	}
	var names string
	switch key[0] {
	case "forge":
		names = ForgeSettings
	case "mail":
		names = MailSettings
	}
	return slices.Contains(strings.Split(names, ", "), key[1])
}

// WorkerArgs are the arguments of a worker's child after Mode: its
// configuration file, its key file ("" is $REFCI_HOME's) and -v.
func WorkerArgs(configFile, keyFile string, verbose bool) []string {
	args := []string{"--config", configFile}
	if keyFile != "" {
		args = append(args, "--key", keyFile)
	}
	if verbose {
		args = append(args, "-v")
	}
	return args
}
