package results

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
)

func TestMain(m *testing.M) { os.Exit(fixtures.PrivateHome(m)) }

func identities(t *testing.T) (worker, other *secrets.Identity) {
	return fixtures.OpenPGPIdentity(t, "Test Worker"), fixtures.OpenPGPIdentity(t, "Other Worker")
}

// repoWithCommit makes a repository with one commit and returns it and
// the commit's id.
func repoWithCommit(t *testing.T) (string, string) {
	dir := fixtures.NewRepo(t)
	return dir, fixtures.CommitAll(t, dir, "the change")
}

// status is a believable status of run id of target.
func status(target, id string, attempt int, state queue.State, worker *secrets.Identity) *queue.Status {
	return &queue.Status{Format: queue.Format, State: state, Target: target, Request: "topic", Run: id,
		Attempt: attempt, Worker: worker.Fingerprint(), Started: time.Now().UTC().Truncate(time.Second), Jobs: []queue.Job{}, Artifacts: []queue.Artifact{}}
}

// publish writes st as a result commit on parent (ZeroHash for the
// first), signed by signer, with log as its log, and sets its run ref.
func publish(t *testing.T, dir string, st *queue.Status, parent gitproto.Hash, signer *secrets.Identity, log string) gitproto.Hash {
	t.Helper()
	return resultcommit.Write(t, open(t, dir), st, parent, signer, map[string]string{queue.LogFile: log})
}

func open(t *testing.T, dir string) *gitproto.Repo {
	t.Helper()
	repo, err := gitproto.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return repo
}

func runID(ago time.Duration) string { return queue.NewRunID(time.Now().Add(-ago)) }

func TestListFindAndTheLostWorkerRule(t *testing.T) {
	w, _ := identities(t)
	dir, target := repoWithCommit(t)
	old, lost, taker, future := runID(3*time.Hour), runID(2*time.Hour), runID(time.Hour), queue.NewRunID(time.Now().Add(48*time.Hour))
	publish(t, dir, status(target, old, 1, queue.Success, w), gitproto.ZeroHash, w, "old\n")
	publish(t, dir, status(target, lost, 1, queue.Running, w), gitproto.ZeroHash, w, "lost\n")
	st := status(target, taker, 2, queue.Failure, w)
	st.Extra = map[string]any{queue.ExtraPreviousRun: lost}
	publish(t, dir, st, gitproto.ZeroHash, w, "taker\n")
	publish(t, dir, status(target, future, 1, queue.Success, w), gitproto.ZeroHash, w, "")
	repo := open(t, dir)

	runs, err := List(repo, target)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range runs {
		ids = append(ids, r.ID)
		if r.Target != target || r.Ref != queue.RunRef(target, r.ID) || r.Future != (r.ID == future) {
			t.Errorf("run %+v", r)
		}
	}
	if want := []string{taker, lost, old, future}; strings.Join(ids, " ") != strings.Join(want, " ") {
		t.Fatalf("List: %v, want newest first and the future last: %v", ids, want)
	}
	if all, _ := List(repo, ""); len(all) != 4 {
		t.Fatalf("List of every target: %d runs", len(all))
	}

	l := ReadAll(repo, runs)
	if l[1].TakenOverBy == nil || l[1].TakenOverBy.Run != taker || l[1].Shown().State != queue.Error {
		t.Errorf("the lost run is not shown taken over: %+v", l[1])
	}
	if l[0].TakenOverBy != nil || l[2].TakenOverBy != nil || l[0].Shown() != l[0].Status {
		t.Errorf("runs not lost are shown lost")
	}
	lostSt, _ := runs[1].Read(repo)
	if by, bySt, ok := TakenOverBy(repo, lostSt); !ok || by.ID != taker || bySt.Attempt != 2 {
		t.Errorf("TakenOverBy: %v %v %v", by, bySt, ok)
	}
	if sh := Shown(repo, lostSt); sh.State != queue.Error || !strings.Contains(sh.Reason, taker) {
		t.Errorf("Shown of the lost run: %s (%s); want error, taken over by %s", sh.State, sh.Reason, taker)
	}
	if oldSt, _ := runs[2].Read(repo); Shown(repo, oldSt) != oldSt {
		t.Errorf("Shown of a run not lost is not its status")
	}

	var warned []string
	warn := func(f string, a ...any) { warned = append(warned, fmt.Sprintf(f, a...)) }
	for _, arg := range []string{"", "main", target, taker, target + "/" + taker, queue.RunRef(target, taker)} {
		warned = nil
		r, err := Find(repo, arg, warn)
		if err != nil || r.ID != taker {
			t.Errorf("Find(%q) = %v, %v; want run %s", arg, r.ID, err, taker)
		}
		if arg != taker && !strings.Contains(arg, "/") && (len(warned) != 1 || !strings.Contains(warned[0], "dated in the future")) {
			t.Errorf("Find(%q) warned %q; want the future run passed over", arg, warned)
		}
	}
	if r, err := Find(repo, future, warn); err != nil || !r.Future {
		t.Errorf("a future run named by its id: %+v %v", r, err)
	}
	if _, err := Find(repo, queue.NewRunID(time.Now()), warn); !errors.Is(err, ErrNoRuns) {
		t.Errorf("an unknown run id: %v, want ErrNoRuns", err)
	}
	if _, err := Find(repo, "refs/ci/runs/x", warn); err == nil {
		t.Error("a malformed run ref was found")
	}
}

