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
	"strings"

	"refci.dev/refci/cmd/internal/cli"
	"refci.dev/refci/cmd/internal/forgecmd"
	"refci.dev/refci/forge/forgeconf"
	"refci.dev/refci/forge/link"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// forgeKinds are the forge adapters [[forge]] entries may name.
var forgeKinds = forgeconf.Kinds()

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// command is one command of refci-forge: its help (forgecmd's) and what
// runs it.
type command struct {
	cli.Command
	run func(ctx context.Context, e *cli.Env, args []string) int
}

func commands() []command {
	return []command{{forgecmd.Mirror, cmdMirror}, {forgecmd.Mail, cmdMail}}
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &cli.Env{Stdin: stdin, Stdout: stdout, Stderr: stderr, Getenv: os.Getenv, Program: "refci"}
	if len(args) == 0 {
		usage(stderr)
		return cli.ExitUsage
	}
	switch {
	case cli.IsHelp(args[0]):
		usage(stdout)
		return cli.ExitOK
	case args[0] == "--version" || args[0] == "version":
		fmt.Fprintf(stdout, "refci-forge %s\n", version)
		return cli.ExitOK
	case args[0] == link.Mode:
		return cmdLink(ctx, e, args[1:])
	case args[0] == "help" && len(args) == 2:
		args = []string{args[1], "-h"}
	}
	var names []string
	for _, c := range commands() {
		if c.Name == args[0] {
			return c.run(ctx, e, args[1:])
		}
		names = append(names, c.Name)
	}
	e.Errorf("unknown command %q; refci-forge runs %s for refci (see 'refci help')", args[0], strings.Join(names, " "))
	return cli.ExitUsage
}

func usage(w io.Writer) {
	cli.Usage(w, "refci-forge: the forges and the mail bridge of refci, run as these refci commands and by refci worker", forgecmd.Commands())
}
