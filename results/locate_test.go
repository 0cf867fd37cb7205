package results

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// CheckRemote takes URLs, paths and the repository's remotes, and says of
// any other name which remotes there are.
func TestCheckRemote(t *testing.T) {
	dir, _ := repoWithCommit(t)
	ctx := context.Background()
	err := Source{Dir: dir, Remote: "origin"}.CheckRemote(ctx)
	if !errors.Is(err, ErrNoRemote) || !strings.Contains(err.Error(), `no remote named "origin" (it has none)`) {
		t.Errorf("no remotes: %v", err)
	}
	bare := filepath.Join(t.TempDir(), "remote.git")
	fixtures.Git(t, dir, "init", "-q", "--bare", bare)
	fixtures.Git(t, dir, "remote", "add", "upstream", bare)
	fixtures.Git(t, dir, "remote", "add", "mirror", bare)
	if err := os.Mkdir(filepath.Join(dir, "beside"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, ok := range []string{"upstream", "mirror", bare, "../remote.git", "ssh://git@example.invalid/app.git", "example.invalid:app.git", ".", "beside"} {
		if err := (Source{Dir: dir, Remote: ok}).CheckRemote(ctx); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	err = Source{Dir: dir, Remote: "origin"}.CheckRemote(ctx)
	want := `this repository has no remote named "origin" (it has mirror, upstream); pass --remote NAME or a URL, or add one with: git remote add origin URL`
	if !errors.Is(err, ErrNoRemote) || err.Error() != want {
		t.Errorf("a missing remote: %v\nwant %s", err, want)
	}
}

// Locate takes a run (its ref, <commit>/<run-id>, its id when it is
// here), a revision (its newest recent run), or a request on the remote
// (its claimed run), and says which names are none of these.
func TestLocate(t *testing.T) {
	w, _ := identities(t)
	dir, target := repoWithCommit(t)
	bare := filepath.Join(t.TempDir(), "remote.git")
	fixtures.Git(t, dir, "init", "-q", "--bare", bare)
	fixtures.Git(t, dir, "remote", "add", "origin", bare)
	src := Source{Dir: dir, Remote: "origin"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	id := runID(time.Minute)
	st := status(target, id, 1, queue.Success, w)
	publish(t, dir, st, gitproto.ZeroHash, w, "log\n")
	other := status(target, runID(2*time.Minute), 1, queue.Success, w)
	taker := status(target, runID(0), 2, queue.Success, w)
	taker.Extra = map[string]any{queue.ExtraPreviousRun: id}
	old := status(target, runID(2*time.Hour), 1, queue.Success, w)
	old.Started = time.Now().Add(-2 * time.Hour)

	for _, arg := range []string{queue.RunRef(target, id), target + "/" + id, id} {
		gotTarget, want, err := src.Locate(ctx, arg, nil)
		if err != nil || gotTarget != target {
			t.Errorf("%s: %s, %v", arg, gotTarget, err)
			continue
		}
		if !want.Match(st) || !want.Match(taker) || want.Match(other) {
			t.Errorf("%s: the run, or the attempt that took it over, is not the one selected", arg)
		}
	}
	for _, arg := range []string{"", "HEAD", "main", target[:12]} {
		gotTarget, want, err := src.Locate(ctx, arg, nil)
		if err != nil || gotTarget != target || !want.Match(st) || want.Match(old) {
			t.Errorf("revision %q: %s, %v (or not its newest recent run)", arg, gotTarget, err)
		}
	}

	unknown := queue.NewRunID(time.Now().Add(-time.Hour))
	for arg, cause := range map[string]error{
		unknown:                      ErrNoRuns,
		queue.RunsPrefix + "x":       nil,
		"HEAD~5":                     gitproto.ErrUnknownRev,
		"no such branch":             gitproto.ErrUnknownRev,
		queue.RunsPrefix + "\x1b[2J": nil,
	} {
		_, _, err := src.Locate(ctx, arg, nil)
		if !errors.Is(err, ErrUnknownName) || cause != nil && !errors.Is(err, cause) {
			t.Errorf("%q: %v, want ErrUnknownName (and %v)", arg, err, cause)
		}
		if err != nil && strings.ContainsRune(err.Error(), '\x1b') {
			t.Errorf("%q: the error repeats a control character: %q", arg, err)
		}
	}

	// Not a revision here: a request on the remote.
	if _, _, err := src.Locate(ctx, "topic", nil); !errors.Is(err, ErrNoRequest) || errors.Is(err, ErrUnknownName) {
		t.Errorf("no such request: %v", err)
	}
	claimed := runID(0)
	c := &queue.Claim{Format: queue.Format, Request: "topic", RequestObject: target, Target: target, Run: claimed, Attempt: 1,
		Worker: w.Fingerprint(), Claimed: time.Now(), Renewed: time.Now(), LeaseExpires: time.Now().Add(time.Minute)}
	h := claimCommit(t, dir, c)
	fixtures.Git(t, dir, "push", "-q", bare, "HEAD:"+queue.RequestRef("topic"), h.String()+":"+queue.ClaimRef("topic"))
	gotTarget, want, err := src.Locate(ctx, "topic", nil)
	if err != nil || gotTarget != target {
		t.Fatalf("a claimed request: %s, %v", gotTarget, err)
	}
	if !want.Match(status(target, claimed, 1, queue.Running, w)) || want.Match(st) {
		t.Error("the claimed run is not the one selected")
	}
}
