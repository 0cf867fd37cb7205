package main

import (
	"os/exec"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
)

// refci-hook starts once per updated ref on every push: it must stay
// light. These are the heavy dependencies of refci it must never pull in.
func TestLightDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "refci.dev/refci/cmd/refci-hook").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed only %v", deps)
	}
	banned := []string{
		"github.com/",
		"golang.org/x/",
		"crypto/tls",
		"net/http",
		"html/template",
		"text/template",
		"encoding/gob",
		"regexp",
	}
	for _, d := range deps {
		for _, b := range banned {
			if d == b || strings.HasPrefix(d, strings.TrimSuffix(b, "/")+"/") {
				t.Errorf("refci-hook depends on %s", d)
			}
		}
		// Of refci itself, only the hook client.
		if rest, ok := strings.CutPrefix(d, "refci.dev/refci/"); ok && rest != "gitproto/sshd/hookclient" && rest != "cmd/refci-hook" {
			t.Errorf("refci-hook depends on %s: only package gitproto/sshd/hookclient of refci belongs in it", d)
		}
	}
}

// Built, it says what it is when run by hand, and refuses to run outside
// refci serve's receive-pack (the servers' tests run it there).
func TestBinary(t *testing.T) {
	exe := fixtures.BuildBinary(t, ".", "refci-hook")
	for _, args := range [][]string{nil, {"--help"}, {"-h"}} {
		out, err := exec.Command(exe, args...).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "internal helper of refci serve") || strings.Count(string(out), "\n") != 1 {
			t.Errorf("%q: %q, %v; want a one-line usage error and exit status 2", args, out, err)
		}
	}
	cmd := exec.Command(exe, "post-receive")
	cmd.Env = []string{}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "runs only under refci serve") {
		t.Errorf("outside refci serve: %q, %v", out, err)
	}
}
