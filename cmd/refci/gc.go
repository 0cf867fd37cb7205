package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"refci.dev/refci/gitproto"
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
		return e.exitOn(err)
	}
	dir := repo.Dir()
	var target *results.Target
	if *remoteName == "" {
		target = results.LocalTarget(repo, "")
	} else {
		if msg := missingRemote(ctx, dir, *remoteName); msg != "" {
			e.errorf("gc: %s", msg)
			return exitUsage
		}
		url := results.Source{Dir: dir, Remote: *remoteName}.RemoteURL(ctx)
		rem, err := gitproto.OpenRemote(url, filepath.Join(repo.GitDir(), "refci-gc", gitproto.CacheName(url)), nil)
		if err != nil {
			e.errorf("gc: remote %s: %v", gitproto.RedactURL(url), err)
			return exitInfra
		}
		target = results.RemoteTarget(rem)
	}
	out, err := results.Collect(ctx, target, policy, *dryRun)
	if err != nil {
		e.errorf("gc: %v", err)
		if out == nil {
			return exitInfra
		}
	}
	out.Print(e.stdout, *verbose)
	code := exitOK
	if err != nil {
		code = exitInfra
	}
	if len(out.Removed.Refused) > 0 {
		r := out.Removed.Refused[0]
		e.errorf("gc: %s refused to delete %d run(s), which are kept: %s%s", target.Name(), len(out.Removed.Refused), render.Safe(r.Why), r.Advice())
		code = exitInfra
	}
	told := filepath.Join(repo.GitDir(), "refci-gc", "told")
	if len(out.Removed.Deleted) > 0 && !*dryRun {
		if _, err := os.Stat(told); err != nil {
			fmt.Fprintf(e.stdout, "refci: the removed runs' objects are unreachable now; %s\n", target.Prunes())
			os.MkdirAll(filepath.Dir(told), 0o755)
			os.WriteFile(told, nil, 0o644)
		}
	}
	return code
}
