package gitproto

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// gitHome is a private HOME for every git the tests run, so the user's
// configuration (signing, hooks, default branch) cannot change results.
var gitHome string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gitproto-test-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	gitHome = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// gitEnv is the environment of the git CLI used as the oracle: no system
// or user configuration, fixed identities and dates, and nothing of the
// caller's GIT_* variables.
func gitEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "GIT_") || k == "HOME" || k == "XDG_CONFIG_HOME" || k == "LANG" || strings.HasPrefix(k, "LC_") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env,
		"GIT_CONFIG_NOSYSTEM=1",
		"HOME="+gitHome,
		"XDG_CONFIG_HOME="+filepath.Join(gitHome, ".config"),
		"GIT_AUTHOR_NAME=Test Author",
		"GIT_AUTHOR_EMAIL=author@example.invalid",
		"GIT_COMMITTER_NAME=Test Committer",
		"GIT_COMMITTER_EMAIL=committer@example.invalid",
		"GIT_AUTHOR_DATE=1700000000 +0000",
		"GIT_COMMITTER_DATE=1700000000 +0000",
		"GIT_TERMINAL_PROMPT=0",
		"LC_ALL=C",
	)
	return append(env, extra...)
}

// gitRun runs git in dir with stdin and extra environment, returning
// stdout, and stderr folded into the error.
func gitRun(dir string, stdin []byte, extraEnv []string, args ...string) ([]byte, error) {
	cmd := exec.Command("git", append([]string{"-c", "init.defaultBranch=main", "-c", "commit.gpgSign=false", "-c", "tag.gpgSign=false", "-c", "advice.nestedTag=false", "-c", "core.hooksPath=/dev/null", "-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "core.fsync=none"}, args...)...)
	cmd.Dir = dir
	cmd.Env = gitEnv(extraEnv...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("git %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes(), nil
}

// gitT runs git in dir and fails the test on error; it returns stdout
// without its trailing newline.
func gitT(t testing.TB, dir string, args ...string) string {
	t.Helper()
	out, err := gitRun(dir, nil, nil, args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(string(out), "\n")
}

// gitIn is gitT with stdin.
func gitIn(t testing.TB, dir string, stdin []byte, args ...string) string {
	t.Helper()
	out, err := gitRun(dir, stdin, nil, args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(string(out), "\n")
}

// gitRaw returns git's stdout byte for byte.
func gitRaw(t testing.TB, dir string, args ...string) []byte {
	t.Helper()
	out, err := gitRun(dir, nil, nil, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// newGitRepo makes an empty non-bare repository in a fresh temp dir.
func newGitRepo(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	gitT(t, filepath.Dir(dir), "init", "-q", dir)
	return dir
}

// writeFile writes a file (creating parents) in dir.
func writeFile(t testing.TB, dir, rel, content string, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// commitAll commits everything in the work tree and returns the commit id.
func commitAll(t testing.TB, dir, msg string) string {
	t.Helper()
	gitT(t, dir, "add", "-A")
	gitT(t, dir, "commit", "-q", "--allow-empty", "-m", msg)
	return gitT(t, dir, "rev-parse", "HEAD")
}

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
	out, err := gitRun(dir, nil, nil, "fsck", "--strict", "--no-progress", "--no-dangling")
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
	return gitIn(t, dir, rawTree(t, entries...), "hash-object", "-t", "tree", "--literally", "-w", "--stdin")
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
