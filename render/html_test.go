package render

import (
	"bytes"
	"fmt"
	"html"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"refci.dev/refci/queue"
)

// failedResult is failedRun with logs: colours, a failing test, odd bytes.
func failedResult() Result {
	s := failedRun()
	for i := range s.Jobs {
		if s.Jobs[i].Name != "deploy" && s.Jobs[i].Name != "notify" && s.Jobs[i].Name != "bench" {
			s.Jobs[i].Log = queue.JobLogPath(s.Jobs[i].Name)
		}
	}
	s.Artifacts = append(s.Artifacts, queue.Artifact{Path: "report dir/index.html", Size: 77, SHA256: strings.Repeat("ef", 32)})
	return Result{
		Status: s,
		Log:    []byte("[build] go build ./...\n[test] \x1b[1;31m--- FAIL: TestParse\x1b[0m (0.01s)\n[test] FAIL\nrefci: job test ended failure\n"),
		JobLogs: map[string][]byte{
			"build":   []byte("go build ./...\n"),
			"lint":    []byte("\x1b[32mok\x1b[0m vet clean\n"),
			"test":    []byte("=== RUN   TestParse\n    parse_test.go:12: got \"<nil>\", want `x`\n\x1b[1;31m--- FAIL: TestParse\x1b[0m (0.01s)\nFAIL\n"),
			"package": []byte("tar czf out.tgz .\n"),
			"docs":    []byte("generating\r 10%\r 50%\r100%\nnul\x00byte and bad \xff\xfe utf-8\n"),
		},
		Ref:    "refs/ci/runs/3f9a1c0b2d4e5f60718293a4b5c6d7e8f9a0b1c2/20261122T093000.123Z-3f9a1c",
		Commit: "1111111111111111111111111111111111111111",
	}
}

func successResult() Result {
	return Result{Status: successRun(), Log: []byte("all good\n")}
}

func errorResult() Result {
	return Result{Status: errorRun(), Log: []byte("refci: no executable .refci/run in this commit\n")}
}

func mustHTML(t *testing.T, r Result, o HTMLOptions) []byte {
	t.Helper()
	b, err := HTML(r, o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHTMLGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Result
		o    HTMLOptions
	}{
		{"html_failure", failedResult(), HTMLOptions{}},
		{"html_success_site", successResult(), HTMLOptions{Home: "../../../index.html", Links: [][2]string{{"commit history", "../../../commits/0123456789abcdef0123456789abcdef01234567.html"}},
			Verdict: &Verdict{Kind: VerdictVerified, By: "Worker <w@example.invalid> (6A1F0C2B3D4E5F60718293A4B5C6D7E8F9A0B1C2)"}}},
		{"html_inconsistent_site", successResult(), HTMLOptions{Home: "../../../index.html",
			Verdict: &Verdict{Kind: VerdictInconsistent, Why: "status.json is about commit \"<b>x</b>\" but was found under refs/ci/runs/00/x:\na result copied\x1b[31m"}}},
		{"html_error", errorResult(), HTMLOptions{}},
		{"html_running", Result{Status: runningRun(), Log: []byte("building\n")}, HTMLOptions{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			golden(t, tc.name, mustHTML(t, tc.r, tc.o))
		})
	}
}

