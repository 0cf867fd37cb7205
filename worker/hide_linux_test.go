//go:build linux

package worker

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/worker/shim"
)

// Put on a pipeline's PATH as refci (RunSpec.RefciPath), the test binary
// runs `refci job` as the refci binary does.
func init() {
	if len(os.Args) > 1 && os.Args[1] == "job" && os.Getenv("REFCI_SOCKET") != "" {
		syscall.Exit(RunJobCommand(context.Background(), os.Args[2:], os.Getenv, os.Stdout, os.Stderr))
	}
}

// secretPlace makes a directory with a secret file in it and a secret file
// beside it, the way a worker's $REFCI_HOME and --key FILE look.
func secretPlace(t *testing.T) (dir, file string) {
	t.Helper()
	root := t.TempDir()
	dir, file = filepath.Join(root, "home"), filepath.Join(root, "key.asc")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(dir, "key.asc"), file} {
		if err := os.WriteFile(f, []byte("TOP-SECRET-KEY\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir, file
}

func needIsolation(t *testing.T) {
	t.Helper()
	if err := CheckIsolation(testExecutable(t)); err != nil {
		t.Skipf("no user namespaces here: %v", err)
	}
}

// A hidden directory is empty and read-only, a hidden file reads as
// /dev/null, the pipeline has no capability left, and neither the shim's
// nor the worker's /proc entries lead past the covers.
func TestHideProcess(t *testing.T) {
	needIsolation(t)
	dir, file := secretPlace(t)
	work := t.TempDir()
	script := fmt.Sprintf(`
cd %[3]s
echo "dir:[$(ls -A %[1]s)]"
echo "file:[$(cat %[2]s)]"
cat %[1]s/key.asc 2>/dev/null || echo "no key in dir"
touch %[1]s/x 2>/dev/null || echo "dir read-only"
umount %[1]s 2>/dev/null || echo "cannot unmount"
grep CapEff /proc/self/status
cat /proc/$PPID/root%[2]s 2>/dev/null || echo "no way through the shim"
echo "work dir writable" > out && cat out
`, dir, file, work)
	var out syncBuffer
	res, err := RunProcess(t.Context(), ProcSpec{Path: "/bin/sh", Args: []string{"-c", script}, Env: testEnv, Output: &out,
		Shim: testExecutable(t), Hide: []string{dir, file}, Timeout: testSafety})
	if err != nil {
		t.Fatal(err)
	}
	got := out.String()
	if res.ExitCode != 0 || res.Unisolated != "" {
		t.Errorf("result %+v\n%s", res, got)
	}
	if strings.Contains(got, "TOP-SECRET") {
		t.Errorf("the pipeline read a hidden file:\n%s", got)
	}
	for _, want := range []string{"dir:[]", "file:[]", "no key in dir", "dir read-only", "cannot unmount",
		"CapEff:\t0000000000000000", "no way through the shim", "work dir writable"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	// Outside, nothing changed.
	if b, err := os.ReadFile(filepath.Join(dir, "key.asc")); err != nil || string(b) != "TOP-SECRET-KEY\n" {
		t.Errorf("the hidden file outside: %q, %v", b, err)
	}
}

// The shim's supervision holds inside the namespaces: the process tests
// that stop, kill and reap whole trees, with hiding on.
func TestShimHideMode(t *testing.T) {
	needIsolation(t)
	dir, file := secretPlace(t)
	for _, tc := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"ExitCodes", TestProcessExitCodes},
		{"EnvIsExact", TestProcessEnvIsExact},
		{"ArgsDirAndStdin", TestProcessArgsDirAndStdin},
		{"TimeoutKillsAfterGrace", TestProcessTimeoutKillsAfterGrace},
		{"DaemonsAreKilled", TestProcessDaemonsAreKilled},
		{"Cancel", TestProcessCancel},
		{"HardCancel", TestProcessHardCancel},
		{"StartErrors", TestProcessStartErrors},
	} {
		t.Run(tc.name, func(t *testing.T) {
			useShim(t)
			testHide = []string{dir, file}
			t.Cleanup(func() { testHide = nil })
			tc.f(t)
		})
	}
}

// A whole run with hiding: the checkout, the run directory, the job socket
// (refci job) and refci on PATH work; the hidden paths are empty.
func TestHideRun(t *testing.T) {
	needIsolation(t)
	dir, file := secretPlace(t)
	lw := newLoopWorld(t, fmt.Sprintf(`set -e
test -x .refci/run && echo "checkout ok"
refci job hidden-check -- sh -c 'echo "job:[$(ls -A %[1]s)][$(cat %[2]s)]"'
echo artifact > "$REFCI_ARTIFACTS/a.txt"
echo "home:[$(ls -A %[1]s)]"
`, dir, file))
	repo, head := lw.head(t)
	exe := testExecutable(t)
	var live syncBuffer
	out, err := Run(t.Context(), RunSpec{Repo: repo, Target: head, Request: "local", RefciPath: exe, Shim: exe,
		TempDir: t.TempDir(), Output: &live, Hide: []string{dir, file}, RequireIsolation: true}, testSigner(t))
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
	jobLog := lw.git(t, lw.clone, "show", out.Commit.String()+":"+st.Jobs[0].Log)
	if !strings.Contains(jobLog, "job:[][]") {
		t.Errorf("job log %q", jobLog)
	}
}

// Runs whose directories share a hidden parent (a worker's temporary
// directory) see their own directory, writable, and nothing of the
// others': not a trusted neighbour's checkout, files or socket.
func TestHiddenParentKeepsOwnRunDir(t *testing.T) {
	needIsolation(t)
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
	exe := testExecutable(t)
	// The executable lies under a hidden path too (the test binary's
	// directory): it must stay usable for refci job.
	out, err := Run(t.Context(), RunSpec{Repo: repo, Target: head, Request: "local", RefciPath: exe, Shim: exe,
		TempDir: parent, Hide: []string{parent, filepath.Dir(exe)}, RequireIsolation: true}, testSigner(t))
	if err != nil {
		t.Fatal(err)
	}
	log := lw.git(t, lw.clone, "show", out.Commit.String()+":"+queue.LogFile)
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

// Where user namespaces cannot be made (here: inside one whose
// user.max_user_namespaces is 0), the pipeline runs unhidden and the
// report says why; with --require-isolation it does not run.
func TestHideUnavailable(t *testing.T) {
	needIsolation(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare(1)")
	}
	_, file := secretPlace(t)
	exe := testExecutable(t)
	for _, require := range []bool{false, true} {
		flags := "--hide=" + file
		if require {
			flags += " " + shim.RequireArg
		}
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("unshare", "--user", "--map-root-user", "sh", "-c",
			`echo 0 > /proc/sys/user/max_user_namespaces || exit 99; exec "$0" `+ShimArg+` `+flags+` -- /bin/cat "$1"`, exe, file)
		cmd.ExtraFiles = []*os.File{w}
		cmd.Env = testEnv
		outb, err := cmd.Output()
		w.Close()
		rep, _ := readAllString(r)
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 99 {
			t.Skipf("cannot make a user namespace without nested ones here: %v %s", err, rep)
		}
		if !require {
			if !strings.Contains(string(outb), "TOP-SECRET") || !strings.Contains(rep, `"unisolated":"user namespaces are unavailable`) {
				t.Errorf("without --require-isolation: output %q, report %s", outb, rep)
			}
			continue
		}
		if strings.Contains(string(outb), "TOP-SECRET") || !strings.Contains(rep, "--require-isolation") || !strings.Contains(rep, `"done":true`) {
			t.Errorf("with --require-isolation: output %q, report %s", outb, rep)
		}
	}
}

func readAllString(f *os.File) (string, error) {
	defer f.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := f.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String(), nil
		}
	}
}

