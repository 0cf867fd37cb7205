package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/githubapi"
)

// refci mirror's and refci mail's own tests are refci-forge's
// (cmd/refci-forge), which runs them; these run them through refci.

func writeToken(t testing.TB, dir, name, token string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(token+"\n"), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// A worker's [[forge]] must show one of its remotes; with one remote it
// may leave remote out; a setting [[forge]] does not have is said. Both
// stop the worker at start with exit 2 and one line (refci-forge checks
// the first, refci the second).
func TestWorkerForgeConfig(t *testing.T) {
	s := newSandbox(t)
	dir := t.TempDir()
	good := writeToken(t, dir, "good", "tok", 0o600)
	remote := fixtures.BareRepo(t, "app.git")
	runRefciEnv(t, s.env, "keys", "show") // its key, made before: a line of its own
	cfg := filepath.Join(dir, "worker.toml")
	body := fmt.Sprintf("remotes = [%q]\n[[forge]]\nkind = \"gitea\"\nrepo = \"org/app\"\nremote = \"file:///elsewhere.git\"\ntoken_file = %q\n", remote, good)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runRefciEnv(t, s.env, "worker", "--config", cfg)
	if r.code != exitUsage || !strings.Contains(r.stderr, "is not one of the worker's remotes") || !strings.HasPrefix(r.stderr, "refci: config "+cfg+": ") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
	body = fmt.Sprintf("remotes = [%q]\n[[forge]]\nkind = \"gitea\"\nrepo = \"org/app\"\ntoken_file = %q\nsurprise = 1\n", remote, good)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	r = runRefciEnv(t, s.env, "worker", "--config", cfg)
	if r.code != exitUsage || !strings.Contains(r.stderr, `unknown setting "forge.surprise"`) || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
	// A mistake only refci-forge sees: a token file others may read.
	open := writeToken(t, dir, "open", "tok", 0o644)
	body = fmt.Sprintf("remotes = [%q]\n[[forge]]\nkind = \"gitea\"\nrepo = \"org/app\"\ntoken_file = %q\n", remote, open)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	r = runRefciEnv(t, s.env, "worker", "--config", cfg)
	if r.code != exitUsage || !strings.Contains(r.stderr, "can be read by others (mode 0644): run chmod 600 "+open) || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
}

// A real worker process runs a request whose pipeline fails; refci mirror
// (a process of its own, on GitHub's API stood in for) shows it: the
// status ends failure with at most two status calls, and the pull request
// of the commit gets one comment quoting the failing log.
func TestMirrorShowsARealWorkersRun(t *testing.T) {
	f := newFleet(t, "echo compiling\necho 'main.go:3: it broke' >&2\nexit 1\n")
	head := f.git(f.repo, "rev-parse", "HEAD")
	gh := githubapi.New(t, "org", "app", "tok")
	gh.AddPull(githubapi.Pull{Number: 5, Head: head, Open: true})
	dir := t.TempDir()
	tok := writeToken(t, dir, "token", "tok", 0o600)
	cfg := filepath.Join(dir, "mirror.toml")
	body := fmt.Sprintf("poll = \"100ms\"\n[[forge]]\nkind = \"github\"\nrepo = \"org/app\"\nremote = %q\ntoken_file = %q\nbase_url = %q\n", "file://"+f.bare, tok, gh.URL)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	mirror := startProc(t, append(append([]string{}, f.env...), "REFCI_HOME="+filepath.Join(dir, "home")), "mirror", "--config", cfg)
	f.startWorker("a")
	f.git(f.repo, "push", "-q", "origin", "HEAD:refs/ci/requests/ci")
	fixtures.WaitFor(t, 2*time.Minute, "the failure on the forge and the comment", func() bool {
		s := gh.Statuses(head)
		n := len(s)
		c := gh.Comments(5)
		return n > 0 && s[n-1].State == "failure" && len(c) == 1 && strings.Contains(c[0].Body, "it broke")
	})
	if s := gh.Statuses(head); len(s) > 2 || s[0].Context != "refci/ci" {
		t.Errorf("statuses %+v; want at most running and failure of refci/ci", s)
	}
	if code := mirror.exit(t); code != 0 {
		t.Errorf("refci mirror exited %d:\n%s", code, mirror.out.String())
	}
}
