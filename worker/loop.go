package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/results"
)

// Config configures a Worker. Zero durations and sizes mean the defaults.
type Config struct {
	Remotes     []*gitproto.Remote
	Poll        time.Duration // between polls of a remote (default 10s)
	Concurrency int           // runs at once per worker (default: 1)
	Lease       time.Duration // claim lease (default 60s); renewed every Lease/3
	// Snapshot is how often a running pipeline's progress is pushed
	// (default 2s; the first one after 500ms, or Snapshot when shorter),
	// each one as soon as it is written.
	Snapshot time.Duration
	Grace    time.Duration // on shutdown, how long running pipelines may finish (default 30s)
	// Limits are every run's (RunSpec.Limits); a request may ask for
	// another Timeout, up to MaxTimeout.
	Limits
	// MaxAttempts is how many attempts of one request value may lose
	// their worker: a takeover that would be attempt MaxAttempts+1
	// instead ends the request in state error, "gave up after N
	// attempts" (default DefaultMaxAttempts).
	MaxAttempts int
	// MaxTimeout caps the timeout a request may ask for (default
	// DefaultMaxTimeout, and never below Timeout).
	MaxTimeout time.Duration

	Signer    Signer
	RefciPath string
	Host      string
	Version   string
	TempDir   string
	Logger    *slog.Logger
	Now       func() time.Time

	// Shim is the executable that runs as every run's shim (RunSpec.Shim);
	// empty means RefciPath. Workers set it from ChooseShim(RefciPath).
	Shim string
	// Wake, when not nil, triggers an immediate poll of every remote.
	// Poke does the same for one remote.
	Wake <-chan struct{}
	// Trust decides whether a claimed request is trusted, that is may be
	// given secrets. It is called once per run, before the pipeline
	// starts, and returns the decision with a reason people can read
	// (recorded in status.json). Nil means every request runs untrusted.
	Trust func(TrustQuery) (trusted bool, why string)
	// Secrets opens a run's secrets environment when the run starts (see
	// RunSpec.Secrets). Nil: runs that ask for an environment get no
	// secrets, and status.json says so.
	Secrets SecretsFunc
	// Page, when set, renders index.html of each final result (RunSpec.Page).
	Page PageFunc
	// Pushed, when set, is called with a remote's URL after a push of
	// run refs to it (a snapshot or a result) went out, whatever each
	// ref's outcome: a mirror of the remote's runs looks at once. It
	// must not block.
	Pushed func(remoteURL string)
	// Isolation is every run's (RunSpec.Isolation): what pipelines may
	// see and write.
	Isolation
}

// TrustQuery is what Config.Trust decides on.
type TrustQuery struct {
	Remote        string         // the remote's URL
	Repo          *gitproto.Repo // the worker's cache, holding the request's objects
	Request       string         // the request name, without refs/ci/requests/
	RequestObject gitproto.Hash  // the request ref's value: a commit, or an annotated tag
	Target        gitproto.Hash  // the commit to run
}

// Worker polls remotes for requests, claims them with compare-and-swap
// pushes, runs them and pushes the signed results. Create it with New and
// call Run once.
type Worker struct {
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	slots chan struct{}

	mu       sync.Mutex
	wakes    map[*gitproto.Remote]chan struct{}
	finished map[*gitproto.Remote]chan struct{} // a run ended: push its result; or a snapshot was written: push it
	active   map[string]*activeRun              // by remote URL + request name
	expired  map[string]seenExpired
	locked   map[string]lockSeen // remote URL + "\x00" + ref: a lock file refused its update
	// runs counts the runs started and not yet over, under mu; once Run
	// stops claiming, idle (when not nil) is closed as runs drops to 0.
	// (A WaitGroup would not do: a pass that began before the stop may
	// still start a run while Run waits, and a WaitGroup's Add at zero
	// must not race its Wait.)
	runs    int
	idle    chan struct{}
	avgRun  atomic.Int64 // moving average of run durations, in ns (0: none yet)
	runDirs *RunDirs     // emptied run directories, for the next runs
	// dispatchMu makes Dispatch claim for one push at a time, and
	// guards its handles of the remotes' caches.
	dispatchMu     sync.Mutex
	dispatchCaches map[*gitproto.Remote]*dispatchCache
	prepared       map[preparedKey]preparedClaim // PrepareClaim's, under dispatchMu

	// Set by Run, for loops started later by AddRemote.
	stop, runCtx, abort context.Context
	loops               sync.WaitGroup
	closed              bool // Run is over: start no more loops
}

// activeRun is one run this worker holds a claim for.
type activeRun struct {
	remote   *gitproto.Remote
	claim    queue.Claim
	claimRef string
	claimVal gitproto.Hash // our latest claim commit on the remote
	cancel   context.CancelCauseFunc
	runRef   string
	pushed   gitproto.Hash // the last commit of the run ref known to be on the remote

	mu        sync.Mutex
	snapshots []gitproto.Hash // new snapshots waiting to be pushed
	lostClaim bool            // another worker took the request over: clean nothing up
	queued    *outboxEntry    // the finished run's outbox entry, once written
}

