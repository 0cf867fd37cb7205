// Package results reads and watches what workers publish: the runs of a
// repository (refs/ci/runs/<target>/<run-id>), the status each believes,
// the rule that a run whose worker was lost was taken over by a later
// attempt, the signatures of a run's commits, and, on a remote, the claim
// of a request, the progress of one run as it goes (Source.Follow), and
// every change of every run (Source.WatchRuns); and retention, for refci
// gc, refci worker and refci serve: which runs are kept (Retention), a
// pass that deletes the others with compare-and-swap in a repository or
// on a remote (Collect, Outcome), and passes on a schedule (Schedule).
//
// Every reader of results goes through this package (refci status, runs,
// log, log -f, trigger --wait, verify; the forge adapters and the mail
// bridge), so that all apply one rule for what is believed and none
// spells the ref layout, which queue owns.
//
// An adapter needs little of it: a Source (a repository directory and a
// remote) and Source.WatchRuns, which yields every change of every run
// with the lost-worker rule applied (see its example); render turns what
// it yields into text. The rest serves refci's own commands: Load and
// Locate find the run a user names, Refresh fetches a commit's runs,
// ListPage pages a list, and Printer prints a run as it is followed.
//
// A result is believed when status.json decodes, agrees with its ref and
// its commit's trailers, and holds only values refci writes
// (queue.DecodeResult). Believed is not verified: a signature check
// against keys the reader trusts (Verify) says who wrote it.
package results

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
)

// Run is one run found in a repository: its ref and the ref's value.
// A plain value.
type Run struct {
	Ref    string        // refs/ci/runs/<target>/<run-id>
	Target string        // the commit (or object) under test
	ID     string        // the run id
	Commit gitproto.Hash // the run's newest result commit
	// Future is set when the run id is dated in the future beyond the
	// clock skew allowance: such a run is never taken for the latest.
	Future bool
}

// ErrNoRuns is returned (wrapped) by Find when nothing matches; callers
// branch on it (a usage error, not a failure).
var ErrNoRuns = errors.New("no runs")

// List returns the runs of target (all runs when target is ""), newest
// first. Runs dated in the future come last, marked Future.
func List(repo *gitproto.Repo, target string) ([]Run, error) {
	prefix := queue.RunsPrefix
	if target != "" {
		prefix += target + "/"
	}
	refs, err := repo.Refs(prefix)
	if err != nil {
		return nil, err
	}
	future := queue.FutureRunIDs(time.Now())
	out := make([]Run, 0, len(refs))
	for _, r := range refs {
		t, id, ok := queue.ParseRunRef(r.Name)
		if !ok {
			continue
		}
		out = append(out, Run{Ref: r.Name, Target: t, ID: id, Commit: r.Hash, Future: future(id)})
	}
	slices.SortFunc(out, func(a, b Run) int {
		if a.Future != b.Future {
			if a.Future {
				return 1
			}
			return -1
		}
		if c := strings.Compare(b.ID, a.ID); c != 0 {
			return c
		}
		return strings.Compare(b.Ref, a.Ref)
	})
	return out, nil
}

// Read reads the result commit found under ref and returns its status
// once it is believed (see the package comment). The error says why not:
// Problem puts it in a word, NotBelieved tells a result that is not what
// its ref claims from one that could not be read, and errors.Is(err,
// queue.ErrFormat) one written by a newer refci.
func Read(repo *gitproto.Repo, ref string, commit gitproto.Hash) (*queue.Status, error) {
	b, err := repo.ReadFile(commit, queue.StatusFile)
	if err != nil {
		return nil, fmt.Errorf("result %s: %w", commit.String()[:12], err)
	}
	c, err := repo.Commit(commit)
	if err != nil {
		return nil, fmt.Errorf("result %s: %w", commit.String()[:12], err)
	}
	st, err := queue.DecodeResult(ref, b, c.Message)
	if err != nil {
		return nil, fmt.Errorf("result %s: %w", commit.String()[:12], err)
	}
	return st, nil
}

// Read reads the run's newest status (see Read).
func (r Run) Read(repo *gitproto.Repo) (*queue.Status, error) { return Read(repo, r.Ref, r.Commit) }

// Problem says in a word why a result is not believed, then the details:
// "inconsistent: ..." (it does not agree with its ref), "invalid: ..." (a
// value refci never writes), else "unreadable: ...". The details are made
// safe to print.
func Problem(err error) string {
	msg := render.Safe(err.Error())
	switch {
	case errors.Is(err, queue.ErrInconsistent):
		return "inconsistent: " + msg
	case errors.Is(err, queue.ErrInvalid):
		return "invalid: " + msg
	}
	return "unreadable: " + msg
}

