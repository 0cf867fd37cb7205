package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
)

// Command is what the help says of one subcommand. Its synopsis and
// summary are the one source of its usage: the global list, 'refci help
// NAME', 'refci NAME -h' and the usage line of its errors are all made
// from them. Flags are written GNU-style: --name for long ones, -x for
// one-letter ones (Go's flag package accepts either dash for both).
type Command struct {
	Program  string // "refci"
	Name     string
	Synopsis string // what follows "refci NAME"
	Summary  string // one line
	Detail   string // more help after the flags (optional)
}

// UsageLine is "refci NAME SYNOPSIS".
func (c Command) UsageLine() string {
	return strings.TrimSpace(c.Program + " " + c.Name + " " + c.Synopsis)
}

// Help writes the command's help: usage, summary, flags (fs, when it has
// any), details.
func (c Command) Help(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: %s\n", c.UsageLine())
	if c.Summary != "" {
		fmt.Fprintf(w, "\n%s\n", c.Summary)
	}
	if fs != nil {
		c.printFlags(w, fs)
	}
	if c.Detail != "" {
		fmt.Fprintf(w, "\n%s", c.Detail)
	}
}

// Usage writes a program's global help: its title, then the usage line
// and summary of each command, the exit codes and where to read more.
func Usage(w io.Writer, title string, cmds []Command) {
	fmt.Fprintf(w, "%s\n\nUsage:\n", title)
	for _, c := range cmds {
		fmt.Fprintf(w, "  %s\n      %s\n", c.UsageLine(), c.Summary)
	}
	fmt.Fprintf(w, "\n%s\n", ExitCodesLine)
	prog := "refci"
	if len(cmds) > 0 {
		prog = cmds[0].Program
	}
	fmt.Fprintf(w, "Run '%s help COMMAND' or '%s COMMAND -h' for a command's flags.\n", prog, prog)
}

// IsHelp reports whether arg asks for help.
func IsHelp(arg string) bool { return arg == "-h" || arg == "--help" || arg == "-help" }

// FlagName is how help shows a flag: -x for one letter, else --name.
func FlagName(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// flagArg is the name of flag's argument: as the synopsis writes it
// ("--repo DIR"), else from its type (Go's flag package names it typ).
func (c Command) flagArg(flag, typ string) string {
	f := strings.Fields(strings.NewReplacer("[", " ", "]", " ", "|", " ").Replace(c.Synopsis))
	for i := 0; i+1 < len(f); i++ {
		if f[i] == FlagName(flag) && typ != "" && strings.ToUpper(f[i+1]) == f[i+1] && !strings.HasPrefix(f[i+1], "-") {
			return strings.TrimSuffix(f[i+1], "...")
		}
	}
	if typ == "" {
		return ""
	}
	if a, ok := flagArgs[flag]; ok {
		return a
	}
	switch typ {
	case "duration":
		return "DUR"
	case "int", "int64", "uint":
		return "N"
	case "value":
		return "VALUE"
	}
	return strings.ToUpper(typ)
}

// flagArgs names the arguments of flags that several commands share.
var flagArgs = map[string]string{
	"repo": "DIR", "cache": "DIR", "data": "DIR", "key": "FILE", "admin": "FILE", "trusted": "FILE",
	"secrets-admin": "FILE", "roles": "FILE", "keyring": "FILE", "recipient": "FILE", "max-pack": "SIZE", "keep-days": "D",
}

// printFlags lists fs's flags, sorted, with their defaults when they are
// not the zero value.
func (c Command) printFlags(w io.Writer, fs *flag.FlagSet) {
	first := true
	fs.VisitAll(func(f *flag.Flag) {
		if first {
			fmt.Fprintf(w, "\nFlags:\n")
			first = false
		}
		arg, text := flag.UnquoteUsage(f)
		arg = c.flagArg(f.Name, arg)
		line := "  " + FlagName(f.Name)
		if arg != "" {
			line += " " + arg
		}
		switch f.DefValue {
		case "", "false", "0", "0s", "[]":
		default:
			if reflect.TypeOf(f.Value).String() == "*flag.stringValue" {
				text += fmt.Sprintf(" (default %q)", f.DefValue)
			} else {
				text += fmt.Sprintf(" (default %s)", f.DefValue)
			}
		}
		fmt.Fprintf(w, "%s\n        %s\n", line, text)
	})
}

// NewFlags makes the FlagSet of c (a command, or a subcommand made for
// the occasion, as 'secrets set'), whose -h Parse answers with c's help,
// once, to stdout.
func NewFlags(c Command) *flag.FlagSet {
	fs := flag.NewFlagSet(c.Name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	// The flag package calls Usage on -h and on errors; Parse prints the
	// help, or the error and the usage line, itself.
	fs.Usage = func() {}
	flagCommands.Lock()
	flagCommands.m[fs] = c
	flagCommands.Unlock()
	return fs
}

// flagCommands is the command of each FlagSet NewFlags made.
var flagCommands = struct {
	sync.Mutex
	m map[*flag.FlagSet]Command
}{m: map[*flag.FlagSet]Command{}}

// CommandOf is the command NewFlags made fs for (the zero Command for
// another FlagSet).
func CommandOf(fs *flag.FlagSet) Command {
	flagCommands.Lock()
	defer flagCommands.Unlock()
	return flagCommands.m[fs]
}

// UsageError reports a usage error of fs's command: the message, and the
// command's usage line. It returns ExitUsage.
func UsageError(e *Env, fs *flag.FlagSet, format string, args ...any) int {
	e.Errorf("%s: "+format, append([]any{fs.Name()}, args...)...)
	c := CommandOf(fs)
	fmt.Fprintf(e.Stderr, "Usage: %s (see '%s help %s')\n", c.UsageLine(), c.Program, strings.Fields(fs.Name())[0])
	return ExitUsage
}

// Parse parses flags that may come before or after positional arguments
// (git's style); "--" ends flags. It returns the positional arguments, or
// an exit code when parsing ended the command (-h, or an error already
// reported).
func Parse(e *Env, fs *flag.FlagSet, args []string, maxPos int) ([]string, int, bool) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				CommandOf(fs).Help(e.Stdout, fs)
				return nil, ExitOK, false
			}
			return nil, UsageError(e, fs, "%v", err), false
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > 0 && len(rest) < len(args) && args[len(args)-len(rest)-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if len(pos) > maxPos {
		return nil, UsageError(e, fs, "too many arguments: %s", strings.Join(pos, " ")), false
	}
	return pos, 0, true
}

// MultiFlag is a repeatable string flag: each use adds a value. The zero
// value is no values.
type MultiFlag []string

// String is the values, separated by commas.
func (m *MultiFlag) String() string { return strings.Join(*m, ",") }

// Set adds v.
func (m *MultiFlag) Set(v string) error { *m = append(*m, v); return nil }
