package render

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"refci.dev/refci/queue"
)

// artifactDir is where tests keep screenshots: $REFCI_TEST_ARTIFACTS, or
// .test-artifacts/ at the module root (git ignores it).
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("REFCI_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", ".test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser starts a headless Chromium for one test, or fails saying how to
// get one (CI installs Debian's chromium).
func browser(t *testing.T) context.Context {
	t.Helper()
	if os.Getenv("REFCI_SKIP_BROWSER") == "1" {
		t.Skip("REFCI_SKIP_BROWSER=1")
	}
	path := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		t.Fatalf("no chromium on PATH: install it (apt-get install chromium; CI does) or set REFCI_SKIP_BROWSER=1 to skip the browser tests")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1200, 900),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // the whole test, a guard only
	actx, cancelA := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA(); cancel() })
	return bctx
}

// consoleProblems collects console errors and warnings, uncaught
// exceptions and browser log entries (CSP violations land there).
type consoleProblems struct {
	mu   sync.Mutex
	msgs []string
}

func (c *consoleProblems) listen(ctx context.Context) {
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleWarning || m.IsException() {
				c.mu.Lock()
				c.msgs = append(c.msgs, m.String())
				c.mu.Unlock()
			}
		}
	}()
}

func (c *consoleProblems) get() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.msgs...)
}

// browserResult is failedResult with logs long enough to scroll.
func browserResult() Result {
	r := failedResult()
	var test, main strings.Builder
	for i := 1; i <= 300; i++ {
		fmt.Fprintf(&test, "=== RUN   TestCase%d\n--- PASS: TestCase%d (0.00s)\n", i, i)
		fmt.Fprintf(&main, "[test] === RUN   TestCase%d\n", i)
	}
	test.WriteString("    parse_test.go:12: got <nil>, want \x1b[1mx\x1b[0m <script>alert(1)</script>\n\x1b[31m--- FAIL: TestParse\x1b[0m\nFAIL\n")
	main.WriteString("refci: job test ended failure\n")
	r.JobLogs["test"] = []byte(test.String())
	r.Log = []byte(main.String())
	return r
}