// New makes a worker.
func New(cfg Config) *Worker {
	if cfg.Poll <= 0 {
		cfg.Poll = 10 * time.Second
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 60 * time.Second
	}
	if cfg.Snapshot <= 0 {
		cfg.Snapshot = 2 * time.Second
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Shim == "" {
		cfg.Shim = cfg.RefciPath
	}
	return &Worker{cfg: cfg, log: cfg.Logger, now: cfg.Now, slots: make(chan struct{}, cfg.Concurrency), active: map[string]*activeRun{}, expired: map[string]seenExpired{}, locked: map[string]lockSeen{},
		runDirs: NewRunDirs(cfg.Concurrency)}
}

// errShutdown is the cause of runs cancelled because the worker stops.
var errShutdown = errors.New("the worker was shut down before the pipeline finished")

// Run works until stop is cancelled: then it claims nothing more, lets
// running pipelines finish for Grace, cancels what is left, and pushes
// every result before returning. Cancelling abort as well kills running
// pipelines at once. Results that cannot be pushed stay in the local cache
// and are pushed by the next Run.
func (w *Worker) Run(stop, abort context.Context) error {
	runCtx, cancelRuns := context.WithCancelCause(context.WithoutCancel(stop))
	defer cancelRuns(nil)
	go func() {
		select {
		case <-abort.Done():
			cancelRuns(errShutdown)
		case <-runCtx.Done():
		}
	}()
	w.mu.Lock()
	w.stop, w.runCtx, w.abort = stop, runCtx, abort
	w.wakes = map[*gitproto.Remote]chan struct{}{}
	w.finished = map[*gitproto.Remote]chan struct{}{}
	remotes := w.cfg.Remotes
	w.mu.Unlock()
	for _, rem := range remotes {
		w.startLoop(rem)
	}
	if w.cfg.Wake != nil {
		go func() {
			for {
				select {
				case <-stop.Done():
					return
				case <-w.cfg.Wake:
					w.mu.Lock()
					for _, c := range w.wakes {
						select {
						case c <- struct{}{}:
						default:
						}
					}
					w.mu.Unlock()
				}
			}
		}()
	}
	<-stop.Done()
	w.log.Info("stopping: claiming nothing more", "running", w.running(), "grace", w.cfg.Grace)
	drained := make(chan struct{})
	w.mu.Lock()
	if w.runs == 0 {
		close(drained)
	} else {
		w.idle = drained
	}
	w.mu.Unlock()
	select {
	case <-drained:
	case <-time.After(w.cfg.Grace):
		w.log.Warn("grace period over: cancelling running pipelines", "running", w.running())
		cancelRuns(errShutdown)
		<-drained
	case <-abort.Done():
		cancelRuns(errShutdown)
		<-drained
	}
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.loops.Wait()
	w.runDirs.Close()
	return nil
}

// AddRemote makes the worker serve one more remote. Before Run it only
// adds to the list; while Run runs, the remote's loop starts at once.
// Adding a remote whose URL is already served does nothing. Safe for
// concurrent use.
func (w *Worker) AddRemote(rem *gitproto.Remote) {
	w.mu.Lock()
	for _, r := range w.cfg.Remotes {
		if r.URL == rem.URL {
			w.mu.Unlock()
			return
		}
	}
	w.cfg.Remotes = append(w.cfg.Remotes, rem)
	running := w.wakes != nil
	w.mu.Unlock()
	if running {
		w.startLoop(rem)
	}
}

// Poke makes the loop of the remote with this URL poll at once (the SSH
// endpoint calls it when a request is pushed). It reports whether the
// worker serves that remote.
func (w *Worker) Poke(url string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for rem, c := range w.wakes {
		if rem.URL == url {
			select {
			case c <- struct{}{}:
			default:
			}
			return true
		}
	}
	return false
}

// startLoop starts the loop of one remote, unless Run is already over.
func (w *Worker) startLoop(rem *gitproto.Remote) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	wake := make(chan struct{}, 1)
	w.wakes[rem] = wake
	w.finished[rem] = make(chan struct{}, 1)
	w.loops.Add(1)
	go func() {
		defer w.loops.Done()
		w.remoteLoop(w.stop, w.runCtx, w.abort, rem, wake)
	}()
}

func (w *Worker) running() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.active)
}

// problem logs a remote problem once per change of kind, not per retry.
type problem struct {
	last string
}

func (p *problem) report(log *slog.Logger, url string, err error) {
	msg := err.Error()
	if msg != p.last {
		log.Error("remote problem; retrying with backoff", "remote", gitproto.RedactURL(url), "err", msg)
		p.last = msg
	}
}

func (p *problem) clear(log *slog.Logger, url string) {
	if p.last != "" {
		log.Info("remote is back", "remote", gitproto.RedactURL(url))
		p.last = ""
	}
}

