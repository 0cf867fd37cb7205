package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/forge/site/sitetest"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
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
	for _, want := range []string{`<a id="first-failure" href="#unit-L2">`, "&lt;script&gt;alert(1)&lt;/script&gt;", `<li id=unit-L2>nope`,
		`<span class="subject">pipeline</span>`, " · by Test User", " · attempt 1 · run "} { // the target commit's subject and author
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
	sitetest.CheckLinks(t, out)
	var man siteManifest
	raw, _ := os.ReadFile(filepath.Join(out, "manifest.json"))
	if err := json.Unmarshal(raw, &man); err != nil || man.Format != 7 || man.RunsFile == "" {
		t.Errorf("manifest: %v %s", err, raw)
	} else if _, err := os.Stat(filepath.Join(out, man.RunsFile)); err != nil {
		t.Errorf("manifest's runs file: %v", err)
	}
	// Usage errors.
	if r := s.refci("view", "extra"); r.code != 2 {
		t.Errorf("view with an argument: exit %d", r.code)
	}
	if r := s.refci("view", "-h"); r.code != 0 || !strings.Contains(r.stdout, "Usage: refci view") {
		t.Errorf("view -h: %d %s", r.code, r.stdout)
	}
}

// siteManifest is what the tests read of the manifest.json refci view
// writes (package site owns its format).
type siteManifest struct {
	Format  int                          `json:"format"`
	Keys    string                       `json:"keys"`
	Runs    map[string]json.RawMessage   `json:"runs"`
	Commits map[string]render.CommitInfo `json:"commits"`
	// RunsFile holds the runs and commits from format 5 on.
	RunsFile string `json:"runs_file"`
}

// checkSiteHeaders checks what the HTTP site of refci serve sends.
var checkSiteHeaders = sitetest.CheckHeaders

// putRun stores st as an (unsigned) result commit under its run ref, the
// way a worker's snapshot or result would be, and returns the ref.
func (s *sandbox) putRun(st *queue.Status) string {
	s.t.Helper()
	ref, _ := s.putResult(st, "", "", nil)
	return ref
}

// A run whose worker died stays "running" in its status.json; once the
// attempt that took it over is here, the site shows it as an error,
// "worker lost", linked to that attempt, and lists nothing as running.
func TestViewShowsLostRuns(t *testing.T) {
	s := newSandbox(t)
	target := s.pipeline("echo hi\n")
	own, other, otherKey := s.twoKeys()
	ownKey := filepath.Join(s.home, "key.asc")
	started := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	a1 := &queue.Status{Format: queue.Format, State: queue.Running, Target: target, Request: "crash", Run: queue.NewRunID(started),
		Attempt: 1, Worker: own, Started: started, Jobs: []queue.Job{{Name: "test", State: queue.Running}}}
	s.putResult(a1, ownKey, "", nil)
	out := filepath.Join(s.root, "site")
	s.refci("view", "-o", out).want(t, 0)
	if !listsRunning(t, out) {
		t.Fatalf("a running run without a successor is not listed as running")
	}

	exit := 0
	a2 := &queue.Status{Format: queue.Format, State: queue.Success, Target: target, Request: "crash", Run: queue.NewRunID(started.Add(time.Minute)),
		Attempt: 2, Worker: other, Started: started.Add(time.Minute), ExitCode: &exit, Extra: map[string]any{queue.ExtraPreviousRun: a1.Run}}
	// An attempt nobody vouches for (signed by an unknown key) does not
	// make the run look lost.
	ref2, _ := s.putResult(a2, otherKey, "", nil)
	if r := s.refci("view", "-o", out).want(t, 0); !strings.Contains(r.stdout, "refci: 2 runs (1 rendered, 0 removed)") {
		t.Errorf("view after an unverified takeover:\n%s", r.stdout)
	}
	if !listsRunning(t, out) {
		t.Errorf("an unverified attempt made the run look lost")
	}
	a2.Worker = own
	ref2, _ = s.putResult(a2, ownKey, "", nil)
	r := s.refci("view", "-o", out).want(t, 0)
	if !strings.Contains(r.stdout, "refci: 2 runs (2 rendered, 0 removed)") {
		t.Errorf("view after the takeover (the new run, and the lost one again):\n%s", r.stdout)
	}
	sitetest.CheckLinks(t, out)
	index, _ := os.ReadFile(filepath.Join(out, "index.html"))
	if strings.Contains(string(index), `data-state="running"`) || !strings.Contains(string(index), "worker lost") {
		t.Errorf("index still lists the lost run as running, or not as lost:\n%s", index)
	}
	if listsRunning(t, out) {
		t.Error("state-running.html still lists a run")
	}
	page, _ := os.ReadFile(filepath.Join(out, "runs", target, a1.Run, "index.html"))
	if !strings.Contains(string(page), "worker lost") || !strings.Contains(string(page), `href="../../../runs/`+target+"/"+a2.Run+`/index.html"`) {
		t.Errorf("the lost run's page does not say so or link the attempt that took over:\n%s", page)
	}
	if raw, _ := os.ReadFile(filepath.Join(out, "runs", target, a1.Run, "status.json")); !strings.Contains(string(raw), `"state": "running"`) {
		t.Errorf("the lost run's status.json is not as stored:\n%s", raw)
	}
	if badge, _ := os.ReadFile(filepath.Join(out, "badges/crash.svg")); !strings.Contains(string(badge), "success") {
		t.Errorf("badge: %s", badge)
	}
	if r := s.refci("view", "-o", out).want(t, 0); !strings.Contains(r.stdout, "(0 rendered, 0 removed)") {
		t.Errorf("view with nothing changed:\n%s", r.stdout)
	}

	// Without the attempt that took it over, it is shown as it is again.
	s.git("", "update-ref", "-d", ref2)
	if r := s.refci("view", "-o", out).want(t, 0); !strings.Contains(r.stdout, "refci: 1 runs (1 rendered, 1 removed)") {
		t.Errorf("view after the takeover's removal:\n%s", r.stdout)
	}
	sitetest.CheckLinks(t, out)
	if !listsRunning(t, out) {
		t.Errorf("the run is not listed as running again")
	}
}

