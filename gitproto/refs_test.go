package gitproto

import (
	"context"
	"errors"
	"fmt"
	"github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
)

// refsFixture is a repository with three commits on main.
type refsFixture struct {
	dir        string
	c1, c2, c3 Hash
}

func newRefsFixture(t *testing.T) *refsFixture {
	t.Helper()
	f := &refsFixture{dir: fixtures.NewRepo(t)}
	fixtures.WriteFile(t, f.dir, "f", "1\n", 0o644)
	f.c1 = mustHash(t, fixtures.CommitAll(t, f.dir, "one"))
	fixtures.WriteFile(t, f.dir, "f", "2\n", 0o644)
	f.c2 = mustHash(t, fixtures.CommitAll(t, f.dir, "two"))
	fixtures.WriteFile(t, f.dir, "f", "3\n", 0o644)
	f.c3 = mustHash(t, fixtures.CommitAll(t, f.dir, "three"))
	return f
}

// gitRef is what git says ref points to, or "" if it does not exist.
func gitRef(t *testing.T, dir, ref string) string {
	t.Helper()
	out, err := fixtures.RunGit(dir, nil, nil, "rev-parse", "-q", "--verify", ref)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func packRefs(t *testing.T, dir string) {
	t.Helper()
	fixtures.Git(t, dir, "pack-refs", "--all", "--prune")
}

func noLocks(t *testing.T, gitDir string) {
	t.Helper()
	filepath.WalkDir(filepath.Join(gitDir, "refs"), func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".lock") {
			t.Errorf("lock file left behind: %s", p)
		}
		return nil
	})
	if _, err := os.Stat(filepath.Join(gitDir, "packed-refs.lock")); err == nil {
		t.Errorf("packed-refs.lock left behind")
	}
}

func TestCreateRef(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	r := openRepo(t, f.dir)
	const name = "refs/ci/requests/alice/topic"
	if err := r.CreateRef(name, f.c1); err != nil {
		t.Fatalf("CreateRef on an absent ref: %v", err)
	}
	if got := gitRef(t, f.dir, name); got != f.c1.String() {
		t.Errorf("git rev-parse %s = %q, want %s", name, got, f.c1)
	}
	b, err := os.ReadFile(filepath.Join(f.dir, ".git", filepath.FromSlash(name)))
	if err != nil || string(b) != f.c1.String()+"\n" {
		t.Errorf("loose ref file = %q, %v; want %q", b, err, f.c1.String()+"\n")
	}
	if got := fixtures.Git(t, f.dir, "for-each-ref", "--format=%(refname) %(objectname)", "refs/ci/"); got != name+" "+f.c1.String() {
		t.Errorf("git for-each-ref refs/ci/ = %q", got)
	}
	for _, h := range []Hash{f.c2, f.c1} { // a different value, and the same value
		if err := r.CreateRef(name, h); !errors.Is(err, ErrRefExists) {
			t.Errorf("CreateRef(%s) on an existing ref = %v, want ErrRefExists", h, err)
		}
	}
	if got := gitRef(t, f.dir, name); got != f.c1.String() {
		t.Errorf("after refused creations, %s = %q, want %s", name, got, f.c1)
	}
	if h, err := r.RefHash(name); err != nil || h != f.c1 {
		t.Errorf("RefHash = %s, %v", h, err)
	}
	noLocks(t, filepath.Join(f.dir, ".git"))
	fsckStrict(t, f.dir)
}

func TestCreateRefPackedExists(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	const name = "refs/ci/claims/pr/42"
	fixtures.Git(t, f.dir, "update-ref", name, f.c1.String())
	packRefs(t, f.dir)
	if _, err := os.Stat(filepath.Join(f.dir, ".git", filepath.FromSlash(name))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("fixture: the ref is still loose after pack-refs (%v)", err)
	}
	r := openRepo(t, f.dir)
	if err := r.CreateRef(name, f.c2); !errors.Is(err, ErrRefExists) {
		t.Errorf("CreateRef of a packed ref = %v, want ErrRefExists", err)
	}
	if got := gitRef(t, f.dir, name); got != f.c1.String() {
		t.Errorf("%s = %q, want %s", name, got, f.c1)
	}
	if h, err := r.RefHash(name); err != nil || h != f.c1 {
		t.Errorf("RefHash of a packed ref = %s, %v; want %s", h, err, f.c1)
	}
	noLocks(t, filepath.Join(f.dir, ".git"))
}