// remoteLoop polls one remote until stop; after stop it keeps pushing
// results until every run of this remote has been published (or abort).
func (w *Worker) remoteLoop(stop, runCtx, abort context.Context, rem *gitproto.Remote, wake <-chan struct{}) {
	var prob problem
	backoff := time.Duration(0)
	var retryAt time.Time // with backoff: when the next try is due
	tick := min(w.cfg.Lease/3, w.cfg.Snapshot, w.cfg.Poll)
	lastPoll, lastFlush, lastFetch := time.Time{}, time.Time{}, time.Time{}
	moreWaiting := false
	w.mu.Lock()
	finished := w.finished[rem]
	w.mu.Unlock()
	timer := time.NewTimer(0)
	defer timer.Stop()
	var maintaining atomic.Bool
	var housekeeping sync.WaitGroup
	// The cache's housekeeping (git) ends with the loop: no git of this
	// worker outlives it (a second signal cancels runCtx, and with it git).
	defer housekeeping.Wait()
	lastMaint, lastFull, lastCompact := time.Time{}, time.Time{}, time.Time{}
	compactFailed := false
	for {
		stopping := stop.Err() != nil
		if stopping && w.activeOn(rem) == 0 && w.outboxEmpty(rem) {
			return
		}
		if abort.Err() != nil && w.activeOn(rem) == 0 {
			w.flushOutbox(context.WithoutCancel(abort), rem) // one last try
			return
		}
		select {
		case <-timer.C:
		case <-wake:
			lastPoll = time.Time{}
		case <-finished:
			if backoff > 0 && w.now().Before(retryAt) {
				// The remote is failing: a snapshot or a finished run
				// waits for the backoff's retry, not a pass of its own.
				continue
			}
		case <-stop.Done():
			if !stopping {
				continue
			}
			<-timer.C
		}
		now := w.now()
		var err error
		claimed := 0
		active := w.activeOn(rem)
		// Poll on schedule, or early when the last poll filled every
		// free place and the queue of claimed runs is running low.
		if !stopping && (now.Sub(lastPoll) >= w.cfg.Poll || moreWaiting && active <= cap(w.slots)) {
			// An early poll for more work works from the cache the
			// last poll fetched.
			fetch := !moreWaiting || now.Sub(lastFetch) >= w.cfg.Poll
			lastPoll = now
			if fetch {
				lastFetch = now
			}
			claimed, err = w.poll(runCtx, rem, fetch)
			moreWaiting = claimed > 0 && claimed >= w.claimAhead()-active
		} else {
			err = w.renewLeasesAndPushSnapshots(runCtx, rem)
		}
		// Push results in batches while runs go on; at once when the
		// last one is done.
		if err == nil && (stopping || active == 0 || now.Sub(lastFlush) >= 300*time.Millisecond) {
			lastFlush = now
			err = w.flushOutbox(context.WithoutCancel(abort), rem)
		}
		// The cache's housekeeping, beside the passes: its packs merged
		// when they pile up, git gc --auto at start and then hourly (a
		// no-op until it is due), and a full one daily.
		hourly := now.Sub(lastMaint) >= cacheMaintenanceEvery
		if err == nil && !stopping && !maintaining.Load() && (hourly || now.Sub(lastCompact) >= cacheCompactCheckEvery) {
			full := false
			if hourly {
				lastMaint = now
				if lastFull.IsZero() {
					lastFull = now // the first full one a day after start
				} else if now.Sub(lastFull) >= cacheFullMaintenanceEvery {
					full, lastFull = true, now
				}
			}
			lastCompact = now
			maintaining.Store(true)
			housekeeping.Add(1)
			go func() {
				defer housekeeping.Done()
				defer maintaining.Store(false)
				if hourly {
					if perr := protectPending(rem); perr != nil {
						w.log.Warn("cannot keep the results waiting to be pushed safe from the cache maintenance; it is skipped this hour", "remote", gitproto.RedactURL(rem.URL), "cache", rem.Cache, "err", perr)
					} else if merr := rem.CollectGarbage(runCtx, 0, full); merr != nil {
						w.log.Warn("cache maintenance failed; it is tried again in an hour", "remote", gitproto.RedactURL(rem.URL), "cache", rem.Cache, "err", merr)
					}
				}
				if _, merr := rem.CompactPacks(runCtx, cachePackLimit); merr != nil && !compactFailed {
					compactFailed = true // said once; tried again every check
					w.log.Warn("merging the cache's packs failed; lookups in it slow down as packs pile up", "remote", gitproto.RedactURL(rem.URL), "cache", rem.Cache, "err", merr)
				}
			}()
		}
		next := tick
		switch {
		case err != nil:
			prob.report(w.log, rem.URL, err)
			backoff = nextBackoff(backoff, w.cfg.Lease)
			w.forgetExpired(rem)
			next = backoff
			retryAt = w.now().Add(backoff)
		default:
			prob.clear(w.log, rem.URL)
			backoff = 0
			if claimed > 0 && w.activeOn(rem) <= cap(w.slots) {
				lastPoll = time.Time{} // more may be waiting: poll again at once
				next = 0
			}
		}
		if stopping && next > 200*time.Millisecond && err == nil {
			next = 200 * time.Millisecond
		}
		// Other wake-ups (a run finished, a push done) must not push the
		// next scheduled poll back.
		if due := lastPoll.Add(w.cfg.Poll).Sub(w.now()); err == nil && !stopping && due < next {
			next = max(due, 0)
		}
		timer.Reset(next)
	}
}

