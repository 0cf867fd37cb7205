package results

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// verdict is a run of request kept for keep, at a made-up ref.
func verdict(request string, keep Reason, n int) Verdict {
	ref := queue.RunRef(strings.Repeat("a", 40), fmt.Sprintf("20260101T0000%02d.000Z-%012d", n, n))
	return Verdict{Candidate: Candidate{Run: Run{Ref: ref}, Request: request, Final: true}, Keep: keep}
}

// verdicts are n runs of each request.
func verdicts(keep Reason, counts ...any) []Verdict {
	var out []Verdict
	for i := 0; i < len(counts); i += 2 {
		for j := 0; j < counts[i+1].(int); j++ {
			out = append(out, verdict(counts[i].(string), keep, len(out)))
		}
	}
	return out
}

// What refci gc and the retention log say of an outcome: the runs
// removed per request (the most first, at most eight named, request
// names made safe), the runs kept by reason, and the lines of Print.
func TestOutcomeSummaries(t *testing.T) {
	unreadable := verdict("", Unreadable, 50)
	unreadable.Err = fmt.Errorf("result 0123456789ab: %w", gitproto.ErrNotFound)
	noTime := verdict("", Unreadable, 51)
	changed := verdict("pr/9", Remove, 52)
	refused := RefusedRun{verdict("pr/8", Remove, 53), "a worker key never deletes a run ref"}
	many := verdicts(Remove, "a", 1, "b", 1, "c", 1, "d", 1, "e", 1, "f", 1, "g", 1, "h", 1, "i", 2, "j", 1)
	for _, tc := range []struct {
		name    string
		out     Outcome
		removed string
		kept    int
		why     string
		print   string // Print, then Print verbose after "--\n"
	}{
		{name: "nothing", removed: "0 runs", print: "refci: removed 0 runs; kept 0 (0s)\n--\nrefci: removed 0 runs; kept 0 (0s)\n"},
		{
			name:    "one run",
			out:     Outcome{Removed: Removed{Deleted: verdicts(Remove, "main", 1)}, Took: 1234567 * time.Microsecond},
			removed: "1 run (main 1)",
			print: "refci: removed 1 run (main 1); kept 0 (1.235s)\n--\n" +
				"removed " + verdict("", 0, 0).Ref + " (request main)\nrefci: removed 1 run (main 1); kept 0 (1.235s)\n",
		},
		{
			name: "the most first, then by name",
			out: Outcome{DryRun: true, Removed: Removed{Deleted: verdicts(Remove, "b", 1, "pr/1", 3, "a", 1)},
				Verdicts: append(verdicts(Claimed, "x", 1), append(verdicts(Young, "x", 2), verdicts(Tip, "y", 1)...)...)},
			removed: "5 runs (pr/1 3, a 1, b 1)",
			kept:    4, why: "1 named by a claim, 1 latest on a branch or tag, 2 young enough",
			print: "refci: would remove 5 runs (pr/1 3, a 1, b 1); kept 4: 1 named by a claim, 1 latest on a branch or tag, 2 young enough (0s)\n--\n" +
				"would remove " + verdict("", 0, 0).Ref + " (request b)\n" +
				"would remove " + verdict("", 0, 1).Ref + " (request pr/1)\n" +
				"would remove " + verdict("", 0, 2).Ref + " (request pr/1)\n" +
				"would remove " + verdict("", 0, 3).Ref + " (request pr/1)\n" +
				"would remove " + verdict("", 0, 4).Ref + " (request a)\n" +
				"refci: would remove 5 runs (pr/1 3, a 1, b 1); kept 4: 1 named by a claim, 1 latest on a branch or tag, 2 young enough (0s)\n",
		},
		{
			name:    "eight named at most",
			out:     Outcome{DryRun: true, Removed: Removed{Deleted: many}},
			removed: "11 runs (i 2, a 1, b 1, c 1, d 1, e 1, f 1, g 1, 2 more requests)",
		},
		{
			name:    "a request name is made safe",
			out:     Outcome{Removed: Removed{Deleted: verdicts(Remove, "evil\x1b]0;owned\a", 1)}},
			removed: `1 run (evil\x1b]0;owned\x07 1)`,
		},
		{
			name: "unreadable, changed and refused are kept",
			out: Outcome{
				Verdicts: []Verdict{unreadable, noTime, changed, refused.Verdict, verdict("main", Unfinished, 54)},
				Removed:  Removed{Changed: []Verdict{changed}, Refused: []RefusedRun{refused}},
			},
			removed: "0 runs",
			kept:    5, why: "1 unfinished, 2 unreadable, 1 changed meanwhile, 1 refused by the remote",
			print: "kept " + changed.Ref + ": it changed since gc read it\n" +
				"refci: removed 0 runs; kept 5: 1 unfinished, 2 unreadable, 1 changed meanwhile, 1 refused by the remote (0s)\n" +
				"refci: 2 runs could not be read or believed and were kept; refci gc -v lists them, refci status RUN says why\n--\n" +
				"kept " + unreadable.Ref + ": unreadable: result 0123456789ab: not found\n" +
				"kept " + noTime.Ref + ": its run id names no time\n" +
				"kept " + changed.Ref + ": it changed since gc read it\n" +
				"refci: removed 0 runs; kept 5: 1 unfinished, 2 unreadable, 1 changed meanwhile, 1 refused by the remote (0s)\n",
		},
		{
			name:    "one unreadable",
			out:     Outcome{Verdicts: []Verdict{noTime}},
			removed: "0 runs", kept: 1, why: "1 unreadable",
			print: "refci: removed 0 runs; kept 1: 1 unreadable (0s)\n" +
				"refci: 1 run could not be read or believed and was kept; refci gc -v lists them, refci status RUN says why\n--\n" +
				"kept " + noTime.Ref + ": its run id names no time\nrefci: removed 0 runs; kept 1: 1 unreadable (0s)\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.out.RemovedSummary(); got != tc.removed {
				t.Errorf("RemovedSummary: %q, want %q", got, tc.removed)
			}
			if n, why := tc.out.Kept(); n != tc.kept || why != tc.why {
				t.Errorf("Kept: %d %q, want %d %q", n, why, tc.kept, tc.why)
			}
			if tc.print == "" {
				return
			}
			var b strings.Builder
			tc.out.Print(&b, false)
			b.WriteString("--\n")
			tc.out.Print(&b, true)
			if b.String() != tc.print {
				t.Errorf("Print:\n%s\nwant:\n%s", b.String(), tc.print)
			}
		})
	}
	if got := (RefusedRun{Why: "deleting refs/ci/runs/ needs the admin role"}).Advice(); !strings.Contains(got, "with a key that has the admin role") {
		t.Errorf("advice on an admin's refusal: %q", got)
	}
	if got := (RefusedRun{Why: "protected ref"}).Advice(); !strings.HasPrefix(got, "; the remote may protect these refs") {
		t.Errorf("advice on another refusal: %q", got)
	}
}

