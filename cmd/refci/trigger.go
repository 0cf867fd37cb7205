package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
	"refci.dev/refci/requests"
	"refci.dev/refci/results"
)

func cmdTrigger(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "trigger")
	repoDir := fs.String("repo", ".", "the repository")
	remote := fs.String("remote", "origin", "the git remote to push the request to")
	name := fs.String("name", "", "the request name (default: the current branch)")
	envName := fs.String("env", "", "ask for this secrets environment (an annotated request tag carries it)")
	timeout := fs.Duration("timeout", 0, "ask for this pipeline timeout")
	wait := fs.Bool("wait", false, "follow the run and exit with its result (0 success, 1 failure or cancelled, 2 configuration such as no .refci/run, 3 error)")
	pos, code, ok := parse(e, fs, args, 1)
	if !ok {
		return code
	}
	repo, dir, err := openRepoDir(*repoDir)
	if err != nil {
		e.errorf("%v", err)
		return exitFor(err)
	}
	git := gitproto.CLI{Dir: dir}
	rev := first(pos)
	if rev == "" {
		rev = "HEAD"
	}
	target, err := repo.ResolveCommit(rev)
	if err != nil {
		e.errorf("%v", err)
		return exitFor(err)
	}
	if *name == "" {
		branch, _ := git.Run(ctx, "", "symbolic-ref", "--short", "-q", "HEAD")
		if first(pos) != "" || branch == "" {
			branch = "rev-" + target.String()[:12]
		}
		*name = branch
	}
	if err := queue.ValidateRequestName(*name); err != nil {
		e.errorf("trigger: %v", err)
		return exitUsage
	}
	opts := queue.RequestOptions{Env: *envName, Timeout: *timeout}
	if opts.Env != "" {
		if err := queue.ValidateJobName(opts.Env); err != nil {
			e.errorf("trigger: --env %q: use letters, digits, '.', '_' or '-'", opts.Env)
			return exitUsage
		}
	}
	if msg := missingRemote(ctx, dir, *remote); msg != "" {
		e.errorf("trigger: %s", msg)
		return exitUsage
	}
	// Always an annotated tag, with a fresh id in its subject: its object
	// id names this request and no other, so that --wait, log -f and the
	// result (status.json request_object) tell it from an earlier push of
	// the same commit under the same name.
	client := requests.Client{Dir: dir}
	obj, err := client.Make(ctx, requests.Request{Name: *name, Target: target, Options: opts})
	if err != nil {
		e.errorf("trigger: %v", err)
		return exitInfra
	}
	if err := client.Push(ctx, *remote, *name, obj); err != nil {
		e.errorf("trigger: pushing %s to %s failed: %v", queue.RequestRef(*name), *remote, err)
		return exitInfra
	}
	fmt.Fprintf(e.stdout, "refci: requested %s for %s on %s\n", *name, target.String()[:12], *remote)
	if !*wait {
		fmt.Fprintf(e.stdout, "follow it with: refci trigger --wait, or fetch results with: git fetch %s '+refs/ci/*:refs/ci/*'\n", *remote)
		return exitOK
	}
	return follow(ctx, e, dir, *remote, target.String(), results.Want{Request: *name, Object: obj.String()})
}

// missingRemote says what is wrong when remote is a name (not a URL or a
// path) that the repository has no remote of, and what to do; else "".
func missingRemote(ctx context.Context, dir, remote string) string {
	git := gitproto.CLI{Dir: dir}
	if strings.ContainsAny(remote, ":/\\") || remote == "." {
		return "" // a URL or a path: git says what is wrong with it
	}
	out, err := git.Run(ctx, "", "remote")
	if err != nil {
		return "" // git says it when pushing
	}
	names := strings.Fields(out)
	for _, n := range names {
		if n == remote {
			return ""
		}
	}
	if _, err := os.Stat(filepath.Join(dir, remote)); err == nil {
		return "" // a repository beside: git takes a path too
	}
	have := "it has none"
	if len(names) > 0 {
		have = "it has " + strings.Join(names, ", ")
	}
	return fmt.Sprintf("this repository has no remote named %q (%s); pass --remote NAME or a URL, or add one with: git remote add %s URL", remote, have, remote)
}

