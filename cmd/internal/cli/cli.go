// Package cli is the command-line machinery the refci binaries share
// (cmd/refci, and cmd/refci-forge which holds refci mirror and refci
// mail): the streams and environment a command gets, the dispatch of a
// command table (Table), the exit codes and which errors map to them
// (AsUsage, ExitFor), a command's help and flags, GNU-style flag
// parsing, configuration files with unknown-setting checks, refci's home
// and key, terminals and colour, and two-stage signal handling. It knows
// nothing of CI: each binary lists its own commands and wires the rest.
package cli

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/term"

	"refci.dev/refci/render"
)

// Exit codes, the same for every command of every refci binary.
const (
	ExitOK     = 0 // success
	ExitFailed = 1 // the pipeline failed (or was cancelled)
	ExitUsage  = 2 // usage or configuration error
	ExitInfra  = 3 // infrastructure error: git, disk, keys, an incomplete installation
)

// ExitCodesLine is the line of the global help that explains the exit
// codes.
const ExitCodesLine = "Exit codes: 0 success, 1 pipeline failed, 2 usage or configuration, 3 infrastructure."

// Env is what a command gets: its streams, the process environment and
// the name it is known by in messages ("refci"). The zero value is not
// usable: Stdout, Stderr and Getenv must be set; Stdin may be nil (no
// input). An Env is safe for concurrent use when its writers are.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	// Program prefixes error messages; "" is "refci".
	Program string
}

func (e *Env) program() string {
	if e.Program == "" {
		return "refci"
	}
	return e.Program
}

// Errorf prints one error line to stderr, prefixed with the program's
// name. Control characters in it are escaped (render.SafeLines): an
// error may quote what a remote, a ref name or a result said, and none
// of that may move the cursor or fake a line on the user's terminal.
func (e *Env) Errorf(format string, args ...any) {
	fmt.Fprintln(e.Stderr, render.SafeLines(e.program()+": "+fmt.Sprintf(format, args...)))
}

// IsTerminal reports whether w is an *os.File open on a terminal. Other
// character devices (/dev/null) are not terminals.
func IsTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// Color reports whether output to w may be coloured: w is a terminal,
// NO_COLOR is unset or empty, and TERM is not "dumb".
func (e *Env) Color(w any) bool {
	return IsTerminal(w) && e.Getenv("NO_COLOR") == "" && e.Getenv("TERM") != "dumb"
}
