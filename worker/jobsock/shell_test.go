//go:build linux

package jobsock

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/queue"
	"refci.dev/refci/worker/jobsock/jobwire"
)

// shells are the shells the library must work in: Debian's /bin/sh and
// bash.
var shells = []string{"dash", "bash"}

type shellTest struct {
	*jobTestServer
	sh    *Shell
	jobs  string // $REFCI_JOBS
	lib   string // $REFCI_SH
	echo  *fixtures.Buffer
	mu    sync.Mutex
	notes []string
}

func newShellTest(t *testing.T) *shellTest {
	t.Helper()
	return newShellTestWith(t, ShellConfig{})
}

// newShellTestWith is newShellTest with cfg's MaxOutput and Poll.
func newShellTestWith(t *testing.T, cfg ShellConfig) *shellTest {
	t.Helper()
	st := &shellTest{jobTestServer: newJobTestServer(t, 0), echo: &fixtures.Buffer{}}
	st.jobs = filepath.Join(st.dir, "jobs")
	if err := os.Mkdir(st.jobs, 0o700); err != nil {
		t.Fatal(err)
	}
	st.lib = filepath.Join(st.jobs, "refci.sh")
	if err := os.WriteFile(st.lib, []byte(jobwire.ShellLibrary), 0o444); err != nil {
		t.Fatal(err)
	}
	var err error
	st.sh, err = st.srv.ServeShell(ShellConfig{Dir: st.jobs, Echo: st.echo, MaxOutput: cfg.MaxOutput, Poll: cfg.Poll, Note: func(l string) {
		st.mu.Lock()
		st.notes = append(st.notes, l)
		st.mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.sh.Close)
	return st
}

// script runs a script in shell (which sources the library first) to
// its end and returns its exit code and output.
func (st *shellTest) script(shell, script string) (int, string) {
	st.t.Helper()
	cmd := exec.Command(shell, "-c", ". \"$REFCI_SH\"\n"+script)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "REFCI_JOBS=" + st.jobs, "REFCI_SH=" + st.lib, "REFCI_SOCKET=" + st.sock}
	cmd.Dir = st.dir
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		st.t.Fatal(err)
	}
	return code, string(out)
}

// end closes the channel and the server, as the worker does when the
// pipeline is over.
func (st *shellTest) end() {
	st.sh.Close()
	st.srv.Close()
}

func (st *shellTest) allNotes() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	return strings.Join(st.notes, "\n")
}

