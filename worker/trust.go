package worker

// The signature trust policy: a request is trusted when its annotated tag
// or its target commit is signed by a key of the worker's trusted list.

import (
	"errors"
	"fmt"
	"strings"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/secrets"
)

// LocalRequest is the request name of a local run (refci run), which no
// request ref asked for.
const LocalRequest = "local"

// LocalTrust is the trust of a local run of target in repo. With
// trusted nil, the user's own code on the user's own machine is trusted;
// else it is decided as a worker decides (SignatureTrust), on the target
// commit's signature, and an empty keyring trusts nothing.
func LocalTrust(repo *gitproto.Repo, target gitproto.Hash, trusted *secrets.Keyring) (bool, string) {
	if trusted == nil {
		return true, "a local run, started by the user on this machine"
	}
	return SignatureTrust(*trusted)(TrustQuery{Repo: repo, Request: LocalRequest, RequestObject: target, Target: target})
}

// SignatureTrust returns a trust policy (Config.Trust) over trusted: a
// request is trusted when its annotated tag or its target commit is
// signed by a key of trusted. It is one function so that other policies
// (the SSH endpoint's pusher key) can be OR-ed with it (AnyTrust).
func SignatureTrust(trusted secrets.Keyring) func(TrustQuery) (bool, string) {
	return func(q TrustQuery) (bool, string) {
		if trusted.Len() == 0 {
			return false, "this worker trusts no requester key (--trusted FILE, or trusted = [...] in the config)"
		}
		var why []string
		if q.RequestObject != q.Target && q.RequestObject != gitproto.ZeroHash {
			if ok, what := tagSignedBy(q.Repo, q.RequestObject, trusted); ok {
				return true, "the request tag is signed by " + what
			} else {
				why = append(why, "the request tag "+what)
			}
		}
		ok, what := commitSignedBy(q.Repo, q.Target, trusted)
		if ok {
			return true, "the target commit is signed by " + what
		}
		why = append(why, "the target commit "+what)
		msg := "untrusted: "
		for i, w := range why {
			if i > 0 {
				msg += "; "
			}
			msg += w
		}
		return false, msg
	}
}

// describeVerify turns a verification result into words.
func describeVerify(who secrets.Signer, err error) (bool, string) {
	switch {
	case err == nil:
		return true, fmt.Sprintf("trusted key %s (%s)", who.Fingerprint, who.UserID)
	case errors.Is(err, secrets.ErrNoSignature):
		return false, "is not signed"
	case errors.Is(err, secrets.ErrUnknownKey):
		return false, "is signed by a key this worker does not trust"
	default:
		return false, fmt.Sprintf("has a signature that does not verify (%v)", err)
	}
}

func commitSignedBy(repo *gitproto.Repo, h gitproto.Hash, trusted secrets.Keyring) (bool, string) {
	c, err := repo.Commit(h)
	if err != nil {
		return false, fmt.Sprintf("cannot be read (%v)", err)
	}
	payload, sig, err := gitproto.SignedPayload(c)
	if err != nil {
		return false, fmt.Sprintf("cannot be read (%v)", err)
	}
	return describeVerify(trusted.VerifyDetached(payload, sig))
}

func tagSignedBy(repo *gitproto.Repo, h gitproto.Hash, trusted secrets.Keyring) (bool, string) {
	t, err := repo.Tag(h)
	if err != nil {
		return false, fmt.Sprintf("cannot be read (%v)", err)
	}
	payload, sig, err := gitproto.TagSignedPayload(t)
	if err != nil {
		return false, fmt.Sprintf("cannot be read (%v)", err)
	}
	return describeVerify(trusted.VerifyDetached(payload, sig))
}

// AnyTrust trusts a request when any of the policies does; the reasons of
// a refusal are all given.
func AnyTrust(policies ...func(TrustQuery) (bool, string)) func(TrustQuery) (bool, string) {
	return func(q TrustQuery) (bool, string) {
		var why []string
		for _, p := range policies {
			ok, reason := p(q)
			if ok {
				return true, reason
			}
			why = append(why, reason)
		}
		return false, strings.Join(why, "; ")
	}
}