func TestHideNeedsShimAndAbsolutePaths(t *testing.T) {
	for _, spec := range []ProcSpec{
		{Path: "/bin/true", Hide: []string{"/x"}},
		{Path: "/bin/true", Hide: []string{"relative"}, Shim: testExecutable(t)},
	} {
		res, err := RunProcess(t.Context(), spec)
		if err == nil || res.ExitCode != -1 {
			t.Errorf("%+v: %+v, %v", spec, res, err)
		}
	}
}

// With Hide, the pipeline's file system is read-only but for its run
// directory, the scratch directories and RunSpec.Writable; RunSpec.ReadOnly
// paths under those stay read-only, a missing one cannot be made, and
// device nodes still work. The test runs as any user: as root, the files
// of /etc and /usr are the pipeline's to write but for the read-only root.
func TestReadOnlyRoot(t *testing.T) {
	needIsolation(t)
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
	outside, err := os.MkdirTemp(filepath.Dir(testExecutable(t)), "outside-")
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
`, home, filepath.Join(absentParent, "missing"), extra, base, testExecutable(t), outside)
	lw := newLoopWorld(t, script)
	repo, head := lw.head(t)
	exe := testExecutable(t)
	var live syncBuffer
	out, err := Run(t.Context(), RunSpec{Repo: repo, Target: head, Request: "local", RefciPath: exe, Shim: exe,
		TempDir: t.TempDir(), Output: &live, Hide: []string{filepath.Join(base, "nothing-here")}, RequireIsolation: true,
		Writable: []string{extra}, ReadOnly: []string{home, filepath.Join(absentParent, "missing"), exe, filepath.Dir(exe)}}, testSigner(t))
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

// The read-only file system is the same with mount_setattr and with one
// remount per mount point (kernels before 5.12, forced here with
// --no-mount-setattr): the shim run by hand, with a hidden path, a
// writable one below a read-only one, and a read-only one below a
// writable one.
func TestReadOnlyRootWithoutMountSetattr(t *testing.T) {
	needIsolation(t)
	base := t.TempDir()
	ro, rw, secret := filepath.Join(base, "ro"), filepath.Join(base, "ro", "rw"), filepath.Join(base, "secret")
	for _, d := range []string{rw, secret} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(secret, "key"), []byte("TOP-SECRET\n"), 0o600)
	script := fmt.Sprintf(`try() { if (eval "$2") 2>/dev/null; then echo "$1: wrote"; else echo "$1: refused"; fi; }
try ro 'echo x > %[1]s/f'
try rw 'echo x > %[2]s/f'
try base 'echo x > %[3]s/f'
try etc 'echo x > /etc/refci-attack'
try tmp 'echo x > /tmp/refci-ro-$$ && rm /tmp/refci-ro-$$'
try devnull 'echo x > /dev/null'
cat %[4]s/key 2>/dev/null || echo "secret hidden"
`, ro, rw, base, secret)
	want := "ro: refused\nrw: wrote\nbase: wrote\netc: refused\ntmp: wrote\ndevnull: wrote\nsecret hidden\n"
	for _, compat := range []bool{false, true} {
		args := []string{ShimArg, shim.HideArg + secret, shim.WritableArg + rw, shim.ReadOnlyArg + ro}
		if compat {
			args = append(args, shim.NoMountSetattrArg)
		}
		cmd := exec.Command(testExecutable(t), append(args, "--", "/bin/sh", "-c", script)...)
		cmd.Env = testEnv
		out, err := cmd.CombinedOutput()
		if err != nil || string(out) != want {
			t.Errorf("without mount_setattr %v: %v\n%s", compat, err, out)
		}
		os.Remove("/etc/refci-attack")
		for _, d := range []string{ro, rw, base} {
			os.Remove(filepath.Join(d, "f"))
		}
	}
}