// A pipeline's jobs declared with refci_job: states, exit codes, needs,
// per-job logs and the prefixed echo, as refci job records them; in dash
// and bash, under set -eu.
func TestShellJobs(t *testing.T) {
	for _, shell := range shells {
		t.Run(shell, func(t *testing.T) {
			st := newShellTest(t)
			code, out := st.script(shell, `set -eu
refci_job build -- sh -c 'echo out; echo err >&2; printf partial'
refci_job fails --needs build -- sh -c 'echo failing; exit 3' || echo "fails exit $?"
refci_job after --needs=build -- sh -c 'echo "job=$REFCI_JOB"; read x || echo "stdin is empty"'
refci_job skipped --needs 'after, fails' -- touch ran || echo "skipped exit $?"
refci_job skipped2 --needs skipped -- touch ran || echo "skipped2 exit $?"
noisy() { echo from-a-function; return 4; }
refci_job func -- noisy || echo "func exit $?"
refci_job missing -- no-such-command-of-refci || echo "missing exit $?"
echo end
`)
			st.end()
			if code != 0 {
				t.Fatalf("exit %d:\n%s", code, out)
			}
			for _, want := range []string{"fails exit 3\n", "skipped exit 1\n", "refci_job: skipped skipped: needs fails, which failed\n",
				"skipped2 exit 1\n", "refci_job: skipped2 skipped: needs skipped, which was skipped\n", "func exit 4\n", "missing exit 127\n", "end\n"} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			if jobFileExists(filepath.Join(st.dir, "ran")) {
				t.Error("a skipped job's command ran")
			}
			for _, c := range []struct {
				name   string
				state  queue.State
				exit   *int
				needs  string
				log    string
				reason string
			}{
				{"build", queue.Success, queue.IntPtr(0), "", "out\nerr\npartial", ""},
				{"fails", queue.Failure, queue.IntPtr(3), "build", "failing\n", ""},
				{"after", queue.Success, queue.IntPtr(0), "build", "job=after\nstdin is empty\n", ""},
				{"skipped", queue.Skipped, nil, "after,fails", "", "needs fails, which failed"},
				{"skipped2", queue.Skipped, nil, "skipped", "", "needs skipped, which was skipped"},
				{"func", queue.Failure, queue.IntPtr(4), "", "from-a-function\n", ""},
				{"missing", queue.Failure, queue.IntPtr(127), "", "no-such-command-of-refci", ""},
			} {
				j := st.mustJob(c.name)
				checkJobState(t, j, c.state, c.exit)
				if strings.Join(j.Needs, ",") != c.needs || j.Reason != c.reason {
					t.Errorf("%s: needs %q reason %q, want %q and %q", c.name, j.Needs, j.Reason, c.needs, c.reason)
				}
				log, ok, closes := st.logs.get(c.name)
				if c.state == queue.Skipped {
					if ok || j.Log != "" || !j.Started.IsZero() {
						t.Errorf("%s: a skipped job has a log or a start: %+v", c.name, j)
					}
					continue
				}
				if !strings.Contains(log, c.log) || closes != 1 || j.LogBytes != int64(len(log)) || j.Log != queue.JobLogPath(c.name) || j.Started.IsZero() {
					t.Errorf("%s: log %q (closed %d times), want %q; %+v", c.name, log, closes, c.log, j)
				}
			}
			if n := len(st.srv.Jobs()); n != 7 {
				t.Errorf("%d jobs recorded, want 7", n)
			}
			echo := st.echo.String()
			for _, want := range []string{"[build] out\n[build] err\n[build] partial\n", "[fails] failing\n", "[func] from-a-function\n"} {
				if !strings.Contains(echo, want) {
					t.Errorf("the echo lacks %q:\n%s", want, echo)
				}
			}
			if n := st.allNotes(); n != "" {
				t.Errorf("notes: %s", n)
			}
			if left, _ := filepath.Glob(filepath.Join(st.jobs, "*.out")); len(left) != 0 {
				t.Errorf("output files left: %v", left)
			}
		})
	}
}

// Usage errors return 2, record nothing and run nothing; under set -e a
// failing job stops the script with its status, as refci job does.
func TestShellJobUsageAndSetE(t *testing.T) {
	for _, shell := range shells {
		t.Run(shell, func(t *testing.T) {
			st := newShellTest(t)
			code, out := st.script(shell, `set -u
refci_job ok -- true
for args in "" "x" "../etc -- touch ran" "a/b -- touch ran" "-x a -- touch ran" "ok -- touch ran" "y --needs -- touch ran" "y --needs , -- touch ran" "y --needs y -- touch ran" "y --needs parallel -- touch ran" "y --needs bad..name -- touch ran"; do
	refci_job $args; echo "[$args] exit $?"
done
refci_job "$(printf 'two\nlines')" -- touch ran; echo "newline exit $?"
refci_job "$(printf '%0101d' 0)" -- touch ran; echo "long exit $?"
set -e
refci_job fails -- sh -c 'exit 5'
echo not reached
`)
			st.end()
			if code != 5 || strings.Contains(out, "not reached") {
				t.Errorf("set -e: exit %d, want 5:\n%s", code, out)
			}
			for _, want := range []string{"[] exit 2", "[x] exit 2", "[../etc -- touch ran] exit 2", "[a/b -- touch ran] exit 2", `unknown option "-x"`,
				"[ok -- touch ran] exit 2", `job "ok" was already started`, "[y --needs -- touch ran] exit 2", "--needs names no job", "cannot need itself",
				"--needs parallel, which this shell has not run", "use refci job --needs", "newline exit 2", "long exit 2", "missing CMD", "is not valid"} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			if jobFileExists(filepath.Join(st.dir, "ran")) {
				t.Error("a refused job's command ran")
			}
			jobs := st.srv.Jobs()
			if len(jobs) != 2 || jobs[0].Name != "ok" || jobs[1].Name != "fails" {
				t.Errorf("jobs: %+v", jobs)
			}
			checkJobState(t, jobs[1], queue.Failure, queue.IntPtr(5))
		})
	}
}

