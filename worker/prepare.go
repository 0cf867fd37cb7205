package worker

import (
	"context"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// Preparing a dispatched claim while the push is still running.
//
// Most of what Dispatch spends before a run starts is writing and
// signing the claim commit. What the claim says is known earlier than
// the request ref exists: receive-pack's update hook hears of each ref
// it is about to update, with the new value, several milliseconds before
// the post-receive hook tells Dispatch that the push is applied. A
// worker told then (PrepareClaim) writes the claim commit it would make
// into the repository and its cache at once; Dispatch takes it when the
// request ref, read from the repository as always, holds that value, a
// commit, and the claim is still fresh. Only the claim ref, created with
// the same compare-and-swap as ever, makes a claim: a push that fails
// after its update hook, a value the post-receive hook wraps into a tag
// (push options), or a request claimed by another worker first leaves a
// prepared claim unused, a few unreferenced objects that git gc prunes.

// maxPreparedClaims bounds the claims a worker keeps prepared.
const maxPreparedClaims = 1024

// maxPreparedAge is how old a prepared claim may be when Dispatch takes
// it: at most this, and a tenth of the lease.
const maxPreparedAge = 10 * time.Second

type preparedKey struct {
	rem  *gitproto.Remote
	name string
}

type preparedClaim struct {
	value  gitproto.Hash // the request ref's value it claims
	claim  queue.Claim
	commit gitproto.Hash // in the remote's repository and in the cache
}

// PrepareClaim is a hint for Dispatch: request name on the remote with
// this URL is about to hold value (a push's update hook allowed it, and
// the push carries no options; it is not applied yet, and may never be).
// When that remote's repository is on this machine and Push updates it
// directly, the worker writes the claim it would make into it and into
// its cache now (see above); Dispatch, once the push is applied, takes
// it if the request holds that value. It returns at once, and does
// nothing once Run was told to stop. Safe for concurrent use.
func (w *Worker) PrepareClaim(url, name, value string) {
	val, ok := parseHash(value)
	if !ok || queue.ValidateRequestName(name) != nil {
		return
	}
	w.goFor(url, func(_, runCtx context.Context, rem *gitproto.Remote) {
		w.prepareClaim(runCtx, rem, name, val)
	})
}

func (w *Worker) prepareClaim(ctx context.Context, rem *gitproto.Remote, name string, val gitproto.Hash) {
	w.dispatchMu.Lock()
	defer w.dispatchMu.Unlock()
	now := w.now()
	for k, p := range w.prepared {
		if now.Sub(p.claim.Claimed) > maxPreparedAge {
			delete(w.prepared, k) // never taken: its push failed, or it was not needed
		}
	}
	// Only as many as Dispatch could start: a push of many requests to
	// a busy worker leaves the rest to the loop, unprepared.
	free := w.claimAhead() - w.activeOn(rem)
	for k := range w.prepared {
		if k.rem == rem {
			free--
		}
	}
	if free <= 0 || w.isActive(rem, name) {
		return
	}
	repo, err := rem.DirectRepo(ctx)
	if err != nil {
		return
	}
	cache, err := w.dispatchCache(rem)
	if err != nil {
		return
	}
	// The target is the value itself: a commit, the common case. (The
	// pushed objects are still in receive-pack's quarantine, out of
	// reach; a value that is a tag peels to another target, and Dispatch
	// then makes its own claim.)
	c, commit, err := w.newClaim(repo, cache, name, val, val)
	if err != nil {
		w.log.Debug("preparing a claim failed; Dispatch makes its own", "request", name, "err", err)
		return
	}
	if w.prepared == nil {
		w.prepared = map[preparedKey]preparedClaim{}
	}
	if len(w.prepared) >= maxPreparedClaims {
		return
	}
	w.prepared[preparedKey{rem, name}] = preparedClaim{value: val, claim: c, commit: commit}
}

// takePrepared returns, and forgets, the claim prepared for request name
// on rem, if there is one for reqVal, its target is target, and it is
// fresh. The caller holds dispatchMu.
func (w *Worker) takePrepared(rem *gitproto.Remote, name string, reqVal, target gitproto.Hash) (queue.Claim, gitproto.Hash, bool) {
	k := preparedKey{rem, name}
	p, ok := w.prepared[k]
	if !ok {
		return queue.Claim{}, gitproto.ZeroHash, false
	}
	delete(w.prepared, k)
	age := w.now().Sub(p.claim.Claimed)
	if p.value != reqVal || p.claim.Target != target.String() || age < 0 || age > min(maxPreparedAge, w.cfg.Lease/10) {
		return queue.Claim{}, gitproto.ZeroHash, false
	}
	return p.claim, p.commit, true
}

// parseHash parses a full hexadecimal object name.
func parseHash(s string) (gitproto.Hash, bool) {
	if len(s) != 40 {
		return gitproto.ZeroHash, false
	}
	for _, r := range s {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') {
			return gitproto.ZeroHash, false
		}
	}
	h := gitproto.NewHash(s)
	return h, h != gitproto.ZeroHash
}