// follow follows the run of target on remote that want selects (see
// results.Want), printing its log as snapshots arrive, and returns the
// exit code of its final state. When the run's worker dies, it says so and
// follows the attempt that takes the request over. A request pushed over
// or deleted before any worker ran it ends the wait with exit code 1.
func follow(ctx context.Context, e *env, dir, remote, target string, want results.Want) int {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	logOut, endLog := e.logWriter()
	defer endLog() // every way out: a styled log must not colour what follows
	w := results.Source{Dir: dir, Remote: remote}.Follow(ctx, target, want)
	printed := false // some log was printed
	for {
		ev, err := w.Next(ctx)
		switch {
		case ctx.Err() != nil:
			e.errorf("stopped following; the run goes on")
			return exitFailed
		case errors.Is(err, results.ErrGone), errors.Is(err, results.ErrSuperseded), results.NotBelieved(err):
			e.errorf("%v", err)
			return exitFailed
		case err != nil:
			e.errorf("%v", err)
			return exitInfra
		}
		switch ev.Kind {
		case results.FetchFailed:
			e.errorf("fetch from %s failed (retrying): %v", remote, ev.Err)
		case results.Waiting:
			fmt.Fprintf(e.stderr, "refci: waiting for the run to start (no worker has pushed its progress yet)\n")
		case results.Started:
			st := ev.Status
			fmt.Fprintf(e.stderr, "refci: run %s (attempt %d) on worker %s", st.Run, st.Attempt, st.Worker)
			if prev := st.PreviousRun(); prev != "" {
				fmt.Fprintf(e.stderr, ", after run %s lost its worker", prev)
			}
			fmt.Fprintln(e.stderr)
		case results.Progress:
			if ev.Status.Extra["config_error"] == true && !printed {
				// A configuration error's log is its reason alone,
				// which the summary says.
				break
			}
			if ev.LogCapped {
				fmt.Fprintf(logOut, "\n[refci: the log was capped; showing its tail]\n")
			}
			logOut.Write(ev.Log)
			printed = printed || len(ev.Log) > 0
		case results.TakenOver:
			endLog()
			fmt.Fprintf(e.stderr, "\nrefci: run %s (attempt %d) lost its worker; run %s (attempt %d) on worker %s took the request over\n",
				ev.From, ev.FromAttempt, ev.To, ev.ToAttempt, ev.ToWorker)
			printed = false
		case results.LeaseExpired:
			c := ev.Claim
			fmt.Fprintf(e.stderr, "\nrefci: worker %s stopped renewing its claim on run %s (the lease ran out at %s); waiting for another worker to take the request over\n",
				c.Worker, c.Run, c.LeaseExpires.Local().Format(time.TimeOnly))
		case results.Final:
			st := ev.Status
			endLog()
			// The final block: jobs as a tree, artifacts, then the
			// one-line summary, which holds the reason.
			fmt.Fprintln(e.stdout)
			block := *st
			block.Reason = ""
			render.Terminal(e.stdout, &block, render.TermOptions{Color: e.color(e.stdout), Ref: ev.Ref})
			fmt.Fprintf(e.stdout, "refci: %s in %s", st.State, render.Duration(st.DurationMS))
			if st.Reason != "" {
				fmt.Fprintf(e.stdout, ": %s", render.Safe(st.Reason))
			}
			fmt.Fprintf(e.stdout, "\nrefci: result %s\n", ev.Ref)
			return exitForState(st)
		}
	}
}