// NotBelieved reports whether err says a result is not what its ref
// claims (like a bad signature) rather than that it could not be read.
func NotBelieved(err error) bool {
	return errors.Is(err, queue.ErrInconsistent) || errors.Is(err, queue.ErrInvalid)
}

// Find resolves what a user named: "" (the latest run of HEAD), a run
// ref, <target>/<run-id>, a run id, or a revision (its latest run). The
// latest run of a revision is the newest that is believed and not dated
// in the future; warn (never nil) is told which newer runs were passed
// over, and why. The error wraps ErrNoRuns when nothing matches.
func Find(repo *gitproto.Repo, arg string, warn func(format string, args ...any)) (Run, error) {
	if strings.HasPrefix(arg, queue.RunsPrefix) {
		t, id, ok := queue.ParseRunRef(arg)
		if !ok {
			return Run{}, fmt.Errorf("%s is not a run ref (refs/ci/runs/<commit>/<run-id>)", queue.Printable(arg))
		}
		h, err := repo.RefHash(arg)
		if err != nil {
			return Run{}, fmt.Errorf("run %s: %w", arg, err)
		}
		return Run{Ref: arg, Target: t, ID: id, Commit: h, Future: queue.RunIDFuture(id, time.Now())}, nil
	}
	if t, id, ok := strings.Cut(arg, "/"); ok && queue.ValidRunID(id) {
		return Find(repo, queue.RunRef(t, id), warn)
	}
	if queue.ValidRunID(arg) {
		all, err := List(repo, "")
		if err != nil {
			return Run{}, err
		}
		for _, r := range all {
			if r.ID == arg {
				return r, nil
			}
		}
		return Run{}, fmt.Errorf("run %s: %w here; fetch its commit's runs with: refci fetch COMMIT", arg, ErrNoRuns)
	}
	rev := arg
	if rev == "" {
		rev = "HEAD"
	}
	target, err := repo.ResolveCommit(rev)
	if err != nil {
		return Run{}, err
	}
	runs, err := List(repo, target.String())
	if err != nil {
		return Run{}, err
	}
	if len(runs) == 0 {
		return Run{}, fmt.Errorf("%s (%s): %w yet; start one with '%s', or fetch its runs with: refci fetch%s", rev, target.String()[:12], ErrNoRuns, strings.TrimSpace("refci run "+arg), strings.TrimRight(" "+arg, " "))
	}
	for _, r := range runs {
		if r.Future {
			warn("passed over run %s: it is dated in the future, so it is never the latest (name it to see it)", r.ID)
		}
	}
	for _, r := range runs {
		if r.Future {
			continue
		}
		if _, err := r.Read(repo); NotBelieved(err) {
			warn("passed over run %s: %s", r.ID, Problem(err))
			continue
		}
		return r, nil // believed, or unreadable: the caller says why
	}
	return Run{}, fmt.Errorf("%s (%s): %w that can be believed (see above); start one with 'refci run %s', or name a run to see it", rev, target.String()[:12], ErrNoRuns, rev)
}

// targetOf returns the commit whose runs Find looks for when given arg,
// or "" when arg names none (a run id alone) or names nothing here.
func targetOf(repo *gitproto.Repo, arg string) string {
	if strings.HasPrefix(arg, queue.RunsPrefix) {
		t, _, _ := queue.ParseRunRef(arg)
		return t
	}
	if t, id, ok := strings.Cut(arg, "/"); ok && queue.ValidRunID(id) {
		if queue.IsObjectID(t) {
			return t
		}
		return ""
	}
	if queue.ValidRunID(arg) {
		return ""
	}
	if arg == "" {
		arg = "HEAD"
	}
	h, err := repo.ResolveCommit(arg)
	if err != nil {
		return ""
	}
	return h.String()
}

