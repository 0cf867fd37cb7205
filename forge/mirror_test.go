package forge_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/forge"
	"refci.dev/refci/forge/forgetest"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/results"
)

func TestMain(m *testing.M) { os.Exit(fixtures.PrivateHome(m)) }

const worker = "0123456789abcdef0123456789abcdef01234567"

// remote is a bare repository holding result refs, as workers leave
// them, and a mirror's own repository to fetch them into.
type remote struct {
	t      *testing.T
	bare   string
	local  string
	repo   *gitproto.Repo
	now    time.Time
	parent map[string]gitproto.Hash // by run ref: its newest result commit
}

func newRemote(t *testing.T) *remote {
	r := &remote{t: t, bare: fixtures.BareRepo(t, "remote.git"), local: fixtures.BareRepo(t, "mirror.git"),
		now: time.Now().Add(-time.Hour).UTC(), parent: map[string]gitproto.Hash{}}
	var err error
	if r.repo, err = gitproto.Open(r.bare); err != nil {
		t.Fatal(err)
	}
	return r
}

// commit writes a new target commit.
func (r *remote) commit(msg string) string {
	return resultcommit.Commit(r.t, r.repo, map[string]string{"README": msg}, msg, nil).String()
}

// runID returns a new run id, later than every one before.
func (r *remote) runID() string {
	r.now = r.now.Add(time.Millisecond)
	return queue.NewRunID(r.now)
}

// publish writes st as the newest result of its run, with log.
func (r *remote) publish(st *queue.Status, log string) {
	ref := queue.RunRef(st.Target, st.Run)
	h := resultcommit.Write(r.t, r.repo, st, r.parent[ref], nil, map[string]string{queue.LogFile: log})
	r.parent[ref] = h
}

func status(target, request, run string, state queue.State) *queue.Status {
	st := &queue.Status{Format: queue.Format, State: state, Target: target, Request: request, Run: run, Attempt: 1,
		Worker: worker, Started: time.Now().Add(-time.Minute).UTC().Truncate(time.Millisecond), Jobs: []queue.Job{}, Artifacts: []queue.Artifact{}}
	if state.Final() {
		st.Finished = st.Started.Add(time.Second)
		st.DurationMS = 1000
		code := 0
		if state != queue.Success {
			code = 1
		}
		st.ExitCode = &code
	}
	return st
}

// logs is a slog handler's output, safe to read while the mirror writes.
type logs struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logs) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

