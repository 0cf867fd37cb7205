package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/forge/link"
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
		Poll link.Duration `toml:"poll"`
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
	devNull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
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

// A Table answers the global help, 'help [NAME]' and 'NAME -h' for the
// commands that do not parse their own flags, says an unknown name with
// the names, and passes the rest of the arguments to the command.
func TestTable(t *testing.T) {
	var got []string
	runner := func(name string) func(context.Context, []string) int {
		return func(_ context.Context, args []string) int {
			got = append(got, name+" "+strings.Join(args, " "))
			return 7
		}
	}
	own := Command{Program: "refci", Name: "own", Synopsis: "[--x]", Summary: "parses its flags"}
	plain := Command{Program: "refci", Name: "plain", Synopsis: "ARG", Summary: "answers no flags", Detail: "More.\n"}
	tab := Table{Title: "refci: a demo", Commands: []Entry{{own, true, runner("own")}, {plain, false, runner("plain")}}}
	var global bytes.Buffer
	Usage(&global, tab.Title, []Command{own, plain})
	plainHelp := "Usage: refci plain ARG\n\nanswers no flags\n\nMore.\n"
	for _, tc := range []struct {
		args           []string
		code           int
		ran            string
		stdout, stderr string
	}{
		{nil, ExitUsage, "", "", global.String()},
		{[]string{"-h"}, ExitOK, "", global.String(), ""},
		{[]string{"help"}, ExitOK, "", global.String(), ""},
		{[]string{"help", "plain"}, ExitOK, "", plainHelp, ""},
		{[]string{"plain", "--help"}, ExitOK, "", plainHelp, ""},
		{[]string{"help", "own"}, 7, "own -h", "", ""},
		{[]string{"own", "-h", "a"}, 7, "own -h a", "", ""},
		{[]string{"plain", "a", "-h"}, 7, "plain a -h", "", ""},
		{[]string{"help", "nosuch"}, ExitUsage, "", "", "refci: help: want one command name, one of: own plain\n"},
		{[]string{"help", "own", "plain"}, ExitUsage, "", "", "refci: help: want one command name, one of: own plain\n"},
		{[]string{"nosuch", "own"}, ExitUsage, "", "", "refci: unknown command \"nosuch\"; the commands: own plain (run 'refci help' for the list)\n"},
	} {
		got = nil
		e, out, errb := testEnv()
		code := tab.Run(context.Background(), e, tc.args)
		if code != tc.code || strings.Join(got, ",") != tc.ran || out.String() != tc.stdout || errb.String() != tc.stderr {
			t.Errorf("%q: exit %d, ran %q, stdout %q, stderr %q", tc.args, code, got, out.String(), errb.String())
		}
	}
	if c, ok := tab.Lookup("plain"); !ok || c.Name != "plain" || c.OwnFlags {
		t.Errorf("Lookup(plain): %+v %v", c, ok)
	}
	if _, ok := tab.Lookup("nosuch"); ok {
		t.Errorf("Lookup(nosuch) found one")
	}
}

// Colour only on a terminal, and not when NO_COLOR is set or TERM is
// dumb; a pipe, a file, /dev/null or a buffer is no terminal.
func TestColor(t *testing.T) {
	pts := openPTY(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	file, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	devNull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	vars := map[string]string{}
	e := &Env{Getenv: func(k string) string { return vars[k] }}
	for _, tc := range []struct {
		w            any
		noColor, trm string
		term, color  bool
	}{
		{pts, "", "xterm", true, true},
		{pts, "1", "xterm", true, false},
		{pts, "", "dumb", true, false},
		{w, "", "xterm", false, false},
		{file, "", "xterm", false, false},
		{devNull, "", "xterm", false, false}, // a character device, not a terminal
		{&bytes.Buffer{}, "", "xterm", false, false},
	} {
		vars["NO_COLOR"], vars["TERM"] = tc.noColor, tc.trm
		if IsTerminal(tc.w) != tc.term || e.Color(tc.w) != tc.color {
			t.Errorf("%T NO_COLOR=%q TERM=%q: terminal %v, colour %v", tc.w, tc.noColor, tc.trm, IsTerminal(tc.w), e.Color(tc.w))
		}
	}
}

// An error is the user's to fix when AsUsage marked it, even wrapped, or
// when it is one the caller names; the rest are the infrastructure's.
func TestExitFor(t *testing.T) {
	errConfig := errors.New("bad configuration")
	inner := errors.New("no such environment")
	marked := fmt.Errorf("secrets: %w", AsUsage(inner))
	if AsUsage(nil) != nil {
		t.Errorf("AsUsage(nil) = %v", AsUsage(nil))
	}
	if marked.Error() != "secrets: no such environment" || !errors.Is(marked, inner) || !errors.Is(marked, ErrUsage) {
		t.Errorf("marked: %q, Is(inner) %v, Is(ErrUsage) %v", marked, errors.Is(marked, inner), errors.Is(marked, ErrUsage))
	}
	for _, tc := range []struct {
		err  error
		want int
	}{
		{marked, ExitUsage},
		{fmt.Errorf("load: %w", errConfig), ExitUsage},
		{keyError{errors.New("key")}, ExitUsage},
		{inner, ExitInfra},
		{errors.New("disk full"), ExitInfra},
	} {
		if got := ExitFor(tc.err, errConfig, ErrKeyConfig); got != tc.want {
			t.Errorf("ExitFor(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	if got := ExitFor(keyError{errors.New("key")}); got != ExitInfra {
		t.Errorf("ExitFor(a key error) without ErrKeyConfig named = %d, want %d", got, ExitInfra)
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

// An error quoting a hostile remote's text reaches the terminal with its
// escape sequences escaped, its lines kept.
func TestErrorfEscapes(t *testing.T) {
	e, _, errb := testEnv()
	e.Errorf("push failed: %s", "remote: \x1b]0;owned\x07\nremote: done")
	if got, want := errb.String(), "refci: push failed: remote: \\x1b]0;owned\\x07\nremote: done\n"; got != want {
		t.Errorf("printed %q, want %q", got, want)
	}
}
