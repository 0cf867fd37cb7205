package results

// Collecting: one pass of refci gc on a repository or a remote (Collect),
// what it decided and did (Outcome), and the periodic passes of refci
// worker's [retention] and refci serve --retention (Schedule).

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
)

// Target is where Collect collects: a repository, whose run refs are
// deleted in place (LocalTarget), or a remote, whose runs and claims are
// fetched into the remote's cache and deleted with compare-and-swap
// pushes (RemoteTarget). Make one with LocalTarget or RemoteTarget; the
// zero value is not usable. Collect on one Target at a time (Schedule
// does): two passes would only race each other's deletions, each of
// which is compare-and-swap, but one of them reads in vain.
type Target struct {
	name   string
	repo   *gitproto.Repo   // a local target
	remote *gitproto.Remote // a remote target
}

// LocalTarget collects in repo itself: its branches, tags and
// remote-tracking branches are the tips whose latest runs are kept, and
// its run refs are deleted with git's own lock-file compare-and-swap
// (DeleteLocal). name is what messages and logs call it; "" says "this
// repository".
func LocalTarget(repo *gitproto.Repo, name string) *Target {
	if name == "" {
		name = "this repository"
	}
	return &Target{name: name, repo: repo}
}

// RemoteTarget collects on remote: its branches and tags are listed
// first, its runs and claims then fetched into remote.Cache (which
// should be a cache of gc's own, not one whose run refs are a worker's
// outbox), and the runs deleted there with --force-with-lease
// (DeleteRemote). It is named by its URL, without credentials.
func RemoteTarget(remote *gitproto.Remote) *Target {
	return &Target{name: gitproto.RedactURL(remote.URL), remote: remote}
}

// Name is what messages and logs call t.
func (t *Target) Name() string { return t.name }

// Prunes says, to a person, what prunes the objects of the runs removed
// from t, which only become unreachable.
func (t *Target) Prunes() string {
	if t.remote != nil {
		return "the remote's own gc prunes them (git gc there, or the forge's housekeeping)"
	}
	return "git's own gc prunes them (git gc --auto as you work; git gc --prune=now at once)"
}

// look returns the repository to read runs from, and the commits
// branches and tags point at.
func (t *Target) look(ctx context.Context) (*gitproto.Repo, map[string]bool, error) {
	if t.remote == nil {
		tips, err := t.repo.Tips(ctx, "refs/heads/", "refs/tags/", "refs/remotes/")
		if err != nil {
			return nil, nil, err
		}
		return t.repo, TipSet(tips), nil
	}
	// The tips first: a branch that appears after the runs were read
	// cannot have lost runs read before it.
	tips, err := t.remote.ListTips(ctx, "refs/heads/", "refs/tags/")
	if err != nil {
		return nil, nil, err
	}
	if err := t.remote.Fetch(ctx, gcRefspecs...); err != nil {
		return nil, nil, err
	}
	cache, err := gitproto.Open(t.remote.Cache)
	if err != nil {
		return nil, nil, err
	}
	return cache, TipSet(tips), nil
}

// gcRefspecs mirror a remote's runs and claims into gc's cache.
var gcRefspecs = []string{"+" + queue.RunsPrefix + "*:" + queue.RunsPrefix + "*", "+" + queue.ClaimsPrefix + "*:" + queue.ClaimsPrefix + "*"}

// delete deletes the runs of vs that say Remove; from is what look
// returned.
func (t *Target) delete(ctx context.Context, from *gitproto.Repo, vs []Verdict) (Removed, error) {
	if t.remote == nil {
		return DeleteLocal(ctx, t.repo, vs)
	}
	rm, err := DeleteRemote(ctx, t.remote, vs)
	// The cache follows (its next fetch would prune them anyway), so
	// that its own gc can drop the objects.
	gone := map[string]gitproto.Hash{}
	for _, v := range rm.Deleted {
		gone[v.Ref] = v.Commit
	}
	if len(gone) > 0 {
		from.DeleteRefs(ctx, gone)
		t.remote.CollectGarbage(ctx, 0, false)
	}
	return rm, err
}

// Outcome is what one pass of Collect decided and did. A plain value,
// read-only once Collect returns it.
type Outcome struct {
	// DryRun is set when nothing was deleted on purpose: Removed.Deleted
	// are then the runs that would have been.
	DryRun bool
	// Verdicts are the policy's, one per run read (Decide).
	Verdicts []Verdict
	// Removed is what the deletion did: deleted, changed meanwhile (kept),
	// refused by the remote (kept).
	Removed Removed
	// Took is how long the pass took, reading included.
	Took time.Duration
}