// nextBackoff is the wait before the next try at a failing remote: it
// doubles from a second up to ten seconds, but stays under a sixth of a
// lease. A worker cut off with runs claimed must be back, and have renewed
// or published, within the half lease other workers wait before taking an
// expired claim over (expiredLongEnough); otherwise a short lease and a
// long outage run a request twice.
func nextBackoff(prev, lease time.Duration) time.Duration {
	ceiling := min(10*time.Second, lease/6)
	return min(max(2*prev, min(time.Second, ceiling)), ceiling)
}

func (w *Worker) activeOn(rem *gitproto.Remote) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, a := range w.active {
		if a.remote == rem {
			n++
		}
	}
	return n
}

// Fetched namespaces: requests and claims are mirrored into the cache
// under the same names (runs are never fetched wholesale).
var pollRefspecs = []string{
	"+" + queue.RequestsPrefix + "*:" + queue.RequestsPrefix + "*",
	"+" + queue.ClaimsPrefix + "*:" + queue.ClaimsPrefix + "*",
}

// poll fetches requests and claims, cancels runs whose request changed,
// renews leases, and claims what is free. It returns how many requests it
// claimed.
//
// With fetch false it works from the cache as the previous poll left it,
// one pass old: every decision taken from it is checked again, by the
// compare-and-swap of the claim and by the re-check after winning.
func (w *Worker) poll(ctx context.Context, rem *gitproto.Remote, fetch bool) (int, error) {
	if fetch {
		if err := rem.Fetch(ctx, pollRefspecs...); err != nil {
			return 0, err
		}
	}
	repo, err := gitproto.Open(rem.Cache)
	if err != nil {
		return 0, err
	}
	requests, err := refMap(repo, queue.RequestsPrefix)
	if err != nil {
		return 0, err
	}
	claims, err := refMap(repo, queue.ClaimsPrefix)
	if err != nil {
		return 0, err
	}
	w.checkSupersede(rem, repo, requests, claims)
	if err := w.renewLeasesAndPushSnapshots(ctx, rem); err != nil {
		return 0, err
	}
	return w.claim(ctx, rem, repo, requests, claims)
}

func refMap(repo *gitproto.Repo, prefix string) (map[string]gitproto.Hash, error) {
	refs, err := repo.Refs(prefix)
	if err != nil {
		return nil, err
	}
	m := make(map[string]gitproto.Hash, len(refs))
	for _, r := range refs {
		m[strings.TrimPrefix(r.Name, prefix)] = r.Hash
	}
	return m, nil
}

// checkSupersede cancels our runs whose request was re-pushed with
// another value or deleted, or whose claim another worker now holds.
func (w *Worker) checkSupersede(rem *gitproto.Remote, repo *gitproto.Repo, requests, claims map[string]gitproto.Hash) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, a := range w.active {
		if a.remote != rem {
			continue
		}
		name := a.claim.Request
		cur, ok := requests[name]
		switch {
		case !ok:
			a.cancel(fmt.Errorf("the request %s was deleted", name))
		case cur.String() != a.claim.RequestObject:
			a.cancel(fmt.Errorf("superseded: the request %s now points at %s", name, cur.String()[:12]))
		}
		if cv, ok := claims[name]; ok && cv != a.claimVal && !claimBefore(repo, cv, a.claimVal) {
			if c, err := results.ReadClaim(repo, name, cv); err == nil && c.Run != a.claim.Run {
				a.cancel(fmt.Errorf("the claim was taken over by worker %s (run %s); this worker's lease had expired", c.Worker, c.Run))
			}
		}
	}
}

