package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"

	"refci.dev/refci/queue"
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
	repo, err := openRepo(*repoDir)
	if err != nil {
		return e.exitOn(err)
	}
	dir := repo.Dir()
	rev := first(pos)
	if rev == "" {
		rev = "HEAD"
	}
	target, err := repo.ResolveCommit(rev)
	if err != nil {
		return e.exitOn(err)
	}
	// Always an annotated tag, with a fresh id in its subject (see
	// requests): --wait, log -f and the result tell this push from an
	// earlier one of the same commit under the same name.
	client := requests.Client{Dir: dir}
	if *name == "" {
		*name = client.DefaultName(ctx, target, first(pos) == "")
	}
	if err := queue.ValidateRequestName(*name); err != nil {
		e.errorf("trigger: %v", err)
		return exitUsage
	}
	opts := queue.RequestOptions{Env: *envName, Timeout: *timeout}
	if opts.Env != "" {
		if err := queue.ValidateEnvName(opts.Env); err != nil {
			e.errorf("trigger: --env %q: use letters, digits, '.', '_' or '-'", opts.Env)
			return exitUsage
		}
	}
	if msg := missingRemote(ctx, dir, *remote); msg != "" {
		e.errorf("trigger: %s", msg)
		return exitUsage
	}
	obj, err := client.Ask(ctx, *remote, requests.Request{Name: *name, Target: target, Options: opts})
	if err != nil {
		e.errorf("trigger: %v", err)
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
	if err := (results.Source{Dir: dir, Remote: remote}).CheckRemote(ctx); err != nil {
		return err.Error()
	}
	return ""
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
	p := results.Printer{Log: logOut, EndLog: endLog, Notes: e.stderr, Out: e.stdout, Color: e.color(e.stdout), Remote: remote}
	st, err := p.Follow(ctx, results.Source{Dir: dir, Remote: remote}.Follow(ctx, target, want))
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
	return exitForState(st)
}

// logFollow implements `refci log -f`: follow a run on a remote, named
// as results.Source.Locate takes it.
func logFollow(ctx context.Context, e *env, repoDir, remote, arg string) int {
	repo, err := openRepo(repoDir)
	if err != nil {
		return e.exitOn(err)
	}
	dir := repo.Dir()
	if msg := missingRemote(ctx, dir, remote); msg != "" {
		e.errorf("log -f: %s", msg)
		return exitUsage
	}
	src := results.Source{Dir: dir, Remote: remote}
	waitCtx, stop := signal.NotifyContext(ctx, os.Interrupt)
	p := results.Printer{Notes: e.stderr, Remote: remote}
	target, want, err := src.Locate(waitCtx, arg, func(n results.ClaimNote, cv results.ClaimView) { p.PrintClaimNote(arg, n, cv) })
	interrupted := waitCtx.Err() != nil
	stop()
	switch {
	case err == nil:
		return follow(ctx, e, dir, remote, target, want)
	case interrupted:
		e.errorf("stopped waiting; the request stays queued")
		return exitFailed
	case errors.Is(err, results.ErrUnknownName):
		e.errorf("%v", err)
		e.errorf("log -f takes a run (its id, <commit>/<run-id> or its ref), a commit, or the name of a pending request")
		return exitUsage
	case errors.Is(err, results.ErrNoRequest):
		e.errorf("%s has no request or claim named %s (nor is it a revision here); a request that already ran is followed by its commit: refci log -f COMMIT, or see refci runs --all after git fetch %s '+refs/ci/*:refs/ci/*'", remote, arg, remote)
		return exitUsage
	}
	e.errorf("%v", err)
	return exitInfra
}
