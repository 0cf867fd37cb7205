package render

import (
	"bytes"
	"fmt"
	"strings"

	"refci.dev/refci/queue"
)

// MarkdownLimit is the most a Markdown rendering may weigh: GitHub refuses
// comments over 65,536 characters. Bytes are counted, which is never less.
const MarkdownLimit = 65536

// ExcerptLines is how many last lines of a failing log the Markdown and
// plain-text renderings quote.
const ExcerptLines = 40

// excerptLineCap is how many bytes of one quoted line are kept.
const excerptLineCap = 500

// FetchLine is the command that fetches the runs of the commit target
// from a remote, and only those: with git's protocol version 2 (git 2.26
// and later use it by default) the remote advertises only the refs under
// that prefix, so it costs the same with 100 runs on the remote as with
// 100,000. A target that is not a full commit id fetches every run.
func FetchLine(target string) string {
	if !queue.IsObjectID(target) {
		return "git fetch origin '+refs/ci/*:refs/ci/*'"
	}
	return "git fetch origin '+" + queue.RunsPrefix + target + "/*:" + queue.RunsPrefix + target + "/*'"
}

// excerpt is the tail of one failing log, made safe plain text.
type excerpt struct {
	title string // "job test (failure, exit 1)"
	lines []string
	first int // line number of lines[0]
	job   string
}

// excerpts picks what to quote: the logs of failed jobs, or, when no job
// failed (the pipeline itself failed or errored), the pipeline's log.
func excerpts(r Result, n int) []excerpt {
	s := r.Status
	var out []excerpt
	if s.State == queue.Success || s.State == queue.Running {
		return nil
	}
	for _, j := range s.Jobs {
		if j.State != queue.Failure {
			continue
		}
		title := fmt.Sprintf("job %s (%s", Safe(j.Name), j.State)
		if j.ExitCode != nil {
			title += fmt.Sprintf(", exit %d", *j.ExitCode)
		}
		title += ")"
		out = append(out, makeExcerpt(title, r.JobLogs[j.Name], n, j.Name))
	}
	if len(out) == 0 {
		out = append(out, makeExcerpt("pipeline log", r.Log, n, ""))
	}
	return out
}

func makeExcerpt(title string, log []byte, n int, job string) excerpt {
	lines, before := tailLines(log, n)
	e := excerpt{title: title, first: before + 1, job: job}
	for _, l := range lines {
		cut := 0
		if len(l) > excerptLineCap {
			cut = len(l) - excerptLineCap
			l = l[:excerptLineCap]
		}
		s := PlainLine(l)
		if cut > 0 {
			s = strings.TrimRight(s, "\ufffd") + fmt.Sprintf(" [%d more bytes]", cut)
		}
		e.lines = append(e.lines, s)
	}
	return e
}

// MarkdownOptions changes the Markdown rendering. The zero value is the
// PR comment refci posts.
type MarkdownOptions struct {
	// Link, when set, is an absolute URL of the run's page, linked from
	// the summary.
	Link string
	// Limit is the size cap in bytes (0 means MarkdownLimit).
	Limit int
}