// Collect reads target's runs and claims (Look), decides with policy
// (Retention.Decide) and deletes the runs it does not keep, unless dryRun.
// The outcome is nil, with the error, when nothing was decided (git or
// the remote failed before); an outcome with an error means some
// deletions failed as a whole (*gitproto.RemoteError), and the outcome
// holds what was done before. A run that changed meanwhile or that the
// remote refused is no error: it is in Removed.Changed or
// Removed.Refused.
func Collect(ctx context.Context, target *Target, policy Retention, dryRun bool) (*Outcome, error) {
	start := time.Now()
	repo, tips, err := target.look(ctx)
	if err != nil {
		return nil, err
	}
	inv, err := Look(ctx, repo)
	if err != nil {
		return nil, err
	}
	out := &Outcome{DryRun: dryRun, Verdicts: policy.Decide(inv.Runs, tips, inv.Claimed, time.Now())}
	if dryRun {
		out.Removed.Deleted = sortedVerdicts(toRemove(out.Verdicts))
	} else {
		out.Removed, err = target.delete(ctx, repo, out.Verdicts)
	}
	out.Took = time.Since(start)
	return out, err
}

// RemovedSummary says how many runs were removed (or would be, in a dry
// run) and of which requests, the most first, eight at most: "4 runs
// (pr/1 3, main 1)". Request names are made safe to print.
func (o *Outcome) RemovedSummary() string {
	return perRequest(o.Removed.Deleted)
}

// perRequest is "N runs (request a n, request b m)", the most first.
func perRequest(vs []Verdict) string {
	count := map[string]int{}
	for _, v := range vs {
		count[v.Request]++
	}
	names := make([]string, 0, len(count))
	for n := range count {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		if count[names[i]] != count[names[j]] {
			return count[names[i]] > count[names[j]]
		}
		return names[i] < names[j]
	})
	var parts []string
	for i, n := range names {
		if i == 8 {
			parts = append(parts, fmt.Sprintf("%d more requests", len(names)-i))
			break
		}
		parts = append(parts, fmt.Sprintf("%s %d", render.Safe(n), count[n]))
	}
	s := fmt.Sprintf("%d run%s", len(vs), plural(len(vs)))
	if len(parts) > 0 {
		s += " (" + strings.Join(parts, ", ") + ")"
	}
	return s
}

// Kept says how many runs were kept, and why, by reason in the order of
// Reason and then those that changed meanwhile and those the remote
// refused: 8, "1 named by a claim, 1 unreadable, 2 latest on a branch or
// tag, 4 newest of their request". why is "" when nothing was kept.
func (o *Outcome) Kept() (n int, why string) {
	count := map[Reason]int{}
	for _, v := range o.Verdicts {
		if v.Keep != Remove {
			count[v.Keep]++
			n++
		}
	}
	n += len(o.Removed.Changed) + len(o.Removed.Refused)
	var parts []string
	for r := Claimed; r <= Young; r++ {
		if count[r] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", count[r], r))
		}
	}
	if c := len(o.Removed.Changed); c > 0 {
		parts = append(parts, fmt.Sprintf("%d changed meanwhile", c))
	}
	if c := len(o.Removed.Refused); c > 0 {
		parts = append(parts, fmt.Sprintf("%d refused by the remote", c))
	}
	return n, strings.Join(parts, ", ")
}

// Print writes the outcome as refci gc says it: with verbose, each run
// removed and each kept as unreadable, with why; each run that changed
// meanwhile; the summary line; and, without verbose, how many runs were
// kept as unreadable and how to list them. Text from the repository is
// made safe to print. Write errors are not reported.
func (o *Outcome) Print(w io.Writer, verbose bool) {
	verb := "removed"
	if o.DryRun {
		verb = "would remove"
	}
	if verbose {
		for _, v := range o.Removed.Deleted {
			fmt.Fprintf(w, "%s %s (request %s)\n", verb, v.Ref, render.Safe(v.Request))
		}
		for _, v := range o.Verdicts {
			if v.Keep == Unreadable {
				fmt.Fprintf(w, "kept %s: %s\n", render.Safe(v.Ref), unreadableWhy(v))
			}
		}
	}
	for _, v := range o.Removed.Changed {
		fmt.Fprintf(w, "kept %s: it changed since gc read it\n", v.Ref)
	}
	kept, why := o.Kept()
	line := fmt.Sprintf("refci: %s %s; kept %d", verb, o.RemovedSummary(), kept)
	if why != "" {
		line += ": " + why
	}
	fmt.Fprintf(w, "%s (%s)\n", line, o.Took.Round(time.Millisecond))
	if n := countReason(o.Verdicts, Unreadable); n > 0 && !verbose {
		fmt.Fprintf(w, "refci: %d run%s could not be read or believed and %s kept; refci gc -v lists them, refci status RUN says why\n", n, plural(n), map[bool]string{true: "was", false: "were"}[n == 1])
	}
}

