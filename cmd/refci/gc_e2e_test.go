package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
)

// gcWorld is a repository with runs written as a worker writes them:
// on main's commit, on a tagged commit, and on a commit no branch or
// tag points at; a claimed run and an unreadable one.
type gcWorld struct {
	s                     *sandbox
	main, tagged, loose   string
	names                 map[string]string // run ref -> a short name the test uses
	worker                *secrets.Identity
	repo                  *gitproto.Repo
	claimedRef, unreadRef string
}

func newGCWorld(t *testing.T) *gcWorld {
	s := newSandbox(t)
	g := &gcWorld{s: s, names: map[string]string{}, worker: fixtures.OpenPGPIdentity(t, "Test Worker")}
	g.tagged = s.commitAll("release 1")
	s.git("", "tag", "-a", "-m", "v1", "v1")
	g.loose = s.commitAll("a pull request's head")
	s.git("", "branch", "-q", "topic") // pointed at, then gone: its commit is loose
	s.git("", "branch", "-q", "-D", "topic")
	s.git("", "reset", "-q", "--hard", g.tagged)
	g.main = s.commitAll("main now")
	var err error
	if g.repo, err = gitproto.Open(s.repo); err != nil {
		t.Fatal(err)
	}
	day := 24 * time.Hour
	for i := 0; i < 5; i++ {
		g.run(t, fmt.Sprintf("pr1-%d", i), g.loose, "pr/1", time.Duration(200-i)*day, queue.Success)
	}
	g.run(t, "main-loose-a", g.loose, "main", 300*day, queue.Success)
	g.run(t, "main-loose-b", g.loose, "main", 300*day-time.Hour, queue.Failure)
	g.run(t, "main-tip-old", g.main, "main", 401*day, queue.Success)
	g.run(t, "main-tip", g.main, "main", 400*day, queue.Failure)
	g.run(t, "release", g.tagged, "release", 500*day, queue.Success)
	g.claimedRef = g.run(t, "claimed", g.loose, "pr/2", 300*day, queue.Running)
	_, id, _ := queue.ParseRunRef(g.claimedRef)
	claim := &queue.Claim{Format: queue.Format, Request: "pr/2", RequestObject: g.loose, Target: g.loose, Run: id, Attempt: 1, Worker: g.worker.Fingerprint()}
	cj, err := queue.EncodeClaim(claim)
	if err != nil {
		t.Fatal(err)
	}
	cc := resultcommit.Commit(t, g.repo, map[string]string{queue.ClaimFile: string(cj)}, queue.ClaimMessage(claim), g.worker)
	s.git("", "update-ref", queue.ClaimRef("pr/2"), cc.String())
	// A run ref whose commit is no result at all: kept, and reported.
	g.unreadRef = queue.RunRef(g.loose, queue.NewRunID(time.Now().Add(-600*day)))
	s.git("", "update-ref", g.unreadRef, g.main)
	g.names[g.unreadRef] = "unreadable"
	return g
}

// run writes a result of target for request, started ago, and names it.
func (g *gcWorld) run(t *testing.T, name, target, request string, ago time.Duration, state queue.State) string {
	t.Helper()
	when := time.Now().Add(-ago).UTC().Truncate(time.Millisecond)
	st := &queue.Status{Format: queue.Format, State: state, Target: target, Request: request, Run: queue.NewRunID(when),
		Attempt: 1, Worker: g.worker.Fingerprint(), Started: when, Jobs: []queue.Job{}, Artifacts: []queue.Artifact{}}
	if state.Final() {
		st.Finished = when.Add(time.Minute)
	}
	resultcommit.Write(t, g.repo, st, gitproto.ZeroHash, g.worker, map[string]string{queue.LogFile: "ok\n"})
	ref := queue.RunRef(target, st.Run)
	g.names[ref] = name
	return ref
}

