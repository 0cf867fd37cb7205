package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/google/renameio/v2"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// The outbox holds finished results until they are on the remote,
// written before the run is forgotten and let go of only once the result
// is pushed and the request and claim are cleaned up. A worker that
// crashes or loses the remote pushes them on its next pass (or its next
// start).
//
// It is one journal per remote, <cache>/refci-outbox/journal: a JSON line
// for each change (a finished run's entry, a later state of it, or that it
// is done), appended with one write; a run's last line says where it is.
// Appending to one file costs no new file per run (on some file systems
// every file made and removed is a real cost to the next ones made). The
// journal is emptied in place once nothing in it is pending, and written
// anew with only what is pending when it has grown past
// outboxCompactBytes while results wait. A line cut short by a crash is
// skipped: the run's earlier line, or its run ref in the cache, still
// holds the result. Outboxes of earlier versions (one <run>.json file per
// run in the same directory) are read too, and their files removed once
// done.
type outboxEntry struct {
	RunRef        string `json:"run_ref"`
	Commit        string `json:"commit"`
	Pushed        string `json:"pushed"` // the run ref's value on the remote as last known ("" = absent)
	RequestRef    string `json:"request_ref,omitempty"`
	RequestObject string `json:"request_object,omitempty"`
	ClaimRef      string `json:"claim_ref,omitempty"`
	ClaimValue    string `json:"claim_value,omitempty"`
	// NoCacheRef: the cache holds no ref to Commit (the run made no
	// snapshot); protectPending makes one before the cache is garbage
	// collected.
	NoCacheRef bool `json:"no_cache_ref,omitempty"`
}

// journalLine is one line of the outbox journal.
type journalLine struct {
	Run   string       `json:"run"`
	Entry *outboxEntry `json:"entry,omitempty"`
	Done  bool         `json:"done,omitempty"`
}

// outboxCompactBytes is the size past which a journal with pending
// entries is written anew.
const outboxCompactBytes = 64 << 10

func outboxDir(rem *gitproto.Remote) string { return filepath.Join(rem.Cache, "refci-outbox") }

func outboxJournal(rem *gitproto.Remote) string { return filepath.Join(outboxDir(rem), "journal") }

// outboxLocks serialise a process's access to each outbox (one worker
// process per cache).
var outboxLocks sync.Map // outbox directory → *sync.Mutex

func lockOutbox(rem *gitproto.Remote) func() {
	m, _ := outboxLocks.LoadOrStore(outboxDir(rem), &sync.Mutex{})
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// queueResult records a finished run in the outbox.
func (w *Worker) queueResult(a *activeRun, commit gitproto.Hash, refWritten bool) {
	a.mu.Lock()
	e := outboxEntry{RunRef: a.runRef, Commit: commit.String(), NoCacheRef: !refWritten}
	if a.pushed != gitproto.ZeroHash {
		e.Pushed = a.pushed.String()
	}
	if !a.lostClaim {
		e.RequestRef = queue.RequestRef(a.claim.Request)
		e.RequestObject = a.claim.RequestObject
		e.ClaimRef = a.claimRef
		e.ClaimValue = a.claimVal.String()
	}
	a.queued = &e
	err := writeOutbox(a.remote, a.claim.Run, &e)
	a.mu.Unlock()
	if err == nil {
		return
	}
	if !refWritten {
		// Keep the result in the cache at least, under its run ref.
		repo, oerr := gitproto.Open(a.remote.Cache)
		if oerr == nil {
			oerr = repo.UpdateRef(a.runRef, commit, gitproto.ZeroHash)
		}
		if oerr != nil {
			w.log.Error("cannot record the result for pushing, nor keep it in the cache; the request runs again once its claim expires", "run", a.claim.Run, "ref", a.runRef, "err", err, "cache_err", oerr)
			return
		}
	}
	w.log.Error("cannot record the result for pushing; it stays in the cache repository", "run", a.claim.Run, "ref", a.runRef, "err", err)
}

// writeOutbox records the entry of run (new, or a later state of it).
func writeOutbox(rem *gitproto.Remote, run string, e *outboxEntry) error {
	defer lockOutbox(rem)()
	_, err := appendJournal(rem, []journalLine{{Run: run, Entry: e}})
	return err
}

// encodeJournal is lines as the journal holds them.
func encodeJournal(lines []journalLine) ([]byte, error) {
	var b []byte
	for _, l := range lines {
		j, err := json.Marshal(l)
		if err != nil {
			return nil, err
		}
		b = append(append(b, j...), '\n')
	}
	return b, nil
}

// appendJournal appends lines to the journal in one write and returns the
// number of bytes written. The caller holds the outbox lock.
func appendJournal(rem *gitproto.Remote, lines []journalLine) (int64, error) {
	b, err := encodeJournal(lines)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(outboxDir(rem), 0o700); err != nil {
		return 0, err
	}
	f, err := os.OpenFile(outboxJournal(rem), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return 0, err
	}
	// A line cut short by a crash stays a line of its own.
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, fi.Size()-1); err != nil || last[0] != '\n' {
			b = append([]byte{'\n'}, b...)
		}
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return 0, err
	}
	return int64(len(b)), f.Close()
}

