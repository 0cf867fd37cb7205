package gitproto

import (
	"errors"
	"fmt"
	"math/rand"
	"sort"
	"testing"

	"refci.dev/refci/fixtures"
)

// EditTree gives the tree WriteTree gives for the same files, whatever
// the edits (adds, changes, removals that empty a directory), and git
// accepts what it writes; DiffTrees reports exactly the files that
// differ; TreeEntryAt finds what is there.
func TestEditTreeMatchesWriteTree(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	r := openRepo(t, dir)
	rnd := rand.New(rand.NewSource(7))
	files := map[string]Hash{}
	blob := func(i int) Hash {
		h, err := r.WriteBlob([]byte(fmt.Sprintf("blob %d\n", i)))
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	tree := ZeroHash
	for round := 0; round < 30; round++ {
		var edits []TreeEdit
		want := map[string]Hash{}
		for p, h := range files {
			want[p] = h
		}
		for k := 0; k < 1+rnd.Intn(12); k++ {
			p := fmt.Sprintf("d%d/e%d/f%d", rnd.Intn(3), rnd.Intn(4), rnd.Intn(5))
			if rnd.Intn(3) == 0 {
				p = fmt.Sprintf("top%d", rnd.Intn(3))
			}
			if _, ok := want[p]; ok && rnd.Intn(2) == 0 {
				edits = append(edits, TreeEdit{Path: p})
				delete(want, p)
				continue
			}
			h := blob(rnd.Intn(1000))
			edits = append(edits, TreeEdit{Path: p, Hash: h})
			want[p] = h
		}
		// Later edits of one path win, as in the map above.
		got, err := r.EditTree(tree, edits)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		var all []TreeFile
		for p, h := range want {
			all = append(all, TreeFile{Path: p, Hash: h})
		}
		full, err := r.WriteTree(all)
		if err != nil {
			t.Fatal(err)
		}
		if got != full {
			t.Fatalf("round %d: EditTree = %s, WriteTree of the same files = %s", round, got, full)
		}
		changed := map[string]Hash{}
		if err := r.DiffTrees(tree, got, func(c TreeChange) error { changed[c.Path] = c.Hash; return nil }); err != nil {
			t.Fatal(err)
		}
		wantChanged := map[string]Hash{}
		for p, h := range want {
			if files[p] != h {
				wantChanged[p] = h
			}
		}
		for p := range files {
			if _, ok := want[p]; !ok {
				wantChanged[p] = ZeroHash
			}
		}
		if fmt.Sprint(sorted(changed)) != fmt.Sprint(sorted(wantChanged)) {
			t.Fatalf("round %d: DiffTrees = %v, want %v", round, sorted(changed), sorted(wantChanged))
		}
		for p, h := range want {
			if at, isDir, err := r.TreeEntryAt(got, p); err != nil || isDir || at != h {
				t.Fatalf("TreeEntryAt(%s) = %s, %v, %v; want %s", p, at, isDir, err, h)
			}
		}
		if _, _, err := r.TreeEntryAt(got, "d9/nothing"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("TreeEntryAt of a missing path: %v", err)
		}
		tree, files = got, want
	}
	if c := fixtures.Git(t, dir, "commit-tree", "-m", "x", tree.String()); c != "" {
		fixtures.Git(t, dir, "update-ref", "refs/heads/edit", c)
	}
	fsckStrict(t, dir)
}

func sorted(m map[string]Hash) []string {
	var out []string
	for p, h := range m {
		out = append(out, p+"="+h.String())
	}
	sort.Strings(out)
	return out
}

func TestEditTreeRefusesBadPaths(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	r := openRepo(t, dir)
	h, err := r.WriteBlob([]byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	base, err := r.EditTree(ZeroHash, []TreeEdit{{Path: "a/b", Hash: h}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"../x", "/abs", ".git/config", "a/.GIT/x", "a", "a/b/c", "."} {
		if _, err := r.EditTree(base, []TreeEdit{{Path: p, Hash: h}}); err == nil {
			t.Errorf("EditTree accepted %q", p)
		}
	}
}