// claim pushes claims for free requests, as many as there are free slots,
// in one push, and starts a run for each claim won.
func (w *Worker) claim(ctx context.Context, rem *gitproto.Remote, repo *gitproto.Repo, requests, claims map[string]gitproto.Hash) (int, error) {
	// Claim up to eight times the concurrency: runs queue for a slot, so a
	// finished run's slot is refilled at once instead of a poll later, and
	// the git round trips of a pass are shared by many runs.
	free := w.claimAhead() - w.activeOn(rem)
	if free <= 0 || ctx.Err() != nil {
		return 0, nil
	}
	type pending struct {
		claim  queue.Claim
		commit gitproto.Hash
		old    gitproto.Hash
	}
	var batch []pending
	var cleanups []gitproto.RefUpdate
	now := w.now().UTC()
	for name, reqVal := range sortedMap(requests) {
		if len(batch) >= free {
			break
		}
		if w.isActive(rem, name) {
			continue
		}
		if err := queue.ValidateRequestName(name); err != nil {
			w.log.Warn("ignoring a request with an unusable name", "remote", gitproto.RedactURL(rem.URL), "request", name, "err", err)
			continue
		}
		c := queue.Claim{
			Format: queue.Format, Request: name, RequestObject: reqVal.String(), Attempt: 1,
			Worker: w.cfg.Signer.Fingerprint(), Host: w.cfg.Host, Claimed: now, Renewed: now,
			LeaseExpires: now.Add(w.cfg.Lease), Run: queue.NewRunID(now),
		}
		old := gitproto.ZeroHash
		if cv, ok := claims[name]; ok {
			prev, err := results.ReadClaim(repo, name, cv)
			if err == nil && !prev.Expired(now) {
				continue // someone is running it
			}
			if !w.expiredLongEnough(rem, name, cv, now) {
				continue // give its worker a chance to renew, e.g. after an outage
			}
			if err == nil {
				// An expired claim: did its worker publish a final result?
				final, ferr := w.finalPublished(ctx, rem, prev)
				if ferr != nil {
					return 0, ferr
				}
				if final {
					cleanups = append(cleanups, gitproto.RefUpdate{Name: queue.ClaimRef(name), Old: cv})
					if prev.RequestObject == reqVal.String() {
						cleanups = append(cleanups, gitproto.RefUpdate{Name: queue.RequestRef(name), Old: reqVal})
					}
					continue
				}
				c.Attempt = prev.Attempt + 1
				c.PreviousRun = prev.Run
				if prev.RequestObject != reqVal.String() {
					c.Attempt = 1 // a new request value: a fresh start
				}
			} else {
				w.log.Warn("taking over an unreadable claim", "request", name, "err", err)
			}
			old = cv
		}
		target, err := peel(repo, reqVal)
		if err != nil {
			target = reqVal
		}
		c.Target = target.String()
		commit, err := w.writeClaim(repo, &c, old)
		if err != nil {
			return 0, err
		}
		batch = append(batch, pending{claim: c, commit: commit, old: old})
	}
	// Claims left without a request (a worker died between deleting the
	// request and its claim) are removed once expired.
	for name, cv := range sortedMap(claims) {
		if _, ok := requests[name]; ok || w.isActive(rem, name) {
			continue
		}
		if prev, err := results.ReadClaim(repo, name, cv); err == nil && prev.Expired(now) && w.expiredLongEnough(rem, name, cv, now) {
			w.log.Debug("removing an expired claim whose request is gone", "request", name, "claim", cv.String()[:12])
			cleanups = append(cleanups, gitproto.RefUpdate{Name: queue.ClaimRef(name), Old: cv})
		}
	}
	if len(cleanups) > 0 {
		res, err := rem.Push(ctx, cleanups, false)
		if err != nil {
			return 0, err
		}
		w.noteRefusals(rem, res, "a cleanup was refused (another worker's, most likely)")
	}
	if len(batch) == 0 {
		return 0, nil
	}
	updates := make([]gitproto.RefUpdate, len(batch))
	for i, p := range batch {
		updates[i] = gitproto.RefUpdate{Name: queue.ClaimRef(p.claim.Request), New: p.commit, Old: p.old}
	}
	results, err := rem.Push(ctx, updates, false)
	if err != nil {
		return 0, err
	}
	// A lost race is normal; a lock file left on the remote refuses the
	// claim every time, and the request never runs: said once.
	w.noteRefusals(rem, results, "lost a claim race")
	var wonBatch []pending
	for i, res := range results {
		if res.OK {
			wonBatch = append(wonBatch, batch[i])
		}
	}
	if len(wonBatch) == 0 {
		return 0, nil
	}
	// Our view of the requests may be older than a run that another
	// worker finished meanwhile: it deleted the request, then its claim,
	// and our create-if-absent claim then succeeded. Look again: a claim
	// whose request is gone or changed is released, not run. Workers
	// delete a request strictly before its claim, so a claim we won
	// implies this fetch sees such a deletion.
	names := make([]string, len(wonBatch))
	for i, p := range wonBatch {
		names[i] = queue.RequestRef(p.claim.Request)
	}
	listed, err := rem.RefValues(ctx, names)
	if err != nil {
		return 0, err // the claims expire and are taken over: nothing runs twice
	}
	now2 := make(map[string]gitproto.Hash, len(listed))
	for name, h := range listed {
		now2[strings.TrimPrefix(name, queue.RequestsPrefix)] = h
	}
	var release []gitproto.RefUpdate
	won := 0
	for _, p := range wonBatch {
		if cur, ok := now2[p.claim.Request]; !ok || cur.String() != p.claim.RequestObject {
			release = append(release, gitproto.RefUpdate{Name: queue.ClaimRef(p.claim.Request), Old: p.commit})
			continue
		}
		won++
		w.startClaimed(ctx, rem, p.claim, p.commit)
	}
	if len(release) > 0 {
		res, err := rem.Push(ctx, release, false)
		if err != nil {
			return won, err
		}
		// Only this worker writes its claim: one not released expires,
		// and goes as an orphan.
		w.noteRefusals(rem, res, "could not release a claim won for a request that is gone")
	}
	return won, nil
}

// sortedMap iterates a map in key order, so that requests are claimed
// oldest-name-first deterministically.
func sortedMap(m map[string]gitproto.Hash) func(func(string, gitproto.Hash) bool) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return func(yield func(string, gitproto.Hash) bool) {
		for _, k := range keys {
			if !yield(k, m[k]) {
				return
			}
		}
	}
}

