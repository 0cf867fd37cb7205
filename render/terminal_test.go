package render

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/queue"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// golden compares got with testdata/name.golden, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test ./render -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (run go test ./render -update after checking the change)\n--- got:\n%s\n--- want:\n%s",
			p, strconv.Quote(string(got)), strconv.Quote(string(want)))
	}
}

var t0 = time.Date(2026, 11, 22, 9, 30, 0, 123000000, time.UTC)

// failedRun has a bit of everything: nested needs, a need on an unknown
// job, skipped and cancelled jobs, artifacts kept and skipped, a capped
// log, a signal, and a reason spread over several lines.
func failedRun() *queue.Status {
	return &queue.Status{
		Format:     queue.Format,
		State:      queue.Failure,
		Reason:     "job test ended failure\n\n   although .refci/run exited 0\t(see the log)\n",
		Target:     "3f9a1c0b2d4e5f60718293a4b5c6d7e8f9a0b1c2",
		TargetRef:  "main",
		Request:    "alice/topic",
		Run:        "20261122T093000.123Z-3f9a1c",
		Attempt:    2,
		Worker:     "6A1F0C2B3D4E5F60718293A4B5C6D7E8F9A0B1C2",
		Host:       "build-1",
		Env:        "staging",
		Trusted:    true,
		Started:    t0.In(time.FixedZone("CET", 3600)), // printed in UTC
		Finished:   t0.Add(194567 * time.Millisecond),
		DurationMS: 194567,
		ExitCode:   queue.IntPtr(143),
		Signal:     "TERM",
		Jobs: []queue.Job{
			{Name: "build", State: queue.Success, DurationMS: 1200, ExitCode: queue.IntPtr(0)},
			{Name: "lint", State: queue.Success, DurationMS: 850, ExitCode: queue.IntPtr(0)},
			{Name: "test", Needs: []string{"build", "lint"}, State: queue.Failure, DurationMS: 61000, ExitCode: queue.IntPtr(1), Reason: "3 tests\nfailed"},
			{Name: "package", Needs: []string{"build"}, State: queue.Success, DurationMS: 4000, ExitCode: queue.IntPtr(0)},
			{Name: "deploy", Needs: []string{"test", "package"}, State: queue.Skipped, Reason: "test did not succeed"},
			{Name: "notify", Needs: []string{"deploy"}, State: queue.Skipped, Reason: "deploy did not succeed"},
			{Name: "docs", Needs: []string{"generator"}, State: queue.Cancelled, DurationMS: 3_700_000, Reason: "the pipeline ended first"},
			{Name: "bench", State: queue.Running, DurationMS: 0},
		},
		Artifacts: []queue.Artifact{
			{Path: "reports/junit.xml", Size: 5120, SHA256: strings.Repeat("ab", 32)},
			{Path: "coverage.html", Size: 0, SHA256: strings.Repeat("cd", 32)},
		},
		ArtifactsSkipped: []queue.SkippedArtifact{
			{Path: "passwd", Reason: "symlink (to /etc/passwd); artifacts must be regular files"},
			{Path: "huge.bin", Reason: "73400320 bytes, over the per-file cap of 52428800"},
		},
		LogBytes:     17_000_000,
		LogTruncated: true,
		Version:      "v0.1.0",
	}
}

func successRun() *queue.Status {
	return &queue.Status{
		Format: queue.Format, State: queue.Success, Target: "0123456789abcdef0123456789abcdef01234567",
		Request: "local", Run: "20261122T093000.123Z-000001", Attempt: 1, Worker: "AAAA",
		Started: t0, Finished: t0.Add(850 * time.Millisecond), DurationMS: 850, ExitCode: queue.IntPtr(0),
		Jobs: []queue.Job{}, Artifacts: []queue.Artifact{}, LogBytes: 12,
	}
}

func runningRun() *queue.Status {
	return &queue.Status{
		Format: queue.Format, State: queue.Running, Target: "0123456789abcdef0123456789abcdef01234567",
		Request: "pr/42", Run: "20261122T093000.123Z-000002", Attempt: 1, Worker: "BBBB", Started: t0,
		Jobs: []queue.Job{{Name: "build", State: queue.Running}},
	}
}