// readOutbox returns the pending entries by run.
func readOutbox(rem *gitproto.Remote) (map[string]*outboxEntry, error) {
	defer lockOutbox(rem)()
	out, _, err := readOutboxLocked(rem)
	return out, err
}

// readOutboxLocked reads the pending entries and the journal's size. The
// caller holds the outbox lock.
func readOutboxLocked(rem *gitproto.Remote) (map[string]*outboxEntry, int64, error) {
	ents, err := os.ReadDir(outboxDir(rem))
	if os.IsNotExist(err) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	out := map[string]*outboxEntry{}
	for _, d := range ents {
		name := d.Name()
		if !strings.HasSuffix(name, ".json") || strings.HasPrefix(name, ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(outboxDir(rem), name))
		if err != nil {
			return nil, 0, err
		}
		var e outboxEntry
		if err := json.Unmarshal(b, &e); err != nil {
			return nil, 0, fmt.Errorf("outbox %s: %w", name, err)
		}
		out[strings.TrimSuffix(name, ".json")] = &e
	}
	b, err := os.ReadFile(outboxJournal(rem))
	if err != nil && !os.IsNotExist(err) {
		return nil, 0, err
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		var l journalLine
		if len(line) == 0 || json.Unmarshal(line, &l) != nil || l.Run == "" {
			continue // empty, or cut short by a crash
		}
		switch {
		case l.Done:
			delete(out, l.Run)
		case l.Entry != nil:
			out[l.Run] = l.Entry
		}
	}
	return out, int64(len(b)), nil
}

// outboxDone lets go of the entries of runs: their results are out and
// their requests and claims cleaned up. It returns the entries as they
// last were (protectPending may have changed them since they were read).
func outboxDone(rem *gitproto.Remote, runs []string) (map[string]*outboxEntry, error) {
	if len(runs) == 0 {
		return nil, nil
	}
	defer lockOutbox(rem)()
	pending, size, err := readOutboxLocked(rem)
	if err != nil {
		return nil, err
	}
	lines := make([]journalLine, len(runs))
	last := map[string]*outboxEntry{}
	for i, r := range runs {
		lines[i] = journalLine{Run: r, Done: true}
		if e := pending[r]; e != nil {
			last[r] = e
		}
		delete(pending, r)
	}
	n, err := appendJournal(rem, lines)
	if err != nil {
		return nil, err // still pending: their cache refs stay too
	}
	for _, r := range runs {
		os.Remove(filepath.Join(outboxDir(rem), r+".json")) // an earlier version's file, if any
	}
	switch {
	case len(pending) == 0:
		return last, os.Truncate(outboxJournal(rem), 0) // the same file, emptied
	case size+n > outboxCompactBytes:
		return last, rewriteJournal(rem, pending)
	}
	return last, nil
}

// rewriteJournal replaces the journal by one holding only pending. The
// caller holds the outbox lock.
func rewriteJournal(rem *gitproto.Remote, pending map[string]*outboxEntry) error {
	runs := make([]string, 0, len(pending))
	for r := range pending {
		runs = append(runs, r)
	}
	sort.Strings(runs)
	lines := make([]journalLine, len(runs))
	for i, r := range runs {
		lines[i] = journalLine{Run: r, Entry: pending[r]}
	}
	b, err := encodeJournal(lines)
	if err != nil {
		return err
	}
	// Synced before the rename: the journal it replaces may hold the only
	// durable record of results not yet pushed. The temporary file is made
	// beside it, never in the shared temporary directory.
	f, err := renameio.NewPendingFile(outboxJournal(rem), renameio.WithTempDir(outboxDir(rem)), renameio.WithStaticPermissions(0o600))
	if err != nil {
		return err
	}
	defer f.Cleanup()
	if _, err := f.Write(b); err != nil {
		return err
	}
	return f.CloseAtomicallyReplace()
}

