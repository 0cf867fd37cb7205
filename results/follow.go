package results

import (
	"context"
	"errors"
	"fmt"
	"time"

	"refci.dev/refci/queue"
)

// Want says which run of a commit a Watch follows.
type Want struct {
	// Request and Object name one push of a request: its name and the
	// object its request ref was set to (unique per `refci trigger`).
	// The run of exactly that push is followed: status.json
	// request_object, or, for a worker that does not record it, the run
	// its claim of that object names.
	Request, Object string
	// After, when set, rules out runs that started before it.
	After time.Time
	// Match selects the run when Object is "": the first believed run of
	// the commit, newest first, for which it returns true.
	Match func(*queue.Status) bool
}

// EventKind says what changed in a followed run.
type EventKind int

const (
	// FetchFailed: fetching from the remote failed (Err); the watch tries
	// again.
	FetchFailed EventKind = iota
	// Waiting: no worker has pushed the run's progress yet, a few seconds
	// after the watch began (told once).
	Waiting
	// Started: the run was found (Status, Ref); told once (a takeover
	// is told by TakenOver).
	Started
	// Progress: a snapshot of the run (Status), with the part of its log
	// not given before (Log; LogCapped when the capped log moved its tail
	// and Log is its tail from the start).
	Progress
	// TakenOver: the run lost its worker and another attempt took the
	// request over (From, To); the watch follows that attempt now.
	TakenOver
	// LeaseExpired: the run's worker stopped renewing its claim (Claim);
	// the watch waits for another worker to take the request over.
	LeaseExpired
	// Final: the run ended (Status, Ref). Next is not called again.
	Final
)

// Event is one change of a followed run. Which fields are set depends on
// Kind.
type Event struct {
	Kind      EventKind
	Ref       string        // the followed run's ref
	Status    *queue.Status // its newest snapshot
	Log       []byte
	LogCapped bool
	// From and To are the lost run and the attempt that took over.
	From, To               string
	FromAttempt, ToAttempt int
	ToWorker               string
	Claim                  *queue.Claim
	Err                    error
}

// ErrGone is returned by Next when the request was deleted or pushed
// again before any worker ran the push that was followed.
var ErrGone = errors.New("request gone")

// ErrSuperseded is returned by Next when a run lost its worker and its
// request was pushed again meanwhile, so that it is not run again.
var ErrSuperseded = errors.New("superseded")

// Watch follows one run of a commit on a source's remote until it ends.
// Not safe for concurrent use.
type Watch struct {
	src    Source
	target string
	want   Want
	match  func(*queue.Status) bool

	watch           func() string // reads a local remote's run refs; nil over the network
	pending         []Event
	began, lastLook time.Time
	claimRun        string // the run a claim of want.Object names
	cur             struct {
		ref, run, request, object string
		attempt                   int
	}
	seen                        string // the local remote's run refs before the last fetch
	logged                      int64
	announced, waitTold, polled bool
	expiryTold                  string
}

// Follow starts watching the run of target that want selects on src's
// remote. Nothing is fetched until Next.
func (s Source) Follow(ctx context.Context, target string, want Want) *Watch {
	w := &Watch{src: s, target: target, want: want, match: want.Match, began: time.Now()}
	w.cur.object = want.Object
	if want.Object != "" {
		w.match = func(st *queue.Status) bool {
			if st.Request != want.Request || st.Started.Before(want.After) {
				return false
			}
			return st.RequestObject == want.Object || st.RequestObject == "" && w.claimRun != "" && st.Run == w.claimRun
		}
	}
	w.watch = s.localWatch(ctx, target)
	return w
}

// How often a Watch looks at the remote: at most every watchEvery for a
// remote on this machine (reading a few ref files, no git process), and
// every pollEvery over the network; whether the worker is gone every
// claimEvery.
const (
	watchEvery = 100 * time.Millisecond
	pollEvery  = time.Second
	claimEvery = 5 * time.Second
	waitNote   = 3 * time.Second
)

