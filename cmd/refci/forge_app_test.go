package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/githubapi"
)

// A worker configured with a GitHub App shows its failing run as one
// check run (in progress, then failure with the run's Markdown summary)
// and comments on the pull request with the installation's token; it
// posts no commit status and never logs the key.
func TestWorkerShowsItsRunsOnGitHubAsAnApp(t *testing.T) {
	f := newFleet(t, "echo compiling\necho 'main.go:3: it broke' >&2\nexit 1\n")
	head := f.git(f.repo, "rev-parse", "HEAD")
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	gh := githubapi.New(t, "org", "app", "no-token-is-used")
	gh.SetApp(githubapi.App{ID: 123, InstallationID: 456, Key: &key.PublicKey})
	gh.AddPull(githubapi.Pull{Number: 3, Head: head, Open: true})
	dir := t.TempDir()
	pemFile := filepath.Join(dir, "app.pem")
	if err := os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "worker.toml")
	body := fmt.Sprintf("remotes = [%q]\n[[forge]]\nkind = \"github\"\nrepo = \"org/app\"\napp_id = 123\ninstallation_id = 456\nprivate_key_file = %q\nbase_url = %q\n", "file://"+f.bare, pemFile, gh.URL)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	w := f.startWorker("a", "--config", cfg)
	f.git(f.repo, "push", "-q", "origin", "HEAD:refs/ci/requests/ci")
	fixtures.WaitFor(t, 2*time.Minute, "the failure as a check run and the comment", func() bool {
		r := gh.CheckRuns(head)
		c := gh.Comments(3)
		return len(r) > 0 && r[len(r)-1].Conclusion == "failure" && len(c) == 1 && strings.Contains(c[0].Body, "it broke")
	})
	r := gh.CheckRuns(head)
	if len(r) != 1 || r[0].Name != "refci/ci" || r[0].AppID != 123 || !strings.Contains(r[0].Summary, "git fetch") {
		t.Errorf("check runs %+v; want one, refci/ci, of App 123, with the run's Markdown summary", r)
	}
	if s := gh.Statuses(head); len(s) != 0 {
		t.Errorf("the App also posted commit statuses: %+v", s)
	}
	if gh.TokensIssued() != 1 {
		t.Errorf("%d installation tokens, want 1 (cached)", gh.TokensIssued())
	}
	f.stopAll()
	w.Wait()
	f.mu.Lock()
	log := f.logs[0].String()
	f.mu.Unlock()
	if strings.Contains(log, "PRIVATE KEY") || strings.Contains(log, "ghs_") {
		t.Error("the worker logged the key or the installation token")
	}
}
