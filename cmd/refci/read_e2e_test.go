package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// threeCommitsWithRuns makes three commits in the sandbox's repository,
// each with one run, pushes them and their runs to a new bare
// repository, and clones it (branches only) into clone. It returns the
// commits, oldest first, and the remote's file:// URL.
func threeCommitsWithRuns(t *testing.T, s *sandbox) (commits []string, url, clone string) {
	t.Helper()
	s.pipeline("echo first\n")
	for i := 0; i < 3; i++ {
		if i > 0 {
			s.write("n", strings.Repeat("x", i), 0o644)
			s.commitAll("commit " + string(rune('0'+i)))
		}
		s.refci("run", "-q").want(t, 0)
		commits = append(commits, s.git("", "rev-parse", "HEAD"))
	}
	bare := filepath.Join(s.root, "remote.git")
	s.git("", "init", "-q", "--bare", "-b", "main", bare)
	s.git("", "push", "-q", bare, "main", "+refs/ci/*:refs/ci/*")
	url = "file://" + bare
	clone = filepath.Join(s.root, "clone")
	s.git("", "clone", "-q", url, clone)
	return commits, url, clone
}

// localRunTargets lists the commits that have run refs in dir.
func localRunTargets(t *testing.T, s *sandbox, dir string) map[string]int {
	t.Helper()
	out := s.git(dir, "for-each-ref", "--format=%(refname)", "refs/ci/")
	got := map[string]int{}
	for _, l := range strings.Fields(out) {
		parts := strings.Split(l, "/")
		if len(parts) != 5 || parts[2] != "runs" {
			t.Fatalf("unexpected ref %s", l)
		}
		got[parts[3]]++
	}
	return got
}

// refci fetch brings the runs of the named commits, and only those: the
// remote is asked with a ref-prefix per commit (protocol v2) and
// advertises none of the other commits' runs.
func TestFetchOnlyTheNamedCommitsRuns(t *testing.T) {
	s := newSandbox(t)
	commits, url, clone := threeCommitsWithRuns(t, s)
	if got := localRunTargets(t, s, clone); len(got) != 0 {
		t.Fatalf("a plain clone has runs: %v", got)
	}
	// The user's configuration asks for protocol v0; refci fetch uses v2.
	s.git(clone, "config", "protocol.version", "0")
	trace := filepath.Join(s.root, "trace")
	env := s.env
	s.env = append(append([]string{}, env...), "GIT_TRACE_PACKET="+trace)
	r := s.refciIn(clone, "fetch", "HEAD~1").want(t, 0)
	s.env = env
	if want := commits[1][:12] + " (HEAD~1): 1 run(s) here, 1 new or changed\n"; r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
	if got := localRunTargets(t, s, clone); len(got) != 1 || got[commits[1]] != 1 {
		t.Errorf("after fetch HEAD~1: runs of %v, want only %s", got, commits[1])
	}
	tr, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(tr), "upload-pack< ref-prefix refs/ci/runs/"+commits[1]+"/\n") {
		t.Errorf("no ref-prefix for the commit in the packet trace:\n%s", tr)
	}
	for _, c := range []string{commits[0], commits[2]} {
		if strings.Contains(string(tr), "refs/ci/runs/"+c) {
			t.Errorf("the remote advertised the runs of %s:\n%s", c, tr)
		}
	}

	// Again: nothing new. Then two more commits at once, one of them by
	// its full id, from the URL; the first one is deduplicated.
	r = s.refciIn(clone, "fetch", "HEAD~1").want(t, 0)
	if !strings.HasSuffix(r.stdout, ": 1 run(s) here, 0 new or changed\n") {
		t.Errorf("fetch again: %q", r.stdout)
	}
	r = s.refciIn(clone, "fetch", "--remote", url, commits[0], "main", commits[0]).want(t, 0)
	if got := localRunTargets(t, s, clone); len(got) != 3 {
		t.Errorf("after fetching all three: runs of %v", got)
	}
	if !strings.Contains(r.stdout, commits[2][:12]+": 1 run(s) here, 1 new or changed\n") || strings.Count(r.stdout, "\n") != 2 {
		t.Errorf("stdout %q", r.stdout)
	}

	// A commit that is not here, by its full id: its runs are fetched
	// all the same (a reader need not have the code).
	other := filepath.Join(s.root, "other")
	s.git("", "init", "-q", "-b", "main", other)
	s.refciIn(other, "fetch", "--remote", url, commits[2]).want(t, 0)
	if got := localRunTargets(t, s, other); len(got) != 1 || got[commits[2]] != 1 {
		t.Errorf("runs of %v, want only %s", got, commits[2])
	}

	// Failures: an unknown revision (usage), a remote that is not there
	// (infrastructure), each saying so.
	if r := s.refciIn(clone, "fetch", "nosuch"); r.code != 2 || !strings.Contains(r.stderr, "nosuch: unknown revision") {
		t.Errorf("unknown revision: %d %q", r.code, r.stderr)
	}
	if r := s.refciIn(clone, "fetch", "--remote", filepath.Join(s.root, "gone.git")); r.code != 3 || !strings.Contains(r.stderr, "does not appear to be a git repository") {
		t.Errorf("missing remote: %d %q", r.code, r.stderr)
	}
}

