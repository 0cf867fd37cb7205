//go:build linux

package proc

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/worker/shim"
)

// writeExecutable writes an executable file at path.
func writeExecutable(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// chooseShim is ChooseShim, again when the candidate was just written
// and another goroutine's fork still held it open for writing (ETXTBSY).
func chooseShim(refci string) (string, string) {
	path, note := ChooseShim(refci)
	for i := 0; i < 5 && strings.Contains(note, "text file busy"); i++ {
		path, note = ChooseShim(refci)
	}
	return path, note
}

func TestChooseShim(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, light string) // makes refci-shim, or not
		light bool                             // refci-shim is chosen
		note  string                           // in the note when refused
	}{
		{"none", func(*testing.T, string) {}, false, ""},
		{"matching", func(t *testing.T, light string) {
			// The test binary is a shim of this build (see shim_linux_test.go).
			if err := os.Symlink(fixtures.Executable(t), light); err != nil {
				t.Fatal(err)
			}
		}, true, ""},
		{"matching script", func(t *testing.T, light string) {
			writeExecutable(t, light, fmt.Sprintf("#!/bin/sh\n[ \"$*\" = '%s %s' ] && echo '%s'\n", shim.Arg, shim.ProtocolArg, shim.Identity()), 0o755)
		}, true, ""},
		{"other protocol", func(t *testing.T, light string) {
			writeExecutable(t, light, "#!/bin/sh\necho 'refci-shim 0'\n", 0o755)
		}, false, `is "refci-shim 0"`},
		{"same protocol, another commit", func(t *testing.T, light string) {
			writeExecutable(t, light, fmt.Sprintf("#!/bin/sh\necho '%s (commit 0123456789abcdef0123456789abcdef01234567)'\n", shim.Protocol), 0o755)
		}, false, "from another build"},
		{"protocol with more", func(t *testing.T, light string) {
			writeExecutable(t, light, fmt.Sprintf("#!/bin/sh\necho '%s'\n", strings.Replace(shim.Identity(), shim.Protocol, shim.Protocol+".1", 1)), 0o755)
		}, false, "from another build"},
		{"older refci-shim", func(t *testing.T, light string) {
			// Before --protocol: the usage, exit status 2.
			writeExecutable(t, light, "#!/bin/sh\necho 'refci: usage: refci __refci-shim ...' >&2\nexit 2\n", 0o755)
		}, false, "exit status 2"},
		{"not executable", func(t *testing.T, light string) {
			writeExecutable(t, light, fmt.Sprintf("#!/bin/sh\necho '%s'\n", shim.Identity()), 0o644)
		}, false, "not an executable file"},
		{"directory", func(t *testing.T, light string) {
			if err := os.Mkdir(light, 0o755); err != nil {
				t.Fatal(err)
			}
		}, false, "not an executable file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			refci := filepath.Join(dir, "refci")
			writeExecutable(t, refci, "#!/bin/sh\nexit 1\n", 0o755)
			light := filepath.Join(dir, ShimName)
			tc.setup(t, light)
			path, note := chooseShim(refci)
			want := refci
			if tc.light {
				want = light
			}
			if path != want {
				t.Errorf("shim %s (note %q), want %s", path, note, want)
			}
			if tc.note == "" && note != "" || !strings.Contains(note, tc.note) {
				t.Errorf("note %q, want one containing %q", note, tc.note)
			}
		})
	}
	if path, note := ChooseShim(""); path != "" || note != "" {
		t.Errorf("ChooseShim(\"\") = %q, %q", path, note)
	}
}

// A pipeline through the light refci-shim binary, the middle step
// included (it re-executes /proc/self/exe: refci-shim here): the hidden
// paths are hidden, the pipeline's exit status is reported, and nothing
// is left.
func TestLightShimHides(t *testing.T) {
	fixtures.NeedIsolation(t, CheckIsolation)
	light := fixtures.BuildBinary(t, "refci.dev/refci/cmd/refci-shim", ShimName)
	if p, note := ChooseShim(filepath.Join(filepath.Dir(light), "refci")); p != light {
		t.Errorf("ChooseShim does not take the refci-shim of this build: %s (%s)", p, note)
	}
	dir, file := fixtures.SecretPlace(t)
	m := newMarker()
	script := fmt.Sprintf(`echo "dir:[$(ls -A %[1]s)]"
echo "file:[$(cat %[2]s)]"
grep CapEff /proc/self/status
(setsid sleep %[3]s </dev/null >/dev/null 2>&1 &)
exit 7`, dir, file, m)
	var out fixtures.Buffer
	res, err := Run(t.Context(), Spec{Path: "/bin/sh", Args: []string{"-c", script}, Env: testEnv, Output: &out,
		Shim: light, Hide: []string{dir, file}, RequireIsolation: true, Timeout: testSafety})
	if err != nil {
		t.Fatal(err)
	}
	got := out.String()
	if res.ExitCode != 7 || res.Signal != "" || res.Unisolated != "" || res.Leftovers < 1 {
		t.Errorf("result %+v, want exit 7 and the daemon among the leftovers\n%s", res, got)
	}
	if strings.Contains(got, "TOP-SECRET") {
		t.Errorf("the pipeline read a hidden file:\n%s", got)
	}
	for _, want := range []string{"dir:[]", "file:[]", "CapEff:\t0000000000000000"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	assertGone(t, m)

	// And the worker's check at start, through it.
	if err := CheckIsolation(light); err != nil {
		t.Errorf("CheckIsolation(%s): %v", light, err)
	}
}
