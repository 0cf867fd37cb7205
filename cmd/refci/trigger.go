package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
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
	obj, err := makeRequestTag(ctx, dir, target.String(), *name, opts)
	if err != nil {
		e.errorf("trigger: %v", err)
		return exitInfra
	}
	ref := queue.RequestRef(*name)
	if _, err := git.Run(ctx, "", "push", "--quiet", "--no-verify", *remote, "+"+obj+":"+ref); err != nil {
		e.errorf("trigger: pushing %s to %s failed: %v", ref, *remote, err)
		return exitInfra
	}
	fmt.Fprintf(e.stdout, "refci: requested %s for %s on %s\n", *name, target.String()[:12], *remote)
	if !*wait {
		fmt.Fprintf(e.stdout, "follow it with: refci trigger --wait, or fetch results with: git fetch %s '+refs/ci/*:refs/ci/*'\n", *remote)
		return exitOK
	}
	return follow(ctx, e, dir, *remote, target.String(), followed{name: *name, object: obj}, nil)
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

// makeRequestTag writes an annotated tag object carrying the options,
// signed when the user has a signing key configured. No tag ref is left
// behind. Unsigned, it needs no identity configured in git: the tagger is
// the user's committer identity when git has one, else refci's.
func makeRequestTag(ctx context.Context, dir, target, name string, o queue.RequestOptions) (string, error) {
	id := make([]byte, 8)
	rand.Read(id)
	msg := queue.FormatRequestOptions(fmt.Sprintf("refci request %s (id %x)", name, id), o)
	git := gitproto.CLI{Dir: dir}
	var h gitproto.Hash
	var err error
	if key, _ := git.Run(ctx, "", "config", "user.signingkey"); key != "" {
		h, err = git.SignTag(ctx, fmt.Sprintf("refci-request-%x", id), gitproto.NewHash(target), msg)
	} else {
		tagger, terr := git.Run(ctx, "", "var", "GIT_COMMITTER_IDENT")
		if terr != nil {
			tagger = fmt.Sprintf("refci trigger <refci@localhost> %d +0000", time.Now().Unix())
		}
		h, err = git.MakeTag(ctx, gitproto.TagSpec{Target: gitproto.NewHash(target), Name: "refci-request", Tagger: tagger, Message: msg})
	}
	if err != nil {
		return "", err
	}
	return h.String(), nil
}

// followed names the request whose run follow waits for: its name and
// the object its request ref was set to, unique per `refci trigger`.
type followed struct {
	name, object string
	after        time.Time // when set, runs that started before are not it
}

