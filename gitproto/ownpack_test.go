package gitproto

import (
	"context"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
)

// A direct push of commits with real trees (files, a subdirectory, an
// executable, a symlink) and a chain of parents packs them in this
// process: the remote gets every new object and none of the old value's
// commits, and passes git fsck --strict.
func TestRemoteDirectOwnPack(t *testing.T) {
	remote := fixtures.BareRepo(t, "remote.git")
	r := openTestRemote(t, remote)
	blob := func(s string) string {
		return fixtures.GitStdin(t, r.Cache, []byte(s), "hash-object", "-w", "--stdin")
	}
	tree := func(spec string) string { return fixtures.GitStdin(t, r.Cache, []byte(spec), "mktree") }
	b1, b2, b3 := blob("one\n"), blob("two\n"), blob("three\n")
	sub := tree("100644 blob " + b2 + "\tf2\n")
	t1 := tree("100644 blob " + b1 + "\tf1\n040000 tree " + sub + "\tdir\n100755 blob " + b1 + "\tx\n120000 blob " + b2 + "\tl\n")
	t2 := tree("100644 blob " + b3 + "\tf3\n040000 tree " + sub + "\tdir\n")
	commit := func(tree, msg string, parents ...Hash) Hash {
		args := []string{"commit-tree", tree, "-m", msg}
		for _, p := range parents {
			args = append(args, "-p", p.String())
		}
		return mustHash(t, fixtures.Git(t, r.Cache, args...))
	}
	c1 := commit(t1, "s1")
	c2 := commit(t2, "s2", c1)
	c3 := commit(t1, "s3", c2)

	before := ownPacksSent.Load()
	if res := pushOne(t, r, RefUpdate{Name: "refs/ci/runs/a", New: c1}); !res.OK {
		t.Fatal(res)
	}
	packs := packIndexes(t, remote)
	if res := pushOne(t, r, RefUpdate{Name: "refs/ci/runs/a", New: c3, Old: c1}); !res.OK {
		t.Fatal(res)
	}
	if n := ownPacksSent.Load() - before; n != 2 {
		t.Errorf("%d pushes packed in this process, want 2", n)
	}
	out := fixtures.Git(t, remote, "verify-pack", "-v", newPack(t, remote, packs))
	for _, h := range []string{c2.String(), c3.String(), t2, b3} {
		if !strings.Contains(out, h) {
			t.Errorf("the second pack lacks %s:\n%s", h, out)
		}
	}
	if strings.Contains(out, c1.String()) {
		t.Errorf("the second pack holds the old value's commit %s:\n%s", c1, out)
	}
	if got := refOf(t, remote, "refs/ci/runs/a"); got != c3.String() {
		t.Errorf("remote ref %s, want %s", got, c3)
	}
	fsckStrict(t, remote)
}

// Values that are not plain commits of files go to git pack-objects, and
// arrive all the same: an annotated tag, and a commit whose tree holds a
// submodule.
func TestRemoteDirectOwnPackFallsBack(t *testing.T) {
	remote := fixtures.BareRepo(t, "remote.git")
	r := openTestRemote(t, remote)
	base := mkCommit(t, r.Cache, "base")
	tag := mustHash(t, fixtures.GitStdin(t, r.Cache, []byte("object "+base.String()+"\ntype commit\ntag v1\ntagger T <t@example.com> 1700000000 +0000\n\nv1\n"), "mktag"))
	link := fixtures.GitStdin(t, r.Cache, []byte("160000 commit "+base.String()+"\tsub\n"), "mktree")
	withLink := mustHash(t, fixtures.Git(t, r.Cache, "commit-tree", link, "-m", "link"))
	before := ownPacksSent.Load()
	for _, u := range []RefUpdate{{Name: "refs/ci/requests/t", New: tag}, {Name: "refs/ci/runs/l", New: withLink}} {
		res, err := r.Push(context.Background(), []RefUpdate{u}, false)
		if err != nil || !res[0].OK {
			t.Fatalf("push %s: %+v %v", u.Name, res, err)
		}
		if got := refOf(t, remote, u.Name); got != u.New.String() {
			t.Errorf("%s on the remote is %s, want %s", u.Name, got, u.New)
		}
	}
	if n := ownPacksSent.Load() - before; n != 0 {
		t.Errorf("%d of these pushes packed in this process, want none", n)
	}
	for _, h := range []Hash{tag, base, withLink} {
		fixtures.Git(t, remote, "cat-file", "-e", h.String())
	}
}

// The walk lists each object once, and leaves to git what it cannot read
// or what is over its limits.
func TestOwnPackObjectsLimits(t *testing.T) {
	dir := fixtures.BareRepo(t, "c.git")
	repo := openRepo(t, dir)
	var prev []Hash
	var tip Hash
	for i := 0; i < 3; i++ {
		tip = mkCommit(t, dir, "c", prev...)
		prev = []Hash{tip}
	}
	objs, err := ownPackObjects(repo, []Hash{tip}, nil)
	if err != nil || len(objs) != 4 { // three commits and the empty tree, once
		t.Fatalf("got %d objects, %v; want 4", len(objs), err)
	}
	if _, err := ownPackObjects(repo, []Hash{mustHash(t, strings.Repeat("ab", 20))}, nil); err != errNotOwnPack {
		t.Errorf("a missing object: %v, want errNotOwnPack", err)
	}
	defer func(n int, b int64) { ownPackMaxObjects, ownPackMaxBytes = n, b }(ownPackMaxObjects, ownPackMaxBytes)
	ownPackMaxObjects = 3
	if _, err := ownPackObjects(repo, []Hash{tip}, nil); err != errNotOwnPack {
		t.Errorf("over the object limit: %v, want errNotOwnPack", err)
	}
	ownPackMaxObjects, ownPackMaxBytes = 4096, 100 // the three commits are bigger
	if _, err := ownPackObjects(repo, []Hash{tip}, nil); err != errNotOwnPack {
		t.Errorf("over the size limit: %v, want errNotOwnPack", err)
	}
}
