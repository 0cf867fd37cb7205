// Command refci is a CI that lives in git refs: `refci run` runs the
// repository's .refci/run on a clean checkout and records an
// OpenPGP-signed result commit under refs/ci/runs/.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"refci.dev/refci/cmd/internal/cli"
	"refci.dev/refci/cmd/internal/forgecmd"
	"refci.dev/refci/gitproto/sshd"
	"refci.dev/refci/worker/proc"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes, the same for every command (cli's).
const (
	exitOK      = cli.ExitOK
	exitFailed  = cli.ExitFailed
	exitUsage   = cli.ExitUsage
	exitInfra   = cli.ExitInfra
	programName = "refci"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == proc.ShimArg {
		// A worker's per-run supervisor: before anything else, it is on
		// every run's start-up path.
		os.Exit(proc.ShimMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == sshd.HookArg {
		// receive-pack's hooks under `refci serve`.
		os.Exit(sshd.HookMain(os.Args[2:]))
	}
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// env is what every subcommand gets: streams and the process environment.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
}

// cli is e as the shared command-line machinery takes it.
func (e *env) cli() *cli.Env {
	return &cli.Env{Stdin: e.stdin, Stdout: e.stdout, Stderr: e.stderr, Getenv: e.getenv, Program: programName}
}

func (e *env) errorf(format string, args ...any) { e.cli().Errorf(format, args...) }

// command is one subcommand. Its synopsis and summary are the one source
// of its usage: the global list, 'refci help NAME', 'refci NAME -h' and
// the usage line of its errors are all made from them (see cli.Command).
type command struct {
	name     string
	synopsis string // what follows "refci NAME"
	summary  string // one line
	detail   string // more help after the flags (optional)
	// ownFlags: run parses its arguments with newFlags, which answers -h;
	// else run answers -h from this table.
	ownFlags bool
	run      func(ctx context.Context, e *env, args []string) int
}

// cli is what the help says of c.
func (c command) cli() cli.Command {
	return cli.Command{Program: programName, Name: c.name, Synopsis: c.synopsis, Summary: c.summary, Detail: c.detail}
}

func commands() []command {
	return []command{
		{"init", "[--repo DIR] [--force]", "write a starter .refci/run", "", true, cmdInit},
		{"run", "[--repo DIR] [--env NAME] [--timeout DUR] [--isolate] [-q] [FLAGS] [REV]", "run .refci/run of REV (default HEAD) in a clean checkout and record a signed result", "", true, cmdRun},
		{"status", "[--repo DIR] [--json] [--remote R] [REV|RUN]", "show the state of the latest run of REV (default HEAD), or of RUN", "", true, cmdStatus},
		{"log", "[--repo DIR] [--job NAME] [-f] [--remote R] [REV|RUN|REQUEST]", "print the output of a run; -f follows one on a remote", "", true, cmdLog},
		{"runs", "[--repo DIR] [--all] [-n N] [--page P] [REV]", "list the runs of REV (default HEAD), newest first, a page of 100 at a time", "", true, cmdRuns},
		{"fetch", "[--repo DIR] [--remote R] [REV...]", "fetch the runs of REV (default HEAD), and only those, from a remote", "", true, cmdFetch},
		{"view", "[--repo DIR] [-o DIR] [--keyring FILE]... [--open]", "write a static site of every fetched run (default .git/refci-view/) and print its path", "", true, cmdView},
		{"verify", "[--repo DIR] [--keyring FILE]... [--key FILE] [--remote R] [REV|RUN]", "check the signatures of every commit of a run", "", true, cmdVerify},
		{"gc", "[--repo DIR] [--remote R] [--keep-last N] [--keep-days D] [--dry-run] [-v]", "delete the run refs beyond a retention policy, here or on a remote", gcHelp, true, cmdGC},
		{"worker", "--remote URL... | --config FILE [FLAGS]", "poll remotes for requests, run them, push signed results", "", true, cmdWorker},
		{"serve", "[--listen ADDR] [--data DIR] [--admin FILE]... [--http ADDR] [FLAGS]", "be the git remote over SSH, with an embedded worker: pushed requests run at once", "", true, cmdServe},
		forgeCommand(forgecmd.Mirror),
		forgeCommand(forgecmd.Mail),
		{"trigger", "[--repo DIR] [--remote R] [--name N] [--env E] [--timeout DUR] [--wait] [REV]", "push a request for REV (default HEAD); --wait follows the run", "", true, cmdTrigger},
		{"keys", "show|export [--key FILE]", "show or export this machine's refci key", "", true, cmdKeys},
		{"job", "NAME [--needs A,B] -- CMD ARGS...", "inside a pipeline: run one job and record it", "", false, cmdJob},
		{"secrets", "init|set|get|list|history|recipients|policy ENV ...", "manage a secrets environment (refs/ci/secrets/ENV)", secretsHelp, false, cmdSecrets},
		{"secret", "NAME", "inside a pipeline: print secret NAME of the run's environment", "", false, cmdSecret},
		{"version", "", "print the version", "", false, cmdVersion},
	}
}

// table is refci's commands as cli dispatches them, run with e.
func table(e *env) cli.Table {
	t := cli.Table{Title: "refci: CI in git refs"}
	for _, c := range commands() {
		t.Commands = append(t.Commands, cli.Entry{Command: c.cli(), OwnFlags: c.ownFlags, Run: func(ctx context.Context, args []string) int {
			return c.run(ctx, e, args)
		}})
	}
	return t
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr, getenv: os.Getenv}
	if len(args) > 0 && args[0] == "--version" {
		return cmdVersion(ctx, e, nil)
	}
	return table(e).Run(ctx, e.cli(), args)
}

func cmdVersion(_ context.Context, e *env, _ []string) int {
	fmt.Fprintf(e.stdout, "refci %s\n", version)
	return exitOK
}

// newFlags makes the FlagSet of command name (in the table), whose -h
// prints the command's help once, to stdout.
func newFlags(e *env, name string) *flag.FlagSet {
	c, ok := table(e).Lookup(name)
	if !ok {
		panic("refci: newFlags of a command not in the table: " + name)
	}
	return cli.NewFlags(c.Command)
}

// usageError reports a usage error of fs's command: the message, and the
// command's usage line.
func usageError(e *env, fs *flag.FlagSet, format string, args ...any) int {
	return cli.UsageError(e.cli(), fs, format, args...)
}

// parse parses flags that may come before or after positional arguments
// (git's style); "--" ends flags (see cli.Parse).
func parse(e *env, fs *flag.FlagSet, args []string, maxPos int) ([]string, int, bool) {
	return cli.Parse(e.cli(), fs, args, maxPos)
}

type multiFlag = cli.MultiFlag