// follow polls the remote for the run of target that match selects, or,
// with want.object set, the run of exactly that request (status.json
// request_object; a worker that does not record it is matched by the
// run its claim of that object names). It prints the run's log as
// snapshots arrive, and returns the exit code of its final state. When
// the run's worker dies, it says so and follows the attempt that takes
// the request over. A request pushed over or deleted before any worker
// ran it ends the wait with exit code 1.
func follow(ctx context.Context, e *env, dir, remote, target string, want followed, match func(*queue.Status) bool) int {
	git := gitproto.CLI{Dir: dir}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	claimRun := "" // the run a claim of want.object names
	if want.object != "" {
		match = func(st *queue.Status) bool {
			if st.Request != want.name || st.Started.Before(want.after) {
				return false
			}
			return st.RequestObject == want.object || st.RequestObject == "" && claimRun != "" && st.Run == claimRun
		}
	}
	printed := int64(0)
	logOut, endLog := e.logWriter()
	defer endLog() // every way out: a styled log must not colour what follows
	var cur struct {
		ref, run, request string // the run followed; its ref may not be on the remote yet
		object            string // the request object it runs, when known
		attempt           int
	}
	cur.object = want.object
	watch := localRunsWatch(ctx, dir, remote, target)
	announced, waitNoted, expiryNoted := false, false, ""
	began, lastClaimCheck := time.Now(), time.Time{}
	takeOver := func(to, toRef string, toAttempt int, worker string) {
		endLog()
		fmt.Fprintf(e.stderr, "\nrefci: run %s (attempt %d) lost its worker; run %s (attempt %d) on worker %s took the request over\n",
			cur.run, cur.attempt, to, toAttempt, worker)
		cur.ref, cur.run, cur.attempt, printed = toRef, to, toAttempt, 0
	}
	for {
		// Before the run is found: is the request still there, or
		// claimed? Looked at before the fetch below, so that a request
		// that ran and is gone has its result fetched by then.
		gone := ""
		if cur.ref == "" && want.object != "" && time.Since(lastClaimCheck) >= followClaimEvery {
			lastClaimCheck = time.Now()
			if repo, err := openRepo(dir); err == nil {
				if cv, err := remoteClaim(ctx, repo, dir, remote, want.name); err == nil {
					ours := cv.claim != nil && cv.claim.RequestObject == want.object
					if ours {
						claimRun = cv.claim.Run
					}
					if !ours && (!cv.present || cv.claim != nil) && cv.request != want.object {
						gone = "was deleted"
						if cv.hasRequest {
							gone = "was pushed again (it now holds " + short(cv.request) + ")"
						}
					}
				}
			}
		}
		seen := ""
		if watch != nil {
			seen = watch() // before the fetch: a change during it is fetched next time
		}
		spec := "+" + queue.RunsPrefix + target + "/*:" + queue.RunsPrefix + target + "/*"
		if _, err := git.Run(ctx, "", "fetch", "--quiet", "--no-write-fetch-head", remote, spec); err != nil {
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
			if cur.ref == "" && gone != "" {
				e.errorf("request %s %s before a worker ran it; the run asked for will not happen", want.name, gone)
				return exitFailed
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
			if st.RequestObject != "" {
				cur.object = st.RequestObject
			}
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
				sameObject := cur.object == "" || cv.claim.RequestObject == cur.object
				switch c := cv.claim; {
				case c.Run != cur.run && c.PreviousRun == cur.run && !sameObject:
					e.errorf("run %s lost its worker, and request %s was pushed again meanwhile: run %s is of the new push, and this one will not be run again", cur.run, cur.request, c.Run)
					return exitFailed
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
		if !waitForRuns(ctx, watch, seen, time.Second) {
			e.errorf("stopped following; the run goes on")
			return exitFailed
		}
	}
}

// waitForRuns waits before follow looks at the remote again: most long,
// or, for a remote on this machine (watch not nil), until its run refs of
// the target differ from seen, looked at every followWatchEvery (reading
// a few ref files, no git process). It returns false when ctx ends.
func waitForRuns(ctx context.Context, watch func() string, seen string, most time.Duration) bool {
	deadline := time.After(most)
	var tick <-chan time.Time
	if watch != nil {
		t := time.NewTicker(followWatchEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case <-deadline:
			return true
		case <-tick:
			if watch() != seen {
				return true
			}
		}
	}
}

// followWatchEvery is how often follow reads the run refs of a remote on
// this machine: a snapshot is shown this long after it lands at most.
const followWatchEvery = 100 * time.Millisecond

// localRunsWatch returns, for a remote on this machine (a path or a
// file:// URL, as git remote get-url says), a function that reads its run
// refs of target straight from its files and returns them as one string,
// which changes whenever a run ref of target does; nil for a remote
// reached over the network (or one that cannot be read that way), which
// follow fetches from once a second.
func localRunsWatch(ctx context.Context, dir, remote, target string) func() string {
	git := gitproto.CLI{Dir: dir}
	u, err := git.Run(ctx, "", "remote", "get-url", remote)
	if err != nil {
		u = remote // a URL or path, not a remote's name
	}
	path := (&gitproto.Remote{URL: u}).LocalDir()
	if path == "" {
		return nil
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path) // git reads it from the work tree
	}
	path = filepath.Clean(path)
	repo, err := gitproto.Open(path)
	if err != nil || repo.GitDir() != path && repo.GitDir() != filepath.Join(path, ".git") {
		return nil // not the repository itself (Open looks in parent directories)
	}
	prefix := queue.RunsPrefix + target + "/"
	read := func() string {
		refs, err := repo.Refs(prefix)
		if err != nil {
			return "?" + err.Error()
		}
		names := make([]string, 0, len(refs))
		for _, r := range refs {
			names = append(names, r.Name+" "+r.Hash.String())
		}
		sort.Strings(names)
		return strings.Join(names, "\n")
	}
	if strings.HasPrefix(read(), "?") {
		return nil
	}
	return read
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
	var target, runID, reqObj string
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
				c, code := waitForClaim(ctx, e, repo, dir, remote, arg)
				if c == nil {
					return code
				}
				if c.Run == "" {
					// It ran between two looks: its result names its
					// request object (the same for two pushes of one
					// commit: then a run that started since it was seen).
					return follow(ctx, e, dir, remote, c.Target, followed{name: arg, object: c.RequestObject, after: c.Claimed.Add(-queue.ClockSkew)}, nil)
				}
				target, runID, reqObj = c.Target, c.Run, c.RequestObject
				break
			}
			e.errorf("%v", err)
			e.errorf("log -f takes a run (its id, <commit>/<run-id> or its ref), a commit, or the name of a pending request")
			return exitFor(err)
		}
		target = h.String()
	}
	started := time.Now()
	return follow(ctx, e, dir, remote, target, followed{}, func(st *queue.Status) bool {
		if reqObj != "" && st.RequestObject != "" && st.RequestObject != reqObj {
			return false // another push of the request than the one claimed
		}
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
// the request is pending and unclaimed, or while the claim there is of an
// earlier push of the request. It returns the claim, or nil and an exit
// code after saying why not. A request seen pending that is gone at the
// next look ran in between: then the claim returned has no Run, and
// Claimed is when the request was seen.
func waitForClaim(ctx context.Context, e *env, repo *gitproto.Repo, dir, remote, name string) (*queue.Claim, int) {
	git := gitproto.CLI{Dir: dir}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	waiting, badNoted, staleNoted := false, false, false
	// The pending request seen last, and the commit it runs: when it is
	// gone at the next look, it ran meanwhile (its result was pushed
	// before it was deleted) and is followed by its result.
	var seen, seenTarget string
	var seenAt time.Time
	for {
		cv, err := remoteClaim(ctx, repo, dir, remote, name)
		if err != nil {
			if ctx.Err() != nil {
				return nil, exitFailed
			}
			e.errorf("cannot list the request %s on %s: %v", name, remote, err)
			return nil, exitInfra
		}
		if cv.hasRequest && cv.request != seen {
			seen, seenTarget, seenAt = cv.request, "", time.Now()
			if _, err := git.Run(ctx, "", "fetch", "--quiet", "--no-write-fetch-head", remote, queue.RequestRef(name)); err == nil {
				seenTarget, _ = git.Run(ctx, "", "rev-parse", "--verify", "--quiet", seen+"^{commit}")
			}
		}
		if cv.present {
			switch c := cv.claim; {
			case c != nil && cv.hasRequest && cv.request != c.RequestObject:
				// The request was pushed again: the claim's run is of the
				// earlier push and ends cancelled; the new push runs next.
				if !staleNoted {
					fmt.Fprintf(e.stderr, "refci: request %s was pushed again; waiting for a worker to claim it (the claim there, run %s, is of the earlier push)\n", name, c.Run)
					staleNoted = true
				}
			case c != nil:
				return c, exitOK
			}
			if cv.bad != nil && !badNoted {
				e.errorf("the claim of %s on %s is not believed (%s); waiting for a worker to replace it", name, remote, render.Safe(cv.bad.Error()))
				badNoted = true
			}
			// A claim replaced meanwhile, or just deleted: look again.
		} else if !cv.hasRequest && seenTarget != "" {
			// No claim: Run "", Claimed when the request was seen unclaimed.
			return &queue.Claim{Request: name, RequestObject: seen, Target: seenTarget, Claimed: seenAt}, exitOK
		} else if !cv.hasRequest {
			e.errorf("%s has no request or claim named %s (nor is it a revision here); a request that already ran is followed by its commit: refci log -f COMMIT, or see refci runs --all after git fetch %s '+refs/ci/*:refs/ci/*'", remote, name, remote)
			return nil, exitUsage
		} else if !waiting {
			fmt.Fprintf(e.stderr, "refci: request %s is waiting for a worker\n", name)
			waiting = true
		}
		select {
		case <-ctx.Done():
			e.errorf("stopped waiting; the request stays queued")
			return nil, exitFailed
		case <-time.After(time.Second):
		}
	}
}

// claimView is what the remote holds for a request name: whether the
// request and a claim are there, and the claim, when it could be read.
type claimView struct {
	hasRequest, present bool
	request             string // the request ref's value, when hasRequest
	claim               *queue.Claim
	bad                 error // why the claim there is not believed
}

// remoteClaim lists the request and the claim of name on remote, and
// fetches and reads the claim when there is one.
func remoteClaim(ctx context.Context, repo *gitproto.Repo, dir, remote, name string) (claimView, error) {
	git := gitproto.CLI{Dir: dir}
	claimRef, reqRef := queue.ClaimRef(name), queue.RequestRef(name)
	out, err := git.Run(ctx, "", "ls-remote", remote, reqRef, claimRef)
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
			cv.hasRequest, cv.request = true, h
		}
	}
	if !cv.present {
		return cv, nil
	}
	if _, err := git.Run(ctx, "", "fetch", "--quiet", "--no-write-fetch-head", remote, "+"+claimRef+":"+claimRef); err == nil {
		if b, err := repo.ReadFile(gitproto.NewHash(claimVal), queue.ClaimFile); err == nil {
			cv.claim, cv.bad = queue.DecodeClaimOf(b, name)
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
