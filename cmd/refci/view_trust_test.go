package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
)

// putResult stores st as a worker would: a result commit with status.json,
// log.txt and extra files, its message from st, signed by the private key
// in keyFile ("" for unsigned), under ref (st's run ref when ""). It
// returns the ref and the commit.
func (s *sandbox) putResult(st *queue.Status, keyFile, ref string, extra map[string]string) (string, string) {
	s.t.Helper()
	repo, err := gitproto.Open(filepath.Join(s.repo, ".git"))
	if err != nil {
		s.t.Fatal(err)
	}
	var signer *secrets.Identity
	if keyFile != "" {
		if signer, err = secrets.Load(keyFile); err != nil {
			s.t.Fatal(err)
		}
	}
	files := map[string]string{queue.LogFile: "attempt output\n"}
	for p, c := range extra {
		files[p] = c
	}
	c := resultcommit.Result(s.t, repo, st, gitproto.ZeroHash, signer, files)
	if ref == "" {
		ref = queue.RunRef(st.Target, st.Run)
	}
	s.git("", "update-ref", ref, c.String())
	return ref, c.String()
}

// finished makes a finished status of target by worker.
func finished(target, request, worker string, state queue.State, started time.Time) *queue.Status {
	exit := 0
	if state != queue.Success {
		exit = 1
	}
	return &queue.Status{Format: queue.Format, State: state, Target: target, Request: request, Run: queue.NewRunID(started),
		Attempt: 1, Worker: worker, Started: started, Finished: started.Add(time.Minute), DurationMS: 60000, ExitCode: &exit}
}

