package gitproto

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
)

func TestWriteBlobMatchesGit(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	r := openRepo(t, dir)
	big := make([]byte, 1<<20+17)
	rand.New(rand.NewSource(1)).Read(big)
	for name, data := range map[string][]byte{
		"empty":  {},
		"text":   []byte("hello\n"),
		"nul":    []byte("a\x00b\x00\xff\xfe"),
		"no-eol": []byte("no newline at the end"),
		"crlf":   []byte("dos\r\nline\r\n"),
		"big":    big,
	} {
		h, err := r.WriteBlob(data)
		if err != nil {
			t.Fatalf("WriteBlob(%s): %v", name, err)
		}
		if want := fixtures.GitStdin(t, dir, data, "hash-object", "--stdin"); h.String() != want {
			t.Errorf("WriteBlob(%s) = %s, git hash-object says %s", name, h, want)
		}
		if typ := fixtures.Git(t, dir, "cat-file", "-t", h.String()); typ != "blob" {
			t.Errorf("git cat-file -t %s = %s", h, typ)
		}
		if got := fixtures.GitBytes(t, dir, "cat-file", "blob", h.String()); !bytes.Equal(got, data) {
			t.Errorf("git reads blob %s (%s) back as %d different bytes", h, name, len(got))
		}
		// Loose objects are read-only, like git's.
		fi, err := os.Stat(filepath.Join(dir, ".git", "objects", h.String()[:2], h.String()[2:]))
		if err != nil {
			t.Errorf("blob %s is not a loose object: %v", h, err)
		} else if fi.Mode().Perm()&0o222 != 0 {
			t.Errorf("loose object %s is writable: %v", h, fi.Mode())
		}
		// Writing again is a no-op with the same id.
		h2, err := r.WriteBlob(data)
		if err != nil || h2 != h {
			t.Errorf("second WriteBlob(%s) = %s, %v; want %s", name, h2, err, h)
		}
	}
	if left := tempObjects(t, filepath.Join(dir, ".git")); len(left) > 0 {
		t.Errorf("temporary files left in objects/: %v", left)
	}
	fsckStrict(t, dir)
}

func TestWriteBlobFileMatchesGit(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	r := openRepo(t, dir)
	src := t.TempDir()
	data := make([]byte, 3<<20+5) // bigger than any copy buffer
	rand.New(rand.NewSource(2)).Read(data)
	for name, content := range map[string][]byte{"empty": {}, "small": []byte("x\n"), "big": data} {
		p := filepath.Join(src, name)
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
		h, size, err := r.WriteBlobFile(p)
		if err != nil {
			t.Fatalf("WriteBlobFile(%s): %v", name, err)
		}
		if size != int64(len(content)) {
			t.Errorf("WriteBlobFile(%s) size = %d, want %d", name, size, len(content))
		}
		if want := fixtures.Git(t, dir, "hash-object", p); h.String() != want {
			t.Errorf("WriteBlobFile(%s) = %s, git hash-object says %s", name, h, want)
		}
		if got := fixtures.GitBytes(t, dir, "cat-file", "blob", h.String()); !bytes.Equal(got, content) {
			t.Errorf("git reads blob %s (%s) back differently", h, name)
		}
	}
	if _, _, err := r.WriteBlobFile(filepath.Join(src, "missing")); err == nil {
		t.Errorf("WriteBlobFile of a missing file succeeded")
	}
	if _, _, err := r.WriteBlobFile(src); err == nil {
		t.Errorf("WriteBlobFile of a directory succeeded")
	}
	if left := tempObjects(t, filepath.Join(dir, ".git")); len(left) > 0 {
		t.Errorf("temporary files left in objects/: %v", left)
	}
	fsckStrict(t, dir)
}

