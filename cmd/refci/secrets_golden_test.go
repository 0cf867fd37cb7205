package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// What refci secrets prints, for each subcommand, on success and on the
// user's mistakes, with its exit codes, is golden: an admin's session
// from init to a policy change, run by the real binary with real keys.
// Fingerprints, commits, dates, key user IDs (which name the machine)
// and the sandbox's path are replaced by placeholders.
func TestSecretsTranscriptGolden(t *testing.T) {
	s := newSandbox(t)
	s.commitAll("init")
	w1 := s.exportKey(filepath.Join(s.root, "w1"), "w1.asc")
	w2 := s.exportKey(filepath.Join(s.root, "w2"), "w2.asc")
	var b strings.Builder
	run := func(stdin string, args ...string) {
		t.Helper()
		if stdin != "" {
			fmt.Fprintf(&b, "$ printf %q | ", stdin)
		} else {
			b.WriteString("$ ")
		}
		fmt.Fprintf(&b, "refci %s\n", strings.Join(args, " "))
		r := s.refciAs(s.home, stdin, args...)
		fmt.Fprintf(&b, "%s%s[exit %d]\n", r.stdout, r.stderr, r.code)
	}
	for _, args := range [][]string{
		{"secrets"}, {"secrets", "frob"}, {"secrets", "help"},
		{"secrets", "recipients"}, {"secrets", "recipients", "frob"},
		{"secrets", "init"}, {"secrets", "init", "dev"},
		{"secrets", "init", "../x", "--recipient", w1},
		{"secrets", "list", "nothere"},
		{"secrets", "init", "dev", "--recipient", w1, "--request", "main", "--export", "TOKEN"},
		{"secrets", "init", "dev", "--recipient", w1},
	} {
		run("", args...)
	}
	run("value-1", "secrets", "set", "dev")
	run("value-1", "secrets", "set", "dev", "bad-name")
	run("short", "secrets", "set", "dev", "TOKEN")
	run("value-1", "secrets", "set", "dev", "TOKEN")
	run("value-2\n", "secrets", "set", "dev", "OTHER")
	run("value-3", "secrets", "set", "nothere", "TOKEN")
	for _, args := range [][]string{
		{"secrets", "get", "dev", "TOKEN"}, {"secrets", "get", "dev", "NOPE"},
		{"secrets", "get", "dev", "TOKEN", "--key", filepath.Join(s.root, "w2", "key.asc")},
		{"secrets", "list", "dev"}, {"secrets", "history", "dev"},
		{"secrets", "recipients", "add", "dev", w2}, {"secrets", "recipients", "add", "dev", w2},
		{"secrets", "recipients", "remove", "dev", w2}, {"secrets", "recipients", "remove", "dev", w2},
		{"secrets", "policy", "dev", "--request", "release/*", "--allow-untrusted"},
		{"secrets", "policy", "dev", "--export", "bad name"},
		{"secrets", "list", "dev"},
		{"secrets", "set", "dev", "X", "Y"}, {"secrets", "get", "dev", "TOKEN", "extra"},
		{"secrets", "list", "dev", "--repo", filepath.Join(s.root, "nothere")},
		{"secrets", "list", "dev", "--bogus"},
		{"secrets", "set", "-h"}, {"secrets", "recipients", "add", "-h"},
	} {
		run("", args...)
	}
	got := b.String()
	for _, r := range []struct{ re, to string }{
		{regexp.QuoteMeta(s.root), "ROOT"},
		{`  [0-9A-F]{40}  .*`, "  FPR  KEY"},
		{`refci [^ ]+@[^ ]+ <[^>]+>`, "ADMIN"},
		{`[0-9A-F]{40}`, "FPR"},
		{`[0-9a-f]{12,40}`, "HASH"},
		{`\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC`, "DATE"},
	} {
		got = regexp.MustCompile(r.re).ReplaceAllString(got, r.to)
	}
	p := filepath.Join("testdata", "secrets", "transcript.txt")
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
		t.Errorf("refci secrets' transcript differs from %s (go test -update to accept):\n%s", p, got)
	}
}