// treeOf lists every file under dir but skip, with its size and mode,
// following no link.
func treeOf(t *testing.T, dir, skip string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return filepath.SkipDir
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		lines = append(lines, fmt.Sprintf("%s %v %d %d", p, fi.Mode(), fi.Size(), fi.ModTime().UnixNano()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func readSite(t *testing.T, out, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(out, filepath.FromSlash(name)))
	if err != nil {
		t.Fatalf("site: %v", err)
	}
	return string(b)
}

// latestTable is the "Latest by request" part of index.html.
func latestTable(index string) string {
	latest, _, _ := strings.Cut(index, `<h2 id="runs">`)
	return latest
}

// TestViewVerdicts attacks refci view with results a hostile pusher could
// store: a genuine success copied under another commit, an unsigned one,
// one signed by an unknown key, one whose status.json names another
// worker than its signer, and one dated 2099. None is shown green or
// becomes the latest of its request or commit; each page says why; the
// genuine runs still render, verified.
func TestViewVerdicts(t *testing.T) {
	s := newSandbox(t)
	t1 := s.pipeline("true\n")
	t2 := s.commitAll("second")
	own, other, otherKey := s.twoKeys()
	ownKey := filepath.Join(s.home, "key.asc")
	base := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)

	// Genuine: the request "victim" succeeded on t1, then failed on t2.
	_, goodCommit := s.putResult(finished(t1, "victim", own, queue.Success, base), ownKey, "", nil)
	failRef, _ := s.putResult(finished(t2, "victim", own, queue.Failure, base.Add(time.Minute)), ownKey, "", nil)
	mainRef, _ := s.putResult(finished(t1, "main", own, queue.Success, base), ownKey, "", nil)

	// Attacks, all newer, all "success" of "victim" on t2.
	copied := queue.RunRef(t2, queue.NewRunID(base.Add(2*time.Minute)))
	s.git("", "update-ref", copied, goodCommit) // a genuine result under another commit
	unsigned, _ := s.putResult(finished(t2, "victim", own, queue.Success, base.Add(3*time.Minute)), "", "", nil)
	stranger, _ := s.putResult(finished(t2, "victim", other, queue.Success, base.Add(4*time.Minute)), otherKey, "", nil)
	posing, _ := s.putResult(finished(t2, "victim", other, queue.Success, base.Add(5*time.Minute)), ownKey, "", nil) // says the other worker ran it
	future, _ := s.putResult(finished(t2, "victim", own, queue.Success, time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC)), ownKey, "", nil)

	out := filepath.Join(s.root, "site")
	r := s.refci("view", "-o", out).want(t, 0)
	if !strings.Contains(r.stdout, "refci: 8 runs (8 rendered, 0 removed)") || !strings.Contains(r.stderr, "4 of 8 runs not verified") {
		t.Errorf("view:\n%s%s", r.stdout, r.stderr)
	}
	index := readSite(t, out, "index.html")
	latest := latestTable(index)
	if !strings.Contains(latest, `<span class="state s-failure">failure</span></td><td>victim</td>`) ||
		!strings.Contains(latest, `<span class="state s-success">success</span></td><td>main</td>`) ||
		strings.Count(latest, `class="state s-success"`) != 1 {
		t.Errorf("latest by request is not the newest verified run of each:\n%s", latest)
	}
	if b := readSite(t, out, "badges/victim.svg"); !strings.Contains(b, "failure") {
		t.Errorf("victim's badge: %s", b)
	}
	if b := readSite(t, out, "badges/main.svg"); !strings.Contains(b, "success") {
		t.Errorf("main's badge: %s", b)
	}
	commit2 := readSite(t, out, "commits/"+t2+".html")
	if strings.Contains(commit2, `class="state s-success"`) || strings.Count(commit2, `class="state s-unverified"`) != 5 {
		t.Errorf("commit page of t2 shows a success, or not the four runs not verified and the one from 2099 grey:\n%s", commit2[strings.Index(commit2, "<main>"):])
	}
	page := func(ref string) string {
		target, run, _ := queue.ParseRunRef(ref)
		return readSite(t, out, "runs/"+target+"/"+run+"/index.html")
	}
	for _, c := range []struct{ ref, title, why string }{
		{copied, "SUCCESS (INCONSISTENT)", "status.json is about commit &#34;" + t1 + "&#34; but was found under " + copied + ": a result copied from another commit"},
		{unsigned, "SUCCESS (UNVERIFIED)", "not signed"},
		{stranger, "SUCCESS (UNVERIFIED)", "not in the keyring"},
		{posing, "SUCCESS (UNVERIFIED)", "status.json names worker " + other + " but the commit is signed by " + own},
	} {
		p := page(c.ref)
		if h := verdictPart(p); !strings.Contains(h, `<span class="state s-unverified">`+c.title+`</span>`) || !strings.Contains(h, c.why) || strings.Contains(h, `class="state s-success"`) {
			t.Errorf("page of %s does not say %q / %q:\n%s", c.ref, c.title, c.why, verdictPart(p))
		}
		if !strings.Contains(index, c.why) {
			t.Errorf("index does not say why %s is not believed (%s)", c.ref, c.why)
		}
	}
	for _, ref := range []string{future, failRef, mainRef} {
		if p := page(ref); !strings.Contains(p, `<b>Verified:</b> signed by `) || !strings.Contains(p, own) {
			t.Errorf("page of %s is not shown verified:\n%s", ref, verdictPart(p))
		}
	}
	// Dated 2099: verified, listed first, but not the latest.
	if !strings.Contains(index, "20990101T000000") || strings.Contains(latest, "20990101T000000") || !strings.Contains(commit2, "success (dated in the future)") {
		t.Errorf("the 2099 run is missing from the list, or is the latest")
	}

	// Other keys: every verdict is decided again; the stranger's run is
	// now the verified one.
	r = s.refci("view", "-o", out, "--keyring", otherKey).want(t, 0)
	if !strings.Contains(r.stdout, "(8 rendered, 0 removed)") {
		t.Errorf("view with other keys did not decide again:\n%s", r.stdout)
	}
	if p := page(stranger); !strings.Contains(p, "<b>Verified:</b>") || !strings.Contains(p, other) {
		t.Errorf("with --keyring the stranger key, its run is not verified:\n%s", verdictPart(p))
	}
	if p := page(failRef); !strings.Contains(p, "SUCCESS (UNVERIFIED)") && !strings.Contains(p, "FAILURE (UNVERIFIED)") {
		t.Errorf("with --keyring another key, the own key run is still verified:\n%s", verdictPart(p))
	}
	if r := s.refci("view", "-o", out, "--keyring", otherKey).want(t, 0); !strings.Contains(r.stdout, "(0 rendered, 0 removed)") {
		t.Errorf("verdicts are not cached:\n%s", r.stdout)
	}
	if r := s.refci("view", "-o", out, "--keyring", filepath.Join(s.root, "missing.asc")); r.code != 2 || !strings.Contains(r.stderr, "missing.asc") {
		t.Errorf("a missing --keyring: %d %s", r.code, r.stderr)
	}

	// No keys at all: it says so once, and nothing is green.
	env := s.env
	s.env = append(append([]string{}, env...), "REFCI_HOME="+filepath.Join(s.root, "empty-home"))
	r = s.refci("view", "-o", out).want(t, 0)
	s.env = env
	if strings.Count(r.stderr, "no trusted keys") != 1 || !strings.Contains(r.stderr, "--keyring") {
		t.Errorf("view without keys does not say so once, with what to do:\n%s", r.stderr)
	}
	index = readSite(t, out, "index.html")
	if strings.Contains(index, `class="state s-success"`) || strings.Contains(index, `class="state s-failure"`) || !strings.Contains(index, "No run here is verified by a trusted key") {
		t.Errorf("without keys, a run is shown in its state's colour, or the page does not say why none is:\n%s", latestTable(index))
	}
	if b := readSite(t, out, "badges/main.svg"); !strings.Contains(b, "not verified") || strings.Contains(b, "success") {
		t.Errorf("main's badge without keys: %s", b)
	}
}

