package results

import (
	"context"
	"errors"
	"fmt"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// ErrUnreadable is matched by the errors of Load for a run that was
// found but whose status could not be read or believed; a failure to
// find the run does not match it.
var ErrUnreadable = errors.New("run unreadable")

// Load finds the run a user named, as FindFetching does (fetching the
// runs of its commit from the remote when none is here; warn, never nil,
// is told what it passed over or fetched), and reads its status. It
// returns the repository opened after any fetch, the run and its
// status. A run dated in the future is returned like any other, its
// Future set, once warn is told that it is never taken for the latest.
//
// Errors: FindFetching's (ErrNoRuns, gitproto's ErrUnknownRev...), and
// ones that match ErrUnreadable: a status not believed (NotBelieved;
// the message says which run and why, in a word first, see Problem), of
// a newer format (queue.ErrFormat), or that cannot be read. With those,
// the run found is returned too.
func (s Source) Load(ctx context.Context, arg string, warn func(format string, args ...any)) (*gitproto.Repo, Run, *queue.Status, error) {
	repo, r, err := s.FindFetching(ctx, arg, warn)
	if err != nil {
		return nil, Run{}, nil, err
	}
	st, err := r.Read(repo)
	switch {
	case NotBelieved(err):
		return repo, r, nil, wrap(fmt.Sprintf("run %s is not believed: %s", r.Ref, Problem(err)), ErrUnreadable, err)
	case err != nil:
		return repo, r, nil, wrap(err.Error(), ErrUnreadable, err)
	}
	if r.Future {
		warn("run %s is dated in the future (its worker's clock is wrong, or its id was forged): it is never taken for the latest", r.ID)
	}
	return repo, r, st, nil
}
