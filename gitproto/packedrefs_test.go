package gitproto

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
)

func TestSetPackedRefsGitAgrees(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	gitDir := filepath.Join(f.dir, ".git")
	// What git left: a packed annotated tag (with its ^peeled line), a
	// packed ref, and a loose ref that shadows a packed value.
	fixtures.Git(t, f.dir, "tag", "-a", "-m", "annotated", "ann", f.c1.String())
	fixtures.Git(t, f.dir, "update-ref", "refs/ci/requests/b", f.c1.String())
	fixtures.Git(t, f.dir, "update-ref", "refs/ci/requests/shadowed", f.c1.String())
	packRefs(t, f.dir)
	fixtures.Git(t, f.dir, "update-ref", "refs/ci/requests/shadowed", f.c2.String())
	tag := gitRef(t, f.dir, "refs/tags/ann")

	err := setPackedRefs(gitDir, map[string]Hash{
		"refs/ci/requests/a":        f.c3,
		"refs/ci/requests/b":        ZeroHash,
		"refs/ci/requests/shadowed": f.c3,
		"refs/ci/claims/x/y":        f.c2,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"refs/ci/requests/a":        f.c3.String(),
		"refs/ci/requests/b":        "",
		"refs/ci/requests/shadowed": f.c3.String(),
		"refs/ci/claims/x/y":        f.c2.String(),
		"refs/heads/main":           f.c3.String(),
		"refs/tags/ann":             tag,
	}
	for name, w := range want {
		if got := gitRef(t, f.dir, name); got != w {
			t.Errorf("git reads %s = %q, want %q", name, got, w)
		}
	}
	// The tag still peels (its ^ line is gone: git peels it itself).
	if got := gitRef(t, f.dir, "refs/tags/ann^{}"); got != f.c1.String() {
		t.Errorf("the tag peels to %q, want %s", got, f.c1)
	}
	// No loose file for what was set, and nothing left locked.
	for _, name := range []string{"refs/ci/requests/a", "refs/ci/requests/shadowed", "refs/ci/claims/x/y"} {
		if _, err := os.Lstat(filepath.Join(gitDir, name)); err == nil {
			t.Errorf("%s is a loose file", name)
		}
	}
	noLocks(t, gitDir)
	// This package reads the same, git's own tools accept the file, and
	// git can go on changing refs beside it.
	r := openRepo(t, f.dir)
	refs, err := r.Refs("refs/ci/requests/")
	if err != nil || len(refs) != 2 {
		t.Errorf("Refs(requests) = %v, %v; want a and shadowed", refs, err)
	}
	fixtures.Git(t, f.dir, "show-ref", "--verify", "refs/ci/requests/a")
	fixtures.Git(t, f.dir, "update-ref", "-d", "refs/ci/requests/a")
	fixtures.Git(t, f.dir, "pack-refs", "--all")
	if got := gitRef(t, f.dir, "refs/ci/requests/a"); got != "" {
		t.Errorf("git's delete after ours left %s", got)
	}
	if got := gitRef(t, f.dir, "refs/ci/claims/x/y"); got != f.c2.String() {
		t.Errorf("after git's pack-refs: refs/ci/claims/x/y = %q", got)
	}
	fsckStrict(t, f.dir)
}

// A held packed-refs.lock is waited for, then reported; the file is not
// touched meanwhile.
func TestSetPackedRefsWaitsForTheLock(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	gitDir := filepath.Join(f.dir, ".git")
	lock := filepath.Join(gitDir, "packed-refs.lock")
	if err := os.WriteFile(lock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	err := setPackedRefs(gitDir, map[string]Hash{"refs/ci/requests/a": f.c1})
	if !errors.Is(err, ErrRefChanged) || !strings.Contains(err.Error(), "packed-refs.lock") {
		t.Fatalf("with packed-refs.lock held: %v; want an error naming the lock", err)
	}
	if d := time.Since(t0); d < packedRefsTimeout/2 {
		t.Errorf("gave up after %s, without waiting", d)
	}
	if got := gitRef(t, f.dir, "refs/ci/requests/a"); got != "" {
		t.Errorf("the ref was set while the lock was held: %s", got)
	}
	// Released a moment later: the write goes through.
	go func() { time.Sleep(100 * time.Millisecond); os.Remove(lock) }()
	if err := setPackedRefs(gitDir, map[string]Hash{"refs/ci/requests/a": f.c1}); err != nil {
		t.Fatalf("after the lock was released: %v", err)
	}
	if got := gitRef(t, f.dir, "refs/ci/requests/a"); got != f.c1.String() {
		t.Errorf("refs/ci/requests/a = %q", got)
	}
}

func TestSetPackedRefsRefusesBadNames(t *testing.T) {
	t.Parallel()
	f := newRefsFixture(t)
	for _, name := range []string{"HEAD", "refs/ci/requests/a..b", "refs/ci/requests/x.lock", "refs/ci/requests/"} {
		if err := setPackedRefs(filepath.Join(f.dir, ".git"), map[string]Hash{name: f.c1}); err == nil {
			t.Errorf("setPackedRefs accepted the name %q", name)
		}
	}
	if _, err := os.Stat(filepath.Join(f.dir, ".git", "packed-refs")); err == nil {
		t.Error("a refused batch wrote packed-refs")
	}
}

func TestPackedRefLookupAndConflict(t *testing.T) {
	t.Parallel()
	h1, h2, h3 := strings.Repeat("1", 40), strings.Repeat("2", 40), strings.Repeat("3", 40)
	data := []byte("# pack-refs with: peeled fully-peeled sorted \n" +
		h1 + " refs/ci/runs/ab\n" +
		h2 + " refs/ci/runs/abc/x\n" +
		h3 + " refs/tags/t\n" +
		"^" + h1 + "\n" +
		h1 + " refs/z")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "packed-refs"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := readPackedRefsFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"refs/ci/runs/ab": h1, "refs/ci/runs/abc/x": h2, "refs/tags/t": h3, "refs/z": h1,
		"refs/ci/runs/a": "", "refs/ci/runs/abc": "", "refs/ci/runs/b": "", "runs/ab": "",
	} {
		h, ok := packedRefLookup(b, name)
		if got := map[bool]string{true: h.String(), false: ""}[ok]; got != want {
			t.Errorf("packedRefLookup(%s) = %q, want %q", name, got, want)
		}
	}
	for name, want := range map[string]string{
		"refs/ci/runs/abc":     "refs/ci/runs/abc/x", // a ref below it
		"refs/ci/runs/ab/new":  "refs/ci/runs/ab",    // a ref above it
		"refs/z/a":             "refs/z",             // the last line, without its newline
		"refs/ci/runs/a":       "",
		"refs/ci/runs/abcd":    "",
		"refs/ci/runs/abc/x/y": "refs/ci/runs/abc/x",
	} {
		if got := packedRefConflict(b, name); got != want {
			t.Errorf("packedRefConflict(%s) = %q, want %q", name, got, want)
		}
	}
}

// A sorted packed-refs file is binary-searched for a prefix: the refs
// found are those a line-by-line read finds, for every prefix (each
// ref's name, its leading parts, names between refs, before the first
// and after the last), with peeled lines anywhere, and an unsorted file
// is read line by line.
func TestPackedRefsPrefixSearch(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(7, 9))
	for round := 0; round < 40; round++ {
		n := rng.IntN(60)
		names := map[string]bool{}
		for len(names) < n {
			names[fmt.Sprintf("refs/%s/%x/%d", []string{"ci/runs", "ci/requests", "heads", "tags", "ci/runsX"}[rng.IntN(5)], rng.IntN(8), rng.IntN(20))] = true
		}
		sorted := make([]string, 0, n)
		for name := range names {
			sorted = append(sorted, name)
		}
		sort.Strings(sorted)
		var b strings.Builder
		b.WriteString("# pack-refs with: peeled fully-peeled sorted \n")
		for i, name := range sorted {
			fmt.Fprintf(&b, "%040x %s\n", i+1, name)
			if rng.IntN(4) == 0 {
				fmt.Fprintf(&b, "^%040x\n", 1000+i)
			}
		}
		data := []byte(b.String())
		dir := t.TempDir()
		prefixes := []string{"refs/", "refs/ci/runs/", "refs/ci/runs", "a", "refs/zzz", "refs/ci/runs/3/", "refs/ci/runs/3/1"}
		for _, name := range sorted {
			prefixes = append(prefixes, name, name[:rng.IntN(len(name))+1], name+"0")
		}
		for _, prefix := range prefixes {
			want := map[string]Hash{}
			for i, name := range sorted {
				if strings.HasPrefix(name, prefix) {
					want[name] = NewHash(fmt.Sprintf("%040x", i+1))
				}
			}
			got := map[string]Hash{}
			scanPackedPrefix(data, prefix, func(n string, h Hash) { got[n] = h })
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("prefix %q in\n%s\ngot  %v\nwant %v", prefix, data, got, want)
			}
			// Through the file, sorted and not.
			for _, header := range []string{"", "# pack-refs with: peeled \n"} {
				file := data
				if header != "" {
					file = append([]byte(header), data[bytes.IndexByte(data, '\n')+1:]...)
				}
				p := filepath.Join(dir, "packed-refs")
				if err := os.WriteFile(p, file, 0o644); err != nil {
					t.Fatal(err)
				}
				got := map[string]Hash{}
				if err := readPackedRefs(p, prefix, got); err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("readPackedRefs(%q) with header %q = %v, %v; want %v", prefix, header, got, err, want)
				}
			}
		}
	}
}