// Next returns the next change of the run, waiting for it. After a Final
// event the watch is done. Errors: ErrGone, ErrSuperseded, a run that is
// not believed (NotBelieved), an unreadable repository or result, or
// ctx's when it ends.
func (w *Watch) Next(ctx context.Context) (Event, error) {
	for len(w.pending) == 0 {
		if w.polled && !w.wait(ctx, pollEvery) {
			return Event{}, ctx.Err()
		}
		w.polled = true
		if err := w.look(ctx); err != nil {
			return Event{}, err
		}
	}
	ev := w.pending[0]
	w.pending = w.pending[1:]
	return ev, nil
}

func (w *Watch) emit(ev Event) { w.pending = append(w.pending, ev) }

// look fetches once and queues what changed.
func (w *Watch) look(ctx context.Context) error {
	// Before the run is found: is the request still there, or claimed?
	// Looked at before the fetch below, so that a request that ran and is
	// gone has its result fetched by then.
	gone := ""
	if w.cur.ref == "" && w.want.Object != "" && time.Since(w.lastLook) >= claimEvery {
		w.lastLook = time.Now()
		if cv, err := w.src.Claim(ctx, w.want.Request); err == nil {
			ours := cv.Claim != nil && cv.Claim.RequestObject == w.want.Object
			if ours {
				w.claimRun = cv.Claim.Run
			}
			if !ours && (!cv.Present || cv.Claim != nil) && cv.Request != w.want.Object {
				gone = "was deleted"
				if cv.HasRequest {
					gone = "was pushed again (it now holds " + shortID(cv.Request) + ")"
				}
			}
		}
	}
	w.seen = ""
	if w.watch != nil {
		w.seen = w.watch() // before the fetch: a change during it is fetched next time
	}
	if err := w.src.FetchRuns(ctx, w.target); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		w.emit(Event{Kind: FetchFailed, Err: err})
	}
	repo, err := w.src.Open()
	if err != nil {
		return err
	}
	if w.cur.ref == "" {
		runs, _ := List(repo, w.target)
		for _, r := range runs {
			if r.Future {
				continue // never taken for the run asked for
			}
			if st, err := r.Read(repo); err == nil && w.match(st) {
				w.cur.ref, w.cur.run, w.cur.request, w.cur.attempt = r.Ref, st.Run, st.Request, st.Attempt
				break
			}
		}
		if w.cur.ref == "" && gone != "" {
			return wrap(fmt.Sprintf("request %s %s before a worker ran it; the run asked for will not happen", w.want.Request, gone), ErrGone)
		}
		if w.cur.ref == "" && !w.waitTold && time.Since(w.began) > waitNote {
			w.emit(Event{Kind: Waiting})
			w.waitTold = true
		}
	}
	var st *queue.Status // the followed run's newest snapshot, once it has one
	h, err := repo.RefHash(w.cur.ref)
	if w.cur.ref != "" && err == nil {
		if st, err = Read(repo, w.cur.ref, h); err != nil {
			if NotBelieved(err) {
				return wrap(fmt.Sprintf("run %s is not believed: %s", w.cur.ref, Problem(err)), err)
			}
			return err
		}
		w.cur.request, w.cur.attempt = st.Request, st.Attempt
		if st.RequestObject != "" {
			w.cur.object = st.RequestObject
		}
		if !w.announced {
			w.emit(Event{Kind: Started, Ref: w.cur.ref, Status: st})
			w.announced = true
		}
		ev := Event{Kind: Progress, Ref: w.cur.ref, Status: st}
		if b, err := repo.ReadFile(h, queue.LogFile); err == nil {
			if int64(len(b)) < w.logged {
				ev.LogCapped, w.logged = true, 0
			}
			ev.Log = b[w.logged:]
			w.logged = int64(len(b))
		}
		w.emit(ev)
		if st.State.Final() {
			w.emit(Event{Kind: Final, Ref: w.cur.ref, Status: st})
			return nil
		}
	}
	// While it runs, look now and then whether its worker is gone. A run
	// whose worker died never ends: follow the attempt that took the
	// request over instead, found by its claim (before its first
	// snapshot) or, once that is gone, by its result.
	if w.cur.request != "" && time.Since(w.lastLook) >= claimEvery {
		w.lastLook = time.Now()
		if st != nil {
			if by, bySt, ok := TakenOverBy(repo, st); ok {
				w.takeOver(by.ID, by.Ref, bySt.Attempt, bySt.Worker)
				return nil
			}
		}
		if cv, err := w.src.Claim(ctx, w.cur.request); err == nil && cv.Claim != nil {
			sameObject := w.cur.object == "" || cv.Claim.RequestObject == w.cur.object
			switch c := cv.Claim; {
			case c.Run != w.cur.run && c.PreviousRun == w.cur.run && !sameObject:
				return wrap(fmt.Sprintf("run %s lost its worker, and request %s was pushed again meanwhile: run %s is of the new push, and this one will not be run again", w.cur.run, w.cur.request, c.Run), ErrSuperseded)
			case c.Run != w.cur.run && c.PreviousRun == w.cur.run && c.Target == w.target:
				w.takeOver(c.Run, queue.RunRef(c.Target, c.Run), c.Attempt, c.Worker)
				return nil
			case c.Run == w.cur.run && c.Expired(time.Now()) && w.expiryTold != w.cur.run:
				w.emit(Event{Kind: LeaseExpired, Ref: w.cur.ref, Claim: c})
				w.expiryTold = w.cur.run
			}
		}
	}
	return nil
}

