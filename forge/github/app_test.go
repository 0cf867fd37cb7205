package github

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"refci.dev/refci/fixtures/githubapi"
	"refci.dev/refci/forge"
	"refci.dev/refci/forge/forgetest"
	"refci.dev/refci/queue"
)

const (
	appID          = 123
	installationID = 456
)

var keys struct {
	once       sync.Once
	good, evil *rsa.PrivateKey
}

// testKeys returns two RSA keys, made once per test binary (slow).
func testKeys(t testing.TB) (good, evil *rsa.PrivateKey) {
	keys.once.Do(func() {
		keys.good, _ = rsa.GenerateKey(rand.Reader, 2048)
		keys.evil, _ = rsa.GenerateKey(rand.Reader, 2048)
	})
	if keys.good == nil || keys.evil == nil {
		t.Fatal("no RSA keys")
	}
	return keys.good, keys.evil
}

// keyFile writes key as GitHub hands it out (PKCS #1 PEM), owner-only.
func keyFile(t testing.TB, key *rsa.PrivateKey) string {
	p := filepath.Join(t.TempDir(), "app.pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// newApp starts a stand-in with the App installed and returns the App's
// adapter on org/app.
func newApp(t *testing.T, lifetime time.Duration) (*Forge, *githubapi.Server) {
	t.Helper()
	good, _ := testKeys(t)
	s := githubapi.New(t, "org", "app", "t0ken")
	s.SetApp(githubapi.App{ID: appID, InstallationID: installationID, Key: &good.PublicKey, TokenLifetime: lifetime})
	f, err := NewApp(AppConfig{Repo: "org/app", AppID: appID, InstallationID: installationID, PrivateKeyFile: keyFile(t, good), BaseURL: s.URL})
	if err != nil {
		t.Fatal(err)
	}
	return f, s
}

func count(calls []string, prefix string) int {
	n := 0
	for _, c := range calls {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

func TestGitHubAppCheckRunIsCreatedThenUpdatedInPlace(t *testing.T) {
	f, s := newApp(t, 0)
	ctx := context.Background()
	for _, st := range []forge.Status{
		{Context: "refci/ci", State: queue.Running, Description: "refci ci: running", TargetURL: "https://ci.example.org/r/1"},
		{Context: "refci/lint", State: queue.Running, Description: "refci lint: running"},
		{Context: "refci/ci", State: queue.Failure, Description: "refci ci: failed: test", Summary: "## refci ci\n\n```\nFAIL\n```", TargetURL: "https://ci.example.org/r/1"},
		{Context: "refci/lint", State: queue.Success, Description: "refci lint: passed"},
	} {
		if err := f.SetStatus(ctx, sha, st); err != nil {
			t.Fatalf("%s %s: %v", st.Context, st.State, err)
		}
	}
	runs := s.CheckRuns(sha)
	if len(runs) != 2 {
		t.Fatalf("%d check runs, want one per context: %+v", len(runs), runs)
	}
	ci, lint := runs[0], runs[1]
	if ci.Name != "refci/ci" || ci.Status != "completed" || ci.Conclusion != "failure" || ci.Title != "refci ci: failed: test" ||
		ci.Summary != "## refci ci\n\n```\nFAIL\n```" || ci.DetailsURL != "https://ci.example.org/r/1" || ci.AppID != appID {
		t.Errorf("refci/ci: %+v", ci)
	}
	if lint.Name != "refci/lint" || lint.Conclusion != "success" || lint.Summary != "refci lint: passed" {
		t.Errorf("refci/lint (no summary: the description): %+v", lint)
	}
	if len(s.Statuses(sha)) != 0 {
		t.Errorf("an App posted commit statuses too: %+v", s.Statuses(sha))
	}
	calls := s.Calls()
	if n, m := count(calls, "POST /api/v3/repos/org/app/check-runs"), count(calls, "PATCH /api/v3/repos/org/app/check-runs/"); n != 2 || m != 2 {
		t.Errorf("%d creations and %d updates, want 2 and 2: %q", n, m, calls)
	}

	// A restarted adapter remembers nothing: it finds the App's run on
	// GitHub and updates it, even beside another App's run of that name.
	s.SetApp(githubapi.App{ID: 999, InstallationID: installationID, Key: &keys.good.PublicKey})
	other, err := NewApp(AppConfig{Repo: "org/app", AppID: 999, InstallationID: installationID, PrivateKeyFile: keyFile(t, keys.good), BaseURL: s.URL})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.SetStatus(ctx, sha, forge.Status{Context: "refci/ci", State: queue.Running, Description: "another App"}); err != nil {
		t.Fatal(err)
	}
	s.SetApp(githubapi.App{ID: appID, InstallationID: installationID, Key: &keys.good.PublicKey})
	again, err := NewApp(AppConfig{Repo: "org/app", AppID: appID, InstallationID: installationID, PrivateKeyFile: keyFile(t, keys.good), BaseURL: s.URL})
	if err != nil {
		t.Fatal(err)
	}
	if err := again.SetStatus(ctx, sha, forge.Status{Context: "refci/ci", State: queue.Running, Description: "refci ci: running again"}); err != nil {
		t.Fatal(err)
	}
	runs = s.CheckRuns(sha)
	if len(runs) != 3 || runs[0].Status != "in_progress" || runs[0].Conclusion != "" || runs[0].Title != "refci ci: running again" || runs[2].AppID != 999 || runs[2].Title != "another App" {
		t.Errorf("after a restart: %+v; want the App's refci/ci run updated in place, the other App's untouched", runs)
	}
}

func TestGitHubAppConclusionsKeepTheMachineApartFromTheCode(t *testing.T) {
	f, s := newApp(t, 0)
	ctx := context.Background()
	want := map[queue.State][2]string{
		queue.Running: {"in_progress", ""}, queue.Success: {"completed", "success"}, queue.Failure: {"completed", "failure"},
		queue.Error: {"completed", "action_required"}, queue.Cancelled: {"completed", "cancelled"},
	}
	for st := range want {
		if err := f.SetStatus(ctx, sha, forge.Status{Context: "refci/" + string(st), State: st, Description: strings.Repeat("é", 300) + "\nline two"}); err != nil {
			t.Fatalf("%s: %v", st, err)
		}
	}
	for _, cr := range s.CheckRuns(sha) {
		w := want[queue.State(strings.TrimPrefix(cr.Name, "refci/"))]
		if cr.Status != w[0] || cr.Conclusion != w[1] || strings.Contains(cr.Title, "\n") || len([]rune(cr.Title)) > ContextLimit {
			t.Errorf("%s: status %q conclusion %q title of %d characters; want %q %q, one line", cr.Name, cr.Status, cr.Conclusion, len([]rune(cr.Title)), w[0], w[1])
		}
	}
	if err := f.SetStatus(ctx, sha, forge.Status{Context: "refci/x", State: "queued"}); err == nil {
		t.Error("a state refci never has was sent")
	}
}

func TestGitHubAppRefusedJWTIsErrAuth(t *testing.T) {
	good, evil := testKeys(t)
	s := githubapi.New(t, "org", "app", "t0ken")
	s.SetApp(githubapi.App{ID: appID, InstallationID: installationID, Key: &good.PublicKey})
	ctx := context.Background()
	st := forge.Status{Context: "refci/ci", State: queue.Running, Description: "running"}
	for name, cfg := range map[string]AppConfig{
		"another key":          {AppID: appID, InstallationID: installationID, PrivateKeyFile: keyFile(t, evil)},
		"another App":          {AppID: 7, InstallationID: installationID, PrivateKeyFile: keyFile(t, good)},
		"another installation": {AppID: appID, InstallationID: 8, PrivateKeyFile: keyFile(t, good)},
	} {
		cfg.Repo, cfg.BaseURL = "org/app", s.URL
		f, err := NewApp(cfg)
		if err != nil {
			t.Fatal(err)
		}
		err = f.SetStatus(ctx, sha, st)
		if !errors.Is(err, forge.ErrAuth) || !strings.Contains(err.Error(), "org/app") || !strings.Contains(err.Error(), "check") || strings.Contains(err.Error(), "http://") {
			t.Errorf("%s: %v; want ErrAuth naming the repository and what to check", name, err)
		}
		if _, err := f.PullRequestsOf(ctx, sha); !errors.Is(err, forge.ErrAuth) {
			t.Errorf("%s: pull requests: %v; want ErrAuth", name, err)
		}
	}
	if n := len(s.CheckRuns(sha)); n != 0 {
		t.Errorf("%d check runs made with refused JWTs", n)
	}

	// A permission the App lacks: what to give it.
	f, err := NewApp(AppConfig{Repo: "org/app", AppID: appID, InstallationID: installationID, PrivateKeyFile: keyFile(t, good), BaseURL: s.URL})
	if err != nil {
		t.Fatal(err)
	}
	s.Fail(githubapi.Failure{Code: 403, Message: "Resource not accessible by integration"})
	if err := f.SetStatus(ctx, sha, st); !errors.Is(err, forge.ErrPermission) || !strings.Contains(err.Error(), "Checks: write") {
		t.Errorf("no permission: %v; want ErrPermission naming the App's permissions", err)
	}
}

func TestGitHubAppInstallationTokenIsCachedAndRenewed(t *testing.T) {
	f, s := newApp(t, 0) // GitHub's hour
	ctx := context.Background()
	set := func(st queue.State) {
		t.Helper()
		if err := f.SetStatus(ctx, sha, forge.Status{Context: "refci/ci", State: st, Description: string(st)}); err != nil {
			t.Fatal(err)
		}
	}
	set(queue.Running)
	set(queue.Failure)
	if _, err := f.PullRequestsOf(ctx, sha); err != nil {
		t.Fatal(err)
	}
	if n := s.TokensIssued(); n != 1 {
		t.Fatalf("%d installation tokens for three calls within the hour, want 1", n)
	}
	// Expired (or revoked) before its time: refused with 401, renewed,
	// and the call goes through.
	s.ExpireTokens()
	set(queue.Success)
	if n := s.TokensIssued(); n != 2 {
		t.Fatalf("%d installation tokens after the first expired, want 2", n)
	}
	if runs := s.CheckRuns(sha); len(runs) != 1 || runs[0].Conclusion != "success" {
		t.Errorf("check runs: %+v", runs)
	}

	// Tokens that expire within the renewal margin are renewed before
	// each use, never sent about to lapse.
	f, s = newApp(t, 2*time.Minute)
	set(queue.Running)
	set(queue.Success)
	calls := s.Calls()
	requests := len(calls) - count(calls, "POST /api/v3/app/")
	if n := s.TokensIssued(); n != requests || n != count(calls, "POST /api/v3/app/installations/456/access_tokens") || requests != 3 {
		t.Errorf("%d tokens for %d requests (find, create, update) with tokens that expire in 2 minutes; want one each (renewed %s before expiry): %q", n, requests, renewBefore, calls)
	}
}

func TestGitHubAppBadPrivateKeyFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ec)
	for _, tc := range []struct{ name, path, want string }{
		{"unreadable", filepath.Join(dir, "missing.pem"), "no such file"},
		{"not PEM", write("token.pem", []byte("ghp_0123456789\n")), "is not PEM"},
		{"not RSA", write("ec.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER})), "not RSA"},
		{"a public key", write("pub.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}})), "not an RSA private key"},
		{"damaged", write("bad.pem", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte("junk")})), "bad.pem"},
		{"none", "", "no private_key_file"},
	} {
		_, err := NewApp(AppConfig{Repo: "org/app", AppID: appID, InstallationID: installationID, PrivateKeyFile: tc.path})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "org/app") {
			t.Errorf("%s: %v; want an error saying %q", tc.name, err, tc.want)
		}
	}
	if _, err := NewApp(AppConfig{Repo: "org/app", PrivateKeyFile: keyFile(t, keys.good)}); err == nil || !strings.Contains(err.Error(), "app_id") {
		t.Errorf("no app_id: %v", err)
	}
}

// appStandIn is the contract's view of the stand-in behind an App's
// adapter: statuses are check runs, their state the conclusion or, before
// one, the status.
type appStandIn struct {
	standIn
	key string
}

func (c *appStandIn) Statuses(_ context.Context, commit string) ([]forgetest.Seen, error) {
	var out []forgetest.Seen
	for _, r := range c.s.CheckRuns(commit) {
		st := r.Conclusion
		if st == "" {
			st = r.Status
		}
		out = append(out, forgetest.Seen{Context: r.Name, State: st, Description: r.Title, TargetURL: r.DetailsURL})
	}
	return out, nil
}

func (c *appStandIn) Refused() forge.Forge {
	f, _ := NewApp(AppConfig{Repo: "org/app", AppID: appID, InstallationID: installationID, PrivateKeyFile: c.key + ".evil", BaseURL: c.s.URL})
	return f
}

func (c *appStandIn) Missing() forge.Forge {
	f, _ := NewApp(AppConfig{Repo: "org/gone", AppID: appID, InstallationID: installationID, PrivateKeyFile: c.key, BaseURL: c.s.URL})
	return f
}

func TestGitHubAppContract(t *testing.T) {
	good, evil := testKeys(t)
	forgetest.Contract(t, func(t *testing.T) (forge.Forge, forgetest.Controls) {
		f, s := newApp(t, 0)
		key := keyFile(t, good)
		if err := os.WriteFile(key+".evil", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(evil)}), 0o600); err != nil {
			t.Fatal(err)
		}
		return f, &appStandIn{standIn: standIn{s: s}, key: key}
	})
}