func TestHTMLContent(t *testing.T) {
	t.Parallel()
	out := string(mustHTML(t, failedResult(), HTMLOptions{}))
	for _, want := range []string{
		`<a id="first-failure" href="#test-L4">Jump to the first failure: job test, end of its log (line 4)</a>`,
		`<li id=test-L3><span class="f1 b">--- FAIL: TestParse</span> (0.01s)`,
		`<li id=L2>[test] <span class="f1 b">`,
		`<details id="job-test" class="s-failure" open>`,
		`<details id="job-build" class="s-success">`,
		`got &#34;&lt;nil&gt;&#34;, want `,
		`<li id=docs-L1>100%`,              // carriage returns applied
		`nul<b class="c">␀</b>byte`,        // NUL visible
		`bad <b class="c">` + "\ufffd</b>", // invalid UTF-8 replaced
		`<a href="artifacts/report%20dir/index.html" download>report dir/index.html</a>`,
		`<iframe class="preview" name="artifact-preview" sandbox title="artifact preview"></iframe>`,
		`<a href="artifacts/reports/junit.xml" download>`, // XML can carry script (XSLT)
		`href="jobs/test/log.txt"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(out, "\x1b") || strings.Contains(out, "\x00") {
		t.Errorf("page passes raw escapes or NUL through")
	}
	if !utf8.ValidString(out) {
		t.Errorf("page is not valid UTF-8")
	}
	if strings.Contains(out, `allow-same-origin`) || strings.Contains(out, `allow-scripts`) {
		t.Errorf("the artifact frame must not allow same origin or scripts")
	}
	// Every id is unique (deep links must be unambiguous).
	ids := map[string]int{}
	for _, m := range regexp.MustCompile(` id="([^"]*)"`).FindAllStringSubmatch(out, -1) {
		ids[m[1]]++
	}
	for id, n := range ids {
		if n > 1 {
			t.Errorf("id %q used %d times", id, n)
		}
	}
	// No script but the one whose hash is allowed.
	if n := strings.Count(out, "<script"); n != 1 {
		t.Errorf("%d script elements, want 1", n)
	}
	// Only relative links and fragments: nothing fetched from elsewhere.
	for _, m := range regexp.MustCompile(`(?:href|src)="([^"]*)"`).FindAllStringSubmatch(out, -1) {
		if strings.Contains(m[1], "://") || strings.HasPrefix(m[1], "//") {
			t.Errorf("external link %q", m[1])
		}
	}
}

// TestHTMLHostileLog: what a pipeline prints cannot become markup, a
// script, or a page that blows up.
func TestHTMLHostileLog(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("A"), 10<<20)
	hostile := []byte("</ol></details><script>alert(1)</script>\n" +
		"<img src=x onerror=alert(2)>\n" +
		"\x1b]0;title\x07\x1b[2J\x1b[38;5;196mred256\x1b[0m \x1b[38;2;1;2;3mtrue\x1b[0m\x1b[\n" +
		"\xc3\x28 \xed\xa0\x80 \xf4\x90\x80\x80 \x9b \xc2\x9b csi\x7f\n" +
		"&amp; \" ' `\n")
	hostile = append(hostile, bytes.Repeat([]byte("é"), 50<<10)...) // a long line that is shown, cut
	hostile = append(hostile, '\n')
	hostile = append(hostile, big...)
	hostile = append(hostile, "\nafter the long line\n"...)
	s := failedRun()
	s.Jobs = []queue.Job{{Name: "test", State: queue.Failure, Log: "jobs/test/log.txt"}}
	s.Artifacts = []queue.Artifact{{Path: "../../etc/passwd"}, {Path: `x"><script>alert(3)</script>.html`}}
	s.Reason = "<script>alert(4)</script> \x1b[2J"
	s.TargetRef = `main" onmouseover="alert(5)`
	r := Result{Status: s, Log: hostile, JobLogs: map[string][]byte{"test": hostile}}
	out := mustHTML(t, r, HTMLOptions{})
	page := string(out)
	if n := strings.Count(page, "<script"); n != 1 {
		t.Errorf("%d <script in the page, want exactly the page's own", n)
	}
	for _, bad := range []string{"<img", "\x1b", `onmouseover="`, `href="artifacts/../`, "\x9b", "\xc3\x28"} {
		if strings.Contains(page, bad) {
			t.Errorf("page contains %q", bad)
		}
	}
	if !utf8.ValidString(page) {
		t.Errorf("page is not valid UTF-8")
	}
	if !strings.Contains(page, "&lt;/ol&gt;&lt;/details&gt;&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Errorf("markup in the log is not shown as text")
	}
	if !strings.Contains(page, `<span class="f1">`) && !strings.Contains(page, "red256") {
		t.Errorf("256-colour text lost")
	}
	// The 10 MB line is cut; the page stays small and says so.
	if len(out) > 2*LogInline+200<<10 {
		t.Errorf("page weighs %d bytes for a log of %d", len(out), len(hostile))
	}
	if !strings.Contains(page, "more bytes on this line") {
		t.Errorf("the long line's cut is not explained")
	}
	if !strings.Contains(page, "after the long line") {
		t.Errorf("the log's end is not shown")
	}
	if !strings.Contains(page, "are not shown here") {
		t.Errorf("the omitted middle is not explained")
	}
	// The line after the long one keeps its true number.
	want := fmt.Sprintf(`<li id=L%d>after the long line`, 8)
	if !strings.Contains(page, want) {
		t.Errorf("page lacks %q", want)
	}
}

