package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"refci.dev/refci/queue"
)

// Attacks on what a result means (issue 15, items 3, 6 and 12): results
// copied under another ref, dated in the future, or holding hostile
// values, signed by a trusted key; logs that talk to the terminal; claims
// that name what their request is not.

// treeWithStatus writes the tree of the result commit from with its
// status.json replaced by statusJSON, and returns its id.
func (s *sandbox) treeWithStatus(from, statusJSON string) string {
	s.t.Helper()
	blob := s.gitStdin(statusJSON, "hash-object", "-w", "--stdin")
	var tree strings.Builder
	for _, line := range strings.Split(s.git("", "ls-tree", from), "\n") {
		if strings.HasSuffix(line, "\tstatus.json") {
			line = "100644 blob " + blob + "\tstatus.json"
		}
		tree.WriteString(line + "\n")
	}
	return s.gitStdin(tree.String(), "mktree")
}

// signedResult stores st as a result commit under its run ref, with the
// files of the result commit from (status.json replaced) and the message
// a worker writes, signed by the sandbox's own key (st.Worker) as a
// worker would sign it. It returns the ref.
func (s *sandbox) signedResult(st *queue.Status, from string) string {
	s.t.Helper()
	s.gpgImport(string(must(os.ReadFile(filepath.Join(s.home, "key.asc")))))
	b, err := queue.EncodeStatus(st)
	if err != nil {
		s.t.Fatal(err)
	}
	treeID := s.treeWithStatus(from, string(b))
	commit := s.gitStdin(queue.CommitMessage(st), "commit-tree", "-S"+st.Worker, "-F", "-", treeID)
	ref := queue.RunRef(st.Target, st.Run)
	s.git("", "update-ref", ref, commit)
	return ref
}

