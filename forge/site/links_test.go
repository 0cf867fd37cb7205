package site

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/forge/site/sitetest"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
)

// compareFresh checks that the site in dir is the one a build from
// scratch of the same run refs writes.
func compareFresh(t *testing.T, repo *gitproto.Repo, kr secrets.Keyring, dir string, o Options) {
	t.Helper()
	fresh := t.TempDir()
	if _, err := NewBuilder(repo.GitDir(), fresh, kr, o).Build(); err != nil {
		t.Fatal(err)
	}
	want, got := siteTree(t, fresh), siteTree(t, dir)
	for name, w := range want {
		if g, ok := got[name]; !ok {
			t.Errorf("%s: missing from the incremental build", name)
		} else if g != w {
			t.Errorf("%s differs from a fresh build's: %s", name, firstDiff(g, w))
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s: left by the incremental build, not in a fresh one", name)
		}
	}
}

// A commit page a build does not write again links only pages that are
// there, and says what a fresh build would: runs on another commit that
// change the lists (a state's first run, its last, pages added and gone)
// leave no stale link behind.
func TestUntouchedCommitPagesKeepTheirLinks(t *testing.T) {
	repo := newRepo(t)
	a := resultcommit.Commit(t, repo, map[string]string{"README": "a\n"}, "Commit A", nil)
	b := resultcommit.Commit(t, repo, map[string]string{"README": "b\n"}, "Commit B", nil)
	id := fixtures.OpenPGPIdentity(t, "Test Worker")
	var kr secrets.Keyring
	kr.Add(id)
	base := time.Now().UTC().Add(-2 * time.Hour).Truncate(time.Second)
	n := 0
	put := func(target gitproto.Hash, state queue.State, run string) string {
		t.Helper()
		started := base.Add(time.Duration(n) * time.Minute)
		n++
		if run == "" {
			run = queue.NewRunID(started)
		}
		st := &queue.Status{Format: queue.Format, State: state, Target: target.String(), Request: fmt.Sprintf("r%d", n%3), Run: run,
			Attempt: 1, Worker: id.Fingerprint(), Started: started}
		if state != queue.Running {
			exit := 0
			st.Finished, st.DurationMS, st.ExitCode = started.Add(time.Second), 1000, &exit
		}
		ref := queue.RunRef(st.Target, st.Run)
		old, _ := repo.RefHash(ref)
		resultcommit.Write(t, repo, st, old, id, map[string]string{queue.LogFile: "ok\n"})
		return run
	}
	o := Options{PageSize: 2, Warn: func(msg string) { t.Errorf("warned: %s", msg) }}
	out := t.TempDir()
	bl := NewBuilder(repo.GitDir(), out, kr, o)
	build := func(what string) {
		t.Helper()
		if _, err := bl.Build(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		sitetest.CheckLinks(t, out)
		compareFresh(t, repo, kr, out, o)
	}
	for i := 0; i < 3; i++ {
		put(a, queue.Success, "")
	}
	running := put(b, queue.Running, "")
	build("a's runs and a running run on b")
	aPage := "commits/" + a.String() + ".html"
	before, err := os.Stat(filepath.Join(out, aPage))
	if err != nil {
		t.Fatal(err)
	}
	// b's run ends, in a state no run was in, and b gets enough runs for
	// pages of their own on every list: a's page is not b's business.
	put(b, queue.Failure, running)
	for i := 0; i < 5; i++ {
		put(b, []queue.State{queue.Error, queue.Success}[i%2], "")
	}
	build("b's run ended, more runs on b")
	// Runs on b go: pages go with them.
	for _, r := range listRefs(t, repo, b.String())[2:] {
		if err := repo.UpdateRef(r, gitproto.ZeroHash, mustRef(t, repo, r)); err != nil {
			t.Fatal(err)
		}
	}
	build("most of b's runs gone")
	put(b, queue.Cancelled, "")
	put(b, queue.Running, "")
	build("b's runs in other states")
	after, err := os.Stat(filepath.Join(out, aPage))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) {
		t.Errorf("%s was written again: the fix is to link only lists that stay, not to write every page", aPage)
	}

	// A site of format 6 may have such stale pages: it is taken up with
	// every list page written anew, and no run rendered again.
	stale := []string{aPage, "commits/" + a.String() + "-page-1.html", "state-success-page-1.html", "page-1.html"}
	for _, name := range stale {
		if err := os.WriteFile(filepath.Join(out, name), []byte(`<a href="state-gone.html">stale</a>`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(filepath.Join(out, manifestFile))
	if err != nil {
		t.Fatal(err)
	}
	raw = []byte(strings.Replace(string(raw), fmt.Sprintf(`"format":%d`, siteFormat), `"format":6`, 1))
	if err := os.WriteFile(filepath.Join(out, manifestFile), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if st, err := NewBuilder(repo.GitDir(), out, kr, o).Build(); err != nil || st.Rendered != 0 {
		t.Fatalf("build of a format 6 site: %+v, %v", st, err)
	}
	sitetest.CheckLinks(t, out)
	compareFresh(t, repo, kr, out, o)
}

// listRefs lists the run refs of target in repo.
func listRefs(t *testing.T, repo *gitproto.Repo, target string) []string {
	t.Helper()
	runs, err := listRuns(repo)
	if err != nil {
		t.Fatal(err)
	}
	var refs []string
	for _, r := range runs {
		if r.target == target {
			refs = append(refs, r.ref)
		}
	}
	return refs
}

// firstDiff shows the first line where got and want differ.
func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < max(len(g), len(w)); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("line %d:\n%.400s\nwant\n%.400s", i+1, gl, wl)
		}
	}
	return "(same lines)"
}

// A result that lacks files its status.json names (its log, a job's log,
// an artifact: a worker stopped, or a pusher who left them out) gets a
// run page that links none of them: it says they are not stored.
func TestRunPagesLinkOnlyWhatIsStored(t *testing.T) {
	repo := newRepo(t)
	target := resultcommit.Commit(t, repo, map[string]string{"README": "a\n"}, "Commit A", nil)
	id := fixtures.OpenPGPIdentity(t, "Test Worker")
	var kr secrets.Keyring
	kr.Add(id)
	started := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	exit := 1
	st := &queue.Status{Format: queue.Format, State: queue.Failure, Target: target.String(), Request: "main", Run: queue.NewRunID(started),
		Attempt: 1, Worker: id.Fingerprint(), Started: started, Finished: started.Add(time.Second), DurationMS: 1000, ExitCode: &exit,
		Jobs: []queue.Job{
			{Name: "build", State: queue.Success, Log: queue.JobLogPath("build")},
			{Name: "test", State: queue.Failure, Log: queue.JobLogPath("test")},
		},
		Artifacts: []queue.Artifact{{Path: "here.txt", Size: 3, SHA256: strings.Repeat("a", 64)}, {Path: "gone.txt", Size: 3, SHA256: strings.Repeat("b", 64)}},
	}
	// Only build's log and one artifact are in the tree.
	resultcommit.Write(t, repo, st, gitproto.ZeroHash, id, map[string]string{
		queue.JobLogPath("build"): "ok\n", queue.ArtifactsDir + "/here.txt": "hi\n"})
	out := t.TempDir()
	var warned []string
	if _, err := NewBuilder(repo.GitDir(), out, kr, Options{Warn: func(msg string) { warned = append(warned, msg) }}).Build(); err != nil {
		t.Fatal(err)
	}
	if len(warned) > 0 && strings.Contains(warned[0], "invalid") {
		t.Fatalf("warned: %q", warned)
	}
	sitetest.CheckLinks(t, out)
	page, err := os.ReadFile(filepath.Join(out, "runs", target.String(), st.Run, "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`href="jobs/build/log.txt"`, `href="artifacts/here.txt"`, "gone.txt", "(no log stored)"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("the run page lacks %s", want)
		}
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "gone.txt") {
		t.Errorf("warned: %q", warned)
	}
}