// Markdown renders a result as a pull-request comment: the summary line
// first, the jobs as a table, each failed job's last lines in a
// collapsible section, then how to fetch and read the result with git
// and refci. Quoted logs sit in fenced code blocks whose fence is longer
// than any run of backticks in them, so no log line can end the block;
// other text is escaped. The whole stays under o.Limit bytes: quoted logs
// lose their oldest lines first.
func Markdown(r Result, o MarkdownOptions) string {
	limit := o.Limit
	if limit <= 0 {
		limit = MarkdownLimit
	}
	s := r.Status
	var head strings.Builder
	icon := map[queue.State]string{queue.Success: "✅", queue.Failure: "❌", queue.Error: "⚠️", queue.Cancelled: "⏹️", queue.Running: "⏳"}[s.State]
	target := "`" + shortID(s.Target) + "`"
	if s.TargetRef != "" {
		target += " (" + mdText(s.TargetRef) + ")"
	}
	summary := fmt.Sprintf("%s **refci: %s** on %s, request %s, in %s", icon, s.State, target, mdCode(s.Request), Duration(s.DurationMS))
	if o.Link != "" && strings.HasPrefix(o.Link, "https://") {
		summary += fmt.Sprintf(" · [details](%s)", strings.NewReplacer("(", "%28", ")", "%29", " ", "%20").Replace(o.Link))
	}
	head.WriteString(summary + "\n\n")
	if s.Reason != "" {
		head.WriteString("> " + mdText(strings.Join(strings.Fields(s.Reason), " ")) + "\n\n")
	}
	if len(s.Jobs) > 0 {
		head.WriteString("| | job | duration | needs |\n|---|---|---|---|\n")
		for _, n := range jobTree(s.Jobs) {
			needs := ""
			if len(n.Needs) > 0 {
				needs = mdText(strings.Join(n.Needs, ", "))
			}
			fmt.Fprintf(&head, "| %s | %s%s | %s | %s |\n", stateMark[n.State], strings.Repeat("&nbsp;&nbsp;", n.Depth), mdCode(n.Name), Duration(n.DurationMS), needs)
		}
		head.WriteString("\n")
	}
	var tail strings.Builder
	runArg := s.Run // refci finds a run by its id
	if !queue.ValidRunID(s.Run) {
		runArg = s.Target
	}
	fmt.Fprintf(&tail, "<sub>run %s, attempt %d, worker %s", mdCode(s.Run), s.Attempt, mdCode(s.Worker))
	if s.Host != "" {
		fmt.Fprintf(&tail, " on %s", mdText(s.Host))
	}
	tail.WriteString("</sub>\n\n")
	fmt.Fprintf(&tail, "Read it locally (results are signed commits; no account needed):\n\n```sh\n%s\nrefci status %s\nrefci log %s\nrefci verify %s\n```\n", FetchLine(s.Target), runArg, runArg, runArg)

	ex := excerpts(r, ExcerptLines)
	const maxSections = 10
	more := 0
	if len(ex) > maxSections {
		more = len(ex) - maxSections
		ex = ex[:maxSections]
	}
	moreNote := ""
	if more > 0 {
		moreNote = fmt.Sprintf("_%d more failed jobs are not quoted; see the run's page or `refci log`._\n\n", more)
	}
	budget := limit - head.Len() - tail.Len() - len(moreNote)
	var body strings.Builder
	for i, e := range ex {
		share := budget / (len(ex) - i)
		sec := mdSection(e, share)
		budget -= len(sec)
		body.WriteString(sec)
	}
	out := head.String() + body.String() + moreNote + tail.String()
	if len(out) > limit { // only when the fixed parts alone are too big
		out = truncateUTF8(out, limit-len("\n…\n")) + "\n…\n"
	}
	return out
}

// mdSection renders one excerpt within max bytes, dropping its oldest
// lines as needed; "" when not even the frame fits.
func mdSection(e excerpt, max int) string {
	lines := e.lines
	first := e.first
	for {
		fence := strings.Repeat("`", max3(longestRun(lines, '`')+1))
		var b strings.Builder
		label := fmt.Sprintf("last %d lines", len(lines))
		if len(lines) == 1 {
			label = "last line"
		}
		if first > 1 {
			label += fmt.Sprintf(" (from line %d)", first)
		}
		fmt.Fprintf(&b, "<details><summary>%s: %s</summary>\n\n%s\n", htmlText(e.title), label, fence)
		for _, l := range lines {
			b.WriteString(l)
			b.WriteByte('\n')
		}
		b.WriteString(fence + "\n</details>\n\n")
		if b.Len() <= max || len(lines) == 0 {
			if b.Len() > max {
				return ""
			}
			return b.String()
		}
		// Drop enough old lines to fit, at least one.
		over := b.Len() - max
		k := 0
		for k < len(lines)-1 && over > 0 {
			over -= len(lines[k]) + 1
			k++
		}
		if k == 0 {
			k = 1
		}
		lines = lines[k:]
		first += k
	}
}