// listsRunning reports whether the site in out lists a run as running
// (state-running.html is there with no run in that state too).
func listsRunning(t *testing.T, out string) bool {
	t.Helper()
	page, err := os.ReadFile(filepath.Join(out, "state-running.html"))
	if err != nil {
		t.Fatalf("state-running.html: %v", err)
	}
	return strings.Contains(string(page), `data-state="running"`)
}

// The site shows the target commit's subject and author, read from the
// repository and escaped, on the lists and the run page, and names each
// run by request, commit, attempt and run suffix; a run on a commit the
// repository does not have is shown without them.
func TestViewShowsCommitSubject(t *testing.T) {
	s := newSandbox(t)
	s.write(".refci/run", "#!/bin/sh\nexit 0\n", 0o755)
	target := s.commitAll("Fix <script>alert(1)</script> & \"quotes\"\n\nThe body is not shown.")
	s.refci("run").want(t, 0)
	ref := s.runRefs()[0]
	runID := ref[strings.LastIndexByte(ref, '/')+1:]
	// A run on a commit this repository does not have.
	ghost := strings.Repeat("ab", 20)
	s.putRun(&queue.Status{Format: 1, Target: ghost, Request: "ghost", Run: "20260101T000000.000Z-0123456789ab", Attempt: 1,
		State: queue.Success, Started: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Worker: strings.Repeat("A", 40)})
	out := filepath.Join(s.root, "site")
	s.refci("view", "-o", out).want(t, 0)
	subject := "Fix &lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;quotes&#34;"
	label := "local · " + target[:12] + " · attempt 1 · run " + runID[strings.LastIndexByte(runID, '-')+1:]
	index, _ := os.ReadFile(filepath.Join(out, "index.html"))
	page, _ := os.ReadFile(filepath.Join(out, "runs", target, runID, "index.html"))
	for name, b := range map[string][]byte{"index": index, "run page": page} {
		for _, want := range []string{subject, "Test User", label} {
			if !strings.Contains(string(b), want) {
				t.Errorf("%s lacks %q", name, want)
			}
		}
		if strings.Contains(string(b), "<script>alert") || strings.Contains(string(b), "body is not shown") {
			t.Errorf("%s shows the commit message unescaped or whole", name)
		}
	}
	if history, _ := os.ReadFile(filepath.Join(out, "commits", target+".html")); !strings.Contains(string(history), "<h1>refci: runs of "+target+" · "+subject+"</h1>") {
		t.Errorf("the commit's history page is not titled with its subject")
	}
	if !strings.Contains(string(index), "ghost · "+ghost[:12]+" · attempt 1 · run 0123456789ab") {
		t.Errorf("index does not name the run on a missing commit")
	}
	// The manifest's runs file (package site's tests read it whole) holds
	// the commit's subject and author as they are.
	var man siteManifest
	raw, _ := os.ReadFile(filepath.Join(out, "manifest.json"))
	if err := json.Unmarshal(raw, &man); err != nil {
		t.Fatal(err)
	}
	if runs, err := os.ReadFile(filepath.Join(out, man.RunsFile)); err != nil ||
		!strings.Contains(string(runs), `Fix <script>alert(1)</script> & "quotes"`) || !strings.Contains(string(runs), "Test User") {
		t.Errorf("manifest's runs file lacks the commit's subject or author: %v", err)
	}
	// The run's summary keeps them for the lists of later builds.
	s.refci("run").want(t, 0)
	s.refci("view", "-o", out).want(t, 0)
	if index, _ := os.ReadFile(filepath.Join(out, "index.html")); strings.Count(string(index), subject) < 2 {
		t.Errorf("after an incremental build, the index does not show the subject of both runs")
	}
}