func errorRun() *queue.Status {
	return &queue.Status{
		Format: queue.Format, State: queue.Error, Reason: "no executable .refci/run in this commit",
		Target: "feedfacefeedfacefeedfacefeedfacefeedface", Request: "patches/series-1/v2",
		Run: "20261122T093001.000Z-abcdef", Attempt: 3, Worker: "CCCC", Started: t0, DurationMS: 12,
	}
}

func cancelledRun() *queue.Status {
	return &queue.Status{
		Format: queue.Format, State: queue.Cancelled, Reason: "request superseded",
		Target: "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef", Request: "x", Run: "20261122T093002.000Z-123456",
		Attempt: 1, Worker: "DDDD", Started: t0, DurationMS: 3_725_000, ExitCode: queue.IntPtr(130), Signal: "INT",
		// needs that form cycles, a self-need and a duplicate need
		Jobs: []queue.Job{
			{Name: "a", Needs: []string{"b"}, State: queue.Cancelled, DurationMS: 5},
			{Name: "b", Needs: []string{"a"}, State: queue.Cancelled, DurationMS: 6},
			{Name: "self", Needs: []string{"self"}, State: queue.Skipped},
			{Name: "c", Needs: []string{"a", "a"}, State: queue.Skipped},
		},
	}
}

func render(t *testing.T, s *queue.Status, o TermOptions) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Terminal(&b, s, o); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestTerminalGolden(t *testing.T) {
	ref := "refs/ci/runs/3f9a1c0b2d4e5f60718293a4b5c6d7e8f9a0b1c2/20261122T093000.123Z-3f9a1c"
	for _, tc := range []struct {
		name string
		s    *queue.Status
		o    TermOptions
	}{
		{"terminal_failure", failedRun(), TermOptions{Ref: ref}},
		{"terminal_failure_color", failedRun(), TermOptions{Ref: ref, Color: true}},
		{"terminal_success", successRun(), TermOptions{}},
		{"terminal_success_color", successRun(), TermOptions{Color: true}},
		{"terminal_running", runningRun(), TermOptions{}},
		{"terminal_error", errorRun(), TermOptions{}},
		{"terminal_cancelled_cycles", cancelledRun(), TermOptions{Color: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			golden(t, tc.name, render(t, tc.s, tc.o))
		})
	}
}

func TestRunLineGolden(t *testing.T) {
	for _, color := range []bool{false, true} {
		var b bytes.Buffer
		for _, s := range []*queue.Status{failedRun(), successRun(), runningRun(), errorRun(), cancelledRun()} {
			b.WriteString(RunLine(s, color))
			b.WriteString("\n")
		}
		name := "runlines"
		if color {
			name += "_color"
		}
		golden(t, name, b.Bytes())
	}
}

var ansi = regexp.MustCompile("\x1b\\[[0-9;]*m")

// TestColorOnlyAddsEscapes: the coloured rendering is the plain one with
// SGR sequences added, and the plain one has none.
func TestColorOnlyAddsEscapes(t *testing.T) {
	t.Parallel()
	for _, s := range []*queue.Status{failedRun(), successRun(), runningRun(), errorRun(), cancelledRun()} {
		plain := render(t, s, TermOptions{Ref: "refs/ci/runs/x"})
		color := render(t, s, TermOptions{Ref: "refs/ci/runs/x", Color: true})
		if bytes.Contains(plain, []byte("\x1b")) {
			t.Errorf("%s: plain output has escape sequences:\n%q", s.State, plain)
		}
		if !bytes.Contains(color, []byte("\x1b[")) {
			t.Errorf("%s: coloured output has no colour", s.State)
		}
		if stripped := ansi.ReplaceAll(color, nil); !bytes.Equal(stripped, plain) {
			t.Errorf("%s: coloured output without escapes differs from the plain output:\n%q\n%q", s.State, stripped, plain)
		}
		if n := strings.Count(string(color), "\x1b[0m"); n != strings.Count(string(color), "\x1b[")-n {
			t.Errorf("%s: unbalanced colour resets in %q", s.State, color)
		}
		line := RunLine(s, true)
		if got := ansi.ReplaceAllString(line, ""); got != RunLine(s, false) {
			t.Errorf("%s: RunLine with colour, stripped = %q, without = %q", s.State, got, RunLine(s, false))
		}
	}
}

func TestTerminalDeterministic(t *testing.T) {
	t.Parallel()
	first := render(t, failedRun(), TermOptions{Color: true, Ref: "r"})
	for i := 0; i < 50; i++ {
		if got := render(t, failedRun(), TermOptions{Color: true, Ref: "r"}); !bytes.Equal(got, first) {
			t.Fatalf("rendering %d differs:\n%q\n%q", i, got, first)
		}
	}
}