// A result that does not agree with its ref is passed over by Find with a
// warning that says why, and refused by Read as not believed.
func TestFindPassesOverResultsNotBelieved(t *testing.T) {
	w, _ := identities(t)
	dir, target := repoWithCommit(t)
	good, copied := runID(2*time.Hour), runID(time.Hour)
	publish(t, dir, status(target, good, 1, queue.Success, w), gitproto.ZeroHash, w, "")
	h := publish(t, dir, status(target, good, 1, queue.Failure, w), gitproto.ZeroHash, w, "")
	repo := open(t, dir)
	// The result of run good, copied under another run's ref.
	if err := repo.UpdateRef(queue.RunRef(target, copied), h, gitproto.ZeroHash); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(repo, queue.RunRef(target, copied), h); !NotBelieved(err) || !strings.HasPrefix(Problem(err), "inconsistent: ") {
		t.Fatalf("a copied result: %v (%s)", err, Problem(err))
	}
	var warned []string
	r, err := Find(repo, "", func(f string, a ...any) { warned = append(warned, fmt.Sprintf(f, a...)) })
	if err != nil || r.ID != good {
		t.Fatalf("Find: %v %v, want run %s", r.ID, err, good)
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "passed over run "+copied+": inconsistent") {
		t.Errorf("warnings: %q", warned)
	}
	if err := repo.UpdateRef(queue.RunRef(target, good), h, gitproto.ZeroHash); err == nil {
		t.Fatal("expected a compare-and-swap failure")
	}
	old, _ := repo.RefHash(queue.RunRef(target, good))
	if err := repo.UpdateRef(queue.RunRef(target, good), gitproto.ZeroHash, old); err != nil {
		t.Skip("cannot delete a ref here")
	}
	if _, err := Find(repo, "", func(string, ...any) {}); !errors.Is(err, ErrNoRuns) {
		t.Errorf("only a run not believed: %v, want ErrNoRuns", err)
	}
}