func TestUpdateRefCompareAndSwap(t *testing.T) {
	t.Parallel()
	for _, packed := range []bool{false, true} {
		t.Run(fmt.Sprintf("packed=%v", packed), func(t *testing.T) {
			t.Parallel()
			f := newRefsFixture(t)
			const name = "refs/ci/claims/x"
			fixtures.Git(t, f.dir, "update-ref", name, f.c1.String())
			if packed {
				packRefs(t, f.dir)
			}
			r := openRepo(t, f.dir)
			if err := r.UpdateRef(name, f.c3, f.c2); !errors.Is(err, ErrRefChanged) {
				t.Errorf("UpdateRef with a wrong old value = %v, want ErrRefChanged", err)
			}
			if got := gitRef(t, f.dir, name); got != f.c1.String() {
				t.Errorf("after a lost CAS, %s = %q, want %s", name, got, f.c1)
			}
			if err := r.UpdateRef(name, f.c3, ZeroHash); !errors.Is(err, ErrRefExists) {
				t.Errorf("UpdateRef expecting absence = %v, want ErrRefExists", err)
			}
			if err := r.UpdateRef(name, f.c2, f.c1); err != nil {
				t.Fatalf("UpdateRef with the right old value: %v", err)
			}
			if got := gitRef(t, f.dir, name); got != f.c2.String() {
				t.Errorf("after the CAS, git sees %s = %q, want %s", name, got, f.c2)
			}
			if h, err := r.RefHash(name); err != nil || h != f.c2 {
				t.Errorf("RefHash = %s, %v; want %s", h, err, f.c2)
			}
			// The old value is stale now (it may still be in packed-refs).
			if err := r.UpdateRef(name, f.c3, f.c1); !errors.Is(err, ErrRefChanged) {
				t.Errorf("UpdateRef with the previous value = %v, want ErrRefChanged", err)
			}
			if err := r.UpdateRef(name, f.c3, f.c2); err != nil {
				t.Errorf("second CAS: %v", err)
			}
			if got := gitRef(t, f.dir, name); got != f.c3.String() {
				t.Errorf("%s = %q, want %s", name, got, f.c3)
			}
			noLocks(t, filepath.Join(f.dir, ".git"))
			fsckStrict(t, f.dir)
		})
	}
}

func TestUpdateRefAbsentWithOldValue(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	r := openRepo(t, f.dir)
	if err := r.UpdateRef("refs/ci/claims/gone", f.c2, f.c1); !errors.Is(err, ErrRefChanged) {
		t.Errorf("UpdateRef of an absent ref expecting a value = %v, want ErrRefChanged", err)
	}
	if got := gitRef(t, f.dir, "refs/ci/claims/gone"); got != "" {
		t.Errorf("the ref was created: %s", got)
	}
	noLocks(t, filepath.Join(f.dir, ".git"))
}

func TestUpdateRefDeleteLoose(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	r := openRepo(t, f.dir)
	const name = "refs/ci/requests/done"
	if err := r.CreateRef(name, f.c1); err != nil {
		t.Fatal(err)
	}
	if err := r.UpdateRef(name, ZeroHash, f.c2); !errors.Is(err, ErrRefChanged) {
		t.Errorf("delete with a wrong old value = %v, want ErrRefChanged", err)
	}
	if got := gitRef(t, f.dir, name); got != f.c1.String() {
		t.Fatalf("a refused delete changed the ref to %q", got)
	}
	if err := r.UpdateRef(name, ZeroHash, f.c1); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if got := gitRef(t, f.dir, name); got != "" {
		t.Errorf("after delete, git still sees %s = %s", name, got)
	}
	if _, err := r.RefHash(name); !errors.Is(err, ErrNotFound) {
		t.Errorf("RefHash after delete = %v, want ErrNotFound", err)
	}
	// The name can be created again.
	if err := r.CreateRef(name, f.c3); err != nil {
		t.Errorf("CreateRef after delete: %v", err)
	}
	noLocks(t, filepath.Join(f.dir, ".git"))
	fsckStrict(t, f.dir)
}

