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