// gcRepo is a repository with runs written as a worker writes them:
// three of request topic on a commit no branch points at (400, 399 and
// 398 days old), one of main on HEAD (500 days), and a run ref whose
// commit is no result. With KeepLast 1, the two oldest of topic go.
type gcRepo struct {
	dir, target, other string
	ids                map[string]string // a short name -> run id
	bad                string            // the unreadable run ref
}

func newGCRepo(t *testing.T) *gcRepo {
	w, _ := identities(t)
	g := &gcRepo{ids: map[string]string{}}
	g.dir, g.target = repoWithCommit(t)
	g.other = fixtures.Git(t, g.dir, "commit-tree", "-m", "other", fixtures.Git(t, g.dir, "rev-parse", "HEAD^{tree}"))
	for i, name := range []string{"topic1", "topic2", "topic3"} {
		g.ids[name] = runID(time.Duration(400-i) * 24 * time.Hour)
		publish(t, g.dir, status(g.other, g.ids[name], 1, queue.Success, w), gitproto.ZeroHash, w, "")
	}
	g.ids["main"] = runID(500 * 24 * time.Hour)
	st := status(g.target, g.ids["main"], 1, queue.Failure, w)
	st.Request = "main"
	publish(t, g.dir, st, gitproto.ZeroHash, w, "")
	g.bad = queue.RunRef(g.other, runID(600*24*time.Hour))
	fixtures.Git(t, g.dir, "update-ref", g.bad, g.target)
	return g
}