// TestUpdateRefDeletePacked: a packed ref is deleted from packed-refs, the
// other packed refs staying, and only with the right old value.
func TestUpdateRefDeletePacked(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	const name = "refs/ci/requests/packed"
	fixtures.Git(t, f.dir, "update-ref", name, f.c1.String())
	fixtures.Git(t, f.dir, "update-ref", "refs/ci/requests/other", f.c2.String())
	packRefs(t, f.dir)
	r := openRepo(t, f.dir)
	if err := r.UpdateRef(name, ZeroHash, f.c2); !errors.Is(err, ErrRefChanged) {
		t.Errorf("UpdateRef(delete) of a packed ref with the wrong old value: %v, want ErrRefChanged", err)
	}
	if err := r.UpdateRef(name, ZeroHash, f.c1); err != nil {
		t.Fatalf("UpdateRef(delete) of a packed ref: %v", err)
	}
	if got := gitRef(t, f.dir, name); got != "" {
		t.Errorf("after the delete git still sees %s = %s", name, got)
	}
	if got := gitRef(t, f.dir, "refs/ci/requests/other"); got != f.c2.String() {
		t.Errorf("the other packed ref reads %q after the delete, want %s", got, f.c2)
	}
	noLocks(t, filepath.Join(f.dir, ".git"))
	fsckStrict(t, f.dir)
}

// TestUpdateRefDeleteResurrectsPacked: a loose ref that shadows an older
// packed value (the normal state after a CAS on a packed ref) must not
// fall back to the old packed value when deleted.
func TestUpdateRefDeleteResurrectsPacked(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	const name = "refs/ci/claims/lease"
	fixtures.Git(t, f.dir, "update-ref", name, f.c1.String())
	packRefs(t, f.dir)
	r := openRepo(t, f.dir)
	if err := r.UpdateRef(name, f.c2, f.c1); err != nil { // now loose c2 over packed c1
		t.Fatal(err)
	}
	err := r.UpdateRef(name, ZeroHash, f.c2)
	if err != nil {
		t.Fatalf("UpdateRef(delete) of a loose ref over a packed one: %v", err)
	}
	got := gitRef(t, f.dir, name)
	if got != "" {
		t.Errorf("UpdateRef(delete) returned nil, but the ref now reads %s (the old packed value; c1=%s)", got, f.c1)
	}
	if h, herr := r.RefHash(name); err == nil && herr == nil {
		t.Errorf("RefHash after a successful delete = %s, want ErrNotFound", h)
	}
}