func (w *Worker) outboxEmpty(rem *gitproto.Remote) bool {
	m, err := readOutbox(rem)
	return err == nil && len(m) == 0
}

// flushOutbox pushes every finished result of rem in one push, then
// deletes their requests and claims with compare-and-swap in a second.
// The request goes only after its result is on the remote (invariant 4),
// and only if it still has the value that was run.
func (w *Worker) flushOutbox(ctx context.Context, rem *gitproto.Remote) error {
	entries, err := readOutbox(rem)
	if err != nil || len(entries) == 0 {
		return err
	}
	runs := make([]string, 0, len(entries))
	for r := range entries {
		runs = append(runs, r)
	}
	sort.Strings(runs)
	if done, err := w.flushAtomic(ctx, rem, runs, entries); done || err != nil {
		return err
	}
	updates := make([]gitproto.RefUpdate, len(runs))
	for i, r := range runs {
		e := entries[r]
		updates[i] = gitproto.RefUpdate{Name: e.RunRef, New: gitproto.NewHash(e.Commit), Old: hashOrZero(e.Pushed)}
	}
	results, err := rem.Push(ctx, updates, false)
	if err != nil {
		return err
	}
	w.pushed(rem)
	var cleanup []gitproto.RefUpdate
	var done []string
	inCleanup := map[string]bool{} // one update per ref and push; the rest wait a pass
	for i, res := range results {
		e := entries[runs[i]]
		if !res.OK {
			// The remote's value is not what we last saw: perhaps an
			// earlier push landed without our hearing back.
			fixed, err := w.reconcile(ctx, rem, e)
			if err != nil {
				return err
			}
			if !fixed {
				w.log.Error("the remote refused a result; keeping it locally", "ref", e.RunRef, "reason", res.Message)
				continue
			}
			if e.Pushed != e.Commit {
				writeOutbox(rem, runs[i], e) // retried with the corrected lease next pass
				continue
			}
		}
		if e.RequestRef != "" {
			if inCleanup[e.RequestRef] || inCleanup[e.ClaimRef] {
				e.Pushed = e.Commit
				writeOutbox(rem, runs[i], e)
				continue
			}
			inCleanup[e.RequestRef], inCleanup[e.ClaimRef] = true, true
			cleanup = append(cleanup,
				gitproto.RefUpdate{Name: e.RequestRef, Old: gitproto.NewHash(e.RequestObject)},
				gitproto.RefUpdate{Name: e.ClaimRef, Old: gitproto.NewHash(e.ClaimValue)})
		}
		done = append(done, runs[i])
	}
	if len(cleanup) > 0 {
		// Lost leases here are normal: a request re-pushed meanwhile must
		// survive and run next. Requests go strictly before claims (two
		// pushes): a worker that wins a claim after ours is gone then
		// always sees the request gone too.
		var reqs, claims []gitproto.RefUpdate
		for _, u := range cleanup {
			if strings.HasPrefix(u.Name, queue.RequestsPrefix) {
				reqs = append(reqs, u)
			} else {
				claims = append(claims, u)
			}
		}
		res, err := rem.Push(ctx, reqs, false)
		if err == nil {
			var more []gitproto.PushResult
			more, err = rem.Push(ctx, claims, false)
			res = append(res, more...)
		}
		w.noteRefusals(rem, res, "a cleanup after publishing was refused")
		if err != nil {
			for _, r := range done { // the results are out; only the cleanup is pending
				e := entries[r]
				e.Pushed = e.Commit
				writeOutbox(rem, r, e)
			}
			return err
		}
	}
	last, err := outboxDone(rem, done)
	if err != nil {
		w.log.Error("cannot note published results in the outbox; they will be pushed again (no change on the remote)", "err", err)
	}
	forgetPublished(rem, done, last)
	return nil
}

