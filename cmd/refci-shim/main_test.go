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
	fixtures.LightDeps(t, "refci.dev/refci/cmd/refci-shim", []string{"worker/shim", "lightbin/buildstamp"},
		"github.com/go-git/", "github.com/ProtonMail/go-crypto/", "net/http", "html/template", "text/template")
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
