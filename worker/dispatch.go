package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// Dispatching a pushed request without the loop.
//
// A worker beside the repository it serves (refci serve's embedded
// worker: the remote is a directory that Push updates directly) hears of
// each push that queues a request, with the request's name, from the
// push's own hook. Dispatch then claims it at once, in the repository
// itself: it reads the request's ref there, copies the request's few new
// objects into the cache (no fetch), writes the signed claim commit into
// both, creates the claim ref with git's lock-file compare-and-swap (the
// same one receive-pack takes for a worker pushing its claim over SSH:
// among racing claimers exactly one wins), checks the request again, as
// the loop does after winning, and starts the run. What the loop would
// do beside a claim (leases, snapshots, results) it still does.
//
// Only the common case is taken this way: a request nobody claimed, with
// a free place for it. A claim to take over, a full worker, a request
// whose objects are too many to copy here, a remote it may not write,
// or any failure is left to the loop, which Dispatch wakes instead.

// dispatchMaxObjects and dispatchMaxBytes bound what Dispatch copies
// into the cache itself; a larger request is fetched by the loop.
var (
	dispatchMaxObjects       = 2048
	dispatchMaxBytes   int64 = 32 << 20
)

// dispatchCache is Dispatch's handle of a remote's cache.
type dispatchCache struct {
	repo *gitproto.Repo
	uses int
}

// dispatchCacheUses is how many pushes a dispatchCache serves.
const dispatchCacheUses = 256

// Dispatch is Poke for a push that queued the requests names (without
// refs/ci/requests/) on the remote with this URL. When that remote's
// repository is on this machine and Push updates it directly, the
// requests are claimed at once as described above, outside the loop;
// what is not claimed that way is left to the loop, which is woken. It
// returns at once, and reports whether the worker serves that remote.
// The names are only hints: each request is read from the repository,
// and a name that is not one is ignored. Safe for concurrent use; does
// nothing once Run was told to stop.
func (w *Worker) Dispatch(url string, names []string) bool {
	return w.goFor(url, func(stop, runCtx context.Context, rem *gitproto.Remote) {
		if !w.dispatch(stop, runCtx, rem, names) {
			w.Poke(url)
		}
	})
}

// goFor runs fn in a goroutine that Run waits for as for a loop, with the
// served remote of url and the worker's contexts, unless the worker
// serves no such remote or was told to stop. It reports whether the
// worker serves that remote.
func (w *Worker) goFor(url string, fn func(stop, runCtx context.Context, rem *gitproto.Remote)) bool {
	w.mu.Lock()
	var rem *gitproto.Remote
	for r := range w.wakes {
		if r.URL == url {
			rem = r
			break
		}
	}
	if rem == nil || w.closed || w.stop.Err() != nil {
		w.mu.Unlock()
		return rem != nil
	}
	w.loops.Add(1) // Run waits for it as for a loop
	stop, runCtx := w.stop, w.runCtx
	w.mu.Unlock()
	go func() {
		defer w.loops.Done()
		fn(stop, runCtx, rem)
	}()
	return true
}

// dispatchCache returns Dispatch's handle of rem's cache. The caller
// holds dispatchMu. The handle is kept from push to push: a fresh one
// reads the index of every pack of the cache at the first object it
// lacks. It is opened again now and then, so that what it keeps of the
// objects it read (a few small ones a push) stays small.
func (w *Worker) dispatchCache(rem *gitproto.Remote) (*gitproto.Repo, error) {
	dc := w.dispatchCaches[rem]
	if dc == nil || dc.uses >= dispatchCacheUses {
		cache, err := gitproto.Open(rem.Cache)
		if err != nil {
			return nil, err
		}
		if w.dispatchCaches == nil {
			w.dispatchCaches = map[*gitproto.Remote]*dispatchCache{}
		}
		dc = &dispatchCache{repo: cache}
		w.dispatchCaches[rem] = dc
	}
	dc.uses++
	return dc.repo, nil
}

// dispatch claims names on rem as Dispatch says and reports whether
// nothing is left for the loop.
func (w *Worker) dispatch(stop, ctx context.Context, rem *gitproto.Remote, names []string) bool {
	// One at a time: claims in name order, and free places counted right.
	w.dispatchMu.Lock()
	defer w.dispatchMu.Unlock()
	repo, err := rem.DirectRepo(ctx)
	if err != nil {
		w.log.Debug("a pushed request is left to the loop", "remote", gitproto.RedactURL(rem.URL), "why", err)
		return false
	}
	cache, err := w.dispatchCache(rem)
	if err != nil {
		w.log.Debug("a pushed request is left to the loop", "remote", gitproto.RedactURL(rem.URL), "why", err)
		return false
	}
	names = slices.Clone(names)
	slices.Sort(names)
	done := true
	for _, name := range slices.Compact(names) {
		if stop.Err() != nil {
			return true // stopping: nobody claims anything more
		}
		handled, err := w.claimHere(stop, ctx, rem, repo, cache, name)
		if err != nil {
			w.log.Warn("claiming a pushed request at once failed; the worker's loop takes it", "remote", gitproto.RedactURL(rem.URL), "request", name, "err", err)
		}
		done = done && handled
	}
	return done
}