func writeTree(t *testing.T, r Result, page []byte) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string][]byte{"index.html": page, "log.txt": r.Log}
	for name, l := range r.JobLogs {
		files[queue.JobLogPath(name)] = l
	}
	for p, b := range files {
		p = filepath.Join(dir, filepath.FromSlash(p))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// inViewport is a script telling whether the element with id is in the
// viewport and shown.
func inViewport(id string) string {
	return fmt.Sprintf(`(function(){var e=document.getElementById(%q); if(!e) return "missing";
var r=e.getBoundingClientRect(); if(r.height===0) return "hidden";
return (r.top>=0 && r.bottom<=innerHeight) ? "yes" : "out of view: top "+r.top+" of "+innerHeight})()`, id)
}

// TestHTMLInBrowser: the page loads from file:// without console errors,
// the failing job is visible, the first-failure link and deep links
// scroll to their line (opening the log's section), and a screenshot is
// kept.
func TestHTMLInBrowser(t *testing.T) {
	ctx := browser(t)
	r := browserResult()
	page := mustHTML(t, r, HTMLOptions{})
	dir := writeTree(t, r, page)
	url := "file://" + filepath.Join(dir, "index.html")
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start chromium: %v", err)
	}
	var problems consoleProblems
	problems.listen(ctx)

	eval := func(expr string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return v
	}
	// await evaluates expr until it gives want (the page's script and the
	// browser's scrolling take their time on a loaded machine), at most
	// 30 s, and returns what it gave last.
	await := func(expr, want string) string {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			v := eval(expr)
			if v == want || time.Now().After(deadline) {
				return v
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitReady(chromedp.CSS("body"))); err != nil {
		t.Fatalf("load %s: %v", url, err)
	}
	if n := eval(`String(document.querySelectorAll("script").length)`); n != "1" {
		t.Errorf("%s script elements in the DOM, want 1 (a log's <script> became markup)", n)
	}
	if v := await(`(function(){var r=document.querySelector("tr.s-failure"); return r && r.getBoundingClientRect().top < innerHeight ? "yes" : "no"})()`, "yes"); v != "yes" {
		t.Errorf("the failing job's row is not in the first screen")
	}
	if v := await(`document.getElementById("job-test").open ? "open" : "closed"`, "open"); v != "open" {
		t.Errorf("the failing job's log section is %s", v)
	}
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.ID("first-failure"))); err != nil {
		t.Fatal(err)
	}
	if v := await(inViewport("test-L603"), "yes"); v != "yes" {
		t.Errorf("after the first-failure link, the failing line: %s (hash %s)", v, eval("location.hash"))
	}
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(artifactDir(t), "render-html-failure.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}

	// Deep links, also into a log section that starts closed.
	for _, id := range []string{"L150", "test-L20"} {
		err := chromedp.Do(ctx, chromedp.Navigate("about:blank"), chromedp.Navigate(url+"#"+id),
			chromedp.WaitReady(chromedp.CSS("body")))
		if err != nil {
			t.Fatalf("deep link #%s: %v", id, err)
		}
		open := await(fmt.Sprintf(`document.getElementById(%q).closest("details").open ? "open" : "closed"`, id), "open")
		seen := await(inViewport(id), "yes")
		if seen != "yes" || open != "open" {
			t.Errorf("deep link #%s: in viewport: %s; its section %s", id, seen, open)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if p := problems.get(); len(p) > 0 {
		t.Errorf("console problems:\n%s", strings.Join(p, "\n"))
	}
}

// layoutPages writes the three pages the layout test looks at: the
// index, a run page with a failure and a run page with a graph of needs,
// each with long names and a long unbroken log line. It returns their
// file:// URLs by name.
func layoutPages(t *testing.T) map[string]string {
	t.Helper()
	commit := &CommitInfo{Subject: "Teach the parser about nested quotes, and say which line of the input it stopped at when it gives up",
		Author: "Alice Example-Longname", Date: t0}
	site := Verdict{Kind: VerdictVerified, By: "Worker <w@example.invalid> (6A1F0C2B3D4E5F60718293A4B5C6D7E8F9A0B1C2)"}
	opts := HTMLOptions{Home: "../../../index.html", Verdict: &site, Commit: commit,
		Links: [][2]string{{"history of 3f9a1c0b2d4e", "../../../commits/3f9a1c0b2d4e5f60718293a4b5c6d7e8f9a0b1c2.html"}}}

	fail := browserResult()
	fail.Status.TargetRef = "feature/a-branch-name-long-enough-to-overflow-a-phone-screen-on-its-own"
	fail.Status.Started = time.Now().Add(-3 * time.Minute).UTC().Truncate(time.Second)
	fail.Log = append(fail.Log, []byte(strings.Repeat("0123456789abcdef", 40)+"\n")...)
	out := map[string]string{}
	out["failure"] = "file://" + filepath.Join(writeTree(t, fail, mustHTML(t, fail, opts)), "index.html")

	graph := successResult()
	st := *graph.Status
	st.Jobs = []queue.Job{
		{Name: "build", State: queue.Success, DurationMS: 1200},
		{Name: "test-unit", Needs: []string{"build"}, State: queue.Success, DurationMS: 3000},
		{Name: "test-integration-against-the-staging-database", Needs: []string{"build"}, State: queue.Success, DurationMS: 90000},
		{Name: "lint", State: queue.Success, DurationMS: 800},
		{Name: "package", Needs: []string{"test-unit", "test-integration-against-the-staging-database", "lint"}, State: queue.Success, DurationMS: 4000},
		{Name: "deploy", Needs: []string{"package"}, State: queue.Success, DurationMS: 2000},
		{Name: "notify", Needs: []string{"deploy"}, State: queue.Success, DurationMS: 100},
	}
	graph.Status = &st
	graph.JobLogs = map[string][]byte{}
	for i := range st.Jobs {
		st.Jobs[i].Log = queue.JobLogPath(st.Jobs[i].Name)
		graph.JobLogs[st.Jobs[i].Name] = []byte("ok\n")
	}
	out["needs"] = "file://" + filepath.Join(writeTree(t, graph, mustHTML(t, graph, opts)), "index.html")

	runs := siteRuns()
	for i := range runs {
		runs[i].Subject, runs[i].Author = commit.Subject, commit.Author
	}
	runs[0].Started = fail.Status.Started
	runs[0].TargetRef = fail.Status.TargetRef
	idx, err := List(ListPage{Title: "refci: all runs", Runs: runs, States: []string{"failure", "error", "cancelled", "success"}, Filter: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "index.html"), idx, 0o644); err != nil {
		t.Fatal(err)
	}
	out["index"] = "file://" + filepath.Join(dir, "index.html")
	return out
}

// TestLayoutInBrowser: at 1280×800 and at 400×800, the index, a failed
// run's page and a page with a graph of needs do not overflow the window
// sideways, load without console errors, and write times relative to
// now (the absolute time on hover). At 1280×800 the jobs and the first
// failure are in the first screen. Screenshots are kept
// (render-layout-<page>-<width>.png).
func TestLayoutInBrowser(t *testing.T) {
	ctx := browser(t)
	pages := layoutPages(t)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	var problems consoleProblems
	problems.listen(ctx)
	eval := func(expr string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("evaluate %s: %v", expr, err)
		}
		return v
	}
	above := func(sel string) string {
		return fmt.Sprintf(`(function(){var e=document.querySelectorAll(%q); if(!e.length) return "missing";
for (var i=0;i<e.length;i++){var r=e[i].getBoundingClientRect(); if(r.height===0) return "hidden"; if(r.bottom>innerHeight) return "below the fold: bottom "+r.bottom+" of "+innerHeight}
return "yes"})()`, sel)
	}
	for _, width := range []int64{1280, 400} {
		for _, name := range []string{"index", "failure", "needs"} {
			err := chromedp.Do(ctx, chromedp.EmulateViewport(width, 800), chromedp.Navigate(pages[name]), chromedp.WaitReady(chromedp.CSS("body")))
			if err != nil {
				t.Fatalf("load %s: %v", name, err)
			}
			at := fmt.Sprintf("%s at %d px", name, width)
			if v := eval(`document.documentElement.scrollWidth + " " + innerWidth`); func() bool {
				var sw, iw int
				fmt.Sscan(v, &sw, &iw)
				return sw > iw || iw != int(width)
			}() {
				wide := eval(`(function(){var out=[]; var all=document.body.querySelectorAll("*");
for (var i=0;i<all.length&&out.length<5;i++){var e=all[i]; if(e.getBoundingClientRect().right>innerWidth+1 && !e.closest("table.jobs,table.runs,table.facts,main>table")) out.push(e.tagName+"."+e.className+"#"+e.id+" in "+e.parentElement.tagName+" ("+e.textContent.slice(0,30)+")")}
return out.join(", ")})()`)
				t.Errorf("%s: the page is wider than the window (scrollWidth, innerWidth: %s); too wide: %s", at, v, wide)
			}
			if name != "needs" {
				if v := eval(`(function(){var e=document.querySelector("tr[data-state] time, #run-label time"); return e.textContent+"|"+e.title})()`); !strings.HasPrefix(v, "3 minutes ago|") && !strings.HasPrefix(v, "4 minutes ago|") || !strings.HasSuffix(v, " UTC") {
					t.Errorf("%s: the newest time reads %q, want \"3 minutes ago\" with the absolute time on hover", at, v)
				}
			}
			if width == 1280 && name == "failure" {
				for _, sel := range []string{"#jobs", "table.jobs tr.s-failure", "#first-failure", "#run-label"} {
					if v := eval(above(sel)); v != "yes" {
						t.Errorf("%s: %s is not in the first screen: %s", at, sel, v)
					}
				}
			}
			if width == 1280 && name == "needs" {
				if v := eval(above("table.jobs")); v != "yes" {
					t.Errorf("%s: the job graph is not in the first screen: %s", at, v)
				}
			}
			if name != "index" {
				if v := eval(`document.getElementById("details").open ? "open" : "folded"`); v != "folded" {
					t.Errorf("%s: the run's details are %s", at, v)
				}
			}
			png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(artifactDir(t), fmt.Sprintf("render-layout-%s-%d.png", name, width)), png, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if p := problems.get(); len(p) > 0 {
		t.Errorf("console problems:\n%s", strings.Join(p, "\n"))
	}
}