// fifoWrite writes raw bytes to the control FIFO, as a hostile pipeline
// could.
func (st *shellTest) fifoWrite(s string) {
	st.t.Helper()
	f, err := os.OpenFile(ShellCtlPath(st.jobs), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		st.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		st.t.Fatal(err)
	}
}

// What a hostile pipeline writes on the control channel is validated
// like a socket message: refused lines are noted and the run goes on; no
// line reaches a file outside the channel's directory, ends a job of the
// socket or one that ended, or restarts one; a job left running is
// cancelled when the pipeline ends, as refci job's would be.
func TestShellHostileChannel(t *testing.T) {
	st := newShellTest(t)
	// A job run through the socket.
	if r := st.run("sock", "--", "true"); r.code != 0 {
		t.Fatalf("refci job: %+v", r)
	}
	outside := filepath.Join(st.dir, "outside")
	os.WriteFile(outside, []byte("OUTSIDE-CONTENT\n"), 0o600)
	os.Symlink(outside, filepath.Join(st.jobs, "linked.out"))
	os.Link(outside, filepath.Join(st.jobs, "hard.out"))
	os.WriteFile(filepath.Join(st.jobs, "ok.out"), []byte("ok output\n"), 0o600)
	st.fifoWrite(strings.Join([]string{
		"garbage",
		"refci/2 start future",
		"refci/1 start ../etc",
		"refci/1 start a/b",
		"refci/1 start ok",
		"refci/1 start ok",                           // a second start of the same job
		"refci/1 start sock",                         // a job of the socket
		"refci/1 end sock 0",                         // its end
		"refci/1 end never 0",                        // a job never started
		"refci/1 end ok 256",                         // not a status
		"refci/1 end ok -1",                          //
		"refci/1 end ok 01",                          //
		"refci/1 start x needs-self,x",               // a job needing itself
		"refci/1 skip y",                             // a skip without needs
		"refci/1 start linked",                       // its output file is a symbolic link
		"refci/1 start hard",                         // a hard link
		"refci/1 end linked 0",                       //
		"refci/1 end hard 0",                         //
		"refci/1 end ok 0",                           // the real end
		"refci/1 end ok 1",                           // a second end
		"refci/1 start ok",                           // a restart
		"refci/1 start left",                         // left running
		"refci/1  start z",                           // two spaces
		"refci/1 start " + strings.Repeat("n", 5000), // too long
		"refci/1 start cut",                          // cut short below
	}, "\n") + "\nrefci/1 end left")
	st.end()

	jobs := map[string]queue.Job{}
	for _, j := range st.srv.Jobs() {
		jobs[j.Name] = j
	}
	checkJobState(t, jobs["sock"], queue.Success, queue.IntPtr(0))
	checkJobState(t, jobs["ok"], queue.Success, queue.IntPtr(0))
	if log, _, _ := st.logs.get("ok"); log != "ok output\n" {
		t.Errorf("ok's log: %q", log)
	}
	for _, name := range []string{"linked", "hard"} {
		j := jobs[name]
		checkJobState(t, j, queue.Success, queue.IntPtr(0))
		if log, _, _ := st.logs.get(name); log != "" || !j.Truncated {
			t.Errorf("%s: log %q, %+v; want nothing read from outside, marked truncated", name, log, j)
		}
	}
	if j := jobs["left"]; j.State != queue.Cancelled || j.Reason != jobReasonPipelineEnded {
		t.Errorf("left: %+v", j)
	}
	if j := jobs["cut"]; j.State != queue.Cancelled {
		t.Errorf("cut: %+v", j)
	}
	if len(jobs) != 6 {
		t.Errorf("jobs: %+v", jobs)
	}
	notes := st.allNotes()
	for _, want := range []string{`refused "garbage": not a control line`, "protocol refci/2", `refused "refci/1 start ../etc": job name "../etc" is not valid`,
		`"refci/1 start a/b"`, `job "ok" was already started`, `job "sock" was already started`, `refused "refci/1 end sock 0": job sock was not started on this channel, or has ended`,
		"job never was not started", `exit status "256"`, `exit status "-1"`, `exit status "01"`, "cannot need itself", "skip: wrong number of words",
		"linked.out is a symbolic link, not a regular file", "hard.out has 2 links", `refused "refci/1 end ok 1": job ok was not started on this channel, or has ended`,
		`"refci/1  start z"`, "longer than 4000 bytes", "a control line cut short at the end was dropped"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	if strings.Contains(notes, "OUTSIDE") || strings.Contains(st.echo.String(), "OUTSIDE") {
		t.Error("the content of a file outside was read")
	}
}

// Refused lines are reported at most shellMaxNotes times.
func TestShellNotesAreBounded(t *testing.T) {
	st := newShellTest(t)
	st.fifoWrite(strings.Repeat("junk\n", 200))
	st.end()
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.notes) != shellMaxNotes || !strings.Contains(st.notes[len(st.notes)-1], "further refused lines are not reported") {
		t.Errorf("%d notes: %q", len(st.notes), st.notes)
	}
}

