//go:build linux

package jobclient

// The client: `refci job`, `refci secret`.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"refci.dev/refci/queue/jobname"
	"refci.dev/refci/worker/jobsock/jobwire"
)

var (
	// jobOutputDrain: after CMD exits, how long `refci job` keeps reading
	// its output pipe, which a background process CMD started may still
	// hold open.
	jobOutputDrain = 2 * time.Second
	// jobPartialFlush: a partial line (no newline yet) is held back from
	// the prefixed stdout at most this long, so that parallel jobs'
	// lines do not interleave mid-line, yet progress output still shows.
	jobPartialFlush = 200 * time.Millisecond
	// jobDoneWait bounds the wait for the server's "done" after "end".
	jobDoneWait = 30 * time.Second
	// jobDialWait bounds how long `refci job` tries to connect to a
	// socket whose queue is full.
	jobDialWait = 10 * time.Second
	// jobVerdictWait bounds the wait for the server's answer to the
	// start of a job without needs (it answers at once; a job with needs
	// waits as long as they run).
	jobVerdictWait = 30 * time.Second
)

const jobUsage = `usage: refci job NAME [--needs A,B] -- CMD [ARGS...]

Runs CMD as job NAME of the current refci pipeline (only inside .refci/run).
CMD's output goes to the pipeline log with each line prefixed "[NAME] ", and
verbatim to jobs/NAME/log.txt in the result. refci job exits with CMD's exit
code.

  --needs A,B   run only after jobs A and B succeeded; if one of them did
                not, the job is recorded as skipped, CMD does not run, and
                refci job exits 1. A job that has not started yet is waited
                for a few seconds (it may be starting in parallel with &).

Example .refci/run:

  refci job build -- make build
  refci job lint -- make lint &
  refci job test --needs build -- make test &
  wait
`

var errJobHelp = errors.New("help requested")

type jobArgs struct {
	name  string
	needs []string
	argv  []string
}

// parseJobArgs parses what follows "job": NAME and --needs in any order,
// then "--" and the command. The "--" may be left out: the first argument
// after NAME that is not an option starts the command.
func parseJobArgs(args []string) (jobArgs, error) {
	var ja jobArgs
	addNeeds := func(v string) error {
		added := false
		for n := range strings.SplitSeq(v, ",") {
			n = strings.TrimSpace(n)
			if n == "" {
				continue
			}
			if err := jobname.Validate(n); err != nil {
				return fmt.Errorf("--needs: %v", err)
			}
			added = true
			if !slices.Contains(ja.needs, n) {
				ja.needs = append(ja.needs, n)
			}
		}
		if !added {
			return fmt.Errorf("--needs %q names no job; give a comma-separated list of job names", v)
		}
		return nil
	}
	cmdAt := -1
loop:
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			cmdAt = i + 1
			break loop
		case a == "-h" || a == "-help" || a == "--help":
			return jobArgs{}, errJobHelp
		case a == "--needs" || a == "-needs":
			if i+1 >= len(args) {
				return jobArgs{}, fmt.Errorf("%s needs a value: a comma-separated list of job names", a)
			}
			i++
			if err := addNeeds(args[i]); err != nil {
				return jobArgs{}, err
			}
		case strings.HasPrefix(a, "--needs=") || strings.HasPrefix(a, "-needs="):
			_, v, _ := strings.Cut(a, "=")
			if err := addNeeds(v); err != nil {
				return jobArgs{}, err
			}
		case strings.HasPrefix(a, "-") && a != "-":
			return jobArgs{}, fmt.Errorf("unknown option %q", a)
		case ja.name == "":
			ja.name = a
		default:
			cmdAt = i
			break loop
		}
	}
	if ja.name == "" {
		return jobArgs{}, errors.New("missing job NAME")
	}
	if err := jobname.Validate(ja.name); err != nil {
		return jobArgs{}, err
	}
	if slices.Contains(ja.needs, ja.name) {
		return jobArgs{}, fmt.Errorf("job %q cannot need itself", ja.name)
	}
	if cmdAt >= 0 {
		ja.argv = args[cmdAt:]
	}
	if len(ja.argv) == 0 {
		return jobArgs{}, fmt.Errorf("missing command: put it after --, e.g. refci job %s -- make %s", ja.name, ja.name)
	}
	return ja, nil
}