// unreadableWhy says why a run kept as Unreadable is.
func unreadableWhy(v Verdict) string {
	if v.Err == nil {
		return "its run id names no time"
	}
	return Problem(v.Err)
}

func countReason(vs []Verdict, r Reason) int {
	n := 0
	for _, v := range vs {
		if v.Keep == r {
			n++
		}
	}
	return n
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// Advice says what to do about a deletion the remote refused, after
// what it said (r.Why): on refci serve, use a key with the admin role;
// elsewhere, credentials that may delete the refs. It begins with "; ".
func (r RefusedRun) Advice() string {
	if strings.Contains(r.Why, "admin") {
		return "; on refci serve, run refci gc --remote with a key that has the admin role"
	}
	return "; the remote may protect these refs: run gc with credentials that may delete them"
}

// Schedule collects periodically, as refci worker's [retention] and
// refci serve --retention do: a pass at once, then one Every after the
// last ended, until the context ends. A pass lists its targets
// (Targets) and collects on each in turn (Collect, never a dry run),
// logging one line per target. Set Targets; the other fields may be
// left zero (Every 0: one pass). Run one Run per Schedule at a time.
type Schedule struct {
	// Policy is what each pass keeps.
	Policy Retention
	// Every is the time between the end of a pass and the start of the
	// next; 0 or less makes one pass only.
	Every time.Duration
	// Targets lists the targets of a pass; it is called at the start of
	// each. An error is logged as a warning, and the targets returned
	// with it are still collected: a pass that cannot list everything
	// collects what it can, and the next tries again.
	Targets func(ctx context.Context) ([]*Target, error)
	// Logger gets the lines: at the start, the schedule; per pass and
	// target, what was removed and kept (Info), a pass that failed, and
	// deletions the target refused (Warn). nil logs nothing.
	Logger *slog.Logger
	// Quiet leaves out the line of a target whose pass removed nothing
	// and failed nowhere (refci serve, with many repositories, says only
	// what changed).
	Quiet bool

	// after waits between passes; nil is time.After (tests give theirs).
	after func(time.Duration) <-chan time.Time
}

// Run makes passes until ctx ends (a pass under way stops at its next
// git command, and its outcome is not logged), or after one pass when
// Every is 0 or less. It returns nothing: what went wrong is logged, and
// the next pass tries again.
func (s *Schedule) Run(ctx context.Context) {
	logger := s.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	after := s.after
	if after == nil {
		after = time.After
	}
	logger.Info("retention: refci gc at once and then every interval", "every", s.Every, "keep_last", s.Policy.KeepLast, "keep_days", s.Policy.KeepDays)
	for {
		targets, err := s.Targets(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			logger.Warn("retention: cannot find every repository to collect in; trying again at the next pass", "err", err)
		}
		for _, t := range targets {
			out, err := Collect(ctx, t, s.Policy, false)
			if ctx.Err() != nil {
				return
			}
			logPass(logger, t.Name(), out, err, s.Quiet && out != nil && len(out.Removed.Deleted) == 0 && err == nil)
		}
		if s.Every <= 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-after(s.Every):
		}
	}
}

// logPass says how a pass went on the target named repository: a
// failure, what was removed and kept, and what the target refused to
// delete. quiet leaves out the line of what was removed and kept.
func logPass(logger *slog.Logger, repository string, out *Outcome, err error, quiet bool) {
	if out == nil {
		logger.Warn("retention: gc failed; trying again at the next pass", "repo", repository, "err", err)
		return
	}
	if !quiet {
		kept, why := out.Kept()
		attrs := []any{"repo", repository, "removed", out.RemovedSummary(), "kept", kept, "why", why, "took", out.Took.Round(time.Millisecond)}
		if err != nil {
			attrs = append(attrs, "err", err)
		}
		logger.Info("retention: gc", attrs...)
	}
	if n := len(out.Removed.Refused); n > 0 {
		r := out.Removed.Refused[0]
		logger.Warn("retention: the repository refused to delete runs", "repo", repository, "refused", n, "why", r.Why+r.Advice())
	}
}
