// Command refci-forge runs refci's views outward, apart from the refci
// binary so that refci, which starts on every run, job and hook, does
// not carry the forge adapters and the mail bridge (their clients are
// most of a binary's size and start time). It runs
//
//	refci mirror ...   as refci-forge mirror ... (refci execs it)
//	refci mail ...     as refci-forge mail ...
//	refci worker       with [[forge]] or [mail]: refci-forge link, its
//	                   supervised child (see package forge/link)
//
// It lies beside refci (make build puts both in bin/) and must be of the
// same build.
package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"refci.dev/refci/cmd/internal/cli"
	"refci.dev/refci/cmd/internal/forgecmd"
	"refci.dev/refci/forge/forgeconf"
	"refci.dev/refci/forge/link"
	"refci.dev/refci/worker/proc"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// forgeKinds are the forge adapters [[forge]] entries may name.
var forgeKinds = forgeconf.Kinds()

func main() {
	// It holds the forges' tokens, a GitHub App's key and the mail
	// password, and runs beside pipelines of the same user: as the worker
	// does, it makes itself non-dumpable, so that none can attach to it
	// or read its memory or, through /proc/PID/root, the files hidden
	// from pipelines (exec made it dumpable again).
	proc.SetNotDumpable()
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// table is refci-forge's commands: their help (forgecmd's) and what runs
// them.
func table(e *cli.Env) cli.Table {
	run := map[string]func(context.Context, *cli.Env, []string) int{forgecmd.Mirror.Name: cmdMirror, forgecmd.Mail.Name: cmdMail}
	t := cli.Table{Title: "refci-forge: the forges and the mail bridge of refci, run as these refci commands and by refci worker"}
	for _, c := range forgecmd.Commands() {
		t.Commands = append(t.Commands, cli.Entry{Command: c, OwnFlags: true, Run: func(ctx context.Context, args []string) int {
			return run[c.Name](ctx, e, args)
		}})
	}
	return t
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &cli.Env{Stdin: stdin, Stdout: stdout, Stderr: stderr, Getenv: os.Getenv, Program: "refci"}
	t := table(e)
	if len(args) == 0 {
		t.Usage(stderr)
		return cli.ExitUsage
	}
	switch {
	case args[0] == "--version" || args[0] == "version":
		fmt.Fprintf(stdout, "refci-forge %s\n", version)
		return cli.ExitOK
	case args[0] == link.Mode:
		return cmdLink(ctx, e, args[1:])
	case args[0] == "help" && len(args) == 2:
		args = []string{args[1], "-h"}
	}
	if _, ok := t.Lookup(args[0]); !ok && !cli.IsHelp(args[0]) {
		e.Errorf("unknown command %q; refci-forge runs %s for refci (see 'refci help')", args[0], t.Names())
		return cli.ExitUsage
	}
	return t.Run(ctx, e, args)
}
