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
	fixtures.LightDeps(t, "refci.dev/refci/cmd/refci-hook", []string{"gitproto/sshd/hookclient"},
		"github.com/", "golang.org/x/", "crypto/tls", "net/http", "html/template", "text/template", "encoding/gob", "regexp")
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