// takeOver switches the watch to the attempt that took the request over,
// and looks at once (as follow did, without waiting).
func (w *Watch) takeOver(to, toRef string, toAttempt int, worker string) {
	w.emit(Event{Kind: TakenOver, From: w.cur.run, FromAttempt: w.cur.attempt, To: to, ToAttempt: toAttempt, ToWorker: worker, Ref: toRef})
	w.cur.ref, w.cur.run, w.cur.attempt, w.logged = toRef, to, toAttempt, 0
	w.polled = false
}

// wait waits before the watch looks at the remote again: most long, or,
// for a remote on this machine, until its run refs of the target differ
// from what they were before the last fetch. It returns false when ctx
// ends.
func (w *Watch) wait(ctx context.Context, most time.Duration) bool {
	return waitForRefs(ctx, most, nil, w.watch, w.seen, watchEvery)
}

// waitForRefs waits most long, or until wake says so, or, when read is
// not nil (a remote on this machine), until what read returns differs
// from seen. read is called every every, or less often when it is slow
// (a remote with many loose run refs): at most 1/readShare of the time
// goes to reading. It returns false when ctx ends.
func waitForRefs(ctx context.Context, most time.Duration, wake <-chan struct{}, read func() string, seen string, every time.Duration) bool {
	deadline := time.After(most)
	var tick *time.Timer
	var tickC <-chan time.Time
	if read != nil {
		tick = time.NewTimer(every)
		defer tick.Stop()
		tickC = tick.C
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case <-deadline:
			return true
		case <-wake:
			return true
		case <-tickC:
			t0 := time.Now()
			if read() != seen {
				return true
			}
			tick.Reset(max(every, readShare*time.Since(t0)))
		}
	}
}

// readShare bounds the time waitForRefs spends reading refs: it waits at
// least readShare times as long as a read took.
const readShare = 20

// shortID shortens an object id for a message.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// ThisRun selects the run id, or the attempt that took its request over
// when its worker died before it pushed anything. With object set, only
// runs of that push of the request (a run that does not record its
// request object is not ruled out).
func ThisRun(id, object string) Want {
	return Want{Match: func(st *queue.Status) bool {
		if object != "" && st.RequestObject != "" && st.RequestObject != object {
			return false // another push of the request than the one claimed
		}
		return st.Run == id || st.PreviousRun() == id
	}}
}

// LatestRun selects the newest run of the commit that started at most an
// hour before now.
func LatestRun(now time.Time) Want {
	return Want{Match: func(st *queue.Status) bool { return st.Started.After(now.Add(-time.Hour)) }}
}

// ClaimedRun selects the run a claim names (see WaitForClaim): its run,
// or, for a claim without one (the request ran between two looks), the
// run of that push of the request that started since it was seen.
func ClaimedRun(c *queue.Claim) Want {
	if c.Run == "" {
		return Want{Request: c.Request, Object: c.RequestObject, After: c.Claimed.Add(-queue.ClockSkew)}
	}
	return ThisRun(c.Run, c.RequestObject)
}