// A genuine signed result copied under another commit's runs, or under
// another run id, is not believed by any reader; the genuine ones still
// are.
func TestCopiedResultIsNotBelieved(t *testing.T) {
	s := newSandbox(t)
	a := s.pipeline("echo output of A\n")
	s.refci("run", "-q").want(t, 0)
	aRef := s.runRefs()[0]
	aCommit := s.git("", "rev-parse", aRef)
	b := s.pipeline("echo output of B; exit 1\n")
	s.refci("run", "-q").want(t, 1)
	bRef := s.git("", "for-each-ref", "--format=%(refname)", "refs/ci/runs/"+b+"/")
	_, bRun, _ := queue.ParseRunRef(bRef)

	// A's success, as the newest run of B; and under another run id of A.
	newer := queue.NewRunID(time.Now())
	underB := queue.RunRef(b, newer)
	underA := queue.RunRef(a, queue.NewRunID(time.Now()))
	s.git("", "update-ref", underB, aCommit)
	s.git("", "update-ref", underA, aCommit)

	for ref, want := range map[string]string{underB: "copied from another commit", underA: "copied from another run"} {
		r := s.refci("verify", ref)
		if r.code != 1 || !strings.Contains(r.stderr, "inconsistent") || !strings.Contains(r.stderr, want) {
			t.Errorf("verify %s: %d, want 1 saying %q\n%s%s", ref, r.code, want, r.stdout, r.stderr)
		}
		if r := s.refci("status", ref); r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "not believed: inconsistent") {
			t.Errorf("status %s: %d\n%s%s", ref, r.code, r.stdout, r.stderr)
		}
		if r := s.refci("status", "--json", ref); r.code != 1 || r.stdout != "" {
			t.Errorf("status --json %s: %d %s", ref, r.code, r.stdout)
		}
		if r := s.refci("log", ref); r.code != 1 || r.stdout != "" {
			t.Errorf("log %s: %d %s", ref, r.code, r.stdout)
		}
	}
	// B's latest is its own failure, not the copied success.
	r := s.refci("status")
	if r.code != 1 || !strings.Contains(r.stdout, "FAILURE") || !strings.Contains(r.stdout, bRun) || strings.Contains(r.stdout, "SUCCESS") ||
		!strings.Contains(r.stderr, "passed over run "+newer+": inconsistent") {
		t.Errorf("status of B: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := s.refci("log"); !strings.Contains(r.stdout, "output of B") || strings.Contains(r.stdout, "output of A") {
		t.Errorf("log of B: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, line := range strings.Split(s.refci("runs", "--all").want(t, 0).stdout, "\n") {
		if (strings.HasPrefix(line, newer) || strings.Contains(line, underA[len(underA)-20:])) && (!strings.Contains(line, "inconsistent") || strings.Contains(line, "success")) {
			t.Errorf("runs shows a copied result as %q", line)
		}
	}
	// The genuine results verify; verify of B takes its own run.
	if v := s.refci("verify").want(t, 0).stdout; !strings.Contains(v, bRun) {
		t.Errorf("verify of B: %s", v)
	}
	s.refci("verify", aRef).want(t, 0)
	if r := s.refci("status", a).want(t, 0); !strings.Contains(r.stdout, "SUCCESS") || !strings.Contains(r.stderr, "passed over") {
		t.Errorf("status of A: %s%s", r.stdout, r.stderr)
	}
}

// A signed, consistent snapshot of another run spliced under a run's
// newest commit is caught by verify, which checks every commit.
func TestVerifyChecksEveryCommitOfTheChain(t *testing.T) {
	s := newSandbox(t)
	s.pipeline("echo hi\n")
	s.refci("run", "-q").want(t, 0)
	ref := s.runRefs()[0]
	st := s.status("HEAD")
	orig := s.git("", "rev-parse", ref)
	// Another request's snapshot of the same run, signed, as the parent
	// of the genuine newest commit, re-signed.
	other := *st
	other.Request, other.State = "someone-else", queue.Running
	parent := s.git("", "rev-parse", s.signedResult(&other, ref))
	head := s.gitStdin(queue.CommitMessage(st), "commit-tree", "-S"+st.Worker, "-p", parent, "-F", "-", orig+"^{tree}")
	s.git("", "update-ref", ref, head)
	r := s.refci("verify", ref)
	if r.code != 1 || !strings.Contains(r.stderr, "inconsistent") || !strings.Contains(r.stderr, "someone-else") {
		t.Errorf("verify of a chain with another request's snapshot: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// A run id dated 2099, signed and consistent, is never the latest.
func TestFutureRunIsNeverTheLatest(t *testing.T) {
	s := newSandbox(t)
	s.pipeline("echo the real run; exit 1\n")
	s.refci("run", "-q").want(t, 1)
	real := s.runRefs()[0]
	st := s.status("HEAD")
	fut := *st
	fut.Run, fut.State, fut.ExitCode, fut.Reason = "20990101T000000.000Z-abcdef", queue.Success, queue.IntPtr(0), ""
	futRef := s.signedResult(&fut, real)

	r := s.refci("status")
	if r.code != 1 || !strings.Contains(r.stdout, st.Run) || strings.Contains(r.stdout, "2099") ||
		!strings.Contains(r.stderr, "passed over run "+fut.Run+": it is dated in the future") {
		t.Errorf("status: %d\n%s%q", r.code, r.stdout, r.stderr)
	}
	if r := s.refci("log"); !strings.Contains(r.stdout, "the real run") {
		t.Errorf("log: %s", r.stdout)
	}
	lines := strings.Split(strings.TrimSpace(s.refci("runs").want(t, 0).stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], st.Run) || !strings.HasPrefix(lines[1], fut.Run) || !strings.Contains(lines[1], "dated in the future") {
		t.Errorf("runs:\n%s", strings.Join(lines, "\n"))
	}
	if v := s.refci("verify").want(t, 0).stdout; !strings.Contains(v, st.Run) {
		t.Errorf("verify takes the future run: %s", v)
	}
	// Named, it is shown, and said to be dated in the future.
	if r := s.refci("verify", futRef).want(t, 0); !strings.Contains(r.stderr, "dated in the future") {
		t.Errorf("verify %s: %s", futRef, r.stderr)
	}
	if r := s.refci("status", fut.Run).want(t, 0); !strings.Contains(r.stdout, "SUCCESS") || !strings.Contains(r.stderr, "dated in the future") {
		t.Errorf("status %s: %s%s", fut.Run, r.stdout, r.stderr)
	}
}

// Hostile values in a signed, consistent result: those that would become
// paths make the result invalid for every reader; free text is shown
// escaped.
func TestHostileResultValues(t *testing.T) {
	s := newSandbox(t)
	s.pipeline("echo hi\n")
	s.refci("run", "-q").want(t, 0)
	real := s.runRefs()[0]
	st := s.status("HEAD")
	esc := "\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\x1b]0;pwned\x07\u202e"
	victim := filepath.Join(s.root, "victim")
	os.WriteFile(victim, []byte("secret\n"), 0o644)
	rel, _ := filepath.Rel(s.repo, victim)
	for name, mutate := range map[string]func(*queue.Status){
		"job name": func(h *queue.Status) {
			h.Jobs = []queue.Job{{Name: "../../" + rel, State: queue.Success, Log: queue.JobLogPath("../../" + rel)}}
		},
		"job log": func(h *queue.Status) {
			h.Jobs = []queue.Job{{Name: "build", State: queue.Success, Log: "../../../" + rel}}
		},
		"artifact path": func(h *queue.Status) {
			h.Artifacts = []queue.Artifact{{Path: "../../" + rel, Size: 7, SHA256: strings.Repeat("a", 64)}}
		},
		"escape in job": func(h *queue.Status) { h.Jobs = []queue.Job{{Name: "x" + esc, State: queue.Success}} },
	} {
		h := *st
		h.Run = queue.NewRunID(time.Now())
		mutate(&h)
		ref := s.signedResult(&h, real)
		for _, args := range [][]string{{"status", ref}, {"log", ref}, {"log", "--job", "build", ref}, {"verify", ref}} {
			r := s.refci(args...)
			if r.code != 1 || !strings.Contains(r.stderr, "invalid") || strings.Contains(r.stdout+r.stderr, "secret") || strings.ContainsAny(r.stdout+r.stderr, "\x1b\x07\u202e") {
				t.Errorf("%s: refci %v: %d\n%q\n%q", name, args, r.code, r.stdout, r.stderr)
			}
		}
		r := s.refci("status")
		if r.code != 0 || !strings.Contains(r.stdout, st.Run) || !strings.Contains(r.stderr, "passed over run "+h.Run+": invalid") || strings.ContainsAny(r.stderr, "\x1b\x07\u202e") {
			t.Errorf("%s: status takes the hostile run for the latest: %d\n%q\n%q", name, r.code, r.stdout, r.stderr)
		}
		if out := s.refci("runs").stdout; !strings.Contains(out, h.Run+"  "+h.Target[:12]+"  invalid: ") || strings.ContainsAny(out, "\x1b\x07\u202e") {
			t.Errorf("%s: runs: %q", name, out)
		}
		s.git("", "update-ref", "-d", ref)
	}
	// Free text is not a path: shown, escaped.
	h := *st
	h.Run = queue.NewRunID(time.Now())
	h.State, h.Reason, h.TargetRef = queue.Failure, "bad "+esc, "main"+esc
	h.Jobs = []queue.Job{{Name: "build", State: queue.Failure, Reason: "job " + esc}}
	h.ArtifactsSkipped = []queue.SkippedArtifact{{Path: "a" + esc, Reason: "unsafe path"}}
	s.signedResult(&h, real)
	r := s.refci("status")
	if r.code != 1 || !strings.Contains(r.stdout, h.Run) || strings.ContainsAny(r.stdout+r.stderr, "\x1b\x07\u202e") || !strings.Contains(r.stdout, `\x1b]52`) {
		t.Errorf("status of a result with escapes in its text: %d\n%q\n%q", r.code, r.stdout, r.stderr)
	}
	s.refci("verify").want(t, 0)
}

// openPTY returns a pseudo-terminal's two ends, the terminal end raw on
// output (no \n to \r\n) so what a program writes arrives as written.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tt, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	tio, err := unix.IoctlGetTermios(int(tt.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	tio.Oflag &^= unix.OPOST
	tio.Lflag &^= unix.ECHO
	if err := unix.IoctlSetTermios(int(tt.Fd()), unix.TCSETS, tio); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); tt.Close() })
	return m, tt
}