// claimBefore reports whether claim commit old is in the history of ours:
// the claim we took over, or one of our earlier renewals, which a cache
// fetched before our push still shows. A claim that replaced ours has ours
// in its history instead (takeovers and renewals are children of the
// value they replace).
func claimBefore(repo *gitproto.Repo, old, ours gitproto.Hash) bool {
	for h, i := ours, 0; i < 1000; i++ {
		c, err := repo.Commit(h)
		if err != nil || len(c.Parents) == 0 {
			return false
		}
		if h = c.Parents[0]; h == old {
			return true
		}
	}
	return false
}

// peel follows tags to the object they name.
func peel(repo *gitproto.Repo, h gitproto.Hash) (gitproto.Hash, error) {
	for i := 0; i < 10; i++ {
		typ, err := repo.ObjectType(h)
		if err != nil {
			return h, err
		}
		if typ != "tag" {
			return h, nil
		}
		t, err := repo.Tag(h)
		if err != nil {
			return h, err
		}
		h = t.Target
	}
	return h, fmt.Errorf("tags nested too deep")
}

// finalPublished reports whether the run an expired claim names already
// has a final result on the remote.
func (w *Worker) finalPublished(ctx context.Context, rem *gitproto.Remote, c *queue.Claim) (bool, error) {
	ref := queue.RunRef(c.Target, c.Run)
	if err := rem.Fetch(ctx, "+"+ref+":"+ref); err != nil {
		var re *gitproto.RemoteError
		if errors.As(err, &re) && strings.Contains(re.Stderr, "couldn't find remote ref") {
			return false, nil // the dead worker published nothing under that run
		}
		return false, err
	}
	repo, err := gitproto.Open(rem.Cache)
	if err != nil {
		return false, err
	}
	h, err := repo.RefHash(ref)
	if err != nil {
		return false, nil
	}
	b, err := repo.ReadFile(h, queue.StatusFile)
	if err != nil {
		return false, nil
	}
	commit, err := repo.Commit(h)
	if err != nil {
		return false, nil
	}
	// Only a result that says it is this run counts (a final result
	// copied under the run's ref does not end the request).
	st, err := queue.DecodeResult(ref, b, commit.Message)
	if err != nil || st.Request != c.Request || st.Attempt != c.Attempt {
		return false, nil
	}
	return st.State.Final(), nil
}

// writeClaim writes a signed claim commit whose parent is old (if any).
func (w *Worker) writeClaim(repo *gitproto.Repo, c *queue.Claim, old gitproto.Hash) (gitproto.Hash, error) {
	return w.writeClaimSigned(repo, c, old, w.cfg.Signer.SignDetached)
}

// writeClaimSigned is writeClaim with the commit signed by sign.
func (w *Worker) writeClaimSigned(repo *gitproto.Repo, c *queue.Claim, old gitproto.Hash, sign gitproto.SignFunc) (gitproto.Hash, error) {
	b, err := queue.EncodeClaim(c)
	if err != nil {
		return gitproto.ZeroHash, err
	}
	blob, err := repo.WriteBlob(b)
	if err != nil {
		return gitproto.ZeroHash, err
	}
	tree, err := repo.WriteTree([]gitproto.TreeFile{{Path: queue.ClaimFile, Hash: blob}})
	if err != nil {
		return gitproto.ZeroHash, err
	}
	var parents []gitproto.Hash
	if old != gitproto.ZeroHash {
		parents = []gitproto.Hash{old}
	}
	name, email := splitUserID(w.cfg.Signer.UserID())
	return repo.WriteCommit(gitproto.CommitSpec{
		Tree: tree, Parents: parents,
		Author:  gitproto.NewSignature(name, email, c.Renewed),
		Message: queue.ClaimMessage(c),
	}, sign)
}

func (w *Worker) isActive(rem *gitproto.Remote, name string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.active[rem.URL+"\x00"+name]
	return ok
}

// startClaimed runs a claimed request in the background.
func (w *Worker) startClaimed(ctx context.Context, rem *gitproto.Remote, c queue.Claim, claimVal gitproto.Hash) {
	runCtx, cancel := context.WithCancelCause(ctx)
	a := &activeRun{remote: rem, claim: c, claimRef: queue.ClaimRef(c.Request), claimVal: claimVal, cancel: cancel,
		runRef: queue.RunRef(c.Target, c.Run)}
	key := rem.URL + "\x00" + c.Request
	w.mu.Lock()
	w.active[key] = a
	w.runs++
	wake := w.finished[rem]
	w.mu.Unlock()
	go func() {
		defer cancel(nil)
		select {
		case w.slots <- struct{}{}:
			w.runClaimed(runCtx, a)
			<-w.slots
		case <-runCtx.Done():
			// Cancelled while waiting for a slot: it still gets a result.
			w.runClaimed(runCtx, a)
		}
		w.mu.Lock()
		delete(w.active, key)
		if w.runs--; w.runs == 0 && w.idle != nil {
			close(w.idle)
			w.idle = nil
		}
		w.mu.Unlock()
		select { // push the result and claim more now, not a tick later
		case wake <- struct{}{}:
		default:
		}
	}()
}