// status, log and verify fetch the runs of the commit they need from
// origin (or --remote) when it has none here, and only that commit's.
func TestReadersFetchAMissingRunOnDemand(t *testing.T) {
	s := newSandbox(t)
	commits, url, clone := threeCommitsWithRuns(t, s)

	r := s.refciIn(clone, "status").want(t, 0)
	if !strings.Contains(r.stdout, "SUCCESS") || !strings.Contains(r.stderr, "refci: fetched the runs of "+commits[2][:12]+" from origin\n") {
		t.Errorf("status: %q %q", r.stdout, r.stderr)
	}
	if got := localRunTargets(t, s, clone); len(got) != 1 || got[commits[2]] != 1 {
		t.Errorf("after status: runs of %v", got)
	}
	// Present now: nothing is fetched.
	if r := s.refciIn(clone, "status").want(t, 0); r.stderr != "" {
		t.Errorf("status again: %q", r.stderr)
	}

	r = s.refciIn(clone, "log", "HEAD~1").want(t, 0)
	if r.stdout != "first\n" || !strings.Contains(r.stderr, "fetched the runs of "+commits[1][:12]) {
		t.Errorf("log: %q %q", r.stdout, r.stderr)
	}
	if got := localRunTargets(t, s, clone); len(got) != 2 {
		t.Errorf("after log: runs of %v", got)
	}

	// verify, from a remote named by URL, the run named by <target>/<run-id>.
	id := strings.Split(s.git("", "for-each-ref", "--format=%(refname)", "refs/ci/runs/"+commits[0]+"/"), "/")[4]
	s.git(clone, "remote", "remove", "origin")
	r = s.refciIn(clone, "verify", "--remote", url, commits[0]+"/"+id).want(t, 0)
	if !strings.Contains(r.stdout, "refci: run "+id+" verified") || !strings.Contains(r.stderr, "fetched the runs of "+commits[0][:12]+" from "+url) {
		t.Errorf("verify: %q %q", r.stdout, r.stderr)
	}

	// Without origin, nothing is tried; a --remote that fails says why,
	// then what Find says.
	s.git(clone, "update-ref", "-d", "refs/ci/runs/"+commits[0]+"/"+id)
	want := "refci: HEAD~2 (" + commits[0][:12] + "): no runs yet; start one with 'refci run HEAD~2', or fetch its runs with: refci fetch HEAD~2\n"
	if r := s.refciIn(clone, "status", "HEAD~2"); r.code != 2 || r.stderr != want {
		t.Errorf("no origin: %d %q, want %q", r.code, r.stderr, want)
	}
	r = s.refciIn(clone, "status", "--remote", "nosuch", "HEAD~2")
	if r.code != 2 || !strings.Contains(r.stderr, "refci: could not fetch the runs of "+commits[0][:12]+" from nosuch: git fetch: ") || !strings.HasSuffix(r.stderr, want) {
		t.Errorf("bad remote: %d %q", r.code, r.stderr)
	}
}

// refci runs lists a page at a time, newest first: the pages together are
// the whole list (-n 0), in its order, each saying where it is.
func TestRunsPages(t *testing.T) {
	s := newSandbox(t)
	s.pipeline("true\n")
	for i := 0; i < 7; i++ {
		s.refci("run", "-q").want(t, 0)
		if i == 3 {
			s.commitAll("another commit") // --all spans commits
		}
	}
	all := s.refci("runs", "--all", "-n", "0").want(t, 0)
	lines := strings.Split(strings.TrimSpace(all.stdout), "\n")
	if len(lines) != 7 || all.stderr != "" {
		t.Fatalf("-n 0: %q %q", all.stdout, all.stderr)
	}
	for i := 1; i < len(lines); i++ {
		if lines[i-1] < lines[i] { // each line starts with the run id, which sorts by start time
			t.Errorf("not newest first:\n%s", all.stdout)
		}
	}
	var joined []string
	for page, want := range []string{
		"refci: runs 1-3 of 7, newest first; --page 2 for older ones, -n 0 for all\n",
		"refci: runs 4-6 of 7, newest first; --page 3 for older ones, -n 0 for all\n",
		"refci: runs 7-7 of 7, newest first (the last page)\n",
	} {
		r := s.refci("runs", "--all", "-n", "3", "--page", string(rune('1'+page))).want(t, 0)
		if r.stderr != want {
			t.Errorf("page %d: stderr %q, want %q", page+1, r.stderr, want)
		}
		joined = append(joined, strings.Split(strings.TrimSpace(r.stdout), "\n")...)
	}
	if strings.Join(joined, "\n") != strings.Join(lines, "\n") {
		t.Errorf("pages:\n%s\nwant:\n%s", strings.Join(joined, "\n"), all.stdout)
	}
	// The default page is the newest 100; HEAD's runs alone without --all.
	if r := s.refci("runs", "--all").want(t, 0); r.stdout != all.stdout || r.stderr != "" {
		t.Errorf("default: %q %q", r.stdout, r.stderr)
	}
	if r := s.refci("runs", "-n", "2").want(t, 0); len(strings.Split(strings.TrimSpace(r.stdout), "\n")) != 2 || !strings.Contains(r.stderr, "of 3,") {
		t.Errorf("HEAD: %q %q", r.stdout, r.stderr)
	}
	if r := s.refci("runs", "--all", "-n", "3", "--page", "4"); r.code != 2 || !strings.Contains(r.stderr, "page 4 is past the last one (7 runs, 3 a page)") {
		t.Errorf("past the end: %d %q", r.code, r.stderr)
	}
}
