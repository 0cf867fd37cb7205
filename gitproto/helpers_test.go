package gitproto

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
)

func TestMain(m *testing.M) { os.Exit(fixtures.PrivateHome(m)) }

// openRepo opens dir with the package under test.
func openRepo(t testing.TB, dir string) *Repo {
	t.Helper()
	r, err := Open(dir)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	return r
}

func mustHash(t testing.TB, s string) Hash {
	t.Helper()
	if !IsHash(s) {
		t.Fatalf("%q is not an object id", s)
	}
	return NewHash(s)
}

// fsckStrict asserts that git fsck --strict finds nothing wrong. Dangling
// objects are fine (the tests write objects no ref reaches).
func fsckStrict(t testing.TB, dir string) {
	t.Helper()
	out, err := fixtures.RunGit(dir, nil, nil, "fsck", "--strict", "--no-progress", "--no-dangling")
	if err != nil {
		t.Fatalf("git fsck --strict: %v\n%s", err, out)
	}
}

// rawTree builds the bytes of a tree object from entries given in the
// order they are to appear (not sorted: tests use it for malformed trees).
type rawEntry struct {
	mode string // octal as git writes it, e.g. "100644", "40000"
	name string
	hash string // hex
}

func rawTree(t testing.TB, entries ...rawEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, e := range entries {
		id, err := hex.DecodeString(e.hash)
		if err != nil || len(id) != 20 {
			t.Fatalf("bad hash %q", e.hash)
		}
		b.WriteString(e.mode + " " + e.name + "\x00")
		b.Write(id)
	}
	return b.Bytes()
}

// writeRawTree stores raw tree bytes as they are, bypassing git's checks.
func writeRawTree(t testing.TB, dir string, entries ...rawEntry) string {
	t.Helper()
	return fixtures.GitStdin(t, dir, rawTree(t, entries...), "hash-object", "-t", "tree", "--literally", "-w", "--stdin")
}

// umask returns the process umask without changing it (Linux).
func umask(t testing.TB) os.FileMode {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("cannot read umask: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			if err != nil {
				t.Fatal(err)
			}
			return os.FileMode(n)
		}
	}
	t.Skip("no Umask line in /proc/self/status")
	return 0
}

// listDir returns the names in dir, sorted.
func listDir(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// tempObjects lists leftover temporary files in the objects directory.
func tempObjects(t testing.TB, gitDir string) []string {
	t.Helper()
	var left []string
	for _, n := range listDir(t, filepath.Join(gitDir, "objects")) {
		if strings.HasPrefix(n, "tmp") {
			left = append(left, n)
		}
	}
	return left
}
