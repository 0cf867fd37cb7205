//go:build linux

package worker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/worker/jobsock/jobclient"
	"refci.dev/refci/worker/proc"
)

// Put on a pipeline's PATH as refci (RunSpec.RefciPath), the test binary
// runs `refci job` as the refci binary does.
func init() {
	if len(os.Args) > 1 && os.Args[1] == "job" && os.Getenv("REFCI_SOCKET") != "" {
		syscall.Exit(jobclient.RunJobCommand(context.Background(), os.Args[2:], os.Getenv, os.Stdout, os.Stderr))
	}
}

// A whole run with hiding: the checkout, the run directory, the job socket
// (refci job) and refci on PATH work; the hidden paths are empty.
func TestHideRun(t *testing.T) {
	fixtures.NeedIsolation(t, proc.CheckIsolation)
	dir, file := fixtures.SecretPlace(t)
	lw := newLoopWorld(t, fmt.Sprintf(`set -e
test -x .refci/run && echo "checkout ok"
refci job hidden-check -- sh -c 'echo "job:[$(ls -A %[1]s)][$(cat %[2]s)]"'
echo artifact > "$REFCI_ARTIFACTS/a.txt"
echo "home:[$(ls -A %[1]s)]"
`, dir, file))
	repo, head := lw.head(t)
	exe := fixtures.Executable(t)
	var live fixtures.Buffer
	out, err := Run(t.Context(), RunSpec{Repo: repo, Target: head, Request: "local", RefciPath: exe, Shim: exe,
		TempDir: t.TempDir(), Output: &live, Isolation: Isolation{Hide: []string{dir, file}, RequireIsolation: true}}, fixtures.OpenPGPIdentity(t, "Test Worker"))
	if err != nil {
		t.Fatal(err)
	}
	st := out.Status
	log := live.String()
	if st.State != queue.Success || len(st.Jobs) != 1 || st.Jobs[0].State != queue.Success || len(st.Artifacts) != 1 {
		t.Fatalf("state %s (%s), jobs %+v, artifacts %+v\n%s", st.State, st.Reason, st.Jobs, st.Artifacts, log)
	}
	if st.Extra["isolation"] != nil {
		t.Errorf("status extra %v: isolation is recorded only when missing", st.Extra)
	}
	if !strings.Contains(log, "checkout ok") || !strings.Contains(log, "home:[]") || strings.Contains(log, "TOP-SECRET") {
		t.Errorf("log:\n%s", log)
	}
	jobLog := fixtures.Git(t, lw.clone, "show", out.Commit.String()+":"+st.Jobs[0].Log)
	if !strings.Contains(jobLog, "job:[][]") {
		t.Errorf("job log %q", jobLog)
	}
}