// RunJobCommand implements `refci job`; args are what follows "job" on the
// command line. It reads REFCI_SOCKET from getenv and returns the exit
// code: CMD's (128+n if a signal n killed it; 127 if it was not found,
// 126 if it could not be executed), 1 if the job was skipped or
// abandoned, 2 for usage errors, a refused start (invalid or duplicate
// name) or when refci cannot be reached.
//
// CMD runs as a child of this process, in the same process group, with
// stdin /dev/null and REFCI_JOB=NAME added to the environment; its stdout
// and stderr share one pipe. It is killed (SIGKILL) if this process dies.
// SIGINT and SIGTERM received while CMD runs are forwarded to it; received
// while the job waits for its needs they end RunJobCommand (exit 128+n)
// and the job is recorded as cancelled. RunJobCommand handles these
// signals itself (signal.Notify for its duration, from just after it
// sent the start: a signal before that ends the process, and the job is
// recorded as cancelled all the same), so callers should not turn them
// into cancelling ctx.
//
// Cancelling ctx abandons the job: the connection is closed without an
// end, so the server records it cancelled, and CMD is killed.
func RunJobCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	ja, err := parseJobArgs(args)
	if errors.Is(err, errJobHelp) {
		io.WriteString(stdout, jobUsage)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "refci job: %v\nusage: refci job NAME [--needs A,B] -- CMD [ARGS...] (refci job --help for more)\n", err)
		return 2
	}
	sock := getenv("REFCI_SOCKET")
	if sock == "" {
		fmt.Fprintln(stderr, "refci job: not inside a refci pipeline (REFCI_SOCKET is not set); run jobs from .refci/run")
		return 2
	}
	c := &jobClient{name: ja.name, stdout: stdout, stderr: stderr}
	return c.run(ctx, sock, ja)
}

// jobStartFailure is what a shell would say and exit with when it cannot
// start cmd.
func jobStartFailure(cmd string, err error) (code int, msg, reason string) {
	switch {
	case errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist):
		return 127, fmt.Sprintf("refci job: %s: command not found", cmd), "command not found: " + cmd
	case errors.Is(err, fs.ErrPermission):
		return 126, fmt.Sprintf("refci job: %s: permission denied", cmd), "permission denied: " + cmd
	}
	return 126, fmt.Sprintf("refci job: %s: cannot run: %v", cmd, err), fmt.Sprintf("cannot run %s: %v", cmd, err)
}

func jobExitStatus(ws syscall.WaitStatus) (code int, sig string) {
	if ws.Signaled() {
		return 128 + int(ws.Signal()), jobSignalName(ws.Signal())
	}
	code = ws.ExitStatus()
	if code < 0 || code > 255 {
		code = 255
	}
	return code, ""
}

var jobSignalNames = map[syscall.Signal]string{
	syscall.SIGHUP: "SIGHUP", syscall.SIGINT: "SIGINT", syscall.SIGQUIT: "SIGQUIT",
	syscall.SIGILL: "SIGILL", syscall.SIGTRAP: "SIGTRAP", syscall.SIGABRT: "SIGABRT",
	syscall.SIGBUS: "SIGBUS", syscall.SIGFPE: "SIGFPE", syscall.SIGKILL: "SIGKILL",
	syscall.SIGUSR1: "SIGUSR1", syscall.SIGSEGV: "SIGSEGV", syscall.SIGUSR2: "SIGUSR2",
	syscall.SIGPIPE: "SIGPIPE", syscall.SIGALRM: "SIGALRM", syscall.SIGTERM: "SIGTERM",
	syscall.SIGXCPU: "SIGXCPU", syscall.SIGXFSZ: "SIGXFSZ", syscall.SIGSYS: "SIGSYS",
}

func jobSignalName(s syscall.Signal) string {
	if n, ok := jobSignalNames[s]; ok {
		return n
	}
	return fmt.Sprintf("signal %d", int(s))
}

// Client side: `refci secret NAME`.

