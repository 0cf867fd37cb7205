package results

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// Load fetches the runs of a commit that has none here, reads the run's
// status, and tells a run not found from one found but not believed.
func TestLoad(t *testing.T) {
	w, _ := identities(t)
	dir, target := repoWithCommit(t)
	bare := filepath.Join(t.TempDir(), "remote.git")
	fixtures.Git(t, dir, "init", "-q", "--bare", bare)
	id := runID(time.Minute)
	h := publish(t, dir, status(target, id, 1, queue.Success, w), gitproto.ZeroHash, w, "log\n")
	fixtures.Git(t, dir, "push", "-q", bare, "HEAD:refs/heads/main", queue.RunsPrefix+"*:"+queue.RunsPrefix+"*")
	fixtures.Git(t, dir, "update-ref", "-d", queue.RunRef(target, id))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var warned []string
	warn := func(f string, a ...any) { warned = append(warned, fmt.Sprintf(f, a...)) }
	repo, r, st, err := Source{Dir: dir, Remote: bare}.Load(ctx, target[:12], warn)
	if err != nil || r.ID != id || r.Commit != h || st == nil || st.Run != id || st.State != queue.Success {
		t.Fatalf("Load: %+v %+v %v", r, st, err)
	}
	if len(warned) != 1 || !strings.HasPrefix(warned[0], "fetched the runs of "+target[:12]) {
		t.Errorf("warnings: %q", warned)
	}
	if got, err := repo.RefHash(r.Ref); err != nil || got != h {
		t.Errorf("the repository returned does not hold the fetched run: %v %v", got, err)
	}

	// The result of run id, copied under another run's ref.
	copied := runID(0)
	if err := repo.UpdateRef(queue.RunRef(target, copied), h, gitproto.ZeroHash); err != nil {
		t.Fatal(err)
	}
	_, r, st, err = Source{Dir: dir}.Load(ctx, copied, warn)
	if !NotBelieved(err) || !errors.Is(err, ErrUnreadable) || st != nil || r.ID != copied ||
		!strings.HasPrefix(err.Error(), "run "+queue.RunRef(target, copied)+" is not believed: inconsistent: ") {
		t.Errorf("a run not believed: %+v, %v", r, err)
	}
	// A run dated in the future, named by its id: loaded, with a warning.
	future := queue.NewRunID(time.Now().Add(48 * time.Hour))
	publish(t, dir, status(target, future, 1, queue.Success, w), gitproto.ZeroHash, w, "")
	warned = nil
	if _, r, st, err := (Source{Dir: dir}).Load(ctx, future, warn); err != nil || !r.Future || st == nil ||
		len(warned) != 1 || !strings.Contains(warned[0], "run "+future+" is dated in the future") {
		t.Errorf("a future run: %+v, %v, warned %q", r, err, warned)
	}
	_, _, _, err = Source{Dir: dir}.Load(ctx, queue.NewRunID(time.Now().Add(-time.Hour)), warn)
	if !errors.Is(err, ErrNoRuns) || errors.Is(err, ErrUnreadable) {
		t.Errorf("a run not here: %v", err)
	}
}
