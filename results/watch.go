package results

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// Source is a local repository and the remote its results come from:
// what a reader follows. Runs and claims fetched from the remote land in
// the repository under their own names. A plain value; safe for
// concurrent use if the repository is.
type Source struct {
	Dir    string // where git runs: the work tree, or the git directory of a bare repository
	Remote string // a remote's name, a URL or a path
	// Default says that Remote is a default the user did not name
	// (origin): FindFetching then fetches only when the repository has a
	// remote of that name, and says nothing when it has not.
	Default bool
	// Env is KEY=VALUE added to the environment of git reaching Remote
	// (e.g. GIT_SSH_COMMAND); nil adds nothing.
	Env []string
}

// Open opens the source's local repository as it is now.
func (s Source) Open() (*gitproto.Repo, error) { return gitproto.Open(s.Dir) }

// FetchRuns fetches the runs of each target (a full commit id) from the
// remote, and nothing else: one refspec per target,
// +refs/ci/runs/<target>/*:refs/ci/runs/<target>/*, over git's protocol
// version 2 (forced, whatever the user's configuration says), which sends
// the server a ref-prefix per refspec so that it advertises only those
// refs. What it costs does not depend on how many other runs the remote
// holds. Runs the remote no longer has are kept (no pruning): a reader
// keeps what it fetched. A target that is not a full object id is refused
// before git runs.
func (s Source) FetchRuns(ctx context.Context, targets ...string) error {
	if len(targets) == 0 {
		return errors.New("fetch runs: no commit named")
	}
	// -c, not GIT_CONFIG_COUNT: the source's own environment may hold a
	// GIT_CONFIG_COUNT list (an insteadOf) that this must not replace.
	args := []string{"-c", "protocol.version=2", "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-auto-gc", "--no-recurse-submodules", "--", s.Remote}
	for _, t := range targets {
		if !queue.IsObjectID(t) {
			return fmt.Errorf("fetch runs: %s is not a full commit id", queue.Printable(t))
		}
		args = append(args, "+"+queue.RunsPrefix+t+"/*:"+queue.RunsPrefix+t+"/*")
	}
	_, err := s.git().Run(ctx, "", args...)
	return err
}

// HasRemote reports whether the source's Remote is one of the
// repository's configured remotes (git remote get-url knows it).
func (s Source) HasRemote(ctx context.Context) bool {
	_, err := s.git().Run(ctx, "", "remote", "get-url", "--", s.Remote)
	return err == nil
}

// RemoteURL is where the source's Remote is, as git would reach it: the
// URL of the repository's remote of that name (git remote get-url), else
// Remote itself (a URL or a path); a relative path is read from Dir, as
// git reads it, and made absolute.
func (s Source) RemoteURL(ctx context.Context) string {
	u, err := s.git().Run(ctx, "", "remote", "get-url", "--", s.Remote)
	if err != nil || u == "" {
		u = s.Remote
	}
	if !strings.Contains(u, ":") && !filepath.IsAbs(u) {
		u = filepath.Join(s.Dir, u)
	}
	return u
}

// ClaimView is what the remote holds for a request name: whether the
// request and a claim are there, and the claim, when it could be read.
type ClaimView struct {
	HasRequest bool         // the request ref is there
	Request    string       // its value, when HasRequest
	Present    bool         // a claim ref is there
	Claim      *queue.Claim // the claim, when it could be fetched and is believed
	Bad        error        // why the claim there is not believed
}

// Claim lists the request and the claim of name on the remote, and
// fetches and reads the claim when there is one.
func (s Source) Claim(ctx context.Context, name string) (ClaimView, error) {
	claimRef, reqRef := queue.ClaimRef(name), queue.RequestRef(name)
	out, err := s.git().Run(ctx, "", "ls-remote", s.Remote, reqRef, claimRef)
	if err != nil {
		return ClaimView{}, err
	}
	var cv ClaimView
	claimVal := ""
	for _, line := range strings.Split(out, "\n") {
		h, ref, _ := strings.Cut(line, "\t")
		switch ref {
		case claimRef:
			claimVal, cv.Present = h, true
		case reqRef:
			cv.HasRequest, cv.Request = true, h
		}
	}
	if !cv.Present {
		return cv, nil
	}
	if _, err := s.git().Run(ctx, "", "fetch", "--quiet", "--no-write-fetch-head", s.Remote, "+"+claimRef+":"+claimRef); err == nil {
		if repo, err := s.Open(); err == nil {
			cv.Claim, cv.Bad = ReadClaim(repo, name, gitproto.NewHash(claimVal))
		}
	}
	return cv, nil
}