const secretUsage = `usage: refci secret NAME

Inside a pipeline: print the value of secret NAME of the run's environment
to stdout, with no newline added. The value is fetched from refci over
$REFCI_SOCKET just now, and refci masks it (and its base64, hex and URL
encodings) in every log and artifact. Use it in a pipe, never in argv:

    refci secret NETLIFY_TOKEN | deploy --token-stdin

Exits 1 when the secret is withheld (an untrusted request, a policy that
does not admit the request, an environment that failed verification) or
does not exist, 2 on usage errors or outside a pipeline, 3 when refci does
not answer within 30 seconds.
`

// secretReplyTimeout bounds how long `refci secret` waits for the run's
// socket to take its question and answer it (a ctx deadline may shorten it).
const secretReplyTimeout = 30 * time.Second

// exitSecretTimeout is the exit code of `refci secret` when refci did not
// answer in time: infrastructure, as everywhere in refci.
const exitSecretTimeout = 3

func secretTimedOut(stderr io.Writer, sock string, wait time.Duration) int {
	fmt.Fprintf(stderr, "refci secret: refci did not answer on REFCI_SOCKET=%s within %s; the worker is stuck, overloaded or gone (see its log). Retry the run; the pipeline got no value\n", sock, wait.Round(time.Millisecond))
	return exitSecretTimeout
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// RunSecretCommand is `refci secret NAME`: it asks the run's socket for
// one value and writes it to stdout. It returns the exit code.
func RunSecretCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
		io.WriteString(stdout, secretUsage)
		return 0
	}
	if len(args) != 1 || args[0] == "" || args[0][0] == '-' {
		fmt.Fprint(stderr, "refci secret: want exactly one secret NAME\n"+secretUsage)
		return 2
	}
	name := args[0]
	sock := getenv("REFCI_SOCKET")
	if sock == "" {
		fmt.Fprintln(stderr, "refci secret: not inside a refci pipeline (REFCI_SOCKET is not set); secrets are only handed out to a running .refci/run")
		return 2
	}
	// refci answers at once; an answer that does not come means a worker
	// that is stuck or gone, and a pipeline blocked on it for ever would
	// only end at its timeout, with nothing said.
	wait := secretReplyTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
		wait = max(time.Until(dl), 0)
	}
	deadline := time.Now().Add(wait)
	conn, err := dial(context.WithoutCancel(ctx), sock, deadline)
	if err != nil {
		if isTimeout(err) {
			return secretTimedOut(stderr, sock, wait)
		}
		fmt.Fprintf(stderr, "refci secret: cannot reach refci at REFCI_SOCKET=%s: %v\n", sock, err)
		return 2
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	if _, err := conn.Write(jobwire.Encode(jobwire.Msg{Op: jobwire.OpSecret, Name: name})); err != nil {
		if isTimeout(err) {
			return secretTimedOut(stderr, sock, wait)
		}
		fmt.Fprintf(stderr, "refci secret: cannot talk to refci: %v\n", err)
		return 2
	}
	replies := make(chan jobwire.Msg, 1)
	quit := make(chan struct{})
	defer close(quit)
	go jobwire.ReadReplies(conn, replies, quit)
	var m jobwire.Msg
	var ok bool
	select {
	case m, ok = <-replies:
	case <-time.After(time.Until(deadline)):
		return secretTimedOut(stderr, sock, wait)
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return secretTimedOut(stderr, sock, wait)
		}
		fmt.Fprintf(stderr, "refci secret: %s: interrupted before refci answered\n", name)
		return 2
	}
	switch {
	case !ok && time.Now().After(deadline):
		return secretTimedOut(stderr, sock, wait)
	case !ok:
		fmt.Fprintln(stderr, "refci secret: lost the connection to refci before it answered")
		return 2
	case m.Op == jobwire.OpError:
		fmt.Fprintf(stderr, "refci secret: %s: %s\n", name, m.Error)
		return 1
	case m.Op != jobwire.OpSecret:
		fmt.Fprintf(stderr, "refci secret: unexpected answer %q from refci\n", m.Op)
		return 2
	}
	if _, err := stdout.Write(m.Data); err != nil {
		fmt.Fprintf(stderr, "refci secret: write: %v\n", err)
		return 2
	}
	return 0
}

func intPtr(n int) *int { return &n }
