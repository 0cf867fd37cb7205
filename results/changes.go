package results

import (
	"context"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// Changes watches every run on a source's remote, for a view that mirrors
// them outward (a forge's commit statuses, a mail reply): each call of
// Next returns the runs that changed since the call before. Not safe for
// concurrent use.
type Changes struct {
	src   Source
	every time.Duration
	seen  map[string]shown // what was returned last, by run ref
	first bool
	wake  chan struct{}
	// local reads the run refs of a remote on this machine; nil over the
	// network. lastLocal is what it read before the last fetch.
	local     func() string
	lastLocal string
	watched   bool
}

// shown is what a view was last told of a run.
type shown struct {
	commit gitproto.Hash
	lostTo string
}

// WatchRuns returns a watch of every run on the remote that looks at it
// every interval, at once when woken (Wake), and, for a remote on this
// machine (a path or file://), as soon as one of its run refs changes
// (read from its files every localEvery, no git process). The first Next
// returns every run there is; a view that keeps what it mirrored across
// restarts skips those it already has.
func (s Source) WatchRuns(every time.Duration) *Changes {
	return &Changes{src: s, every: every, seen: map[string]shown{}, first: true, wake: make(chan struct{}, 1)}
}

// localEvery is how often WatchRuns reads a local remote's run refs.
const localEvery = 250 * time.Millisecond

// Wake has the next (or the waiting) Next look at the remote at once: a
// worker that has just pushed a result says so. Safe for concurrent use,
// never blocks.
func (c *Changes) Wake() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Next fetches the remote's runs (waiting for the interval first, but for
// the first call) and returns those that changed: a new snapshot or final
// result, a run that appeared, and a run that was found to have lost its
// worker (Listed.TakenOverBy set, its ref unchanged). A run whose result
// is not believed is returned with Err set, once per change of its ref.
// Runs dated in the future are returned with Future set and never taken
// over. A failed fetch is returned as an error and the next call tries
// again; the error of ctx ends the watch.
func (c *Changes) Next(ctx context.Context) ([]Listed, error) {
	if !c.watched {
		c.local, c.watched = c.src.localWatch(ctx, ""), true
	}
	if !c.first && !waitForRefs(ctx, c.every, c.wake, c.local, c.lastLocal, localEvery) {
		return nil, ctx.Err()
	}
	c.first = false
	if c.local != nil {
		c.lastLocal = c.local() // before the fetch: a change during it is fetched next time
	}
	spec := "+" + queue.RunsPrefix + "*:" + queue.RunsPrefix + "*"
	if _, err := c.src.git().Run(ctx, "", "fetch", "--quiet", "--prune", "--no-write-fetch-head", c.src.Remote, spec); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	repo, err := c.src.Open()
	if err != nil {
		return nil, err
	}
	runs, err := List(repo, "")
	if err != nil {
		return nil, err
	}
	// Reading every run each time costs one status read per run; a view
	// of a busy remote reads only the runs whose ref moved, and the runs
	// of their targets, which the lost-worker rule needs.
	moved, present := map[string]bool{}, map[string]bool{}
	for _, r := range runs {
		present[r.Ref] = true
		if old, ok := c.seen[r.Ref]; !ok || old.commit != r.Commit {
			moved[r.Target] = true
		}
	}
	for ref := range c.seen {
		if !present[ref] {
			delete(c.seen, ref) // deleted on the remote
		}
	}
	var byTarget []Run
	for _, r := range runs {
		if moved[r.Target] {
			byTarget = append(byTarget, r)
		}
	}
	var out []Listed
	for _, l := range ReadAll(repo, byTarget) {
		now := shown{commit: l.Commit}
		if l.TakenOverBy != nil {
			now.lostTo = l.TakenOverBy.Run
		}
		if old, ok := c.seen[l.Ref]; ok && old == now {
			continue
		}
		c.seen[l.Ref] = now
		out = append(out, l)
	}
	return out, nil
}
