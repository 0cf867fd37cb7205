package results

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// Finding what a user names on a remote, before following it.

// ErrNoRemote is matched by the error of CheckRemote: the source's
// Remote is a name the repository has no remote of.
var ErrNoRemote = errors.New("no such remote")

// CheckRemote checks, before anything is pushed to or fetched from the
// source's Remote, that git can take it: a URL, a path, or the name of
// one of the repository's remotes. A name it has no remote of (nor a
// directory of that name beside it) is an error that matches ErrNoRemote
// and says which remotes there are and how to add one. When the remotes
// cannot be listed it returns nil: git says what is wrong when it runs.
func (s Source) CheckRemote(ctx context.Context) error {
	if strings.ContainsAny(s.Remote, ":/\\") || s.Remote == "." {
		return nil // a URL or a path: git says what is wrong with it
	}
	out, err := s.git().Run(ctx, "", "remote")
	if err != nil {
		return nil // git says it when it reaches the remote
	}
	names := strings.Fields(out)
	for _, n := range names {
		if n == s.Remote {
			return nil
		}
	}
	if _, err := os.Stat(filepath.Join(s.Dir, s.Remote)); err == nil {
		return nil // a repository beside: git takes a path too
	}
	have := "it has none"
	if len(names) > 0 {
		have = "it has " + strings.Join(names, ", ")
	}
	return wrap(fmt.Sprintf("this repository has no remote named %q (%s); pass --remote NAME or a URL, or add one with: git remote add %s URL",
		s.Remote, have, s.Remote), ErrNoRemote)
}

// ErrUnknownName is matched by the errors of Locate for a name that is
// no run, revision or request: the error says which and why.
var ErrUnknownName = errors.New("names no run, revision or request")

// Locate says which run on the source's remote what a user named (arg)
// is, for Follow: the commit whose run it is, and which run of it.
//
//   - A run: its ref, <commit>/<run-id>, or its id alone when the
//     repository has the run. The run, or the attempt that took its
//     request over when its worker died (ThisRun).
//   - A revision of the repository ("" is HEAD): the newest run of that
//     commit that started at most an hour ago (LatestRun).
//   - Else the name of a request on the remote: the run a worker is
//     running, or will run, for it (ClaimedRun); Locate waits while the
//     request is queued, telling note (may be nil), see WaitForClaim.
//
// Errors: ErrUnknownName (wrapping the cause, when there is one: a run
// id not found here wraps ErrNoRuns, a revision that does not resolve
// gitproto's ErrUnknownRev), ErrNoRequest, a failure to read the
// repository or the remote, or ctx's.
func (s Source) Locate(ctx context.Context, arg string, note func(ClaimNote, ClaimView)) (target string, want Want, err error) {
	repo, err := s.Open()
	if err != nil {
		return "", Want{}, err
	}
	switch {
	case strings.HasPrefix(arg, queue.RunsPrefix):
		t, id, ok := queue.ParseRunRef(arg)
		if !ok {
			return "", Want{}, wrap(queue.Printable(arg)+" is not a run ref", ErrUnknownName)
		}
		return t, ThisRun(id, ""), nil
	case strings.Contains(arg, "/") && queue.ValidRunID(arg[strings.IndexByte(arg, '/')+1:]):
		t, id, _ := strings.Cut(arg, "/") // <commit>/<run-id>; a branch or request name with a slash is not one
		return t, ThisRun(id, ""), nil
	case queue.ValidRunID(arg):
		r, err := Find(repo, arg, func(string, ...any) {})
		if err != nil {
			return "", Want{}, wrap(fmt.Sprintf("run %s is not known here yet; name it as <commit>/<run-id> or refs/ci/runs/<commit>/<run-id>", arg), ErrUnknownName, err)
		}
		return r.Target, ThisRun(r.ID, ""), nil
	}
	rev := arg
	if rev == "" {
		rev = "HEAD"
	}
	h, err := repo.ResolveCommit(rev)
	if err == nil {
		return h.String(), LatestRun(time.Now()), nil
	}
	if queue.ValidateRequestName(arg) != nil {
		if errors.Is(err, gitproto.ErrUnknownRev) || errors.Is(err, gitproto.ErrNotCommit) || errors.Is(err, gitproto.ErrNoCommits) {
			err = wrap(err.Error(), ErrUnknownName, err)
		}
		return "", Want{}, err
	}
	// Not a revision here: a request name on the remote.
	c, err := s.WaitForClaim(ctx, arg, note)
	if err != nil {
		return "", Want{}, err
	}
	return c.Target, ClaimedRun(c), nil
}
