package gitproto

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
)

// copyWorld is a work repository with two commits (the second changes one
// file in a subdirectory and adds an executable), and an empty bare one.
func copyWorld(t *testing.T) (src, dst string, first, second Hash) {
	t.Helper()
	src = fixtures.NewRepo(t)
	fixtures.WriteFile(t, src, "README", "hello\n", 0o644)
	fixtures.WriteFile(t, src, "lib/a.go", "package a\n", 0o644)
	fixtures.WriteFile(t, src, "lib/deep/b.go", "package deep\n", 0o644)
	first = mustHash(t, fixtures.CommitAll(t, src, "first"))
	fixtures.WriteFile(t, src, "lib/a.go", "package a // changed\n", 0o644)
	fixtures.WriteFile(t, src, ".refci/run", "#!/bin/sh\necho hi\n", 0o755)
	second = mustHash(t, fixtures.CommitAll(t, src, "second"))
	dst = filepath.Join(t.TempDir(), "dst.git")
	fixtures.Git(t, filepath.Dir(dst), "init", "-q", "--bare", dst)
	return src, dst, first, second
}

// connected asserts that git finds everything tip reaches in dir.
func connected(t *testing.T, dir string, tip Hash) {
	t.Helper()
	if out, err := fixtures.RunGit(dir, nil, nil, "rev-list", "--objects", "--missing=error", tip.String()); err != nil {
		t.Fatalf("git rev-list --objects %s in %s: %v\n%s", tip, dir, err, out)
	}
	fsckStrict(t, dir)
}

func TestCopyObjects(t *testing.T) {
	src, dst, first, second := copyWorld(t)
	from, to := openRepo(t, src), openRepo(t, dst)

	// Everything the first commit reaches: commit, root tree, lib, lib/deep,
	// three blobs.
	n, err := to.CopyObjects(from, []Hash{first}, copyAll)
	if err != nil || n != 7 {
		t.Fatalf("CopyObjects(first) = %d, %v; want 7 objects", n, err)
	}
	connected(t, dst, first)

	// Only what the second commit adds: the commit, root and lib trees,
	// .refci and its script, the changed blob. The parent and lib/deep
	// are there already.
	n, err = to.CopyObjects(openRepo(t, src), []Hash{second}, copyAll)
	if err != nil || n != 6 {
		t.Fatalf("CopyObjects(second) = %d, %v; want 6 objects", n, err)
	}
	connected(t, dst, second)
	if out := fixtures.Git(t, dst, "ls-tree", "-r", second.String(), ".refci/run"); !strings.HasPrefix(out, "100755 blob ") {
		t.Errorf("the executable bit did not survive: %q", out)
	}

	// Again: nothing to do.
	if n, err := openRepo(t, dst).CopyObjects(from, []Hash{second, first}, copyAll); err != nil || n != 0 {
		t.Errorf("copying what is there = %d, %v; want 0, nil", n, err)
	}
}

func TestCopyObjectsLimits(t *testing.T) {
	src, dst, _, second := copyWorld(t)
	from := openRepo(t, src)
	for _, lim := range []struct {
		objects int
		bytes   int64
	}{{12, 1 << 20}, {100, 64}} {
		n, err := openRepo(t, dst).CopyObjects(from, []Hash{second}, CopyOptions{MaxObjects: lim.objects, MaxBytes: lim.bytes})
		if !errors.Is(err, ErrTooMuchToCopy) || n != 0 {
			t.Errorf("limits %+v: CopyObjects = %d, %v; want 0, ErrTooMuchToCopy", lim, n, err)
		}
		if out := fixtures.Git(t, dst, "count-objects"); !strings.HasPrefix(out, "0 objects") {
			t.Errorf("limits %+v: something was copied: %s", lim, out)
		}
	}
	if n, err := openRepo(t, dst).CopyObjects(from, []Hash{second}, CopyOptions{MaxObjects: 13, MaxBytes: 1 << 20}); err != nil || n != 13 {
		t.Errorf("at the limit: CopyObjects = %d, %v; want 13 objects", n, err)
	}
	connected(t, dst, second)
}

func TestCopyObjectsTagsAndSubmodules(t *testing.T) {
	src, dst, _, second := copyWorld(t)
	// A commit whose tree names a submodule commit that is in neither
	// repository, wrapped in an annotated tag.
	sub := "1234567890123456789012345678901234567890"
	root := fixtures.Git(t, src, "rev-parse", second.String()+"^{tree}")
	tree := fixtures.GitStdin(t, src, []byte("040000 tree "+root+"\tcode\n160000 commit "+sub+"\tvendor\n"), "mktree")
	commit := fixtures.Git(t, src, "commit-tree", tree, "-p", second.String(), "-m", "with a submodule")
	fixtures.Git(t, src, "tag", "-a", "-m", "a request", "req", commit)
	tag := mustHash(t, fixtures.Git(t, src, "rev-parse", "refs/tags/req"))

	n, err := openRepo(t, dst).CopyObjects(openRepo(t, src), []Hash{tag}, copyAll)
	if err != nil || n != 16 { // the 13 of second, its new tree, commit and tag
		t.Fatalf("CopyObjects(tag) = %d, %v; want 16 objects", n, err)
	}
	if typ := fixtures.Git(t, dst, "cat-file", "-t", tag.String()); typ != "tag" {
		t.Errorf("the tag was copied as a %s", typ)
	}
	if _, err := fixtures.RunGit(dst, nil, nil, "cat-file", "-e", sub); err == nil {
		t.Errorf("the submodule's commit exists in the copy")
	}
}

func TestCopyObjectsMissing(t *testing.T) {
	src, dst, _, _ := copyWorld(t)
	missing := NewHash("1234567890123456789012345678901234567890")
	if _, err := openRepo(t, dst).CopyObjects(openRepo(t, src), []Hash{missing}, copyAll); err == nil || errors.Is(err, ErrTooMuchToCopy) {
		t.Errorf("copying an object the source lacks: %v; want an error", err)
	}
}

var copyAll = CopyOptions{MaxObjects: 100, MaxBytes: 1 << 20}

func TestCopyObjectsFresh(t *testing.T) {
	src, dst, first, _ := copyWorld(t)
	// A signed-claim-like commit without parents, made in src: copied
	// without asking dst, and nothing beyond it.
	tree := fixtures.Git(t, src, "rev-parse", first.String()+"^{tree}")
	fresh := mustHash(t, fixtures.Git(t, src, "commit-tree", tree, "-m", "fresh"))
	n, err := openRepo(t, dst).CopyObjects(openRepo(t, src), []Hash{fresh}, CopyOptions{MaxObjects: 16, MaxBytes: 1 << 20, Fresh: true})
	if err != nil || n != 7 {
		t.Fatalf("CopyObjects(fresh) = %d, %v; want 7 objects", n, err)
	}
	connected(t, dst, fresh)
}