// gitWriteTree is the oracle for WriteTree: the same files put in a
// private index with update-index, then git write-tree.
func gitWriteTree(t *testing.T, dir string, files []TreeFile) string {
	t.Helper()
	env := []string{"GIT_INDEX_FILE=" + filepath.Join(t.TempDir(), "index")}
	var info strings.Builder
	for _, f := range files {
		mode := "100644"
		if f.Executable {
			mode = "100755"
		}
		info.WriteString(mode + " " + f.Hash.String() + "\t" + f.Path + "\x00")
	}
	if _, err := fixtures.RunGit(dir, []byte(info.String()), env, "update-index", "-z", "--add", "--index-info"); err != nil {
		t.Fatal(err)
	}
	out, err := fixtures.RunGit(dir, nil, env, "write-tree")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func TestWriteTreeMatchesGit(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	r := openRepo(t, dir)
	blob := func(s string) Hash {
		h, err := r.WriteBlob([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	a, b, c := blob("a\n"), blob("b\n"), blob("#!/bin/sh\nexit 0\n")

	for _, tc := range []struct {
		name  string
		files []TreeFile
	}{
		{"empty", nil},
		{"one", []TreeFile{{Path: "status.json", Hash: a}}},
		// git sorts a directory as if its name ended in "/": "a-b" < "a.b" < "a/" < "a0".
		{"dir-sorting", []TreeFile{
			{Path: "a.b", Hash: a}, {Path: "a/x", Hash: b}, {Path: "a-b", Hash: c}, {Path: "a0", Hash: a},
			{Path: "A", Hash: b}, {Path: "a/y/z", Hash: a}, {Path: "a/y.txt", Hash: b}, {Path: "_", Hash: c},
		}},
		{"nested-and-exec", []TreeFile{
			{Path: ".refci/run", Hash: c, Executable: true},
			{Path: "jobs/build/log.txt", Hash: a},
			{Path: "jobs/test/log.txt", Hash: b},
			{Path: "artifacts/reports/deep/er/junit.xml", Hash: a},
			{Path: "log.txt", Hash: b},
			{Path: "bin/tool", Hash: c, Executable: true},
		}},
		{"odd-names", []TreeFile{
			{Path: "with space", Hash: a}, {Path: "tab\there", Hash: b}, {Path: "ünïcødé", Hash: c},
			{Path: "new\nline", Hash: a}, {Path: "-dash", Hash: b}, {Path: "back\\slash", Hash: c},
		}},
	} {
		h, err := r.WriteTree(tc.files)
		if err != nil {
			t.Errorf("%s: WriteTree: %v", tc.name, err)
			continue
		}
		if want := gitWriteTree(t, dir, tc.files); h.String() != want {
			t.Errorf("%s: WriteTree = %s, git write-tree says %s\nours:\n%s\ngit's:\n%s", tc.name, h, want,
				fixtures.Git(t, dir, "ls-tree", "-r", "-t", h.String()), fixtures.Git(t, dir, "ls-tree", "-r", "-t", want))
		}
		// The input order does not matter.
		shuffled := append([]TreeFile(nil), tc.files...)
		rand.New(rand.NewSource(3)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if h2, err := r.WriteTree(shuffled); err != nil || h2 != h {
			t.Errorf("%s: WriteTree of shuffled input = %s, %v; want %s", tc.name, h2, err, h)
		}
	}
	if h, _ := r.WriteTree(nil); h.String() != "4b825dc642cb6eb9a060e54bf8d69288fbee4904" {
		t.Errorf("empty tree = %s", h)
	}
	fsckStrict(t, dir)
}

func TestWriteTreeModesAsGitSeesThem(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	r := openRepo(t, dir)
	b, _ := r.WriteBlob([]byte("x"))
	h, err := r.WriteTree([]TreeFile{{Path: "run", Hash: b, Executable: true}, {Path: "d/f", Hash: b}})
	if err != nil {
		t.Fatal(err)
	}
	got := fixtures.Git(t, dir, "ls-tree", "-r", "-t", h.String())
	want := "040000 tree " + fixtures.Git(t, dir, "rev-parse", h.String()+":d") + "\td\n" +
		"100644 blob " + b.String() + "\td/f\n" +
		"100755 blob " + b.String() + "\trun"
	if got != want {
		t.Errorf("git ls-tree -r -t:\n%s\nwant:\n%s", got, want)
	}
}

func TestWriteTreeRefusesBadPaths(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	r := openRepo(t, dir)
	b, _ := r.WriteBlob([]byte("x"))
	for _, tc := range []struct {
		name  string
		paths []string
	}{
		{"parent", []string{"../x"}},
		{"dotdot", []string{".."}},
		{"sneaky-parent", []string{"a/../../x"}},
		{"absolute", []string{"/abs"}},
		{"empty", []string{""}},
		{"dot", []string{"."}},
		{"file-then-dir", []string{"a", "a/b"}},
		{"dir-then-file", []string{"a/b", "a"}},
		{"deep-clash", []string{"x/y/z", "x/y"}},
		{"deep-clash-2", []string{"x/y", "x/y/z/w"}},
		{"nul", []string{"a\x00b"}},
		{"dotgit", []string{".git/config"}},
		{"nested-dotgit", []string{"artifacts/.git/hooks/post-checkout"}},
		{"dotgit-case", []string{"artifacts/.GIT/config"}},
		// git fsck reports these as hasDotgit too (NTFS and HFS+ spellings),
		// and a forge with receive.fsckObjects refuses the push.
		{"dotgit-8.3", []string{"artifacts/git~1/config"}},
		{"dotgit-trailing-dot", []string{"artifacts/.git./config"}},
	} {
		var files []TreeFile
		for _, p := range tc.paths {
			files = append(files, TreeFile{Path: p, Hash: b})
		}
		if h, err := r.WriteTree(files); err == nil {
			t.Errorf("%s: WriteTree(%q) = %s, want an error\n%s", tc.name, tc.paths, h, fixtures.Git(t, dir, "ls-tree", "-r", "-t", h.String()))
		}
	}
	fsckStrict(t, dir)
}

const fakeSignature = `-----BEGIN PGP SIGNATURE-----

iHUEABYKAB0WIQRqHwwrPU5fYHGCk6S1xtfo+aCxwgUCZVZ7AAAKCRC1xtfo+aCx
wpD4AQDX5xvQ5Yd7qPCHKAx5Ujm5nSH0QpJ8m0Z8Gm1yV5zZ6gEA5wA0pJdKqGzX
=Ab1c
-----END PGP SIGNATURE-----
`

func TestWriteCommitMatchesGit(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	r := openRepo(t, dir)
	b, _ := r.WriteBlob([]byte("x\n"))
	tree, err := r.WriteTree([]TreeFile{{Path: "status.json", Hash: b}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		zone *time.Location
		date string // as git wants it in GIT_*_DATE
	}{
		{"utc", time.UTC, "1700000000 +0000"},
		{"east", time.FixedZone("", 5*3600+45*60), "1700000000 +0545"},
		{"west", time.FixedZone("", -(3*3600 + 30*60)), "1700000000 -0330"},
	} {
		when := time.Unix(1700000000, 123456789).In(tc.zone) // sub-second parts are not stored
		msg := "refci: success 0123456789ab (request local)\n\nRefci-State: success\n"
		root, err := r.WriteCommit(CommitSpec{Tree: tree, Author: NewSignature("Worker One", "w1@example.invalid", when), Message: msg}, nil)
		if err != nil {
			t.Fatal(err)
		}
		child, err := r.WriteCommit(CommitSpec{Tree: tree, Parents: []Hash{root}, Author: NewSignature("Worker One", "w1@example.invalid", when), Message: msg}, nil)
		if err != nil {
			t.Fatal(err)
		}
		env := []string{
			"GIT_AUTHOR_NAME=Worker One", "GIT_AUTHOR_EMAIL=w1@example.invalid", "GIT_AUTHOR_DATE=" + tc.date,
			"GIT_COMMITTER_NAME=Worker One", "GIT_COMMITTER_EMAIL=w1@example.invalid", "GIT_COMMITTER_DATE=" + tc.date,
		}
		out, err := fixtures.RunGit(dir, []byte(msg), env, "commit-tree", tree.String())
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.TrimSpace(string(out)); root.String() != want {
			t.Errorf("%s: WriteCommit = %s, git commit-tree says %s\nours:\n%s", tc.name, root, want, fixtures.GitBytes(t, dir, "cat-file", "commit", root.String()))
		}
		out, err = fixtures.RunGit(dir, []byte(msg), env, "commit-tree", tree.String(), "-p", root.String())
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.TrimSpace(string(out)); child.String() != want {
			t.Errorf("%s: WriteCommit with a parent = %s, git commit-tree says %s", tc.name, child, want)
		}
		if p := fixtures.Git(t, dir, "rev-parse", child.String()+"^"); p != root.String() {
			t.Errorf("%s: parent of %s = %s, want %s", tc.name, child, p, root)
		}
	}
	fsckStrict(t, dir)
}

// stripGPGSig removes the gpgsig header (and its continuation lines) from
// a raw commit, which is what git verify-commit hands to gpg.
func stripGPGSig(raw []byte) []byte {
	head, body, _ := bytes.Cut(raw, []byte("\n\n"))
	var out [][]byte
	inSig := false
	for _, line := range bytes.Split(head, []byte("\n")) {
		switch {
		case bytes.HasPrefix(line, []byte("gpgsig ")):
			inSig = true
		case inSig && bytes.HasPrefix(line, []byte(" ")):
		default:
			inSig = false
			out = append(out, line)
		}
	}
	return append(append(bytes.Join(out, []byte("\n")), "\n\n"...), body...)
}

func TestWriteCommitSigned(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	r := openRepo(t, dir)
	b, _ := r.WriteBlob([]byte("{}\n"))
	tree, _ := r.WriteTree([]TreeFile{{Path: "status.json", Hash: b}})
	parent, err := r.WriteCommit(CommitSpec{Tree: tree, Author: NewSignature("W", "w@example.invalid", time.Unix(1700000000, 0).UTC()), Message: "first\n"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var signed [][]byte
	sign := func(msg []byte) (string, error) {
		signed = append(signed, append([]byte(nil), msg...))
		return fakeSignature, nil
	}
	msg := "refci: failure 0123456789ab (request pr/42)\n\n.refci/run exited with code 2\n\nRefci-State: failure\n"
	h, err := r.WriteCommit(CommitSpec{
		Tree: tree, Parents: []Hash{parent},
		Author:  NewSignature("Worker One", "w1@example.invalid", time.Unix(1700000100, 0).In(time.FixedZone("", 3600))),
		Message: msg,
	}, sign)
	if err != nil {
		t.Fatal(err)
	}
	if len(signed) != 1 {
		t.Fatalf("SignFunc called %d times", len(signed))
	}
	raw := fixtures.GitBytes(t, dir, "cat-file", "commit", h.String())
	wantHeader := "gpgsig " + strings.ReplaceAll(strings.TrimSuffix(fakeSignature, "\n"), "\n", "\n ") + "\n"
	if !bytes.Contains(raw, []byte(wantHeader)) {
		t.Errorf("git cat-file commit does not show the gpgsig header:\n%s", raw)
	}
	if !bytes.HasSuffix(raw, []byte("\n\n"+msg)) {
		t.Errorf("message not kept verbatim:\n%s", raw)
	}
	if got := stripGPGSig(raw); !bytes.Equal(got, signed[0]) {
		t.Errorf("the signed bytes are not the commit without its gpgsig header\nsigned:\n%s\ncommit without gpgsig:\n%s", signed[0], got)
	}

	c, err := r.Commit(h)
	if err != nil {
		t.Fatal(err)
	}
	payload, sig, err := SignedPayload(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(payload, signed[0]) {
		t.Errorf("SignedPayload differs from the bytes passed to SignFunc\npayload:\n%q\nsigned:\n%q", payload, signed[0])
	}
	if sig != fakeSignature {
		t.Errorf("SignedPayload signature = %q, want %q", sig, fakeSignature)
	}
	// An unsigned commit has an empty signature and its payload is the commit itself.
	pc, _ := r.Commit(parent)
	payload, sig, err = SignedPayload(pc)
	if err != nil || sig != "" || !bytes.Equal(payload, fixtures.GitBytes(t, dir, "cat-file", "commit", parent.String())) {
		t.Errorf("SignedPayload of an unsigned commit = %q, %q, %v", payload, sig, err)
	}
	fsckStrict(t, dir)
}

func TestWriteCommitSignError(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	r := openRepo(t, dir)
	tree, _ := r.WriteTree(nil)
	boom := errors.New("agent unavailable")
	before := countLooseObjects(t, dir)
	_, err := r.WriteCommit(CommitSpec{Tree: tree, Author: NewSignature("W", "w@x", time.Unix(1, 0)), Message: "m\n"}, func([]byte) (string, error) { return "", boom })
	if !errors.Is(err, boom) {
		t.Errorf("WriteCommit with a failing SignFunc = %v, want it to wrap %v", err, boom)
	}
	if after := countLooseObjects(t, dir); after != before {
		t.Errorf("a failed signature left %d new objects", after-before)
	}
}

func countLooseObjects(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(filepath.Join(dir, ".git", "objects"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A small object already stored is not written again: no temporary file
// is made (one per duplicate was a file created and deleted for nothing),
// and the stored object, compressed through the shared writers from many
// goroutines at once, is what git reads and fsck accepts.
func TestWriteSmallObjectsOnceAndConcurrently(t *testing.T) {
	t.Parallel()
	dir := fixtures.NewRepo(t)
	objects := filepath.Join(dir, ".git", "objects")
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := openRepo(t, dir)
			for i := 0; i < 50; i++ {
				data := []byte(fmt.Sprintf("object %d of many, %s\n", i, strings.Repeat("x", i*97)))
				h, err := r.WriteBlob(data)
				if err != nil {
					t.Error(err)
					return
				}
				if want := fixtures.GitStdin(t, dir, data, "hash-object", "--stdin"); h.String() != want {
					t.Errorf("WriteBlob = %s, git hash-object says %s", h, want)
				}
			}
		}()
	}
	wg.Wait()
	fixtures.Git(t, dir, "fsck", "--strict")
	for i := 0; i < 50; i += 7 {
		data := []byte(fmt.Sprintf("object %d of many, %s\n", i, strings.Repeat("x", i*97)))
		h := fixtures.GitStdin(t, dir, data, "hash-object", "--stdin")
		if got := fixtures.GitBytes(t, dir, "cat-file", "blob", h); !bytes.Equal(got, data) {
			t.Errorf("git reads %s back as %d different bytes", h, len(got))
		}
	}

	// Writing one again: nothing is created in objects/.
	r := openRepo(t, dir)
	before, err := os.Stat(objects)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if _, err := r.WriteBlob([]byte("object 3 of many, " + strings.Repeat("x", 3*97) + "\n")); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(objects)
	if !after.ModTime().Equal(before.ModTime()) {
		t.Error("writing a stored object again created a file in objects/")
	}
}
