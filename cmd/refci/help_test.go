package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"refci.dev/refci/cmd/internal/cli"
)

// runHelp runs refci in this process and returns its exit code and
// streams.
func runHelp(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

// The global help and every command's help are golden; 'refci help CMD'
// and 'refci CMD -h' print the same, once, to stdout, exit 0.
func TestHelpGolden(t *testing.T) {
	t.Setenv("HOME", "/home/alice")
	t.Setenv("REFCI_HOME", "")
	check := func(name, got string) {
		t.Helper()
		p := filepath.Join("testdata", "help", name+".txt")
		if *updateGolden {
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		want, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%v (go test -update to write it)", err)
		}
		if got != string(want) {
			t.Errorf("%s differs from %s (go test -update to accept):\n%s", name, p, got)
		}
	}
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		code, out, errs := runHelp(args...)
		if code != 0 || errs != "" {
			t.Errorf("refci %v: exit %d, stderr %q", args, code, errs)
		}
		check("refci", out)
	}
	for _, c := range commands() {
		if isForgeCommand(c.name) {
			continue // refci-forge's help: TestForgeCommandsHelp
		}
		code, out, errs := runHelp("help", c.name)
		if code != 0 || errs != "" {
			t.Errorf("refci help %s: exit %d, stderr %q", c.name, code, errs)
		}
		check(c.name, out)
		if n := strings.Count(out, "Usage:"); n != 1 || !strings.HasPrefix(out, "Usage: "+c.cli().UsageLine()+"\n") {
			t.Errorf("refci help %s prints its usage %d times:\n%s", c.name, n, out)
		}
		for _, h := range []string{"-h", "--help"} {
			code, out2, errs := runHelp(c.name, h)
			if code != 0 || errs != "" || out2 != out {
				t.Errorf("refci %s %s: exit %d, stderr %q, stdout differs from 'refci help %s':\n%s", c.name, h, code, errs, c.name, out2)
			}
		}
	}
}

var flagRe = regexp.MustCompile(`(?:^|[\s\[|])(--?[a-z][a-z0-9-]*)`)

// Every flag a synopsis names is one its command defines, and a command
// whose synopsis does not end in [FLAGS] names them all; flags are shown
// as --name, or -x for one letter.
func TestSynopsesMatchFlags(t *testing.T) {
	for _, c := range commands() {
		if !c.ownFlags || isForgeCommand(c.name) {
			continue
		}
		_, out, _ := runHelp(c.name, "-h")
		defined := map[string]bool{}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "  -") {
				name := strings.Fields(l)[0]
				defined[name] = true
				if bare := strings.TrimLeft(name, "-"); name != cli.FlagName(bare) {
					t.Errorf("%s: flag %s shown as %s", c.name, bare, name)
				}
			}
		}
		if len(defined) == 0 {
			t.Errorf("%s: no flags in its help:\n%s", c.name, out)
		}
		named := map[string]bool{}
		for _, m := range flagRe.FindAllStringSubmatch(c.synopsis, -1) {
			named[m[1]] = true
			if !defined[m[1]] {
				t.Errorf("%s: the synopsis names %s, which the command does not define", c.name, m[1])
			}
		}
		if !strings.Contains(c.synopsis, "[FLAGS]") {
			for f := range defined {
				if !named[f] {
					t.Errorf("%s: the synopsis %q lacks %s", c.name, c.synopsis, f)
				}
			}
		}
	}
}

// Usage errors name what was wrong, once, with the usage line; no help
// dump.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"help", "nosuch"}, "refci: help: want one command name, one of: init run status"},
		{[]string{"help", "run", "log"}, "refci: help: want one command name"},
		{[]string{"nosuch"}, `refci: unknown command "nosuch"; the commands: init run`},
		{[]string{"run", "--bogus"}, "refci: run: flag provided but not defined: -bogus\nUsage: refci run [--repo DIR]"},
		{[]string{"status", "a", "b"}, "refci: status: too many arguments: a b\nUsage: refci status [--repo DIR] [--json] [--remote R] [REV|RUN] (see 'refci help status')\n"},
		{[]string{"secrets"}, "refci: secrets: missing command"},
	} {
		code, out, errs := runHelp(tc.args...)
		if code != exitUsage || out != "" || !strings.HasPrefix(errs, tc.want) || strings.Count(errs, "\n") > 2 {
			t.Errorf("refci %v: exit %d, stdout %q, stderr:\n%s\nwant exit 2 and a stderr starting %q", tc.args, code, out, errs, tc.want)
		}
	}
	if code, out, _ := runHelp(); code != exitUsage || out != "" {
		t.Errorf("refci without arguments: exit %d, stdout %q", code, out)
	}
}
