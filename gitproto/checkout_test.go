package gitproto

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
)

// lsTreeEntry is one line of git ls-tree -r -z.
type lsTreeEntry struct {
	mode, typ, hash, path string
}

func lsTree(t *testing.T, dir, rev string) []lsTreeEntry {
	t.Helper()
	var out []lsTreeEntry
	for _, rec := range strings.Split(string(fixtures.GitBytes(t, dir, "ls-tree", "-r", "-z", "--full-tree", rev)), "\x00") {
		if rec == "" {
			continue
		}
		meta, path, _ := strings.Cut(rec, "\t")
		f := strings.Fields(meta)
		out = append(out, lsTreeEntry{f[0], f[1], f[2], path})
	}
	return out
}

// checkoutFixture is a commit with every kind of tree entry.
func newCheckoutFixture(t *testing.T) (dir string, commit Hash) {
	t.Helper()
	dir = fixtures.NewRepo(t)
	fixtures.WriteFile(t, dir, "README", "hello\n", 0o644)
	fixtures.WriteFile(t, dir, "empty", "", 0o644)
	fixtures.WriteFile(t, dir, ".refci/run", "#!/bin/sh\necho run\n", 0o755)
	fixtures.WriteFile(t, dir, "bin/tool", "#!/bin/sh\n", 0o755)
	fixtures.WriteFile(t, dir, "dir/sub/deep.txt", strings.Repeat("deep\n", 20000), 0o644) // > 64 KiB copy buffer
	fixtures.WriteFile(t, dir, "name with spaces/ünï\tcode", "odd\n", 0o644)
	for link, target := range map[string]string{
		"link":        "README",
		"abs":         "/etc/passwd",
		"dangling":    "nowhere/else",
		"dirlink":     "dir",
		"dir/up":      "../../outside",
		".refci/self": "run",
	} {
		if err := os.Symlink(target, filepath.Join(dir, filepath.FromSlash(link))); err != nil {
			t.Fatal(err)
		}
	}
	first := fixtures.CommitAll(t, dir, "files")
	fixtures.Git(t, dir, "update-index", "--add", "--cacheinfo", "160000,"+first+",vendor/sub")
	fixtures.Git(t, dir, "commit", "-q", "-m", "with a submodule")
	return dir, mustHash(t, fixtures.Git(t, dir, "rev-parse", "HEAD"))
}

func TestCheckoutMatchesGitTree(t *testing.T) {
	t.Parallel()
	dir, commit := newCheckoutFixture(t)
	mask := umask(t)
	indexBefore, err := os.ReadFile(filepath.Join(dir, ".git", "index"))
	if err != nil {
		t.Fatal(err)
	}
	statusBefore := fixtures.Git(t, dir, "status", "--porcelain", "--ignored")

	r := openRepo(t, dir)
	dest := filepath.Join(t.TempDir(), "checkout")
	if err := os.Mkdir(dest, 0o755); err != nil {
		t.Fatal(err)
	}
	st, err := r.Checkout(commit, dest)
	if err != nil {
		t.Fatalf("Checkout: %v", err)
	}

	var want CheckoutStats
	seen := map[string]bool{}
	for _, e := range lsTree(t, dir, commit.String()) {
		seen[e.path] = true
		p := filepath.Join(dest, filepath.FromSlash(e.path))
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%s (%s) not checked out: %v", e.path, e.mode, err)
			continue
		}
		switch e.mode {
		case "100644", "100755":
			want.Files++
			perm := os.FileMode(0o644)
			if e.mode == "100755" {
				perm = 0o755
			}
			if !fi.Mode().IsRegular() || fi.Mode().Perm() != perm&^mask {
				t.Errorf("%s: mode %v, want a regular file with %v", e.path, fi.Mode(), perm&^mask)
			}
			content, _ := os.ReadFile(p)
			want.Bytes += int64(len(content))
			if !bytes.Equal(content, fixtures.GitBytes(t, dir, "cat-file", "blob", e.hash)) {
				t.Errorf("%s: content differs from blob %s", e.path, e.hash)
			}
		case "120000":
			want.Symlinks++
			target, err := os.Readlink(p)
			if fi.Mode()&fs.ModeSymlink == 0 || err != nil {
				t.Errorf("%s: %v, want a symlink", e.path, fi.Mode())
			} else if want := string(fixtures.GitBytes(t, dir, "cat-file", "blob", e.hash)); target != want {
				t.Errorf("%s: symlink to %q, want %q verbatim", e.path, target, want)
			}
		case "160000":
			want.Submodules++
			if !fi.IsDir() {
				t.Errorf("submodule %s: %v, want a directory", e.path, fi.Mode())
			} else if names := listDir(t, p); len(names) != 0 {
				t.Errorf("submodule %s is not empty: %v", e.path, names)
			}
		default:
			t.Errorf("fixture: unexpected mode %s for %s", e.mode, e.path)
		}
	}
	// Nothing else was written.
	filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dest {
			return err
		}
		rel := filepath.ToSlash(strings.TrimPrefix(p, dest+string(filepath.Separator)))
		if !d.IsDir() && !seen[rel] {
			t.Errorf("unexpected %s in the checkout", rel)
		}
		return nil
	})
	if st != want {
		t.Errorf("CheckoutStats = %+v, want %+v", st, want)
	}
	if want.Files < 6 || want.Symlinks != 6 || want.Submodules != 1 {
		t.Errorf("fixture is missing entries: %+v", want)
	}
	// The symlink to /etc/passwd is a link, not a copy.
	if fi, err := os.Lstat(filepath.Join(dest, "abs")); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("abs: %v, %v; want a symlink", fi, err)
	}

	indexAfter, err := os.ReadFile(filepath.Join(dir, ".git", "index"))
	if err != nil || !bytes.Equal(indexBefore, indexAfter) {
		t.Errorf("Checkout changed .git/index (%v)", err)
	}
	if s := fixtures.Git(t, dir, "status", "--porcelain", "--ignored"); s != statusBefore {
		t.Errorf("Checkout changed the work tree: git status\n%s\nwas\n%s", s, statusBefore)
	}
	if h := fixtures.Git(t, dir, "rev-parse", "HEAD"); h != commit.String() {
		t.Errorf("HEAD moved to %s", h)
	}
}

