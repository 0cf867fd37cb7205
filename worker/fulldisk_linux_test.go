//go:build linux

package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// smallFS mounts a tmpfs of size bytes for the test: a real file system
// that fills up. It needs root (mount); otherwise the test is skipped.
func smallFS(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs to fill needs root; run the tests as root (CI does) to cover full disks")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (%v): full-disk tests need a mount", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// fill writes a ballast file in dir until its file system is full, and
// returns its path.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "ballast")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			break
		}
	}
	// Whatever a few bytes are left: take them too.
	for {
		if _, err := f.Write(buf[:1]); err != nil {
			break
		}
	}
	return p
}

// The pipeline fills the disk of its run directory, then writes more
// log than refci keeps in memory: refci's own log file cannot be written.
// The run still ends with a result on the remote, in state error, saying
// so and holding the log as far as it was kept; the request is consumed,
// and the next run (the directory emptied, the space back) works.
func TestRunDirectoryDiskFull(t *testing.T) {
	exe := fixtures.Executable(t)
	lw := newLoopWorld(t, `if [ "$REFCI_REQUEST" = full ]; then
	echo before-fill
	cat /dev/zero > "$TMPDIR/fill" 2>/dev/null
	echo "the pipeline filled its disk"
	i=0
	while [ $i -lt 3000 ]; do echo "line $i of output written after the disk is full"; i=$((i+1)); done
else
	echo space-is-back
fi
`)
	tmp := smallFS(t, 4<<20)
	rem, err := gitproto.OpenRemote("file://"+lw.bare, filepath.Join(lw.dir, "cache.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	w := New(Config{
		Remotes: []*gitproto.Remote{rem}, Poll: 100 * time.Millisecond, Concurrency: 1, Grace: 5 * time.Second,
		Signer: fixtures.OpenPGPIdentity(t, "Test Worker"), RefciPath: exe, TempDir: tmp,
	})
	startWorker(t, w)
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "HEAD:"+queue.RequestRef("full"))
	fixtures.WaitFor(t, 60*time.Second, "the result of the run that filled its disk", func() bool {
		return len(lw.refs(t, queue.RunsPrefix)) == 1 && lw.consumed(t, "full")
	})
	st, log := lw.resultOf(t, "full")
	if st.State != queue.Error || !strings.Contains(st.Reason, "no space left on device") {
		t.Errorf("state %s, reason %q; want error, no space left on device", st.State, st.Reason)
	}
	if !strings.Contains(log, "before-fill") || !strings.Contains(log, "the pipeline filled its disk") || !strings.Contains(log, "refci: no space left on device") {
		t.Errorf("the log does not hold what was kept and the reason:\n%.2000s", log)
	}
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "HEAD:"+queue.RequestRef("after"))
	fixtures.WaitFor(t, 60*time.Second, "the next run", func() bool {
		return len(lw.refs(t, queue.RunsPrefix)) == 2 && lw.consumed(t, "after")
	})
	if st, log := lw.resultOf(t, "after"); st.State != queue.Success || !strings.Contains(log, "space-is-back") {
		t.Errorf("the next run: state %s (%s), log %q", st.State, st.Reason, log)
	}
}

// The disk of the worker's cache is full when the result is to be
// written: not even a short result fits. The worker keeps it and writes
// it once there is space again; the request is never eaten meanwhile, and
// is consumed with that result, in state error saying why.
func TestCacheDiskFullKeepsTheResult(t *testing.T) {
	exe := fixtures.Executable(t)
	sync := t.TempDir()
	lw := newLoopWorld(t, fmt.Sprintf(`echo pipeline-started
touch %[1]s/started
while [ ! -e %[1]s/go ]; do sleep 0.05; done
echo pipeline-done
`, sync))
	fs := smallFS(t, 8<<20)
	rem, err := gitproto.OpenRemote("file://"+lw.bare, filepath.Join(fs, "cache.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &fixtures.Buffer{}
	w := New(Config{
		Remotes: []*gitproto.Remote{rem}, Poll: 100 * time.Millisecond, Concurrency: 1, Grace: 5 * time.Second,
		Signer: fixtures.OpenPGPIdentity(t, "Test Worker"), RefciPath: exe, TempDir: t.TempDir(), Snapshot: time.Hour,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	startWorker(t, w)
	fixtures.Git(t, lw.clone, "push", "-q", lw.bare, "HEAD:"+queue.RequestRef("r"))
	fixtures.WaitFor(t, 60*time.Second, "the pipeline to start", func() bool {
		_, err := os.Stat(filepath.Join(sync, "started"))
		return err == nil
	})
	ballast := fill(t, fs)
	if err := os.WriteFile(filepath.Join(sync, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fixtures.WaitFor(t, 60*time.Second, "the worker to say it cannot store the result", func() bool {
		return strings.Contains(logs.String(), "the run's result cannot be stored; retrying until there is space")
	})
	if lw.consumed(t, "r") || len(lw.refs(t, queue.RunsPrefix)) != 0 {
		t.Fatalf("with no result stored, the request was consumed or a result published: runs %q", lw.refs(t, queue.RunsPrefix))
	}
	if !strings.Contains(logs.String(), "no space left on device") {
		t.Errorf("the worker's log does not give the cause:\n%s", logs.String())
	}
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	fixtures.WaitFor(t, 60*time.Second, "the kept result on the remote", func() bool {
		return len(lw.refs(t, queue.RunsPrefix)) == 1 && lw.consumed(t, "r")
	})
	st, log := lw.resultOf(t, "r")
	if st.State != queue.Error || !strings.HasPrefix(st.Reason, "no space left on device writing the result: ") ||
		!strings.Contains(st.Reason, "the pipeline had ended success") {
		t.Errorf("state %s, reason %q", st.State, st.Reason)
	}
	if !strings.Contains(log, "pipeline-done") || !strings.Contains(log, "refci: no space left on device writing the result") {
		t.Errorf("log:\n%s", log)
	}
}