func TestUpdateRefStaleLock(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	r := openRepo(t, f.dir)
	gitDir := filepath.Join(f.dir, ".git")
	const existing, absent = "refs/ci/claims/held", "refs/ci/claims/new"
	if err := r.CreateRef(existing, f.c1); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{existing, absent} {
		lock := filepath.Join(gitDir, filepath.FromSlash(name)) + ".lock"
		if err := os.WriteFile(lock, []byte("someone else's\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.UpdateRef(existing, f.c2, f.c1); !errors.Is(err, ErrRefChanged) {
		t.Errorf("UpdateRef with a stale lock = %v, want ErrRefChanged", err)
	}
	if err := r.UpdateRef(existing, ZeroHash, f.c1); !errors.Is(err, ErrRefChanged) {
		t.Errorf("delete with a stale lock = %v, want ErrRefChanged", err)
	}
	if err := r.CreateRef(absent, f.c2); !errors.Is(err, ErrRefChanged) {
		t.Errorf("CreateRef with a stale lock = %v, want ErrRefChanged", err)
	}
	if got := gitRef(t, f.dir, existing); got != f.c1.String() {
		t.Errorf("%s = %q, want it untouched at %s", existing, got, f.c1)
	}
	if got := gitRef(t, f.dir, absent); got != "" {
		t.Errorf("%s was created (%s) despite the lock", absent, got)
	}
	for _, name := range []string{existing, absent} {
		lock := filepath.Join(gitDir, filepath.FromSlash(name)) + ".lock"
		if b, err := os.ReadFile(lock); err != nil || string(b) != "someone else's\n" {
			t.Errorf("the other process's lock %s was touched: %q, %v", lock, b, err)
		}
	}
	// The lock file is not a ref.
	refs, err := r.Refs("refs/ci/claims/")
	if err != nil || len(refs) != 1 || refs[0].Name != existing {
		t.Errorf("Refs with lock files around = %v, %v", refs, err)
	}
}

func TestUpdateRefInvalidNames(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	r := openRepo(t, f.dir)
	names := []string{
		"", "HEAD", "main", "heads/main", "refs", "refs/", "refs/ci/", "/refs/ci/x", "refs/ci//x", "refs/ci/x/",
		"refs/heads/x.lock", "refs/ci/x.lock/y", "refs/ci/a..b", "refs/ci/.hidden", "refs/ci/x.",
		"refs/ci/sp ace", "refs/ci/tab\tx", "refs/ci/nl\nx", "refs/ci/x\x7f", "refs/ci/x\x01",
		"refs/ci/x~1", "refs/ci/x^", "refs/ci/x:y", "refs/ci/x?", "refs/ci/x*", "refs/ci/x[", "refs/ci/x\\y",
		"refs/ci/a@{b", "refs/../escape", "refs/ci/../../escape", "refs/ci/runs/../../../../escape",
	}
	for _, name := range names {
		if strings.HasPrefix(name, "refs/") {
			if out, err := fixtures.RunGit(f.dir, nil, nil, "check-ref-format", name); err == nil {
				t.Fatalf("fixture: git accepts %q (%s)", name, out)
			}
		}
		if err := r.UpdateRef(name, f.c1, ZeroHash); err == nil {
			t.Errorf("UpdateRef(%q) succeeded", name)
		} else if errors.Is(err, ErrRefExists) || errors.Is(err, ErrRefChanged) {
			t.Errorf("UpdateRef(%q) = %v; an invalid name is not a lost race", name, err)
		}
		if err := r.CreateRef(name, f.c1); err == nil {
			t.Errorf("CreateRef(%q) succeeded", name)
		}
	}
	for _, p := range []string{filepath.Join(f.dir, "escape"), filepath.Join(f.dir, "escape.lock"), filepath.Join(filepath.Dir(f.dir), "escape"), filepath.Join(f.dir, ".git", "escape")} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("an invalid ref name wrote %s", p)
		}
	}
	if out := fixtures.Git(t, f.dir, "for-each-ref", "--format=%(refname)", "refs/ci/"); out != "" {
		t.Errorf("refs were created: %s", out)
	}
	noLocks(t, filepath.Join(f.dir, ".git"))
}

// TestUpdateRefDirectoryFileConflicts: "a" and "a/b" cannot both be refs.
// The update must fail without damaging the existing ref.
func TestUpdateRefDirectoryFileConflicts(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	r := openRepo(t, f.dir)
	if err := r.CreateRef("refs/ci/requests/pr", f.c1); err != nil {
		t.Fatal(err)
	}
	if err := r.CreateRef("refs/ci/requests/pr/42", f.c2); err == nil {
		t.Errorf("CreateRef(pr/42) next to a ref pr succeeded")
	}
	if err := r.CreateRef("refs/ci/requests/x/y", f.c2); err != nil {
		t.Fatal(err)
	}
	if err := r.CreateRef("refs/ci/requests/x", f.c1); err == nil {
		t.Errorf("CreateRef(x) next to a ref x/y succeeded")
	}
	if got := gitRef(t, f.dir, "refs/ci/requests/pr"); got != f.c1.String() {
		t.Errorf("refs/ci/requests/pr = %q, want %s", got, f.c1)
	}
	if got := gitRef(t, f.dir, "refs/ci/requests/x/y"); got != f.c2.String() {
		t.Errorf("refs/ci/requests/x/y = %q, want %s", got, f.c2)
	}
	noLocks(t, filepath.Join(f.dir, ".git"))

	// The same with the existing ref packed: git refuses it too.
	fixtures.Git(t, f.dir, "update-ref", "refs/ci/claims/p", f.c1.String())
	packRefs(t, f.dir)
	if _, err := fixtures.RunGit(f.dir, nil, nil, "update-ref", "refs/ci/claims/p/q", f.c2.String(), ""); err == nil {
		t.Fatalf("fixture: git accepts refs/ci/claims/p/q next to a packed refs/ci/claims/p")
	}
	if err := r.CreateRef("refs/ci/claims/p/q", f.c2); err == nil {
		t.Errorf("CreateRef(refs/ci/claims/p/q) next to a packed refs/ci/claims/p succeeded; git now lists both: %s",
			fixtures.Git(t, f.dir, "for-each-ref", "--format=%(refname)", "refs/ci/claims/"))
	}
}

