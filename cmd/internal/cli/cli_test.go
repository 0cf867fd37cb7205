package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testEnv() (*Env, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	return &Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }, Program: "refci"}, &out, &errb
}

// Parse takes flags before and after positional arguments, stops at --,
// answers -h with the command's help and says usage errors with the
// usage line.
func TestParse(t *testing.T) {
	c := Command{Program: "refci", Name: "demo", Synopsis: "[--repo DIR] [-n N] [REV]", Summary: "a demo", Detail: "More.\n"}
	for _, tc := range []struct {
		args           []string
		max            int
		pos            string
		code           int
		ok             bool
		stdout, stderr string
	}{
		{[]string{"a", "--repo", "r", "-n", "3"}, 1, "a", 0, true, "", ""},
		{[]string{"-n", "3", "--", "-x", "y"}, 2, "-x y", 0, true, "", ""},
		{[]string{"a", "b"}, 1, "", ExitUsage, false, "", "refci: demo: too many arguments: a b\nUsage: refci demo [--repo DIR] [-n N] [REV] (see 'refci help demo')\n"},
		{[]string{"--bogus"}, 1, "", ExitUsage, false, "", "refci: demo: flag provided but not defined: -bogus\nUsage: refci demo [--repo DIR] [-n N] [REV] (see 'refci help demo')\n"},
		{[]string{"-h"}, 1, "", ExitOK, false, "Usage: refci demo [--repo DIR] [-n N] [REV]\n\na demo\n\nFlags:\n  -n N\n        how many (default 5)\n  --repo DIR\n        the repository\n\nMore.\n", ""},
	} {
		e, out, errb := testEnv()
		fs := NewFlags(c)
		fs.String("repo", "", "the repository")
		fs.Int("n", 5, "how many")
		pos, code, ok := Parse(e, fs, tc.args, tc.max)
		if strings.Join(pos, " ") != tc.pos || code != tc.code || ok != tc.ok || out.String() != tc.stdout || errb.String() != tc.stderr {
			t.Errorf("%q: %q %d %v, stdout %q, stderr %q", tc.args, pos, code, ok, out.String(), errb.String())
		}
	}
}

// ReadConfig says an unknown setting with the known ones, unless ignore
// leaves it to another program; a duration that is not one says how to
// write it.
func TestReadConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.toml")
	var v struct {
		Poll Duration `toml:"poll"`
	}
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("poll = \"2m\"\n[other]\nx = 1\n")
	if _, err := DecodeConfig(file, &v, "poll", func(k []string) bool { return k[0] == "other" }); err != nil || v.Poll.Duration != 2*time.Minute {
		t.Errorf("%v, %v", v.Poll, err)
	}
	e, _, errb := testEnv()
	if _, ok := ReadConfig(e, file, &v, "poll", nil); ok || errb.String() != "refci: config "+file+": unknown setting \"other\"; known: poll\n" {
		t.Errorf("%v: %q", ok, errb.String())
	}
	write("poll = \"often\"\n")
	if _, err := DecodeConfig(file, &v, "poll", nil); err == nil || !strings.Contains(err.Error(), `"often" is not a duration (write e.g. "10s", "2m")`) {
		t.Errorf("%v", err)
	}
}

// Home: $REFCI_HOME, else $XDG_CONFIG_HOME/refci, else ~/.config/refci.
func TestHome(t *testing.T) {
	vars := map[string]string{}
	e := &Env{Getenv: func(k string) string { return vars[k] }}
	t.Setenv("HOME", "/home/alice")
	for _, tc := range []struct{ refci, xdg, want string }{{"/r", "/x", "/r"}, {"", "/x", "/x/refci"}, {"", "", "/home/alice/.config/refci"}} {
		vars["REFCI_HOME"], vars["XDG_CONFIG_HOME"] = tc.refci, tc.xdg
		if h, err := e.Home(); err != nil || h != tc.want {
			t.Errorf("%+v: %q, %v", tc, h, err)
		}
	}
}

func TestLoggerWritesToStderrAtItsLevel(t *testing.T) {
	e, out, errb := testEnv()
	e.Logger(false).Debug("hidden")
	e.Logger(false).Info("shown", "k", "v")
	e.Logger(true).Debug("verbose")
	if s := errb.String(); strings.Contains(s, "hidden") || !strings.Contains(s, "level=INFO msg=shown k=v") || !strings.Contains(s, "level=DEBUG msg=verbose") || out.Len() != 0 {
		t.Errorf("stderr %q, stdout %q", s, out.String())
	}
}