// refciOnTTY runs refci with its stdout on a terminal and returns what
// the terminal received.
func (s *sandbox) refciOnTTY(env []string, args ...string) (int, string, string) {
	s.t.Helper()
	m, tty := openPTY(s.t)
	cmd := exec.Command(refciBin, args...)
	cmd.Dir, cmd.Env = s.repo, env
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = tty, &errb
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	tty.Close() // the child holds the terminal; its end gives EIO on read
	got := make(chan []byte)
	go func() { b, _ := io.ReadAll(m); got <- b }()
	err := cmd.Wait()
	out := <-got
	var ee *exec.ExitError
	code := 0
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatal(err)
	}
	return code, string(out), errb.String()
}

const hostileLog = `printf '\033[31mred\033[0m|\033]52;c;cm0gLXJmIH4=\007|\033]0;title\007|\033[2J\033[1;1H|\033]8;;https://evil.example/\033\\link\033]8;;\033\\|\033P+q544e\033\\|\302\233|\a|end\n'`

// checkTTYLog checks what a terminal got for hostileLog.
func checkTTYLog(t *testing.T, what, out string, color bool) {
	t.Helper()
	for _, bad := range []string{"52;", "]0;", "[2J", "[1;1H", "]8;", "\x1bP", "\u009b", "\a"} {
		if strings.Contains(out, bad) {
			t.Errorf("%s: the terminal got %q: %q", what, bad, out)
		}
	}
	if !strings.Contains(out, "link|") || !strings.Contains(out, "|end\n") {
		t.Errorf("%s: the text is lost: %q", what, out)
	}
	if color != strings.Contains(out, "\x1b[31mred\x1b[0m|") || !strings.Contains(out, "red") {
		t.Errorf("%s (colour %v): %q", what, color, out)
	}
	if !color && strings.Contains(out, "\x1b") {
		t.Errorf("%s: an escape without colour: %q", what, out)
	}
}

