package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/queue"
	"refci.dev/refci/worker/proc"
)

// shellJobsPipeline is a pipeline whose jobs are declared by J, either
// refci job or the in-shell refci_job.
const shellJobsPipeline = `set -eu
. "$REFCI_SH"
J ok -- sh -c 'echo out; echo err >&2'
J fails --needs ok -- sh -c 'echo failing; exit 3' || echo "fails exit $?"
J after --needs ok -- sh -c 'echo "after in $REFCI_JOB"'
J skipped --needs fails,after -- sh -c 'echo never' || echo "skipped exit $?"
J big -- sh -c 'i=0; while [ $i -lt 3000 ]; do echo "line $i of a long output"; i=$((i+1)); done'
echo done
`

// The same pipeline run with refci job and with refci_job, in dash and
// in bash, records the same jobs in status.json (times aside), the same
// job logs (the log cap included) and the same prefixed lines in the
// run's log.
func TestRunShellJobsAsRefciJob(t *testing.T) {
	for _, shell := range []string{"/bin/sh", "/bin/bash"} {
		t.Run(shell, func(t *testing.T) {
			s := newSandbox(t)
			var jobs [2][]queue.Job
			var logs [2]map[string]string
			for i, j := range []string{"refci job", "refci_job"} {
				s.write(".refci/run", "#!"+shell+"\n"+strings.ReplaceAll(shellJobsPipeline, "J ", j+" "), 0o755)
				s.commitAll(j)
				r := s.refci("run", "--log-cap", "20000").want(t, 1)
				for _, want := range []string{"[ok] out\n", "[ok] err\n", "fails exit 3\n", "skipped exit 1\n", "[after] after in after\n", "[big] line 2999 of a long output\n", "done\n",
					"failure", "job fails failed (.refci/run exited 0)"} {
					if !strings.Contains(r.stdout, want) {
						t.Errorf("%s: the run's output lacks %q:\n%s", j, want, r.stdout)
					}
				}
				st := s.status("HEAD")
				for k := range st.Jobs {
					st.Jobs[k].Started, st.Jobs[k].Finished, st.Jobs[k].DurationMS = time.Time{}, time.Time{}, 0
				}
				jobs[i] = st.Jobs
				logs[i] = map[string]string{}
				for _, name := range []string{"ok", "fails", "after", "big"} {
					logs[i][name] = s.refci("log", "--job", name).want(t, 0).stdout
				}
			}
			if !reflect.DeepEqual(jobs[0], jobs[1]) {
				t.Errorf("status.json jobs differ:\nrefci job: %+v\nrefci_job: %+v", jobs[0], jobs[1])
			}
			if !reflect.DeepEqual(logs[0], logs[1]) {
				t.Errorf("job logs differ:\nrefci job: %q\nrefci_job: %q", logs[0], logs[1])
			}
			if len(jobs[1]) != 5 || logs[1]["ok"] != "out\nerr\n" {
				t.Errorf("jobs %+v, ok's log %q", jobs[1], logs[1]["ok"])
			}
			if big := jobs[1][4]; big.Name != "big" || !big.Truncated || big.LogBytes < 60000 || len(logs[1]["big"]) > 21000 {
				t.Errorf("big: %+v, log of %d bytes; want truncated to the cap", big, len(logs[1]["big"]))
			}
		})
	}
}

