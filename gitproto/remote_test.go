package gitproto

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
)

// remoteEnv isolates the git that Remote runs from the user's and the
// system's configuration, like gitEnv does for the oracle.
func remoteEnv(extra ...string) []string {
	return append([]string{
		"GIT_CONFIG_NOSYSTEM=1",
		"HOME=" + fixtures.Home(),
		"XDG_CONFIG_HOME=" + filepath.Join(fixtures.Home(), ".config"),
	}, extra...)
}

// openTestRemote opens url with a fresh cache.
func openTestRemote(t testing.TB, url string, extraEnv ...string) *Remote {
	t.Helper()
	r, err := OpenRemote(url, filepath.Join(t.TempDir(), "cache"), remoteEnv(extraEnv...))
	if err != nil {
		t.Fatalf("OpenRemote(%s): %v", url, err)
	}
	return r
}

// mkCommit writes a commit with an empty tree in gitDir.
func mkCommit(t testing.TB, gitDir, msg string, parents ...Hash) Hash {
	t.Helper()
	tree := fixtures.GitStdin(t, gitDir, []byte{}, "mktree")
	args := []string{"commit-tree", tree, "-m", msg}
	for _, p := range parents {
		args = append(args, "-p", p.String())
	}
	return mustHash(t, fixtures.Git(t, gitDir, args...))
}

func setRef(t testing.TB, gitDir, name string, h Hash) {
	t.Helper()
	fixtures.Git(t, gitDir, "update-ref", name, h.String())
}

// refOf returns the value of ref name in gitDir, or "" if it is missing.
func refOf(t testing.TB, gitDir, name string) string {
	t.Helper()
	out, err := fixtures.RunGit(gitDir, nil, nil, "for-each-ref", "--format=%(objectname)", name)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// refNames lists the refs of gitDir.
func refNames(t testing.TB, gitDir string) []string {
	t.Helper()
	out := fixtures.Git(t, gitDir, "for-each-ref", "--format=%(refname)")
	if out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

func remoteErr(t testing.TB, err error) *RemoteError {
	t.Helper()
	var re *RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T) is not a *RemoteError", err, err)
	}
	return re
}