// Runs whose directories share a hidden parent (a worker's temporary
// directory) see their own directory, writable, and nothing of the
// others': not a trusted neighbour's checkout, files or socket.
func TestHiddenParentKeepsOwnRunDir(t *testing.T) {
	fixtures.NeedIsolation(t, proc.CheckIsolation)
	parent := filepath.Join(t.TempDir(), "runs")
	if err := os.Mkdir(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	neighbour := filepath.Join(parent, "refci-run-neighbour")
	if err := os.MkdirAll(filepath.Join(neighbour, "src"), 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(neighbour, "src", ".npmrc"), []byte("TOP-SECRET-TOKEN\n"), 0o600)
	lw := newLoopWorld(t, `
echo "mine:$(ls "$REFCI_ARTIFACTS/.." | tr '\n' ' ')"
echo "parent:$(ls -a "`+parent+`" 2>&1 | tr '\n' ' ')"
cat "`+neighbour+`/src/.npmrc" 2>&1 || true
echo made > "$REFCI_ARTIFACTS/out.txt" && echo "artifact written"
refci job build -- echo "job ok"
`)
	repo, err := gitproto.Open(lw.clone)
	if err != nil {
		t.Fatal(err)
	}
	head, _ := repo.ResolveCommit("HEAD")
	exe := fixtures.Executable(t)
	// The executable lies under a hidden path too (the test binary's
	// directory): it must stay usable for refci job.
	out, err := Run(t.Context(), RunSpec{Repo: repo, Target: head, Request: "local", RefciPath: exe, Shim: exe,
		TempDir: parent, Isolation: Isolation{Hide: []string{parent, filepath.Dir(exe)}, RequireIsolation: true}}, fixtures.OpenPGPIdentity(t, "Test Worker"))
	if err != nil {
		t.Fatal(err)
	}
	log := fixtures.Git(t, lw.clone, "show", out.Commit.String()+":"+queue.LogFile)
	if out.Status.State != queue.Success {
		t.Fatalf("state %s (%s), log:\n%s", out.Status.State, out.Status.Reason, log)
	}
	parentLine := ""
	for _, l := range strings.Split(log, "\n") {
		if strings.HasPrefix(l, "parent:") {
			parentLine = l
		}
	}
	if strings.Contains(log, "TOP-SECRET") || !strings.Contains(parentLine, "refci-run-") && !strings.Contains(parentLine, " run-") || strings.Contains(parentLine, "neighbour") {
		t.Errorf("the neighbour's run is visible, or the run's own is not listed:\n%s", log)
	}
	if !strings.Contains(log, "mine:") || !strings.Contains(log, "src") || !strings.Contains(log, "artifact written") || !strings.Contains(log, "[build] job ok") {
		t.Errorf("the run's own directory is not usable:\n%s", log)
	}
	if len(out.Status.Artifacts) != 1 {
		t.Errorf("artifacts: %+v", out.Status.Artifacts)
	}
}

// With Hide, the pipeline's file system is read-only but for its run
// directory, the scratch directories and RunSpec.Writable; RunSpec.ReadOnly
// paths under those stay read-only, a missing one cannot be made, and
// device nodes still work. The test runs as any user: as root, the files
// of /etc and /usr are the pipeline's to write but for the read-only root.
func TestReadOnlyRoot(t *testing.T) {
	fixtures.NeedIsolation(t, proc.CheckIsolation)
	base := t.TempDir() // under /tmp: a scratch directory
	home := filepath.Join(base, "home")
	extra := filepath.Join(base, "extra")
	absentParent := filepath.Join(base, "xdg")
	for _, d := range []string{home, extra, absentParent} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A directory beside the test binary: read-only as the binary's
	// directory is, although it lies under /tmp.
	outside, err := os.MkdirTemp(filepath.Dir(fixtures.Executable(t)), "outside-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(outside)
	script := fmt.Sprintf(`
try() { if (eval "$2") 2>/dev/null; then echo "$1: wrote"; else echo "$1: refused"; fi; }
try home 'echo x > %[1]s/.gitconfig'
try home-dir 'mkdir %[1]s/.ssh'
try absent 'mkdir -p %[2]s/config/git'
try etc 'echo x > /etc/refci-attack'
try usr 'echo x > /usr/local/bin/refci-attack'
try exe 'echo x >> %[5]s'
try outside 'echo x > %[6]s/f'
try tmp 'echo x > /tmp/refci-ro-test-$$ && rm /tmp/refci-ro-test-$$'
try vartmp 'echo x > /var/tmp/refci-ro-test-$$ && rm /var/tmp/refci-ro-test-$$'
try shm 'echo x > /dev/shm/refci-ro-test-$$ && rm /dev/shm/refci-ro-test-$$'
try devnull 'echo x > /dev/null'
try extra 'echo x > %[3]s/f'
try scratch-base 'echo x > %[4]s/f'
try HOME 'echo x > "$HOME/f"'
try TMPDIR 'echo x > "$TMPDIR/f"'
try artifacts 'echo x > "$REFCI_ARTIFACTS/a.txt"'
try checkout 'echo x > checkout-file'
`, home, filepath.Join(absentParent, "missing"), extra, base, fixtures.Executable(t), outside)
	lw := newLoopWorld(t, script)
	repo, head := lw.head(t)
	exe := fixtures.Executable(t)
	var live fixtures.Buffer
	out, err := Run(t.Context(), RunSpec{Repo: repo, Target: head, Request: "local", RefciPath: exe, Shim: exe,
		TempDir: t.TempDir(), Output: &live, Isolation: Isolation{Hide: []string{filepath.Join(base, "nothing-here")}, RequireIsolation: true,
			Writable: []string{extra}, ReadOnly: []string{home, filepath.Join(absentParent, "missing"), exe, filepath.Dir(exe)}}}, fixtures.OpenPGPIdentity(t, "Test Worker"))
	if err != nil {
		t.Fatal(err)
	}
	log := live.String()
	if out.Status.State != queue.Success {
		t.Fatalf("state %s (%s)\n%s", out.Status.State, out.Status.Reason, log)
	}
	for _, w := range []string{"home: refused", "home-dir: refused", "absent: refused", "etc: refused", "usr: refused", "exe: refused", "outside: refused",
		"tmp: wrote", "vartmp: wrote", "shm: wrote", "devnull: wrote", "extra: wrote", "scratch-base: wrote", "HOME: wrote", "TMPDIR: wrote", "artifacts: wrote", "checkout: wrote"} {
		if !strings.Contains(log, w+"\n") {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
	for _, p := range []string{filepath.Join(home, ".gitconfig"), filepath.Join(home, ".ssh"), filepath.Join(absentParent, "missing"), "/etc/refci-attack", "/usr/local/bin/refci-attack", filepath.Join(outside, "f")} {
		if _, err := os.Lstat(p); err == nil {
			os.RemoveAll(p)
			t.Errorf("the pipeline made %s", p)
		}
	}
}
