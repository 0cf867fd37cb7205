package cli

import (
	"context"
	"io"
	"strings"
)

// Entry is one command of a program's Table: its help and what runs it.
type Entry struct {
	Command
	// OwnFlags says that Run parses its arguments with NewFlags, which
	// answers -h (so 'help NAME' runs it with -h); else the table
	// answers 'NAME -h' and 'help NAME' with the command's help, without
	// flags.
	OwnFlags bool
	// Run runs the command with the arguments after its name and
	// returns the exit code.
	Run func(ctx context.Context, args []string) int
}

// Table is a program's commands, in the order its global help lists
// them, and the dispatch to them: the global help, 'help [NAME]', 'NAME
// -h', and the error of an unknown name. The zero value has no
// commands. A Table is safe for concurrent use when its commands are.
type Table struct {
	Title    string // the first line of the global help ("refci: CI in git refs")
	Commands []Entry
}

// Lookup returns the command name.
func (t Table) Lookup(name string) (Entry, bool) {
	for _, c := range t.Commands {
		if c.Name == name {
			return c, true
		}
	}
	return Entry{}, false
}

// Names is the names of the commands, in order, separated by spaces.
func (t Table) Names() string {
	var names []string
	for _, c := range t.Commands {
		names = append(names, c.Name)
	}
	return strings.Join(names, " ")
}

// Usage writes the global help (see Usage).
func (t Table) Usage(w io.Writer) {
	var cmds []Command
	for _, c := range t.Commands {
		cmds = append(cmds, c.Command)
	}
	Usage(w, t.Title, cmds)
}

// Run runs the command args[0] with the rest of args. No arguments print
// the global help to stderr and return ExitUsage; -h or --help print it
// to stdout; 'help [NAME]' is Help; an unknown name is a usage error
// that lists the names. A command that does not parse its own flags
// has 'NAME -h' answered with its help.
func (t Table) Run(ctx context.Context, e *Env, args []string) int {
	if len(args) == 0 {
		t.Usage(e.Stderr)
		return ExitUsage
	}
	switch {
	case IsHelp(args[0]):
		t.Usage(e.Stdout)
		return ExitOK
	case args[0] == "help":
		return t.Help(ctx, e, args[1:])
	}
	c, ok := t.Lookup(args[0])
	if !ok {
		e.Errorf("unknown command %q; the commands: %s (run '%s help' for the list)", args[0], t.Names(), e.program())
		return ExitUsage
	}
	if !c.OwnFlags && len(args) > 1 && IsHelp(args[1]) {
		c.Help(e.Stdout, nil)
		return ExitOK
	}
	return c.Run(ctx, args[1:])
}

// Help is the command 'PROGRAM help [NAME]': without NAME the global
// help, else the command's, to stdout; anything but one known name is a
// usage error.
func (t Table) Help(ctx context.Context, e *Env, args []string) int {
	if len(args) == 0 {
		t.Usage(e.Stdout)
		return ExitOK
	}
	c, ok := t.Lookup(args[0])
	if len(args) > 1 || !ok {
		e.Errorf("help: want one command name, one of: %s", t.Names())
		return ExitUsage
	}
	if !c.OwnFlags {
		c.Help(e.Stdout, nil)
		return ExitOK
	}
	return c.Run(ctx, []string{"-h"})
}