func TestTerminalContent(t *testing.T) {
	t.Parallel()
	out := string(render(t, failedRun(), TermOptions{}))
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if !strings.HasPrefix(lines[0], "FAILURE  3f9a1c0b2d4e  3m14s") {
		t.Errorf("first line = %q", lines[0])
	}
	for _, want := range []string{
		"  reason:   job test ended failure although .refci/run exited 0 (see the log)\n", // one line
		"  started:  2026-11-22T09:30:00Z\n",                                              // UTC
		"  exit:     143 (signal TERM)\n",
		"  env:      staging (trusted: true)\n",
		"  log:      17000000 bytes written, capped (head and tail kept)\n",
		"    reports/junit.xml  5120 bytes\n",
		"    passwd  not stored: symlink (to /etc/passwd); artifacts must be regular files\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// Each job appears exactly once, children indented under their first known need.
	indent := map[string]int{}
	for _, l := range lines {
		for _, j := range failedRun().Jobs {
			if strings.Contains(l, " "+j.Name+"  ") {
				if _, dup := indent[j.Name]; dup {
					t.Errorf("job %s printed twice", j.Name)
				}
				indent[j.Name] = len(l) - len(strings.TrimLeft(l, " "))
			}
		}
	}
	for job, want := range map[string]int{"build": 4, "lint": 4, "test": 6, "package": 6, "deploy": 8, "notify": 10, "docs": 4, "bench": 4} {
		if indent[job] != want {
			t.Errorf("job %s indented %d, want %d\n%s", job, indent[job], want, out)
		}
	}
	// Cycles and self-needs still print every job once.
	out = string(render(t, cancelledRun(), TermOptions{}))
	for _, j := range cancelledRun().Jobs {
		if n := strings.Count(out, " "+j.Name+"  "); n != 1 {
			t.Errorf("job %s printed %d times:\n%s", j.Name, n, out)
		}
	}
}

// TestTerminalEscapesControlCharacters: artifact names, symlink targets
// in skip reasons and other text in a result come from the pipeline. They
// must not reach the terminal as control characters (escape sequences can
// retitle the window, hide lines or fake output) nor break the layout with
// newlines.
func TestTerminalEscapesControlCharacters(t *testing.T) {
	t.Parallel()
	s := successRun()
	s.TargetRef = "main\x1b[2J"
	s.Reason = "tests \x1b[8mhidden\x1b[0m"
	s.Jobs = []queue.Job{{Name: "build", State: queue.Failure, Reason: "bell\a and \x1b]0;title\a", DurationMS: 1}}
	s.Artifacts = []queue.Artifact{{Path: "evil\n  target:   0000000000000000000000000000000000000000 (forged)", Size: 1}}
	s.ArtifactsSkipped = []queue.SkippedArtifact{{Path: "link\r", Reason: "symlink (to \x1b]8;;http://evil\x1b\\click\x1b]8;;\x1b\\); artifacts must be regular files"}}
	out := render(t, s, TermOptions{})
	for i, line := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
		for _, r := range line {
			if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
				t.Errorf("line %d has control character %U: %q", i+1, r, line)
				break
			}
		}
	}
	if n := strings.Count("\n"+string(out), "\n  target:"); n != 1 {
		t.Errorf("an artifact name forged a line (%d target lines):\n%s", n, out)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("closed pipe") }

func TestTerminalWriteError(t *testing.T) {
	t.Parallel()
	if err := Terminal(failWriter{}, successRun(), TermOptions{}); err == nil {
		t.Errorf("Terminal to a failing writer returned nil")
	}
}

func TestDuration(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ms   int64
		want string
	}{
		{0, "0ms"},
		{1, "1ms"},
		{850, "850ms"},
		{999, "999ms"},
		{1000, "1.0s"},
		{1200, "1.2s"},
		{12345, "12.3s"},
		{59000, "59.0s"},
		{60000, "1m00s"},
		{61000, "1m01s"},
		{184000, "3m04s"},
		{194567, "3m14s"},
		{599999, "9m59s"},
		{3599999, "59m59s"},
		{3600000, "1h00m"},
		{3720000, "1h02m"},
		{3725000, "1h02m"},
		{86400000, "24h00m"},
		{90061000, "25h01m"},
	} {
		if got := Duration(tc.ms); got != tc.want {
			t.Errorf("Duration(%d) = %q, want %q", tc.ms, got, tc.want)
		}
	}
	// Just under a minute is not "60.0s".
	for _, ms := range []int64{59950, 59999} {
		if got := Duration(ms); got != "59.9s" && got != "1m00s" {
			t.Errorf("Duration(%d) = %q, want 59.9s or 1m00s", ms, got)
		}
	}
}

