package secrets

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// gpg runs the real GnuPG in a home directory of its own, never ~/.gnupg.
type gpg struct {
	t    *testing.T
	home string
}

// newGPG returns a gpg with a fresh GNUPGHOME (mode 0700), or skips the test
// if gpg is not installed. Its agent is stopped when the test ends.
func newGPG(t *testing.T) *gpg {
	t.Helper()
	if _, err := exec.LookPath("gpg"); err != nil {
		t.Skip("gpg is not on PATH; install GnuPG 2.2 to run the interoperability tests")
	}
	// Short path: gpg-agent's socket lives in the home directory and socket
	// paths are limited to about 100 bytes.
	home, err := os.MkdirTemp("", "gpg")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(home, 0o700); err != nil {
		t.Fatal(err)
	}
	// The agent's default passphrase hashing is calibrated to be slow; the
	// tests' throwaway keys need no such strength.
	if err := os.WriteFile(filepath.Join(home, "gpg-agent.conf"), []byte("s2k-count 65536\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &gpg{t: t, home: home}
	t.Cleanup(func() {
		cmd := exec.Command("gpgconf", "--kill", "all")
		cmd.Env = g.env()
		cmd.Run() // no agent may have been started
		os.RemoveAll(home)
	})
	return g
}

func (g *gpg) env() []string {
	return append(os.Environ(), "GNUPGHOME="+g.home, "LC_ALL=C", "TZ=UTC")
}

// try runs gpg with args and stdin, returning its stdout, stderr and error.
func (g *gpg) try(stdin []byte, args ...string) (stdout, stderr string, err error) {
	g.t.Helper()
	args = append([]string{"--batch", "--no-tty", "--homedir", g.home}, args...)
	cmd := exec.Command("gpg", args...)
	cmd.Env = g.env()
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// run runs gpg with args and stdin and fails the test if gpg fails.
func (g *gpg) run(stdin []byte, args ...string) string {
	g.t.Helper()
	out, errOut, err := g.try(stdin, args...)
	if err != nil {
		g.t.Fatalf("gpg %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

// file writes data to a file in a fresh temporary directory and returns its
// path.
func (g *gpg) file(name string, data []byte) string {
	g.t.Helper()
	path := filepath.Join(g.t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		g.t.Fatal(err)
	}
	return path
}

// genKey makes an unprotected key with gpg and returns its fingerprint.
// extra is passed before --quick-gen-key (e.g. --faked-system-time).
func (g *gpg) genKey(uid, algo, usage, expire string, extra ...string) string {
	g.t.Helper()
	args := append(extra, "--passphrase", "", "--pinentry-mode", "loopback",
		"--quick-gen-key", uid, algo, usage, expire)
	g.run(nil, args...)
	return g.fingerprint(uid)
}

// fingerprint returns the primary key fingerprint of the key matching who.
func (g *gpg) fingerprint(who string) string {
	g.t.Helper()
	out := g.run(nil, "--with-colons", "--list-keys", who)
	return firstField(g.t, out, "fpr", 9)
}

// firstField returns field n (0-based) of the first colon-listing record
// of the given type.
func firstField(t *testing.T, listing, record string, n int) string {
	t.Helper()
	for _, line := range strings.Split(listing, "\n") {
		f := strings.Split(line, ":")
		if f[0] == record && len(f) > n {
			return f[n]
		}
	}
	t.Fatalf("no %q record in gpg listing:\n%s", record, listing)
	return ""
}

// status returns the [GNUPG:] status lines of out whose keyword is kw,
// without the prefix.
func status(out, kw string) []string {
	var lines []string
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(line, "[GNUPG:] "+kw+" "); ok {
			lines = append(lines, rest)
		}
	}
	return lines
}
