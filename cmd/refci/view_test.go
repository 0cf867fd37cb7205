package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestResultTreeHasPage: every result tree carries index.html rendered
// from the result; a repository's .refci/viewer/ takes index.html and the
// default page moves to refci.html; unsafe viewer files are left out.
func TestResultTreeHasPage(t *testing.T) {
	s := newSandbox(t)
	s.pipeline(`refci job unit -- sh -c 'echo "<script>alert(1)</script>"; echo nope; exit 1'
exit 0
`)
	s.refci("run").want(t, 1)
	ref := s.runRefs()[0]
	page := s.git("", "show", ref+":index.html")
	for _, want := range []string{`<a id="first-failure" href="#unit-L2">`, "&lt;script&gt;alert(1)&lt;/script&gt;", `<li id=unit-L2>nope`} {
		if !strings.Contains(page, want) {
			t.Errorf("index.html lacks %q", want)
		}
	}
	if out := s.git("", "ls-tree", "--name-only", ref); strings.Contains(out, "refci.html") {
		t.Errorf("refci.html without a viewer:\n%s", out)
	}

	s.write(".refci/viewer/index.html", "<!doctype html><title>own viewer</title>\n", 0o644)
	s.write(".refci/viewer/app.js", "fetch('status.json')\n", 0o644)
	s.write(".refci/viewer/status.json", "{\"forged\": true}\n", 0o644) // may not replace the real one
	s.write(".refci/viewer/artifacts/x", "no\n", 0o644)
	if err := os.Symlink("/etc/passwd", filepath.Join(s.repo, ".refci/viewer/passwd")); err != nil {
		t.Fatal(err)
	}
	s.pipeline("echo fine\n")
	s.refci("run").want(t, 0)
	refs := s.runRefs()
	var newest string
	for _, r := range refs {
		if r != ref {
			newest = r
		}
	}
	tree := s.git("", "ls-tree", "-r", "--name-only", newest)
	for _, want := range []string{"index.html", "refci.html", "app.js", "status.json", "log.txt"} {
		if !strings.Contains("\n"+tree+"\n", "\n"+want+"\n") {
			t.Errorf("tree lacks %s:\n%s", want, tree)
		}
	}
	for _, bad := range []string{"passwd", "artifacts/x"} {
		if strings.Contains(tree, bad) {
			t.Errorf("tree has %s:\n%s", bad, tree)
		}
	}
	if got := s.git("", "show", newest+":index.html"); !strings.Contains(got, "own viewer") {
		t.Errorf("index.html is not the repository's viewer: %.200s", got)
	}
	if got := s.git("", "show", newest+":refci.html"); !strings.Contains(got, "SUCCESS") {
		t.Errorf("refci.html is not the default page: %.200s", got)
	}
	if got := s.git("", "show", newest+":status.json"); strings.Contains(got, "forged") {
		t.Errorf("the viewer replaced status.json")
	}
}

// TestViewSite: refci view writes the site, and a second build after one
// more run renders only that run.
func TestViewSite(t *testing.T) {
	s := newSandbox(t)
	s.pipeline("echo first; exit 3\n")
	s.refci("run").want(t, 1)
	out := filepath.Join(s.root, "site")
	r := s.refci("view", "-o", out).want(t, 0)
	if !strings.Contains(r.stdout, "refci: 1 runs (1 rendered, 0 removed)") || !strings.Contains(r.stdout, filepath.Join(out, "index.html")) {
		t.Errorf("view output:\n%s", r.stdout)
	}
	ref := s.runRefs()[0]
	rest := strings.TrimPrefix(ref, "refs/ci/runs/")
	target := strings.Split(rest, "/")[0]
	for _, f := range []string{"index.html", "state-failure.html", "commits/" + target + ".html", "badges/local.svg",
		"runs/" + rest + "/index.html", "runs/" + rest + "/log.txt", "runs/" + rest + "/status.json", "manifest.json"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("site lacks %s", f)
		}
	}
	index, _ := os.ReadFile(filepath.Join(out, "index.html"))
	if !strings.Contains(string(index), `href="runs/`+rest+`/index.html"`) || !strings.Contains(string(index), ".refci/run exited with code 3") {
		t.Errorf("index does not link the run or say why it failed:\n%s", index)
	}
	badge, _ := os.ReadFile(filepath.Join(out, "badges/local.svg"))
	if !strings.Contains(string(badge), "failure") {
		t.Errorf("badge: %s", badge)
	}

	// Nothing changed: nothing rendered.
	if r := s.refci("view", "-o", out).want(t, 0); !strings.Contains(r.stdout, "(0 rendered, 0 removed)") {
		t.Errorf("second view:\n%s", r.stdout)
	}
	// A new run: only it is rendered; the old run page is untouched.
	oldPage := filepath.Join(out, "runs", rest, "index.html")
	fi1, _ := os.Stat(oldPage)
	s.refci("run").want(t, 1)
	if r := s.refci("view", "-o", out).want(t, 0); !strings.Contains(r.stdout, "refci: 2 runs (1 rendered, 0 removed)") {
		t.Errorf("incremental view:\n%s", r.stdout)
	}
	if fi2, _ := os.Stat(oldPage); !fi2.ModTime().Equal(fi1.ModTime()) {
		t.Errorf("the unchanged run's page was rewritten")
	}
	commit, _ := os.ReadFile(filepath.Join(out, "commits", target+".html"))
	if !strings.Contains(string(commit), "failure since") {
		t.Errorf("commit page does not say since when it fails:\n%s", commit)
	}
	// A deleted run ref: its directory goes.
	s.git("", "update-ref", "-d", ref)
	if r := s.refci("view", "-o", out).want(t, 0); !strings.Contains(r.stdout, "refci: 1 runs (0 rendered, 1 removed)") {
		t.Errorf("view after delete:\n%s", r.stdout)
	}
	if _, err := os.Stat(oldPage); err == nil {
		t.Errorf("the deleted run's page is still there")
	}
	var man siteManifest
	raw, _ := os.ReadFile(filepath.Join(out, manifestFile))
	if err := json.Unmarshal(raw, &man); err != nil || len(man.Runs) != 1 {
		t.Errorf("manifest: %v %s", err, raw)
	}
	// Usage errors.
	if r := s.refci("view", "extra"); r.code != 2 {
		t.Errorf("view with an argument: exit %d", r.code)
	}
	if r := s.refci("view", "-h"); r.code != 0 || !strings.Contains(r.stdout, "Usage: refci view") {
		t.Errorf("view -h: %d %s", r.code, r.stdout)
	}
}
