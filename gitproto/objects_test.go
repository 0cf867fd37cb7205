package gitproto

import (
	"context"
	"errors"
	"io"
	"os"
	"sort"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
)

func TestHashIsItsOwnValue(t *testing.T) {
	const id = "0123456789abcdef0123456789abcdef01234567"
	h := NewHash(id)
	if h.String() != id || h.IsZero() || !IsHash(id) {
		t.Errorf("NewHash(%s) = %s, zero %v", id, h, h.IsZero())
	}
	if !ZeroHash.IsZero() || ZeroHash.String() != strings.Repeat("0", 40) {
		t.Errorf("ZeroHash = %s", ZeroHash)
	}
	if IsHash("0123") || IsHash(strings.Repeat("g", 40)) {
		t.Error("IsHash took what is not an object id")
	}
}

func TestCommitTagAndTree(t *testing.T) {
	dir := fixtures.NewRepo(t)
	fixtures.WriteFile(t, dir, "a.txt", "a\n", 0o644)
	fixtures.WriteFile(t, dir, "d/run", "#!/bin/sh\n", 0o755)
	fixtures.WriteFile(t, dir, "d/sub/b.txt", "b\n", 0o644)
	if err := os.Symlink("a.txt", dir+"/d/link"); err != nil {
		t.Fatal(err)
	}
	first := mustHash(t, fixtures.CommitAll(t, dir, "first\n\nbody"))
	second := mustHash(t, fixtures.CommitAll(t, dir, "second"))
	fixtures.Git(t, dir, "tag", "-a", "-m", "tagged", "v1", first.String())
	r := openRepo(t, dir)

	c, err := r.Commit(second)
	if err != nil {
		t.Fatal(err)
	}
	if c.Hash != second || len(c.Parents) != 1 || c.Parents[0] != first || c.Message != "second\n" || c.Author.Name == "" || c.Signature != "" {
		t.Errorf("Commit = %+v", c)
	}
	payload, sig, err := SignedPayload(c)
	if err != nil || sig != "" || !strings.Contains(string(payload), "parent "+first.String()) {
		t.Errorf("SignedPayload = %q, %q, %v", payload, sig, err)
	}
	tagID := mustHash(t, fixtures.Git(t, dir, "rev-parse", "v1"))
	tag, err := r.Tag(tagID)
	if err != nil {
		t.Fatal(err)
	}
	if tag.Target != first || tag.Name != "v1" || tag.TargetType != "commit" || tag.Message != "tagged\n" {
		t.Errorf("Tag = %+v", tag)
	}
	if _, _, err := TagSignedPayload(tag); err != nil {
		t.Error(err)
	}
	if ok, err := r.IsAncestor(first, second); !ok || err != nil {
		t.Errorf("IsAncestor(first, second) = %v, %v", ok, err)
	}
	if ok, err := r.IsAncestor(second, first); ok || err != nil {
		t.Errorf("IsAncestor(second, first) = %v, %v", ok, err)
	}

	tree, err := r.TreeOf(second)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := tree.ReadFile("d/sub/b.txt"); err != nil || string(b) != "b\n" {
		t.Errorf("ReadFile = %q, %v", b, err)
	}
	ct, err := r.Tree(c)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := ct.ReadFile("a.txt"); err != nil || string(b) != "a\n" {
		t.Errorf("Tree(c).ReadFile = %q, %v", b, err)
	}
	if _, err := tree.ReadFile("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("ReadFile of a missing file = %v", err)
	}
	names, err := tree.List("d")
	if err != nil || strings.Join(names, ",") != "link,run,sub" {
		t.Errorf("List(d) = %v, %v", names, err)
	}
	if _, err := tree.List("a.txt"); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("List of a file = %v; want an error other than ErrNotFound", err)
	}
	if _, err := tree.List("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("List of a missing directory = %v", err)
	}
	var files []string
	err = tree.Files("d", func(f *File) error {
		rc, err := f.Open()
		if err != nil {
			return err
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if int64(len(b)) != f.Size {
			t.Errorf("%s: %d bytes, Size %d", f.Name, len(b), f.Size)
		}
		files = append(files, f.Name+map[bool]string{true: "", false: "@"}[f.Regular])
		return err
	})
	sort.Strings(files)
	if err != nil || strings.Join(files, ",") != "link@,run,sub/b.txt" {
		t.Errorf("Files(d) = %v, %v", files, err)
	}
	if err := tree.Files("nope", func(*File) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("Files of a missing directory = %v", err)
	}
}

func TestCLI(t *testing.T) {
	dir := fixtures.NewRepo(t)
	c := mustHash(t, fixtures.CommitAll(t, dir, "c"))
	ctx := context.Background()
	t.Setenv("GIT_DIR", "/nonexistent") // stripped: git works on Dir's repository
	git := CLI{Dir: dir}
	tag, err := git.MakeTag(ctx, TagSpec{Target: c, Name: "refci-request", Tagger: "T <t@example.invalid> 1700000000 +0000", Message: "hello\n"})
	if err != nil {
		t.Fatal(err)
	}
	typ, err := git.Run(ctx, "", "cat-file", "-t", tag.String())
	if err != nil || typ != "tag" {
		t.Errorf("cat-file -t = %q, %v", typ, err)
	}
	if err := git.UpdateRef(ctx, "refs/ci/requests/x", tag, ZeroHash, "test"); err != nil {
		t.Fatal(err)
	}
	err = git.UpdateRef(ctx, "refs/ci/requests/x", c, c, "test")
	var ce *CLIError
	if !errors.As(err, &ce) || ce.Op != "update-ref" || !strings.HasPrefix(err.Error(), "git update-ref: ") {
		t.Errorf("UpdateRef with a stale old value = %v", err)
	}
	if ExecPath() == "" {
		t.Error("ExecPath is empty")
	}

	// A failing git's standard output is kept in the error, apart from
	// its standard error, which alone makes the message.
	out, err := git.Run(ctx, "", "-c", "alias.both=!echo to-stdout; echo to-stderr >&2; exit 3", "both")
	if !errors.As(err, &ce) || out != "" || ce.Stdout != "to-stdout" || ce.Stderr != "to-stderr" || err.Error() != "git both: to-stderr" || ce.Op != "both" {
		t.Errorf("failing alias: out %q, err %v (%+v)", out, err, ce)
	}
	if _, err := git.Run(ctx, ""); !errors.As(err, &ce) || ce.Op != "" {
		t.Errorf("git without arguments: %v", err)
	}
}