// The output of a job that runs is read as it comes, into its log and
// the echo (what snapshots, and so refci log -f, show), not only at its
// end.
func TestShellJobOutputIsLive(t *testing.T) {
	for _, shell := range shells {
		t.Run(shell, func(t *testing.T) {
			st := newShellTest(t)
			release := filepath.Join(st.dir, "release")
			done := make(chan string, 1)
			go func() {
				_, out := st.script(shell, `refci_job long -- sh -c 'echo first-line; printf progress; while [ ! -e "$1" ]; do sleep 0.01; done; echo " done"; echo last-line' sh `+release)
				done <- out
			}()
			fixtures.WaitFor(t, jobTestTimeout, "the first line, and the partial one, in the log and the echo while the job runs", func() bool {
				log, _, _ := st.logs.get("long")
				return log == "first-line\nprogress" && strings.Contains(st.echo.String(), "[long] first-line\n[long] progress")
			})
			if j := st.mustJob("long"); j.State != queue.Running || j.LogBytes != int64(len("first-line\nprogress")) {
				t.Errorf("while it runs: %+v", j)
			}
			os.WriteFile(release, nil, 0o600)
			select {
			case out := <-done:
				if out != "" {
					t.Errorf("output: %q", out)
				}
			case <-time.After(jobTestTimeout):
				t.Fatal("the script did not end")
			}
			st.end()
			checkJobState(t, st.mustJob("long"), queue.Success, queue.IntPtr(0))
			if log, _, _ := st.logs.get("long"); log != "first-line\nprogress done\nlast-line\n" {
				t.Errorf("log: %q", log)
			}
			if echo := st.echo.String(); echo != "[long] first-line\n[long] progress done\n[long] last-line\n" {
				t.Errorf("echo: %q", echo)
			}
		})
	}
}