// runClaimed runs one claimed request and queues its result for pushing.
func (w *Worker) runClaimed(ctx context.Context, a *activeRun) {
	log := w.log.With("remote", gitproto.RedactURL(a.remote.URL), "request", a.claim.Request, "run", a.claim.Run, "attempt", a.claim.Attempt)
	repo, err := gitproto.Open(a.remote.Cache)
	if err != nil {
		log.Error("cannot open the cache repository", "err", err)
		return
	}
	spec := RunSpec{
		Repo: repo, Target: gitproto.Hash(hashOf(a.claim.Target)), Request: a.claim.Request, RequestObject: a.claim.RequestObject, RunID: a.claim.Run,
		Attempt: a.claim.Attempt, PreviousRun: a.claim.PreviousRun,
		Limits:    w.cfg.Limits,
		Isolation: w.cfg.Isolation,
		RefciPath: w.cfg.RefciPath, Shim: w.cfg.Shim, TempDir: w.cfg.TempDir, Dirs: w.runDirs, Host: w.cfg.Host, Version: w.cfg.Version, Now: w.now,
		SnapshotEvery: w.cfg.Snapshot, Secrets: w.cfg.Secrets, Remote: a.remote.URL, Page: w.cfg.Page, NoRunRef: true,
		OnSnapshot: func(_ string, c gitproto.Hash) {
			a.mu.Lock()
			a.snapshots = append(a.snapshots, c)
			a.mu.Unlock()
			// Push it now, not at the remote loop's next tick: followers
			// see output as soon as it is snapshot.
			w.mu.Lock()
			wake := w.finished[a.remote]
			w.mu.Unlock()
			select {
			case wake <- struct{}{}:
			default:
			}
		},
		CancelReason: func() string {
			if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
				return "cancelled: " + c.Error()
			}
			return "cancelled"
		},
	}
	if reqObj := hashOf(a.claim.RequestObject); reqObj != spec.Target {
		if t, err := repo.Tag(reqObj); err == nil {
			w.applyOptions(&spec, t.Message)
			if spec.Refusal != "" {
				log.Warn("bad request options: the run ends in state error", "err", spec.Refusal)
			}
		}
	}
	if limit := cmp.Or(w.cfg.MaxAttempts, DefaultMaxAttempts); a.claim.Attempt > limit {
		// Each earlier attempt's worker vanished (killed, out of memory,
		// a machine that died): running it once more would likely kill
		// this one too. The request ends here, with a result.
		n := a.claim.Attempt - 1
		spec.Refusal = fmt.Sprintf("gave up after %d attempt%s: the worker was lost each time (the last attempt was run %s); push the request again to retry", n, map[bool]string{true: "s"}[n != 1], a.claim.PreviousRun)
		log.Warn("giving up on a request whose every attempt lost its worker", "attempts", a.claim.Attempt-1)
	}
	if w.cfg.Trust != nil {
		var why string
		spec.Trusted, why = w.cfg.Trust(TrustQuery{Remote: a.remote.URL, Repo: repo, Request: a.claim.Request,
			RequestObject: hashOf(a.claim.RequestObject), Target: spec.Target})
		spec.TrustReason = why
	}
	log.Info("run started", "target", a.claim.Target, "trusted", spec.Trusted)
	began := time.Now()
	out, err := Run(ctx, spec, w.cfg.Signer)
	w.noteRunTime(time.Since(began))
	// Not even a short error result could be written (the cache's disk
	// is full): keep it, and write it once there is space again, rather
	// than leave the request to be run again.
	for wait := time.Second; err != nil && out != nil && out.retry != nil; wait = min(2*wait, 10*time.Second) {
		log.Error("the run's result cannot be stored; retrying until there is space", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			log.Error("gave up storing the result: the run was cancelled", "err", context.Cause(ctx))
			return
		case <-time.After(wait):
		}
		out, err = out.retry()
	}
	if err != nil || out == nil || out.Commit == gitproto.ZeroHash {
		log.Error("no result could be recorded; the claim will expire and another attempt will run", "err", err)
		return
	}
	log.Info("run finished", "state", out.Status.State, "duration_ms", out.Status.DurationMS)
	w.queueResult(a, out.Commit, out.RefWritten)
}

// DefaultMaxTimeout is the longest timeout a request may ask for, unless
// the worker is configured otherwise (Config.MaxTimeout).
const DefaultMaxTimeout = 6 * time.Hour

// DefaultMaxAttempts is how many attempts of a request may lose their
// worker before a worker ends it in state error (Config.MaxAttempts).
const DefaultMaxAttempts = 3

// applyOptions reads the request options of a request tag's message into
// spec: the environment, and the timeout capped at the worker's
// MaxTimeout. Bad options set spec.Refusal: the run then ends in
// state error naming them, and the pipeline does not run.
func (w *Worker) applyOptions(spec *RunSpec, msg string) {
	opts, err := queue.ParseRequestOptions(msg)
	if err != nil {
		spec.Refusal = err.Error() + "; the pipeline did not run: fix the request tag's message and push the request again"
		return
	}
	spec.Env = opts.Env
	if opts.Timeout <= 0 {
		return
	}
	limit := max(orDefault(w.cfg.MaxTimeout, DefaultMaxTimeout), orDefault(w.cfg.Timeout, DefaultTimeout))
	spec.Timeout = opts.Timeout
	if opts.Timeout > limit {
		spec.Timeout, spec.TimeoutRequested = limit, opts.Timeout
	}
}

