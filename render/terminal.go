package render

import (
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"

	"refci.dev/refci/queue"
)

// TermOptions controls the terminal rendering. The zero value renders
// plain text without colour.
type TermOptions struct {
	Color bool   // ANSI colours (only when writing to a terminal and NO_COLOR is unset)
	Ref   string // the run ref, printed when not empty
}

var stateColor = map[queue.State]string{
	queue.Success:   "\x1b[32m",
	queue.Failure:   "\x1b[31m",
	queue.Error:     "\x1b[35m",
	queue.Cancelled: "\x1b[33m",
	queue.Skipped:   "\x1b[90m",
	queue.Running:   "\x1b[36m",
}

var stateMark = map[queue.State]string{
	queue.Success:   "ok",
	queue.Failure:   "FAIL",
	queue.Error:     "ERROR",
	queue.Cancelled: "cancelled",
	queue.Skipped:   "skipped",
	queue.Running:   "running",
}

func paint(on bool, s queue.State, text string) string {
	if !on {
		return text
	}
	return stateColor[s] + text + "\x1b[0m"
}

// Duration formats a duration in milliseconds for people: 850ms, 1.2s,
// 3m04s, 1h02m.
func Duration(ms int64) string {
	d := time.Duration(ms) * time.Millisecond
	switch {
	case d < time.Second:
		return fmt.Sprintf("%dms", ms)
	case d < time.Minute:
		return fmt.Sprintf("%d.%ds", ms/1000, ms%1000/100) // truncated: never "60.0s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	default:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
}

// Terminal writes the status block of one run: state, target, timing,
// jobs as a tree by their needs, artifacts.
func Terminal(w io.Writer, s *queue.Status, o TermOptions) error {
	var b strings.Builder
	short := s.Target
	if len(short) > 12 {
		short = short[:12]
	}
	fmt.Fprintf(&b, "%s  %s  %s\n", paint(o.Color, s.State, strings.ToUpper(Safe(string(s.State)))), Safe(short), Duration(s.DurationMS))
	if s.Reason != "" {
		fmt.Fprintf(&b, "  reason:   %s\n", oneLine(s.Reason))
	}
	target := Safe(s.Target)
	if s.TargetRef != "" {
		target += " (" + Safe(s.TargetRef) + ")"
	}
	fmt.Fprintf(&b, "  target:   %s\n", target)
	fmt.Fprintf(&b, "  request:  %s  attempt %d\n", Safe(s.Request), s.Attempt)
	fmt.Fprintf(&b, "  run:      %s\n", Safe(s.Run))
	fmt.Fprintf(&b, "  started:  %s\n", s.Started.UTC().Format(time.RFC3339))
	if s.ExitCode != nil {
		fmt.Fprintf(&b, "  exit:     %d", *s.ExitCode)
		if s.Signal != "" {
			fmt.Fprintf(&b, " (signal %s)", s.Signal)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "  worker:   %s\n", Safe(s.Worker))
	if s.Env != "" {
		fmt.Fprintf(&b, "  env:      %s (trusted: %v)\n", Safe(s.Env), s.Trusted)
	}
	if o.Ref != "" {
		fmt.Fprintf(&b, "  ref:      %s\n", o.Ref)
	}
	if s.LogTruncated {
		fmt.Fprintf(&b, "  log:      %d bytes written, capped (head and tail kept)\n", s.LogBytes)
	}
	if len(s.Jobs) > 0 {
		b.WriteString("  jobs:\n")
		writeJobTree(&b, s.Jobs, o.Color)
	}
	if len(s.Artifacts) > 0 || len(s.ArtifactsSkipped) > 0 {
		b.WriteString("  artifacts:\n")
		for _, a := range s.Artifacts {
			fmt.Fprintf(&b, "    %s  %d bytes\n", Safe(a.Path), a.Size)
		}
		for _, a := range s.ArtifactsSkipped {
			fmt.Fprintf(&b, "    %s  not stored: %s\n", Safe(a.Path), oneLine(a.Reason))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// treeNode is one job in the job tree and how deep it sits.
type treeNode struct {
	queue.Job
	Depth int
}

// jobTree orders jobs as a tree: each job under the first of its needs
// that is a known job, roots in start order. Cycles and self-needs still
// give every job exactly once.
func jobTree(jobs []queue.Job) []treeNode {
	known := map[string]bool{}
	for _, j := range jobs {
		known[j.Name] = true
	}
	children := map[string][]queue.Job{}
	var roots []queue.Job
	for _, j := range jobs {
		parent := ""
		for _, n := range j.Needs {
			if known[n] && n != j.Name {
				parent = n
				break
			}
		}
		if parent == "" {
			roots = append(roots, j)
		} else {
			children[parent] = append(children[parent], j)
		}
	}
	seen := map[string]bool{}
	var out []treeNode
	var walk func(j queue.Job, depth int)
	walk = func(j queue.Job, depth int) {
		if seen[j.Name] {
			return
		}
		seen[j.Name] = true
		out = append(out, treeNode{j, depth})
		for _, c := range children[j.Name] {
			walk(c, depth+1)
		}
	}
	for _, j := range roots {
		walk(j, 0)
	}
	for _, j := range jobs { // cycles: what the walk never reached
		walk(j, 0)
	}
	return out
}

// writeJobTree prints jobs under the job they need (the first need when
// there are several; the others are named), roots in start order.
func writeJobTree(b *strings.Builder, jobs []queue.Job, color bool) {
	for _, n := range jobTree(jobs) {
		j := n.Job
		indent := strings.Repeat("  ", n.Depth+2)
		mark := paint(color, j.State, fmt.Sprintf("%-9s", stateMark[j.State]))
		fmt.Fprintf(b, "%s%s %s  %s", indent, mark, Safe(j.Name), Duration(j.DurationMS))
		if len(j.Needs) > 0 {
			fmt.Fprintf(b, "  (needs %s)", Safe(strings.Join(j.Needs, ", ")))
		}
		if j.ExitCode != nil && *j.ExitCode != 0 {
			fmt.Fprintf(b, "  exit %d", *j.ExitCode)
		}
		if j.Reason != "" && !plainExit(j) {
			fmt.Fprintf(b, "  %s", oneLine(j.Reason))
		}
		b.WriteString("\n")
	}
}

// plainExit says whether a job's reason only repeats its exit code, as
// earlier workers wrote it ("exited with code 1" beside "exit 1").
func plainExit(j queue.Job) bool {
	return j.ExitCode != nil && j.Reason == fmt.Sprintf("exited with code %d", *j.ExitCode)
}

func oneLine(s string) string {
	return Safe(strings.Join(strings.Fields(s), " "))
}

// Safe makes text from a pipeline or a result safe for a terminal: C0
// and C1 control characters and DEL are shown as \xNN escapes, and
// invisible formatting characters (bidi overrides, zero-width
// characters, line separators) as \uNNNN, so a crafted name can neither
// move the cursor, fake a line nor read as another name.
func Safe(s string) string {
	clean := true
	for _, r := range s {
		if isControl(r) || isInvisible(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if isControl(r) {
			fmt.Fprintf(&b, "\\x%02x", r)
			continue
		}
		if isInvisible(r) {
			fmt.Fprintf(&b, "\\u%04x", r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// SafeLines is Safe for text of several lines, such as an error that
// quotes git's or a remote's messages: newlines and tabs stay as they are,
// every other character Safe escapes is escaped.
func SafeLines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		parts := strings.Split(l, "\t")
		for j, p := range parts {
			parts[j] = Safe(p)
		}
		lines[i] = strings.Join(parts, "\t")
	}
	return strings.Join(lines, "\n")
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) }

func isInvisible(r rune) bool {
	return r >= 0xa0 && (unicode.Is(unicode.Cf, r) || r == '\u2028' || r == '\u2029')
}

// RunLine is one line of `refci runs`: state, run id, duration, request.
func RunLine(s *queue.Status, color bool) string {
	short := s.Target
	if len(short) > 12 {
		short = short[:12]
	}
	return fmt.Sprintf("%s  %s  %s %7s  %s", Safe(s.Run), Safe(short), paint(color, s.State, fmt.Sprintf("%-9s", s.State)), Duration(s.DurationMS), Safe(s.Request))
}

// Summary writes the two lines that end a run's output in a terminal
// (refci run, refci trigger --wait, refci log -f): its state, how long it
// took and why, then the result ref it was recorded at, each prefixed
// "refci: ". Text from the status is made safe to print. Write errors
// are not reported.
func Summary(w io.Writer, s *queue.Status, ref string) {
	reason := ""
	if s.Reason != "" {
		reason = ": " + Safe(s.Reason)
	}
	fmt.Fprintf(w, "refci: %s in %s%s\nrefci: result %s\n", Safe(string(s.State)), Duration(s.DurationMS), reason, Safe(ref))
}