// ReadClaim reads the claim commit h found under the claim ref of the
// request name: its claim.json, checked against the name
// (queue.DecodeClaimOf). A claim about another request, or with a value
// no worker writes (a run id or previous run that is not a run id, a
// target that is not an object id), is an error: its values become ref
// names readers fetch and fields of the status a worker signs, so such a
// claim is treated as unreadable.
func ReadClaim(repo *gitproto.Repo, name string, h gitproto.Hash) (*queue.Claim, error) {
	b, err := repo.ReadFile(h, queue.ClaimFile)
	if err != nil {
		return nil, err
	}
	return queue.DecodeClaimOf(b, name)
}

// ErrNoRequest is returned by WaitForClaim when the remote has neither a
// request nor a claim of the name.
var ErrNoRequest = errors.New("no such request")

// ClaimNote is what WaitForClaim tells while it waits.
type ClaimNote int

const (
	// Queued: the request is there, unclaimed (told once).
	Queued ClaimNote = iota
	// PushedAgain: the claim there is of an earlier push of the request,
	// whose run ends cancelled; the new push runs next (told once).
	PushedAgain
	// BadClaim: the claim there is not believed (told once).
	BadClaim
)

// WaitForClaim finds the run a worker is running, or will run, for the
// request name: it looks at the request's claim once a second, waiting
// while the request is pending and unclaimed, or while the claim is of an
// earlier push of the request. note (may be nil) is told what it waits
// for, with the claim view it saw. A request seen pending that is gone at
// the next look ran in between: then the claim returned has no Run, and
// Claimed is when the request was seen. Errors: ErrNoRequest, a failure
// to list the remote, or ctx's.
func (s Source) WaitForClaim(ctx context.Context, name string, note func(ClaimNote, ClaimView)) (*queue.Claim, error) {
	if note == nil {
		note = func(ClaimNote, ClaimView) {}
	}
	told := map[ClaimNote]bool{}
	tell := func(n ClaimNote, cv ClaimView) {
		if !told[n] {
			told[n] = true
			note(n, cv)
		}
	}
	// The pending request seen last, and the commit it runs: when it is
	// gone at the next look, it ran meanwhile (its result was pushed
	// before it was deleted) and is followed by its result.
	var seen, seenTarget string
	var seenAt time.Time
	for {
		cv, err := s.Claim(ctx, name)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("cannot list the request %s on %s: %w", name, s.Remote, err)
		}
		if cv.HasRequest && cv.Request != seen {
			seen, seenTarget, seenAt = cv.Request, "", time.Now()
			if _, err := s.git().Run(ctx, "", "fetch", "--quiet", "--no-write-fetch-head", s.Remote, queue.RequestRef(name)); err == nil {
				seenTarget, _ = s.git().Run(ctx, "", "rev-parse", "--verify", "--quiet", seen+"^{commit}")
			}
		}
		switch {
		case cv.Present:
			switch c := cv.Claim; {
			case c != nil && cv.HasRequest && cv.Request != c.RequestObject:
				tell(PushedAgain, cv)
			case c != nil:
				return c, nil
			}
			if cv.Bad != nil {
				tell(BadClaim, cv)
			}
			// A claim replaced meanwhile, or just deleted: look again.
		case !cv.HasRequest && seenTarget != "":
			return &queue.Claim{Request: name, RequestObject: seen, Target: seenTarget, Claimed: seenAt}, nil
		case !cv.HasRequest:
			return nil, fmt.Errorf("%s has no request or claim named %s: %w", s.Remote, name, ErrNoRequest)
		default:
			tell(Queued, cv)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// git runs the git program in the local repository (for the user's
// remotes and credentials).
func (s Source) git() gitproto.CLI { return gitproto.CLI{Dir: s.Dir, Env: s.Env} }

// localWatch returns, for a remote on this machine (a path or a file://
// URL, as git remote get-url says), a function that reads its run refs of
// target straight from its files and returns them as one string, which
// changes whenever a run ref of target does; nil for a remote reached
// over the network (or one that cannot be read that way).
func (s Source) localWatch(ctx context.Context, target string) func() string {
	path := (&gitproto.Remote{URL: s.RemoteURL(ctx)}).LocalDir()
	if path == "" {
		return nil
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(s.Dir, path) // git reads it from the work tree
	}
	path = filepath.Clean(path)
	repo, err := gitproto.Open(path)
	if err != nil || repo.GitDir() != path && repo.GitDir() != filepath.Join(path, ".git") {
		return nil // not the repository itself (Open looks in parent directories)
	}
	prefix := queue.RunsPrefix + target + "/"
	if target == "" {
		prefix = queue.RunsPrefix // every run
	}
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