func TestVerify(t *testing.T) {
	w, other := identities(t)
	var kr secrets.Keyring
	kr.Add(w)
	dir, target := repoWithCommit(t)
	check := func(id string, wantN int, wantErr string) {
		t.Helper()
		repo := open(t, dir)
		r, err := Find(repo, queue.RunRef(target, id), nil)
		if err != nil {
			t.Fatal(err)
		}
		var told []gitproto.Hash
		st, n, err := Verify(repo, r, kr, func(s Signed) { told = append(told, s.Commit) })
		switch {
		case wantErr == "" && err != nil:
			t.Errorf("run %s: %v", id, err)
		case wantErr != "" && (!errors.Is(err, ErrNotVerified) || !strings.Contains(err.Error(), wantErr)):
			t.Errorf("run %s: %v, want ErrNotVerified saying %q", id, err, wantErr)
		case wantErr == "" && (n != wantN || st == nil || len(told) != wantN || told[0] != r.Commit):
			t.Errorf("run %s: %d commits, %d told, status %v", id, n, len(told), st)
		}
	}
	good := runID(4 * time.Hour)
	h := publish(t, dir, status(target, good, 1, queue.Running, w), gitproto.ZeroHash, w, "a")
	publish(t, dir, status(target, good, 1, queue.Success, w), h, w, "ab")
	check(good, 2, "")

	foreign := runID(3 * time.Hour)
	publish(t, dir, status(target, foreign, 1, queue.Success, other), gitproto.ZeroHash, other, "")
	check(foreign, 0, "commit ")

	// A trusted key signed what another worker's status names.
	stolen := runID(2 * time.Hour)
	publish(t, dir, status(target, stolen, 1, queue.Success, other), gitproto.ZeroHash, w, "")
	check(stolen, 0, "status.json names worker "+other.Fingerprint())

	// An older snapshot of another attempt spliced under a run's newest.
	spliced := runID(time.Hour)
	h = publish(t, dir, status(target, spliced, 2, queue.Running, w), gitproto.ZeroHash, w, "")
	publish(t, dir, status(target, spliced, 1, queue.Success, w), h, w, "")
	check(spliced, 0, "spliced")
}

// A watch of a run on a remote tells its start, each snapshot's new log,
// and its end; and a takeover after its worker was lost.
func TestFollowTellsEachChange(t *testing.T) {
	w, _ := identities(t)
	dir, target := repoWithCommit(t)
	bare := filepath.Join(t.TempDir(), "remote.git")
	fixtures.Git(t, dir, "init", "-q", "--bare", bare)
	fixtures.Git(t, dir, "remote", "add", "origin", bare)
	clone := t.TempDir()
	fixtures.Git(t, clone, "init", "-q")
	fixtures.Git(t, clone, "remote", "add", "origin", bare)
	push := func() { fixtures.Git(t, dir, "push", "-q", "-f", "origin", "refs/ci/*:refs/ci/*") }

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lost := runID(time.Minute)
	h := publish(t, dir, status(target, lost, 1, queue.Running, w), gitproto.ZeroHash, w, "one\n")
	push()
	watch := Source{Dir: clone, Remote: "origin"}.Follow(ctx, target, Want{Match: func(st *queue.Status) bool { return st.Run == lost }})
	next := func(want EventKind) Event {
		t.Helper()
		for {
			ev, err := watch.Next(ctx)
			if err != nil {
				t.Fatalf("waiting for event %d: %v", want, err)
			}
			if ev.Kind == FetchFailed {
				t.Fatalf("fetch failed: %v", ev.Err)
			}
			if ev.Kind == Progress && want != Progress && len(ev.Log) == 0 {
				continue // an unchanged snapshot
			}
			if ev.Kind != want {
				t.Fatalf("event %d (%+v), want %d", ev.Kind, ev, want)
			}
			return ev
		}
	}
	if ev := next(Started); ev.Status.Run != lost || ev.Ref != queue.RunRef(target, lost) {
		t.Fatalf("started: %+v", ev)
	}
	if ev := next(Progress); string(ev.Log) != "one\n" {
		t.Fatalf("first log %q", ev.Log)
	}
	h = publish(t, dir, status(target, lost, 1, queue.Running, w), h, w, "one\ntwo\n")
	push()
	if ev := next(Progress); string(ev.Log) != "two\n" {
		t.Fatalf("second log %q, want only what is new", ev.Log)
	}
	// The worker dies; attempt 2 takes over and ends.
	taker := runID(0)
	st := status(target, taker, 2, queue.Success, w)
	st.Extra = map[string]any{queue.ExtraPreviousRun: lost}
	publish(t, dir, st, gitproto.ZeroHash, w, "again\n")
	push()
	watch.lastLook = time.Time{} // look for the takeover now, not in claimEvery
	if ev := next(TakenOver); ev.From != lost || ev.To != taker || ev.ToAttempt != 2 {
		t.Fatalf("takeover: %+v", ev)
	}
	if ev := next(Progress); string(ev.Log) != "again\n" {
		t.Fatalf("the taker's log %q", ev.Log)
	}
	if ev := next(Final); ev.Status.State != queue.Success || ev.Status.Run != taker {
		t.Fatalf("final: %+v", ev.Status)
	}
}