// In-shell jobs and refci job share one record: names are unique across
// both, and a job of either kind can be needed by a refci job.
func TestShellJobsBesideSocketJobs(t *testing.T) {
	st := newShellTest(t)
	code, out := st.script("dash", `refci_job first -- true
refci_job second -- false || :
`)
	if code != 0 {
		t.Fatalf("%d %s", code, out)
	}
	if r := st.run("first", "--", "true"); r.code != 2 || !strings.Contains(r.stderr, "already started") {
		t.Errorf("a socket job of an in-shell job's name: %+v", r)
	}
	if r := st.run("third", "--needs", "first", "--", "true"); r.code != 0 {
		t.Errorf("a socket job needing an in-shell one: %+v", r)
	}
	if r := st.run("fourth", "--needs", "second", "--", "true"); r.code != 1 || !strings.Contains(r.stderr, "needs second, which failed") {
		t.Errorf("a socket job needing a failed in-shell one: %+v", r)
	}
	st.end()
	checkJobState(t, st.mustJob("fourth"), queue.Skipped, nil)
}

// An output file cut shorter than what was read of it (made anew) is
// read again from its start.
func TestShellJobOutputMadeAnew(t *testing.T) {
	st := newShellTest(t)
	out := filepath.Join(st.jobs, "again.out")
	st.fifoWrite("refci/1 start again\n")
	os.WriteFile(out, []byte("0123456789\n"), 0o600)
	fixtures.WaitFor(t, jobTestTimeout, "the first output", func() bool { log, _, _ := st.logs.get("again"); return log == "0123456789\n" })
	os.WriteFile(out, []byte("new\n"), 0o600)
	st.fifoWrite("refci/1 end again 0\n")
	st.end()
	if log, _, _ := st.logs.get("again"); log != "0123456789\nnew\n" {
		t.Errorf("log: %q", log)
	}
}

