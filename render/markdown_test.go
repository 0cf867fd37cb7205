package render

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"refci.dev/refci/queue"
)

func TestMarkdownGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Result
		o    MarkdownOptions
	}{
		{"markdown_failure", failedResult(), MarkdownOptions{Link: "https://ci.example.org/runs/3f9a/index.html"}},
		{"markdown_success", successResult(), MarkdownOptions{}},
		{"markdown_error", errorResult(), MarkdownOptions{}},
	} {
		t.Run(tc.name, func(t *testing.T) { golden(t, tc.name, []byte(Markdown(tc.r, tc.o))) })
	}
}

func TestTextGolden(t *testing.T) {
	golden(t, "text_failure", []byte(Text(failedResult())))
	golden(t, "text_success", []byte(Text(successResult())))
	golden(t, "text_error", []byte(Text(errorResult())))
}

// TestMarkdownFence: a log full of backticks cannot close its code block.
func TestMarkdownFence(t *testing.T) {
	t.Parallel()
	r := failedResult()
	r.JobLogs["test"] = []byte("```\n</details>\n`````` five and six\n@everyone <b>bold</b>\n")
	md := Markdown(r, MarkdownOptions{})
	if !strings.Contains(md, "\n```````\n```\n</details>\n`````` five and six\n@everyone <b>bold</b>\n```````\n</details>") {
		t.Errorf("fence not longer than the log's backtick runs:\n%s", md)
	}
	if strings.Count(md, "<details>") != strings.Count(md, "</details>")-1 {
		t.Errorf("unbalanced details (the log's own </details> is inside the code block)")
	}
	r.Status.Reason = "see @alice <script> `x` *y*"
	md = Markdown(r, MarkdownOptions{})
	if strings.Contains(md, "@alice") || strings.Contains(md, "<script>") {
		t.Errorf("reason not escaped:\n%s", md)
	}
}

// TestMarkdownLimit: huge logs, many failed jobs and huge lines still give
// a comment under GitHub's limit that keeps the summary, the newest log
// lines and the fetch line.
func TestMarkdownLimit(t *testing.T) {
	t.Parallel()
	s := failedRun()
	s.Jobs = nil
	logs := map[string][]byte{}
	for i := 0; i < 25; i++ {
		name := fmt.Sprintf("test-%02d", i)
		s.Jobs = append(s.Jobs, queue.Job{Name: name, State: queue.Failure, ExitCode: queue.IntPtr(1)})
		var b bytes.Buffer
		for k := 0; k < 100; k++ {
			fmt.Fprintf(&b, "%s line %d %s\n", name, k, strings.Repeat("é", 300))
		}
		b.Write(bytes.Repeat([]byte("x"), 10<<20))
		b.WriteString("\nlast line of " + name + "\n")
		logs[name] = b.Bytes()
	}
	for _, limit := range []int{0, 4000} {
		md := Markdown(Result{Status: s, JobLogs: logs}, MarkdownOptions{Limit: limit})
		want := limit
		if want == 0 {
			want = MarkdownLimit
		}
		if len(md) > want {
			t.Errorf("limit %d: %d bytes", want, len(md))
		}
		if !utf8.ValidString(md) {
			t.Errorf("limit %d: invalid UTF-8", want)
		}
		for _, must := range []string{"**refci: failure**", FetchLine(s.Target)} {
			if !strings.Contains(md, must) {
				t.Errorf("limit %d: lacks %q", want, must)
			}
		}
		if limit == 0 {
			if !strings.Contains(md, "last line of test-00") || !strings.Contains(md, "[10485760 more bytes]") && !strings.Contains(md, "more bytes]") {
				t.Errorf("the newest lines of the first failure are missing")
			}
			if !strings.Contains(md, "15 more failed jobs are not quoted") {
				t.Errorf("the jobs left out are not counted")
			}
			if len(md) < MarkdownLimit/2 {
				t.Errorf("only %d bytes used of %d", len(md), MarkdownLimit)
			}
		}
		if strings.Count(md, "<details>") != strings.Count(md, "</details>") {
			t.Errorf("limit %d: a section was cut in the middle", want)
		}
	}
}

func TestTextSafe(t *testing.T) {
	t.Parallel()
	r := failedResult()
	r.JobLogs["test"] = []byte("\x1b]0;pwned\x07\x1b[31mred\x1b[0m\x00 \xff\n")
	out := Text(r)
	for _, r := range out {
		if r < 0x20 && r != '\n' && r != '\t' || r == 0x7f || r == utf8.RuneError && false {
			t.Fatalf("control character %U in mail text", r)
		}
	}
	if !strings.Contains(out, "    red␀ \ufffd\n") {
		t.Errorf("log line not made safe:\n%s", out)
	}
}
