package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
)

// A worker's [mail] tests one of its remotes, and a setting [mail] does
// not have is said: both stop the worker at start, exit 2, one line
// (refci-forge's TestMailConfigErrors has the rest of [mail]'s
// mistakes).
func TestMailConfigErrorsOfAWorker(t *testing.T) {
	s := newSandbox(t)
	dir := t.TempDir()
	pw := writeToken(t, dir, "pw", "hunter2 with spaces\n", 0o600)
	remote := fixtures.BareRepo(t, "app.git")
	runRefciEnv(t, s.env, "keys", "show") // its key, made before: a line of its own
	cfg := filepath.Join(dir, "worker.toml")
	body := fmt.Sprintf("remotes = [%q]\n[mail]\nimap = \"imaps://mail.example.org\"\nsmtp = \"smtps://mail.example.org\"\nuser = \"ci\"\npassword_file = %q\nfrom = \"ci@example.org\"\nremote = \"file:///elsewhere.git\"\n", remote, pw)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := runRefciEnv(t, s.env, "worker", "--config", cfg); r.code != exitUsage || !strings.Contains(r.stderr, "is not one of the worker's remotes") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("worker: exit %d, stderr %q", r.code, r.stderr)
	}
	if err := os.WriteFile(cfg, []byte(body+"surprise = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := runRefciEnv(t, s.env, "worker", "--config", cfg); r.code != exitUsage || !strings.Contains(r.stderr, `unknown setting "mail.surprise"`) || !strings.Contains(r.stderr, "in [mail]: imap, smtp") {
		t.Errorf("worker: exit %d, stderr %q", r.code, r.stderr)
	}
}