// TestCreateRefRace: many workers race to claim the same name, each with
// its own Repo. Exactly one wins; the others learn they lost.
func TestCreateRefRace(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	r := openRepo(t, f.dir)
	const workers = 16
	tree, err := r.WriteTree(nil)
	if err != nil {
		t.Fatal(err)
	}
	commits := make([]Hash, workers)
	for i := range commits {
		commits[i], err = r.WriteCommit(CommitSpec{Tree: tree, Author: NewSignature("W", "w@example.invalid", time.Unix(1700000000, 0)), Message: fmt.Sprintf("claim %d\n", i)}, nil)
		if err != nil {
			t.Fatal(err)
		}
	}
	for round := 0; round < 8; round++ {
		name := fmt.Sprintf("refs/ci/claims/round%d/topic", round)
		repos := make([]*Repo, workers)
		for i := range repos {
			repos[i] = openRepo(t, f.dir)
		}
		errs := make([]error, workers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := 0; i < workers; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				<-start
				errs[i] = repos[i].CreateRef(name, commits[i])
			}(i)
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil:
				if winner >= 0 {
					t.Errorf("round %d: workers %d and %d both created %s", round, winner, i, name)
				}
				winner = i
			case errors.Is(err, ErrRefExists), errors.Is(err, ErrRefChanged):
			default:
				t.Errorf("round %d: worker %d: %v (want nil, ErrRefExists or ErrRefChanged)", round, i, err)
			}
		}
		if winner < 0 {
			t.Errorf("round %d: nobody created %s: %v", round, name, errs)
			continue
		}
		if got := gitRef(t, f.dir, name); got != commits[winner].String() {
			t.Errorf("round %d: git sees %s = %q, the winner wrote %s", round, name, got, commits[winner])
		}
	}
	noLocks(t, filepath.Join(f.dir, ".git"))
	fsckStrict(t, f.dir)
}

// TestUpdateRefNoLostUpdates: workers append to a chain with
// read-modify-CAS loops. With a correct CAS no append is lost, so the chain
// has exactly one commit per worker on top of the base.
func TestUpdateRefNoLostUpdates(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	const name = "refs/ci/runs/chain"
	const workers = 16
	r := openRepo(t, f.dir)
	tree, _ := r.WriteTree(nil)
	base, err := r.WriteCommit(CommitSpec{Tree: tree, Author: NewSignature("W", "w@example.invalid", time.Unix(1700000000, 0)), Message: "base\n"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.CreateRef(name, base); err != nil {
		t.Fatal(err)
	}
	errs := make([]error, workers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			repo, err := Open(f.dir)
			if err != nil {
				errs[i] = err
				return
			}
			<-start
			for attempt := 0; attempt < 100000; attempt++ {
				cur, err := repo.RefHash(name)
				if err != nil {
					errs[i] = err
					return
				}
				next, err := repo.WriteCommit(CommitSpec{Tree: tree, Parents: []Hash{cur}, Author: NewSignature("W", "w@example.invalid", time.Unix(1700000000, 0)), Message: fmt.Sprintf("worker %d\n", i)}, nil)
				if err != nil {
					errs[i] = err
					return
				}
				err = repo.UpdateRef(name, next, cur)
				if err == nil {
					return
				}
				if !errors.Is(err, ErrRefChanged) {
					errs[i] = err
					return
				}
			}
			errs[i] = errors.New("gave up")
		}(i)
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("worker %d: %v", i, err)
		}
	}
	if n := fixtures.Git(t, f.dir, "rev-list", "--count", name); n != fmt.Sprint(workers+1) {
		t.Errorf("the chain has %s commits, want %d: updates were lost", n, workers+1)
	}
	msgs := strings.Split(fixtures.Git(t, f.dir, "log", "--format=%s", name), "\n")
	sort.Strings(msgs)
	for i := 1; i < len(msgs); i++ {
		if msgs[i] == msgs[i-1] {
			t.Errorf("%q appears twice in the chain", msgs[i])
		}
	}
	noLocks(t, filepath.Join(f.dir, ".git"))
	fsckStrict(t, f.dir)
}