// A run cancelled, or timed out, while an in-shell job runs kills the
// job's command (a child of the pipeline's shell) and records the job as
// cancelled, as refci job's would be.
func TestRunShellJobCancelledAndTimedOut(t *testing.T) {
	for _, how := range []string{"interrupt", "timeout"} {
		t.Run(how, func(t *testing.T) {
			s := newSandbox(t)
			marker := fmt.Sprintf("1%d", time.Now().UnixNano()%1_000_000_000) // a unique sleep argument
			s.pipeline(fmt.Sprintf(". \"$REFCI_SH\"\nrefci_job long -- sh -c 'echo started; exec sleep %s'\necho after the job\n", marker))
			args := []string{"run", "--kill-grace", "200ms"}
			if how == "timeout" {
				args = append(args, "--timeout", "2s")
			}
			cmd := exec.Command(refciBin, args...)
			cmd.Dir = s.repo
			cmd.Env = s.env
			out := &fixtures.Buffer{}
			cmd.Stdout, cmd.Stderr = out, out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			fixtures.WaitFor(t, 2*time.Minute, "the job to start", func() bool { return strings.Contains(out.String(), "[long] started") && alive("sleep "+marker) })
			if how == "interrupt" {
				cmd.Process.Signal(os.Interrupt)
			}
			err := cmd.Wait()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("exit: %v\n%s", err, out.String())
			}
			if alive("sleep " + marker) {
				t.Error("the job's command survived the run")
			}
			st := s.status("HEAD")
			want := queue.Cancelled
			if how == "timeout" {
				want = queue.Failure
			}
			if st.State != want || len(st.Jobs) != 1 || (how == "timeout") != st.TimedOut {
				t.Fatalf("status: %+v\n%s", st, out.String())
			}
			if j := st.Jobs[0]; j.State != queue.Cancelled || j.Reason != "the pipeline ended before the job finished" || j.LogBytes != int64(len("started\n")) {
				t.Errorf("job: %+v", j)
			}
			if strings.Contains(out.String(), "after the job") {
				t.Errorf("the pipeline went on:\n%s", out.String())
			}
		})
	}
}

// In-shell jobs work in an isolated pipeline (refci run --isolate): the
// channel and the jobs' output files lie in the run directory, which the
// pipeline may write.
func TestRunShellJobsIsolated(t *testing.T) {
	if err := proc.CheckIsolation(refciBin); err != nil {
		t.Skipf("no user namespaces here: %v", err)
	}
	s := newSandbox(t)
	s.pipeline(". \"$REFCI_SH\"\nrefci_job iso -- sh -c 'echo isolated output'\nrefci_job fails -- false || echo \"fails exit $?\"\n")
	r := s.refci("run", "--isolate")
	if r.code != 1 || !strings.Contains(r.stdout, "[iso] isolated output\n") || !strings.Contains(r.stdout, "fails exit 1\n") {
		t.Fatalf("refci run --isolate: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	st := s.status("HEAD")
	if len(st.Jobs) != 2 || st.Jobs[0].State != queue.Success || st.Jobs[1].State != queue.Failure || st.Extra["isolation"] == "none" {
		t.Errorf("status: %+v", st)
	}
	if log := s.refci("log", "--job", "iso").want(t, 0).stdout; log != "isolated output\n" {
		t.Errorf("log: %q", log)
	}
}

// refci log -f shows an in-shell job's output while the job runs, from
// the worker's progress snapshots, as it does refci job's.
func TestLogFollowSeesShellJobLive(t *testing.T) {
	release := filepath.Join(t.TempDir(), "release") // under /tmp: the pipeline sees it
	f := newFleet(t, fmt.Sprintf(". \"$REFCI_SH\"\nrefci_job long -- sh -c 'echo live-first-line; while [ ! -e %s ]; do sleep 0.05; done; echo live-last-line'\n", release))
	f.startWorker("a")
	f.refci("trigger", "--name", "live").want(t, 0)
	follow := startRefci(t, f.repo, f.env, "log", "-f", "live")
	f.waitFor("log -f to show the job's first line while it runs", 2*time.Minute, func() bool {
		return strings.Contains(follow.out.String(), "[long] live-first-line\n")
	})
	if out := follow.out.String(); strings.Contains(out, "live-last-line") {
		t.Fatalf("the job ended before it was released:\n%s", out)
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case <-follow.done:
	case <-time.After(2 * time.Minute):
		t.Fatal("log -f did not end")
	}
	if out := follow.out.String(); follow.err != nil || !strings.Contains(out, "[long] live-last-line\n") || !strings.Contains(out, "refci: success") {
		t.Fatalf("log -f: %v\n%s\n%s", follow.err, out, follow.errOut.String())
	}
}
