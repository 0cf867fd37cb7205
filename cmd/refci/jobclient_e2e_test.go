package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/queue"
)

// With refci-job beside refci (as make build installs them), a
// pipeline's refci is the light job client: jobs, their logs, exit codes
// and needs are recorded as with refci itself, and every other command
// (and help) is the full refci's.
func TestRunLightJobClient(t *testing.T) {
	s := newSandbox(t)
	light := filepath.Join(filepath.Dir(refciBin), "refci-job")
	s.pipeline(fmt.Sprintf(`
cmp -s "$(command -v refci)" %s && echo refci-is-light
refci version >/dev/null && echo version-through-light
refci job --help | head -n 1
refci job ok -- sh -c 'echo out; echo err >&2'
refci job missing -- no-such-command-of-refci; echo "missing exit $?"
refci job killed -- sh -c 'kill -KILL $$'; echo "killed exit $?"
refci job after --needs ok -- true
refci job skipped --needs missing -- true; echo "skipped exit $?"
refci job 'bad/name' -- true; echo "bad name exit $?"
exit 0
`, light))
	r := s.refci("run").want(t, 1)
	for _, want := range []string{"refci-is-light\n", "version-through-light\n", "Usage: refci job NAME", "[ok] out\n", "[ok] err\n",
		"[missing] refci job: no-such-command-of-refci: command not found\n", "missing exit 127\n", "killed exit 137\n", "skipped exit 1\n", "bad name exit 2\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("the run's output lacks %q:\n%s", want, r.stdout)
		}
	}
	st := s.status("HEAD")
	jobs := map[string]queue.Job{}
	for _, j := range st.Jobs {
		jobs[j.Name] = j
	}
	for _, c := range []struct {
		name   string
		state  queue.State
		code   int // -1: none
		reason string
	}{
		{"ok", queue.Success, 0, ""},
		{"missing", queue.Failure, 127, "command not found: no-such-command-of-refci"},
		{"killed", queue.Failure, 137, "killed by signal SIGKILL"},
		{"after", queue.Success, 0, ""},
		{"skipped", queue.Skipped, -1, "needs missing, which failed"},
	} {
		j, ok := jobs[c.name]
		switch {
		case !ok:
			t.Errorf("job %s not recorded: %+v", c.name, st.Jobs)
		case j.State != c.state || c.code < 0 && j.ExitCode != nil || c.code >= 0 && (j.ExitCode == nil || *j.ExitCode != c.code) || j.Reason != c.reason:
			t.Errorf("job %s: %+v; want state %s, exit %d, reason %q", c.name, j, c.state, c.code, c.reason)
		}
	}
	if len(st.Jobs) != 5 {
		t.Errorf("%d jobs recorded, want 5: %+v", len(st.Jobs), st.Jobs)
	}
	if log := s.refci("log", "--job", "ok").want(t, 0).stdout; log != "out\nerr\n" {
		t.Errorf("job ok's log: %q", log)
	}
}

// A run interrupted while a job runs under the light job client ends
// cancelled, and the job's command, a child of refci-job, is gone.
func TestRunLightJobClientCancelled(t *testing.T) {
	s := newSandbox(t)
	marker := fmt.Sprintf("1%d", time.Now().UnixNano()%1_000_000_000) // a unique sleep argument
	s.pipeline(fmt.Sprintf("refci job long -- sh -c 'echo started; exec sleep %s'\necho after the job\n", marker))
	cmd := exec.Command(refciBin, "run", "--kill-grace", "200ms")
	cmd.Dir = s.repo
	cmd.Env = s.env
	out := &fixtures.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	fixtures.WaitFor(t, 2*time.Minute, "the job to start", func() bool { return strings.Contains(out.String(), "[long] started") && alive("sleep "+marker) })
	cmd.Process.Signal(os.Interrupt)
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v\n%s", err, out.String())
	}
	if alive("sleep " + marker) {
		t.Error("the job's command survived the cancelled run")
	}
	st := s.status("HEAD")
	if st.State != queue.Cancelled || len(st.Jobs) != 1 {
		t.Fatalf("status: %+v\n%s", st, out.String())
	}
	if j := st.Jobs[0]; !j.State.Final() || j.State == queue.Success {
		t.Errorf("job: %+v", j)
	}
}
