package gitproto

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
)

// resolveFixture is a repository with a little history and every kind of
// name ResolveCommit accepts:
//
//	c1 (topic, lw, dup tag, x) <- c2 (main, HEAD, v1 -> v2, dup branch)
type resolveFixture struct {
	dir          string
	c1, c2       string
	v1obj, v2obj string // annotated tag objects (v2 is a tag of v1)
	tree, blob   string
	blobTagObj   string // annotated tag of a blob
}

func newResolveFixture(t *testing.T) *resolveFixture {
	t.Helper()
	f := &resolveFixture{dir: fixtures.NewRepo(t)}
	fixtures.WriteFile(t, f.dir, "a.txt", "one\n", 0o644)
	f.c1 = fixtures.CommitAll(t, f.dir, "first")
	fixtures.WriteFile(t, f.dir, "b/c.txt", "two\n", 0o644)
	f.c2 = fixtures.CommitAll(t, f.dir, "second")
	fixtures.Git(t, f.dir, "branch", "topic", f.c1)
	fixtures.Git(t, f.dir, "branch", "x", f.c1)
	fixtures.Git(t, f.dir, "tag", "lw", f.c1)
	fixtures.Git(t, f.dir, "tag", "-a", "-m", "version one", "v1", f.c2)
	fixtures.Git(t, f.dir, "tag", "-a", "-m", "tag of a tag", "v2", "v1")
	fixtures.Git(t, f.dir, "tag", "dup", f.c1)
	fixtures.Git(t, f.dir, "branch", "dup", f.c2)
	f.v1obj = fixtures.Git(t, f.dir, "rev-parse", "refs/tags/v1")
	f.v2obj = fixtures.Git(t, f.dir, "rev-parse", "refs/tags/v2")
	f.tree = fixtures.Git(t, f.dir, "rev-parse", f.c2+"^{tree}")
	f.blob = fixtures.Git(t, f.dir, "rev-parse", f.c2+":a.txt")
	fixtures.Git(t, f.dir, "tag", "-a", "-m", "a blob", "blobtag", f.blob)
	f.blobTagObj = fixtures.Git(t, f.dir, "rev-parse", "refs/tags/blobtag")
	fixtures.Git(t, f.dir, "tag", "treetag", f.tree)
	return f
}

// gitCommitOf is the oracle: what git says rev means as a commit.
func gitCommitOf(t *testing.T, dir, rev string) string {
	t.Helper()
	if rev == "" {
		rev = "HEAD"
	}
	return fixtures.Git(t, dir, "rev-parse", "--verify", "--end-of-options", rev+"^{commit}")
}

func TestResolveCommitAgreesWithGit(t *testing.T) {
	t.Parallel()
	f := newResolveFixture(t)
	r := openRepo(t, f.dir)
	revs := []string{
		"", "HEAD", "main", "topic", "x", "refs/heads/x", "heads/topic", "refs/heads/topic",
		"lw", "tags/lw", "refs/tags/lw",
		"v1", "v2", "refs/tags/v2", "tags/v2",
		"dup", // a tag and a branch: git prefers the tag
		f.c1, f.c2, f.c1[:7], f.c2[:12], strings.ToUpper(f.c2[:10]),
		f.v1obj, f.v2obj, f.v1obj[:10],
		"HEAD~1", "HEAD^", "HEAD~0", "main~1", "v1~1", "v2~1", "lw~0",
	}
	for _, rev := range revs {
		want := gitCommitOf(t, f.dir, rev)
		got, err := r.ResolveCommit(rev)
		if err != nil {
			t.Errorf("ResolveCommit(%q): %v; git says %s", rev, err, want)
			continue
		}
		if got.String() != want {
			t.Errorf("ResolveCommit(%q) = %s, git says %s", rev, got, want)
		}
	}
}

func TestResolveCommitErrors(t *testing.T) {
	t.Parallel()
	f := newResolveFixture(t)
	r := openRepo(t, f.dir)
	for _, tc := range []struct {
		rev      string
		want     error
		mentions string // a word the message must contain
	}{
		{"nope", ErrUnknownRev, "nope"},
		{"refs/heads/nope", ErrUnknownRev, "nope"},
		{"HEAD~5", ErrUnknownRev, ""},
		{"0123456789abcdef0123456789abcdef01234567", ErrUnknownRev, ""},
		{"deadbeef", ErrUnknownRev, ""},
		{f.tree, ErrNotCommit, "tree"},
		{f.blob, ErrNotCommit, "blob"},
		{"treetag", ErrNotCommit, "tree"},
		{"blobtag", ErrNotCommit, "blob"},
		{f.blobTagObj, ErrNotCommit, "blob"},
		{f.tree[:12], ErrNotCommit, "tree"}, // an abbreviated id of a tree is a tree, not unknown
	} {
		// The oracle agrees that none of these is a commit.
		if out, err := fixtures.RunGit(f.dir, nil, nil, "rev-parse", "--verify", "-q", tc.rev+"^{commit}"); err == nil {
			t.Fatalf("fixture: git resolves %q to commit %s", tc.rev, out)
		}
		h, err := r.ResolveCommit(tc.rev)
		if !errors.Is(err, tc.want) {
			t.Errorf("ResolveCommit(%q) = %v, %v; want an error wrapping %q", tc.rev, h, err, tc.want)
			continue
		}
		if h != ZeroHash {
			t.Errorf("ResolveCommit(%q) returned %s along with an error", tc.rev, h)
		}
		if tc.mentions != "" && !strings.Contains(err.Error(), tc.mentions) {
			t.Errorf("ResolveCommit(%q): error %q does not mention %q", tc.rev, err, tc.mentions)
		}
	}
}

