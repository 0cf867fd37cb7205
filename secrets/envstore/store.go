package envstore

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
)

// Store is the environments of one repository as an admin reads and
// changes them (refci secrets), on the local refs; pushing them is git's.
// Not safe for concurrent use (a Repo is not).
type Store struct {
	Repo *gitproto.Repo
	// Now stamps the commits written; nil means time.Now.
	Now func() time.Time
}

// Tip returns the commit environment env is at, ZeroHash when the
// repository has no such environment. An invalid name is an error.
func (s *Store) Tip(env string) (gitproto.Hash, error) {
	if err := queue.ValidateEnvName(env); err != nil {
		return gitproto.ZeroHash, err
	}
	h, err := s.Repo.RefHash(queue.SecretsRef(env))
	if err != nil {
		return gitproto.ZeroHash, nil
	}
	return h, nil
}

// Read reads the version of an environment at commit.
func (s *Store) Read(commit gitproto.Hash) (*Env, error) { return Read(s.Repo, commit) }

// Commit writes t, signed by signer, as the version of env after old
// (ZeroHash: its first) with the given subject, and moves env's ref to it
// if the ref still holds old.
func (s *Store) Commit(env string, old gitproto.Hash, t *Env, signer secrets.Factotum, subject string) (gitproto.Hash, error) {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	ref := queue.SecretsRef(env)
	msg := fmt.Sprintf("refci secrets: %s\n\nRefci-Secrets-Env: %s\n", subject, env)
	h, err := t.write(s.Repo, old, signer, msg, now())
	if err != nil {
		return h, fmt.Errorf("write environment %s: %w", env, err)
	}
	if err := s.Repo.UpdateRef(ref, h, old); err != nil {
		if errors.Is(err, gitproto.ErrRefChanged) || errors.Is(err, gitproto.ErrRefExists) {
			return h, fmt.Errorf("%s changed while refci was writing it; run the command again", ref)
		}
		return h, err
	}
	return h, nil
}

// Version is one commit of an environment's history.
type Version struct {
	Commit  gitproto.Hash
	Author  gitproto.Signature // the admin who wrote it, and when
	Subject string             // what changed, without the "refci secrets: " prefix
}

// maxHistory bounds the walks of a history.
const maxHistory = 10000

// History calls fn with each version from tip back to the first, newest
// first (at most 10,000), and stops at fn's first error, which it
// returns.
func (s *Store) History(tip gitproto.Hash, fn func(Version) error) error {
	_, err := s.walk(tip, func(v Version, _ *gitproto.Commit) error { return fn(v) })
	return err
}

// walk calls fn with each version from tip back, and returns the last
// one it reached.
func (s *Store) walk(tip gitproto.Hash, fn func(Version, *gitproto.Commit) error) (Version, error) {
	var v Version
	for h, n := tip, 0; h != gitproto.ZeroHash && n < maxHistory; n++ {
		c, err := s.Repo.Commit(h)
		if err != nil {
			return v, err
		}
		v = Version{Commit: h, Author: c.Author, Subject: strings.TrimPrefix(strings.SplitN(c.Message, "\n", 2)[0], "refci secrets: ")}
		if err := fn(v, c); err != nil {
			return v, err
		}
		if len(c.Parents) == 0 {
			break
		}
		h = c.Parents[0]
	}
	return v, nil
}

// LastChanges finds, for each value of the version at tip, the newest
// version that changed it.
func (s *Store) LastChanges(tip gitproto.Hash) (map[string]Version, error) {
	out := map[string]Version{}
	var prev map[string][]byte
	var prevVersion Version
	_, err := s.walk(tip, func(v Version, _ *gitproto.Commit) error {
		cur, err := Read(s.Repo, v.Commit)
		if err != nil {
			return err
		}
		for name, val := range prev {
			if _, done := out[name]; !done && !bytes.Equal(cur.Values[name], val) {
				out[name] = prevVersion
			}
		}
		prev, prevVersion = cur.Values, v
		return nil
	})
	if err != nil {
		return nil, err
	}
	for name := range prev {
		if _, done := out[name]; !done {
			out[name] = prevVersion
		}
	}
	return out, nil
}

// isAdmin reports whether the key fingerprint fpr may change t: it is in
// admins.asc, or t names no admins.
func (t *Env) isAdmin(fpr string) bool {
	return t.Admins.Len() == 0 || t.Admins.Has(fpr)
}

// NotRecipientError is the error of a change that re-encrypts every
// value (Edit.AddRecipients, Edit.RemoveRecipient) when the admin's key
// cannot decrypt one. It wraps secrets.ErrNotRecipient.
type NotRecipientError struct {
	Name        string // the value
	Fingerprint string // the admin's key
}

func (e *NotRecipientError) Error() string {
	return fmt.Sprintf("cannot re-encrypt %s: your key %s is not a recipient of it; an admin who is a recipient must make this change", e.Name, e.Fingerprint)
}

// Unwrap returns secrets.ErrNotRecipient.
func (e *NotRecipientError) Unwrap() error { return secrets.ErrNotRecipient }

// Is reports target == ErrUsage: an admin who is a recipient must make
// the change.
func (e *NotRecipientError) Is(target error) bool { return target == ErrUsage }

// writers are the keys whose sealed values t believes: its admins, or
// id when it names none.
func (t *Env) writers(id *secrets.Identity) secrets.Keyring {
	w := t.Admins
	if w.Len() == 0 {
		w.Add(id)
	}
	return w
}

// openSealed checks a value sealed elsewhere (gpg --encrypt --sign) as
// workers will: an admin of t (or id, when t names none) signed it, and
// id, a recipient, decrypts it. It returns the value.
func (t *Env) openSealed(id *secrets.Identity, sealed []byte) ([]byte, error) {
	v, _, err := id.Open(sealed, t.writers(id))
	return v, err
}

// reseal re-encrypts every value of t to t.Recipients with id, which
// must be able to decrypt them (else a *NotRecipientError). Values are
// believed only when an admin of t (or id, if t names none) sealed them.
func (t *Env) reseal(id *secrets.Identity) error {
	writers := t.writers(id)
	for _, n := range t.Names() {
		v, _, err := id.Open(t.Values[n], writers)
		if errors.Is(err, secrets.ErrNotRecipient) {
			return &NotRecipientError{Name: n, Fingerprint: id.Fingerprint()}
		}
		if err != nil {
			return fmt.Errorf("cannot re-encrypt %s: %w", n, err)
		}
		if t.Values[n], err = id.Seal(v, t.Recipients); err != nil {
			return err
		}
		clear(v)
	}
	return nil
}

// NewPolicy is the policy of an environment that requests whose name
// matches one of requests (none: any) may use, trusted ones only unless
// allowUntrusted, exporting the values named in export as variables. An
// invalid pattern or name is an ErrUsage error.
func NewPolicy(requests, export []string, allowUntrusted bool) (secrets.Policy, error) {
	p := secrets.Policy{AllowUntrusted: allowUntrusted, Requests: requests, Environment: export}
	if _, err := secrets.ParsePolicy(p.Encode()); err != nil {
		return p, usageError{err}
	}
	return p, nil
}