// A FIFO kept from an earlier run (a reused run directory) is served
// again, emptied of what it held; anything else at its path is replaced.
func TestShellKeptFIFO(t *testing.T) {
	st := newShellTest(t)
	st.end()
	ctl := ShellCtlPath(st.jobs)
	before, err := os.Lstat(ctl)
	if err != nil {
		t.Fatal(err)
	}
	// Something still holds it and wrote to it.
	f, err := os.OpenFile(ctl, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteString("refci/1 start stale\n")

	srv2, err := NewServer(Config{SocketPath: st.sock + "2", Run: testRun{st.logs}})
	if err != nil {
		t.Fatal(err)
	}
	var notes []string
	sh2, err := srv2.ServeShell(ShellConfig{Dir: st.jobs, Note: func(l string) { notes = append(notes, l) }})
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("refci/1 start fresh\n")
	sh2.Close()
	srv2.Close()
	if after, err := os.Lstat(ctl); err != nil || !os.SameFile(before, after) {
		t.Errorf("the FIFO was not kept: %v", err)
	}
	if jobs := srv2.Jobs(); len(jobs) != 1 || jobs[0].Name != "fresh" || len(notes) != 0 {
		t.Errorf("jobs %+v, notes %q", jobs, notes)
	}

	// A regular file in its place, or a FIFO open to others, is replaced.
	for _, mode := range []os.FileMode{0o600, os.ModeNamedPipe | 0o666} {
		os.Remove(ctl)
		if mode&os.ModeNamedPipe != 0 {
			if err := syscall.Mkfifo(ctl, 0o666); err != nil {
				t.Fatal(err)
			}
			os.Chmod(ctl, 0o666)
		} else {
			os.WriteFile(ctl, []byte("refci/1 start planted\n"), mode)
		}
		srv3, err := NewServer(Config{SocketPath: st.sock + "3", Run: testRun{&memJobLogs{logs: map[string]*memJobLog{}}}})
		if err != nil {
			t.Fatal(err)
		}
		sh3, err := srv3.ServeShell(ShellConfig{Dir: st.jobs})
		if err != nil {
			t.Fatal(err)
		}
		sh3.Close()
		srv3.Close()
		fi, err := os.Lstat(ctl)
		if err != nil || fi.Mode() != os.ModeNamedPipe|0o600 || len(srv3.Jobs()) != 0 {
			t.Errorf("%v at the FIFO's path: now %v %v, jobs %+v", mode, fi.Mode(), err, srv3.Jobs())
		}
	}
}

// secretRun is a testRun that handed out the value "tok-secret-1".
type secretRun struct{ testRun }

func (secretRun) HoldsSecret(s string) bool { return strings.Contains(s, "tok-secret-1") }

// A job whose name or need holds a secret value is refused, as on the
// socket, and the note does not repeat the line.
func TestShellJobNameHoldsSecret(t *testing.T) {
	dir := t.TempDir()
	logs := &memJobLogs{logs: map[string]*memJobLog{}}
	sockDir, err := os.MkdirTemp("", "rj")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	srv, err := NewServer(Config{SocketPath: filepath.Join(sockDir, "s"), Run: secretRun{testRun{logs}}})
	if err != nil {
		t.Fatal(err)
	}
	var notes []string
	sh, err := srv.ServeShell(ShellConfig{Dir: dir, Note: func(l string) { notes = append(notes, l) }})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(ShellCtlPath(dir), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("refci/1 start x-tok-secret-1\nrefci/1 skip y tok-secret-1\nrefci/1 start fine\n")
	f.Close()
	sh.Close()
	srv.Close()
	if jobs := srv.Jobs(); len(jobs) != 1 || jobs[0].Name != "fine" {
		t.Errorf("jobs: %+v", jobs)
	}
	all := strings.Join(notes, "\n")
	if len(notes) != 2 || strings.Contains(all, "tok-secret-1") || !strings.Contains(all, "refused a start: the job name or a need holds a secret value") {
		t.Errorf("notes: %q", notes)
	}
}

// In-shell jobs may run in parallel, in background subshells: each has
// its own output file, and their control lines do not mix.
func TestShellJobsInParallel(t *testing.T) {
	for _, shell := range shells {
		t.Run(shell, func(t *testing.T) {
			st := newShellTest(t)
			code, out := st.script(shell, `set -eu
i=0
while [ $i -lt 20 ]; do
	refci_job "p$i" -- sh -c 'for k in 1 2 3; do echo "$REFCI_JOB line $k"; done' &
	i=$((i+1))
done
wait
`)
			st.end()
			if code != 0 {
				t.Fatalf("exit %d: %s", code, out)
			}
			jobs := st.srv.Jobs()
			if len(jobs) != 20 {
				t.Fatalf("%d jobs: %+v", len(jobs), jobs)
			}
			for _, j := range jobs {
				checkJobState(t, j, queue.Success, queue.IntPtr(0))
				want := fmt.Sprintf("%s line 1\n%s line 2\n%s line 3\n", j.Name, j.Name, j.Name)
				if log, _, _ := st.logs.get(j.Name); log != want {
					t.Errorf("%s: log %q", j.Name, log)
				}
				if !strings.Contains(st.echo.String(), "["+j.Name+"] "+j.Name+" line 3\n") {
					t.Errorf("%s: not in the echo", j.Name)
				}
			}
			if n := st.allNotes(); n != "" {
				t.Errorf("notes: %s", n)
			}
		})
	}
}

// A flood of lines on the channel does not keep a running job's output
// from being read live.
func TestShellFloodDoesNotStarveOutput(t *testing.T) {
	st := newShellTest(t)
	st.fifoWrite("refci/1 start slow\n")
	os.WriteFile(filepath.Join(st.jobs, "slow.out"), []byte("visible\n"), 0o600)
	f, err := os.OpenFile(ShellCtlPath(st.jobs), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stop := make(chan struct{})
	flooded := make(chan struct{})
	go func() {
		defer close(flooded)
		junk := []byte(strings.Repeat("junk\n", 800))
		for {
			select {
			case <-stop:
				return
			default:
				f.Write(junk)
			}
		}
	}()
	fixtures.WaitFor(t, jobTestTimeout, "the output read during the flood", func() bool { log, _, _ := st.logs.get("slow"); return log == "visible\n" })
	close(stop)
	<-flooded
	st.end()
}

// Under set -x the library's own commands are not traced, only the job's
// command, and tracing stays on after it.
func TestShellJobUnderXtrace(t *testing.T) {
	for _, shell := range shells {
		t.Run(shell, func(t *testing.T) {
			st := newShellTest(t)
			code, out := st.script(shell, `set -eux
refci_job traced -- sh -c 'exit 0'
refci_job fails -- sh -c 'exit 3' || :
echo after-the-jobs
`)
			st.end()
			if code != 0 {
				t.Fatalf("exit %d:\n%s", code, out)
			}
			for _, want := range []string{"refci_job traced", "REFCI_JOB=traced", "exit 0", "+ echo after-the-jobs"} {
				if !strings.Contains(out, want) {
					t.Errorf("the trace lacks %q:\n%s", want, out)
				}
			}
			for _, not := range []string{"_refci_done", "local ", "printf", "set +x"} {
				if strings.Contains(out, not) {
					t.Errorf("the trace shows the library's %q:\n%s", not, out)
				}
			}
			if n := strings.Count(out, "\n"); n > 16 {
				t.Errorf("%d lines of trace for two jobs:\n%s", n, out)
			}
			checkJobState(t, st.mustJob("fails"), queue.Failure, queue.IntPtr(3))
		})
	}
}

// A pipeline that removes the channel, or puts a directory in its place,
// loses its in-shell jobs' records, not its run: refci_job still runs
// the command and returns its status, or says it cannot reach refci.
func TestShellChannelRemoved(t *testing.T) {
	for _, shell := range shells {
		t.Run(shell, func(t *testing.T) {
			st := newShellTest(t)
			code, out := st.script(shell, `set -u
refci_job before -- true
rm "$REFCI_JOBS/ctl"
refci_job gone -- sh -c 'exit 4'; echo "gone exit $?"
rm "$REFCI_JOBS/ctl"; mkdir "$REFCI_JOBS/ctl"
refci_job blocked -- touch ran; echo "blocked exit $?"
`)
			st.end()
			if code != 0 || !strings.Contains(out, "gone exit 4\n") || !strings.Contains(out, "blocked exit 2\n") || !strings.Contains(out, "cannot reach refci") {
				t.Errorf("exit %d:\n%s", code, out)
			}
			if jobFileExists(filepath.Join(st.dir, "ran")) {
				t.Error("a job whose start could not be told ran")
			}
			if jobs := st.srv.Jobs(); len(jobs) != 1 || jobs[0].Name != "before" {
				t.Errorf("jobs: %+v", jobs)
			}
		})
	}
}

// A job that makes its output file huge at no cost (truncate -s) cannot
// keep the worker reading it: what comes before its last MaxOutput bytes
// is skipped, counted in the job's log bytes, the log marked cut and a
// note says so; the tail, the job's last words, is kept; the channel
// closes at once.
func TestShellHugeOutputIsCut(t *testing.T) {
	const maxOut = 1 << 20
	st := newShellTestWith(t, ShellConfig{MaxOutput: maxOut})
	code, out := st.script("dash", `refci_job big -- sh -c 'truncate -s 64G /proc/self/fd/1 && printf "the end\n" >> /proc/self/fd/1'`)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	done := make(chan struct{})
	go func() { st.end(); close(done) }()
	select {
	case <-done:
	case <-time.After(jobTestTimeout):
		t.Fatal("the channel did not close: it reads the whole 64 GiB")
	}
	log, _, _ := st.logs.get("big")
	if len(log) != maxOut || !strings.HasSuffix(log, "the end\n") {
		t.Errorf("kept %d bytes ending %q, want the last %d, ending in the job's last line", len(log), log[max(0, len(log)-20):], maxOut)
	}
	if n := st.allNotes(); !strings.Contains(n, "job big: more than 1048576 bytes of its output waited to be read; what came before its last 1048576 bytes is skipped") {
		t.Errorf("notes: %q", n)
	}
	jobs := st.srv.Jobs()
	if len(jobs) != 1 || !jobs[0].Truncated || jobs[0].State != queue.Success || jobs[0].LogBytes != 64<<30+int64(len("the end\n")) {
		t.Errorf("jobs: %+v", jobs)
	}
}