// TestHTMLWeight: a 1 MB log gives a page near 1 MB.
func TestHTMLWeight(t *testing.T) {
	t.Parallel()
	var log bytes.Buffer
	for i := 0; log.Len() < 1<<20; i++ {
		fmt.Fprintf(&log, "=== RUN   TestSomething/case_%d\n    thing_test.go:%d: ok, value %d\n", i, i%300, i*7)
	}
	out := mustHTML(t, Result{Status: successRun(), Log: log.Bytes()}, HTMLOptions{})
	ratio := float64(len(out)) / float64(log.Len())
	t.Logf("1 MB log (%d bytes, %d lines): page %d bytes, %.2f× the log", log.Len(), lineCount(log.Bytes()), len(out), ratio)
	if ratio > 1.5 {
		t.Errorf("page is %.2f× the log", ratio)
	}
}

func TestLogHTMLNumbering(t *testing.T) {
	t.Parallel()
	var log bytes.Buffer
	for i := 1; i <= 200000; i++ {
		fmt.Fprintf(&log, "line %d\n", i)
	}
	var b bytes.Buffer
	logHTML(&b, log.Bytes(), "", "log.txt", 64<<10)
	out := b.String()
	// Every shown line carries its own number as id and shows its number as text.
	re := regexp.MustCompile(`<li id=L(\d+)>line (\d+)`)
	ms := re.FindAllStringSubmatch(out, -1)
	if len(ms) < 1000 {
		t.Fatalf("only %d lines shown", len(ms))
	}
	for _, m := range ms {
		if m[1] != m[2] {
			t.Fatalf("line %s has id L%s", m[2], m[1])
		}
	}
	// The tail list starts where its first line is.
	st := regexp.MustCompile(`<ol class="log" start="(\d+)"><li id=L(\d+)>`).FindStringSubmatch(out)
	if st == nil || st[1] != st[2] {
		t.Errorf("tail list start %v", st)
	}
	if !strings.Contains(out, `<li id=L200000>line 200000</ol>`) {
		t.Errorf("last line missing")
	}
	if strings.Contains(html.UnescapeString(out), "\n") {
		t.Errorf("newlines inside the list would show as blank lines")
	}
}

