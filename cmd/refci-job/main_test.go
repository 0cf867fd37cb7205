package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
)

// refci-job starts once per job: it must stay light. These are the heavy
// dependencies of refci it must never pull in; package net among them,
// which links the C library and so costs every start its dynamic
// loading.
func TestLightDependencies(t *testing.T) {
	fixtures.LightDeps(t, "refci.dev/refci/cmd/refci-job", []string{"worker/jobsock/jobclient", "worker/jobsock/jobwire", "queue/jobname"},
		"github.com/", "golang.org/x/crypto/", "crypto/", "net", "runtime/cgo", "net/http", "html/template", "text/template")
}

// Built, it runs `refci job` and `refci secret` itself (outside a
// pipeline they say so), and execs the refci beside its file for every
// other command and for help, with the arguments unchanged, also when
// run through a symbolic link from elsewhere.
func TestBinary(t *testing.T) {
	exe := fixtures.BuildBinary(t, ".", "refci-job")
	dir := filepath.Dir(exe)
	if err := os.WriteFile(filepath.Join(dir, "refci"), []byte("#!/bin/sh\necho \"full refci: $0 $*\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "refci")
	if err := os.Symlink(exe, link); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, int) {
		cmd := exec.Command(link, args...)
		cmd.Env = []string{"PATH=/usr/bin:/bin"}
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	if out, code := run("job", "build", "--", "true"); code != 2 || !strings.Contains(out, "not inside a refci pipeline") {
		t.Errorf("job outside a pipeline: %d %q", code, out)
	}
	if out, code := run("secret", "X"); code != 2 || !strings.Contains(out, "not inside a refci pipeline") {
		t.Errorf("secret outside a pipeline: %d %q", code, out)
	}
	for _, args := range [][]string{{"status", "--json", "a b"}, {"job", "--help"}, {"secret", "-h"}, {}} {
		// A script's $0 is its path, which the kernel puts there.
		want := "full refci: " + filepath.Join(dir, "refci") + " " + strings.Join(args, " ")
		if out, code := run(args...); code != 0 || strings.TrimRight(out, " \n") != strings.TrimRight(want, " ") {
			t.Errorf("%q: %d %q, want %q", args, code, out, want)
		}
	}
	// Installed as refci itself, with no full refci beside it: it says
	// so rather than exec itself for ever.
	if err := os.Rename(exe, filepath.Join(dir, "refci")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(dir, "refci"), "status")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || !strings.Contains(string(out), "installed as refci") {
		t.Errorf("installed as refci: %v %q", err, out)
	}
}