// refci log keeps a log's colours on a terminal and drops every other
// control sequence; elsewhere it writes the log byte for byte.
func TestLogToATerminal(t *testing.T) {
	s := newSandbox(t)
	s.pipeline(hostileLog + "\n")
	s.refci("run", "-q").want(t, 0)
	stored := s.git("", "show", s.runRefs()[0]+":log.txt")
	env := append(append([]string{}, s.env...), "TERM=xterm-256color")
	code, out, errOut := s.refciOnTTY(env, "log")
	if code != 0 {
		t.Fatalf("log on a terminal: %d %s", code, errOut)
	}
	checkTTYLog(t, "log", out, true)
	_, out, _ = s.refciOnTTY(append(env, "NO_COLOR=1"), "log")
	checkTTYLog(t, "log with NO_COLOR", out, false)
	_, out, _ = s.refciOnTTY(append(env[:len(env)-1:len(env)-1], "TERM=dumb"), "log")
	checkTTYLog(t, "log with TERM=dumb", out, false)
	if got := s.refci("log").want(t, 0).stdout; strings.TrimSuffix(got, "\n") != stored || !strings.Contains(got, "\x1b]52;c;") {
		t.Errorf("log into a pipe is not the stored log: %q", got)
	}
}

// refci trigger --wait and log -f follow a run on a remote: to a
// terminal, the log arrives without control sequences.
func TestFollowToATerminal(t *testing.T) {
	f := newFleet(t, hostileLog+"\n")
	f.startWorker("w")
	env := append(append([]string{}, f.env...), "TERM=xterm")
	code, out, errOut := f.refciOnTTY(env, "trigger", "--wait", "--name", "hostile")
	if code != 0 {
		t.Fatalf("trigger --wait: %d\n%q\n%s", code, out, errOut)
	}
	checkTTYLog(t, "trigger --wait", out, true)
	if !strings.Contains(out, "refci: success") {
		t.Errorf("trigger --wait: %q", out)
	}
	code, out, errOut = f.refciOnTTY(append(env, "NO_COLOR=1"), "log", "-f", "HEAD")
	if code != 0 {
		t.Fatalf("log -f: %d\n%q\n%s", code, out, errOut)
	}
	checkTTYLog(t, "log -f", out, false)
}

