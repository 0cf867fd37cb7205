package forge

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"refci.dev/refci/forge/link"
	"refci.dev/refci/gitproto"
)

// Duration reads "10s" style values from the TOML configuration of the
// forges and the mail bridge: link.Duration, the one such type, which the
// worker's configuration and the worker's link to refci-forge use too.
// The zero value is no duration (the setting's default).
type Duration = link.Duration

// CheckOwnerOnly checks that the file of a secret (setting names it in
// the configuration, what says what it holds) exists and only its owner
// may read it. Its error says what to do.
func CheckOwnerOnly(setting, path, what string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s %s: %v; write %s there (chmod 600)", setting, path, errors.Unwrap(err), what)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s %s can be read by others (mode %04o): run chmod 600 %s", setting, path, fi.Mode().Perm(), path)
	}
	return nil
}

// RedactAll is the URLs without their credentials, separated by spaces.
func RedactAll(urls []string) string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = gitproto.RedactURL(u)
	}
	return strings.Join(out, " ")
}