func TestCheckoutOtherCommitAndErrors(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	fixtures.WriteFile(t, dir, "f", "old\n", 0o644)
	old := mustHash(t, fixtures.CommitAll(t, dir, "old"))
	fixtures.WriteFile(t, dir, "f", "new\n", 0o644)
	fixtures.WriteFile(t, dir, "g", "added\n", 0o644)
	fixtures.CommitAll(t, dir, "new")
	fixtures.WriteFile(t, dir, "f", "uncommitted\n", 0o644)

	r := openRepo(t, dir)
	dest := t.TempDir()
	st, err := r.Checkout(old, dest)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "f")); string(b) != "old\n" {
		t.Errorf("f = %q, want the committed old content", b)
	}
	if names := listDir(t, dest); strings.Join(names, ",") != "f" {
		t.Errorf("checkout of the old commit has %v", names)
	}
	if st.Files != 1 || st.Bytes != 4 {
		t.Errorf("stats = %+v", st)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "f")); string(b) != "uncommitted\n" {
		t.Errorf("the work tree's f was changed to %q", b)
	}

	// A tree or a missing object is not a commit to check out.
	tree := mustHash(t, fixtures.Git(t, dir, "rev-parse", "HEAD^{tree}"))
	if _, err := r.Checkout(tree, t.TempDir()); err == nil {
		t.Errorf("Checkout of a tree succeeded")
	}
	if _, err := r.Checkout(mustHash(t, strings.Repeat("ab", 20)), t.TempDir()); err == nil {
		t.Errorf("Checkout of a missing commit succeeded")
	}
}