// claimCommit writes a claim commit of c (unsigned: readers of claims
// check their shape, the worker and serve their signer) and returns it.
func claimCommit(t *testing.T, dir string, c *queue.Claim) gitproto.Hash {
	t.Helper()
	b, err := queue.EncodeClaim(c)
	if err != nil {
		t.Fatal(err)
	}
	return resultcommit.Commit(t, open(t, dir), map[string]string{queue.ClaimFile: string(b)}, queue.ClaimMessage(c), nil)
}

// WaitForClaim waits while a request is queued, returns its claim once a
// worker has one, and says when there is no such request; a watch of one
// push of a request ends when the request is pushed over before it ran.
func TestWaitForClaimAndARequestGone(t *testing.T) {
	w, _ := identities(t)
	dir, target := repoWithCommit(t)
	bare := filepath.Join(t.TempDir(), "remote.git")
	fixtures.Git(t, dir, "init", "-q", "--bare", bare)
	src := Source{Dir: dir, Remote: bare}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if _, err := src.WaitForClaim(ctx, "topic", nil); !errors.Is(err, ErrNoRequest) {
		t.Fatalf("no request: %v, want ErrNoRequest", err)
	}
	fixtures.Git(t, dir, "push", "-q", bare, "HEAD:"+queue.RequestRef("topic"))
	queued := make(chan ClaimView, 1)
	got := make(chan *queue.Claim, 1)
	go func() {
		c, err := src.WaitForClaim(ctx, "topic", func(n ClaimNote, cv ClaimView) {
			if n == Queued {
				queued <- cv
			}
		})
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	cv := <-queued
	if !cv.HasRequest || cv.Request != target || cv.Present {
		t.Fatalf("queued: %+v", cv)
	}
	run := runID(0)
	c := &queue.Claim{Format: queue.Format, Request: "topic", RequestObject: target, Target: target, Run: run, Attempt: 1,
		Worker: w.Fingerprint(), Claimed: time.Now(), Renewed: time.Now(), LeaseExpires: time.Now().Add(time.Minute)}
	h := claimCommit(t, dir, c)
	fixtures.Git(t, dir, "push", "-q", bare, h.String()+":"+queue.ClaimRef("topic"))
	if c := <-got; c == nil || c.Run != run {
		t.Fatalf("claim: %+v", c)
	}

	// The request is pushed over by another object before any worker
	// ran the push followed: the watch says so instead of waiting.
	fixtures.Git(t, dir, "push", "-q", bare, ":"+queue.ClaimRef("topic"))
	watch := src.Follow(ctx, target, Want{Request: "topic", Object: strings.Repeat("ab", 20)})
	for {
		ev, err := watch.Next(ctx)
		if err == nil && ev.Kind != FetchFailed {
			continue
		}
		if !errors.Is(err, ErrGone) || !strings.Contains(fmt.Sprint(err), "was pushed again (it now holds "+target[:12]+")") {
			t.Fatalf("a request pushed over: %v, %+v; want ErrGone saying so", err, ev)
		}
		break
	}
}

// A watch of every run on a remote returns each run once per change: all
// at first, then a new snapshot, a new run, and a run found lost when
// another attempt took its request over.
func TestWatchRunsReturnsEachChangeOnce(t *testing.T) {
	w, _ := identities(t)
	dir, target := repoWithCommit(t)
	bare := fixtures.BareRepo(t, "remote.git")
	push := func() { fixtures.Git(t, dir, "push", "-q", "-f", bare, "refs/ci/*:refs/ci/*") }
	clone := fixtures.NewRepo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	changes := Source{Dir: clone, Remote: bare}.WatchRuns(time.Millisecond)
	next := func(want ...string) []Listed {
		t.Helper()
		got, err := changes.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, l := range got {
			ids = append(ids, l.ID)
		}
		if strings.Join(ids, " ") != strings.Join(want, " ") {
			t.Fatalf("changed runs %v, want %v", ids, want)
		}
		return got
	}
	a, b := runID(2*time.Hour), runID(time.Hour)
	publish(t, dir, status(target, a, 1, queue.Success, w), gitproto.ZeroHash, w, "")
	hb := publish(t, dir, status(target, b, 1, queue.Running, w), gitproto.ZeroHash, w, "")
	push()
	next(b, a)
	next()
	publish(t, dir, status(target, b, 1, queue.Running, w), hb, w, "more")
	push()
	if got := next(b); got[0].Status.State != queue.Running || got[0].TakenOverBy != nil {
		t.Fatalf("a new snapshot: %+v", got[0])
	}
	c := runID(0)
	st := status(target, c, 2, queue.Success, w)
	st.Extra = map[string]any{queue.ExtraPreviousRun: b}
	publish(t, dir, st, gitproto.ZeroHash, w, "")
	push()
	got := next(c, b)
	if got[1].TakenOverBy == nil || got[1].Shown().State != queue.Error {
		t.Fatalf("the lost run: %+v", got[1])
	}
	next()
	fixtures.Git(t, dir, "push", "-q", bare, ":"+queue.RunRef(target, a))
	next()
}

// A watch of every run of a remote on this machine sees a new result as
// soon as its ref changes, not at the next interval; Wake has it look at
// once.
func TestWatchRunsSeesALocalRemoteAtOnce(t *testing.T) {
	w, _ := identities(t)
	dir, target := repoWithCommit(t)
	bare := fixtures.BareRepo(t, "remote.git")
	clone := fixtures.NewRepo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	changes := Source{Dir: clone, Remote: bare}.WatchRuns(time.Hour)
	if got, err := changes.Next(ctx); err != nil || len(got) != 0 {
		t.Fatalf("first look: %v %v", got, err)
	}
	id := runID(0)
	resultcommit.Write(t, open(t, dir), status(target, id, 1, queue.Success, w), gitproto.ZeroHash, w, nil)
	fixtures.Git(t, dir, "push", "-q", bare, "refs/ci/*:refs/ci/*")
	got, err := changes.Next(ctx) // the interval is an hour
	if err != nil || len(got) != 1 || got[0].ID != id {
		t.Fatalf("after a push: %v %v", got, err)
	}
	changes.Wake()
	if got, err := changes.Next(ctx); err != nil || len(got) != 0 {
		t.Fatalf("woken: %v %v", got, err)
	}
}

// FetchRuns keeps the source's own git environment: a remote reached
// only through a configuration given there (GIT_CONFIG_COUNT, as a
// bridge's or intake's Env may hold) is fetched from, and only the named
// commit's runs come.
func TestFetchRunsKeepsTheSourceEnv(t *testing.T) {
	work := fixtures.NewRepo(t)
	fixtures.WriteFile(t, work, "a.txt", "a\n", 0o644)
	head := fixtures.CommitAll(t, work, "one")
	bare := fixtures.BareRepo(t, "remote.git")
	fixtures.Git(t, work, "push", "-q", bare, "HEAD:"+queue.RunRef(head, "r1"), "HEAD:"+queue.RunRef(strings.Repeat("b", 40), "r2"))
	local := fixtures.BareRepo(t, "local.git")
	const name = "forge.invalid:org/app.git"
	src := Source{Dir: local, Remote: name, Env: []string{"GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=url." + bare + ".insteadOf", "GIT_CONFIG_VALUE_0=" + name}}
	if err := src.FetchRuns(context.Background(), head); err != nil {
		t.Fatal(err)
	}
	got := fixtures.Git(t, local, "for-each-ref", "--format=%(refname)", queue.RunsPrefix)
	if got != queue.RunRef(head, "r1") {
		t.Errorf("fetched %q, want only %s", got, queue.RunRef(head, "r1"))
	}
}
