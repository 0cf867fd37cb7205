package forge_test

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/forge"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// lister is a forge's list of open pull requests, as a test sets it.
type lister struct {
	mu  sync.Mutex
	prs []forge.PullRequest
}

func (l *lister) set(prs ...forge.PullRequest) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.prs = prs
}

func (l *lister) OpenPullRequests(context.Context) ([]forge.PullRequest, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]forge.PullRequest(nil), l.prs...), nil
}

// A forge repository as GitHub keeps it: a branch, and each pull
// request's head under refs/pull/<n>/head (a fork's too).
type forgeRepo struct {
	t          *testing.T
	work, bare string
}

func newForgeRepo(t *testing.T) *forgeRepo {
	r := &forgeRepo{t: t, work: fixtures.NewRepo(t), bare: fixtures.BareRepo(t, "forge.git")}
	fixtures.CommitAll(t, r.work, "base")
	fixtures.Git(t, r.work, "push", "-q", r.bare, "HEAD:refs/heads/main")
	return r
}

// pull makes a new commit and sets pull request n's head to it.
func (r *forgeRepo) pull(n int, msg string) string {
	fixtures.WriteFile(r.t, r.work, "f", msg, 0o644)
	h := fixtures.CommitAll(r.t, r.work, msg)
	fixtures.Git(r.t, r.work, "push", "-q", "-f", r.bare, "HEAD:"+forge.GitHubHeadRef(n))
	return h
}

// request is the commit the request name names on the remote, "" for none.
func (r *forgeRepo) request(name string) string {
	out, err := fixtures.RunGit(r.bare, nil, nil, "rev-parse", "--verify", "--quiet", queue.RequestRef(name)+"^{commit}")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func newIntake(r *forgeRepo, l *lister) *forge.Intake {
	cache := fixtures.BareRepo(r.t, "cache.git")
	// A signing key configured for the machine never signs a pull
	// request's request: signing with this one would fail.
	fixtures.Git(r.t, cache, "config", "user.signingkey", "0000000000000000000000000000000000000000")
	return &forge.Intake{Forge: l, Where: "test org/app", Dir: cache, Remote: r.bare, HeadRef: forge.GitHubHeadRef, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// Intake.Env reaches every git it runs (fetching heads, listing and
// pushing requests): a remote only that environment leads to works.
func TestIntakeEnv(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := newForgeRepo(t)
	l := &lister{}
	in := newIntake(r, l)
	in.Remote = "forge.invalid:org/app.git"
	in.Env = []string{"GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=url." + r.bare + ".insteadOf", "GIT_CONFIG_VALUE_0=" + in.Remote}
	h1 := r.pull(1, "one")
	l.set(forge.PullRequest{Number: 1, Head: h1})
	got, err := in.Sync(ctx)
	if err != nil || len(got.Asked) != 1 || r.request("pr/1") != h1 {
		t.Fatalf("synced %+v, %v; request pr/1 %q, want %s", got, err, r.request("pr/1"), h1)
	}
	l.set()
	if got, err := in.Sync(ctx); err != nil || len(got.Deleted) != 1 || r.request("pr/1") != "" {
		t.Fatalf("closed: synced %+v, %v; request pr/1 %q", got, err, r.request("pr/1"))
	}
}

func TestIntakeTakesPullRequestsIn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := newForgeRepo(t)
	l := &lister{}
	in := newIntake(r, l)
	pass := func(in *forge.Intake, asked, deleted string) {
		t.Helper()
		got, err := in.Sync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if a, d := strings.Trim(fmtInts(got.Asked), "[]"), fmtInts(got.Deleted); a != asked || d != deleted {
			t.Fatalf("asked %v, deleted %v; want asked [%s], deleted %s", got.Asked, got.Deleted, asked, deleted)
		}
	}

	h1, h2 := r.pull(1, "one"), r.pull(2, "two from a fork")
	l.set(forge.PullRequest{Number: 1, Head: h1}, forge.PullRequest{Number: 2, Head: h2, Fork: true})
	pass(in, "1,2", "[]")
	if r.request("pr/1") != h1 || r.request("pr/2") != h2 {
		t.Fatalf("requests pr/1 %q and pr/2 %q, want the heads %s and %s", r.request("pr/1"), r.request("pr/2"), h1, h2)
	}
	body := fixtures.Git(t, r.bare, "cat-file", "tag", queue.RequestRef("pr/2"))
	if strings.Contains(body, "BEGIN PGP SIGNATURE") {
		t.Errorf("a pull request's request is signed; its trust must come from its own commit:\n%s", body)
	}
	pass(in, "", "[]")
	pass(newIntake(r, l), "", "[]") // a restart, or a second intake: pending requests are not asked again

	// A new push to pull request 1 replaces its request.
	h1b := r.pull(1, "one, amended")
	l.set(forge.PullRequest{Number: 1, Head: h1b}, forge.PullRequest{Number: 2, Head: h2, Fork: true})
	pass(in, "1", "[]")
	if r.request("pr/1") != h1b {
		t.Fatalf("request pr/1 is %q after a new push, want %s", r.request("pr/1"), h1b)
	}

	// Pull request 2 ran: its worker deleted the request and pushed a
	// result. It is not asked for again, by a fresh intake either.
	fixtures.Git(t, r.bare, "update-ref", "-d", queue.RequestRef("pr/2"))
	remote, err := gitproto.Open(r.bare)
	if err != nil {
		t.Fatal(err)
	}
	w := fixtures.OpenPGPIdentity(t, "Test Worker")
	resultcommit.Write(t, remote, &queue.Status{Format: queue.Format, State: queue.Success, Target: h2, Request: "pr/2",
		Run: queue.NewRunID(time.Now()), Attempt: 1, Worker: w.Fingerprint(), Started: time.Now().UTC()}, gitproto.ZeroHash, w, nil)
	pass(newIntake(r, l), "", "[]")
	if r.request("pr/2") != "" {
		t.Fatal("a pull request that ran was asked for again")
	}

	// Closed: its request is deleted (a running run of it is cancelled).
	l.set(forge.PullRequest{Number: 2, Head: h2, Fork: true})
	pass(in, "", "[1]")
	if r.request("pr/1") != "" {
		t.Fatal("the request of a closed pull request is still there")
	}

	// Pushed to between the listing and the fetch: nothing is asked
	// until the listing shows the new head.
	h3 := r.pull(3, "three")
	r.pull(3, "three, pushed again")
	l.set(forge.PullRequest{Number: 2, Head: h2, Fork: true}, forge.PullRequest{Number: 3, Head: h3})
	pass(in, "", "[]")
	if r.request("pr/3") != "" {
		t.Fatal("a stale head was asked for")
	}
}

func fmtInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return "[" + strings.Join(s, ",") + "]"
}
