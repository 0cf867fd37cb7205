package gitproto

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/osfs"

	"refci.dev/refci/fixtures"
)

// packFiles lists objects/pack of a repository's git dir by suffix.
func packFiles(t testing.TB, gitDir string) (packs, idxs, other []string) {
	t.Helper()
	dir := filepath.Join(gitDir, "objects", "pack")
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		return nil, nil, nil
	}
	for _, n := range listDir(t, dir) {
		switch {
		case strings.HasPrefix(n, "pack-") && strings.HasSuffix(n, ".pack"):
			packs = append(packs, n)
		case strings.HasPrefix(n, "pack-") && strings.HasSuffix(n, ".idx"):
			idxs = append(idxs, n)
		default:
			other = append(other, n)
		}
	}
	return packs, idxs, other
}

// looseObjects counts the loose objects of a git dir.
func looseObjects(t testing.TB, gitDir string) int {
	t.Helper()
	n := 0
	for _, d := range listDir(t, filepath.Join(gitDir, "objects")) {
		if len(d) == 2 {
			n += len(listDir(t, filepath.Join(gitDir, "objects", d)))
		}
	}
	return n
}

// A Repo that read the packs before a pack was installed (by git here: a
// fetch, a merge of packs) still finds the new objects: a miss looks at
// the packs again when objects/pack changed.
func TestNewPackSeenByAnOlderRepo(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	fixtures.CommitAll(t, dir, "first")
	fixtures.Git(t, dir, "gc", "-q") // objects in a pack, so that go-git reads its list of packs
	old := openRepo(t, dir)
	if _, err := old.ResolveCommit("HEAD"); err != nil {
		t.Fatal(err)
	}
	hex := fixtures.GitStdin(t, dir, []byte("installed later\n"), "hash-object", "-w", "--stdin")
	fixtures.GitStdin(t, dir, []byte(hex+"\n"), "pack-objects", "-q", ".git/objects/pack/pack") // the blob into a new pack
	fixtures.Git(t, dir, "prune-packed")
	h := mustHash(t, hex)
	if n := looseObjects(t, filepath.Join(dir, ".git")); n != 0 {
		t.Fatalf("%d loose objects after repack", n)
	}
	if typ, err := old.ObjectType(h); err != nil || typ != "blob" {
		t.Fatalf("the older Repo: ObjectType of the new blob = %q, %v", typ, err)
	}
}

// writePacks stores n blobs in the cache of r, each in a pack of its own
// (reachable from nothing, like a pushed result's), and returns them.
func writePacks(t *testing.T, r *Remote, n int) []Hash {
	t.Helper()
	if _, err := os.Stat(filepath.Join(r.Cache, "HEAD")); err != nil {
		if err := r.Fetch(context.Background(), "+refs/heads/*:refs/heads/*"); err != nil {
			t.Fatal(err)
		}
	}
	var hs []Hash
	for i := 0; i < n; i++ {
		data := fmt.Sprintf("pack %d of %s at %d\n", i, t.Name(), time.Now().UnixNano())
		h := fixtures.GitStdin(t, r.Cache, []byte(data), "hash-object", "-w", "--stdin")
		fixtures.GitStdin(t, r.Cache, []byte(h+"\n"), "pack-objects", "-q", "objects/pack/pack")
		fixtures.Git(t, r.Cache, "prune-packed")
		hs = append(hs, mustHash(t, h))
	}
	return hs
}