// gitRefs is the oracle for Refs: every non-symbolic ref git knows.
func gitRefs(t *testing.T, dir string) []Ref {
	t.Helper()
	out := fixtures.Git(t, dir, "for-each-ref", "--format=%(refname) %(objectname) %(symref)")
	var refs []Ref
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) != 2 { // symbolic refs have a third field
			continue
		}
		refs = append(refs, Ref{Name: fields[0], Hash: mustHash(t, fields[1])})
	}
	return refs
}

func filterRefs(refs []Ref, prefix string) []Ref {
	out := []Ref{}
	for _, r := range refs {
		if strings.HasPrefix(r.Name, prefix) {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func formatRefs(refs []Ref) string {
	var b strings.Builder
	for _, r := range refs {
		fmt.Fprintf(&b, "  %s %s\n", r.Name, r.Hash.String()[:8])
	}
	return b.String()
}

func TestRefsMatchesGit(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	c1, c2, c3 := f.c1.String(), f.c2.String(), f.c3.String()
	up := func(name, h string) { fixtures.Git(t, f.dir, "update-ref", name, h) }
	// Packed first.
	up("refs/ci/requests/b", c1)
	up("refs/ci/requests/zz/top", c2)
	up("refs/ci/requests/c", c1)
	up("refs/ci/requestsX/y", c1)
	up("refs/ci/runs/"+c1+"/20261122T093000.123Z-3f9a1c", c2)
	fixtures.Git(t, f.dir, "tag", "-a", "-m", "annotated", "ann", c1) // packed with a ^peeled line
	packRefs(t, f.dir)
	if b, err := os.ReadFile(filepath.Join(f.dir, ".git", "packed-refs")); err != nil || !strings.Contains(string(b), "\n^") {
		t.Fatalf("fixture: packed-refs has no peeled line: %q, %v", b, err)
	}
	// Then loose, one of them shadowing a packed value.
	up("refs/ci/requests/a", c1)
	up("refs/ci/requests/pr/42", c2)
	up("refs/ci/requests/c", c3)
	up("refs/ci/runs/"+c1+"/20261122T093001.000Z-000001", c3)
	up("refs/ci/runs/"+c2+"/20261122T093002.000Z-000002", c1)
	fixtures.Git(t, f.dir, "symbolic-ref", "refs/ci/requests/sym", "refs/heads/main")
	if err := os.WriteFile(filepath.Join(f.dir, ".git", "refs", "ci", "requests", "d.lock"), []byte(c2+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	all := gitRefs(t, f.dir)
	r := openRepo(t, f.dir)
	for _, prefix := range []string{
		"refs/ci/requests/", "refs/ci/requests", "refs/ci/requests/pr/4", "refs/ci/requests/pr/",
		"refs/ci/runs/", "refs/ci/runs/" + c1[:6], "refs/ci/runs/" + c1 + "/", "refs/ci/runs/" + c2 + "/",
		"refs/", "refs", "refs/tags/", "refs/heads/", "refs/nothing/", "refs/ci/requests/a", "refs/ci/requests/zz/top",
	} {
		got, err := r.Refs(prefix)
		if err != nil {
			t.Errorf("Refs(%q): %v", prefix, err)
			continue
		}
		want := filterRefs(all, prefix)
		if formatRefs(got) != formatRefs(want) {
			t.Errorf("Refs(%q):\n%swant (from git for-each-ref):\n%s", prefix, formatRefs(got), formatRefs(want))
		}
	}

	// Spot checks of what the oracle said, in case git and Refs agree on
	// something wrong.
	got, _ := r.Refs("refs/ci/requests/")
	var names []string
	for _, ref := range got {
		names = append(names, ref.Name)
		if ref.Name == "refs/ci/requests/c" && ref.Hash != f.c3 {
			t.Errorf("the loose refs/ci/requests/c does not shadow the packed one: %s", ref.Hash)
		}
	}
	if want := "refs/ci/requests/a refs/ci/requests/b refs/ci/requests/c refs/ci/requests/pr/42 refs/ci/requests/zz/top"; strings.Join(names, " ") != want {
		t.Errorf("Refs(refs/ci/requests/) names = %v, want %s", names, want)
	}

	for name, want := range map[string]Hash{
		"refs/ci/requests/a": f.c1, "refs/ci/requests/b": f.c1, "refs/ci/requests/c": f.c3, "refs/ci/requests/zz/top": f.c2,
	} {
		if h, err := r.RefHash(name); err != nil || h != want {
			t.Errorf("RefHash(%s) = %s, %v; want %s", name, h, err, want)
		}
	}
	for _, name := range []string{"refs/ci/requests/missing", "refs/ci/requests", "refs/ci/requests/zz", "refs/ci/requests/d"} {
		if h, err := r.RefHash(name); !errors.Is(err, ErrNotFound) {
			t.Errorf("RefHash(%s) = %s, %v; want ErrNotFound", name, h, err)
		}
	}
}

func TestRefsEmptyRepository(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	r := openRepo(t, dir)
	for _, prefix := range []string{"refs/ci/", "refs/ci", "refs/ci/runs/abc"} {
		refs, err := r.Refs(prefix)
		if err != nil || len(refs) != 0 {
			t.Errorf("Refs(%q) in an empty repository = %v, %v", prefix, refs, err)
		}
	}
}

// A repository moved away since it was opened is an error, not a
// repository without refs: a worker mirroring a remote on this machine
// would take the latter for every request deleted.
func TestRefsOfARepositoryGone(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	fixtures.Git(t, f.dir, "update-ref", "refs/ci/requests/a", f.c1.String())
	r := openRepo(t, f.dir)
	if refs, err := r.Refs("refs/ci/requests/"); err != nil || len(refs) != 1 {
		t.Fatalf("Refs = %v, %v", refs, err)
	}
	if err := os.Rename(f.dir, f.dir+".away"); err != nil {
		t.Fatal(err)
	}
	defer os.Rename(f.dir+".away", f.dir)
	if refs, err := r.Refs("refs/ci/requests/"); err == nil {
		t.Errorf("Refs of a repository moved away = %v, no error", refs)
	}
}

// TestRefsEmptyPrefix: "" means every ref, and nothing that is not a ref
// (files in the work tree, ORIG_HEAD, objects).
func TestRefsEmptyPrefix(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	fixtures.Git(t, f.dir, "update-ref", "refs/ci/requests/a", f.c1.String())
	fixtures.WriteFile(t, f.dir, "stray", f.c2.String()+"\n", 0o644) // a file in the work tree that looks like a ref
	r := openRepo(t, f.dir)
	got, err := r.Refs("")
	if err != nil {
		t.Fatal(err)
	}
	if want := filterRefs(gitRefs(t, f.dir), ""); formatRefs(got) != formatRefs(want) {
		t.Errorf("Refs(\"\"):\n%swant:\n%s", formatRefs(got), formatRefs(want))
	}
}

// A pack being installed by another process (its .pack in place, its .idx
// not yet, as git does it) must not make objects look missing: the reader
// waits for the .idx instead of failing, and a plain miss is still
// answered at once.
func TestObjectsReadWhileAPackIsInstalled(t *testing.T) {
	t.Parallel()
	dir := fixtures.BareRepo(t, "repo.git")
	old := mkCommit(t, dir, "in an older pack")
	fixtures.Git(t, dir, "update-ref", "refs/heads/old", old.String())
	fixtures.Git(t, dir, "repack", "-adq")
	fresh := mkCommit(t, dir, "in the pack being installed")
	fixtures.Git(t, dir, "update-ref", "refs/heads/fresh", fresh.String())
	packs := packIndexes(t, dir)
	fixtures.Git(t, dir, "repack", "-dq") // a second pack: the loose objects
	idx := newPack(t, dir, packs)
	held := filepath.Join(t.TempDir(), "held.idx")
	for round, h := range []Hash{old, fresh} {
		if err := os.Rename(idx, held); err != nil {
			t.Fatal(err)
		}
		r, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			time.Sleep(60 * time.Millisecond)
			os.Rename(held, idx)
		}()
		if typ, err := r.ObjectType(h); err != nil || typ != "commit" {
			t.Fatalf("round %d: ObjectType while a pack was being installed: %q, %v", round, typ, err)
		}
		// Once read, the repository answers for every pack.
		for _, h := range []Hash{old, fresh} {
			if _, err := r.Commit(h); err != nil {
				t.Errorf("round %d: commit %s after the install: %v", round, h, err)
			}
		}
	}
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := r.ObjectType(NewHash("0123456789abcdef0123456789abcdef01234567")); err == nil {
		t.Fatal("a missing object was found")
	}
	// Waiting for packs would take a second (packRetries growing sleeps,
	// 1.05 s); 700 ms leaves a loaded machine room for a plain miss.
	if d := time.Since(start); d > 700*time.Millisecond {
		t.Errorf("a plain miss took %v: it must not wait for packs", d)
	}
}

// vanishingFS fails its first ReadDir as go-billy does when an entry
// disappears between the listing and its stat.
type vanishingFS struct {
	billy.Filesystem
	failed *bool
}

func (f vanishingFS) ReadDir(dir string) ([]os.FileInfo, error) {
	if !*f.failed {
		*f.failed = true
		return nil, &os.PathError{Op: "lstat", Path: filepath.Join(dir, "tmp_pack_gone"), Err: syscall.ENOENT}
	}
	return f.Filesystem.ReadDir(dir)
}

func TestListingSurvivesAVanishedEntry(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"pack-a.pack", "pack-a.idx"} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o644)
	}
	failed := false
	fs := listingFS{vanishingFS{osfs.New(dir), &failed}}
	infos, err := fs.ReadDir(".")
	if err != nil || len(infos) != 2 {
		t.Fatalf("ReadDir after a vanished entry: %d entries, %v", len(infos), err)
	}
	if _, err := (listingFS{osfs.New(dir)}).ReadDir("missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing directory: %v", err)
	}
}

