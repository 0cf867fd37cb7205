package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"refci.dev/refci/cmd/internal/cli"
	"refci.dev/refci/cmd/internal/forgecmd"
	"refci.dev/refci/lightbin"
)

// forgeCommand is a command refci-forge runs (refci mirror, refci mail):
// refci lists it, and running it, its help included, execs refci-forge.
func forgeCommand(c cli.Command) command {
	return command{c.Name, c.Synopsis, c.Summary, "", true, func(_ context.Context, e *env, args []string) int {
		return execForge(e, c.Name, args)
	}}
}

// isForgeCommand reports whether refci-forge runs the command name.
func isForgeCommand(name string) bool {
	for _, c := range forgecmd.Commands() {
		if c.Name == name {
			return true
		}
	}
	return false
}

// execForge replaces this process with refci-forge running the command
// name with args: its signals, streams and exit status are the
// command's. It returns only when refci-forge cannot be run, having said
// why and what to do.
func execForge(e *env, name string, args []string) int {
	path, code := findForge(e, name)
	if path == "" {
		return code
	}
	err := syscall.Exec(path, append([]string{path, name}, args...), os.Environ())
	e.errorf("%s: cannot run %s: %v; reinstall refci with make build", name, path, err)
	return exitInfra
}

// findForge finds refci-forge beside this refci, of its build. When it
// is not there it says so for what (a command, or the worker's
// configuration), with what to do, and returns "" and the exit code.
func findForge(e *env, what string) (string, int) {
	self, err := os.Executable()
	if err != nil {
		e.errorf("%s: cannot find this refci's executable to find %s beside it: %v", what, forgecmd.Binary, err)
		return "", exitInfra
	}
	path, note := lightbin.Beside(self, forgecmd.Binary)
	if path == "" {
		if note == "" {
			note = forgecmd.Binary + " is not in " + filepath.Dir(self)
		}
		e.errorf("%s: %s runs in %s, installed beside refci, and %s; make build puts bin/%s beside bin/refci (copy both when installing)", what, forgeWhat(what), forgecmd.Binary, note, forgecmd.Binary)
		return "", exitInfra
	}
	if err := forgeOfThisBuild(path); err != nil {
		e.errorf("%s: %v", what, err)
		return "", exitInfra
	}
	return path, exitOK
}

// forgeOfThisBuild says what is wrong when the refci-forge at path is
// not of this refci's build.
func forgeOfThisBuild(path string) error {
	if ok, note := lightbin.OfThisBuild(path, forgecmd.Package); !ok {
		return fmt.Errorf("%s; install refci and %s of one build (make build puts both in bin/)", note, forgecmd.Binary)
	}
	return nil
}

// forgeWhat is what runs in refci-forge, for findForge's message.
func forgeWhat(what string) string {
	if isForgeCommand(what) {
		return "refci " + what
	}
	return "the forges and the mail bridge"
}