func TestOpenRemoteCreatesCache(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	remote := fixtures.BareRepo(t, "remote.git")
	cache := filepath.Join(base, "sub", "cache")
	r, err := OpenRemote(remote, cache, remoteEnv())
	if err != nil {
		t.Fatal(err)
	}
	if r.Cache != cache || r.URL != remote {
		t.Fatalf("Remote = %+v", r)
	}
	if got := fixtures.Git(t, cache, "rev-parse", "--is-bare-repository"); got != "true" {
		t.Fatalf("cache is not bare: %s", got)
	}
	for key, want := range map[string]string{
		"gc.auto": "0", "core.logAllRefUpdates": "false", "fetch.writeCommitGraph": "false",
		"protocol.version": "2", "core.hooksPath": "/dev/null",
	} {
		if got := fixtures.Git(t, cache, "config", "--get", key); got != want {
			t.Errorf("config %s = %q, want %q", key, got, want)
		}
	}
	if left := listDir(t, filepath.Join(base, "sub")); len(left) != 1 {
		t.Errorf("leftovers next to the cache: %v", left)
	}
	// Opening again keeps it; an empty directory is made a cache.
	if _, err := OpenRemote(remote, cache, remoteEnv()); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(base, "empty")
	os.Mkdir(empty, 0o755)
	if _, err := OpenRemote(remote, empty, remoteEnv()); err != nil || !isBareDir(empty) {
		t.Fatalf("empty dir: %v", err)
	}
	// A directory with other content is refused.
	junk := filepath.Join(base, "junk")
	fixtures.WriteFile(t, junk, "file", "x", 0o644)
	if _, err := OpenRemote(remote, junk, remoteEnv()); err == nil || !strings.Contains(err.Error(), "not a bare git repository") {
		t.Fatalf("junk dir: %v", err)
	}
	file := filepath.Join(junk, "file")
	if _, err := OpenRemote(remote, file, remoteEnv()); err == nil {
		t.Fatal("a file as cache was accepted")
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "x" {
		t.Fatalf("the file in the way was changed: %q %v", b, err)
	}
	// A relative local path is made absolute; URLs are kept.
	wd, _ := os.Getwd()
	rel, err := filepath.Rel(wd, remote)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := OpenRemote(rel, cache, remoteEnv())
	if err != nil || r2.URL != remote {
		t.Fatalf("relative URL: %v %+v", err, r2)
	}
	for _, u := range []string{"file:///x/y.git", "ssh://git@host/x.git", "git@host:x.git", "https://host/x.git"} {
		r3, err := OpenRemote(u, cache, remoteEnv())
		if err != nil || r3.URL != u {
			t.Errorf("OpenRemote(%s) = %+v, %v", u, r3, err)
		}
	}
	if _, err := OpenRemote("--upload-pack=evil", cache, remoteEnv()); err == nil {
		t.Error("a URL starting with a dash was accepted")
	}
}

func TestOpenRemoteConcurrent(t *testing.T) {
	t.Parallel()
	remote := fixtures.BareRepo(t, "remote.git")
	cache := filepath.Join(t.TempDir(), "cache")
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = OpenRemote(remote, cache, remoteEnv())
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := listDir(t, filepath.Dir(cache)); len(got) != 1 {
		t.Fatalf("leftovers: %v", got)
	}
	fsckStrict(t, cache)
}

func TestRemoteFetchMirrorsAndPrunes(t *testing.T) {
	t.Parallel()
	bothPushModes(t, func(t *testing.T, mode pushMode) {
		remote := fixtures.BareRepo(t, "remote.git")
		a := mkCommit(t, remote, "a")
		b := mkCommit(t, remote, "b")
		c := mkCommit(t, remote, "c", b)
		main := mkCommit(t, remote, "main")
		pull := mkCommit(t, remote, "pull")
		setRef(t, remote, "refs/ci/requests/a", a)
		setRef(t, remote, "refs/ci/requests/alice/topic", b)
		setRef(t, remote, "refs/heads/main", main)
		setRef(t, remote, "refs/pull/1/head", pull)
		setRef(t, remote, "refs/ci/runs/x/y", a)

		for _, url := range []string{remote, "file://" + remote} {
			r := mode.open(t, url)
			spec := "+refs/ci/requests/*:refs/ci/requests/*"
			if err := r.Fetch(context.Background(), spec); err != nil {
				t.Fatal(err)
			}
			want := []string{"refs/ci/requests/a", "refs/ci/requests/alice/topic"}
			if got := refNames(t, r.Cache); strings.Join(got, " ") != strings.Join(want, " ") {
				t.Fatalf("%s: refs after fetch = %v, want %v", url, got, want)
			}
			// The objects came; unrelated ones did not.
			for _, h := range []Hash{a, b} {
				fixtures.Git(t, r.Cache, "cat-file", "-e", h.String()+"^{commit}")
			}
			for _, h := range []Hash{main, pull} {
				if _, err := fixtures.RunGit(r.Cache, nil, nil, "cat-file", "-e", h.String()); err == nil {
					t.Errorf("%s: unrelated commit %s was fetched", url, h)
				}
			}
			if _, err := os.Stat(filepath.Join(r.Cache, "FETCH_HEAD")); err == nil {
				t.Error("FETCH_HEAD was written")
			}
			// A fetch with nothing new changes nothing.
			if err := r.Fetch(context.Background(), spec); err != nil {
				t.Fatal(err)
			}
			if got := refNames(t, r.Cache); len(got) != 2 {
				t.Fatalf("refs after an empty fetch: %v", got)
			}
		}

		// Deleted and rewritten remote refs are mirrored, also non-fast-forward.
		r := mode.open(t, remote)
		spec := "+refs/ci/requests/*:refs/ci/requests/*"
		if err := r.Fetch(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		fixtures.Git(t, remote, "update-ref", "-d", "refs/ci/requests/a")
		setRef(t, remote, "refs/ci/requests/alice/topic", c) // fast-forward
		setRef(t, remote, "refs/ci/requests/new", a)
		if err := r.Fetch(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		if got := refOf(t, r.Cache, "refs/ci/requests/a"); got != "" {
			t.Errorf("deleted remote ref still in the cache: %s", got)
		}
		if got := refOf(t, r.Cache, "refs/ci/requests/alice/topic"); got != c.String() {
			t.Errorf("updated ref = %s, want %s", got, c)
		}
		if got := refOf(t, r.Cache, "refs/ci/requests/new"); got != a.String() {
			t.Errorf("new ref = %s, want %s", got, a)
		}
		setRef(t, remote, "refs/ci/requests/alice/topic", a) // rewind
		if err := r.Fetch(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		if got := refOf(t, r.Cache, "refs/ci/requests/alice/topic"); got != a.String() {
			t.Errorf("rewound ref = %s, want %s", got, a)
		}
		// Several refspecs in one fetch.
		if err := r.Fetch(context.Background(), spec, "+refs/ci/runs/*:refs/ci/runs/*"); err != nil {
			t.Fatal(err)
		}
		if got := refOf(t, r.Cache, "refs/ci/runs/x/y"); got != a.String() {
			t.Errorf("second refspec: %q", got)
		}
		// A named ref that does not exist is an error of kind not-found.
		err := r.Fetch(context.Background(), "refs/ci/runs/nope:refs/ci/runs/nope")
		if re := remoteErr(t, err); re.Kind != KindNotFound || !errors.Is(err, ErrNotFound) {
			t.Errorf("missing named ref: kind %s: %v", re.Kind, err)
		}
		if err := r.Fetch(context.Background()); err == nil {
			t.Error("Fetch without refspecs succeeded")
		}
		// The direct way speaks no protocol: nothing on git's wire trace,
		// and the new ref is there all the same.
		trace := filepath.Join(t.TempDir(), "trace")
		r.Env = append(r.Env, "GIT_TRACE_PACKET="+trace)
		setRef(t, remote, "refs/ci/requests/traced", b)
		if err := r.Fetch(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		if got := refOf(t, r.Cache, "refs/ci/requests/traced"); got != b.String() {
			t.Errorf("traced fetch: %q", got)
		}
		wire, _ := os.ReadFile(trace)
		if mode.direct != !strings.Contains(string(wire), "ref-prefix") {
			t.Errorf("direct %v, but the wire trace says:\n%s", mode.direct, wire)
		}
		// The direct way keeps the mirror in packed-refs: not one file
		// per request.
		if mode.direct {
			var loose []string
			filepath.WalkDir(filepath.Join(r.Cache, "refs", "ci", "requests"), func(p string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					loose = append(loose, p)
				}
				return nil
			})
			if len(loose) > 0 {
				t.Errorf("the direct fetch left loose refs: %v", loose)
			}
		}
		noLocks(t, r.Cache)
		fsckStrict(t, r.Cache)
	})
}

// TestRemoteFetchPollCostIndependent checks, on git's wire trace, that a
// fetch asks the server only for the refs under its refspecs (protocol v2
// ref-prefix), so 10,000 refs/pull refs are never advertised to it.
func TestRemoteFetchPollCostIndependent(t *testing.T) {
	t.Parallel()
	remote := fixtures.BareRepo(t, "remote.git")
	a := mkCommit(t, remote, "a")
	addPullRefs(t, remote, 10000, a)
	setRef(t, remote, "refs/ci/requests/r1", a)

	trace := filepath.Join(t.TempDir(), "trace")
	r := openTestRemote(t, "file://"+remote, "GIT_TRACE_PACKET="+trace)
	r.NoDirect = true // this is about git fetch's wire protocol
	if err := r.Fetch(context.Background(), "+refs/ci/requests/*:refs/ci/requests/*"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	if !strings.Contains(text, "fetch> ref-prefix refs/ci/requests/") {
		t.Fatalf("the fetch sent no ref-prefix:\n%s", text)
	}
	if !strings.Contains(text, a.String()+" refs/ci/requests/r1") {
		t.Fatalf("the advertisement lacks the wanted ref:\n%s", text)
	}
	if n := strings.Count(text, "refs/pull/"); n != 0 {
		t.Fatalf("%d trace lines mention refs/pull: the fetch's cost grows with unrelated refs", n)
	}
	if lines := strings.Count(text, "\n"); lines > 100 {
		t.Errorf("the fetch's trace has %d lines", lines)
	}

	// ls-remote with a pattern sends no ref-prefix in git 2.39: the whole
	// advertisement comes. Only logged (a later git may do better).
	os.Remove(trace)
	if _, err := r.ListRemote(context.Background(), "refs/ci/requests/"); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(trace)
	t.Logf("ls-remote: %d trace lines mention refs/pull, ref-prefix sent: %v",
		strings.Count(string(b), "refs/pull/"), strings.Contains(string(b), "ref-prefix"))
}

// addPullRefs gives a repository without packed refs n packed refs
// refs/pull/<i>/head, as a forge has. It writes packed-refs directly
// (what update-ref --stdin and pack-refs --all would make, 100 times
// faster) and checks that git reads it.
func addPullRefs(t testing.TB, gitDir string, n int, h Hash) {
	t.Helper()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("refs/pull/%d/head", i)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("# pack-refs with: peeled fully-peeled sorted \n")
	for _, name := range names {
		b.WriteString(h.String() + " " + name + "\n")
	}
	if _, err := os.Stat(filepath.Join(gitDir, "packed-refs")); err == nil {
		t.Fatal("the repository already has packed refs")
	}
	if err := os.WriteFile(filepath.Join(gitDir, "packed-refs"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := fixtures.Git(t, gitDir, "rev-parse", fmt.Sprintf("refs/pull/%d/head", n-1)); got != h.String() {
		t.Fatalf("git does not read the packed refs: %s", got)
	}
}

// pushMode is how Push and Fetch reach a remote on this machine: real
// git push and fetch, or direct updates of the repositories (direct.go).
// Every push test and the fetch tests run both: their answers must be the
// same.
type pushMode struct{ direct bool }

func bothPushModes(t *testing.T, f func(*testing.T, pushMode)) {
	for _, m := range []pushMode{{false}, {true}} {
		name := "git-push"
		if m.direct {
			name = "direct"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f(t, m)
		})
	}
}

// open is openTestRemote in this mode; it fails the test when the mode
// is direct and the remote is not updated directly.
func (m pushMode) open(t testing.TB, url string, extraEnv ...string) *Remote {
	t.Helper()
	r := openTestRemote(t, url, extraEnv...)
	r.NoDirect = !m.direct
	if direct, why := r.Direct(context.Background()); direct != m.direct && r.LocalDir() != "" {
		if _, err := os.Stat(r.LocalDir()); err == nil {
			t.Fatalf("Direct() = %v (%s), want %v", direct, why, m.direct)
		}
	}
	return r
}

func (m pushMode) pick(gitPush, direct string) string {
	if m.direct {
		return direct
	}
	return gitPush
}

// pushOne pushes one update and returns its result.
func pushOne(t *testing.T, r *Remote, u RefUpdate) PushResult {
	t.Helper()
	res, err := r.Push(context.Background(), []RefUpdate{u}, false)
	if err != nil {
		t.Fatalf("Push(%+v): %v", u, err)
	}
	if len(res) != 1 || res[0].Name != u.Name {
		t.Fatalf("Push(%+v) = %+v", u, res)
	}
	return res[0]
}

func TestRemotePushCompareAndSwap(t *testing.T) {
	t.Parallel()
	bothPushModes(t, func(t *testing.T, mode pushMode) {
		remote := fixtures.BareRepo(t, "remote.git")
		r := mode.open(t, "file://"+remote)
		c1 := mkCommit(t, r.Cache, "one")
		c2 := mkCommit(t, r.Cache, "two", c1)
		other := mkCommit(t, r.Cache, "other")
		const ref = "refs/ci/claims/alice/topic"

		check := func(step string, got PushResult, ok, stale bool, msg, remoteWant string) {
			t.Helper()
			if got.OK != ok || got.Stale != stale || (msg != "" && got.Message != msg) {
				t.Errorf("%s: got %+v, want OK=%v Stale=%v Message=%q", step, got, ok, stale, msg)
			}
			if cur := refOf(t, remote, ref); cur != remoteWant {
				t.Errorf("%s: remote ref = %q, want %q", step, cur, remoteWant)
			}
		}
		check("create", pushOne(t, r, RefUpdate{Name: ref, New: c1}), true, false, "new reference", c1.String())
		check("create again", pushOne(t, r, RefUpdate{Name: ref, New: c2}), false, true, "stale info", c1.String())
		check("update, right old", pushOne(t, r, RefUpdate{Name: ref, New: c2, Old: c1}), true, false, "", c2.String())
		check("update, wrong old", pushOne(t, r, RefUpdate{Name: ref, New: other, Old: c1}), false, true, "stale info", c2.String())
		check("non-fast-forward, right old", pushOne(t, r, RefUpdate{Name: ref, New: other, Old: c2}), true, false, mode.pick("forced update", "updated"), other.String())
		// Retrying a push that already happened: the remote has New; git says
		// up to date whatever Old was.
		check("already there", pushOne(t, r, RefUpdate{Name: ref, New: other, Old: c2}), true, false, "up to date", other.String())
		check("delete, wrong old", pushOne(t, r, RefUpdate{Name: ref, Old: c1}), false, true, "stale info", other.String())
		check("delete, right old", pushOne(t, r, RefUpdate{Name: ref, Old: other}), true, false, "deleted", "")
		check("delete, already gone", pushOne(t, r, RefUpdate{Name: ref, Old: other}), false, true, "stale info", "")
		check("update of a missing ref", pushOne(t, r, RefUpdate{Name: ref, New: c1, Old: c2}), false, true, "stale info", "")
		check("create after delete", pushOne(t, r, RefUpdate{Name: ref, New: c2}), true, false, "new reference", c2.String())

		// Invalid updates fail before git runs.
		for _, bad := range [][]RefUpdate{
			{{Name: ref}}, // delete "if absent": the server would delete unconditionally
			{{Name: "HEAD", New: c1}},
			{{Name: "refs/ci/a..b", New: c1}},
			{{Name: "refs/ci/x", New: c1}, {Name: "refs/ci/x", New: c2}},
		} {
			if res, err := r.Push(context.Background(), bad, false); err == nil {
				t.Errorf("Push(%+v) = %+v, want an error", bad, res)
			}
		}
		if res, err := r.Push(context.Background(), nil, true); res != nil || err != nil {
			t.Errorf("empty push: %v %v", res, err)
		}
		fsckStrict(t, remote)
	})
}

func TestRemotePushSeveral(t *testing.T) {
	t.Parallel()
	bothPushModes(t, func(t *testing.T, mode pushMode) {
		remote := fixtures.BareRepo(t, "remote.git")
		r := mode.open(t, remote)
		c1 := mkCommit(t, r.Cache, "one")
		c2 := mkCommit(t, r.Cache, "two")
		c3 := mkCommit(t, r.Cache, "three")
		res, err := r.Push(context.Background(), []RefUpdate{
			{Name: "refs/ci/x/b", New: c1},
			{Name: "refs/ci/x/d", New: c2},
		}, false)
		if err != nil || !res[0].OK || !res[1].OK {
			t.Fatalf("setup: %+v %v", res, err)
		}
		// Mixed outcomes, reported per ref in the order given (git prints
		// them grouped by status).
		updates := []RefUpdate{
			{Name: "refs/ci/x/z", New: c1},             // created
			{Name: "refs/ci/x/b", New: c2},             // stale: exists
			{Name: "refs/ci/x/a", New: c3, Old: c1},    // stale: missing
			{Name: "refs/ci/x/d", New: c3, Old: c2},    // updated
			{Name: "refs/ci/x/c", New: c2},             // created
			{Name: "refs/ci/x/b2", Old: c3},            // stale: delete a missing ref
			{Name: "refs/ci/x/d2/e", New: c1, Old: c2}, // stale
		}
		res, err = r.Push(context.Background(), updates, false)
		if err != nil {
			t.Fatal(err)
		}
		want := []struct{ ok, stale bool }{{true, false}, {false, true}, {false, true}, {true, false}, {true, false}, {false, true}, {false, true}}
		for i, u := range updates {
			if res[i].Name != u.Name || res[i].OK != want[i].ok || res[i].Stale != want[i].stale {
				t.Errorf("result %d = %+v, want %s OK=%v Stale=%v", i, res[i], u.Name, want[i].ok, want[i].stale)
			}
		}
		got := map[string]string{}
		for _, n := range refNames(t, remote) {
			got[n] = refOf(t, remote, n)
		}
		wantRefs := map[string]string{"refs/ci/x/b": c1.String(), "refs/ci/x/c": c2.String(), "refs/ci/x/d": c3.String(), "refs/ci/x/z": c1.String()}
		if fmt.Sprint(got) != fmt.Sprint(wantRefs) {
			t.Errorf("remote refs = %v, want %v", got, wantRefs)
		}

		// Atomic: one stale update fails them all, and the result says which.
		atomic := []RefUpdate{
			{Name: "refs/ci/y/new", New: c1},
			{Name: "refs/ci/x/b", New: c3, Old: c2}, // stale
			{Name: "refs/ci/x/d", Old: c3},          // would delete
		}
		res, err = r.Push(context.Background(), atomic, true)
		if err != nil {
			t.Fatal(err)
		}
		for i, rr := range res {
			if rr.OK || rr.Name != atomic[i].Name || rr.Stale != (i == 1) {
				t.Errorf("atomic result %d = %+v", i, rr)
			}
			if i != 1 && rr.Message != "atomic push failed" {
				t.Errorf("atomic result %d message %q", i, rr.Message)
			}
		}
		if refOf(t, remote, "refs/ci/y/new") != "" || refOf(t, remote, "refs/ci/x/d") != c3.String() {
			t.Error("an atomic push that failed changed the remote")
		}
		// Atomic, all good.
		atomic[1].Old = c1
		res, err = r.Push(context.Background(), atomic, true)
		if err != nil {
			t.Fatal(err)
		}
		for i, rr := range res {
			if !rr.OK {
				t.Errorf("atomic result %d = %+v", i, rr)
			}
		}
		if refOf(t, remote, "refs/ci/y/new") != c1.String() || refOf(t, remote, "refs/ci/x/b") != c3.String() || refOf(t, remote, "refs/ci/x/d") != "" {
			t.Error("the atomic push was not applied")
		}
	})
}

// TestRemotePushRefusedByServer: a remote whose hook declines, and one
// that does not offer atomic pushes.
func TestRemotePushRefusedByServer(t *testing.T) {
	t.Parallel()
	remote := fixtures.BareRepo(t, "remote.git")
	fixtures.WriteFile(t, remote, "hooks/pre-receive", "#!/bin/sh\necho no pushes to this remote today >&2\nexit 1\n", 0o755)
	r := openTestRemote(t, "file://"+remote)
	c := mkCommit(t, r.Cache, "c")
	res := pushOne(t, r, RefUpdate{Name: "refs/ci/x", New: c})
	if res.OK || res.Stale || res.Message != "pre-receive hook declined" || !strings.Contains(res.Detail, "no pushes to this remote today") {
		t.Errorf("hook: %+v", res)
	}
	os.Remove(filepath.Join(remote, "hooks", "pre-receive"))

	fixtures.Git(t, remote, "config", "receive.advertiseAtomic", "false")
	_, err := r.Push(context.Background(), []RefUpdate{{Name: "refs/ci/x", New: c}}, true)
	if re := remoteErr(t, err); re.Kind != KindRejected || !strings.Contains(err.Error(), "atomic") {
		t.Errorf("atomic unsupported: kind %q: %v", re.Kind, err)
	}
	t.Logf("atomic unsupported: %v", err)
	if refOf(t, remote, "refs/ci/x") != "" {
		t.Error("the push was applied")
	}
	if res := pushOne(t, r, RefUpdate{Name: "refs/ci/x", New: c}); !res.OK {
		t.Errorf("non-atomic push: %+v", res)
	}
}

// TestRemotePushOverUnknownCommit updates a ref whose current value this
// cache has never seen (another worker made it): the lease needs only the
// id, and git sends the whole new history.
func TestRemotePushOverUnknownCommit(t *testing.T) {
	t.Parallel()
	bothPushModes(t, func(t *testing.T, mode pushMode) {
		remote := fixtures.BareRepo(t, "remote.git")
		w1 := mode.open(t, remote)
		w2 := mode.open(t, remote)
		a := mkCommit(t, w1.Cache, "from worker 1")
		if res := pushOne(t, w1, RefUpdate{Name: "refs/ci/claims/x", New: a}); !res.OK {
			t.Fatal(res)
		}
		b := mkCommit(t, w2.Cache, "from worker 2")
		if res := pushOne(t, w2, RefUpdate{Name: "refs/ci/claims/x", New: b, Old: a}); !res.OK {
			t.Fatalf("takeover: %+v", res)
		}
		if refOf(t, remote, "refs/ci/claims/x") != b.String() {
			t.Fatal("takeover not applied")
		}
		// A commit missing from the cache: a failure, neither OK nor stale.
		missing := mkCommit(t, fixtures.BareRepo(t, "elsewhere"), "not in the cache")
		res := pushOne(t, w2, RefUpdate{Name: "refs/ci/claims/y", New: missing})
		if res.OK || res.Stale || !strings.Contains(res.Detail, missing.String()) {
			t.Errorf("missing object: %+v", res)
		}
		fsckStrict(t, remote)
	})
}

// TestRemotePushRace: workers with their own caches race to create the
// same ref; exactly one wins and the others see a stale CAS.
func TestRemotePushRace(t *testing.T) {
	t.Parallel()
	bothPushModes(t, func(t *testing.T, mode pushMode) {
		remote := fixtures.BareRepo(t, "remote.git")
		const workers = 8
		rs := make([]*Remote, workers)
		commits := make([]Hash, workers)
		for i := range rs {
			rs[i] = mode.open(t, "file://"+remote)
			commits[i] = mkCommit(t, rs[i].Cache, fmt.Sprintf("claim by worker %d", i))
		}
		for round := 0; round < 3; round++ {
			ref := fmt.Sprintf("refs/ci/claims/race%d", round)
			results := make([]PushResult, workers)
			errs := make([]error, workers)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range rs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					res, err := rs[i].Push(context.Background(), []RefUpdate{{Name: ref, New: commits[i]}}, false)
					errs[i] = err
					if err == nil {
						results[i] = res[0]
					}
				}()
			}
			close(start)
			wg.Wait()
			winner := -1
			for i := range rs {
				if errs[i] != nil {
					t.Fatalf("worker %d: %v", i, errs[i])
				}
				switch {
				case results[i].OK:
					if winner >= 0 {
						t.Fatalf("round %d: workers %d and %d both won", round, winner, i)
					}
					winner = i
				case !results[i].Stale:
					t.Errorf("round %d worker %d: a failure that is not a lost CAS: %+v", round, i, results[i])
				default:
					t.Logf("round %d worker %d lost: %s %s", round, i, results[i].Message, results[i].Detail)
				}
			}
			if winner < 0 {
				t.Fatalf("round %d: nobody won: %+v", round, results)
			}
			if got := refOf(t, remote, ref); got != commits[winner].String() {
				t.Fatalf("round %d: remote has %s, the winner pushed %s", round, got, commits[winner])
			}
		}
		fsckStrict(t, remote)
	})
}

func TestRemoteListRemote(t *testing.T) {
	t.Parallel()
	remote := fixtures.BareRepo(t, "remote.git")
	a := mkCommit(t, remote, "a")
	b := mkCommit(t, remote, "b")
	refs := map[string]Hash{
		"refs/ci/runs/t1/r1":  a,
		"refs/ci/runs/t1/r2":  b,
		"refs/ci/runs/t10/r1": b,
		"refs/ci/claims/x":    a,
		"refs/heads/main":     b,
	}
	for n, h := range refs {
		setRef(t, remote, n, h)
	}
	fixtures.Git(t, remote, "tag", "-a", "-m", "tag", "v1", a.String())
	r := openTestRemote(t, remote)
	got, err := r.ListRemote(context.Background(), "refs/ci/runs/t1/", "refs/ci/claims/x")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Hash{"refs/ci/runs/t1/r1": a, "refs/ci/runs/t1/r2": b, "refs/ci/claims/x": a}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ListRemote = %v, want %v", got, want)
	}
	all, err := r.ListRemote(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(refs)+1 || all["refs/heads/main"] != b {
		t.Errorf("ListRemote() = %v", all)
	}
	none, err := r.ListRemote(context.Background(), "refs/ci/requests/")
	if err != nil || len(none) != 0 {
		t.Errorf("ListRemote(missing) = %v, %v", none, err)
	}
	if len(refNames(t, r.Cache)) != 0 {
		t.Error("ListRemote wrote refs into the cache")
	}
	if _, err := fixtures.RunGit(r.Cache, nil, nil, "cat-file", "-e", a.String()); err == nil {
		t.Error("ListRemote fetched objects")
	}
	if _, err := r.ListRemote(context.Background(), "refs/ci/*"); err == nil {
		t.Error("a prefix with a wildcard was accepted")
	}
	empty := openTestRemote(t, fixtures.BareRepo(t, "empty.git"))
	if m, err := empty.ListRemote(context.Background(), "refs/"); err != nil || len(m) != 0 {
		t.Errorf("empty remote: %v %v", m, err)
	}
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"https://user:pass@example.com/x.git":             "https://user:***@example.com/x.git",
		"https://user:p%40ss@example.com:8443/x.git":      "https://user:***@example.com:8443/x.git",
		"https://x-access-token:ghp_abc@github.com/o/r":   "https://x-access-token:***@github.com/o/r",
		"https://user@example.com/x.git":                  "https://user@example.com/x.git",
		"https://:secret@example.com":                     "https://:***@example.com",
		"https://example.com/a@b:c":                       "https://example.com/a@b:c",
		"ssh://git@example.com:22/x.git":                  "ssh://git@example.com:22/x.git",
		"ssh://git:pw@example.com/x.git":                  "ssh://git:***@example.com/x.git",
		"git@example.com:x.git":                           "git@example.com:x.git",
		"/srv/git/x.git":                                  "/srv/git/x.git",
		"file:///srv/git/x.git":                           "file:///srv/git/x.git",
		"fatal: unable to access 'https://u:p@h/x/': 403": "fatal: unable to access 'https://u:***@h/x/': 403",
		"a https://u:p@h b http://v:q@i":                  "a https://u:***@h b http://v:***@i",
		"":                                                "",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSplitCredentials(t *testing.T) {
	t.Parallel()
	u, secret, err := splitCredentials("https://user:p%40ss@example.com/x.git")
	if err != nil || u != "https://user@example.com/x.git" || secret == nil || *secret != "p@ss" {
		t.Errorf("got %q %v %v", u, secret, err)
	}
	for _, in := range []string{"https://user@example.com/x", "/srv/x.git", "git@host:x.git", "https://example.com/a:b@c"} {
		if u, secret, err := splitCredentials(in); u != in || secret != nil || err != nil {
			t.Errorf("splitCredentials(%q) = %q %v %v", in, u, secret, err)
		}
	}
	if _, _, err := splitCredentials("https://u:a%0Ab@h/x"); err == nil {
		t.Error("a password with a newline was accepted")
	}
}

// TestRemoteCredentialHelper checks that a password from the URL reaches
// git's credential machinery (and replaces the configured helpers).
func TestRemoteCredentialHelper(t *testing.T) {
	t.Parallel()
	r := &Remote{URL: "https://user:s3cret%21@example.com/x.git", Cache: t.TempDir(),
		Env: remoteEnv("GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=credential.helper", "GIT_CONFIG_VALUE_0=!echo password=wrong")}
	_, secret, err := splitCredentials(r.URL)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("git", "credential", "fill")
	cmd.Env = r.environ(secret)
	cmd.Stdin = strings.NewReader("protocol=https\nhost=example.com\nusername=user\n\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git credential fill: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "password=s3cret!\n") {
		t.Fatalf("git credential fill gave:\n%s", out)
	}
}

func TestRemoteErrors(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	// A missing local repository.
	r := openTestRemote(t, filepath.Join(base, "nope.git"))
	err := r.Fetch(context.Background(), "+refs/ci/requests/*:refs/ci/requests/*")
	re := remoteErr(t, err)
	if re.Kind != KindNotFound || re.Op != "fetch" || !errors.Is(err, ErrNotFound) ||
		!strings.Contains(err.Error(), filepath.Join(base, "nope.git")) || strings.Contains(err.Error(), "\n") {
		t.Errorf("missing repository: kind %q: %v", re.Kind, err)
	}
	t.Logf("missing repository: %v", err)
	_, err = r.Push(context.Background(), []RefUpdate{{Name: "refs/ci/x", New: mkCommit(t, r.Cache, "x")}}, false)
	if re := remoteErr(t, err); re.Kind != KindNotFound || re.Op != "push" {
		t.Errorf("push to a missing repository: %v", err)
	}
	if _, err := r.ListRemote(context.Background(), "refs/"); remoteErr(t, err).Kind != KindNotFound {
		t.Errorf("ls-remote of a missing repository: %v", err)
	}

	// An https remote with a password in the URL that refuses connections:
	// the password is in neither the error nor git's argv.
	trace := filepath.Join(base, "trace")
	hr := openTestRemote(t, "https://alice:tok3n-s3cret@127.0.0.1:1/x.git", "GIT_TRACE="+trace)
	if _, err := exec.LookPath(filepath.Join(gitExecPath(t), "git-remote-https")); err != nil {
		t.Skip("git has no https transport")
	}
	_, err = hr.ListRemote(context.Background(), "refs/ci/")
	re = remoteErr(t, err)
	msg := err.Error()
	t.Logf("https, connection refused: %s", msg)
	if re.Kind != KindUnreachable || strings.Contains(msg, "tok3n") || !strings.Contains(msg, "https://alice:***@127.0.0.1:1/x.git") {
		t.Errorf("https: kind %q: %s", re.Kind, msg)
	}
	if b, err := os.ReadFile(trace); err != nil || strings.Contains(string(b), "tok3n") || !strings.Contains(string(b), "https://alice@127.0.0.1:1/x.git") {
		t.Errorf("GIT_TRACE (%v) shows the password or not the URL:\n%s", err, b)
	}
}

func gitExecPath(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// TestRemoteDisappears: a remote that goes away and comes back.
func TestRemoteDisappears(t *testing.T) {
	t.Parallel()
	bothPushModes(t, func(t *testing.T, mode pushMode) {
		remote := fixtures.BareRepo(t, "remote.git")
		setRef(t, remote, "refs/ci/requests/a", mkCommit(t, remote, "a"))
		r := mode.open(t, "file://"+remote)
		spec := "+refs/ci/requests/*:refs/ci/requests/*"
		if err := r.Fetch(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		c := mkCommit(t, r.Cache, "c")
		away := remote + ".away"
		if err := os.Rename(remote, away); err != nil {
			t.Fatal(err)
		}
		err := r.Fetch(context.Background(), spec)
		if re := remoteErr(t, err); re.Kind != KindNotFound && re.Kind != KindUnreachable {
			t.Errorf("fetch from a vanished remote: %v", err)
		}
		if _, err := r.Push(context.Background(), []RefUpdate{{Name: "refs/ci/claims/a", New: c}}, false); err == nil {
			t.Error("push to a vanished remote succeeded")
		} else if re := remoteErr(t, err); re.Kind != KindNotFound {
			t.Errorf("push to a vanished remote: kind %q: %v", re.Kind, err)
		}
		if refOf(t, r.Cache, "refs/ci/requests/a") == "" {
			t.Error("a failed fetch pruned the cache")
		}
		if err := os.Rename(away, remote); err != nil {
			t.Fatal(err)
		}
		if err := r.Fetch(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		if res := pushOne(t, r, RefUpdate{Name: "refs/ci/claims/a", New: c}); !res.OK {
			t.Fatalf("push after the remote came back: %+v", res)
		}
	})
}

// TestRemoteContextCancel: a remote that never answers (an "ssh" that
// hangs) is abandoned when the context ends, and the transport process is
// killed with git.
func TestRemoteContextCancel(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	script := filepath.Join(dir, "fake-ssh")
	fixtures.WriteFile(t, script, "", "#!/bin/sh\necho $$ > "+pidFile+".tmp && mv "+pidFile+".tmp "+pidFile+"\nexec sleep 60\n", 0o755)
	r := openTestRemote(t, "ssh://example.invalid/x.git", "GIT_SSH_COMMAND="+script)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := r.Fetch(ctx, "+refs/ci/requests/*:refs/ci/requests/*")
	if elapsed := time.Since(start); elapsed > 30*time.Second { // the fake ssh sleeps 60 s
		t.Errorf("Fetch returned after %v", elapsed)
	}
	re := remoteErr(t, err)
	if !errors.Is(err, context.DeadlineExceeded) || re.Kind != KindUnreachable {
		t.Errorf("kind %q: %v", re.Kind, err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("the fake ssh never ran: %v", err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	// The process got SIGTERM before Fetch returned; it is gone, or a
	// zombie waiting for init.
	fixtures.WaitFor(t, 3*time.Second, fmt.Sprintf("the transport (pid %d) to end after the cancelled fetch", pid), func() bool {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		return err != nil || strings.Contains(string(st), ") Z ")
	})
	// A context that is already done runs nothing.
	done, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if err := r.Fetch(done, "+refs/ci/requests/*:refs/ci/requests/*"); !errors.Is(err, context.Canceled) {
		t.Errorf("Fetch with a cancelled context: %v", err)
	}
}

// TestRemoteIgnoresCallerRepoEnv: refci started from a git hook inherits
// GIT_DIR and friends; they must not redirect the cache.
func TestRemoteIgnoresCallerRepoEnv(t *testing.T) {
	other := fixtures.BareRepo(t, "other.git")
	t.Setenv("GIT_DIR", other)
	t.Setenv("GIT_OBJECT_DIRECTORY", filepath.Join(other, "objects"))
	t.Setenv("GIT_CONFIG_PARAMETERS", "'protocol.version'='0'")
	remote := fixtures.BareRepo(t, "remote.git")
	a := mkCommit(t, remote, "a")
	setRef(t, remote, "refs/ci/requests/a", a)
	r := openTestRemote(t, remote)
	if err := r.Fetch(context.Background(), "+refs/ci/requests/*:refs/ci/requests/*"); err != nil {
		t.Fatal(err)
	}
	os.Unsetenv("GIT_DIR")
	os.Unsetenv("GIT_OBJECT_DIRECTORY")
	os.Unsetenv("GIT_CONFIG_PARAMETERS")
	if refOf(t, r.Cache, "refs/ci/requests/a") != a.String() {
		t.Error("the fetch did not go into the cache")
	}
	if len(refNames(t, other)) != 0 {
		t.Error("the fetch went into $GIT_DIR")
	}
}

// TestRemoteConcurrentFetches: fetches into one cache from many
// goroutines do not trip over each other's ref locks.
func TestRemoteConcurrentFetches(t *testing.T) {
	t.Parallel()
	bothPushModes(t, func(t *testing.T, mode pushMode) {
		remote := fixtures.BareRepo(t, "remote.git")
		for i := 0; i < 5; i++ {
			setRef(t, remote, fmt.Sprintf("refs/ci/requests/r%d", i), mkCommit(t, remote, strconv.Itoa(i)))
		}
		r := mode.open(t, remote)
		r2 := &Remote{URL: r.URL, Cache: r.Cache, Env: r.Env, NoDirect: r.NoDirect} // another value, the same cache
		var wg sync.WaitGroup
		errs := make([]error, 6)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rr := r
				if i%2 == 1 {
					rr = r2
				}
				errs[i] = rr.Fetch(context.Background(), "+refs/ci/requests/*:refs/ci/requests/*")
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
		if n := len(refNames(t, r.Cache)); n != 5 {
			t.Errorf("%d refs in the cache", n)
		}
	})
}

func TestParsePorcelain(t *testing.T) {
	t.Parallel()
	h1 := mustHash(t, "8c10b3f7d6ea90e8a67f37c3f1cf66f6ba3b9380")
	h2 := mustHash(t, "9ea751717f3477c962623bc85db45cfb2bf70c89")
	updates := []RefUpdate{
		{Name: "refs/ci/a", New: h1},
		{Name: "refs/ci/b", New: h1},
		{Name: "refs/ci/c", New: h2, Old: h1},
		{Name: "refs/ci/d", Old: h1},
		{Name: "refs/ci/e", New: h1},
		{Name: "refs/ci/f", New: h1, Old: h2},
		{Name: "refs/ci/g", New: h1},
		{Name: "refs/ci/h", New: h1, Old: h2},
	}
	stdout := "To file:///tmp/remote.git\n" +
		"=\t" + h1.String() + ":refs/ci/e\t[up to date]\n" +
		"*\t" + h1.String() + ":refs/ci/a\t[new reference]\n" +
		"+\t" + h2.String() + ":refs/ci/c\t8c10b3f...9ea7517 (forced update)\n" +
		"-\t:refs/ci/d\t[deleted]\n" +
		"!\t" + h1.String() + ":refs/ci/b\t[remote rejected] (failed to update ref)\n" +
		"!\t" + h1.String() + ":refs/ci/f\t[remote rejected] (failed to update ref)\n" +
		"!\t" + h1.String() + ":refs/ci/g\t[remote rejected] (pre-receive hook declined)\n" +
		"!\t" + h1.String() + ":refs/ci/h\t[remote rejected] (failed to update ref)\n" +
		"Done\n"
	stderr := "remote: error: cannot lock ref 'refs/ci/b': reference already exists        \n" +
		"remote: error: cannot lock ref 'refs/ci/f': Unable to create '/tmp/remote.git/./refs/ci/f.lock': File exists.        \n" +
		"remote: no pushing to g        \n" +
		"remote: error: cannot lock ref 'refs/ci/h': unable to write: No space left on device        \n" +
		"error: failed to push some refs to 'file:///tmp/remote.git'\n"
	res, err := parsePorcelain([]byte(stdout), stderr, updates)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		ok, stale bool
		msg       string
	}{
		{true, false, "new reference"},
		{false, true, "failed to update ref"},
		{true, false, "forced update"},
		{true, false, "deleted"},
		{true, false, "up to date"},
		{false, true, "failed to update ref"},
		{false, false, "pre-receive hook declined"},
		{false, false, "failed to update ref"},
	}
	for i, w := range want {
		if res[i].Name != updates[i].Name || res[i].OK != w.ok || res[i].Stale != w.stale || res[i].Message != w.msg {
			t.Errorf("result %d = %+v, want OK=%v Stale=%v Message=%q", i, res[i], w.ok, w.stale, w.msg)
		}
	}
	if !strings.Contains(res[1].Detail, "reference already exists") || !strings.Contains(res[7].Detail, "No space left") {
		t.Errorf("details: %q / %q", res[1].Detail, res[7].Detail)
	}
	if !strings.Contains(res[6].Detail, "no pushing to g") {
		t.Errorf("detail of a hook rejection: %q", res[6].Detail)
	}
	if _, err := parsePorcelain([]byte("To x\nDone\n"), "", updates[:1]); err == nil {
		t.Error("output without the ref parsed")
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	for stderr, want := range map[string]string{
		"fatal: '/x/nope.git' does not appear to be a git repository\nfatal: Could not read from remote repository.":      KindNotFound,
		"remote: Repository not found.\nfatal: repository 'https://github.com/o/r/' not found":                            KindNotFound,
		"fatal: couldn't find remote ref refs/ci/x":                                                                       KindNotFound,
		"git@github.com: Permission denied (publickey).\nfatal: Could not read from remote repository.":                   KindAuth,
		"fatal: could not read Username for 'https://h': terminal prompts disabled":                                       KindAuth,
		"fatal: Authentication failed for 'https://h/x/'":                                                                 KindAuth,
		"Host key verification failed.\nfatal: Could not read from remote repository.":                                    KindAuth,
		"fatal: unable to access 'https://h/x/': The requested URL returned error: 403":                                   KindAuth,
		"ssh: Could not resolve hostname h: Name or service not known\nfatal: Could not read from remote repository.":     KindUnreachable,
		"fatal: unable to access 'https://127.0.0.1:1/x.git/': Failed to connect to 127.0.0.1 port 1: Connection refused": KindUnreachable,
		"fatal: the remote end hung up unexpectedly":                                                                      KindUnreachable,
		"fatal: the receiving end does not support --atomic push":                                                         KindRejected,
		"fatal: something else": KindOther,
	} {
		if got := classify(stderr); got != want {
			t.Errorf("classify(%q) = %s, want %s", stderr, got, want)
		}
	}
}

// TestRemoteTimings prints the median time of a push and of fetches over
// file:// (REFCI_REMOTE_TIMINGS=1 go test -run TestRemoteTimings -v).
func TestRemoteTimings(t *testing.T) {
	if os.Getenv("REFCI_REMOTE_TIMINGS") == "" {
		t.Skip("set REFCI_REMOTE_TIMINGS=1 to measure")
	}
	for _, pulls := range []int{0, 10000} {
		remote := fixtures.BareRepo(t, "remote.git")
		if pulls > 0 {
			addPullRefs(t, remote, pulls, mkCommit(t, remote, "a"))
		}
		w := openTestRemote(t, "file://"+remote)
		poller := openTestRemote(t, "file://"+remote)
		const n = 21
		var push, fetchNew, fetchNone, ls []time.Duration
		var prev Hash
		for i := 0; i < n; i++ {
			c := mkCommit(t, w.Cache, strconv.Itoa(i))
			t0 := time.Now()
			res, err := w.Push(context.Background(), []RefUpdate{{Name: "refs/ci/requests/x", New: c, Old: prev}}, false)
			push = append(push, time.Since(t0))
			if err != nil || !res[0].OK {
				t.Fatal(res, err)
			}
			prev = c
			t0 = time.Now()
			if err := poller.Fetch(context.Background(), "+refs/ci/requests/*:refs/ci/requests/*"); err != nil {
				t.Fatal(err)
			}
			fetchNew = append(fetchNew, time.Since(t0))
			t0 = time.Now()
			if err := poller.Fetch(context.Background(), "+refs/ci/requests/*:refs/ci/requests/*"); err != nil {
				t.Fatal(err)
			}
			fetchNone = append(fetchNone, time.Since(t0))
			t0 = time.Now()
			if _, err := poller.ListRemote(context.Background(), "refs/ci/requests/x"); err != nil {
				t.Fatal(err)
			}
			ls = append(ls, time.Since(t0))
		}
		med := func(d []time.Duration) time.Duration {
			sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
			return d[len(d)/2]
		}
		t.Logf("%d unrelated refs: median of %d: push %v, fetch (1 new commit) %v, fetch (nothing new) %v, ls-remote %v",
			pulls, n, med(push), med(fetchNew), med(fetchNone), med(ls))
	}
}

// A remote on this machine is listed from its files; the answer must be
// git's own, with packed refs, loose refs overriding packed ones, and
// deleted refs.
func TestRemoteListLocalMatchesGit(t *testing.T) {
	t.Parallel()
	remote := fixtures.BareRepo(t, "remote.git")
	a := mkCommit(t, remote, "a")
	b := mkCommit(t, remote, "b")
	for i := range 5 {
		setRef(t, remote, fmt.Sprintf("refs/ci/requests/r%d", i), a)
	}
	setRef(t, remote, "refs/ci/claims/r1", a)
	fixtures.Git(t, remote, "pack-refs", "--all")
	setRef(t, remote, "refs/ci/requests/r2", b) // loose, over its packed value
	setRef(t, remote, "refs/ci/requests/new", b)
	fixtures.Git(t, remote, "update-ref", "-d", "refs/ci/requests/r3") // packed, deleted
	for _, url := range []string{remote, "file://" + remote} {
		r := openTestRemote(t, url)
		if r.LocalDir() != remote {
			t.Fatalf("LocalDir(%s) = %q", url, r.LocalDir())
		}
		got, err := r.ListRemote(context.Background(), "refs/ci/requests/", "refs/ci/claims/")
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]Hash{}
		for _, line := range strings.Split(fixtures.Git(t, remote, "ls-remote", "--refs", remote, "refs/ci/requests/*", "refs/ci/claims/*"), "\n") {
			id, name, _ := strings.Cut(line, "\t")
			want[name] = mustHash(t, id)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) || got["refs/ci/requests/r2"] != b || len(got) != 6 {
			t.Errorf("ListRemote(%s) = %v\nwant (git ls-remote) %v", url, got, want)
		}
	}
	for _, url := range []string{"ssh://host/x.git", "host:x.git", "https://host/x.git", "file://otherhost/x.git"} {
		if d := (&Remote{URL: url}).LocalDir(); d != "" {
			t.Errorf("LocalDir(%s) = %q, want none", url, d)
		}
	}
}

func TestRemoteCollectGarbagePacksLooseObjects(t *testing.T) {
	t.Parallel()
	remote := fixtures.BareRepo(t, "remote.git")
	setRef(t, remote, "refs/heads/main", mkCommit(t, remote, "a"))
	r := openTestRemote(t, remote)
	if err := r.Fetch(context.Background(), "+refs/heads/*:refs/heads/*"); err != nil {
		t.Fatal(err)
	}
	repo, err := Open(r.Cache)
	if err != nil {
		t.Fatal(err)
	}
	// Loose objects nothing refers to yet, as a run in progress leaves
	// them: maintenance must pack or keep them, never drop them.
	// git gc --auto estimates the loose objects from objects/17 alone:
	// write until that sample says more than the limit of 10 (2 files).
	var blobs []Hash
	for i := 0; i < 5000; i++ {
		h, err := repo.WriteBlob([]byte(fmt.Sprintf("blob %d\n", i)))
		if err != nil {
			t.Fatal(err)
		}
		blobs = append(blobs, h)
		if ents, _ := os.ReadDir(filepath.Join(r.Cache, "objects", "17")); len(ents) >= 2 {
			break
		}
	}
	loose := func() string { return fixtures.Git(t, r.Cache, "count-objects") }
	before := loose()
	if err := r.CollectGarbage(context.Background(), 1000, false); err != nil {
		t.Fatal(err)
	}
	if got := loose(); got != before {
		t.Errorf("below the limit, maintenance changed the cache: %q, then %q", before, got)
	}
	if err := r.CollectGarbage(context.Background(), 10, false); err != nil {
		t.Fatal(err)
	}
	if v := fixtures.Git(t, r.Cache, "count-objects", "-v"); !strings.Contains(v, "packs: 1") {
		t.Errorf("over the limit, the cache was not packed:\n%s", v)
	}
	for _, h := range blobs {
		if _, err := fixtures.RunGit(r.Cache, nil, nil, "cat-file", "-e", h.String()); err != nil {
			t.Fatalf("maintenance dropped the fresh object %s", h)
		}
	}
}

// TestRemoteDirectOnlyWhenPushWouldNotDiffer: a local remote with receive
// hooks or receive/transfer settings gets a real git push, so that its
// hooks run and its settings hold; eligibility is looked at again after
// directRecheck.
func TestRemoteDirectOnlyWhenPushWouldNotDiffer(t *testing.T) {
	t.Parallel()
	remote := fixtures.BareRepo(t, "remote.git")
	r := openTestRemote(t, "file://"+remote)
	if ok, why := r.Direct(context.Background()); !ok {
		t.Fatalf("a plain local remote is not updated directly: %s", why)
	}
	if repo, err := r.DirectRepo(context.Background()); err != nil || repo.GitDir() != remote {
		t.Fatalf("DirectRepo() of a plain local remote = %v, %v; want the repository %s", repo, err, remote)
	}
	recheck := func() {
		r.directMu.Lock()
		r.directAt = time.Time{}
		r.directMu.Unlock()
	}
	for _, tc := range []struct {
		setup, undo func()
		why         string
	}{
		{func() { fixtures.WriteFile(t, remote, "hooks/update", "#!/bin/sh\nexit 0\n", 0o755) },
			func() { os.Remove(filepath.Join(remote, "hooks", "update")) }, "update hook"},
		{func() { fixtures.WriteFile(t, remote, "hooks/reference-transaction", "#!/bin/sh\nexit 0\n", 0o755) },
			func() { os.Remove(filepath.Join(remote, "hooks", "reference-transaction")) }, "reference-transaction hook"},
		{func() { fixtures.Git(t, remote, "config", "receive.fsckObjects", "true") },
			func() { fixtures.Git(t, remote, "config", "--unset", "receive.fsckObjects") }, "receive.fsckobjects"},
		{func() { fixtures.Git(t, remote, "config", "transfer.hideRefs", "refs/ci/secret") },
			func() { fixtures.Git(t, remote, "config", "--unset", "transfer.hideRefs") }, "transfer.hiderefs"},
		{func() { fixtures.Git(t, remote, "config", "core.hooksPath", "/elsewhere") },
			func() { fixtures.Git(t, remote, "config", "--unset", "core.hooksPath") }, "core.hookspath"},
	} {
		tc.setup()
		recheck()
		if ok, why := r.Direct(context.Background()); ok || !strings.Contains(why, tc.why) {
			t.Errorf("with %s: Direct() = %v, %q", tc.why, ok, why)
		}
		if repo, err := r.DirectRepo(context.Background()); repo != nil || err == nil || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("with %s: DirectRepo() = %v, %v", tc.why, repo, err)
		}
		tc.undo()
		if ok, _ := r.Direct(context.Background()); ok {
			t.Errorf("with %s undone: Direct() changed before directRecheck", tc.why)
		}
		recheck()
		if ok, why := r.Direct(context.Background()); !ok {
			t.Errorf("with %s undone: Direct() = false, %s", tc.why, why)
		}
	}
	// A hook that is not executable does not run, so it does not count
	// (git says so and ignores it).
	fixtures.WriteFile(t, remote, "hooks/pre-receive", "#!/bin/sh\nexit 1\n", 0o644)
	recheck()
	if ok, why := r.Direct(context.Background()); !ok {
		t.Errorf("a non-executable hook: Direct() = false, %s", why)
	}
	// The hook that refuses, made executable: Push must run it.
	os.Chmod(filepath.Join(remote, "hooks", "pre-receive"), 0o755)
	recheck()
	c := mkCommit(t, r.Cache, "c")
	if res := pushOne(t, r, RefUpdate{Name: "refs/ci/x", New: c}); res.OK || res.Message != "pre-receive hook declined" {
		t.Errorf("push past a refusing pre-receive hook: %+v", res)
	}
	if ok, why := (&Remote{URL: "ssh://example.com/x.git"}).Direct(context.Background()); ok || why != "not on this machine" {
		t.Errorf("ssh remote: %v %q", ok, why)
	}
}

// TestRemoteDirectSendsOnlyWhatIsNew: a direct update sends the new
// objects as one pack bounded by the old values, leaves no .keep behind,
// and the remote passes git fsck --strict with every object reachable.
func TestRemoteDirectSendsOnlyWhatIsNew(t *testing.T) {
	t.Parallel()
	remote := fixtures.BareRepo(t, "remote.git")
	r := openTestRemote(t, remote)
	base := mkCommit(t, r.Cache, "base")
	if res := pushOne(t, r, RefUpdate{Name: "refs/ci/runs/a", New: base}); !res.OK {
		t.Fatal(res)
	}
	packs := func() (n int, keeps []string) {
		ents, _ := os.ReadDir(filepath.Join(remote, "objects", "pack"))
		for _, e := range ents {
			switch filepath.Ext(e.Name()) {
			case ".pack":
				n++
			case ".keep":
				keeps = append(keeps, e.Name())
			}
		}
		return n, keeps
	}
	if n, keeps := packs(); n != 1 || len(keeps) != 0 {
		t.Fatalf("after one push: %d packs, keeps %v", n, keeps)
	}
	next := mkCommit(t, r.Cache, "next", base)
	before := packIndexes(t, remote)
	if res := pushOne(t, r, RefUpdate{Name: "refs/ci/runs/a", New: next, Old: base}); !res.OK {
		t.Fatal(res)
	}
	out := fixtures.Git(t, remote, "verify-pack", "-v", newPack(t, remote, before))
	if strings.Contains(out, base.String()) || !strings.Contains(out, next.String()) {
		t.Errorf("the second pack should hold next and not base:\n%s", out)
	}
	// A deletion sends no objects.
	if res := pushOne(t, r, RefUpdate{Name: "refs/ci/runs/a", Old: next}); !res.OK {
		t.Fatal(res)
	}
	if n, keeps := packs(); n != 2 || len(keeps) != 0 {
		t.Errorf("after a deletion: %d packs, keeps %v", n, keeps)
	}
	fsckStrict(t, remote)
}

// packIndexes lists the .idx files of a repository's packs.
func packIndexes(t *testing.T, gitDir string) map[string]bool {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(gitDir, "objects", "pack"))
	if err != nil {
		t.Fatal(err)
	}
	idx := map[string]bool{}
	for _, e := range ents {
		if filepath.Ext(e.Name()) == ".idx" {
			idx[filepath.Join(gitDir, "objects", "pack", e.Name())] = true
		}
	}
	return idx
}

// newPack is the one pack index that is not in before: told by name, not
// by time stamps, which two packs made within a clock tick share.
func newPack(t *testing.T, gitDir string, before map[string]bool) string {
	t.Helper()
	var added []string
	for p := range packIndexes(t, gitDir) {
		if !before[p] {
			added = append(added, p)
		}
	}
	if len(added) != 1 {
		t.Fatalf("%d new packs in %s, want 1: %v", len(added), gitDir, added)
	}
	return added[0]
}

// TestRemoteDirectLosesRacesLikeAPush: another writer changes refs after a
// direct update read them. The transaction's own compare-and-swap catches
// it: non-atomic, each update is retried alone and only the raced ones
// lose (stale); atomic, nothing is applied.
func TestRemoteDirectLosesRacesLikeAPush(t *testing.T) {
	t.Parallel()
	remote := fixtures.BareRepo(t, "remote.git")
	r := openTestRemote(t, remote)
	c1, c2, c3 := mkCommit(t, r.Cache, "1"), mkCommit(t, r.Cache, "2"), mkCommit(t, r.Cache, "3")
	res, err := r.Push(context.Background(), []RefUpdate{{Name: "refs/ci/a", New: c1}, {Name: "refs/ci/gone", New: c1}}, false)
	if err != nil || !res[0].OK || !res[1].OK {
		t.Fatal(res, err)
	}
	intruder := mkCommit(t, remote, "intruder")
	r.beforeUpdate = func() {
		setRef(t, remote, "refs/ci/a", intruder)                    // update raced
		setRef(t, remote, "refs/ci/b", intruder)                    // create raced
		fixtures.Git(t, remote, "update-ref", "-d", "refs/ci/gone") // delete raced
	}
	updates := []RefUpdate{
		{Name: "refs/ci/a", New: c2, Old: c1},
		{Name: "refs/ci/b", New: c2},
		{Name: "refs/ci/c", New: c3},
		{Name: "refs/ci/gone", Old: c1},
	}
	res, err = r.Push(context.Background(), updates, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("raced: %+v", res)
	for i, want := range []bool{false, false, true, false} {
		if res[i].OK != want || res[i].Stale == want || res[i].Name != updates[i].Name {
			t.Errorf("result %d = %+v, want OK=%v and a lost CAS otherwise", i, res[i], want)
		}
	}
	if refOf(t, remote, "refs/ci/a") != intruder.String() || refOf(t, remote, "refs/ci/b") != intruder.String() || refOf(t, remote, "refs/ci/c") != c3.String() {
		t.Error("the remote's refs are not the intruder's and the one update that did not race")
	}
	// Atomic: the race fails all of it.
	r.beforeUpdate = func() { setRef(t, remote, "refs/ci/c", intruder) }
	updates = []RefUpdate{{Name: "refs/ci/d", New: c1}, {Name: "refs/ci/c", New: c1, Old: c3}}
	res, err = r.Push(context.Background(), updates, true)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].OK || res[0].Message != "atomic push failed" || res[1].OK || !res[1].Stale {
		t.Errorf("atomic race: %+v", res)
	}
	if refOf(t, remote, "refs/ci/d") != "" {
		t.Error("an atomic update that lost a race applied part of it")
	}
	fsckStrict(t, remote)
}

// TestRemoteDirectDeletionsLoseRacesLikeAPush: a push of only deletions
// (refci gc) to a remote on this machine deletes packed refs in one
// rewrite of packed-refs, each with its compare-and-swap: one moved after
// the read, one moved before, one locked by a writer survive, stale.
func TestRemoteDirectDeletionsLoseRacesLikeAPush(t *testing.T) {
	t.Parallel()
	remote := fixtures.BareRepo(t, "remote.git")
	r := openTestRemote(t, remote)
	c1 := mkCommit(t, r.Cache, "1")
	var updates []RefUpdate
	for _, n := range []string{"a", "b", "c", "d", "e", "loose"} {
		updates = append(updates, RefUpdate{Name: "refs/ci/runs/" + n, New: c1})
	}
	if res, err := r.Push(context.Background(), updates, false); err != nil || !res[0].OK {
		t.Fatal(res, err)
	}
	fixtures.Git(t, remote, "pack-refs", "--all")
	setRef(t, remote, "refs/ci/runs/loose", c1) // loose again, same value
	intruder := mkCommit(t, remote, "intruder")
	setRef(t, remote, "refs/ci/runs/b", intruder)
	r.beforeUpdate = func() {
		setRef(t, remote, "refs/ci/runs/c", intruder)
		os.WriteFile(filepath.Join(remote, "refs", "ci", "runs", "d.lock"), nil, 0o644)
	}
	for i := range updates {
		updates[i].New, updates[i].Old = ZeroHash, c1
	}
	res, err := r.Push(context.Background(), updates, false)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, false, false, false, true, true} {
		if res[i].OK != want || res[i].Stale == want || res[i].Name != updates[i].Name {
			t.Errorf("result %d = %+v, want OK=%v and a lost CAS otherwise", i, res[i], want)
		}
	}
	os.Remove(filepath.Join(remote, "refs", "ci", "runs", "d.lock"))
	if left := fixtures.Git(t, remote, "for-each-ref", "--format=%(refname) %(objectname)", "refs/ci/runs/"); left != strings.Join([]string{
		"refs/ci/runs/b " + intruder.String(), "refs/ci/runs/c " + intruder.String(), "refs/ci/runs/d " + c1.String()}, "\n") {
		t.Errorf("left on the remote:\n%s", left)
	}
	fsckStrict(t, remote)
}

// A remote path that is a plain directory inside another repository's
// work tree is no repository for git; it must not become that enclosing
// repository for the direct way (which would update it) or for listing.
func TestRemoteLocalPathIsNotItsParentRepository(t *testing.T) {
	t.Parallel()
	outer := filepath.Join(t.TempDir(), "outer")
	fixtures.Git(t, filepath.Dir(outer), "init", "-q", outer)
	inner := filepath.Join(outer, "not-a-repo")
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	r := openTestRemote(t, "file://"+inner)
	if ok, _ := r.Direct(context.Background()); ok {
		t.Fatal("a plain directory inside a work tree is updated directly")
	}
	c := mkCommit(t, r.Cache, "c")
	if _, err := r.Push(context.Background(), []RefUpdate{{Name: "refs/ci/claims/x", New: c}}, false); err == nil {
		t.Error("a push to a directory that is no repository succeeded")
	}
	if refOf(t, filepath.Join(outer, ".git"), "refs/ci/claims/x") != "" {
		t.Error("the push landed in the enclosing repository")
	}
	if _, ok := r.listLocal([]string{"refs/"}); ok {
		t.Error("the enclosing repository's refs were listed as the remote's")
	}
}

// A fetch from a remote on this machine whose refs the cache mirrors
// already starts no git at all, either way: an idle local remote (every
// repository of refci serve) costs nothing to poll.
func TestRemoteFetchOfAnIdleLocalRemoteRunsNoGit(t *testing.T) {
	t.Parallel()
	bothPushModes(t, func(t *testing.T, mode pushMode) {
		remote := fixtures.BareRepo(t, "remote.git")
		setRef(t, remote, "refs/ci/requests/a", mkCommit(t, remote, "a"))
		r := mode.open(t, remote)
		spec := "+refs/ci/requests/*:refs/ci/requests/*"
		if err := r.Fetch(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		trace := filepath.Join(t.TempDir(), "trace")
		r.Env = append(r.Env, "GIT_TRACE="+trace)
		if err := r.Fetch(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(trace); err == nil {
			t.Errorf("a fetch with nothing new ran git:\n%s", b)
		}
		// Something new: git runs again (in the direct way, for the
		// eligibility check and the ref transaction at least).
		setRef(t, remote, "refs/ci/requests/b", mkCommit(t, remote, "b"))
		if err := r.Fetch(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
		if refOf(t, r.Cache, "refs/ci/requests/b") == "" {
			t.Error("the new request was not fetched")
		}
		if _, err := os.Stat(trace); err != nil {
			t.Errorf("a fetch of something new left no git trace: %v", err)
		}
	})
}