func TestCompactPacksMergesAndKeepsEverything(t *testing.T) {
	t.Parallel()
	remote := fixtures.BareRepo(t, "remote.git")
	r := openTestRemote(t, "file://"+remote)
	blobs := writePacks(t, r, 12)
	count := func() int { p, _, _ := packFiles(t, r.Cache); return len(p) }
	if n := count(); n != 12 {
		t.Fatalf("%d packs after 12 packs", n)
	}
	if did, err := r.CompactPacks(context.Background(), 12); err != nil || did {
		t.Fatalf("CompactPacks at the limit: %v, %v; want nothing done", did, err)
	}
	if n := count(); n != 12 {
		t.Fatalf("CompactPacks at the limit changed the packs: %d", n)
	}
	blobs = append(blobs, writePacks(t, r, 1)...)
	if did, err := r.CompactPacks(context.Background(), 12); err != nil || !did {
		t.Fatalf("CompactPacks over the limit: %v, %v; want a merge", did, err)
	}
	if n := count(); n > 2 {
		t.Errorf("%d packs after merging thirteen small ones", n)
	}
	for _, h := range blobs {
		if _, err := fixtures.RunGit(r.Cache, nil, nil, "cat-file", "-e", h.String()); err != nil {
			t.Fatalf("merging dropped the unreachable object %s", h)
		}
	}
	if left := tempObjects(t, r.Cache); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// A full maintenance packs everything again, the unreachable objects in a
// cruft pack (not one loose file each), and prunes nothing recent.
func TestCollectGarbageFullKeepsRecentUnreachableInACruftPack(t *testing.T) {
	t.Parallel()
	remote := fixtures.BareRepo(t, "remote.git")
	r := openTestRemote(t, "file://"+remote)
	blobs := writePacks(t, r, 5)
	if err := r.CollectGarbage(context.Background(), 0, false); err != nil {
		t.Fatal(err)
	}
	if p, _, _ := packFiles(t, r.Cache); len(p) != 5 {
		t.Fatalf("gc --auto with 5 packs changed them: %v", p)
	}
	if err := r.CollectGarbage(context.Background(), 0, true); err != nil {
		t.Fatal(err)
	}
	packs, _, other := packFiles(t, r.Cache)
	cruft := 0
	for _, o := range other {
		if strings.HasSuffix(o, ".mtimes") {
			cruft++
		}
	}
	if cruft != 1 || len(packs) > 2 {
		t.Errorf("after a full maintenance: packs %v, other files %v; want at most two packs, one of them cruft", packs, other)
	}
	if n := looseObjects(t, r.Cache); n != 0 {
		t.Errorf("%d loose objects after a full maintenance", n)
	}
	for _, h := range blobs {
		if _, err := fixtures.RunGit(r.Cache, nil, nil, "cat-file", "-e", h.String()); err != nil {
			t.Fatalf("a full maintenance dropped the recent object %s", h)
		}
	}
}

// RefValues reads exactly the named refs: not others sharing a prefix,
// packed or loose, and nothing for a missing one.
func TestRefValuesReadsJustTheNamedRefs(t *testing.T) {
	t.Parallel()
	remote := fixtures.BareRepo(t, "remote.git")
	a := mkCommit(t, remote, "a")
	b := mkCommit(t, remote, "b")
	setRef(t, remote, "refs/ci/requests/a", a)
	setRef(t, remote, "refs/ci/requests/ab", b)
	setRef(t, remote, "refs/ci/requests/packed", b)
	fixtures.Git(t, remote, "pack-refs", "--all")
	setRef(t, remote, "refs/ci/requests/a", b) // loose over packed
	for _, url := range []string{remote, "file://" + remote} {
		r := openTestRemote(t, url)
		got, err := r.RefValues(context.Background(), []string{"refs/ci/requests/a", "refs/ci/requests/packed", "refs/ci/requests/gone"})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]Hash{"refs/ci/requests/a": b, "refs/ci/requests/packed": b}
		if len(got) != len(want) || got["refs/ci/requests/a"] != b || got["refs/ci/requests/packed"] != b {
			t.Errorf("%s: RefValues = %v, want %v", url, got, want)
		}
		if _, err := r.RefValues(context.Background(), []string{"refs/ci/requests/bad..name"}); err == nil {
			t.Errorf("%s: RefValues accepted an invalid ref name", url)
		}
	}
}

// Paths under objects/ are opened directly (no stat per path component);
// anything else, and anything that would climb out of objects/, still
// goes through go-billy's rooted file system.
func TestObjectPathsOpenedDirectly(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	fs := listingFS{osfs.New(filepath.Join(dir, ".git"))}
	for name, want := range map[string]bool{
		"objects":                    true,
		"objects/ab/cdef":            true,
		"objects/pack/pack-1.idx":    true,
		"./objects/pack/pack-1.pack": true,
		"config":                     false,
		"objects/../config":          false,
		"objects/../../outside":      false,
		"objects/ab/../../../etc/x":  false,
		"refs/heads/main":            false,
	} {
		p, ok := fs.objectPath(name)
		if ok != want {
			t.Errorf("objectPath(%q) = %q, %v; want direct %v", name, p, ok, want)
		}
		if objects := filepath.Join(dir, ".git", "objects"); ok && p != objects && !strings.HasPrefix(p, objects+"/") {
			t.Errorf("objectPath(%q) = %q, outside objects/", name, p)
		}
	}
}

// A repository whose objects directory is a symbolic link (git follows
// it) reads the same: loose and packed objects, and a checkout.
func TestLinkedObjectsDirectory(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	fixtures.WriteFile(t, dir, "a.txt", "hello\n", 0o644)
	commit := fixtures.CommitAll(t, dir, "one")
	fixtures.Git(t, dir, "repack", "-q", "-d")
	fixtures.WriteFile(t, dir, "b.txt", "loose\n", 0o644)
	loose := fixtures.CommitAll(t, dir, "two")
	moved := filepath.Join(t.TempDir(), "objects")
	if err := os.Rename(filepath.Join(dir, ".git", "objects"), moved); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(moved, filepath.Join(dir, ".git", "objects")); err != nil {
		t.Fatal(err)
	}
	if got := fixtures.Git(t, dir, "cat-file", "-t", commit); got != "commit" {
		t.Fatalf("git itself reads %s as %q", commit, got)
	}
	r := openRepo(t, dir)
	for _, c := range []string{commit, loose} {
		if typ, err := r.ObjectType(NewHash(c)); err != nil || typ != "commit" {
			t.Errorf("ObjectType(%s) through a linked objects directory = %q, %v", c, typ, err)
		}
	}
	co := t.TempDir()
	if _, err := r.Checkout(NewHash(loose), co); err != nil {
		t.Errorf("checkout through a linked objects directory: %v", err)
	}
	for f, want := range map[string]string{"a.txt": "hello\n", "b.txt": "loose\n"} {
		if b, err := os.ReadFile(filepath.Join(co, f)); err != nil || string(b) != want {
			t.Errorf("checked out %s: %q, %v", f, b, err)
		}
	}
}