// flushAtomic is the common case of flushOutbox in one round trip: every
// result, with the deletion of its request and claim, in one atomic push.
// All of it lands or none of it does, so a request still never goes
// without its result. It reports whether it pushed everything; when the
// push was refused as a whole (a request re-pushed meanwhile, a lease
// lost, a result ref that is not what we last saw, or a server without
// atomic pushes), it returns false and no error, and the caller takes the
// step-by-step path that handles each case. A deleted request's claim
// cannot be won by another worker before the request is gone: git holds
// the lock of every ref of the transaction until all of them are done.
func (w *Worker) flushAtomic(ctx context.Context, rem *gitproto.Remote, runs []string, entries map[string]*outboxEntry) (bool, error) {
	var updates []gitproto.RefUpdate
	seen := map[string]bool{}
	for _, r := range runs {
		e := entries[r]
		if e.Pushed == e.Commit || seen[e.RunRef] {
			return false, nil // a half-done earlier pass: go step by step
		}
		seen[e.RunRef] = true
		updates = append(updates, gitproto.RefUpdate{Name: e.RunRef, New: gitproto.NewHash(e.Commit), Old: hashOrZero(e.Pushed)})
		if e.RequestRef == "" {
			continue
		}
		if seen[e.RequestRef] || seen[e.ClaimRef] {
			return false, nil // two runs of one request name: one at a time
		}
		seen[e.RequestRef], seen[e.ClaimRef] = true, true
		updates = append(updates,
			gitproto.RefUpdate{Name: e.RequestRef, Old: gitproto.NewHash(e.RequestObject)},
			gitproto.RefUpdate{Name: e.ClaimRef, Old: gitproto.NewHash(e.ClaimValue)})
	}
	results, err := rem.Push(ctx, updates, true)
	if err != nil {
		var re *gitproto.RemoteError
		if errors.As(err, &re) && re.Kind == gitproto.KindRejected {
			return false, nil
		}
		return false, err
	}
	w.pushed(rem)
	for _, res := range results {
		if !res.OK {
			return false, nil
		}
	}
	last, err := outboxDone(rem, runs)
	if err != nil {
		w.log.Error("cannot note published results in the outbox; they will be pushed again (no change on the remote)", "err", err)
	}
	forgetPublished(rem, runs, last)
	return true, nil
}

// forgetPublished deletes the cache's own run refs of results that are
// now on the remote, so that a cache does not grow with every run it ever
// made (their objects go with the cache's next maintenance). A ref that
// moved meanwhile, or was packed, stays.
func forgetPublished(rem *gitproto.Remote, runs []string, entries map[string]*outboxEntry) {
	var repo *gitproto.Repo
	for _, r := range runs {
		e := entries[r]
		if e == nil || e.NoCacheRef {
			continue // no ref was made
		}
		if repo == nil {
			var err error
			if repo, err = gitproto.Open(rem.Cache); err != nil {
				return
			}
		}
		repo.UpdateRef(e.RunRef, gitproto.ZeroHash, gitproto.NewHash(e.Commit))
	}
}

// protectPending gives every result waiting in the outbox without a ref
// in the cache its run ref there, so that the cache's garbage collection
// (which prunes what no ref reaches two weeks after it was written) never
// takes a result that waits for a remote away that long. It runs before
// each maintenance; forgetPublished deletes the refs once the results are
// pushed.
func protectPending(rem *gitproto.Remote) error {
	defer lockOutbox(rem)()
	pending, _, err := readOutboxLocked(rem)
	if err != nil {
		return err
	}
	var repo *gitproto.Repo
	var lines []journalLine
	for run, e := range pending {
		if !e.NoCacheRef {
			continue
		}
		if repo == nil {
			if repo, err = gitproto.Open(rem.Cache); err != nil {
				return err
			}
		}
		commit := gitproto.NewHash(e.Commit)
		if err := repo.UpdateRef(e.RunRef, commit, gitproto.ZeroHash); err != nil {
			if cur, rerr := repo.RefHash(e.RunRef); rerr != nil || cur != commit {
				return fmt.Errorf("keep %s in the cache: %w", e.RunRef, err)
			}
		}
		kept := *e
		kept.NoCacheRef = false
		lines = append(lines, journalLine{Run: run, Entry: &kept})
	}
	if len(lines) == 0 {
		return nil
	}
	_, err = appendJournal(rem, lines)
	return err
}