// A claim is believed only when it is about its request and holds a
// worker's values: a hostile run id never reaches a fetch or a status, a claim
// copied from another request is not taken for this one's, and a claim
// naming another request's final result does not end this request.
func TestWorkerRefusesHostileClaims(t *testing.T) {
	f := newFleet(t, "echo ran\n")
	head := f.git("", "rev-parse", "HEAD")
	past := time.Now().Add(-time.Hour).UTC()
	putClaim := func(name string, c queue.Claim) {
		t.Helper()
		c.Format, c.RequestObject, c.Claimed, c.Renewed, c.LeaseExpires = queue.Format, head, past, past, past
		if c.Target == "" {
			c.Target = head
		}
		c.Worker = strings.Repeat("A", 40)
		b, err := queue.EncodeClaim(&c)
		if err != nil {
			t.Fatal(err)
		}
		blob := f.gitStdin(string(b), "hash-object", "-w", "--stdin")
		tree := f.gitStdin("100644 blob "+blob+"\tclaim.json\n", "mktree")
		commit := f.git("", "commit-tree", "-m", "claim", tree)
		f.git("", "push", "-q", "origin", "HEAD:refs/ci/requests/"+name, commit+":refs/ci/claims/"+name)
	}
	// Its run would become a ref the worker fetches, and the new run's
	// extra.previous_run.
	putClaim("r1", queue.Claim{Request: "r1", Run: "../../../heads/main", Attempt: 1, PreviousRun: "../x"})
	putClaim("r2", queue.Claim{Request: "another", Run: queue.NewRunID(past), Attempt: 1, PreviousRun: queue.NewRunID(past.Add(-time.Hour))})
	f.startWorker("w")
	r1 := f.waitResult("r1")
	r2 := f.waitResult("r2")
	for _, st := range []*queue.Status{r1, r2} {
		if st.Attempt != 1 || st.PreviousRun() != "" || st.State != queue.Success {
			t.Errorf("%s: attempt %d after %q, %s; want a first attempt", st.Request, st.Attempt, st.PreviousRun(), st.State)
		}
		if err := st.Validate(); err != nil {
			t.Errorf("%s: the worker signed an invalid status: %v", st.Request, err)
		}
	}
	// r3's expired claim names r1's final result as its run.
	putClaim("r3", queue.Claim{Request: "r3", Run: r1.Run, Attempt: 1})
	if r3 := f.waitResult("r3"); r3.State != queue.Success {
		t.Errorf("r3: %+v", r3)
	}
}

// A pipeline that names its artifacts so that readers would refuse them
// (or be fooled by them) gets them left out, with the reason; the result
// refci writes is one every reader believes.
func TestArtifactPathsReadersWouldRefuse(t *testing.T) {
	s := newSandbox(t)
	s.pipeline(`set -e
cd "$REFCI_ARTIFACTS"
echo ok > good.txt
printf x > "$(printf 'nl\nname')"
printf x > "$(printf 'bidi\342\200\256txt.exe')"
printf x > "$(printf 'esc\033[2Jname')"
printf x > 'back\slash'
mkdir git~1 && printf x > git~1/config
d="$(printf '.git\342\200\214')" && mkdir "$d" && printf x > "$d/config"
`)
	s.refci("run", "-q").want(t, 0)
	st := s.status("HEAD") // read as every reader reads it: believed
	if len(st.Artifacts) != 1 || st.Artifacts[0].Path != "good.txt" {
		t.Errorf("stored %+v", st.Artifacts)
	}
	if len(st.ArtifactsSkipped) != 6 {
		t.Errorf("skipped %+v", st.ArtifactsSkipped)
	}
	for _, a := range st.ArtifactsSkipped {
		if !strings.HasPrefix(a.Reason, "unsafe path: ") {
			t.Errorf("skipped %q: %q", a.Path, a.Reason)
		}
	}
	if out := s.git("", "ls-tree", "-r", "--name-only", s.runRefs()[0]); strings.Contains(out, "config") || !strings.Contains(out, "artifacts/good.txt") {
		t.Errorf("tree: %s", out)
	}
	if r := s.refci("status").want(t, 0); strings.ContainsAny(r.stdout, "\x1b\u202e\u200c") {
		t.Errorf("status shows a name unescaped: %q", r.stdout)
	}
	s.refci("verify").want(t, 0)
}
