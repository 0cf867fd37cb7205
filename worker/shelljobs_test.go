package worker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// exportingSource is a SecretSource whose policy exports every value.
type exportingSource map[string]string

func (f exportingSource) Secret(name string) ([]byte, error) { return fakeSource(f).Secret(name) }
func (f exportingSource) Info() SecretsInfo {
	var names []string
	for n := range f {
		names = append(names, n)
	}
	return SecretsInfo{Commit: "abc", Exported: names}
}

// An in-shell job's output is masked, in its log and in the run's, and
// is seen while the job runs by the progress snapshots that refci log -f
// follows, as refci job's is.
func TestShellJobMaskedAndLive(t *testing.T) {
	const secret = "tok-1234567-secret"
	release := filepath.Join(t.TempDir(), "release")
	lw := newLoopWorld(t, fmt.Sprintf(`set -eu
. "$REFCI_SH"
refci_job leak -- sh -c 'echo "value=$TOKEN"; echo first-line; while [ ! -e %s ]; do sleep 0.01; done; echo "again $TOKEN"'
`, release))
	repo, head := lw.head(t)

	var mu sync.Mutex
	var seen []string // the log and status.json of each snapshot
	type outcome struct {
		out *Outcome
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		out, err := Run(context.Background(), RunSpec{
			Repo: repo, Target: head, Request: "local", Env: "staging",
			Secrets: func(context.Context, SecretsQuery) (SecretSource, error) {
				return exportingSource{"TOKEN": secret}, nil
			},
			SnapshotEvery: 50 * time.Millisecond,
			OnSnapshot: func(ref string, c gitproto.Hash) {
				log := fixtures.Git(t, lw.clone, "show", c.String()+":"+queue.LogFile)
				st := fixtures.Git(t, lw.clone, "show", c.String()+":"+queue.StatusFile)
				mu.Lock()
				seen = append(seen, log+"\n"+st)
				mu.Unlock()
			},
		}, fixtures.OpenPGPIdentity(t, "Test Worker"))
		done <- outcome{out, err}
	}()
	fixtures.WaitFor(t, 2*time.Minute, "a snapshot with the job's first lines while it runs", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range seen {
			if strings.Contains(s, "[leak] value=***\n[leak] first-line\n") && strings.Contains(s, `"state": "running"`) {
				return true
			}
		}
		return false
	})
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var o outcome
	select {
	case o = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the run did not end")
	}
	if o.err != nil || o.out.Status.State != queue.Success {
		t.Fatalf("run: %+v %v", o.out, o.err)
	}
	st := o.out.Status
	if len(st.Jobs) != 1 || st.Jobs[0].State != queue.Success {
		t.Fatalf("jobs: %+v", st.Jobs)
	}
	jobLog := fixtures.Git(t, lw.clone, "show", o.out.Ref+":"+queue.JobLogPath("leak"))
	mainLog := fixtures.Git(t, lw.clone, "show", o.out.Ref+":"+queue.LogFile)
	if jobLog != "value=***\nfirst-line\nagain ***" {
		t.Errorf("job log: %q", jobLog)
	}
	if !strings.Contains(mainLog, "[leak] value=***\n[leak] first-line\n[leak] again ***") {
		t.Errorf("main log: %q", mainLog)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range append(seen, jobLog, mainLog) {
		if strings.Contains(s, secret) {
			t.Errorf("the secret is in a log: %q", s)
		}
	}
}

// A run directory handed to the next run keeps no in-shell job state of
// the last: its library is written anew (what a pipeline wrote there is
// gone), and a job of the same name runs again.
func TestShellJobsInReusedRunDir(t *testing.T) {
	lw := newLoopWorld(t, `set -eu
if grep -q hijacked "$REFCI_SH"; then echo "library hijacked"; fi
. "$REFCI_SH"
refci_job same -- sh -c 'echo "run of $REFCI_JOB"'
chmod u+w "$REFCI_SH" "$(dirname "$REFCI_SH")"
echo 'refci_job() { echo hijacked; }' > "$REFCI_SH"
`)
	repo, head := lw.head(t)
	pool := NewRunDirs(1)
	defer pool.Close()
	temp := t.TempDir()
	for i := range 2 {
		out, err := Run(t.Context(), RunSpec{Repo: repo, Target: head, Request: "local", TempDir: temp, Dirs: pool}, fixtures.OpenPGPIdentity(t, "Test Worker"))
		if err != nil || out.Status.State != queue.Success || len(out.Status.Jobs) != 1 {
			t.Fatalf("run %d: %+v %v\n%s", i, out.Status, err, fixtures.Git(t, lw.clone, "show", out.Ref+":"+queue.LogFile))
		}
		log := fixtures.Git(t, lw.clone, "show", out.Ref+":"+queue.LogFile)
		if !strings.Contains(log, "[same] run of same") || strings.Contains(log, "hijacked") {
			t.Errorf("run %d log: %q", i, log)
		}
	}
}

// A reused run directory keeps its in-shell library and FIFO when the
// pipeline left them as they were: no file is made anew per run.
func TestShellLibraryKeptInReusedRunDir(t *testing.T) {
	lw := newLoopWorld(t, `. "$REFCI_SH"
refci_job one -- true
echo "inodes $(stat -c %i "$REFCI_SH" "$REFCI_JOBS/ctl" | tr '\n' ' ')"
`)
	repo, head := lw.head(t)
	pool := NewRunDirs(1)
	defer pool.Close()
	temp := t.TempDir()
	var seen []string
	for i := range 2 {
		out, err := Run(t.Context(), RunSpec{Repo: repo, Target: head, Request: "local", TempDir: temp, Dirs: pool}, fixtures.OpenPGPIdentity(t, "Test Worker"))
		if err != nil || out.Status.State != queue.Success || len(out.Status.Jobs) != 1 {
			t.Fatalf("run %d: %+v %v", i, out.Status, err)
		}
		log := fixtures.Git(t, lw.clone, "show", out.Ref+":"+queue.LogFile)
		_, inodes, ok := strings.Cut(log, "inodes ")
		if !ok {
			t.Fatalf("run %d log: %q", i, log)
		}
		seen = append(seen, inodes)
	}
	if seen[0] != seen[1] {
		t.Errorf("the library or the FIFO was made anew: inodes %q, then %q", seen[0], seen[1])
	}
}
