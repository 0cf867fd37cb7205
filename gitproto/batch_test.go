package gitproto

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
)

func TestReadObjects(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	fixtures.WriteFile(t, dir, "status.json", "{\"a\":1}\n", 0o644)
	fixtures.WriteFile(t, dir, "empty", "", 0o644)
	c := fixtures.CommitAll(t, dir, "one")
	r := openRepo(t, dir)
	names := []string{c + ":status.json", c + ":nothing", c + ":empty", strings.Repeat("0", 40), c}
	var got []string
	err := r.ReadObjects(context.Background(), names, func(i int, data []byte, ok bool) error {
		got = append(got, fmt.Sprintf("%d %v %q", i, ok, strings.SplitN(string(data), "\n", 2)[0]))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`0 true "{\"a\":1}"`, `1 false ""`, `2 true ""`, `3 false ""`, `4 true "tree ` + fixtures.Git(t, dir, "rev-parse", c+"^{tree}") + `"`}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ReadObjects:\n got %q\nwant %q", got, want)
	}
	stop := errors.New("stop")
	n := 0
	err = r.ReadObjects(context.Background(), append(names, names...), func(int, []byte, bool) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("ReadObjects stopped by each: err %v after %d calls, want %v after 1", err, n, stop)
	}
	if err := r.ReadObjects(context.Background(), []string{"a\nb"}, func(int, []byte, bool) error { return nil }); err == nil {
		t.Error("a name with a newline was accepted")
	}
}

func TestDeleteRefsCompareAndSwap(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	fixtures.WriteFile(t, dir, "f", "1", 0o644)
	c1 := fixtures.CommitAll(t, dir, "one")
	fixtures.WriteFile(t, dir, "f", "2", 0o644)
	c2 := fixtures.CommitAll(t, dir, "two")
	for i := 0; i < 6; i++ {
		fixtures.Git(t, dir, "update-ref", fmt.Sprintf("refs/ci/runs/x/%d", i), c1)
	}
	fixtures.Git(t, dir, "pack-refs", "--all")
	fixtures.Git(t, dir, "update-ref", "refs/ci/runs/x/5", c1) // loose again, same value
	r := openRepo(t, dir)
	dels := map[string]Hash{}
	for i := 0; i < 6; i++ {
		dels[fmt.Sprintf("refs/ci/runs/x/%d", i)] = mustHash(t, c1)
	}
	// Changed since it was read: moved, deleted.
	fixtures.Git(t, dir, "update-ref", "refs/ci/runs/x/1", c2)
	fixtures.Git(t, dir, "update-ref", "-d", "refs/ci/runs/x/4")
	changed, err := r.DeleteRefs(context.Background(), dels)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"refs/ci/runs/x/1", "refs/ci/runs/x/4"}; !reflect.DeepEqual(changed, want) {
		t.Errorf("changed = %q, want %q", changed, want)
	}
	if left := fixtures.Git(t, dir, "for-each-ref", "--format=%(refname) %(objectname)", "refs/ci/"); left != "refs/ci/runs/x/1 "+c2 {
		t.Errorf("left after DeleteRefs: %q", left)
	}
	if _, err := r.DeleteRefs(context.Background(), map[string]Hash{"refs/ci/runs/x/1": ZeroHash}); err == nil {
		t.Error("a deletion without a value was accepted")
	}
	// A ref locked by another writer is not deleted, nor are the others
	// held back.
	fixtures.Git(t, dir, "update-ref", "refs/ci/runs/y/1", c1)
	fixtures.Git(t, dir, "update-ref", "refs/ci/runs/y/2", c1)
	fixtures.WriteFile(t, filepath.Join(dir, ".git"), "refs/ci/runs/y/1.lock", "", 0o644)
	changed, err = r.DeleteRefs(context.Background(), map[string]Hash{"refs/ci/runs/y/1": mustHash(t, c1), "refs/ci/runs/y/2": mustHash(t, c1)})
	if err != nil || !reflect.DeepEqual(changed, []string{"refs/ci/runs/y/1"}) {
		t.Errorf("DeleteRefs with a lock held = %q, %v", changed, err)
	}
	// The same for a ref only in packed-refs: a writer holding its lock
	// is about to update it.
	fixtures.Git(t, dir, "update-ref", "--create-reflog", "refs/ci/runs/z/1", c1)
	fixtures.Git(t, dir, "update-ref", "--create-reflog", "refs/ci/runs/z/2", c1)
	fixtures.Git(t, dir, "pack-refs", "--all")
	fixtures.WriteFile(t, filepath.Join(dir, ".git"), "refs/ci/runs/z/1.lock", "", 0o644)
	changed, err = r.DeleteRefs(context.Background(), map[string]Hash{"refs/ci/runs/z/1": mustHash(t, c1), "refs/ci/runs/z/2": mustHash(t, c1)})
	if err != nil || !reflect.DeepEqual(changed, []string{"refs/ci/runs/z/1"}) {
		t.Errorf("DeleteRefs of packed refs with a lock held = %q, %v", changed, err)
	}
	if left := fixtures.Git(t, dir, "for-each-ref", "--format=%(refname)", "refs/ci/runs/z/"); left != "refs/ci/runs/z/1" {
		t.Errorf("packed refs left: %q", left)
	}
	if _, err := os.Stat(filepath.Join(dir, ".git", "logs", "refs", "ci", "runs", "z", "2")); err == nil {
		t.Error("the reflog of a deleted packed ref is left")
	}
	if _, err := os.Stat(filepath.Join(dir, ".git", "logs", "refs", "ci", "runs", "z", "1")); err != nil {
		t.Errorf("the reflog of a ref that was not deleted: %v", err)
	}
	// A loose ref alone in its directory: the directory goes too, and no
	// lock is left behind.
	fixtures.Git(t, dir, "update-ref", "refs/ci/runs/w/1", c1)
	if changed, err := r.DeleteRefs(context.Background(), map[string]Hash{"refs/ci/runs/w/1": mustHash(t, c1)}); err != nil || changed != nil {
		t.Errorf("DeleteRefs of a loose ref = %q, %v", changed, err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".git", "refs", "ci", "runs", "w")); !os.IsNotExist(err) {
		t.Errorf("the emptied directory of a deleted loose ref: %v", err)
	}
	locks, _ := filepath.Glob(filepath.Join(dir, ".git", "refs", "ci", "runs", "*", "*.lock"))
	if len(locks) != 2 { // the test's own, y/1 and z/1
		t.Errorf("locks left: %q", locks)
	}
	fsckStrict(t, dir)
}