// newClaim makes the first claim of request name, whose ref holds
// reqVal, peeled to target, and writes its commit into repo and cache,
// signed once: the second is the same commit. (Cheaper than reading it
// back from one to copy it into the other.) Nothing points at it yet.
func (w *Worker) newClaim(repo, cache *gitproto.Repo, name string, reqVal, target gitproto.Hash) (queue.Claim, gitproto.Hash, error) {
	now := w.now().UTC()
	c := queue.Claim{
		Format: queue.Format, Request: name, RequestObject: reqVal.String(), Target: target.String(), Attempt: 1,
		Worker: w.cfg.Signer.Fingerprint(), Host: w.cfg.Host, Claimed: now, Renewed: now,
		LeaseExpires: now.Add(w.cfg.Lease), Run: queue.NewRunID(now),
	}
	var sig string
	commit, err := w.writeClaimSigned(repo, &c, gitproto.ZeroHash, func(msg []byte) (string, error) {
		s, err := w.cfg.Signer.SignDetached(msg)
		sig = s
		return s, err
	})
	if err != nil {
		return c, gitproto.ZeroHash, err
	}
	again, err := w.writeClaimSigned(cache, &c, gitproto.ZeroHash, func([]byte) (string, error) { return sig, nil })
	if err != nil {
		return c, gitproto.ZeroHash, err
	}
	if again != commit {
		return c, gitproto.ZeroHash, fmt.Errorf("the claim commit written into the cache is %s, not %s", again, commit)
	}
	return c, commit, nil
}

// claimHere claims request name in repo, the remote's own repository,
// and starts its run. It reports whether the request needs nothing more
// from the loop: claimed and started, claimed by another worker first,
// or gone.
func (w *Worker) claimHere(stop, ctx context.Context, rem *gitproto.Remote, repo, cache *gitproto.Repo, name string) (bool, error) {
	if queue.ValidateRequestName(name) != nil {
		return true, nil // not a request name: the loop ignores it too
	}
	if w.isActive(rem, name) || w.claimAhead()-w.activeOn(rem) <= 0 {
		return false, nil
	}
	reqRef, claimRef := queue.RequestRef(name), queue.ClaimRef(name)
	reqVal, err := repo.RefHash(reqRef)
	switch {
	case errors.Is(err, gitproto.ErrNotFound):
		return true, nil // deleted since: nothing to run
	case err != nil:
		return false, err
	}
	if _, err := repo.RefHash(claimRef); err == nil {
		return false, nil // claimed: a takeover, if due, is the loop's to judge
	} else if !errors.Is(err, gitproto.ErrNotFound) {
		return false, err
	}
	if _, err := cache.CopyObjects(repo, []gitproto.Hash{reqVal}, gitproto.CopyOptions{MaxObjects: dispatchMaxObjects, MaxBytes: dispatchMaxBytes}); err != nil {
		if errors.Is(err, gitproto.ErrTooMuchToCopy) {
			return false, nil // the loop fetches them with git
		}
		return false, err
	}
	target, err := peel(cache, reqVal)
	if err != nil {
		target = reqVal
	}
	c, commit, ok := w.takePrepared(rem, name, reqVal, target)
	if !ok {
		c, commit, err = w.newClaim(repo, cache, name, reqVal, target)
		if err != nil {
			return false, err
		}
	}
	if err := repo.CreateRef(claimRef, commit); err != nil {
		if errors.Is(err, gitproto.ErrRefExists) {
			w.log.Debug("lost a claim race", "request", name, "reason", err)
			return true, nil
		}
		return false, err // another process held the ref's lock: the loop looks again
	}
	// As the loop does after winning: the request may have been run by
	// another worker, and deleted with its claim, between the read above
	// and our claim; or pushed again. Such a claim is released, not run.
	cur, err := repo.RefHash(reqRef)
	if err != nil && !errors.Is(err, gitproto.ErrNotFound) || cur != reqVal || stop.Err() != nil {
		if rerr := repo.UpdateRef(claimRef, gitproto.ZeroHash, commit); rerr != nil {
			w.log.Warn("cannot release a claim; it expires", "request", name, "err", rerr)
		}
		return errors.Is(err, gitproto.ErrNotFound) || stop.Err() != nil, nil
	}
	w.startClaimed(ctx, rem, c, commit)
	return true, nil
}