func (l *logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// start runs a mirror of r on targets until the test ends (or stop is
// called).
func start(t *testing.T, r *remote, stateDir string, lg *logs, targets ...forge.Target) (stop func()) {
	t.Helper()
	if lg == nil {
		lg = &logs{}
	}
	m, err := forge.NewMirror(forge.MirrorConfig{Source: results.Source{Dir: r.local, Remote: r.bare}, Targets: targets,
		StateDir: stateDir, Poll: 20 * time.Millisecond, RunsURL: "https://ci.example.invalid/app.git/",
		PullRequestPoll: 20 * time.Millisecond, MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(lg, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(time.Minute):
				t.Errorf("the mirror did not stop within a minute of its context ending")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// last returns the last status of context on commit, as the fake got it.
func last(f *forgetest.Fake, commit, context string) (forge.Status, int) {
	var s forge.Status
	n := 0
	for _, st := range f.StatusesOf(commit) {
		if st.Context == context {
			s = st
			n++
		}
	}
	return s, n
}

// A run shows as a status per request on its commit, and the pull
// request whose head it is gets one comment, edited as runs progress,
// with the failure's excerpt, the run's page and the fetch line.
func TestMirrorStatusesAndComment(t *testing.T) {
	r := newRemote(t)
	f := forgetest.NewFake()
	ctx := context.Background()
	head := r.commit("change")
	other := r.commit("no pull request")
	pr, _ := f.OpenPullRequest(ctx, head)
	start(t, r, t.TempDir(), nil, forge.Target{Name: "fake org/app", Forge: f})

	ci, lint := r.runID(), r.runID()
	r.publish(status(head, "ci", ci, queue.Running), "")
	fixtures.WaitFor(t, time.Minute, "running status", func() bool { s, _ := last(f, head, "refci/ci"); return s.State == queue.Running })
	fail := status(head, "ci", ci, queue.Failure)
	fail.Reason = "the pipeline exited 1"
	r.publish(fail, "compiling\nmain.go:3: undefined: x\n")
	r.publish(status(head, "lint", lint, queue.Success), "")
	r.publish(status(other, "ci", r.runID(), queue.Success), "")
	fixtures.WaitFor(t, time.Minute, "final statuses and the comment", func() bool {
		s, _ := last(f, head, "refci/ci")
		l, _ := last(f, head, "refci/lint")
		o, _ := last(f, other, "refci/ci")
		c, _ := f.Comments(ctx, pr)
		return s.State == queue.Failure && l.State == queue.Success && o.State == queue.Success &&
			len(c) == 1 && strings.Contains(c[0], "undefined: x") && strings.Contains(c[0], "lint")
	})
	s, n := last(f, head, "refci/ci")
	if n != 2 {
		t.Errorf("%d statuses for refci/ci, want 2 (running, failure)", n)
	}
	if want := "https://ci.example.invalid/app.git/runs/" + head + "/" + ci + "/"; s.TargetURL != want {
		t.Errorf("target URL %q, want %q", s.TargetURL, want)
	}
	if !strings.Contains(s.Description, "ci") || !strings.Contains(s.Description, "failure") || !strings.Contains(s.Description, "exited 1") {
		t.Errorf("description %q does not say what ran, its state and why", s.Description)
	}
	// The summary (a GitHub check run's) is the run in Markdown, with
	// its link and how to fetch it.
	for _, want := range []string{"ci", "exited 1", "](https://ci.example.invalid/app.git/runs/" + head + "/" + ci + "/)", "git fetch"} {
		if !strings.Contains(s.Summary, want) {
			t.Errorf("the status's summary lacks %q:\n%s", want, s.Summary)
		}
	}
	c, _ := f.Comments(ctx, pr)
	for _, want := range []string{forge.CommentMarker, "git fetch origin '+refs/ci/runs/" + head + "/*:refs/ci/runs/" + head + "/*'", "| ✅ | `lint` | success |", "[" + ci + "](https://ci.example.invalid/app.git/runs/"} {
		if !strings.Contains(c[0], want) {
			t.Errorf("the comment lacks %q:\n%s", want, c[0])
		}
	}
	if len(c[0]) > 65536 {
		t.Errorf("the comment is %d bytes", len(c[0]))
	}
	for _, call := range f.Calls() {
		if call.Method == "PullRequestsOf" && call.Commit == other {
			continue
		}
		if call.Method == "UpsertComment" && call.PR != pr {
			t.Errorf("a comment on pull request %d", call.PR)
		}
	}
}

// A backlog of 500 updates of one commit, seen while the forge was down,
// goes out as one status call per context and one comment, newest state
// only; a second forge showing the same remote is served meanwhile.
func TestMirrorBacklogCollapses(t *testing.T) {
	r := newRemote(t)
	down, up := forgetest.NewFake(), forgetest.NewFake()
	ctx := context.Background()
	head := r.commit("change")
	pr, _ := down.OpenPullRequest(ctx, head)
	lg := &logs{}
	down.FailWith(forgetest.Down, time.Time{})
	start(t, r, t.TempDir(), lg, forge.Target{Name: "down org/app", Forge: down}, forge.Target{Name: "up org/app", Forge: up})

	states := []queue.State{queue.Running, queue.Success, queue.Failure, queue.Error, queue.Cancelled}
	var want map[string]queue.State
	for batch := 0; batch < 10; batch++ {
		want = map[string]queue.State{}
		for i := 0; i < 50; i++ {
			req := []string{"ci", "lint"}[i%2]
			st := states[(batch*50+i)%len(states)]
			if batch == 9 && i >= 48 {
				st = map[string]queue.State{"ci": queue.Failure, "lint": queue.Success}[req]
			}
			r.publish(status(head, req, r.runID(), st), "")
			want["refci/"+req] = st
		}
		// The forge that is up shows the newest state of each batch:
		// the mirror saw the backlog grow.
		fixtures.WaitFor(t, time.Minute, fmt.Sprintf("batch %d on the forge that is up", batch), func() bool {
			a, _ := last(up, head, "refci/ci")
			b, _ := last(up, head, "refci/lint")
			return a.State == want["refci/ci"] && b.State == want["refci/lint"]
		})
	}
	if down.Count("SetStatus") != 0 {
		t.Fatal("the forge that is down answered")
	}
	if lg.count(`msg="mirror: forge failing"`) != 1 {
		t.Errorf("the outage was logged %d times, want once:\n%s", lg.count("forge failing"), lg)
	}
	down.FailWith(forgetest.OK, time.Time{})
	fixtures.WaitFor(t, time.Minute, "the forge catching up", func() bool {
		c, _ := down.Comments(ctx, pr)
		return down.Count("SetStatus") == 2 && len(c) == 1 && strings.Contains(c[0], "| ❌ | `ci` | failure |")
	})
	for ctxName, st := range want {
		if s, n := last(down, head, ctxName); n != 1 || s.State != st {
			t.Errorf("%s: %d statuses, the last %s; want one, %s", ctxName, n, s.State, st)
		}
	}
	if n := down.Count("UpsertComment"); n != 1 {
		t.Errorf("%d comment calls after the outage, want 1", n)
	}
	if !strings.Contains(lg.String(), "the forge answers again") {
		t.Errorf("the return was not logged:\n%s", lg)
	}
}

// What was mirrored is recorded: a restarted mirror sends nothing the
// forge already shows, and the next change goes out as usual.
func TestMirrorRestartSendsNothingTwice(t *testing.T) {
	r := newRemote(t)
	f := forgetest.NewFake()
	ctx := context.Background()
	state := t.TempDir()
	head := r.commit("change")
	pr, _ := f.OpenPullRequest(ctx, head)
	r.publish(status(head, "ci", r.runID(), queue.Success), "")
	stop := start(t, r, state, nil, forge.Target{Name: "fake org/app", Forge: f})
	fixtures.WaitFor(t, time.Minute, "the status and comment", func() bool { return f.Count("SetStatus") == 1 && f.Count("UpsertComment") == 1 })
	stop()

	later := r.commit("later")
	r.publish(status(later, "ci", r.runID(), queue.Running), "")
	before := len(f.Calls())
	start(t, r, state, nil, forge.Target{Name: "fake org/app", Forge: f})
	fixtures.WaitFor(t, time.Minute, "the new run and the look at the old commit's pull requests", func() bool {
		looked := false
		for _, c := range f.Calls()[before:] {
			looked = looked || c.Method == "PullRequestsOf" && c.Commit == head
		}
		s, _ := last(f, later, "refci/ci")
		return looked && s.State == queue.Running
	})
	if _, n := last(f, head, "refci/ci"); n != 1 {
		t.Errorf("the old status was sent %d times, want once", n)
	}
	if n := f.Count("UpsertComment"); n != 1 {
		t.Errorf("%d comment calls, want 1: the restart resent the comment", n)
	}
	if e := f.CommentEdits(pr); len(e) != 1 || e[0] != 0 {
		t.Errorf("comment edits %v", e)
	}
}

// A rate limit pauses the forge until its end (no call meanwhile) and is
// logged once; a refused token is logged once, however many runs wait.
func TestMirrorRateLimitAndAuth(t *testing.T) {
	r := newRemote(t)
	f := forgetest.NewFake()
	lg := &logs{}
	until := time.Now().Add(500 * time.Millisecond)
	f.FailWith(forgetest.RateLimited, until)
	start(t, r, t.TempDir(), lg, forge.Target{Name: "fake org/app", Forge: f})
	a := r.commit("a")
	r.publish(status(a, "ci", r.runID(), queue.Success), "")
	fixtures.WaitFor(t, time.Minute, "the status after the pause", func() bool { return f.Count("SetStatus") == 1 })
	failed := 0
	for _, c := range f.Calls() {
		if c.Err != nil && c.Method == "SetStatus" {
			failed++
		}
	}
	if failed != 1 {
		t.Errorf("%d calls refused while rate limited, want 1 (the mirror waits for the limit's end)", failed)
	}
	if n := lg.count(`msg="mirror: rate limited"`); n != 1 || !strings.Contains(lg.String(), "forge=\"fake org/app\"") {
		t.Errorf("the rate limit was logged %d times, want once naming the forge:\n%s", n, lg)
	}

	f.FailWith(forgetest.Auth, time.Time{})
	var commits []string
	for i := 0; i < 3; i++ {
		c := r.commit(fmt.Sprint(i))
		commits = append(commits, c)
		r.publish(status(c, "ci", r.runID(), queue.Failure), "boom\n")
	}
	fixtures.WaitFor(t, time.Minute, "retries with the refused token", func() bool {
		n := 0
		for _, c := range f.Calls() {
			if c.Err != nil && c.Method == "SetStatus" {
				n++
			}
		}
		return n >= 6
	})
	if n := lg.count(`msg="mirror: token refused"`); n != 1 || lg.count("check token_file") != 1 {
		t.Errorf("the refused token was logged %d times, want once with what to do:\n%s", n, lg)
	}
	f.FailWith(forgetest.OK, time.Time{})
	fixtures.WaitFor(t, time.Minute, "every run once the token works", func() bool { return f.Count("SetStatus") == 4 })
	for _, c := range commits {
		if s, n := last(f, c, "refci/ci"); n != 1 || s.State != queue.Failure {
			t.Errorf("%s: %d statuses, last %s", c, n, s.State)
		}
	}
}

// A run whose worker was lost shows the takeover's state; a run that is
// not believed, and one dated in the future, are skipped.
func TestMirrorLostUnbelievedAndFuture(t *testing.T) {
	r := newRemote(t)
	f := forgetest.NewFake()
	lg := &logs{}
	head := r.commit("change")
	lost := status(head, "ci", r.runID(), queue.Running)
	lost.Started = time.Now().Add(-2 * time.Hour).UTC()
	r.publish(lost, "")
	take := status(head, "ci", r.runID(), queue.Success)
	take.Attempt = 2
	take.Extra = map[string]any{queue.ExtraPreviousRun: lost.Run}
	r.publish(take, "")
	// Not believed: a status.json about another request than its ref's
	// run says (written under the wrong ref).
	bad := status(head, "lint", r.runID(), queue.Success)
	h := resultcommit.Result(t, r.repo, bad, gitproto.ZeroHash, nil, nil)
	if err := r.repo.UpdateRef(queue.RunRef(head, r.runID()), h, gitproto.ZeroHash); err != nil {
		t.Fatal(err)
	}
	future := status(head, "docs", queue.NewRunID(time.Now().Add(time.Hour)), queue.Running)
	r.publish(future, "")
	start(t, r, t.TempDir(), lg, forge.Target{Name: "fake org/app", Forge: f})
	fixtures.WaitFor(t, time.Minute, "the takeover's status and the skipped runs' log lines", func() bool {
		s, _ := last(f, head, "refci/ci")
		return s.State == queue.Success && strings.Contains(lg.String(), "not believed") && strings.Contains(lg.String(), "in the future")
	})
	for _, s := range f.StatusesOf(head) {
		if s.Context != "refci/ci" || s.State != queue.Success {
			t.Errorf("status %+v sent; only the takeover's success expected", s)
		}
	}
}

// The comment stays within the forge's limit however many requests
// fail with long logs.
func TestMirrorCommentLimit(t *testing.T) {
	r := newRemote(t)
	f := forgetest.NewFake()
	ctx := context.Background()
	head := r.commit("change")
	pr, _ := f.OpenPullRequest(ctx, head)
	long := strings.Repeat(strings.Repeat("x", 400)+"\n", 400)
	for i := 0; i < 12; i++ {
		r.publish(status(head, fmt.Sprintf("job%02d", i), r.runID(), queue.Failure), long)
	}
	start(t, r, t.TempDir(), nil, forge.Target{Name: "fake org/app", Forge: f})
	fixtures.WaitFor(t, time.Minute, "the comment", func() bool { c, _ := f.Comments(ctx, pr); return len(c) == 1 })
	c, _ := f.Comments(ctx, pr)
	if len(c[0]) > 65536 || !strings.Contains(c[0], "git fetch origin") || !strings.Contains(c[0], "`job11`") {
		t.Errorf("the comment is %d bytes, or lacks the fetch line or a request", len(c[0]))
	}
	if strings.Count(c[0], "```")%2 != 0 {
		t.Error("the comment leaves a code fence open")
	}
}

// A pull request opened after its commit's runs ended gets its comment
// at the next look at the open pull requests.
func TestMirrorPullRequestOpenedLater(t *testing.T) {
	r := newRemote(t)
	f := forgetest.NewFake()
	ctx := context.Background()
	head := r.commit("change")
	r.publish(status(head, "ci", r.runID(), queue.Success), "")
	start(t, r, t.TempDir(), nil, forge.Target{Name: "fake org/app", Forge: f})
	fixtures.WaitFor(t, time.Minute, "the status", func() bool { return f.Count("SetStatus") == 1 && f.Count("PullRequestsOf") == 1 })
	pr, _ := f.OpenPullRequest(ctx, head)
	fixtures.WaitFor(t, time.Minute, "the comment", func() bool { c, _ := f.Comments(ctx, pr); return len(c) == 1 })
	before := f.Count("OpenPullRequests")
	fixtures.WaitFor(t, time.Minute, "two more looks", func() bool { return f.Count("OpenPullRequests") >= before+2 })
	if n := f.Count("UpsertComment"); n != 1 {
		t.Errorf("%d comment calls, want 1", n)
	}
}