func hashOf(s string) gitproto.Hash { return gitproto.NewHash(s) }

// seenExpired is when this worker first saw a claim value expired.
type seenExpired struct {
	val  gitproto.Hash
	when time.Time
}

// expiredLongEnough reports whether this worker has seen the claim value
// cv of request name expired, unchanged, for at least half a lease. A
// worker that was cut off from the remote retries at least every sixth
// of a lease, and renews or publishes on its first pass once it is back, so it keeps its run instead of losing it to a
// takeover that would run the request twice.
func (w *Worker) expiredLongEnough(rem *gitproto.Remote, name string, cv gitproto.Hash, now time.Time) bool {
	key := rem.URL + "\x00" + name
	w.mu.Lock()
	defer w.mu.Unlock()
	s, ok := w.expired[key]
	if !ok || s.val != cv {
		w.expired[key] = seenExpired{val: cv, when: now}
		return false
	}
	if now.Sub(s.when) < w.cfg.Lease/2 {
		return false
	}
	delete(w.expired, key)
	return true
}

// forgetExpired drops what was seen of rem: after an outage nothing seen
// before counts.
func (w *Worker) forgetExpired(rem *gitproto.Remote) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k := range w.expired {
		if strings.HasPrefix(k, rem.URL+"\x00") {
			delete(w.expired, k)
		}
	}
}

// claimAhead is how many runs of one remote may be claimed at once,
// running or waiting for a slot: about two seconds of work per slot, judged
// from how long recent runs took, and at least one per slot. Short runs
// are claimed many at a time, so that the git round trips of a pass are
// shared by many of them; long runs are claimed only as slots free up,
// so that other workers are not kept waiting behind a queue here.
func (w *Worker) claimAhead() int {
	slots := cap(w.slots)
	avg := time.Duration(w.avgRun.Load())
	if avg <= 0 {
		return slots
	}
	return slots * min(max(int(2*time.Second/avg), 1), maxClaimAhead)
}

// cacheMaintenanceEvery is how often a remote's cache gets git's
// housekeeping (Remote.CollectGarbage), and cacheFullMaintenanceEvery how often
// that is a full one, pruning what is no longer used.
const (
	cacheMaintenanceEvery     = time.Hour
	cacheFullMaintenanceEvery = 24 * time.Hour
)

// cachePackLimit is how many packs a cache may hold before its smaller
// ones are merged (Remote.CompactPacks), looked at every
// cacheCompactCheckEvery (packs come from fetches, at most one a poll).
const (
	cachePackLimit         = 32
	cacheCompactCheckEvery = 10 * time.Second
)

// maxClaimAhead bounds claimAhead per slot.
const maxClaimAhead = 32

// noteRunTime adds a run's duration to the moving average claimAhead uses.
func (w *Worker) noteRunTime(d time.Duration) {
	for {
		old := w.avgRun.Load()
		nv := int64(d)
		if old > 0 {
			nv = old + (int64(d)-old)/5
		}
		if w.avgRun.CompareAndSwap(old, nv) {
			return
		}
	}
}

// lockSeen is when a ref's update was first refused because a lock file
// held it, and whether that was said.
type lockSeen struct {
	since time.Time
	told  bool
}

// staleLockAfter is how long a lock file may hold a ref of the remote
// before the worker says that it is left over, not a concurrent update.
const staleLockAfter = time.Minute

// noteRefusals logs the refused updates of a claim or cleanup push at
// debug level (losing such a race is normal), and says once, as a
// warning, when a ref has been held by a lock file for staleLockAfter:
// git leaves "<ref>.lock" behind when a process updating the ref is
// killed, or its repository moved, meanwhile; nothing can change that ref
// until the file is removed (a request whose claim ref is locked never
// runs; a done request's claim stays).
func (w *Worker) noteRefusals(rem *gitproto.Remote, res []gitproto.PushResult, what string) {
	now := w.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range res {
		key := rem.URL + "\x00" + r.Name
		if r.OK {
			delete(w.locked, key)
			continue
		}
		w.log.Debug(what, "ref", r.Name, "reason", r.Message, "detail", r.Detail)
		if !strings.Contains(strings.ToLower(r.Detail), ".lock': file exists") {
			delete(w.locked, key)
			continue
		}
		s, ok := w.locked[key]
		switch {
		case !ok:
			w.locked[key] = lockSeen{since: now}
		case !s.told && now.Sub(s.since) >= staleLockAfter:
			w.log.Warn("the remote cannot update a ref: a lock file left by a git process that was killed there holds it; if no git process is running in that repository, remove the file",
				"remote", gitproto.RedactURL(rem.URL), "ref", r.Name, "for", now.Sub(s.since).Round(time.Second), "git_said", r.Detail)
			s.told = true
			w.locked[key] = s
		}
	}
}
