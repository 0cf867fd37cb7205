package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
	"refci.dev/refci/results"
	"refci.dev/refci/secrets"
)

func cmdStatus(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "status")
	repoDir := fs.String("repo", ".", "the repository")
	asJSON := fs.Bool("json", false, "print status.json as stored")
	remote := fs.String("remote", "origin", fetchRemoteHelp)
	pos, code, ok := parse(e, fs, args, 1)
	if !ok {
		return code
	}
	repo, rr, st, code := loadRun(ctx, e, fetchRemote(fs, *repoDir, *remote), first(pos))
	if st == nil {
		return code
	}
	if *asJSON {
		b, err := repo.ReadFile(rr.Commit, queue.StatusFile)
		if err != nil {
			e.errorf("%v", err)
			return exitInfra
		}
		e.stdout.Write(b)
		return exitForState(st)
	}
	st = results.Shown(repo, st) // a lost run's status.json still says running
	if err := render.Terminal(e.stdout, st, render.TermOptions{Color: e.color(e.stdout), Ref: rr.Ref}); err != nil {
		return exitInfra
	}
	return exitForState(st)
}

func cmdLog(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "log")
	repoDir := fs.String("repo", ".", "the repository")
	job := fs.String("job", "", "print this job's log instead of the whole pipeline's")
	followF := fs.Bool("f", false, "follow a run on the remote as it goes, until it ends")
	remote := fs.String("remote", "origin", "with -f: the remote to follow; else "+strings.TrimPrefix(fetchRemoteHelp, "the remote "))
	pos, code, ok := parse(e, fs, args, 1)
	if !ok {
		return code
	}
	if *followF {
		return logFollow(ctx, e, *repoDir, *remote, first(pos))
	}
	repo, rr, st, code := loadRun(ctx, e, fetchRemote(fs, *repoDir, *remote), first(pos))
	if st == nil {
		return code
	}
	rc, err := rr.OpenLog(repo, st, *job)
	if errors.Is(err, results.ErrNoLog) {
		e.errorf("%v", err)
		return exitUsage
	} else if err != nil {
		e.errorf("%v", err)
		return exitInfra
	}
	defer rc.Close()
	out, done := e.logWriter()
	if _, err := io.Copy(out, rc); err != nil {
		return exitInfra
	}
	done()
	return exitOK
}

func cmdRuns(_ context.Context, e *env, args []string) int {
	fs := newFlags(e, "runs")
	repoDir := fs.String("repo", ".", "the repository")
	all := fs.Bool("all", false, "list the runs of every commit")
	limit := fs.Int("n", 100, "list at most `N` runs, a page (0: all of them)")
	page := fs.Int("page", 1, "with -n: which page to list, `P` (1: the newest)")
	pos, code, ok := parse(e, fs, args, 1)
	if !ok {
		return code
	}
	repo, err := openRepo(*repoDir)
	if err != nil {
		return e.exitOn(err)
	}
	target := ""
	if !*all {
		h, err := repo.ResolveCommit(first(pos))
		if err != nil {
			return e.exitOn(err)
		}
		target = h.String()
	}
	if *limit < 0 || *page < 1 {
		return usageError(e, fs, "-n must be 0 or more and --page 1 or more")
	}
	pg, err := results.ListPage(repo, target, *limit, *page)
	if err != nil {
		e.errorf("%v", err)
		if errors.Is(err, results.ErrPastLastPage) {
			return exitUsage
		}
		return exitInfra
	}
	if note := pg.Note(); note != "" {
		defer fmt.Fprintf(e.stderr, "refci: %s\n", note)
	}
	color := e.color(e.stdout)
	for _, l := range pg.Runs {
		fmt.Fprintln(e.stdout, l.Line(color))
	}
	return exitOK
}

// cmdFetch fetches the runs of the named commits, and only those: one
// refspec per commit, which protocol v2 sends as a ref-prefix, so the
// remote advertises only their run refs however many runs it holds.
func cmdFetch(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "fetch")
	repoDir := fs.String("repo", ".", "the repository")
	remote := fs.String("remote", "origin", "the remote to fetch from (a remote's name, a URL or a path)")
	pos, code, ok := parse(e, fs, args, 1<<20)
	if !ok {
		return code
	}
	repo, err := openRepo(*repoDir)
	if err != nil {
		return e.exitOn(err)
	}
	if len(pos) == 0 {
		pos = []string{"HEAD"}
	}
	targets, err := results.Targets(repo, pos...)
	if err != nil {
		return e.exitOn(err)
	}
	_, got, err := results.Source{Dir: repo.Dir(), Remote: *remote}.Refresh(ctx, targets...)
	if err != nil {
		return e.exitOn(err)
	}
	for i, r := range got {
		name := r.Target[:12]
		if i < len(pos) && queue.TargetRefFor(pos[i], r.Target) != "" && len(pos) == len(targets) {
			name += " (" + render.Safe(pos[i]) + ")"
		}
		fmt.Fprintf(e.stdout, "%s: %d run(s) here, %d new or changed\n", name, r.Runs, r.NewOrChanged)
	}
	return exitOK
}

