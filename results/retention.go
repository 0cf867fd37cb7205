package results

// Retention: which runs refci gc keeps, and deleting the others with
// compare-and-swap, in a repository or on a remote.

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// Retention is the policy of refci gc: which runs of a repository are
// kept. Beyond what it names, some runs are always kept (see Reason):
// the newest run of each request of every commit a branch or a tag points
// at, runs a claim names, runs without a final result younger than
// UnfinishedKept, runs dated in the future, and runs whose result cannot
// be read or believed. The zero value keeps only those. A plain value.
type Retention struct {
	// KeepLast keeps, per request name, its newest KeepLast runs (over
	// every commit).
	KeepLast int
	// KeepDays keeps every run that started less than KeepDays days ago
	// (by the time its run id names).
	KeepDays int
}

// DefaultRetention is refci gc's policy when none is given: per request
// the newest 10 runs, and every run of the last 90 days.
var DefaultRetention = Retention{KeepLast: 10, KeepDays: 90}

// UnfinishedKept is how long after it started a run without a final
// result is kept even when no claim names it: longer than any run may
// take (a worker's max_timeout, 6 h by default, plus its lease), so that
// a run whose claim was just released or taken over is not cut short.
// A run that is still running is also kept by its claim, whatever its
// age.
const UnfinishedKept = 24 * time.Hour

// Reason says why a run is kept; Remove means it is not.
type Reason int

// The reasons, in the order Decide gives them: a run kept for several
// is counted under the first.
const (
	Remove     Reason = iota // beyond the policy: deleted
	Claimed                  // a claim names it: it may be running, or its result be waiting to be published
	Unfinished               // no final result, and it started less than UnfinishedKept ago
	Unreadable               // its result could not be read or is not believed: left for a person to look at
	Future                   // dated in the future: never the latest, left for a person to look at
	Tip                      // the newest run of its request on a commit a branch or a tag points at
	Last                     // among the newest KeepLast runs of its request
	Young                    // younger than KeepDays days
)

var reasonText = [...]string{
	Remove:     "removed",
	Claimed:    "named by a claim",
	Unfinished: "unfinished",
	Unreadable: "unreadable",
	Future:     "dated in the future",
	Tip:        "latest on a branch or tag",
	Last:       "newest of their request",
	Young:      "young enough",
}

// String says the reason in a few words, as refci gc prints it.
func (r Reason) String() string {
	if r < 0 || int(r) >= len(reasonText) {
		return fmt.Sprintf("Reason(%d)", int(r))
	}
	return reasonText[r]
}

// Candidate is one run as refci gc sees it. A plain value.
type Candidate struct {
	Run            // its ref, target and id, and Commit: the value it is deleted at (compare-and-swap)
	Request string // the request it ran for ("" when Err is set)
	Final   bool   // its result is final (success, failure, error, cancelled)
	Err     error  // why its result could not be read or believed; such a run is kept
}

// Verdict is a run and why it is kept (Remove: it is not).
type Verdict struct {
	Candidate
	Keep Reason
}

// Decide applies p to runs at now, given the commits (full hex ids) that
// branches and tags point at and the run refs that claims name. It
// returns a verdict per run, in the order of runs.
func (p Retention) Decide(runs []Candidate, tips, claimed map[string]bool, now time.Time) []Verdict {
	out := make([]Verdict, len(runs))
	var believed []int // readable, not dated in the future
	for i, c := range runs {
		out[i].Candidate = c
		started, ok := queue.RunIDTime(c.ID)
		switch {
		case claimed[c.Ref]:
			out[i].Keep = Claimed
		case c.Err != nil || !ok:
			out[i].Keep = Unreadable
		case c.Future || started.After(now.Add(queue.ClockSkew)):
			out[i].Keep = Future
		case !c.Final && now.Sub(started) < UnfinishedKept:
			out[i].Keep = Unfinished
		}
		if c.Err == nil && ok && !c.Future && !started.After(now.Add(queue.ClockSkew)) {
			believed = append(believed, i)
		}
	}
	// Newest first; the ref breaks ties so that the result does not
	// depend on the order runs came in.
	sort.SliceStable(believed, func(a, b int) bool {
		ra, rb := runs[believed[a]], runs[believed[b]]
		if ra.ID != rb.ID {
			return ra.ID > rb.ID
		}
		return ra.Ref > rb.Ref
	})
	keep := func(i int, r Reason) {
		if out[i].Keep == Remove {
			out[i].Keep = r
		}
	}
	type onCommit struct{ target, request string }
	seenTip := map[onCommit]bool{}
	perRequest := map[string]int{}
	for _, i := range believed {
		c := runs[i]
		if k := (onCommit{c.Target, c.Request}); tips[c.Target] && !seenTip[k] {
			seenTip[k] = true
			keep(i, Tip)
		}
		if perRequest[c.Request] < p.KeepLast {
			keep(i, Last)
		}
		perRequest[c.Request]++
		if started, _ := queue.RunIDTime(c.ID); now.Sub(started) < time.Duration(p.KeepDays)*24*time.Hour {
			keep(i, Young)
		}
	}
	return out
}

