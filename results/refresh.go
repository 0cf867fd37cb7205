package results

import (
	"context"
	"fmt"
	"strings"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// Refreshed is what Refresh did for one commit: the runs the repository
// holds of it now, and how many of those are new or changed (their ref
// moved) by the fetch. A plain value.
type Refreshed struct {
	Target       string // the commit, a full id
	Runs         int
	NewOrChanged int
}

// Refresh fetches the runs of each target (a full commit id) from the
// remote, and only those (FetchRuns), and says for each, in order, what
// came. It returns the repository opened after the fetch (a Repo opened
// before may not see the objects that came). A failure to fetch says
// "fetch from <remote>: ..."; it, and a failure to read the repository,
// are returned as they are (gitproto's ErrNotRepo...).
func (s Source) Refresh(ctx context.Context, targets ...string) (*gitproto.Repo, []Refreshed, error) {
	repo, err := s.Open()
	if err != nil {
		return nil, nil, err
	}
	before := map[string]gitproto.Hash{}
	for _, t := range targets {
		runs, err := List(repo, t)
		if err != nil {
			return nil, nil, err
		}
		for _, r := range runs {
			before[r.Ref] = r.Commit
		}
	}
	if err := s.FetchRuns(ctx, targets...); err != nil {
		return nil, nil, fmt.Errorf("fetch from %s: %w", s.Remote, err)
	}
	if repo, err = s.Open(); err != nil {
		return nil, nil, err
	}
	out := make([]Refreshed, 0, len(targets))
	for _, t := range targets {
		runs, err := List(repo, t)
		if err != nil {
			return nil, nil, err
		}
		r := Refreshed{Target: t, Runs: len(runs)}
		for _, run := range runs {
			if before[run.Ref] != run.Commit {
				r.NewOrChanged++
			}
		}
		out = append(out, r)
	}
	return repo, out, nil
}

// Targets resolves what a user names to the commits whose runs Refresh
// fetches: a full object id as it is (a commit this repository need not
// have), else a revision of repo, whose error is returned as it is
// (gitproto's ErrUnknownRev, ErrNotCommit...). Each commit comes once, in
// the order first named.
func Targets(repo *gitproto.Repo, revs ...string) ([]string, error) {
	var targets []string
	seen := map[string]bool{}
	for _, rev := range revs {
		t := strings.ToLower(rev)
		if !queue.IsObjectID(t) {
			h, err := repo.ResolveCommit(rev)
			if err != nil {
				return nil, err
			}
			t = h.String()
		}
		if !seen[t] {
			seen[t] = true
			targets = append(targets, t)
		}
	}
	return targets, nil
}