func cmdVerify(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "verify")
	repoDir := fs.String("repo", ".", "the repository")
	var keyrings multiFlag
	fs.Var(&keyrings, "keyring", "armored public keys to trust (repeatable); default: your own key and $REFCI_HOME/trusted/*.asc")
	keyFile := fs.String("key", "", "your private key, when not $REFCI_HOME/key.asc (its public part is trusted)")
	remote := fs.String("remote", "origin", fetchRemoteHelp)
	pos, code, ok := parse(e, fs, args, 1)
	if !ok {
		return code
	}
	kr, err := e.keyring(keyrings, *keyFile)
	if err != nil {
		e.errorf("%v", err)
		return exitUsage
	}
	repo, rr, err := fetchRemote(fs, *repoDir, *remote).FindFetching(ctx, first(pos), e.errorf)
	if err != nil {
		return e.exitOn(err)
	}
	// Every commit of the snapshot chain is signed by a trusted key and
	// says what the ref says; all name the same request and attempt.
	st, n, err := results.Verify(repo, rr, kr, func(s results.Signed) {
		fmt.Fprintf(e.stdout, "good signature on %s by %s (%s)\n", s.Commit.String()[:12], render.Safe(s.Signer.UserID), s.Signer.Fingerprint)
	})
	if err != nil {
		e.errorf("%v", err)
		switch {
		case errors.Is(err, results.ErrNotVerified), results.NotBelieved(err):
			return exitFailed
		case errors.Is(err, queue.ErrFormat):
			return exitUsage // as status says: upgrade refci
		}
		return exitInfra
	}
	if rr.Future {
		e.errorf("run %s is dated in the future (its worker's clock is wrong, or its id was forged): it is never taken for the latest", rr.ID)
	}
	fmt.Fprintf(e.stdout, "refci: run %s verified: %d commit(s), %s, %s\n", rr.ID, n, st.State, rr.Ref)
	return exitOK
}

// errNoKeys is matched by keyring's error when it found no key to trust.
var errNoKeys = errors.New("no keys to verify with")

// keyring builds the keys verify, view and serve's site trust: the given
// files, or else the user's own key (keyFile, default
// $REFCI_HOME/key.asc) plus $REFCI_HOME/trusted/*.asc; with none of
// those, an error matching errNoKeys.
func (e *env) keyring(files []string, keyFile string) (secrets.Keyring, error) {
	if len(files) > 0 {
		return secrets.ReadKeyringFiles(files...)
	}
	h, err := e.home()
	if err != nil {
		return secrets.Keyring{}, err
	}
	if keyFile == "" {
		keyFile = filepath.Join(h, "key.asc")
	}
	kr, err := secrets.ReadTrustedDir(filepath.Join(h, "trusted"), keyFile)
	if err == nil && kr.Len() == 0 {
		err = fmt.Errorf("%w: pass --keyring FILE (the worker's 'refci keys export'), or put keys in %s", errNoKeys, filepath.Join(h, "trusted"))
	}
	return kr, err
}

// fetchRemoteHelp describes the --remote of status, log and verify.
const fetchRemoteHelp = "the remote to fetch the commit's runs from when none is here (origin only if the repository has it)"

// fetchRemote is where status, log and verify fetch the runs of a commit
// that has none here: the --remote given, else origin when the repository
// has a remote of that name (checked only when a fetch is needed).
func fetchRemote(fs *flag.FlagSet, dir, remote string) results.Source {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "remote" })
	if repo, err := openRepo(dir); err == nil {
		dir = repo.Dir()
	} // else opening it says why
	return results.Source{Dir: dir, Remote: remote, Default: !given}
}

// loadRun opens the repository and reads the run the user named,
// fetching the runs of its commit from src's remote when none is here
// (results.Source.Load). On failure it has reported the error and st is
// nil.
func loadRun(ctx context.Context, e *env, src results.Source, arg string) (*gitproto.Repo, results.Run, *queue.Status, int) {
	repo, rr, st, err := src.Load(ctx, arg, e.errorf)
	if err != nil {
		e.errorf("%v", err)
		switch {
		case results.NotBelieved(err):
			return nil, rr, nil, exitFailed
		case errors.Is(err, queue.ErrFormat):
			return nil, rr, nil, exitUsage
		case errors.Is(err, results.ErrUnreadable):
			return nil, rr, nil, exitInfra
		}
		return nil, rr, nil, exitFor(err)
	}
	return repo, rr, st, 0
}

// exitOn reports err, which ends the command, and returns its exit code
// (exitFor).
func (e *env) exitOn(err error) int {
	e.errorf("%v", err)
	return exitFor(err)
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}
