package gitproto

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

func TestBatchStoresOnePackGitReads(t *testing.T) {
	t.Parallel()
	dir := newGitRepo(t)
	gitDir := filepath.Join(dir, ".git")
	r := openRepo(t, dir)
	big := make([]byte, batchObjectMax+1)
	rand.New(rand.NewSource(2)).Read(big)
	r.BeginBatch()
	small := map[string][]byte{
		"status.json": []byte(`{"state":"passed"}` + "\n"),
		"log":         bytes.Repeat([]byte("a line of output\n"), 500),
		"empty":       {},
	}
	var files []TreeFile
	blobs := map[Hash][]byte{}
	for name, data := range small {
		h, err := r.WriteBlob(data)
		if err != nil {
			t.Fatal(err)
		}
		if want := gitIn(t, dir, data, "hash-object", "--stdin"); h.String() != want {
			t.Errorf("batched blob %s = %s, git hash-object says %s", name, h, want)
		}
		blobs[h] = data
		files = append(files, TreeFile{Path: "logs/" + name, Hash: h})
	}
	bigHash, err := r.WriteBlob(big)
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, TreeFile{Path: "artifact.bin", Hash: bigHash})
	tree, err := r.WriteTree(files)
	if err != nil {
		t.Fatal(err)
	}
	commit, err := r.WriteCommit(CommitSpec{Tree: tree, Author: NewSignature("a", "a@example.invalid", time.Unix(1700000000, 0)), Message: "batched\n"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Before EndBatch: readable through the Repo, but nothing small is
	// stored yet; the big blob went loose at once.
	if got, err := r.ReadFile(commit, "logs/status.json"); err != nil || !bytes.Equal(got, small["status.json"]) {
		t.Fatalf("reading a batched file before EndBatch: %q, %v", got, err)
	}
	if packs, _, _ := packFiles(t, gitDir); len(packs) != 0 {
		t.Fatalf("packs before EndBatch: %v", packs)
	}
	if n := looseObjects(t, gitDir); n != 1 {
		t.Fatalf("%d loose objects before EndBatch; want 1 (the blob over %d bytes)", n, batchObjectMax)
	}
	if _, err := gitRun(dir, nil, nil, "cat-file", "-e", commit.String()); err == nil {
		t.Fatal("git finds the commit before EndBatch")
	}
	if err := r.EndBatch(); err != nil {
		t.Fatal(err)
	}
	packs, idxs, other := packFiles(t, gitDir)
	if len(packs) != 1 || len(idxs) != 1 || len(other) != 0 {
		t.Fatalf("objects/pack after EndBatch: packs %v, indexes %v, other %v; want one pack and its index", packs, idxs, other)
	}
	if strings.TrimSuffix(packs[0], ".pack") != strings.TrimSuffix(idxs[0], ".idx") {
		t.Fatalf("pack %s and index %s differ", packs[0], idxs[0])
	}
	for _, f := range append(packs, idxs...) {
		fi, err := os.Stat(filepath.Join(gitDir, "objects", "pack", f))
		if err != nil || fi.Mode().Perm()&0o222 != 0 {
			t.Errorf("%s: %v, mode %v; want read-only like git's", f, err, fi.Mode())
		}
	}
	// git reads every object back, checks the pack and its index, and
	// fsck finds nothing wrong.
	out := gitT(t, dir, "verify-pack", "-v", filepath.Join(gitDir, "objects", "pack", idxs[0]))
	for h := range blobs {
		if !strings.Contains(out, h.String()+" blob") {
			t.Errorf("verify-pack does not list blob %s:\n%s", h, out)
		}
	}
	for h, data := range blobs {
		if got := gitRaw(t, dir, "cat-file", "blob", h.String()); !bytes.Equal(got, data) {
			t.Errorf("git reads blob %s back as %d different bytes", h, len(got))
		}
	}
	if got := gitT(t, dir, "log", "--format=%s", commit.String()); got != "batched" {
		t.Errorf("git log of the batched commit: %q", got)
	}
	if got := gitRaw(t, dir, "cat-file", "blob", commit.String()+":artifact.bin"); !bytes.Equal(got, big) {
		t.Error("the big blob, stored loose, does not read back")
	}
	fsckStrict(t, dir)
	if left := tempObjects(t, gitDir); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
	// The same Repo, and a new one, read the objects from the pack.
	if got, err := r.ReadFile(commit, "logs/log"); err != nil || !bytes.Equal(got, small["log"]) {
		t.Errorf("reading back after EndBatch: %d bytes, %v", len(got), err)
	}
	if got, err := openRepo(t, dir).ReadFile(commit, "logs/status.json"); err != nil || !bytes.Equal(got, small["status.json"]) {
		t.Errorf("a new Repo reads %q, %v", got, err)
	}
}

func TestBatchOutsideIsLoose(t *testing.T) {
	t.Parallel()
	dir := newGitRepo(t)
	gitDir := filepath.Join(dir, ".git")
	r := openRepo(t, dir)
	if err := r.EndBatch(); err != nil {
		t.Fatalf("EndBatch without a batch: %v", err)
	}
	r.BeginBatch()
	if err := r.EndBatch(); err != nil {
		t.Fatalf("EndBatch of an empty batch: %v", err)
	}
	if packs, idxs, other := packFiles(t, gitDir); len(packs)+len(idxs)+len(other) != 0 {
		t.Fatalf("an empty batch left files: %v %v %v", packs, idxs, other)
	}
	// After a batch, writes are loose again.
	r.BeginBatch()
	if _, err := r.WriteBlob([]byte("in the batch\n")); err != nil {
		t.Fatal(err)
	}
	if err := r.EndBatch(); err != nil {
		t.Fatal(err)
	}
	h, err := r.WriteBlob([]byte("after the batch\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(gitDir, "objects", h.String()[:2], h.String()[2:])); err != nil {
		t.Errorf("a blob written after EndBatch is not loose: %v", err)
	}
	if packs, _, _ := packFiles(t, gitDir); len(packs) != 1 {
		t.Errorf("packs: %v; want the one batch", packs)
	}
	fsckStrict(t, dir)
}

// A batch that cannot be stored says why, leaves no file behind, and is
// over: its objects are not readable as if stored. (objects/pack is made
// a file: a write error even for root.)
func TestBatchFailureLeavesNothing(t *testing.T) {
	t.Parallel()
	dir := newGitRepo(t)
	gitDir := filepath.Join(dir, ".git")
	packDir := filepath.Join(gitDir, "objects", "pack")
	os.RemoveAll(packDir)
	if err := os.WriteFile(packDir, []byte("in the way\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := openRepo(t, dir)
	r.BeginBatch()
	h, err := r.WriteBlob([]byte("never stored\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = r.EndBatch()
	if err == nil || !strings.Contains(err.Error(), "write objects") {
		t.Fatalf("EndBatch with objects/pack a file: %v; want a write error", err)
	}
	if err := os.Remove(packDir); err != nil {
		t.Fatal(err)
	}
	if left := tempObjects(t, gitDir); len(left) > 0 {
		t.Errorf("a failed batch left files: %v", left)
	}
	if _, err := r.ObjectType(h); err == nil {
		t.Error("an object of the failed batch still reads as stored")
	}
	if _, err := gitRun(dir, nil, nil, "cat-file", "-e", h.String()); err == nil {
		t.Error("git finds an object of the failed batch")
	}
	// The next batch works.
	r.BeginBatch()
	if _, err := r.WriteBlob([]byte("stored\n")); err != nil {
		t.Fatal(err)
	}
	if err := r.EndBatch(); err != nil {
		t.Fatalf("a batch after the failed one: %v", err)
	}
	fsckStrict(t, dir)
}

// A Repo that read the packs before another Repo's batch was installed
// still finds the new objects.
func TestBatchSeenByAnOlderRepo(t *testing.T) {
	t.Parallel()
	dir := newGitRepo(t)
	commitAll(t, dir, "first")
	gitT(t, dir, "gc", "-q") // objects in a pack, so that go-git reads its list of packs
	old := openRepo(t, dir)
	if _, err := old.ResolveCommit("HEAD"); err != nil {
		t.Fatal(err)
	}
	w := openRepo(t, dir)
	w.BeginBatch()
	h, err := w.WriteBlob([]byte("from another Repo's batch\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.EndBatch(); err != nil {
		t.Fatal(err)
	}
	if typ, err := old.ObjectType(h); err != nil || typ != "blob" {
		t.Fatalf("the older Repo: ObjectType of the new blob = %q, %v", typ, err)
	}
}

func TestPackEntryHeader(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		size int64
		want []byte
	}{
		{0, []byte{0x30}},          // blob (3), size 0
		{15, []byte{0x3f}},         // the four bits of the first byte
		{16, []byte{0xb0, 0x01}},   // 16 = 0 + 1<<4
		{1000, []byte{0xb8, 0x3e}}, // 1000 = 8 + 62<<4
		{1 << 20, []byte{0xb0, 0x80, 0x80, 0x04}},
	} {
		if got := packEntryHeader(3, c.size); !bytes.Equal(got, c.want) {
			t.Errorf("packEntryHeader(blob, %d) = % x; want % x", c.size, got, c.want)
		}
	}
}

// writeBatches stores n batches of one blob each in the cache of r and
// returns the blobs (reachable from nothing, like a pushed result's).
func writeBatches(t *testing.T, r *Remote, n int) []Hash {
	t.Helper()
	if _, err := os.Stat(filepath.Join(r.Cache, "HEAD")); err != nil {
		if err := r.Fetch(context.Background(), "+refs/heads/*:refs/heads/*"); err != nil {
			t.Fatal(err)
		}
	}
	repo, err := Open(r.Cache)
	if err != nil {
		t.Fatal(err)
	}
	var hs []Hash
	for i := 0; i < n; i++ {
		repo.BeginBatch()
		h, err := repo.WriteBlob([]byte(fmt.Sprintf("batch %d of %s at %d\n", i, t.Name(), time.Now().UnixNano())))
		if err != nil {
			t.Fatal(err)
		}
		if err := repo.EndBatch(); err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	return hs
}

func TestCompactPacksMergesAndKeepsEverything(t *testing.T) {
	t.Parallel()
	remote := newBare(t, "remote.git")
	r := openTestRemote(t, "file://"+remote)
	blobs := writeBatches(t, r, 12)
	count := func() int { p, _, _ := packFiles(t, r.Cache); return len(p) }
	if n := count(); n != 12 {
		t.Fatalf("%d packs after 12 batches", n)
	}
	if did, err := r.CompactPacks(context.Background(), 12); err != nil || did {
		t.Fatalf("CompactPacks at the limit: %v, %v; want nothing done", did, err)
	}
	if n := count(); n != 12 {
		t.Fatalf("CompactPacks at the limit changed the packs: %d", n)
	}
	blobs = append(blobs, writeBatches(t, r, 1)...)
	if did, err := r.CompactPacks(context.Background(), 12); err != nil || !did {
		t.Fatalf("CompactPacks over the limit: %v, %v; want a merge", did, err)
	}
	if n := count(); n > 2 {
		t.Errorf("%d packs after merging thirteen small ones", n)
	}
	for _, h := range blobs {
		if _, err := gitRun(r.Cache, nil, nil, "cat-file", "-e", h.String()); err != nil {
			t.Fatalf("merging dropped the unreachable object %s", h)
		}
	}
	if left := tempObjects(t, r.Cache); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// A full maintenance packs everything again, the unreachable objects in a
// cruft pack (not one loose file each), and prunes nothing recent.
func TestMaintainFullKeepsRecentUnreachableInACruftPack(t *testing.T) {
	t.Parallel()
	remote := newBare(t, "remote.git")
	r := openTestRemote(t, "file://"+remote)
	blobs := writeBatches(t, r, 5)
	if err := r.Maintain(context.Background(), 0, false); err != nil {
		t.Fatal(err)
	}
	if p, _, _ := packFiles(t, r.Cache); len(p) != 5 {
		t.Fatalf("gc --auto with 5 packs changed them: %v", p)
	}
	if err := r.Maintain(context.Background(), 0, true); err != nil {
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
		if _, err := gitRun(r.Cache, nil, nil, "cat-file", "-e", h.String()); err != nil {
			t.Fatalf("a full maintenance dropped the recent object %s", h)
		}
	}
}

// RefValues reads exactly the named refs: not others sharing a prefix,
// packed or loose, and nothing for a missing one.
func TestRefValuesReadsJustTheNamedRefs(t *testing.T) {
	t.Parallel()
	remote := newBare(t, "remote.git")
	a := mkCommit(t, remote, "a")
	b := mkCommit(t, remote, "b")
	setRef(t, remote, "refs/ci/requests/a", a)
	setRef(t, remote, "refs/ci/requests/ab", b)
	setRef(t, remote, "refs/ci/requests/packed", b)
	gitT(t, remote, "pack-refs", "--all")
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
