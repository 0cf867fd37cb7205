package site

import (
	"fmt"
	"maps"
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
	sitetest.CheckLinks(t, out)
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
	root, err := os.OpenRoot(out)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	man := readManifest(root, keysID(kr))
	if c := man.Commits[target.String()]; man.Format != siteFormat || !runsFileName().MatchString(man.RunsFile) || man.Keys != keysID(kr) || man.Runs[ref].Commit != result.String() ||
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
	if m := readManifest(root, keysID(kr)); m.Format != siteFormat || m.Runs[ref].Commit != result.String() {
		t.Errorf("the format 4 manifest was not taken up: %+v", m)
	}
	runsFiles, _ := filepath.Glob(filepath.Join(out, "manifest-runs-*.bin"))
	if len(runsFiles) != 1 {
		t.Errorf("runs files: %v", runsFiles)
	}

	// A manifest of format 5 (no delta; a planted delta_len it does not
	// have is read as what it is) and a delta beside it that it does not
	// know of: nothing to render again either; the delta is not read.
	// Nor is a delta_len that lies believed: a huge one (the delta is
	// read as far as it goes), a negative one (the site is built anew).
	for _, c := range []struct {
		head     string
		rendered int
	}{
		{`{"format":5,"keys":%q,"runs_file":%q}`, 0},
		{`{"format":6,"keys":%q,"runs_file":%q,"delta_len":1099511627776}`, 0},
		{`{"format":6,"keys":%q,"runs_file":%q,"delta_len":-5}`, 1},
	} {
		m5 := readManifest(root, keysID(kr))
		if err := os.WriteFile(filepath.Join(out, deltaOf(m5.RunsFile)), []byte(deltaMagic+"garbage"), 0o644); err != nil {
			t.Fatal(err)
		}
		head := fmt.Sprintf(c.head, keysID(kr), m5.RunsFile)
		if err := os.WriteFile(filepath.Join(out, manifestFile), []byte(head), 0o644); err != nil {
			t.Fatal(err)
		}
		build(NewBuilder(repo.GitDir(), out, kr, Options{}), Stats{Runs: 1, Rendered: c.rendered, Verified: 1})
		if m := readManifest(root, keysID(kr)); m.Format != siteFormat || m.Runs[ref].Commit != result.String() || m.rewrite {
			t.Errorf("%s was not taken up: %+v", head, m)
		}
	}

	// No keys: the run is decided again, and not verified.
	build(NewBuilder(repo.GitDir(), out, secrets.Keyring{}, Options{}), Stats{Runs: 1, Rendered: 1})
}

