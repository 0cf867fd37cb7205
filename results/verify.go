package results

import (
	"errors"
	"fmt"
	"strings"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
	"refci.dev/refci/secrets"
)

// ErrNotVerified marks a run that Verify refuses: a commit not signed by a
// trusted key, signed by another key than the worker its status names,
// commits of another run spliced in, or a merge in the chain. Callers
// branch on it, and on NotBelieved, as on a failure (not an outage).
var ErrNotVerified = errors.New("not verified")

// Signed is one commit of a run's chain whose signature is good.
type Signed struct {
	Commit gitproto.Hash
	Signer secrets.Signer
	Status *queue.Status
}

// Verify checks the whole chain of r's commits, newest first: each is
// signed by a key of kr, believed (see Read) under r's ref, signed by the
// worker its status.json names, and of the same request and attempt as
// the newest; result commits have at most one parent. each (may be nil)
// is told of every good commit as it is checked. It returns the newest
// commit's status and the number of commits. Its error says which commit
// failed and why; see ErrNotVerified, NotBelieved and queue.ErrFormat.
func Verify(repo *gitproto.Repo, r Run, kr secrets.Keyring, each func(Signed)) (*queue.Status, int, error) {
	var st *queue.Status
	n := 0
	for h := r.Commit; h != gitproto.ZeroHash; {
		at := fmt.Sprintf("run %s: commit %s", r.ID, h.String()[:12])
		c, err := repo.Commit(h)
		if err != nil {
			return nil, n, fmt.Errorf("run %s: %w", r.ID, err)
		}
		signer, err := SignedBy(kr, c)
		if err != nil {
			return nil, n, refused(fmt.Sprintf("%s: %v", at, err), err)
		}
		s, err := Read(repo, r.Ref, h)
		if err != nil {
			return nil, n, wrap(at+": "+Problem(err), err)
		}
		if st != nil && (s.Request != st.Request || s.Attempt != st.Attempt) {
			return nil, n, refused(fmt.Sprintf("%s: inconsistent: this snapshot is request %s attempt %d but the run's newest commit is request %s attempt %d: commits of another run spliced into this one",
				at, render.Safe(s.Request), s.Attempt, render.Safe(st.Request), st.Attempt), nil)
		}
		if !strings.EqualFold(signer.Fingerprint, s.Worker) {
			// status.json names the worker; every commit's signature must
			// agree, or another trusted key wrote part of the run.
			return nil, n, refused(fmt.Sprintf("%s: status.json names worker %s but the commit is signed by %s", at, s.Worker, signer.Fingerprint), nil)
		}
		if each != nil {
			each(Signed{Commit: h, Signer: signer, Status: s})
		}
		if n == 0 {
			st = s
		}
		n++
		if len(c.Parents) > 1 {
			return nil, n, refused(fmt.Sprintf("run %s: commit %s has %d parents; result commits have at most one", r.ID, h.String()[:12], len(c.Parents)), nil)
		}
		h = gitproto.ZeroHash
		if len(c.Parents) == 1 {
			h = c.Parents[0]
		}
	}
	return st, n, nil
}

// readerError is an error of this package whose message says it all, and
// which wraps what callers branch on.
type readerError struct {
	msg  string
	errs []error
}

func (e *readerError) Error() string   { return e.msg }
func (e *readerError) Unwrap() []error { return e.errs }

// refused is an error that wraps ErrNotVerified and cause (may be nil).
func refused(msg string, cause error) error {
	return wrap(msg, ErrNotVerified, cause)
}

// wrap is an error with message msg that wraps the errors given (nil ones
// left out).
func wrap(msg string, errs ...error) error {
	e := &readerError{msg: msg}
	for _, err := range errs {
		if err != nil {
			e.errs = append(e.errs, err)
		}
	}
	return e
}

// SignedBy checks a commit's signature against the keyring and returns
// who signed it.
func SignedBy(kr secrets.Keyring, c *gitproto.Commit) (secrets.Signer, error) {
	payload, sig, err := gitproto.SignedPayload(c)
	if err != nil {
		return secrets.Signer{}, err
	}
	return kr.VerifyDetached(payload, sig)
}
