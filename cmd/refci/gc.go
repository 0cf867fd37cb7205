package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
	"refci.dev/refci/results"
)

const gcHelp = `Per request, the newest --keep-last runs are kept, and every run that
started less than --keep-days days ago. Always kept: the newest run of each
request of every commit a branch or a tag points at (locally, remote-tracking
branches count too), runs a claim names (running, or waiting to be
published), runs without a final result that started less than a day ago,
runs dated in the future, and runs whose result cannot be read or believed
(counted, and listed with -v).

Each run ref is deleted only if it still has the value gc read
(compare-and-swap): a run that changed meanwhile is kept and named. Without
--remote, the run refs of this repository go. With --remote, the remote's
runs and claims are fetched into a cache (.git/refci-gc/) and deleted
there with git push --force-with-lease; on refci serve that needs a key
with the admin role. The results' objects
become unreachable: git's own gc (the remote's housekeeping) prunes them.
A reader who fetched a removed run keeps it, and can still verify it.

Exit codes: 0 done (runs that changed meanwhile are kept, not an error),
2 usage, 3 git or the remote failed or refused a deletion.
`

func cmdGC(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "gc")
	repoDir := fs.String("repo", ".", "the repository")
	remoteName := fs.String("remote", "", "collect on this remote (a name, a URL or a path) instead of in the repository")
	keepLast := fs.Int("keep-last", results.DefaultRetention.KeepLast, "per request, keep its newest N runs")
	keepDays := fs.Int("keep-days", results.DefaultRetention.KeepDays, "keep every run younger than D days")
	dryRun := fs.Bool("dry-run", false, "say what would be removed, remove nothing")
	verbose := fs.Bool("v", false, "list every run removed, and every run kept because it cannot be read")
	if _, code, ok := parse(e, fs, args, 0); !ok {
		return code
	}
	if *keepLast < 0 || *keepDays < 0 {
		return usageError(e, fs, "--keep-last and --keep-days take 0 or more")
	}
	policy := results.Retention{KeepLast: *keepLast, KeepDays: *keepDays}
	repo, err := openRepo(*repoDir)
	if err != nil {
		e.errorf("%v", err)
		return exitFor(err)
	}
	var target gcTarget
	if *remoteName == "" {
		target = localGC{repo}
	} else {
		dir := repo.WorkTree()
		if dir == "" {
			dir = repo.GitDir()
		}
		if msg := missingRemote(ctx, dir, *remoteName); msg != "" {
			e.errorf("gc: %s", msg)
			return exitUsage
		}
		url := *remoteName
		if u, err := (gitproto.CLI{Dir: dir}).Run(ctx, "", "remote", "get-url", "--", *remoteName); err == nil && u != "" {
			url = u
		}
		if !strings.Contains(url, ":") && !filepath.IsAbs(url) {
			url = filepath.Join(dir, url) // a path, as git reads it: from the repository
		}
		rem, err := gitproto.OpenRemote(url, filepath.Join(repo.GitDir(), "refci-gc", cacheName(url)), nil)
		if err != nil {
			e.errorf("gc: remote %s: %v", gitproto.RedactURL(url), err)
			return exitInfra
		}
		target = remoteGC{rem}
	}
	out, err := collect(ctx, target, policy, *dryRun)
	if err != nil {
		e.errorf("gc: %v", err)
		if out == nil {
			return exitInfra
		}
	}
	out.print(e.stdout, *verbose)
	code := exitOK
	if err != nil {
		code = exitInfra
	}
	if len(out.removed.Refused) > 0 {
		r := out.removed.Refused[0]
		e.errorf("gc: %s refused to delete %d run(s), which are kept: %s%s", target.name(), len(out.removed.Refused), render.Safe(r.Why), refusedAdvice(r.Why))
		code = exitInfra
	}
	told := filepath.Join(repo.GitDir(), "refci-gc", "told")
	if len(out.removed.Deleted) > 0 && !*dryRun {
		if _, err := os.Stat(told); err != nil {
			fmt.Fprintf(e.stdout, "refci: the removed runs' objects are unreachable now; %s\n", target.prunes())
			os.MkdirAll(filepath.Dir(told), 0o755)
			os.WriteFile(told, nil, 0o644)
		}
	}
	return code
}

// refusedAdvice says what to do about a refused deletion.
func refusedAdvice(why string) string {
	if strings.Contains(why, "admin") {
		return "; on refci serve, run refci gc --remote with a key that has the admin role"
	}
	return "; the remote may protect these refs: run gc with credentials that may delete them"
}

// gcTarget is where refci gc collects: a repository, or a remote through
// a cache.
type gcTarget interface {
	name() string
	// look returns the repository to read runs from, and the commits
	// branches and tags point at.
	look(ctx context.Context) (*gitproto.Repo, map[string]bool, error)
	delete(ctx context.Context, from *gitproto.Repo, vs []results.Verdict) (results.Removed, error)
	prunes() string
}

type localGC struct{ repo *gitproto.Repo }

func (l localGC) name() string { return "this repository" }

func (l localGC) look(ctx context.Context) (*gitproto.Repo, map[string]bool, error) {
	tips, err := l.repo.Tips(ctx, "refs/heads/", "refs/tags/", "refs/remotes/")
	if err != nil {
		return nil, nil, err
	}
	return l.repo, results.TipSet(tips), nil
}

func (l localGC) delete(ctx context.Context, _ *gitproto.Repo, vs []results.Verdict) (results.Removed, error) {
	return results.DeleteLocal(ctx, l.repo, vs)
}

func (l localGC) prunes() string {
	return "git's own gc prunes them (git gc --auto as you work; git gc --prune=now at once)"
}

