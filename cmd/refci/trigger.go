package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
)

// gitCmd runs git in dir and returns its trimmed stdout; the error carries
// git's stderr.
func gitCmd(ctx context.Context, dir, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0")
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("git %s: %s", args[0], strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

func cmdTrigger(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "trigger", "[--remote R] [--name N] [--env E] [--timeout DUR] [--wait] [REV]")
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
		branch, _ := gitCmd(ctx, dir, "", "symbolic-ref", "--short", "-q", "HEAD")
		if first(pos) != "" || branch == "" {
			branch = "rev-" + target.String()[:12]
		}
		*name = branch
	}
	if err := queue.ValidateRequestName(*name); err != nil {
		e.errorf("trigger: %v", err)
		return exitUsage
	}
	obj := target.String()
	opts := queue.RequestOptions{Env: *envName, Timeout: *timeout}
	if opts.Env != "" || opts.Timeout > 0 {
		if opts.Env != "" {
			if err := queue.ValidateJobName(opts.Env); err != nil {
				e.errorf("trigger: --env %q: use letters, digits, '.', '_' or '-'", opts.Env)
				return exitUsage
			}
		}
		obj, err = makeRequestTag(ctx, dir, target.String(), *name, opts)
		if err != nil {
			e.errorf("trigger: %v", err)
			return exitInfra
		}
	}
	if msg := missingRemote(ctx, dir, *remote); msg != "" {
		e.errorf("trigger: %s", msg)
		return exitUsage
	}
	ref := queue.RequestRef(*name)
	pushed := time.Now()
	if _, err := gitCmd(ctx, dir, "", "push", "--quiet", "--no-verify", *remote, "+"+obj+":"+ref); err != nil {
		e.errorf("trigger: pushing %s to %s failed: %v", ref, *remote, err)
		return exitInfra
	}
	fmt.Fprintf(e.stdout, "refci: requested %s for %s on %s\n", *name, target.String()[:12], *remote)
	if !*wait {
		fmt.Fprintf(e.stdout, "follow it with: refci trigger --wait, or fetch results with: git fetch %s '+refs/ci/*:refs/ci/*'\n", *remote)
		return exitOK
	}
	return follow(ctx, e, dir, *remote, target.String(), func(st *queue.Status) bool {
		return st.Request == *name && st.Started.After(pushed.Add(-queue.ClockSkew))
	})
}

