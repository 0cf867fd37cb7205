package main

import (
	"os/exec"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/worker/shim"
)

// refci-shim starts twice per job: it must stay light. These are the
// heavy dependencies of refci it must never pull in.
func TestLightDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "refci.dev/refci/cmd/refci-shim").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed only %v", deps)
	}
	banned := []string{
		"github.com/go-git/",
		"github.com/ProtonMail/go-crypto",
		"net/http",
		"html/template",
		"text/template",
		"refci.dev/refci/gitproto",
		"refci.dev/refci/queue",
		"refci.dev/refci/secrets",
		"refci.dev/refci/render",
	}
	for _, d := range deps {
		for _, b := range banned {
			if d == b || strings.HasPrefix(d, strings.TrimSuffix(b, "/")+"/") {
				t.Errorf("refci-shim depends on %s", d)
			}
		}
		// Of refci itself, only the shim.
		if rest, ok := strings.CutPrefix(d, "refci.dev/refci/"); ok && rest != "worker/shim" && rest != "lightbin/buildstamp" && rest != "cmd/refci-shim" {
			t.Errorf("refci-shim depends on %s: only packages worker/shim and lightbin/buildstamp of refci belong in it", d)
		}
	}
}

// Built, it answers --protocol, runs a program as refci __refci-shim
// does, and says what it is otherwise.
func TestBinary(t *testing.T) {
	exe := fixtures.BuildBinary(t, ".", "refci-shim")
	out, err := exec.Command(exe, shim.Arg, shim.ProtocolArg).Output()
	if err != nil || string(out) != shim.Identity()+"\n" {
		t.Errorf("--protocol: %q, %v", out, err)
	}
	cmd := exec.Command(exe, shim.Arg, "--", "/bin/sh", "-c", "echo ran; exit 3")
	out, err = cmd.Output()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || string(out) != "ran\n" {
		t.Errorf("running a program: %q, %v", out, err)
	}
	for _, args := range [][]string{nil, {"run"}, {"--help"}} {
		cmd := exec.Command(exe, args...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "internal helper of refci") || strings.Count(string(out), "\n") != 1 {
			t.Errorf("%q: %q, %v; want a one-line usage error and exit status 2", args, out, err)
		}
	}
	out, _ = exec.Command(exe, shim.Arg).CombinedOutput()
	if !strings.Contains(string(out), "usage") {
		t.Errorf("%s without a program: %q", shim.Arg, out)
	}
}