// TestDurationUnits: no rendering shows 60 of a unit or more.
func TestDurationUnits(t *testing.T) {
	t.Parallel()
	ms := regexp.MustCompile(`^(\d+)ms$`)
	sec := regexp.MustCompile(`^(\d+)\.\ds$`)
	min := regexp.MustCompile(`^\d+m(\d\d)s$`)
	hour := regexp.MustCompile(`^\d+h(\d\d)m$`)
	bad := 0
	var values []int64
	for s := int64(0); s < 2*3600; s++ { // every second for two hours, near where rounding matters
		for _, off := range []int64{-51, -50, -49, -1, 0, 1, 449, 450, 451, 949, 950, 951} {
			values = append(values, s*1000+off)
		}
	}
	for m := int64(0); m < 30*60; m++ { // every minute for 30 hours
		for _, off := range []int64{-1, 0, 1, 29999, 30000, 59999} {
			values = append(values, m*60000+off)
		}
	}
	for _, x := range values {
		if bad >= 5 {
			break
		}
		{
			if x < 0 {
				continue
			}
			d := Duration(x)
			var n int
			var limit int
			switch {
			case ms.MatchString(d):
				n, _ = strconv.Atoi(ms.FindStringSubmatch(d)[1])
				limit = 1000
			case sec.MatchString(d):
				n, _ = strconv.Atoi(sec.FindStringSubmatch(d)[1])
				limit = 60
			case min.MatchString(d):
				n, _ = strconv.Atoi(min.FindStringSubmatch(d)[1])
				limit = 60
			case hour.MatchString(d):
				n, _ = strconv.Atoi(hour.FindStringSubmatch(d)[1])
				limit = 60
			default:
				t.Errorf("Duration(%d) = %q has an unknown shape", x, d)
				bad++
				continue
			}
			if n >= limit {
				t.Errorf("Duration(%d) = %q", x, d)
				bad++
			}
		}
	}
}

// A job's exit code is said once: an earlier worker's reason that only
// repeats it ("exited with code 1") is not printed beside "exit 1"; any
// other reason is.
func TestTerminalJobExitSaidOnce(t *testing.T) {
	t.Parallel()
	st := &queue.Status{Format: queue.Format, State: queue.Failure, Target: strings.Repeat("a", 40), Run: "r", Request: "local", Jobs: []queue.Job{
		{Name: "unit", State: queue.Failure, ExitCode: queue.IntPtr(1), Reason: "exited with code 1"},
		{Name: "lint", State: queue.Failure, ExitCode: queue.IntPtr(2), Reason: "exited with code 3"},
	}}
	out := string(render(t, st, TermOptions{}))
	if strings.Contains(out, "exited with code 1") || !strings.Contains(out, "exit 1\n") || !strings.Contains(out, "exit 2  exited with code 3\n") {
		t.Errorf("jobs:\n%s", out)
	}
}

func TestSummary(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		st   queue.Status
		want string
	}{
		{queue.Status{State: queue.Success, DurationMS: 1500}, "refci: success in 1.5s\nrefci: result refs/ci/runs/x/y\n"},
		{queue.Status{State: queue.Failure, DurationMS: 20, Reason: "job test failed"}, "refci: failure in 20ms: job test failed\nrefci: result refs/ci/runs/x/y\n"},
		{queue.Status{State: queue.Error, Reason: "no .refci/run\x1b[2J\nrefci: forged"}, "refci: error in 0ms: no .refci/run\\x1b[2J\\x0arefci: forged\nrefci: result refs/ci/runs/x/y\n"},
	} {
		var b bytes.Buffer
		Summary(&b, &tc.st, "refs/ci/runs/x/y")
		if b.String() != tc.want {
			t.Errorf("Summary of %s, %q:\n got %q\nwant %q", tc.st.State, tc.st.Reason, b.String(), tc.want)
		}
	}
}