// The lists are paginated: index.html shows the newest runs and links
// the older pages, numbered from the oldest, so that a new run rewrites
// only the newest page (and the front pages); each page links its
// neighbours, and pages beyond the last go when runs do.
func TestListsArePaginated(t *testing.T) {
	repo := newRepo(t)
	target := resultcommit.Commit(t, repo, map[string]string{"README": "hello\n"}, "Add the README", nil)
	id := fixtures.OpenPGPIdentity(t, "Test Worker")
	var kr secrets.Keyring
	kr.Add(id)
	base := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	var refs []string
	add := func(i int, state queue.State) {
		t.Helper()
		started := base.Add(time.Duration(i) * time.Minute)
		exit := 0
		st := &queue.Status{Format: queue.Format, State: state, Target: target.String(), Request: "main", Run: queue.NewRunID(started),
			Attempt: 1, Worker: id.Fingerprint(), Started: started, Finished: started.Add(time.Second), DurationMS: 1000, ExitCode: &exit}
		resultcommit.Write(t, repo, st, gitproto.ZeroHash, id, map[string]string{queue.LogFile: "ok\n"}) // and its run ref
		refs = append(refs, st.Run)
	}
	for i := 0; i < 7; i++ {
		add(i, queue.Success)
	}
	out := t.TempDir()
	b := NewBuilder(repo.GitDir(), out, kr, Options{PageSize: 3, Warn: func(msg string) { t.Errorf("warned: %s", msg) }})
	if _, err := b.Build(); err != nil {
		t.Fatal(err)
	}
	read := func(name string) string {
		t.Helper()
		raw, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(raw)
	}
	// shows checks that a page lists exactly the runs with these indexes
	// of refs, newest first, and links what links says.
	shows := func(name string, runs []int, links ...string) {
		t.Helper()
		page := read(name)
		at := -1
		for i := len(refs) - 1; i >= 0; i-- {
			listed := strings.Contains(page, "/"+refs[i]+"/index.html\">")
			want := false
			for _, r := range runs {
				want = want || r == i
			}
			if listed != want {
				t.Errorf("%s: run %d listed %v, want %v", name, i, listed, want)
			}
			if listed {
				p := strings.Index(page, "/"+refs[i]+"/index.html\">")
				if p < at {
					t.Errorf("%s: run %d is not listed after the newer ones", name, i)
				}
				at = p
			}
		}
		for _, l := range links {
			if !strings.Contains(page, l) {
				t.Errorf("%s lacks %s", name, l)
			}
		}
	}
	// 7 runs: the front page the newest 3; pages from the oldest: 0-2, 3-5, 6.
	shows("index.html", []int{6, 5, 4}, `href="page-2.html">older runs →</a>`, "the newest 3 of 7 runs", "Latest by request")
	shows("page-1.html", []int{2, 1, 0}, `href="page-2.html">← newer runs</a>`, "runs 1-3, counted from the oldest")
	shows("page-2.html", []int{5, 4, 3}, `href="page-3.html">← newer runs</a>`, `href="page-1.html">older runs →</a>`)
	shows("page-3.html", []int{6}, `href="index.html">← newer runs</a>`, `href="page-2.html">older runs →</a>`, "runs 7-7, counted")
	shows("state-success.html", []int{6, 5, 4}, `href="state-success-page-2.html">older runs →</a>`)
	shows("state-success-page-1.html", []int{2, 1, 0})
	sitetest.CheckLinks(t, out)
	if strings.Contains(read("page-1.html"), "Latest by request") || strings.Contains(read("page-1.html"), `older runs`) {
		t.Errorf("page-1.html has the summary, or an older page")
	}
	// A commit's history too, its pages in commits/; its front page says
	// since when its state holds over all its runs, not only the shown.
	c := "commits/" + target.String()
	shows(c+".html", []int{6, 5, 4}, `href="../`+c+`-page-2.html">older runs →</a>`, "the newest 3 of 7 runs",
		"success since "+base.Format(time.RFC3339)+" (7 runs)")
	shows(c+"-page-1.html", []int{2, 1, 0}, `href="../`+c+`-page-2.html">← newer runs</a>`, "runs 1-3, counted from the oldest", `href="../index.html">all runs</a>`)
	shows(c+"-page-3.html", []int{6}, `href="../`+c+`.html">← newer runs</a>`, `href="../`+c+`-page-2.html">older runs →</a>`)
	if p := read(c + "-page-1.html"); strings.Contains(p, "success since") || !strings.Contains(p, "Add the README") {
		t.Errorf("%s-page-1.html says since when, or not the commit's subject", c)
	}

	// One more run: only the newest older page (and the front pages) is
	// written again.
	// (A page written again is a new file renamed into place.)
	stat := func(name string) os.FileInfo {
		fi, err := os.Stat(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	kept := []string{"page-1.html", "page-2.html", "state-success-page-1.html", "state-success-page-2.html", c + "-page-1.html", c + "-page-2.html"}
	var before []os.FileInfo
	for _, name := range kept {
		before = append(before, stat(name))
	}
	p3, c3 := stat("page-3.html"), stat(c+"-page-3.html")
	add(7, queue.Success) // (a run in a new state would change every page's links to the states' lists)
	if st, err := b.Build(); err != nil || st.Rendered != 1 {
		t.Fatalf("build: %+v %v", st, err)
	}
	for i, name := range kept {
		if !os.SameFile(before[i], stat(name)) {
			t.Errorf("%s was written again", name)
		}
	}
	if os.SameFile(p3, stat("page-3.html")) || os.SameFile(c3, stat(c+"-page-3.html")) {
		t.Errorf("page-3.html, or the commit's, was not written again")
	}
	shows(c+"-page-3.html", []int{7, 6}, "runs 7-8, counted")
	shows("index.html", []int{7, 6, 5}, `href="page-2.html">older runs →</a>`, "the newest 3 of 8 runs")
	shows("page-3.html", []int{7, 6}, "runs 7-8, counted")
	// A state without runs has its list all the same, as every page
	// links it, saying so.
	shows("state-failure.html", nil, "No run is in state failure.", `href="state-success.html">success</a>`)
	sitetest.CheckLinks(t, out)

	// Two more runs make a fourth page: the third links it, the first two
	// stay as they are (no page says how many there are).
	before = before[:0]
	for _, name := range kept {
		before = append(before, stat(name))
	}
	add(8, queue.Success)
	add(9, queue.Success)
	if st, err := b.Build(); err != nil || st.Rendered != 2 {
		t.Fatalf("build: %+v %v", st, err)
	}
	for i, name := range kept {
		if !os.SameFile(before[i], stat(name)) {
			t.Errorf("%s was written again when a page was added", name)
		}
	}
	shows("page-3.html", []int{8, 7, 6}, `href="page-4.html">← newer runs</a>`, "runs 7-9, counted from the oldest")
	shows("page-4.html", []int{9}, `href="index.html">← newer runs</a>`, `href="page-3.html">older runs →</a>`)
	shows("index.html", []int{9, 8, 7}, `href="page-3.html">older runs →</a>`, "the newest 3 of 10 runs")
	sitetest.CheckLinks(t, out)

	// Runs go: so do the pages beyond the last.
	for _, r := range refs[:8] {
		if err := repo.UpdateRef(queue.RunRef(target.String(), r), gitproto.ZeroHash, mustRef(t, repo, queue.RunRef(target.String(), r))); err != nil {
			t.Fatal(err)
		}
	}
	if st, err := b.Build(); err != nil || st.Removed != 8 || st.Runs != 2 {
		t.Fatalf("build: %+v %v", st, err)
	}
	for _, gone := range []string{"page-1.html", "page-2.html", "page-3.html", "page-4.html", "state-success-page-1.html", "state-success-page-2.html",
		c + "-page-1.html", c + "-page-2.html", c + "-page-3.html", c + "-page-4.html"} {
		if _, err := os.Stat(filepath.Join(out, gone)); err == nil {
			t.Errorf("%s is still there", gone)
		}
	}
	shows("index.html", []int{9, 8})
	shows(c+".html", []int{9, 8})
	sitetest.CheckLinks(t, out)
}

func mustRef(t *testing.T, repo *gitproto.Repo, name string) gitproto.Hash {
	t.Helper()
	h, err := repo.RefHash(name)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// siteTree is every file of a site but the manifest's, with its content.
func siteTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == manifestFile || strings.HasPrefix(rel, "manifest-runs-") {
			return nil
		}
		raw, err := os.ReadFile(p)
		files[rel] = string(raw)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// A site whose delta was cut short, or that a build stopped after
// appending to the delta and before replacing manifest.json, is taken up:
// the next build leaves the same site as one that was never stopped, and
// a delta cut short is folded into a new runs file.
func TestBuildTakesUpACutOrStoppedDelta(t *testing.T) {
	repo := newRepo(t)
	target := resultcommit.Commit(t, repo, map[string]string{"README": "hello\n"}, "Add the README", nil)
	id := fixtures.OpenPGPIdentity(t, "Test Worker")
	var kr secrets.Keyring
	kr.Add(id)
	base := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	var refs []string
	add := func(i int, state queue.State) {
		t.Helper()
		started := base.Add(time.Duration(i) * time.Minute)
		exit := 0
		st := &queue.Status{Format: queue.Format, State: state, Target: target.String(), Request: fmt.Sprintf("r%d", i%2), Run: queue.NewRunID(started),
			Attempt: 1, Worker: id.Fingerprint(), Started: started, Finished: started.Add(time.Second), DurationMS: 1000, ExitCode: &exit}
		resultcommit.Write(t, repo, st, gitproto.ZeroHash, id, map[string]string{queue.LogFile: "ok\n"})
		refs = append(refs, queue.RunRef(st.Target, st.Run))
	}
	out := t.TempDir()
	b := NewBuilder(repo.GitDir(), out, kr, Options{PageSize: 2, Warn: func(msg string) { t.Errorf("warned: %s", msg) }})
	build := func(b *Builder) Stats {
		t.Helper()
		st, err := b.Build()
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	for i := 0; i < 5; i++ {
		add(i, queue.Success)
	}
	build(b)
	before := t.TempDir() // the site before the last build
	var ends []int64
	for i := 5; i < 8; i++ {
		add(i, []queue.State{queue.Failure, queue.Success}[i%2])
		if i == 7 {
			if err := repo.UpdateRef(refs[0], gitproto.ZeroHash, mustRef(t, repo, refs[0])); err != nil {
				t.Fatal(err)
			}
			os.RemoveAll(before)
			if err := os.CopyFS(before, os.DirFS(out)); err != nil {
				t.Fatal(err)
			}
		}
		build(b)
		sitetest.CheckLinks(t, out)
		root, _ := os.OpenRoot(out)
		m := readManifest(root, keysID(kr))
		root.Close()
		if m.DeltaLen == 0 || (len(ends) > 0 && m.DeltaLen <= ends[len(ends)-1]) {
			t.Fatalf("build %d did not append to the delta: %d", i, m.DeltaLen)
		}
		ends = append(ends, m.DeltaLen)
	}
	want := siteTree(t, out)
	root, _ := os.OpenRoot(out)
	man := readManifest(root, keysID(kr))
	root.Close()
	delta, err := os.ReadFile(filepath.Join(out, deltaOf(man.RunsFile)))
	if err != nil {
		t.Fatal(err)
	}
	check := func(what, dir string) {
		t.Helper()
		build(NewBuilder(repo.GitDir(), dir, kr, Options{PageSize: 2, Warn: func(msg string) { t.Errorf("%s: warned: %s", what, msg) }}))
		sitetest.CheckLinks(t, dir)
		got := siteTree(t, dir)
		for name, w := range want {
			if got[name] != w {
				t.Errorf("%s: %s differs from the site never stopped:\n%s\nwant\n%s", what, name, got[name], w)
			}
		}
		for name := range got {
			if _, ok := want[name]; !ok {
				t.Errorf("%s: %s is left", what, name)
			}
		}
		root, _ := os.OpenRoot(dir)
		defer root.Close()
		if m := readManifest(root, keysID(kr)); !maps.Equal(m.hashes, man.hashes) || m.rewrite {
			t.Errorf("%s: the manifest after: %+v", what, m)
		}
	}
	cuts := []int64{0, 1, int64(len(deltaMagic)), int64(len(delta)) - 1}
	for _, e := range ends {
		cuts = append(cuts, e-1, e+1)
	}
	for _, cut := range cuts {
		if cut < 0 || cut >= int64(len(delta)) {
			continue
		}
		dir := t.TempDir()
		if err := os.CopyFS(dir, os.DirFS(out)); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(filepath.Join(dir, deltaOf(man.RunsFile)), cut); err != nil {
			t.Fatal(err)
		}
		check(fmt.Sprintf("the delta cut at %d of %d bytes", cut, len(delta)), dir)
	}
	// Stopped after the append: the delta of after, the rest of before.
	if err := os.WriteFile(filepath.Join(before, deltaOf(man.RunsFile)), delta, 0o644); err != nil {
		t.Fatal(err)
	}
	check("stopped before manifest.json", before)
}
