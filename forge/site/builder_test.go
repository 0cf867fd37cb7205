package site

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
)

func TestMain(m *testing.M) { os.Exit(fixtures.PrivateHome(m)) }

// newRepo makes an empty bare repository and opens it.
func newRepo(t *testing.T) *gitproto.Repo {
	t.Helper()
	repo, err := gitproto.Open(fixtures.BareRepo(t, "app.git"))
	if err != nil {
		t.Fatal(err)
	}
	return repo
}

// A build renders what is new, a second build nothing; the manifest keeps
// its format, and a manifest of that format written by an earlier build
// (of refci before the site moved into this package, say) is taken up;
// other keys decide every verdict again.
func TestBuildIsIncremental(t *testing.T) {
	repo := newRepo(t)
	target := resultcommit.Commit(t, repo, map[string]string{"README": "hello\n"}, "Add the README\n\nThe body.", nil)
	id := fixtures.OpenPGPIdentity(t, "Test Worker")
	started := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	exit := 0
	st := &queue.Status{Format: queue.Format, State: queue.Success, Target: target.String(), Request: "main", Run: queue.NewRunID(started),
		Attempt: 1, Worker: id.Fingerprint(), Started: started, Finished: started.Add(time.Second), DurationMS: 1000, ExitCode: &exit}
	result := resultcommit.Write(t, repo, st, gitproto.ZeroHash, id, map[string]string{queue.LogFile: "ok\n"})
	ref := queue.RunRef(st.Target, st.Run)
	var kr secrets.Keyring
	kr.Add(id)
	out := t.TempDir()
	b := NewBuilder(repo.GitDir(), out, kr, Options{Warn: func(msg string) { t.Errorf("warned: %s", msg) }})
	build := func(b *Builder, want Stats) {
		t.Helper()
		got, err := b.Build()
		got.Took = 0
		if err != nil || got != want {
			t.Errorf("build: %+v, %v; want %+v", got, err, want)
		}
	}
	build(b, Stats{Runs: 1, Rendered: 1, Verified: 1})
	build(b, Stats{Runs: 1, Verified: 1})
	for _, f := range []string{"index.html", "state-success.html", "commits/" + target.String() + ".html", "badges/main.svg",
		"runs/" + target.String() + "/" + st.Run + "/index.html", "runs/" + target.String() + "/" + st.Run + "/log.txt"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("site lacks %s", f)
		}
	}
	raw, err := os.ReadFile(filepath.Join(out, manifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var man manifest
	if err := json.Unmarshal(raw, &man); err != nil {
		t.Fatal(err)
	}
	if c := man.Commits[target.String()]; man.Format != 4 || man.Keys != keysID(kr) || man.Runs[ref].Commit != result.String() ||
		!man.Runs[ref].Verdict.Verified() || c.Subject != "Add the README" || c.Author != "Test Author" {
		t.Errorf("manifest.json: %s", raw)
	}

	// A manifest of format 4, as refci view wrote it before: nothing to
	// render again.
	old := fmt.Sprintf(`{"format":4,"keys":%q,"runs":{%q:{"target":%q,"request":"main","run":%q,"attempt":1,"state":"success","commit":%q,"href":%q,"verdict":{"kind":"verified"}}}}`,
		keysID(kr), ref, target, st.Run, result, "runs/"+target.String()+"/"+st.Run+"/index.html")
	if err := os.WriteFile(filepath.Join(out, manifestFile), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	build(NewBuilder(repo.GitDir(), out, kr, Options{}), Stats{Runs: 1, Verified: 1})

	// No keys: the run is decided again, and not verified.
	build(NewBuilder(repo.GitDir(), out, secrets.Keyring{}, Options{}), Stats{Runs: 1, Rendered: 1})
}