func TestPlainLine(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"plain":                        "plain",
		"\x1b[31mred\x1b[0m":           "red",
		"a\x00b":                       "a␀b",
		"bad \xff":                     "bad \ufffd",
		"tab\tkept":                    "tab\tkept",
		"progress 10%\rprogress 100%":  "progress 100%",
		"crlf\r":                       "crlf",
		"\x1b]8;;http://x\x1b\\link":   "link",
		"c1 \xc2\x9b":                  `c1 \x9b`,
		"del\x7f":                      "del␡",
		"unterminated \x1b[":           "unterminated ",
		"esc charset \x1b(Bok":         "esc charset ok",
		"\x1b[38;5;196mred256\x1b[39m": "red256",
	} {
		if got := PlainLine([]byte(in)); got != want {
			t.Errorf("PlainLine(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTailLines(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		log    string
		n      int
		want   string
		before int
	}{
		{"", 3, "", 0},
		{"a\nb\nc\n", 2, "b|c", 1},
		{"a\nb\nc", 2, "b|c", 1},
		{"a\nb\nc\n", 5, "a|b|c", 0},
		{"a\n\nc\n", 2, "|c", 1},
		{"one", 1, "one", 0},
	} {
		lines, before := tailLines([]byte(tc.log), tc.n)
		var s []string
		for _, l := range lines {
			s = append(s, string(l))
		}
		if got := strings.Join(s, "|"); got != tc.want || before != tc.before {
			t.Errorf("tailLines(%q, %d) = %q, %d; want %q, %d", tc.log, tc.n, got, before, tc.want, tc.before)
		}
	}
}

// A commit's subject and author are one line each, with control and
// invisible characters escaped, capped, and never more than the first
// line of the message; a run is named the same way everywhere.
func TestCommitInfoAndRunLabel(t *testing.T) {
	c := CommitInfoOf("\nFix \x1b[31mred\x1b[0m\u202e parser\nsecond line\n", "Mallory\r\nInjected: yes", t0)
	if c.Subject != `Fix \x1b[31mred\x1b[0m\u202e parser` || c.Author != `Mallory Injected: yes` || !c.Date.Equal(t0) {
		t.Errorf("CommitInfoOf: %+v", c)
	}
	long := CommitInfoOf(strings.Repeat("é", 300), "", t0)
	if !utf8.ValidString(long.Subject) || len(long.Subject) > 204 || !strings.HasSuffix(long.Subject, "…") {
		t.Errorf("a long subject is not capped on a character boundary: %d bytes", len(long.Subject))
	}
	for _, tc := range []struct {
		req, target string
		attempt     int
		run, want   string
	}{
		{"main", "3f9a1c0b2d4e5f60718293a4b5c6d7e8f9a0b1c2", 2, "20261122T093000.123Z-3f9a1c", "main · 3f9a1c0b2d4e · attempt 2 · run 3f9a1c"},
		{"pr/7", "ab", 0, "odd", "pr/7 · ab · attempt 1 · run odd"},
	} {
		if got := RunLabel(tc.req, tc.target, tc.attempt, tc.run); got != tc.want {
			t.Errorf("RunLabel = %q, want %q", got, tc.want)
		}
	}
	page := string(mustHTML(t, failedResult(), HTMLOptions{Commit: &CommitInfo{Subject: "<b>x</b>\x1b[2J", Author: "A & B"}}))
	for _, want := range []string{`<span class="subject">&lt;b&gt;x&lt;/b&gt;\x1b[2J</span>`, " · by A &amp; B"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}
}

// With Stored, a page links only the files that are next to it: a log,
// a job's log or an artifact that is not is shown as not stored.
func TestHTMLLinksOnlyStored(t *testing.T) {
	r := failedResult()
	stored := map[string]bool{queue.JobLogPath("build"): true}
	page := string(mustHTML(t, r, HTMLOptions{Stored: func(p string) bool { return stored[p] }}))
	for _, bad := range []string{`href="log.txt"`, `href="jobs/test/log.txt"`, `href="artifacts/`} {
		if strings.Contains(page, bad) {
			t.Errorf("the page links %s, which is not stored", bad)
		}
	}
	for _, want := range []string{`href="jobs/build/log.txt"`, "(no log stored)", "(not stored)"} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	// nil: every file is there.
	page = string(mustHTML(t, r, HTMLOptions{}))
	for _, want := range []string{`href="log.txt"`, `href="jobs/test/log.txt"`, `href="artifacts/report%20dir/index.html"`} {
		if !strings.Contains(page, want) {
			t.Errorf("without Stored, the page lacks %s", want)
		}
	}
}
