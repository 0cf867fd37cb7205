package results

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// Refresh fetches the runs of the commits named, only those, and counts
// per commit the runs here and the ones the fetch brought or moved.
func TestRefreshCountsWhatCame(t *testing.T) {
	w, _ := identities(t)
	dir, target := repoWithCommit(t)
	fixtures.WriteFile(t, dir, "b", "b\n", 0o644)
	other := fixtures.CommitAll(t, dir, "another")
	bare := filepath.Join(t.TempDir(), "remote.git")
	fixtures.Git(t, dir, "init", "-q", "--bare", bare)

	kept, moved, fresh, elsewhere := runID(3*time.Minute), runID(2*time.Minute), runID(time.Minute), runID(0)
	publish(t, dir, status(target, kept, 1, queue.Success, w), gitproto.ZeroHash, w, "")
	first := publish(t, dir, status(target, moved, 1, queue.Running, w), gitproto.ZeroHash, w, "")
	publish(t, dir, status(target, moved, 1, queue.Success, w), first, w, "")
	publish(t, dir, status(target, fresh, 1, queue.Success, w), gitproto.ZeroHash, w, "")
	publish(t, dir, status(other, elsewhere, 1, queue.Success, w), gitproto.ZeroHash, w, "")
	fixtures.Git(t, dir, "push", "-q", bare, "HEAD:refs/heads/main", queue.RunsPrefix+"*:"+queue.RunsPrefix+"*")
	// Here: run kept as it is there, run moved at its first snapshot,
	// run fresh and the run of the other commit not at all.
	fixtures.Git(t, dir, "update-ref", queue.RunRef(target, moved), first.String())
	fixtures.Git(t, dir, "update-ref", "-d", queue.RunRef(target, fresh))
	fixtures.Git(t, dir, "update-ref", "-d", queue.RunRef(other, elsewhere))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	repo, got, err := Source{Dir: dir, Remote: bare}.Refresh(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != (Refreshed{Target: target, Runs: 3, NewOrChanged: 2}) {
		t.Errorf("Refresh: %+v, want 3 runs, 2 new or changed", got)
	}
	if _, err := repo.RefHash(queue.RunRef(target, fresh)); err != nil {
		t.Errorf("the repository returned does not see the run fetched: %v", err)
	}
	if _, err := repo.RefHash(queue.RunRef(other, elsewhere)); err == nil {
		t.Error("the runs of a commit not named were fetched")
	}
	// Again: nothing new; then the other commit too, in the order named.
	if _, got, err = (Source{Dir: dir, Remote: bare}).Refresh(ctx, other, target); err != nil || len(got) != 2 ||
		got[0] != (Refreshed{Target: other, Runs: 1, NewOrChanged: 1}) || got[1] != (Refreshed{Target: target, Runs: 3}) {
		t.Errorf("the second Refresh: %+v, %v", got, err)
	}
	_, _, err = Source{Dir: dir, Remote: filepath.Join(t.TempDir(), "none.git")}.Refresh(ctx, target)
	if err == nil || !strings.HasPrefix(err.Error(), "fetch from ") {
		t.Errorf("a remote that is not there: %v", err)
	}
}

// Targets takes a full object id as it is, even of a commit not here,
// resolves a revision, gives each commit once, and returns a revision's
// error as gitproto says it.
func TestTargets(t *testing.T) {
	dir, head := repoWithCommit(t)
	repo := open(t, dir)
	absent := strings.Repeat("ab", 20)
	got, err := Targets(repo, "HEAD", strings.ToUpper(absent), head, absent)
	if err != nil || strings.Join(got, " ") != head+" "+absent {
		t.Errorf("Targets = %v, %v; want [%s %s]", got, err, head, absent)
	}
	if _, err := Targets(repo, "HEAD", "no-such-branch"); !errors.Is(err, gitproto.ErrUnknownRev) {
		t.Errorf("an unknown revision: %v; want ErrUnknownRev", err)
	}
}