func max3(n int) int {
	if n < 3 {
		return 3
	}
	return n
}

func longestRun(lines []string, c byte) int {
	best := 0
	for _, l := range lines {
		run := 0
		for i := 0; i < len(l); i++ {
			if l[i] == c {
				run++
				best = max(best, run)
			} else {
				run = 0
			}
		}
	}
	return best
}

// mdText escapes text for Markdown outside code: Markdown punctuation is
// backslash-escaped, HTML's <, > and & become entities, and @ cannot
// mention anyone.
func mdText(s string) string {
	s = PlainLine([]byte(strings.ReplaceAll(s, "\n", " ")))
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '<':
			b.WriteString("&lt;")
		case '>':
			b.WriteString("&gt;")
		case '&':
			b.WriteString("&amp;")
		case '@':
			b.WriteString("&#64;")
		case '\\', '`', '*', '_', '{', '}', '[', ']', '(', ')', '#', '+', '-', '.', '!', '|', '~':
			b.WriteByte('\\')
			b.WriteRune(r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// mdCode puts s in a code span whose backtick run is longer than any in s.
func mdCode(s string) string {
	s = PlainLine([]byte(strings.ReplaceAll(s, "\n", " ")))
	s = strings.ReplaceAll(s, "|", "\\|") // inside tables a pipe ends the cell even in code
	ticks := strings.Repeat("`", longestRun([]string{s}, '`')+1)
	if strings.HasPrefix(s, "`") || strings.HasSuffix(s, "`") {
		return ticks + " " + s + " " + ticks
	}
	return ticks + s + ticks
}

// htmlText escapes text for inside an HTML element of a Markdown document.
func htmlText(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", "@", "&#64;").Replace(s)
}

func truncateUTF8(s string, n int) string {
	if n >= len(s) {
		return s
	}
	if n < 0 {
		return ""
	}
	for n > 0 && !isRuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func isRuneStart(b byte) bool { return b&0xc0 != 0x80 }

// Text renders a result as the plain-text body of a mail reply: the
// terminal block without colour, the last lines of each failed job's log,
// and how to fetch and read the result. Lines of quoted logs are made
// safe (no escapes or control characters) and indented by four spaces.
func Text(r Result) string {
	s := r.Status
	var b bytes.Buffer
	Terminal(&b, s, TermOptions{Ref: r.Ref})
	b.WriteString(TextExcerpts(r))
	runArg := Safe(s.Run)
	if !queue.ValidRunID(s.Run) {
		runArg = Safe(s.Target)
	}
	fmt.Fprintf(&b, "\nRead it locally:\n\n    %s\n    refci status %s\n    refci log %s\n", FetchLine(s.Target), runArg, runArg)
	return b.String()
}

// TextExcerpts is the part of Text that quotes the failing logs: for
// each failed job (or the pipeline, when no job failed) a title line and
// its last ExcerptLines lines, made safe and indented by four spaces;
// "" for a run that did not fail. A mail reply that frames the result in
// its own words uses it with Terminal.
func TextExcerpts(r Result) string {
	var b strings.Builder
	for _, e := range excerpts(r, ExcerptLines) {
		label := fmt.Sprintf("last %d lines", len(e.lines))
		if len(e.lines) == 1 {
			label = "last line"
		}
		if e.first > 1 {
			label += fmt.Sprintf(", from line %d", e.first)
		}
		fmt.Fprintf(&b, "\n%s, %s:\n\n", e.title, label)
		for _, l := range e.lines {
			b.WriteString("    " + strings.TrimRight(l, " \t") + "\n")
		}
	}
	return b.String()
}
