package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"refci.dev/refci/cmd/internal/cli"
	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/forge"
	"refci.dev/refci/forge/forgeconf"
	"refci.dev/refci/forge/forgetest"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// fakeKind adds the kind "fake" to the adapters for the test: each
// entry's repo gets a forgetest.Fake, and the tokens it was built with
// are kept.
type fakeKind struct {
	mu     sync.Mutex
	forges map[string]*forgetest.Fake
	tokens map[string]string
}

func addFakeKind(t *testing.T) *fakeKind {
	k := &fakeKind{forges: map[string]*forgetest.Fake{}, tokens: map[string]string{}}
	forgeKinds["fake"] = func(c forgeconf.Entry, token string) (forge.Forge, error) {
		k.mu.Lock()
		defer k.mu.Unlock()
		f := k.forges[c.Repo]
		if f == nil {
			f = forgetest.NewFake()
			k.forges[c.Repo] = f
		}
		k.tokens[c.Repo] = token
		return f, nil
	}
	t.Cleanup(func() { delete(forgeKinds, "fake") })
	return k
}

func (k *fakeKind) forge(repo string) *forgetest.Fake {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.forges[repo]
}

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

// refci mirror follows several remotes, each shown on its forges (two
// forges for one remote), from real result refs; the token comes from
// its file and is never printed; the command stops cleanly with its
// context.
func TestMirrorCommand(t *testing.T) {
	k := addFakeKind(t)
	dir := t.TempDir()
	t.Setenv("REFCI_HOME", filepath.Join(dir, "home"))
	const secret = "tok-3f9a1c0b2d4e-secret"
	tok := writeToken(t, dir, "token", secret, 0o600)
	var bares, heads []string
	for i := 0; i < 2; i++ {
		bare := fixtures.BareRepo(t, fmt.Sprintf("app%d.git", i))
		repo, err := gitproto.Open(bare)
		if err != nil {
			t.Fatal(err)
		}
		head := resultcommit.Commit(t, repo, map[string]string{"README": "x"}, fmt.Sprint("change ", i), nil).String()
		st := &queue.Status{Format: queue.Format, State: queue.Failure, Target: head, Request: "ci", Run: queue.NewRunID(time.Now().Add(-time.Minute)),
			Attempt: 1, Worker: strings.Repeat("ab", 20), Started: time.Now().Add(-time.Minute).UTC(), Reason: "the pipeline exited 2",
			Jobs: []queue.Job{}, Artifacts: []queue.Artifact{}, ExitCode: queue.IntPtr(2)}
		resultcommit.Write(t, repo, st, gitproto.ZeroHash, nil, map[string]string{queue.LogFile: "step 1\nit broke\n"})
		bares, heads = append(bares, bare), append(heads, head)
	}
	cfg := filepath.Join(dir, "mirror.toml")
	body := fmt.Sprintf(`poll = "50ms"
[[forge]]
kind = "fake"
repo = "org/app0"
remote = %q
token_file = %q
runs_url = "https://ci.example.invalid/app0.git"
[[forge]]
kind = "fake"
repo = "mirror/app0"
remote = %q
token_file = %q
[[forge]]
kind = "fake"
repo = "org/app1"
remote = %q
token_file = %q
`, bares[0], tok, bares[0], tok, bares[1], tok)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr fixtures.Buffer
	done := make(chan int, 1)
	// The pull request is opened once the forges exist.
	go func() { done <- run(ctx, []string{"mirror", "--config", cfg}, strings.NewReader(""), &stdout, &stderr) }()
	fixtures.WaitFor(t, time.Minute, "the forges to be built", func() bool {
		return k.forge("org/app0") != nil && k.forge("mirror/app0") != nil && k.forge("org/app1") != nil
	})
	pr, _ := k.forge("org/app0").OpenPullRequest(ctx, heads[0])
	for _, c := range []struct{ repo, head string }{{"org/app0", heads[0]}, {"mirror/app0", heads[0]}, {"org/app1", heads[1]}} {
		fixtures.WaitFor(t, time.Minute, "the status on "+c.repo, func() bool {
			for _, s := range k.forge(c.repo).StatusesOf(c.head) {
				if s.Context == "refci/ci" && s.State == queue.Failure {
					return true
				}
			}
			return false
		})
	}
	s := k.forge("org/app0").StatusesOf(heads[0])[0]
	if !strings.HasPrefix(s.TargetURL, "https://ci.example.invalid/app0.git/runs/"+heads[0]+"/") {
		t.Errorf("target URL %q", s.TargetURL)
	}
	if s := k.forge("mirror/app0").StatusesOf(heads[0])[0]; !strings.HasPrefix(s.TargetURL, "https://ci.example.invalid/app0.git/runs/") {
		t.Errorf("the second forge of the remote links no run page: %q", s.TargetURL)
	}
	// The pull request opened after the first look gets its comment at
	// the next change of its commit; here a new run.
	repo, _ := gitproto.Open(bares[0])
	st := &queue.Status{Format: queue.Format, State: queue.Success, Target: heads[0], Request: "lint", Run: queue.NewRunID(time.Now().Add(-time.Second)),
		Attempt: 1, Worker: strings.Repeat("ab", 20), Started: time.Now().Add(-time.Second).UTC(), Jobs: []queue.Job{}, Artifacts: []queue.Artifact{}, ExitCode: queue.IntPtr(0)}
	resultcommit.Write(t, repo, st, gitproto.ZeroHash, nil, nil)
	fixtures.WaitFor(t, time.Minute, "the comment", func() bool {
		c, _ := k.forge("org/app0").Comments(ctx, pr)
		return len(c) == 1 && strings.Contains(c[0], "it broke") && strings.Contains(c[0], "`lint`")
	})
	for repo, got := range k.tokens {
		if got != secret {
			t.Errorf("%s was built with token %q", repo, got)
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d; stderr:\n%s", code, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("refci mirror did not stop with its context")
	}
	if strings.Contains(stderr.String()+stdout.String(), secret) {
		t.Errorf("the token was printed:\n%s", stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "home", "mirror", "records")); err != nil {
		t.Errorf("no record of what was mirrored under $REFCI_HOME/mirror: %v", err)
	}
}

// Configuration errors exit 2 and say what to fix: unknown settings,
// unknown kinds and kinds not built in, missing remotes, token files
// that are missing or readable by others.
func TestMirrorConfigErrors(t *testing.T) {
	addFakeKind(t)
	dir := t.TempDir()
	t.Setenv("REFCI_HOME", filepath.Join(dir, "home"))
	good := writeToken(t, dir, "good", "tok", 0o600)
	open := writeToken(t, dir, "open", "tok", 0o644)
	spaced := writeToken(t, dir, "spaced", "tok en", 0o600)
	entry := func(kind, remote, token string) string {
		return fmt.Sprintf("[[forge]]\nkind = %q\nrepo = \"org/app\"\nremote = %q\ntoken_file = %q\n", kind, remote, token)
	}
	remote := fixtures.BareRepo(t, "app.git")
	openKey := writeToken(t, dir, "open.pem", "key", 0o644)
	notPEM := writeToken(t, dir, "token.pem", "ghp_notakey", 0o600)
	app := func(kind, key string) string {
		return fmt.Sprintf("[[forge]]\nkind = %q\nrepo = \"org/app\"\nremote = %q\napp_id = 123\ninstallation_id = 456\nprivate_key_file = %q\n", kind, remote, key)
	}
	for _, tc := range []struct{ name, config, want string }{
		{"unknown setting", entry("fake", remote, good) + "colour = \"red\"\n", `unknown setting "forge.colour"`},
		{"token and App", app("github", notPEM) + fmt.Sprintf("token_file = %q\n", good), "token_file and app_id/installation_id/private_key_file exclude each other"},
		{"App on Gitea", app("gitea", notPEM), `are for kind = "github"`},
		{"half an App", strings.Replace(app("github", notPEM), "installation_id = 456\n", "", 1), "needs all of app_id, installation_id and private_key_file"},
		{"readable key", app("github", openKey), "private_key_file " + openKey + " can be read by others (mode 0644): run chmod 600"},
		{"no key", app("github", filepath.Join(dir, "nope.pem")), "write the GitHub App's private key (.pem) there"},
		{"not a key", app("github", notPEM), "is not PEM"},
		{"no forge", "poll = \"1s\"\n", "no [[forge]] entry"},
		{"no remote", entry("fake", "", good), "has no remote"},
		{"unknown kind", entry("bitbucket", remote, good), `unknown forge kind "bitbucket"; known: github, gitea (also Forgejo), gitlab`},
		{"no token file", entry("fake", remote, filepath.Join(dir, "nope")), "write the forge's access token there (chmod 600)"},
		{"readable token", entry("fake", remote, open), "can be read by others (mode 0644): run chmod 600 " + open},
		{"two words", entry("fake", remote, spaced), "must hold the token alone"},
	} {
		cfg := filepath.Join(dir, "c.toml")
		if err := os.WriteFile(cfg, []byte(tc.config), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, errs := runHelp("mirror", "--config", cfg)
		if code != cli.ExitUsage || !strings.Contains(errs, tc.want) || strings.Count(errs, "\n") != 1 {
			t.Errorf("%s: exit %d, stderr %q; want exit 2 and one line saying %q", tc.name, code, errs, tc.want)
		}
	}
}

// runHelp runs refci-forge in this process and returns its exit code
// and streams.
func runHelp(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestMain(m *testing.M) { os.Exit(fixtures.PrivateHome(m)) }