func TestResolveCommitEmptyRepo(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	r := openRepo(t, dir)
	for _, rev := range []string{"", "HEAD"} {
		if _, err := r.ResolveCommit(rev); !errors.Is(err, ErrNoCommits) {
			t.Errorf("ResolveCommit(%q) in an empty repository: %v, want ErrNoCommits", rev, err)
		}
	}
	if _, err := r.ResolveCommit("main"); !errors.Is(err, ErrUnknownRev) && !errors.Is(err, ErrNoCommits) {
		t.Errorf("ResolveCommit(main) in an empty repository: %v, want ErrUnknownRev or ErrNoCommits", err)
	}
	if _, err := r.ResolveCommit("HEAD~1"); err == nil {
		t.Errorf("ResolveCommit(HEAD~1) in an empty repository succeeded")
	}
}

func TestOpenNotARepository(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, err := Open(dir); !errors.Is(err, ErrNotRepo) {
		t.Errorf("Open(%s) = %v, want ErrNotRepo", dir, err)
	}
}

func TestOpenSubdirectory(t *testing.T) {
	t.Parallel()
	f := newResolveFixture(t)
	r := openRepo(t, filepath.Join(f.dir, "b"))
	if got, want := realPath(t, r.WorkTree()), realPath(t, f.dir); got != want {
		t.Errorf("WorkTree() = %s, want %s", got, want)
	}
	if r.Dir() != r.WorkTree() {
		t.Errorf("Dir() = %s, want the work tree %s", r.Dir(), r.WorkTree())
	}
	if got, want := realPath(t, r.GitDir()), realPath(t, filepath.Join(f.dir, ".git")); got != want {
		t.Errorf("GitDir() = %s, want %s", got, want)
	}
	if h, err := r.ResolveCommit("HEAD"); err != nil || h.String() != f.c2 {
		t.Errorf("ResolveCommit(HEAD) from a subdirectory = %v, %v; want %s", h, err, f.c2)
	}
}

// Open("") opens the repository of the working directory, as "." does.
// Not parallel: it changes the working directory.
func TestOpenWorkingDirectory(t *testing.T) {
	f := newResolveFixture(t)
	t.Chdir(filepath.Join(f.dir, "b"))
	r, err := Open("")
	if err != nil {
		t.Fatalf("Open(\"\") in %s: %v", f.dir, err)
	}
	if got, want := realPath(t, r.WorkTree()), realPath(t, f.dir); got != want {
		t.Errorf("WorkTree() = %s, want %s", got, want)
	}
}