// TestCheckoutRefusesUnsafeTrees builds trees git itself would never write
// (hash-object --literally) and checks that Checkout never writes outside
// its directory and never creates a .git.
func TestCheckoutRefusesUnsafeTrees(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	r := openRepo(t, dir)
	blob := fixtures.GitStdin(t, dir, []byte("pwned\n"), "hash-object", "-w", "--stdin")
	payload := fixtures.GitStdin(t, dir, []byte(fmt.Sprintf("100644 blob %s\tpwned\n", blob)), "mktree")                                   // a tree with one file, pwned
	hooks := fixtures.GitStdin(t, dir, []byte(fmt.Sprintf("100755 blob %s\tpost-checkout\n", blob)), "mktree")                             // hooks/post-checkout
	dotgitTree := fixtures.GitStdin(t, dir, []byte(fmt.Sprintf("040000 tree %s\thooks\n100644 blob %s\tconfig\n", hooks, blob)), "mktree") // .git content

	type tc struct {
		name    string
		entries func(t *testing.T, outside string) []rawEntry
	}
	link := func(t *testing.T, target string) string {
		return fixtures.GitStdin(t, dir, []byte(target), "hash-object", "-w", "--stdin")
	}
	cases := []tc{
		{"dotdot-dir", func(t *testing.T, _ string) []rawEntry { return []rawEntry{{"40000", "..", payload}} }},
		{"dot-dir", func(t *testing.T, _ string) []rawEntry { return []rawEntry{{"40000", ".", payload}} }},
		{"empty-name", func(t *testing.T, _ string) []rawEntry { return []rawEntry{{"100644", "", blob}} }},
		{"slash-name", func(t *testing.T, _ string) []rawEntry { return []rawEntry{{"100644", "../pwned", blob}} }},
		{"slash-name-deep", func(t *testing.T, _ string) []rawEntry { return []rawEntry{{"100644", "../../outside/pwned", blob}} }},
		{"dotgit-dir", func(t *testing.T, _ string) []rawEntry { return []rawEntry{{"40000", ".git", dotgitTree}} }},
		{"dotgit-upper", func(t *testing.T, _ string) []rawEntry { return []rawEntry{{"40000", ".GIT", dotgitTree}} }},
		{"dotgit-mixed", func(t *testing.T, _ string) []rawEntry { return []rawEntry{{"40000", ".gIt", dotgitTree}} }},
		{"dotgit-file", func(t *testing.T, _ string) []rawEntry { return []rawEntry{{"100644", ".git", blob}} }},
		{"dotgit-symlink", func(t *testing.T, outside string) []rawEntry { return []rawEntry{{"120000", ".git", link(t, outside)}} }},
		{"nested-dotgit", func(t *testing.T, _ string) []rawEntry {
			sub := writeRawTree(t, dir, rawEntry{"40000", ".git", dotgitTree})
			return []rawEntry{{"40000", "sub", sub}}
		}},
		{"nested-dotdot", func(t *testing.T, _ string) []rawEntry {
			sub := writeRawTree(t, dir, rawEntry{"40000", "..", writeRawTree(t, dir, rawEntry{"40000", "..", payload})})
			return []rawEntry{{"40000", "sub", sub}}
		}},
		{"symlink-then-dir", func(t *testing.T, outside string) []rawEntry {
			return []rawEntry{{"120000", "link", link(t, outside)}, {"40000", "link", payload}}
		}},
		{"relative-symlink-then-dir", func(t *testing.T, _ string) []rawEntry {
			return []rawEntry{{"120000", "link", link(t, "../outside")}, {"40000", "link", payload}}
		}},
		{"dir-then-symlink", func(t *testing.T, outside string) []rawEntry {
			return []rawEntry{{"40000", "link", payload}, {"120000", "link", link(t, outside)}}
		}},
		{"symlink-then-file", func(t *testing.T, outside string) []rawEntry {
			return []rawEntry{{"120000", "pwned", link(t, filepath.Join(outside, "pwned"))}, {"100644", "pwned", blob}}
		}},
		{"symlink-then-exec", func(t *testing.T, outside string) []rawEntry {
			return []rawEntry{{"120000", "pwned", link(t, filepath.Join(outside, "pwned"))}, {"100755", "pwned", blob}}
		}},
		{"symlink-dir-then-nested", func(t *testing.T, outside string) []rawEntry {
			// a/link -> outside, then a/link/pwned through a second "a" tree
			a1 := writeRawTree(t, dir, rawEntry{"120000", "link", link(t, outside)})
			a2 := writeRawTree(t, dir, rawEntry{"40000", "link", payload})
			return []rawEntry{{"40000", "a", a1}, {"40000", "a", a2}}
		}},
		{"gitlink-then-dir", func(t *testing.T, _ string) []rawEntry {
			return []rawEntry{{"160000", "m", blob}, {"40000", "m", payload}}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			parent := t.TempDir()
			dest := filepath.Join(parent, "dest")
			outside := filepath.Join(parent, "outside")
			for _, d := range []string{dest, outside} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			tree := writeRawTree(t, dir, c.entries(t, outside)...)
			commit := mustHash(t, fixtures.Git(t, dir, "commit-tree", tree, "-m", c.name))
			_, err := r.Checkout(commit, dest)
			if err == nil {
				t.Errorf("Checkout of an unsafe tree succeeded")
			} else {
				t.Logf("refused: %v", err)
			}
			if names := listDir(t, parent); strings.Join(names, " ") != "dest outside" {
				t.Errorf("Checkout wrote next to its directory: %v", names)
			}
			if names := listDir(t, outside); len(names) != 0 {
				t.Errorf("Checkout wrote outside its directory: %v", names)
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(parent), "pwned")); err == nil {
				t.Errorf("Checkout wrote %s", filepath.Join(filepath.Dir(parent), "pwned"))
			}
			filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
				if err == nil && strings.EqualFold(d.Name(), ".git") {
					t.Errorf("Checkout created %s", p)
				}
				return nil
			})
		})
	}
}
