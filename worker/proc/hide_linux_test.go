//go:build linux

package proc

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/worker/shim"
)

// A hidden directory is empty and read-only, a hidden file reads as
// /dev/null, the pipeline has no capability left, and neither the shim's
// nor the worker's /proc entries lead past the covers.
func TestHideProcess(t *testing.T) {
	fixtures.NeedIsolation(t, CheckIsolation)
	dir, file := fixtures.SecretPlace(t)
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
	var out fixtures.Buffer
	res, err := Run(t.Context(), Spec{Path: "/bin/sh", Args: []string{"-c", script}, Env: testEnv, Output: &out,
		Shim: fixtures.Executable(t), Hide: []string{dir, file}, Timeout: testSafety})
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
	fixtures.NeedIsolation(t, CheckIsolation)
	dir, file := fixtures.SecretPlace(t)
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

// Where user namespaces cannot be made (here: inside one whose
// user.max_user_namespaces is 0), the pipeline runs unhidden and the
// report says why; with --require-isolation it does not run.
func TestHideUnavailable(t *testing.T) {
	fixtures.NeedIsolation(t, CheckIsolation)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare(1)")
	}
	_, file := fixtures.SecretPlace(t)
	exe := fixtures.Executable(t)
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
	for _, spec := range []Spec{
		{Path: "/bin/true", Hide: []string{"/x"}},
		{Path: "/bin/true", Hide: []string{"relative"}, Shim: fixtures.Executable(t)},
	} {
		res, err := Run(t.Context(), spec)
		if err == nil || res.ExitCode != -1 {
			t.Errorf("%+v: %+v, %v", spec, res, err)
		}
	}
}

// The read-only file system is the same with mount_setattr and with one
// remount per mount point (kernels before 5.12, forced here with
// --no-mount-setattr): the shim run by hand, with a hidden path, a
// writable one below a read-only one, and a read-only one below a
// writable one.
func TestReadOnlyRootWithoutMountSetattr(t *testing.T) {
	fixtures.NeedIsolation(t, CheckIsolation)
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
		cmd := exec.Command(fixtures.Executable(t), append(args, "--", "/bin/sh", "-c", script)...)
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