func TestTips(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	fixtures.WriteFile(t, dir, "f", "1", 0o644)
	c1 := fixtures.CommitAll(t, dir, "one")
	fixtures.WriteFile(t, dir, "f", "2", 0o644)
	c2 := fixtures.CommitAll(t, dir, "two")
	fixtures.Git(t, dir, "tag", "light", c1)
	fixtures.Git(t, dir, "tag", "-a", "-m", "annotated", "v1", c1)
	tree := fixtures.Git(t, dir, "rev-parse", c1+"^{tree}")
	fixtures.Git(t, dir, "tag", "-a", "-m", "a tree", "tree", tree)
	branch := strings.TrimPrefix(fixtures.Git(t, dir, "symbolic-ref", "HEAD"), "")
	want := map[string]Hash{branch: mustHash(t, c2), "refs/tags/light": mustHash(t, c1), "refs/tags/v1": mustHash(t, c1)}
	r := openRepo(t, dir)
	got, err := r.Tips(context.Background(), "refs/heads/", "refs/tags/")
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Tips = %v, %v; want %v", got, err, want)
	}
	bare := fixtures.BareRepo(t, "remote")
	fixtures.Git(t, dir, "push", "-q", bare, "--all")
	fixtures.Git(t, dir, "push", "-q", bare, "--tags")
	rem, err := OpenRemote(bare, filepath.Join(t.TempDir(), "cache.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err = rem.ListTips(context.Background(), "refs/heads/", "refs/tags/")
	want["refs/tags/tree"] = mustHash(t, tree) // ls-remote peels to whatever it is
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("ListTips = %v, %v; want %v", got, err, want)
	}
}