// logFollow implements `refci log -f`: follow a run on a remote.
func logFollow(ctx context.Context, e *env, repoDir, remote, arg string) int {
	repo, dir, err := openRepoDir(repoDir)
	if err != nil {
		e.errorf("%v", err)
		return exitFor(err)
	}
	if msg := missingRemote(ctx, dir, remote); msg != "" {
		e.errorf("log -f: %s", msg)
		return exitUsage
	}
	switch {
	case strings.HasPrefix(arg, queue.RunsPrefix):
		t, id, ok := queue.ParseRunRef(arg)
		if !ok {
			e.errorf("%s is not a run ref", arg)
			return exitUsage
		}
		return follow(ctx, e, dir, remote, t, results.ThisRun(id, ""))
	case strings.Contains(arg, "/") && queue.ValidRunID(arg[strings.IndexByte(arg, '/')+1:]):
		t, id, _ := strings.Cut(arg, "/") // <commit>/<run-id>; a branch or request name with a slash is not one
		return follow(ctx, e, dir, remote, t, results.ThisRun(id, ""))
	case queue.ValidRunID(arg):
		rr, err := results.Find(repo, arg, e.errorf)
		if err != nil {
			e.errorf("run %s is not known here yet; name it as <commit>/<run-id> or refs/ci/runs/<commit>/<run-id>", arg)
			return exitUsage
		}
		return follow(ctx, e, dir, remote, rr.Target, results.ThisRun(rr.ID, ""))
	}
	rev := arg
	if rev == "" {
		rev = "HEAD"
	}
	h, err := repo.ResolveCommit(rev)
	if err == nil {
		return follow(ctx, e, dir, remote, h.String(), results.LatestRun(time.Now()))
	}
	if queue.ValidateRequestName(arg) != nil {
		e.errorf("%v", err)
		e.errorf("log -f takes a run (its id, <commit>/<run-id> or its ref), a commit, or the name of a pending request")
		return exitFor(err)
	}
	// Not a revision here: a request name on the remote.
	c, code := waitForClaim(ctx, e, dir, remote, arg)
	if c == nil {
		return code
	}
	return follow(ctx, e, dir, remote, c.Target, results.ClaimedRun(c))
}

// waitForClaim finds the run a worker is running, or will run, for the
// request name on remote (see results.Source.WaitForClaim), saying what it
// waits for. It returns the claim, or nil and an exit code after saying
// why not.
func waitForClaim(ctx context.Context, e *env, dir, remote, name string) (*queue.Claim, int) {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	c, err := results.Source{Dir: dir, Remote: remote}.WaitForClaim(ctx, name, func(n results.ClaimNote, cv results.ClaimView) {
		switch n {
		case results.PushedAgain:
			fmt.Fprintf(e.stderr, "refci: request %s was pushed again; waiting for a worker to claim it (the claim there, run %s, is of the earlier push)\n", name, cv.Claim.Run)
		case results.BadClaim:
			e.errorf("the claim of %s on %s is not believed (%s); waiting for a worker to replace it", name, remote, render.Safe(cv.Bad.Error()))
		case results.Queued:
			fmt.Fprintf(e.stderr, "refci: request %s is waiting for a worker\n", name)
		}
	})
	switch {
	case err == nil:
		return c, exitOK
	case ctx.Err() != nil:
		e.errorf("stopped waiting; the request stays queued")
		return nil, exitFailed
	case errors.Is(err, results.ErrNoRequest):
		e.errorf("%s has no request or claim named %s (nor is it a revision here); a request that already ran is followed by its commit: refci log -f COMMIT, or see refci runs --all after git fetch %s '+refs/ci/*:refs/ci/*'", remote, name, remote)
		return nil, exitUsage
	}
	e.errorf("%v", err)
	return nil, exitInfra
}

// openRepoDir opens the repository and returns the directory git commands
// run in: the work tree, or the git directory of a bare repository.
func openRepoDir(dir string) (*gitproto.Repo, string, error) {
	repo, err := openRepo(dir)
	if err != nil {
		return nil, "", err
	}
	if wt := repo.WorkTree(); wt != "" {
		return repo, wt, nil
	}
	return repo, repo.GitDir(), nil
}