func realPath(t *testing.T, p string) string {
	t.Helper()
	if !filepath.IsAbs(p) {
		t.Errorf("path %q is not absolute", p)
	}
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestResolveCommitLinkedWorktree(t *testing.T) {
	t.Parallel()
	f := newResolveFixture(t)
	wt := filepath.Join(filepath.Dir(f.dir), "wt")
	fixtures.Git(t, f.dir, "worktree", "add", "-q", "-b", "wtb", wt, f.c1)
	fixtures.WriteFile(t, wt, "sub/wt.txt", "only in the worktree\n", 0o644)
	wtHead := fixtures.CommitAll(t, wt, "worktree commit")

	for _, open := range []string{wt, filepath.Join(wt, "sub")} {
		r := openRepo(t, open)
		if got, want := realPath(t, r.WorkTree()), realPath(t, wt); got != want {
			t.Errorf("WorkTree() = %s, want %s", got, want)
		}
		common := fixtures.Git(t, wt, "rev-parse", "--path-format=absolute", "--git-common-dir")
		if got, want := realPath(t, r.GitDir()), realPath(t, common); got != want {
			t.Errorf("GitDir() = %s, want the common dir %s", got, want)
		}
		for _, rev := range []string{"HEAD", "", "HEAD~1", "wtb", "main", "v2", wtHead[:9]} {
			want := gitCommitOf(t, wt, rev)
			got, err := r.ResolveCommit(rev)
			if err != nil || got.String() != want {
				t.Errorf("in a linked worktree, ResolveCommit(%q) = %v, %v; git says %s", rev, got, err, want)
			}
		}
		if h, _ := r.ResolveCommit("HEAD"); h.String() != wtHead {
			t.Errorf("HEAD of the linked worktree resolved to %s, want the worktree's own HEAD %s (main is %s)", h, wtHead, f.c2)
		}
	}

	// Refs written through the worktree land in the common directory, where
	// the main work tree's git sees them.
	r := openRepo(t, wt)
	if err := r.CreateRef("refs/ci/requests/from-wt", mustHash(t, wtHead)); err != nil {
		t.Fatal(err)
	}
	if got := fixtures.Git(t, f.dir, "rev-parse", "refs/ci/requests/from-wt"); got != wtHead {
		t.Errorf("main work tree sees refs/ci/requests/from-wt = %s, want %s", got, wtHead)
	}
	refs, err := r.Refs("refs/ci/")
	if err != nil || len(refs) != 1 || refs[0].Name != "refs/ci/requests/from-wt" {
		t.Errorf("Refs(refs/ci/) in the worktree = %v, %v", refs, err)
	}
	// Objects written through the worktree are in the shared object store.
	b, err := r.WriteBlob([]byte("shared\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := fixtures.Git(t, f.dir, "cat-file", "-p", b.String()); got != "shared" {
		t.Errorf("main work tree reads blob %s as %q", b, got)
	}
}

func TestResolveCommitBareRepository(t *testing.T) {
	t.Parallel()
	f := newResolveFixture(t)
	bare := filepath.Join(filepath.Dir(f.dir), "bare.git")
	fixtures.Git(t, f.dir, "clone", "-q", "--bare", f.dir, bare)
	r := openRepo(t, bare)
	if r.WorkTree() != "" {
		t.Errorf("WorkTree() of a bare repository = %q, want \"\"", r.WorkTree())
	}
	if r.Dir() != r.GitDir() {
		t.Errorf("Dir() of a bare repository = %q, want its git directory %q", r.Dir(), r.GitDir())
	}
	if got, want := realPath(t, r.GitDir()), realPath(t, bare); got != want {
		t.Errorf("GitDir() = %s, want %s", got, want)
	}
	for _, rev := range []string{"HEAD", "", "main", "topic", "v1", "v2", "lw", f.c1[:8], "HEAD~1"} {
		want := gitCommitOf(t, bare, rev)
		got, err := r.ResolveCommit(rev)
		if err != nil || got.String() != want {
			t.Errorf("in a bare repository, ResolveCommit(%q) = %v, %v; git says %s", rev, got, err, want)
		}
	}
	if err := r.CreateRef("refs/ci/requests/bare", mustHash(t, f.c1)); err != nil {
		t.Fatal(err)
	}
	if got := fixtures.Git(t, bare, "rev-parse", "refs/ci/requests/bare"); got != f.c1 {
		t.Errorf("git in the bare repository sees %s, want %s", got, f.c1)
	}
	if _, err := os.Stat(filepath.Join(bare, "refs", "ci", "requests", "bare")); err != nil {
		t.Errorf("ref not written inside the bare repository: %v", err)
	}
}

// TestOpenBareRepositoryInsideWorkTree checks that a bare repository kept
// inside another repository's work tree (a fixture, a mirror under the
// project) is opened as itself, not as the enclosing repository.
func TestOpenBareRepositoryInsideWorkTree(t *testing.T) {
	t.Parallel()
	outer := fixtures.NewRepo(t)
	fixtures.WriteFile(t, outer, "outer.txt", "outer\n", 0o644)
	outerHead := fixtures.CommitAll(t, outer, "outer")

	src := fixtures.NewRepo(t)
	fixtures.WriteFile(t, src, "inner.txt", "inner\n", 0o644)
	innerHead := fixtures.CommitAll(t, src, "inner")
	bare := filepath.Join(outer, "mirror.git")
	fixtures.Git(t, src, "clone", "-q", "--bare", src, bare)

	r, err := Open(bare)
	if err != nil {
		t.Fatalf("Open(%s): %v", bare, err)
	}
	h, err := r.ResolveCommit("HEAD")
	if err != nil || h.String() != innerHead {
		t.Errorf("ResolveCommit(HEAD) of the bare repository = %v, %v; want %s (the enclosing repository's HEAD is %s)", h, err, innerHead, outerHead)
	}
	if got, want := realPath(t, r.GitDir()), realPath(t, bare); got != want {
		t.Errorf("GitDir() = %s, want %s", got, want)
	}
}

// TestResolveCommitFullIDBeatsRefName: a full object id names that object
// even when a ref has the same spelling, as in git (which warns). Otherwise
// whoever can push a branch named like a commit id decides what
// "refci run <id>" tests.
func TestResolveCommitFullIDBeatsRefName(t *testing.T) {
	t.Parallel()
	f := newResolveFixture(t)
	fixtures.Git(t, f.dir, "branch", f.c1, f.c2) // a branch spelled like c1, pointing at c2
	want := gitCommitOf(t, f.dir, f.c1)
	if want != f.c1 {
		t.Fatalf("fixture: git resolves %s to %s", f.c1, want)
	}
	r := openRepo(t, f.dir)
	if got, err := r.ResolveCommit(f.c1); err != nil || got.String() != want {
		t.Errorf("ResolveCommit(%s) = %v, %v; git says %s (the branch of that name points at %s)", f.c1, got, err, want, f.c2)
	}
}