type remoteGC struct{ remote *gitproto.Remote }

func (r remoteGC) name() string { return gitproto.RedactURL(r.remote.URL) }

// gcRefspecs mirror the remote's runs and claims into the cache.
var gcRefspecs = []string{"+" + queue.RunsPrefix + "*:" + queue.RunsPrefix + "*", "+" + queue.ClaimsPrefix + "*:" + queue.ClaimsPrefix + "*"}

func (r remoteGC) look(ctx context.Context) (*gitproto.Repo, map[string]bool, error) {
	// The tips first: a branch that appears after the runs were read
	// cannot have lost runs read before it.
	tips, err := r.remote.ListTips(ctx, "refs/heads/", "refs/tags/")
	if err != nil {
		return nil, nil, err
	}
	if err := r.remote.Fetch(ctx, gcRefspecs...); err != nil {
		return nil, nil, err
	}
	cache, err := gitproto.Open(r.remote.Cache)
	if err != nil {
		return nil, nil, err
	}
	return cache, results.TipSet(tips), nil
}

func (r remoteGC) delete(ctx context.Context, cache *gitproto.Repo, vs []results.Verdict) (results.Removed, error) {
	rm, err := results.DeleteRemote(ctx, r.remote, vs)
	// The cache follows (its next fetch would prune them anyway), so
	// that its own gc can drop the objects.
	gone := map[string]gitproto.Hash{}
	for _, v := range rm.Deleted {
		gone[v.Ref] = v.Commit
	}
	if len(gone) > 0 {
		cache.DeleteRefs(ctx, gone)
		r.remote.CollectGarbage(ctx, 0, false)
	}
	return rm, err
}

func (r remoteGC) prunes() string {
	return "the remote's own gc prunes them (git gc there, or the forge's housekeeping)"
}

// gcOutcome is what one refci gc pass decided and did.
type gcOutcome struct {
	dryRun   bool
	verdicts []results.Verdict
	removed  results.Removed
	took     time.Duration
}

// collect reads target's runs, decides with policy, and deletes (unless
// dryRun). The outcome is nil when nothing was decided; with an error
// and an outcome, some deletions failed.
func collect(ctx context.Context, target gcTarget, policy results.Retention, dryRun bool) (*gcOutcome, error) {
	start := time.Now()
	repo, tips, err := target.look(ctx)
	if err != nil {
		return nil, err
	}
	inv, err := results.Look(ctx, repo)
	if err != nil {
		return nil, err
	}
	out := &gcOutcome{dryRun: dryRun, verdicts: policy.Decide(inv.Runs, tips, inv.Claimed, time.Now())}
	if !dryRun {
		out.removed, err = target.delete(ctx, repo, out.verdicts)
	} else {
		for _, v := range out.verdicts {
			if v.Keep == results.Remove {
				out.removed.Deleted = append(out.removed.Deleted, v)
			}
		}
	}
	out.took = time.Since(start)
	return out, err
}

// perRequest is "N (request a: n, request b: m)" of runs, the most
// first.
func perRequest(vs []results.Verdict) string {
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

// keptSummary is "N: a reason, b reason ..." of the runs kept.
func (o *gcOutcome) keptSummary() (int, string) {
	count := map[results.Reason]int{}
	kept := 0
	for _, v := range o.verdicts {
		if v.Keep != results.Remove {
			count[v.Keep]++
			kept++
		}
	}
	kept += len(o.removed.Changed) + len(o.removed.Refused)
	var parts []string
	for r := results.Claimed; r <= results.Young; r++ {
		if count[r] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", count[r], r))
		}
	}
	if n := len(o.removed.Changed); n > 0 {
		parts = append(parts, fmt.Sprintf("%d changed meanwhile", n))
	}
	if n := len(o.removed.Refused); n > 0 {
		parts = append(parts, fmt.Sprintf("%d refused by the remote", n))
	}
	return kept, strings.Join(parts, ", ")
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// print writes the outcome: the refs removed (verbose), the runs that
// changed meanwhile and the unreadable ones (verbose), and the summary
// line.
func (o *gcOutcome) print(w io.Writer, verbose bool) {
	verb := "removed"
	if o.dryRun {
		verb = "would remove"
	}
	if verbose {
		for _, v := range o.removed.Deleted {
			fmt.Fprintf(w, "%s %s (request %s)\n", verb, v.Ref, render.Safe(v.Request))
		}
		for _, v := range o.verdicts {
			if v.Keep == results.Unreadable {
				fmt.Fprintf(w, "kept %s: %s\n", render.Safe(v.Ref), unreadableWhy(v))
			}
		}
	}
	for _, v := range o.removed.Changed {
		fmt.Fprintf(w, "kept %s: it changed since gc read it\n", v.Ref)
	}
	kept, why := o.keptSummary()
	line := fmt.Sprintf("refci: %s %s; kept %d", verb, perRequest(o.removed.Deleted), kept)
	if why != "" {
		line += ": " + why
	}
	fmt.Fprintf(w, "%s (%s)\n", line, o.took.Round(time.Millisecond))
	if n := countReason(o.verdicts, results.Unreadable); n > 0 && !verbose {
		fmt.Fprintf(w, "refci: %d run%s could not be read or believed and %s kept; refci gc -v lists them, refci status RUN says why\n", n, plural(n), map[bool]string{true: "was", false: "were"}[n == 1])
	}
}

func unreadableWhy(v results.Verdict) string {
	if v.Err == nil {
		return "its run id names no time"
	}
	return results.Problem(v.Err)
}

func countReason(vs []results.Verdict, r results.Reason) int {
	n := 0
	for _, v := range vs {
		if v.Keep == r {
			n++
		}
	}
	return n
}