// reconcile looks at the remote value of a run ref whose push was
// refused: if it is our commit, the result is out; if it is one of our own
// snapshots, the lease is corrected for the next push.
func (w *Worker) reconcile(ctx context.Context, rem *gitproto.Remote, e *outboxEntry) (bool, error) {
	vals, err := rem.ListRemote(ctx, e.RunRef)
	if err != nil {
		return false, err
	}
	cur, ok := vals[e.RunRef]
	if !ok {
		e.Pushed = ""
		return true, nil
	}
	if cur.String() == e.Commit {
		e.Pushed = e.Commit
		return true, nil
	}
	repo, err := gitproto.Open(rem.Cache)
	if err != nil {
		return false, err
	}
	for h := gitproto.NewHash(e.Commit); h != gitproto.ZeroHash; {
		c, err := repo.Commit(h)
		if err != nil {
			break
		}
		if len(c.Parents) == 0 {
			break
		}
		h = c.Parents[0]
		if h == cur {
			e.Pushed = cur.String()
			return true, nil
		}
	}
	return false, nil
}

func hashOrZero(s string) gitproto.Hash {
	if s == "" {
		return gitproto.ZeroHash
	}
	return gitproto.NewHash(s)
}

// renewLeasesAndPushSnapshots renews due leases and pushes new progress
// snapshots of rem's runs, in one push.
func (w *Worker) renewLeasesAndPushSnapshots(ctx context.Context, rem *gitproto.Remote) error {
	type item struct {
		a      *activeRun
		claim  bool // a lease renewal (else a snapshot)
		newVal gitproto.Hash
		c      queue.Claim
	}
	var items []item
	now := w.now().UTC()
	w.mu.Lock()
	var runs []*activeRun
	for _, a := range w.active {
		if a.remote == rem {
			runs = append(runs, a)
		}
	}
	w.mu.Unlock()
	if len(runs) == 0 {
		return nil
	}
	repo, err := gitproto.Open(rem.Cache)
	if err != nil {
		return err
	}
	var updates []gitproto.RefUpdate
	for _, a := range runs {
		a.mu.Lock()
		if !a.lostClaim && a.queued == nil && now.Sub(a.claim.Renewed) >= w.cfg.Lease/3 {
			c := a.claim
			c.Renewed, c.LeaseExpires = now, now.Add(w.cfg.Lease)
			commit, err := w.writeClaim(repo, &c, a.claimVal)
			if err != nil {
				a.mu.Unlock()
				return err
			}
			items = append(items, item{a: a, claim: true, newVal: commit, c: c})
			updates = append(updates, gitproto.RefUpdate{Name: a.claimRef, New: commit, Old: a.claimVal})
		}
		if n := len(a.snapshots); n > 0 {
			latest := a.snapshots[n-1]
			items = append(items, item{a: a, newVal: latest})
			updates = append(updates, gitproto.RefUpdate{Name: a.runRef, New: latest, Old: a.pushed})
		}
		a.mu.Unlock()
	}
	if len(updates) == 0 {
		return nil
	}
	results, err := rem.Push(ctx, updates, false)
	if err != nil {
		return err
	}
	w.pushed(rem)
	for i, res := range results {
		it := items[i]
		it.a.mu.Lock()
		switch {
		case it.claim && res.OK:
			it.a.claim, it.a.claimVal = it.c, it.newVal
			if q := it.a.queued; q != nil && q.ClaimRef != "" {
				// The run ended while this renewal was on its way: the
				// outbox must delete the claim by its new value.
				q.ClaimValue = it.newVal.String()
				writeOutbox(rem, it.a.claim.Run, q)
			}
		case it.claim:
			it.a.lostClaim = true
			it.a.cancel(fmt.Errorf("this worker lost its claim (the lease could not be renewed: %s)", res.Message))
		case res.OK:
			it.a.pushed = it.newVal
			// Drop the snapshots now on the remote.
			for j, s := range it.a.snapshots {
				if s == it.newVal {
					it.a.snapshots = it.a.snapshots[j+1:]
					break
				}
			}
		default:
			w.log.Warn("a progress snapshot was refused", "ref", it.a.runRef, "reason", res.Message)
			it.a.snapshots = nil
		}
		it.a.mu.Unlock()
	}
	return nil
}

// pushed tells Config.Pushed that a push of run refs to rem went out.
func (w *Worker) pushed(rem *gitproto.Remote) {
	if w.cfg.Pushed != nil {
		w.cfg.Pushed(rem.URL)
	}
}