// TestViewHostileValues: a result with values refci never writes (signed
// by a trusted key even) makes no file outside the site and no markup; a
// link in the site pointing outside is never written through; valid
// runs still render.
func TestViewHostileValues(t *testing.T) {
	s := newSandbox(t)
	target := s.pipeline("true\n")
	own, _, _ := s.twoKeys()
	ownKey := filepath.Join(s.home, "key.asc")
	base := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	outside := filepath.Join(s.root, "outside")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "keep.svg"), []byte("mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	good := finished(target, "main", own, queue.Success, base)
	good.Jobs = []queue.Job{{Name: "unit", State: queue.Success, Log: queue.JobLogPath("unit")}}
	good.Artifacts = []queue.Artifact{{Path: "dir/<b>report</b>.html", SHA256: strings.Repeat("ab", 32), Size: 4}}
	good.Reason = `<script>alert("reason")</script>` + "\x1b]8;;http://evil\x1b\\link"
	good.TargetRef = `<img src=x onerror=alert(1)>`
	goodRef, _ := s.putResult(good, ownKey, "", map[string]string{queue.JobLogPath("unit"): "unit ok\n", "artifacts/dir/<b>report</b>.html": "fine"})

	type hostile struct {
		name string
		edit func(st *queue.Status)
	}
	var refs []string
	for i, h := range []hostile{
		{"job name", func(st *queue.Status) {
			st.Jobs = []queue.Job{{Name: "../../../../outside/job", State: queue.Success, Log: "jobs/../../../../outside/job/log.txt"}}
		}},
		{"artifact path", func(st *queue.Status) {
			st.Artifacts = []queue.Artifact{{Path: "../../../../../outside/art.txt", SHA256: strings.Repeat("ab", 32), Size: 3}}
		}},
		{"absolute artifact", func(st *queue.Status) {
			st.Artifacts = []queue.Artifact{{Path: filepath.Join(outside, "abs.txt"), SHA256: strings.Repeat("ab", 32), Size: 3}}
		}},
		{"request", func(st *queue.Status) { st.Request = "../../../outside/keep" }},
		{"target", func(st *queue.Status) { st.Target = "../../outside/keep" }}, // commits/<target>.html
		{"markup", func(st *queue.Status) {
			st.Request = `<script>alert("request")</script>`
			st.Jobs = []queue.Job{{Name: `<script>alert("job")</script>`, State: queue.Failure}}
			st.Reason = "\x1b[2J<svg onload=alert(1)>"
		}},
	} {
		st := finished(target, "main", own, queue.Success, base.Add(time.Duration(i+1)*time.Minute))
		h.edit(st)
		ref := queue.RunRef(target, st.Run)
		s.putResult(st, ownKey, ref, map[string]string{"artifacts/x/art.txt": "bad"})
		refs = append(refs, ref)
	}

	out := filepath.Join(s.root, "site")
	// Links already in the site, pointing outside: a file one, a run
	// directory one, and a directory the lists write into.
	if err := os.MkdirAll(filepath.Join(out, "badges"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "keep.svg"), filepath.Join(out, "badges", "main.svg")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(out, "state-success.html")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(out, "runs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../outside", filepath.Join(out, "runs", target)); err != nil {
		t.Fatal(err)
	}

	before := treeOf(t, s.root, out)
	r := s.refci("view", "-o", out)
	after := treeOf(t, s.root, out)
	if before != after {
		t.Errorf("refci view changed files outside its output directory:\n%s", treeDiff(before, after))
	}
	if got, _ := os.ReadFile(filepath.Join(outside, "keep.svg")); string(got) != "mine\n" {
		t.Errorf("a write went through a link: %q", got)
	}
	// The run directory of target is a link out of the site: its runs are
	// refused, with a warning, and the rest is written.
	if r.code != 0 || !strings.Contains(r.stderr, "escapes") || !strings.Contains(r.stderr, "remove it") || strings.Contains(r.stderr, "no runs here") {
		t.Fatalf("view with a link out of the site: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// Without the link, every run renders.
	if err := os.Remove(filepath.Join(out, "runs", target)); err != nil {
		t.Fatal(err)
	}
	before = treeOf(t, s.root, out)
	r = s.refci("view", "-o", out).want(t, 0)
	if after := treeOf(t, s.root, out); before != after {
		t.Errorf("refci view changed files outside its output directory:\n%s", treeDiff(before, after))
	}
	if !strings.Contains(r.stdout, "refci: 7 runs") {
		t.Errorf("view:\n%s%s", r.stdout, r.stderr)
	}

	// Nothing unescaped in any page; no file named from a hostile value.
	err := filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(out, p)
		for _, bad := range []string{"outside", "keep", "art.txt", "abs.txt", "script", ".tmp-"} {
			if strings.Contains(rel, bad) {
				t.Errorf("the site has %s", rel)
			}
		}
		if d.Type()&fs.ModeSymlink != 0 {
			t.Errorf("the site has a link: %s", rel)
		}
		if d.IsDir() || !strings.HasSuffix(p, ".html") && !strings.HasSuffix(p, ".svg") {
			return nil
		}
		b, _ := os.ReadFile(p)
		for _, bad := range []string{"<script>alert", "<svg onload", "<img src=x", "\x1b", "<b>report"} {
			if strings.Contains(string(b), bad) {
				t.Errorf("%s has %q unescaped", rel, bad)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	index := readSite(t, out, "index.html")
	if n := strings.Count(index, `<td class="verdict v-invalid">invalid</td>`); n != 6 {
		t.Errorf("index lists %d invalid runs, want 6", n)
	}
	for _, ref := range refs {
		_, run, _ := queue.ParseRunRef(ref)
		p := readSite(t, out, "runs/"+target+"/"+run+"/index.html")
		if !strings.Contains(p, "SUCCESS (INVALID)") || !strings.Contains(p, "invalid value in status.json") {
			t.Errorf("page of %s does not say it is invalid:\n%s", ref, verdictPart(p))
		}
		if _, err := os.Stat(filepath.Join(out, "runs", target, run, "artifacts")); err == nil {
			t.Errorf("artifacts of the invalid %s were copied", ref)
		}
	}
	// The valid run renders, verified, with its log, artifact and badge.
	_, run, _ := queue.ParseRunRef(goodRef)
	dir := "runs/" + target + "/" + run + "/"
	if got := readSite(t, out, dir+"artifacts/dir/<b>report</b>.html"); got != "fine" {
		t.Errorf("artifact: %q", got)
	}
	if got := readSite(t, out, dir+"jobs/unit/log.txt"); got != "unit ok\n" {
		t.Errorf("job log: %q", got)
	}
	if p := readSite(t, out, dir+"index.html"); !strings.Contains(p, "<b>Verified:</b>") || !strings.Contains(p, "&lt;script&gt;alert(&#34;reason&#34;)&lt;/script&gt;") {
		t.Errorf("the valid run page:\n%s", verdictPart(p))
	}
	// A directory the lists write into, linked outside: the build stops
	// and says what to do; nothing is written there.
	if err := os.RemoveAll(filepath.Join(out, "commits")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(out, "commits")); err != nil {
		t.Fatal(err)
	}
	s.git("", "update-ref", "-d", refs[0])
	before = treeOf(t, s.root, out)
	if r := s.refci("view", "-o", out); r.code != 3 || !strings.Contains(r.stderr, "remove it") {
		t.Errorf("view with commits/ linked outside: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if after := treeOf(t, s.root, out); before != after {
		t.Errorf("refci view wrote through commits/:\n%s", treeDiff(before, after))
	}
	os.Remove(filepath.Join(out, "commits"))
	s.refci("view", "-o", out).want(t, 0)
	if fi, err := os.Lstat(filepath.Join(out, "badges", "main.svg")); err != nil || fi.Mode()&fs.ModeSymlink != 0 {
		t.Errorf("badges/main.svg is still the link (%v): it should be replaced by the badge", err)
	}
	if b := readSite(t, out, "badges/main.svg"); !strings.Contains(b, "success") {
		t.Errorf("main's badge: %s", b)
	}
}

// verdictPart is the top of a run page: its title and verdict.
func verdictPart(page string) string {
	if i := strings.Index(page, "<header>"); i >= 0 {
		page = page[i:]
	}
	if i := strings.Index(page, "</header>"); i >= 0 {
		page = page[:i]
	}
	return page
}

// treeDiff lists the lines only in before (-) or only in after (+).
func treeDiff(before, after string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	b, a := in(before), in(after)
	var out []string
	for l := range b {
		if !a[l] {
			out = append(out, "- "+l)
		}
	}
	for l := range a {
		if !b[l] {
			out = append(out, "+ "+l)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// The site of refci serve --http trusts the server's own key: a run of
// its embedded worker is verified, green, and its request's badge says
// success.
func TestServeSiteVerifiesItsOwnWorker(t *testing.T) {
	sv := startServe(t, "--http", "0")
	m := regexp.MustCompile(`viewer:    (http://127\.0\.0\.1:\d+/)`).FindStringSubmatch(sv.out.String())
	if m == nil {
		t.Fatalf("no viewer URL in the banner:\n%s", sv.out.String())
	}
	sv.pipeline("echo fine\n")
	sv.git("", "push", "-q", "ci", "main", "HEAD:refs/ci/requests/own")
	st := sv.waitFinal("app.git", "own", 2*time.Minute)
	if st.State != queue.Success {
		t.Fatalf("the embedded worker's run: %+v", st)
	}
	code, body := httpGet(t, m[1]+"app.git/")
	if code != 200 || !strings.Contains(body, `<span class="state s-success">success</span></td><td>own</td>`) || !strings.Contains(body, `<td class="verdict v-verified">verified</td>`) {
		t.Errorf("GET app.git/: %d, the embedded worker's run is not shown verified and latest:\n%s", code, latestTable(body))
	}
	if code, badge := httpGet(t, m[1]+"app.git/badges/own.svg"); code != 200 || !strings.Contains(badge, "success") {
		t.Errorf("GET the badge: %d %s", code, badge)
	}
	page := m[1] + "app.git/runs/" + st.Target + "/" + st.Run + "/index.html"
	if code, p := httpGet(t, page); code != 200 || !strings.Contains(p, "<b>Verified:</b> signed by ") || !strings.Contains(p, st.Worker) {
		t.Errorf("GET the run page: %d\n%s", code, verdictPart(p))
	}
}

// A manifest.json planted in the site (by a hostile earlier build, say)
// with refs, targets and requests that are not file names: nothing is
// removed or written outside the site, and the real runs render.
func TestViewHostileManifest(t *testing.T) {
	s := newSandbox(t)
	target := s.pipeline("true\n")
	own, _, _ := s.twoKeys()
	ownKey := filepath.Join(s.home, "key.asc")
	ref, _ := s.putResult(finished(target, "main", own, queue.Success, time.Now().UTC().Add(-time.Hour)), ownKey, "", nil)
	outside := filepath.Join(s.root, "outside")
	for _, d := range []string{filepath.Join(outside, "runs", "x"), filepath.Join(s.root, "site")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(s.root, "site")
	// A build with these keys says the manifest's format and keys, so
	// that the planted manifest is taken for this site's.
	s.refci("view", "-o", out).want(t, 0)
	var built siteManifest
	if raw, err := os.ReadFile(filepath.Join(out, "manifest.json")); err != nil || json.Unmarshal(raw, &built) != nil || built.Format == 0 || built.Keys == "" {
		t.Fatalf("manifest.json: %v %+v", err, built)
	}
	// Format 4 held the runs in manifest.json; such a manifest is taken up.
	man := fmt.Sprintf(`{"format":%d,"keys":%q,"runs":{
"refs/ci/runs/../../outside/runs/x":{"target":"../../outside/t","request":"../../outside/r","run":"x","commit":"1","verdict":{"kind":"verified"}},
"refs/ci/runs/%s/../../../outside":{"target":"../outside/t2","request":"/tmp/r","run":"../x","commit":"2","verdict":{"kind":"verified"}}}}`, 4, built.Keys, target)
	if err := os.WriteFile(filepath.Join(out, "manifest.json"), []byte(man), 0o644); err != nil {
		t.Fatal(err)
	}
	before := treeOf(t, s.root, out)
	r := s.refci("view", "-o", out).want(t, 0)
	if after := treeOf(t, s.root, out); before != after {
		t.Errorf("refci view changed files outside its output directory:\n%s", treeDiff(before, after))
	}
	if !strings.Contains(r.stdout, "refci: 1 runs (1 rendered, 2 removed)") {
		t.Errorf("view:\n%s%s", r.stdout, r.stderr)
	}
	_, run, _ := queue.ParseRunRef(ref)
	if p := readSite(t, out, "runs/"+target+"/"+run+"/index.html"); !strings.Contains(p, "<b>Verified:</b>") {
		t.Errorf("the real run:\n%s", verdictPart(p))
	}
	if idx := readSite(t, out, "index.html"); strings.Contains(idx, "outside") {
		t.Errorf("the planted runs are still listed")
	}
}