// left names the runs under refs/ci/runs/ of gitDir, sorted.
func (g *gcWorld) left(t *testing.T, gitDir string) string {
	t.Helper()
	var out []string
	for _, ref := range strings.Fields(fixtures.Git(t, gitDir, "for-each-ref", "--format=%(refname)", queue.RunsPrefix)) {
		n, ok := g.names[ref]
		if !ok {
			n = "?" + ref
		}
		out = append(out, n)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// The policy of keep-last 2 (and no days) over the world: pr/1 keeps its
// newest two; main its newest two (on the loose commit) and the newest
// on main's commit; release its tagged run; the claim and the unreadable
// ref stay.
const gcKept = "claimed main-loose-a main-loose-b main-tip pr1-3 pr1-4 release unreadable"
const gcAll = "claimed main-loose-a main-loose-b main-tip main-tip-old pr1-0 pr1-1 pr1-2 pr1-3 pr1-4 release unreadable"

func TestGCLocal(t *testing.T) {
	g := newGCWorld(t)
	s := g.s
	if got := g.left(t, s.repo); got != gcAll {
		t.Fatalf("runs written: %s", got)
	}
	dry := s.refci("gc", "--keep-last", "2", "--keep-days", "0", "--dry-run").want(t, exitOK)
	if !strings.Contains(dry.stdout, "refci: would remove 4 runs (pr/1 3, main 1); kept 8: 1 named by a claim, 1 unreadable, 2 latest on a branch or tag, 4 newest of their request (") ||
		!strings.Contains(dry.stdout, "refci: 1 run could not be read or believed and was kept; refci gc -v lists them") {
		t.Errorf("dry run:\n%s", dry.stdout)
	}
	if got := g.left(t, s.repo); got != gcAll {
		t.Errorf("a dry run removed runs: %s", got)
	}
	r := s.refci("gc", "--keep-last", "2", "--keep-days", "0", "-v").want(t, exitOK)
	if got := g.left(t, s.repo); got != gcKept {
		t.Errorf("runs left: %s\nwant:       %s\n%s", got, gcKept, r.stdout)
	}
	for ref, name := range g.names {
		if removed := strings.Contains(r.stdout, "removed "+ref+" (request "); removed != !strings.Contains(" "+gcKept+" ", " "+name+" ") {
			t.Errorf("-v says run %s removed: %v\n%s", name, removed, r.stdout)
		}
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if !strings.Contains(r.stdout, "kept "+g.unreadRef+": unreadable: ") ||
		!strings.HasPrefix(lines[len(lines)-1], "refci: the removed runs' objects are unreachable now; git's own gc prunes them") {
		t.Errorf("gc -v:\n%s", r.stdout)
	}
	// What is kept still reads: the latest run of main's commit.
	if st := s.status("HEAD"); st.Request != "main" || st.State != queue.Failure {
		t.Errorf("status of main after gc: %+v", st)
	}
	// Nothing left to remove; the note on objects is said once.
	r = s.refci("gc", "--keep-last", "2", "--keep-days", "0").want(t, exitOK)
	if !strings.HasPrefix(r.stdout, "refci: removed 0 runs; kept 8: ") || strings.Contains(r.stdout, "unreachable") {
		t.Errorf("gc again:\n%s", r.stdout)
	}
	// The defaults (10 per request, 90 days) keep everything here.
	if r := s.refci("gc").want(t, exitOK); !strings.HasPrefix(r.stdout, "refci: removed 0 runs; kept 8: ") {
		t.Errorf("gc with the defaults:\n%s", r.stdout)
	}
	if r := s.refci("gc", "--keep-last", "-1"); r.code != exitUsage || !strings.Contains(r.stderr, "--keep-last and --keep-days take 0 or more") {
		t.Errorf("a negative keep-last: %d\n%s", r.code, r.stderr)
	}
}

func TestGCRemote(t *testing.T) {
	g := newGCWorld(t)
	s := g.s
	bare := fixtures.BareRepo(t, "remote")
	s.git("", "remote", "add", "origin", "file://"+bare)
	s.git("", "push", "-q", "origin", "main", "v1", "+refs/ci/*:refs/ci/*")
	// The local repository's own runs are not the remote's business.
	s.git("", "update-ref", "-d", "refs/tags/v1")
	r := s.refci("gc", "--remote", "origin", "--keep-last", "2", "--keep-days", "0").want(t, exitOK)
	if got := g.left(t, bare); got != gcKept {
		t.Errorf("remote runs left: %s\nwant:              %s\n%s", got, gcKept, r.stdout)
	}
	if got := g.left(t, s.repo); got != gcAll {
		t.Errorf("gc --remote touched the local runs: %s", got)
	}
	if !strings.Contains(r.stdout, "refci: removed 4 runs (pr/1 3, main 1); kept 8: ") || !strings.Contains(r.stdout, "the remote's own gc prunes them") {
		t.Errorf("gc --remote:\n%s", r.stdout)
	}
	// A run pushed since is read at its new value; nothing else goes.
	r = s.refci("gc", "--remote", "origin", "--keep-last", "2", "--keep-days", "0", "--dry-run").want(t, exitOK)
	if !strings.HasPrefix(r.stdout, "refci: would remove 0 runs; kept 8: ") {
		t.Errorf("gc --remote again:\n%s", r.stdout)
	}
	// A remote whose URL is a relative path is found from the repository,
	// wherever refci runs.
	rel, err := filepath.Rel(s.repo, bare)
	if err != nil {
		t.Fatal(err)
	}
	s.git("", "remote", "add", "rel", rel)
	if r := s.refciIn(s.root, "gc", "--repo", s.repo, "--remote", "rel", "--dry-run").want(t, exitOK); !strings.HasPrefix(r.stdout, "refci: would remove 0 runs; kept 8: ") {
		t.Errorf("gc --remote with a relative path:\n%s", r.stdout)
	}
	if r := s.refci("gc", "--remote", "nowhere"); r.code != exitUsage || !strings.Contains(r.stderr, `no remote named "nowhere"`) {
		t.Errorf("gc --remote nowhere: %d\n%s", r.code, r.stderr)
	}
}

// On refci serve, deleting run refs is an admin's: a worker key's gc is
// refused, and says what key it needs.
func TestGCOnServeNeedsAnAdminKey(t *testing.T) {
	sv := startServe(t, "--no-worker")
	g := &gcWorld{s: sv.sandbox, names: map[string]string{}, worker: fixtures.OpenPGPIdentity(t, "Test Worker")}
	g.main = sv.commitAll("main")
	var err error
	if g.repo, err = gitproto.Open(sv.repo); err != nil {
		t.Fatal(err)
	}
	old := g.run(t, "old", g.main, "main", 400*24*time.Hour, queue.Success)
	g.run(t, "new", g.main, "main", 300*24*time.Hour, queue.Success)
	sv.git("", "push", "-q", "ci", "main", "+refs/ci/runs/*:refs/ci/runs/*")
	adminEnv := append([]string{}, sv.env...)
	wk := fixtures.SSHKeyFiles(t, sv.root, "worker")
	sv.addRole("worker " + wk.AuthorizedKey)
	sv.useKey(wk.Path)
	r := sv.refci("gc", "--remote", "ci", "--keep-last", "1", "--keep-days", "0")
	if r.code != exitInfra || !strings.Contains(r.stderr, "refused to delete 1 run(s), which are kept: ") ||
		!strings.Contains(r.stderr, "a worker key never deletes a run ref") || !strings.Contains(r.stderr, "with a key that has the admin role") {
		t.Errorf("gc with a worker key: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if got := g.left(t, sv.bare("app.git")); got != "new old" {
		t.Errorf("after a worker key's gc: %s", got)
	}
	sv.env = adminEnv
	r = sv.refci("gc", "--remote", "ci", "--keep-last", "1", "--keep-days", "0", "-v").want(t, exitOK)
	if got := g.left(t, sv.bare("app.git")); got != "new" || !strings.Contains(r.stdout, "removed "+old) {
		t.Errorf("after an admin's gc: %s\n%s", got, r.stdout)
	}
}

// A worker with [retention] collects on each of its remotes at start,
// then every interval, and logs what it removed; a section without
// every is a configuration error.
func TestWorkerRetention(t *testing.T) {
	g := newGCWorld(t)
	s := g.s
	bare := fixtures.BareRepo(t, "remote")
	s.git("", "push", "-q", bare, "main", "v1", "+refs/ci/runs/*:refs/ci/runs/*")
	cfg := filepath.Join(s.root, "worker.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("remotes = [%q]\npoll = \"1h\"\n\n[retention]\nkeep_last = 2\nkeep_days = 0\nevery = \"1h\"\n", "file://"+bare)), 0o644)
	w := startRefci(t, s.root, s.env, "worker", "--config", cfg)
	fixtures.WaitFor(t, time.Minute, "the worker's first retention pass", func() bool { return strings.Contains(w.errOut.String(), `msg="retention: gc"`) })
	// Without a claim on the remote, the lone run of pr/2 is simply the
	// newest of its request.
	if got := g.left(t, bare); got != gcKept {
		t.Errorf("remote runs left: %s\nwant:              %s", got, gcKept)
	}
	if log := w.errOut.String(); !strings.Contains(log, `removed="4 runs (pr/1 3, main 1)" kept=8`) {
		t.Errorf("the retention log line:\n%s", tail(log))
	}
	bad := filepath.Join(s.root, "bad.toml")
	os.WriteFile(bad, []byte(fmt.Sprintf("remotes = [%q]\n[retention]\nkeep_last = 2\n", "file://"+bare)), 0o644)
	if r := s.refciIn(s.root, "worker", "--config", bad); r.code != exitUsage || !strings.Contains(r.stderr, "[retention]: set every") {
		t.Errorf("[retention] without every: %d\n%s", r.code, r.stderr)
	}
}

// A run that changes on the remote between gc's look and its delete (a
// writer pushes a snapshot meanwhile; here the remote's pre-receive hook
// does it, so the remote gets a real git push) survives, at its new
// value, and gc names it.
func TestGCRemoteRunChangedMeanwhile(t *testing.T) {
	g := newGCWorld(t)
	s := g.s
	bare := fixtures.BareRepo(t, "remote")
	s.git("", "push", "-q", bare, "main", "v1", "+refs/ci/*:refs/ci/*")
	var raced string
	for ref, name := range g.names {
		if name == "pr1-0" {
			raced = ref
		}
	}
	st := s.status(raced)
	st.State, st.Reason = queue.Failure, "a later snapshot"
	moved := resultcommit.Write(t, g.repo, st, gitproto.NewHash(s.git("", "rev-parse", raced)), g.worker, nil)
	s.git("", "push", "-q", bare, moved.String()+":refs/keep/moved")
	hook := fmt.Sprintf("#!/bin/sh\nwhile read old new ref; do\n  if [ \"$ref\" = %q ]; then env -u GIT_QUARANTINE_PATH git update-ref \"$ref\" %s \"$old\" || exit 1; fi\ndone\n", raced, moved)
	if err := os.WriteFile(filepath.Join(bare, "hooks", "pre-receive"), []byte(hook), 0o755); err != nil {
		t.Fatal(err)
	}
	r := s.refci("gc", "--remote", "file://"+bare, "--keep-last", "2", "--keep-days", "0").want(t, exitOK)
	if !strings.Contains(r.stdout, "kept "+raced+": it changed since gc read it\n") ||
		!strings.Contains(r.stdout, "refci: removed 3 runs (pr/1 2, main 1); kept 9: ") || !strings.Contains(r.stdout, "1 changed meanwhile") {
		t.Errorf("gc with a run changed meanwhile:\n%s\n%s", r.stdout, r.stderr)
	}
	if got := fixtures.Git(t, bare, "rev-parse", raced); got != moved.String() {
		t.Errorf("the raced run is at %s, not its new snapshot %s", got, moved)
	}
	if got, want := g.left(t, bare), gcKept+" pr1-0"; got != sortedFields(want) {
		t.Errorf("remote runs left: %s", got)
	}
}

func sortedFields(s string) string {
	f := strings.Fields(s)
	sort.Strings(f)
	return strings.Join(f, " ")
}

// refci serve --retention collects in every repository it holds, at
// start and then every interval, in the repositories themselves; a
// claimed run stays, and a bad interval is a usage error.
func TestServeRetention(t *testing.T) {
	sv := startServe(t, "--no-worker")
	g := &gcWorld{s: sv.sandbox, names: map[string]string{}, worker: fixtures.OpenPGPIdentity(t, "Test Worker")}
	g.main = sv.commitAll("main")
	var err error
	if g.repo, err = gitproto.Open(sv.repo); err != nil {
		t.Fatal(err)
	}
	g.run(t, "old", g.main, "pr/1", 400*24*time.Hour, queue.Success)
	g.run(t, "older", g.main, "pr/1", 401*24*time.Hour, queue.Success)
	g.run(t, "new", g.main, "pr/1", 300*24*time.Hour, queue.Success)
	claimed := g.run(t, "claimed", g.main, "pr/2", 500*24*time.Hour, queue.Running)
	g.run(t, "claimed-newer", g.main, "pr/2", 200*24*time.Hour, queue.Success)
	_, id, _ := queue.ParseRunRef(claimed)
	claim := &queue.Claim{Format: queue.Format, Request: "pr/2", RequestObject: g.main, Target: g.main, Run: id, Attempt: 1, Worker: g.worker.Fingerprint()}
	cj, err := queue.EncodeClaim(claim)
	if err != nil {
		t.Fatal(err)
	}
	cc := resultcommit.Commit(t, g.repo, map[string]string{queue.ClaimFile: string(cj)}, queue.ClaimMessage(claim), g.worker)
	sv.git("", "update-ref", queue.ClaimRef("pr/2"), cc.String())
	sv.git("", "push", "-q", "ci", "main", "+refs/ci/runs/*:refs/ci/runs/*", "+refs/ci/claims/*:refs/ci/claims/*")
	if got := g.left(t, sv.bare("app.git")); got != "claimed claimed-newer new old older" {
		t.Fatalf("runs pushed: %s", got)
	}
	sv.stop()
	// The same server again, now with retention: its first pass is at start.
	log := &fixtures.Buffer{}
	cmd := exec.Command(refciBin, "serve", "--listen", "127.0.0.1:0", "--no-worker", "--retention", "1h", "--keep-last", "1", "--keep-days", "0")
	cmd.Env, cmd.Stdout, cmd.Stderr = sv.env, &fixtures.Buffer{}, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	fixtures.WaitForShowing(t, time.Minute, "the first retention pass", func() bool { return strings.Contains(log.String(), `msg="retention: gc" repo=app.git`) }, log.String)
	if got := g.left(t, sv.bare("app.git")); got != "claimed claimed-newer new" {
		t.Errorf("runs left: %s\nserve log:\n%s", got, log.String())
	}
	if l := log.String(); !strings.Contains(l, `removed="2 runs (pr/1 2)"`) || !strings.Contains(l, "keep_last=1 keep_days=0") {
		t.Errorf("the retention log lines:\n%s", l)
	}
	for _, bad := range [][]string{{"--retention", "10s"}, {"--retention", "1h", "--keep-last", "-1"}} {
		r := sv.refciIn(sv.root, append([]string{"serve", "--listen", "127.0.0.1:0"}, bad...)...)
		if r.code != exitUsage || !strings.Contains(r.stderr, "serve: --") {
			t.Errorf("serve %v: %d\n%s", bad, r.code, r.stderr)
		}
	}
}