// missingRemote says what is wrong when remote is a name (not a URL or a
// path) that the repository has no remote of, and what to do; else "".
func missingRemote(ctx context.Context, dir, remote string) string {
	if strings.ContainsAny(remote, ":/\\") || remote == "." {
		return "" // a URL or a path: git says what is wrong with it
	}
	out, err := gitCmd(ctx, dir, "", "remote")
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

// makeRequestTag writes an annotated tag object carrying the options,
// signed when the user has a signing key configured. No tag ref is left
// behind.
func makeRequestTag(ctx context.Context, dir, target, name string, o queue.RequestOptions) (string, error) {
	tmp := fmt.Sprintf("refci-request-%d", time.Now().UnixNano())
	args := []string{"tag", "-a"}
	if key, _ := gitCmd(ctx, dir, "", "config", "user.signingkey"); key != "" {
		args = []string{"tag", "-s"}
	}
	msg := queue.FormatRequestOptions("refci request "+name, o)
	if _, err := gitCmd(ctx, dir, msg, append(args, "-F", "-", tmp, target)...); err != nil {
		return "", err
	}
	defer gitCmd(context.WithoutCancel(ctx), dir, "", "tag", "-d", tmp)
	return gitCmd(ctx, dir, "", "rev-parse", "refs/tags/"+tmp)
}

// follow polls the remote for the run of target that match selects,
// prints its log as snapshots arrive, and returns the exit code of its
// final state. When the run's worker dies, it says so and follows the
// attempt that takes the request over.
func follow(ctx context.Context, e *env, dir, remote, target string, match func(*queue.Status) bool) int {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	printed := int64(0)
	logOut, endLog := e.logWriter()
	var cur struct {
		ref, run, request string // the run followed; its ref may not be on the remote yet
		attempt           int
	}
	announced, waitNoted, expiryNoted := false, false, ""
	began, lastClaimCheck := time.Now(), time.Time{}
	takeOver := func(to, toRef string, toAttempt int, worker string) {
		fmt.Fprintf(e.stderr, "\nrefci: run %s (attempt %d) lost its worker; run %s (attempt %d) on worker %s took the request over\n",
			cur.run, cur.attempt, to, toAttempt, worker)
		cur.ref, cur.run, cur.attempt, printed = toRef, to, toAttempt, 0
	}
	for {
		spec := "+" + queue.RunsPrefix + target + "/*:" + queue.RunsPrefix + target + "/*"
		if _, err := gitCmd(ctx, dir, "", "fetch", "--quiet", "--no-write-fetch-head", remote, spec); err != nil {
			if ctx.Err() != nil {
				return exitFailed
			}
			e.errorf("fetch from %s failed (retrying): %v", remote, err)
		}
		repo, err := openRepo(dir)
		if err != nil {
			e.errorf("%v", err)
			return exitInfra
		}
		if cur.ref == "" {
			runs, _ := listRuns(repo, target)
			for _, r := range runs {
				if r.Future {
					continue // never taken for the run asked for
				}
				if st, err := readResult(repo, r.Ref, r.Commit); err == nil && match(st) {
					cur.ref, cur.run, cur.request, cur.attempt = r.Ref, st.Run, st.Request, st.Attempt
					break
				}
			}
			if cur.ref == "" && !waitNoted && time.Since(began) > 3*time.Second {
				fmt.Fprintf(e.stderr, "refci: waiting for the run to start (no worker has pushed its progress yet)\n")
				waitNoted = true
			}
		}
		var st *queue.Status // the followed run's newest snapshot, once it has one
		h, err := repo.RefHash(cur.ref)
		if cur.ref != "" && err == nil {
			if st, err = readResult(repo, cur.ref, h); err != nil {
				if notBelieved(err) {
					e.errorf("run %s is not believed: %s", cur.ref, resultProblem(err))
					return exitFailed
				}
				e.errorf("%v", err)
				return exitInfra
			}
			cur.request, cur.attempt = st.Request, st.Attempt
			if !announced {
				fmt.Fprintf(e.stderr, "refci: run %s (attempt %d) on worker %s", st.Run, st.Attempt, st.Worker)
				if prev := st.PreviousRun(); prev != "" {
					fmt.Fprintf(e.stderr, ", after run %s lost its worker", prev)
				}
				fmt.Fprintln(e.stderr)
				announced = true
			}
			if st.Extra["config_error"] != true || printed > 0 {
				// A configuration error's log is its reason alone,
				// which the summary below says.
				printed = printNewLog(logOut, repo, h, printed)
			}
			if st.State.Final() {
				endLog()
				// The final block: jobs as a tree, artifacts, then the
				// one-line summary, which holds the reason.
				fmt.Fprintln(e.stdout)
				block := *st
				block.Reason = ""
				render.Terminal(e.stdout, &block, render.TermOptions{Color: e.color(e.stdout), Ref: cur.ref})
				fmt.Fprintf(e.stdout, "refci: %s in %s", st.State, render.Duration(st.DurationMS))
				if st.Reason != "" {
					fmt.Fprintf(e.stdout, ": %s", render.Safe(st.Reason))
				}
				fmt.Fprintf(e.stdout, "\nrefci: result %s\n", cur.ref)
				return exitForState(st)
			}
		}
		// While it runs, look now and then whether its worker is gone.
		// A run whose worker died never ends: follow the attempt that
		// took the request over instead, found by its claim (before its
		// first snapshot) or, once that is gone, by its result.
		if cur.request != "" && time.Since(lastClaimCheck) >= followClaimEvery {
			lastClaimCheck = time.Now()
			if st != nil {
				if by, ok := takenOverBy(repo, st); ok {
					takeOver(by.Run, by.Ref, by.st.Attempt, by.st.Worker)
					continue
				}
			}
			if cv, err := remoteClaim(ctx, repo, dir, remote, cur.request); err == nil && cv.claim != nil {
				switch c := cv.claim; {
				case c.Run != cur.run && c.PreviousRun == cur.run && c.Target == target:
					takeOver(c.Run, queue.RunRef(c.Target, c.Run), c.Attempt, c.Worker)
					continue
				case c.Run == cur.run && c.Expired(time.Now()) && expiryNoted != cur.run:
					fmt.Fprintf(e.stderr, "\nrefci: worker %s stopped renewing its claim on run %s (the lease ran out at %s); waiting for another worker to take the request over\n",
						c.Worker, cur.run, c.LeaseExpires.Local().Format(time.TimeOnly))
					expiryNoted = cur.run
				}
			}
		}
		select {
		case <-ctx.Done():
			e.errorf("stopped following; the run goes on")
			return exitFailed
		case <-time.After(time.Second):
		}
	}
}

// followClaimEvery is how often follow looks whether the worker of a run
// that has not ended is gone.
const followClaimEvery = 5 * time.Second

// printNewLog prints the part of a snapshot's log not printed yet. A
// capped log may have moved its tail; then it says so and prints the tail.
func printNewLog(w io.Writer, repo *gitproto.Repo, commit gitproto.Hash, printed int64) int64 {
	b, err := repo.ReadFile(commit, queue.LogFile)
	if err != nil {
		return printed
	}
	if int64(len(b)) < printed {
		fmt.Fprintf(w, "\n[refci: the log was capped; showing its tail]\n")
		printed = 0
	}
	w.Write(b[printed:])
	return int64(len(b))
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
	var target, runID string
	switch {
	case strings.HasPrefix(arg, queue.RunsPrefix):
		t, id, ok := queue.ParseRunRef(arg)
		if !ok {
			e.errorf("%s is not a run ref", arg)
			return exitUsage
		}
		target, runID = t, id
	case strings.Contains(arg, "/") && queue.ValidRunID(arg[strings.IndexByte(arg, '/')+1:]):
		t, id, _ := strings.Cut(arg, "/") // <commit>/<run-id>; a branch or request name with a slash is not one
		target, runID = t, id
	default:
		rev := arg
		if queue.ValidRunID(arg) {
			if rr, err := findRun(repo, arg, e.errorf); err == nil {
				target, runID = rr.Target, rr.Run
				break
			}
			e.errorf("run %s is not known here yet; name it as <commit>/<run-id> or refs/ci/runs/<commit>/<run-id>", arg)
			return exitUsage
		}
		if rev == "" {
			rev = "HEAD"
		}
		h, err := repo.ResolveCommit(rev)
		if err != nil {
			if queue.ValidateRequestName(arg) == nil {
				// Not a revision here: a request name on the remote.
				t, id, code := waitForClaim(ctx, e, repo, dir, remote, arg)
				if t == "" {
					return code
				}
				target, runID = t, id
				break
			}
			e.errorf("%v", err)
			e.errorf("log -f takes a run (its id, <commit>/<run-id> or its ref), a commit, or the name of a pending request")
			return exitFor(err)
		}
		target = h.String()
	}
	started := time.Now()
	return follow(ctx, e, dir, remote, target, func(st *queue.Status) bool {
		if runID != "" {
			// The run, or the attempt that took it over when its worker
			// died before it pushed anything.
			return st.Run == runID || st.PreviousRun() == runID
		}
		return st.Started.After(started.Add(-time.Hour)) // the newest recent run of the commit
	})
}

// waitForClaim finds the run a worker is running, or will run, for the
// request name on remote: it fetches the request's claim, waiting while
// the request is pending and unclaimed. It returns the run's target and id,
// or "" and an exit code after saying why not.
func waitForClaim(ctx context.Context, e *env, repo *gitproto.Repo, dir, remote, name string) (target, runID string, code int) {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	waiting, badNoted := false, false
	for {
		cv, err := remoteClaim(ctx, repo, dir, remote, name)
		if err != nil {
			if ctx.Err() != nil {
				return "", "", exitFailed
			}
			e.errorf("cannot list the request %s on %s: %v", name, remote, err)
			return "", "", exitInfra
		}
		if cv.present {
			if cv.claim != nil {
				return cv.claim.Target, cv.claim.Run, exitOK
			}
			if cv.bad != nil && !badNoted {
				e.errorf("the claim of %s on %s is not believed (%s); waiting for a worker to replace it", name, remote, render.Safe(cv.bad.Error()))
				badNoted = true
			}
			// A claim replaced meanwhile, or just deleted: look again.
		} else if !cv.hasRequest {
			e.errorf("%s has no request or claim named %s (nor is it a revision here); a request that already ran is followed by its commit: refci log -f COMMIT, or see refci runs --all after git fetch %s '+refs/ci/*:refs/ci/*'", remote, name, remote)
			return "", "", exitUsage
		} else if !waiting {
			fmt.Fprintf(e.stderr, "refci: request %s is waiting for a worker\n", name)
			waiting = true
		}
		select {
		case <-ctx.Done():
			e.errorf("stopped waiting; the request stays queued")
			return "", "", exitFailed
		case <-time.After(time.Second):
		}
	}
}

// claimView is what the remote holds for a request name: whether the
// request and a claim are there, and the claim, when it could be read.
type claimView struct {
	hasRequest, present bool
	claim               *queue.Claim
	bad                 error // why the claim there is not believed
}

// readClaim decodes a claim found under refs/ci/claims/<name> and checks
// it (queue.Claim.Validate): a claim about another request, or with values
// no worker writes, is not believed.
func readClaim(b []byte, name string) (*queue.Claim, error) {
	c, err := queue.DecodeClaim(b)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(name); err != nil {
		return nil, err
	}
	return c, nil
}

// remoteClaim lists the request and the claim of name on remote, and
// fetches and reads the claim when there is one.
func remoteClaim(ctx context.Context, repo *gitproto.Repo, dir, remote, name string) (claimView, error) {
	claimRef, reqRef := queue.ClaimRef(name), queue.RequestRef(name)
	out, err := gitCmd(ctx, dir, "", "ls-remote", remote, reqRef, claimRef)
	if err != nil {
		return claimView{}, err
	}
	var cv claimView
	claimVal := ""
	for _, line := range strings.Split(out, "\n") {
		h, ref, _ := strings.Cut(line, "\t")
		switch ref {
		case claimRef:
			claimVal, cv.present = h, true
		case reqRef:
			cv.hasRequest = true
		}
	}
	if !cv.present {
		return cv, nil
	}
	if _, err := gitCmd(ctx, dir, "", "fetch", "--quiet", "--no-write-fetch-head", remote, "+"+claimRef+":"+claimRef); err == nil {
		if b, err := repo.ReadFile(gitproto.NewHash(claimVal), queue.ClaimFile); err == nil {
			cv.claim, cv.bad = readClaim(b, name)
		}
	}
	return cv, nil
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
