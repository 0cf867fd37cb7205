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
	"sync"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/secrets/envstore"
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
// the environment does not have. It is envstore.ErrNoSecret, so that an
// EnvSecrets source need not translate it.
var ErrSecretNotFound = envstore.ErrNoSecret

// EnvSecrets is the SecretsFunc of the environments kept in git
// (secrets/envstore): o verifies the environment a run asked for, checks
// its policy, and decrypts each value when the run asks. o's fields are
// set before the first run and not changed after; the function is safe
// for concurrent use, as o.Open is.
func EnvSecrets(o *envstore.Opener) SecretsFunc {
	return func(ctx context.Context, q SecretsQuery) (SecretSource, error) {
		src, err := o.Open(ctx, envstore.Query{Remote: q.Remote, Repo: q.Repo, Env: q.Env, Request: q.Request, Trusted: q.Trusted, TrustReason: q.TrustReason})
		if err != nil {
			return nil, err
		}
		return envSource{src}, nil
	}
}

// envSource is an envstore.Source as a SecretSource.
type envSource struct{ *envstore.Source }

func (s envSource) Info() SecretsInfo {
	return SecretsInfo{Commit: s.Commit().String(), Exported: s.Exported()}
}

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

// Secret is the socket's "secret" operation (jobsock.Run).
func (s *runSecrets) Secret(name string) ([]byte, error) {
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

// HoldsSecret says whether str holds a value handed out (jobsock.Run).
func (s *runSecrets) HoldsSecret(str string) bool { return s.masks.Holds(str) }

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
