//go:build linux

package worker

// Secrets for a run: the worker asks a SecretsFunc (built by cmd/refci
// from the secrets package and git) for the run's environment when the
// run starts, then hands out single values on the run's socket when
// `refci secret NAME` asks, masking each one in everything the run
// stores.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"refci.dev/refci/gitproto"
)

// SecretsQuery is what a SecretsFunc decides on.
type SecretsQuery struct {
	Remote      string         // the remote's URL; "" for a local `refci run`
	Repo        *gitproto.Repo // the repository the run's objects are in (the worker's cache)
	Env         string         // the environment asked for; never ""
	Request     string         // the request name ("local" for refci run)
	Target      gitproto.Hash  // the commit under test
	Trusted     bool           // the verdict of the trust policy
	TrustReason string
}

// SecretsFunc opens the environment a run asked for, after checking that
// the run may use it. An error withholds every secret from the run; its
// text is recorded in status.json as secrets_reason, so it must say what
// was wrong and must not contain a value. It is called once per run, from
// the run's goroutine.
type SecretsFunc func(ctx context.Context, q SecretsQuery) (SecretSource, error)

// SecretSource hands out the values of one environment to one run. Secret
// decrypts a value when asked and never caches it on disk; it may be
// called concurrently. Info describes the environment.
type SecretSource interface {
	Secret(name string) ([]byte, error)
	Info() SecretsInfo
}

// SecretsInfo describes an opened environment.
type SecretsInfo struct {
	// Commit is the verified environment commit, recorded in status.json.
	Commit string
	// Exported names values the environment's (admin-signed) policy puts
	// in the pipeline's environment as variables of the same name.
	Exported []string
}

// ErrSecretNotFound is what a SecretSource returns (wrapped) for a name
// the environment does not have.
var ErrSecretNotFound = errors.New("no such secret")

// secretNameShape reports whether name has the shape of a secret name,
// [A-Z_][A-Z0-9_]{0,127} (secrets.ValidateName has the full rules; the
// worker only refuses what could not be one). Not a regexp: compiling
// that one cost half a millisecond at every start of refci.
func secretNameShape(name string) bool {
	if name == "" || len(name) > 128 || name[0] >= '0' && name[0] <= '9' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// runSecrets is one run's view of its secrets: what it may ask for, what
// it was handed, and the masks.
type runSecrets struct {
	env    string
	source SecretSource // nil: withheld
	reason string       // why withheld
	masks  *MaskSet
	note   func(string) // writes a line to the run's log

	mu   sync.Mutex
	used []string
}

// get is the socket's "secret" operation.
func (s *runSecrets) get(name string) ([]byte, error) {
	if !secretNameShape(name) {
		return nil, fmt.Errorf("%q is not a secret name (upper-case letters, digits and '_', like NETLIFY_TOKEN)", name)
	}
	if s.env == "" {
		return nil, errors.New("this run has no secrets environment; ask for one with `refci trigger --env NAME` (the request tag's `Env:` option) or `refci run --env NAME`")
	}
	if s.source == nil {
		return nil, fmt.Errorf("the secrets of environment %q were withheld from this run: %s", s.env, s.reason)
	}
	v, err := s.source.Secret(name)
	if err != nil {
		return nil, fmt.Errorf("environment %q: %w", s.env, err)
	}
	if len(v) < MinMaskLen {
		s.note(fmt.Sprintf("refci: warning: secret %s refused: its value is %d bytes, shorter than %d, and could not be masked without hiding unrelated text", name, len(v), MinMaskLen))
		return nil, fmt.Errorf("secret %s is shorter than %d bytes, so refci cannot mask it in logs; an admin must set a longer value", name, MinMaskLen)
	}
	// Mask before handing out: output that follows is already covered.
	s.masks.Add(v)
	s.mu.Lock()
	if !contains(s.used, name) {
		s.used = append(s.used, name)
	}
	s.mu.Unlock()
	return v, nil
}

func (s *runSecrets) usedNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.used...)
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
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

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

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
	d := net.Dialer{Deadline: deadline}
	conn, err := d.DialContext(context.WithoutCancel(ctx), "unix", sock)
	if err != nil {
		if isTimeout(err) {
			return secretTimedOut(stderr, sock, wait)
		}
		fmt.Fprintf(stderr, "refci secret: cannot reach refci at REFCI_SOCKET=%s: %v\n", sock, err)
		return 2
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	if _, err := conn.Write(encodeJobMsg(jobMsg{Op: jobOpSecret, Name: name})); err != nil {
		if isTimeout(err) {
			return secretTimedOut(stderr, sock, wait)
		}
		fmt.Fprintf(stderr, "refci secret: cannot talk to refci: %v\n", err)
		return 2
	}
	replies := make(chan jobMsg, 1)
	quit := make(chan struct{})
	defer close(quit)
	go readJobReplies(conn, replies, quit)
	var m jobMsg
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
	case m.Op == jobOpError:
		fmt.Fprintf(stderr, "refci secret: %s: %s\n", name, m.Error)
		return 1
	case m.Op != jobOpSecret:
		fmt.Fprintf(stderr, "refci secret: unexpected answer %q from refci\n", m.Op)
		return 2
	}
	if _, err := stdout.Write(m.Data); err != nil {
		fmt.Fprintf(stderr, "refci secret: write: %v\n", err)
		return 2
	}
	return 0
}