// Inventory is what refci gc reads from a repository: every run under
// refs/ci/runs/ with its request and whether it is final, and the run
// refs its claims (refs/ci/claims/) name. A plain value; Look makes it.
type Inventory struct {
	Runs    []Candidate
	Claimed map[string]bool
}

// Look reads the inventory of repo: the run refs, and for each run its
// result's status.json and commit message, all through one git process
// (gitproto.Repo.ReadObjects), so that 100,000 runs take seconds. A ref
// under refs/ci/runs/ that is not a run ref, and a result that cannot be
// read or believed (queue.DecodeResult), is a Candidate with Err set.
// A claim names the run of its claim.json when that has a run and a
// target, believed or not (keeping a run too many is harmless).
func Look(ctx context.Context, repo *gitproto.Repo) (*Inventory, error) {
	refs, err := repo.Refs(queue.RunsPrefix)
	if err != nil {
		return nil, err
	}
	inv := &Inventory{Runs: make([]Candidate, len(refs)), Claimed: map[string]bool{}}
	names := make([]string, 0, 2*len(refs))
	for i, r := range refs {
		c := &inv.Runs[i]
		c.Ref, c.Commit = r.Name, r.Hash
		t, id, ok := queue.ParseRunRef(r.Name)
		if !ok {
			c.Err = fmt.Errorf("%s is not a run ref (refs/ci/runs/<commit>/<run-id>)", queue.Printable(r.Name))
		}
		c.Target, c.ID = t, id
		c.Future = ok && queue.RunIDFuture(id, time.Now())
		names = append(names, r.Hash.String(), r.Hash.String()+":"+queue.StatusFile)
	}
	var msg []byte
	err = repo.ReadObjects(ctx, names, func(i int, data []byte, ok bool) error {
		c := &inv.Runs[i/2]
		if i%2 == 0 {
			msg = msg[:0]
			if !ok {
				c.Err = fmt.Errorf("result %s: %w", c.Commit.String()[:12], gitproto.ErrNotFound)
			} else if _, body, found := bytes.Cut(data, []byte("\n\n")); found {
				msg = append(msg, body...)
			}
			return nil
		}
		if c.Err != nil {
			return nil
		}
		if !ok {
			c.Err = fmt.Errorf("result %s: no %s, or one over %d MiB: %w", c.Commit.String()[:12], queue.StatusFile, gitproto.MaxBatchObject>>20, gitproto.ErrNotFound)
			return nil
		}
		st, err := queue.DecodeResult(c.Ref, data, string(msg))
		if err != nil {
			c.Err = fmt.Errorf("result %s: %w", c.Commit.String()[:12], err)
			return nil
		}
		c.Request, c.Final = st.Request, st.State.Final()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the runs: %w", err)
	}
	claims, err := repo.Refs(queue.ClaimsPrefix)
	if err != nil {
		return nil, err
	}
	names = names[:0]
	for _, r := range claims {
		names = append(names, r.Hash.String()+":"+queue.ClaimFile)
	}
	err = repo.ReadObjects(ctx, names, func(i int, data []byte, ok bool) error {
		if !ok {
			return nil
		}
		if c, err := queue.DecodeClaim(data); err == nil && queue.IsObjectID(c.Target) && queue.ValidRunID(c.Run) {
			inv.Claimed[queue.RunRef(c.Target, c.Run)] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the claims: %w", err)
	}
	return inv, nil
}

// TipSet is the set of commits of tips (a ref name to the commit it
// points at), as Decide takes it.
func TipSet(tips map[string]gitproto.Hash) map[string]bool {
	out := make(map[string]bool, len(tips))
	for _, h := range tips {
		out[h.String()] = true
	}
	return out
}

// Removed is the outcome of deleting the runs a policy does not keep. A
// plain value; its zero value is "nothing deleted".
type Removed struct {
	Deleted []Verdict // deleted
	Changed []Verdict // not deleted: the ref changed since it was read (compare-and-swap)
	// Refused are not deleted: the remote refused them (on refci serve,
	// a key without the admin role), with what it said.
	Refused []RefusedRun
}

// RefusedRun is a run whose deletion a remote refused, and why.
type RefusedRun struct {
	Verdict
	Why string
}

// toRemove is the verdicts that say Remove, by ref.
func toRemove(vs []Verdict) map[string]Verdict {
	out := map[string]Verdict{}
	for _, v := range vs {
		if v.Keep == Remove {
			out[v.Ref] = v
		}
	}
	return out
}

// DeleteLocal deletes from repo the runs of vs that say Remove, each only
// if its ref still has the value it was read at, in one transaction
// (gitproto.Repo.DeleteRefs). The error is git's when nothing could be
// deleted.
func DeleteLocal(ctx context.Context, repo *gitproto.Repo, vs []Verdict) (Removed, error) {
	var out Removed
	del := toRemove(vs)
	if len(del) == 0 {
		return out, nil
	}
	refs := make(map[string]gitproto.Hash, len(del))
	for n, v := range del {
		refs[n] = v.Commit
	}
	changed, err := repo.DeleteRefs(ctx, refs)
	if err != nil {
		return out, err
	}
	for _, n := range changed {
		out.Changed = append(out.Changed, del[n])
		delete(del, n)
	}
	out.Deleted = sortedVerdicts(del)
	return out, nil
}

// DeleteBatch is how many deletions DeleteRemote sends per push: a
// --force-with-lease argument each, well below the command line's limit.
const DeleteBatch = 1000

// DeleteRemote deletes on remote the runs of vs that say Remove, each
// with --force-with-lease on the value it was read at (gitproto.Remote.
// Push, not atomic), DeleteBatch per push (all in one on a remote that
// is updated directly, which takes no command line). A run that changed since is
// not deleted (Changed); one the remote refused for another reason is in
// Refused. The error is the first push's that failed as a whole
// (*gitproto.RemoteError); what was deleted before it is in Removed.
func DeleteRemote(ctx context.Context, remote *gitproto.Remote, vs []Verdict) (Removed, error) {
	var out Removed
	all := sortedVerdicts(toRemove(vs))
	size := DeleteBatch
	if direct, _ := remote.Direct(ctx); direct {
		size = max(len(all), 1) // no command line: one transaction
	}
	for start := 0; start < len(all); start += size {
		batch := all[start:min(start+size, len(all))]
		updates := make([]gitproto.RefUpdate, len(batch))
		for i, v := range batch {
			updates[i] = gitproto.RefUpdate{Name: v.Ref, Old: v.Commit}
		}
		res, err := remote.Push(ctx, updates, false)
		if err != nil {
			return out, err
		}
		for i, r := range res {
			switch {
			case r.OK:
				out.Deleted = append(out.Deleted, batch[i])
			case r.Stale:
				out.Changed = append(out.Changed, batch[i])
			default:
				why := r.Detail
				if why == "" {
					why = r.Message
				}
				out.Refused = append(out.Refused, RefusedRun{batch[i], why})
			}
		}
	}
	return out, nil
}

func sortedVerdicts(m map[string]Verdict) []Verdict {
	out := make([]Verdict, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Ref < out[j].Ref })
	return out
}