// Lookups in a cache while fetches install packs into it (each fetch's
// index-pack renames its tmp_pack_* file into a pack) must never find a
// present object missing. Before listingFS, about 1 in 100 did.
func TestObjectsReadWhileFetchesInstallPacks(t *testing.T) {
	t.Parallel()
	remote := fixtures.BareRepo(t, "remote.git")
	target := mkCommit(t, remote, "target")
	setRef(t, remote, "refs/ci/requests/t0", target)
	r := openTestRemote(t, remote)
	spec := "+refs/ci/requests/*:refs/ci/requests/*"
	if err := r.Fetch(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	if ok, why := r.Direct(context.Background()); !ok {
		t.Fatalf("the direct fetch is what installs packs here: %s", why)
	}
	var stop atomic.Bool
	var lookups, fails atomic.Int64
	var firstErr atomic.Value
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			repo, err := Open(r.Cache)
			if err == nil {
				_, err = repo.ObjectType(target)
			}
			if err != nil {
				fails.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
			lookups.Add(1)
		}
	}()
	for i := 1; i <= 60; i++ {
		setRef(t, remote, fmt.Sprintf("refs/ci/requests/t%d", i), mkCommit(t, remote, fmt.Sprint(i)))
		if err := r.Fetch(context.Background(), spec); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	<-done
	if fails.Load() > 0 {
		t.Errorf("%d of %d lookups did not find an object the cache holds: %v", fails.Load(), lookups.Load(), firstErr.Load())
	}
	t.Logf("%d lookups", lookups.Load())
}