// FindFetching is Find in the source's repository that, when nothing
// there matches and arg names a commit (a revision, a run ref,
// <target>/<run-id>), fetches that commit's runs, and only those, from
// the source's remote (FetchRuns) and looks again; with Remote "" it is
// Find. warn is told that it fetched, or why it could not (the error is
// then Find's). It returns the repository opened after the fetch: a Repo
// opened before may not see the objects that came.
func (s Source) FindFetching(ctx context.Context, arg string, warn func(format string, args ...any)) (*gitproto.Repo, Run, error) {
	repo, err := s.Open()
	if err != nil {
		return nil, Run{}, err
	}
	var warned [][2]any
	r, err := Find(repo, arg, func(format string, args ...any) { warned = append(warned, [2]any{format, args}) })
	replay := func() {
		for _, w := range warned {
			warn(w[0].(string), w[1].([]any)...)
		}
	}
	if err == nil || s.Remote == "" || !errors.Is(err, ErrNoRuns) && !errors.Is(err, gitproto.ErrNotFound) {
		replay()
		return repo, r, err
	}
	target := targetOf(repo, arg)
	if target == "" || s.Default && !s.HasRemote(ctx) {
		replay()
		return repo, r, err
	}
	if ferr := s.FetchRuns(ctx, target); ferr != nil {
		replay()
		warn("could not fetch the runs of %s from %s: %v", target[:12], s.Remote, ferr)
		return repo, r, err
	}
	warn("fetched the runs of %s from %s", target[:12], s.Remote)
	if repo, err = s.Open(); err != nil {
		return nil, Run{}, err
	}
	r, err = Find(repo, arg, warn)
	return repo, r, err
}

// Listed is a run with its status, or why it could not be believed.
type Listed struct {
	Run
	Status *queue.Status // nil when Err is set
	Err    error         // see Read
	// TakenOverBy is the status of the attempt that took the request
	// over after this run's worker was lost; nil for a run not lost.
	TakenOverBy *queue.Status
}

// Shown is the status a reader shows: a lost run's as queue.Lost says
// (its status.json still says running), else the stored one.
func (l Listed) Shown() *queue.Status {
	if l.TakenOverBy != nil {
		return queue.Lost(l.Status, l.TakenOverBy.Run, l.TakenOverBy.Attempt)
	}
	return l.Status
}

// ReadAll reads the status of each run and applies the lost-worker rule
// (queue.TakenOver) among the believed runs not dated in the future.
func ReadAll(repo *gitproto.Repo, runs []Run) []Listed {
	out := make([]Listed, len(runs))
	var believed []*queue.Status
	for i, r := range runs {
		out[i].Run = r
		out[i].Status, out[i].Err = r.Read(repo)
		if out[i].Err == nil && !r.Future {
			believed = append(believed, out[i].Status)
		}
	}
	lost := queue.TakenOver(believed)
	for i := range out {
		if st := out[i].Status; st != nil && !out[i].Future {
			out[i].TakenOverBy = lost[queue.RunRef(st.Target, st.Run)]
		}
	}
	return out
}

// ReadPage is ReadAll for some of a commit's or a repository's runs (a
// page of List's, say): the lost-worker rule is applied with every run
// of each run's commit, also those not given, so that a run taken over by
// an attempt outside the page is shown lost. Only the given runs' and,
// for a run not final, its commit's statuses are read.
func ReadPage(repo *gitproto.Repo, runs []Run) []Listed {
	out := ReadAll(repo, runs)
	for i, l := range out {
		if l.Status == nil || l.Future || l.TakenOverBy != nil || l.Status.State.Final() {
			continue
		}
		if _, by, ok := TakenOverBy(repo, l.Status); ok {
			out[i].TakenOverBy = by
		}
	}
	return out
}

// Shown is the status a reader shows of st, a run of repo: as queue.Lost
// says when its worker was lost and another attempt took its request
// over (TakenOverBy; its status.json still says running), else st.
func Shown(repo *gitproto.Repo, st *queue.Status) *queue.Status {
	if by, bySt, ok := TakenOverBy(repo, st); ok {
		return queue.Lost(st, by.ID, bySt.Attempt)
	}
	return st
}

// TakenOverBy returns the run that took the request of st over after st's
// worker was lost (see queue.TakenOver), from the runs of st's target in
// repo, and its status. A final run was never lost.
func TakenOverBy(repo *gitproto.Repo, st *queue.Status) (Run, *queue.Status, bool) {
	if st.State.Final() {
		return Run{}, nil, false
	}
	runs, err := List(repo, st.Target)
	if err != nil {
		return Run{}, nil, false
	}
	sts := []*queue.Status{st}
	refOf := map[*queue.Status]Run{}
	for _, r := range runs {
		if r.ID == st.Run {
			continue
		}
		if s, err := r.Read(repo); err == nil && !r.Future {
			sts = append(sts, s)
			refOf[s] = r
		}
	}
	by := queue.TakenOver(sts)[queue.RunRef(st.Target, st.Run)]
	if by == nil {
		return Run{}, nil, false
	}
	return refOf[by], by, true
}