// left names the runs left in gitDir, sorted; "bad" is the unreadable one.
func (g *gcRepo) left(t *testing.T, gitDir string) string {
	t.Helper()
	var names []string
	for _, ref := range strings.Fields(fixtures.Git(t, gitDir, "for-each-ref", "--format=%(refname)", queue.RunsPrefix)) {
		name := "?" + ref
		if ref == g.bad {
			name = "bad"
		}
		for n, id := range g.ids {
			if strings.HasSuffix(ref, "/"+id) {
				name = n
			}
		}
		names = append(names, name)
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}

const gcAllRuns, gcKeptRuns = "bad main topic1 topic2 topic3", "bad main topic3"

// Collect in a repository and on a remote through a cache: a dry run
// removes nothing and says what it would; a pass removes what the policy
// does not keep, on the remote and in the cache; a remote that cannot be
// read is an error without an outcome.
func TestCollectInARepositoryAndOnARemote(t *testing.T) {
	ctx := context.Background()
	g := newGCRepo(t)
	policy := Retention{KeepLast: 1}
	bare := fixtures.BareRepo(t, "remote.git")
	fixtures.Git(t, g.dir, "push", "-q", bare, "HEAD:refs/heads/main", "refs/ci/*:refs/ci/*")
	local := LocalTarget(open(t, g.dir), "")
	if local.Name() != "this repository" || !strings.Contains(local.Prunes(), "git gc --prune=now") {
		t.Errorf("a local target: %q, %q", local.Name(), local.Prunes())
	}

	out, err := Collect(ctx, local, policy, true)
	if err != nil {
		t.Fatal(err)
	}
	if got := g.left(t, g.dir); got != gcAllRuns {
		t.Errorf("a dry run removed runs: %s", got)
	}
	var b strings.Builder
	out.Print(&b, false)
	if !out.DryRun || len(out.Removed.Deleted) != 2 ||
		!strings.HasPrefix(b.String(), "refci: would remove 2 runs (topic 2); kept 3: 1 unreadable, 1 latest on a branch or tag, 1 newest of their request (") {
		t.Errorf("dry run: %+v\n%s", out.Removed, b.String())
	}

	out, err = Collect(ctx, local, policy, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := g.left(t, g.dir); got != gcKeptRuns || out.DryRun || out.RemovedSummary() != "2 runs (topic 2)" {
		t.Errorf("runs left: %s, want %s; removed %s", got, gcKeptRuns, out.RemovedSummary())
	}

	remote, err := gitproto.OpenRemote(bare, filepath.Join(t.TempDir(), "gc.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	target := RemoteTarget(remote)
	if target.Name() != bare || !strings.Contains(target.Prunes(), "the remote's own gc") {
		t.Errorf("a remote target: %q, %q", target.Name(), target.Prunes())
	}
	if out, err = Collect(ctx, target, policy, false); err != nil {
		t.Fatal(err)
	}
	if got := g.left(t, bare); got != gcKeptRuns || out.RemovedSummary() != "2 runs (topic 2)" {
		t.Errorf("remote runs left: %s, want %s; removed %s", got, gcKeptRuns, out.RemovedSummary())
	}
	if got := g.left(t, remote.Cache); got != gcKeptRuns {
		t.Errorf("the cache still has the removed runs: %s", got)
	}
	if out, err = Collect(ctx, target, policy, false); err != nil || out.RemovedSummary() != "0 runs" {
		t.Errorf("again: %v, %v", out, err)
	}

	missing, err := gitproto.OpenRemote(filepath.Join(t.TempDir(), "missing.git"), filepath.Join(t.TempDir(), "gc.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := Collect(ctx, RemoteTarget(missing), policy, false); out != nil || err == nil {
		t.Errorf("a missing remote: %+v, %v", out, err)
	}
	if n := RemoteTarget(&gitproto.Remote{URL: "https://ci:s3cret@forge.invalid/app.git"}).Name(); strings.Contains(n, "s3cret") {
		t.Errorf("a remote target's name shows its password: %s", n)
	}
}

// A remote that refuses the deletions (here its pre-receive hook, as
// refci serve refuses a worker key's) keeps the runs, and the outcome
// says so with what the remote said.
func TestCollectOnARemoteThatRefuses(t *testing.T) {
	g := newGCRepo(t)
	bare := fixtures.BareRepo(t, "remote.git")
	fixtures.Git(t, g.dir, "push", "-q", bare, "HEAD:refs/heads/main", "refs/ci/*:refs/ci/*")
	hook := "#!/bin/sh\necho 'deleting a run ref needs the admin role' >&2\nexit 1\n"
	if err := os.WriteFile(filepath.Join(bare, "hooks", "pre-receive"), []byte(hook), 0o755); err != nil {
		t.Fatal(err)
	}
	remote, err := gitproto.OpenRemote(bare, filepath.Join(t.TempDir(), "gc.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Collect(context.Background(), RemoteTarget(remote), Retention{KeepLast: 1}, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := g.left(t, bare); got != gcAllRuns {
		t.Errorf("remote runs left: %s", got)
	}
	if n, why := out.Kept(); n != 5 || !strings.HasSuffix(why, ", 2 refused by the remote") || len(out.Removed.Deleted) != 0 {
		t.Errorf("kept %d: %s; %+v", n, why, out.Removed)
	}
	if r := out.Removed.Refused; len(r) != 2 || !strings.Contains(r[0].Why, "admin role") || !strings.Contains(r[0].Advice(), "a key that has the admin role") {
		t.Errorf("refused: %+v", r)
	}
}

// scheduleLog is a Schedule's log, written where the test reads it.
func scheduleLog() (*slog.Logger, *fixtures.Buffer) {
	b := &fixtures.Buffer{}
	return slog.New(slog.NewTextHandler(b, nil)), b
}

// A Schedule makes its first pass at once, then waits Every (on its
// clock, here the test's) before each next one, lists its targets
// afresh each pass, and stops when its context ends.
func TestScheduleRunsAtOnceThenEveryInterval(t *testing.T) {
	w, _ := identities(t)
	g := newGCRepo(t)
	logger, log := scheduleLog()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waits, ticks := make(chan time.Duration), make(chan time.Time)
	passes := 0
	s := &Schedule{
		Policy: Retention{KeepLast: 1},
		Every:  time.Hour,
		Logger: logger,
		Targets: func(context.Context) ([]*Target, error) {
			passes++
			return []*Target{LocalTarget(open(t, g.dir), "app.git")}, nil
		},
		after: func(d time.Duration) <-chan time.Time { waits <- d; return ticks },
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	waiting := func(pass int) {
		t.Helper()
		select {
		case d := <-waits:
			if d != time.Hour || passes != pass {
				t.Fatalf("waits %v after pass %d, want 1h after pass %d", d, passes, pass)
			}
		case <-time.After(time.Minute):
			t.Fatalf("no wait after pass %d\n%s", pass, log.String())
		}
	}

	waiting(1)
	if got := g.left(t, g.dir); got != gcKeptRuns {
		t.Errorf("after the first pass: %s", got)
	}
	l := log.String()
	if !strings.Contains(l, `msg="retention: refci gc at once and then every interval" every=1h0m0s keep_last=1 keep_days=0`) ||
		!strings.Contains(l, `msg="retention: gc" repo=app.git removed="2 runs (topic 2)" kept=3 why="1 unreadable, 1 latest on a branch or tag, 1 newest of their request"`) {
		t.Errorf("the log of the first pass:\n%s", l)
	}

	// A newer run of topic makes topic3 the one to go, at the next tick.
	g.ids["topic4"] = runID(time.Hour)
	publish(t, g.dir, status(g.other, g.ids["topic4"], 1, queue.Success, w), gitproto.ZeroHash, w, "")
	ticks <- time.Now()
	waiting(2)
	if got := g.left(t, g.dir); got != "bad main topic4" {
		t.Errorf("after the second pass: %s", got)
	}
	if n := strings.Count(log.String(), `msg="retention: gc"`); n != 2 {
		t.Errorf("%d pass lines after two passes:\n%s", n, log.String())
	}

	cancel()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Run goes on after its context ended")
	}
}

// A Schedule whose Every is 0 makes one pass; Quiet leaves out the line
// of a target where nothing was removed, never a failure or a refusal;
// a target list that comes with an error is still collected; a context
// that ends during a pass stops it without a line.
func TestScheduleOnePassQuietAndStopping(t *testing.T) {
	g := newGCRepo(t)
	missing, err := gitproto.OpenRemote(filepath.Join(t.TempDir(), "missing.git"), filepath.Join(t.TempDir(), "gc.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	refusing := fixtures.BareRepo(t, "refusing.git")
	fixtures.Git(t, g.dir, "push", "-q", refusing, "HEAD:refs/heads/main", "refs/ci/*:refs/ci/*")
	os.WriteFile(filepath.Join(refusing, "hooks", "pre-receive"), []byte("#!/bin/sh\necho 'needs the admin role' >&2\nexit 1\n"), 0o755)
	remote, err := gitproto.OpenRemote(refusing, filepath.Join(t.TempDir(), "gc.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	clean := fixtures.NewRepo(t)
	logger, log := scheduleLog()
	s := &Schedule{Logger: logger, Quiet: true, Policy: Retention{KeepLast: 1},
		Targets: func(context.Context) ([]*Target, error) {
			return []*Target{LocalTarget(open(t, clean), "clean.git"), RemoteTarget(missing), RemoteTarget(remote)}, errors.New("repository lost.git: gone")
		},
		after: func(time.Duration) <-chan time.Time { t.Error("Every 0 waits for a next pass"); return nil },
	}
	s.Run(context.Background())
	l := log.String()
	for _, want := range []string{
		`level=WARN msg="retention: cannot find every repository to collect in; trying again at the next pass" err="repository lost.git: gone"`,
		`level=WARN msg="retention: gc failed; trying again at the next pass" repo=` + missing.URL,
		`level=WARN msg="retention: the repository refused to delete runs" repo=` + refusing + ` refused=2 why="`,
	} {
		if !strings.Contains(l, want) {
			t.Errorf("the log has no %s\n%s", want, l)
		}
	}
	if strings.Contains(l, "clean.git") || strings.Contains(l, `msg="retention: gc"`) {
		t.Errorf("a quiet pass that removed nothing has a line:\n%s", l)
	}

	// The context ends while the targets are listed: nothing is collected.
	ctx, cancel := context.WithCancel(context.Background())
	logger, log = scheduleLog()
	s = &Schedule{Logger: logger, Every: time.Hour, Policy: Retention{KeepLast: 1},
		Targets: func(context.Context) ([]*Target, error) {
			cancel()
			return []*Target{LocalTarget(open(t, g.dir), "app.git")}, nil
		},
		after: func(time.Duration) <-chan time.Time { t.Error("a cancelled Run waits for a next pass"); return nil },
	}
	s.Run(ctx)
	if got := g.left(t, g.dir); got != gcAllRuns || strings.Contains(log.String(), "app.git") {
		t.Errorf("a cancelled pass collected: %s\n%s", got, log.String())
	}
}
