// Command refci is a CI that lives in git refs: `refci run` runs the
// repository's .refci/run on a clean checkout and records an
// OpenPGP-signed result commit under refs/ci/runs/.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"refci.dev/refci/gitproto/sshd"
	"refci.dev/refci/worker"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes, the same for every command.
const (
	exitOK      = 0 // success
	exitFailed  = 1 // the pipeline failed (or was cancelled)
	exitUsage   = 2 // usage or configuration error
	exitInfra   = 3 // infrastructure error: git, disk, keys
	programName = "refci"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == worker.ShimArg {
		// A worker's per-run supervisor: before anything else, it is on
		// every run's start-up path.
		os.Exit(worker.ShimMain(os.Args[2:]))
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

func (e *env) errorf(format string, args ...any) {
	fmt.Fprintf(e.stderr, programName+": "+format+"\n", args...)
}

type command struct {
	name, args, help string
	run              func(ctx context.Context, e *env, args []string) int
}

func commands() []command {
	return []command{
		{"init", "[--repo DIR] [--force]", "write a starter .refci/run", cmdInit},
		{"run", "[--repo DIR] [--env NAME] [--timeout DUR] [REV]", "run .refci/run of REV (default HEAD) in a clean checkout and record a signed result", cmdRun},
		{"status", "[--repo DIR] [--json] [REV|RUN]", "show the state of the latest run of REV (default HEAD), or of RUN", cmdStatus},
		{"log", "[--repo DIR] [--job NAME] [-f [--remote R]] [REV|RUN]", "print the output of a run; -f follows one on a remote", cmdLog},
		{"runs", "[--repo DIR] [--all] [REV]", "list the runs of REV (default HEAD), newest first", cmdRuns},
		{"view", "[--repo DIR] [-o DIR] [--open]", "write a static site of every fetched run (default .git/refci-view/) and print its path", cmdView},
		{"verify", "[--repo DIR] [--keyring FILE]... [REV|RUN]", "check the signatures of every commit of a run", cmdVerify},
		{"worker", "--remote URL... | --config FILE", "poll remotes for requests, run them, push signed results", cmdWorker},
		{"serve", "[--listen ADDR] [--data DIR] [--admin FILE]... [--http ADDR]", "be the git remote over SSH, with an embedded worker: pushed requests run at once", cmdServe},
		{"trigger", "[--remote R] [--name N] [--env E] [--timeout DUR] [--wait] [REV]", "push a request for REV (default HEAD); --wait follows the run", cmdTrigger},
		{"keys", "show|export [--key FILE]", "show or export this machine's refci key", cmdKeys},
		{"job", "NAME [--needs A,B] -- CMD ARGS...", "inside a pipeline: run one job and record it", cmdJob},
		{"secrets", "init|set|get|list|history|recipients|policy ENV ...", "manage a secrets environment (refs/ci/secrets/ENV)", cmdSecrets},
		{"secret", "NAME", "inside a pipeline: print secret NAME of the run's environment", cmdSecret},
		{"version", "", "print the version", cmdVersion},
	}
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr, getenv: os.Getenv}
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "--help", "help":
		usage(stdout)
		return exitOK
	case "--version":
		return cmdVersion(ctx, e, nil)
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, e, args[1:])
		}
	}
	e.errorf("unknown command %q; run 'refci help' for the list", args[0])
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "refci: CI in git refs\n\nUsage:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  refci %-8s %s\n      %s\n", c.name, c.args, c.help)
	}
	fmt.Fprintf(w, "\nExit codes: 0 success, 1 pipeline failed, 2 usage or configuration, 3 infrastructure.\n")
	fmt.Fprintf(w, "Run 'refci COMMAND -h' for a command's flags.\n")
}

func cmdVersion(_ context.Context, e *env, _ []string) int {
	fmt.Fprintf(e.stdout, "refci %s\n", version)
	return exitOK
}

// newFlags makes a FlagSet for one subcommand that prints its help to
// stdout on -h and its errors once to stderr.
func newFlags(e *env, name, args string) *flag.FlagSet {
	fs := flag.NewFlagSet("refci "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(e.stdout, "Usage: refci %s %s\n", name, args)
		fs.SetOutput(e.stdout)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return fs
}

// parse parses flags that may come before or after positional arguments
// (git's style); "--" ends flags. It returns the positional arguments, or
// an exit code when parsing ended the command (-h, or an error already
// reported).
func parse(e *env, fs *flag.FlagSet, args []string, maxPos int) ([]string, int, bool) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.Usage()
				return nil, exitOK, false
			}
			e.errorf("%s: %v (see '%s -h')", fs.Name(), err, fs.Name())
			return nil, exitUsage, false
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
		e.errorf("%s: too many arguments: %s", fs.Name(), strings.Join(pos, " "))
		return nil, exitUsage, false
	}
	return pos, 0, true
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
