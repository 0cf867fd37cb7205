package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	giteafix "refci.dev/refci/fixtures/gitea"
	"refci.dev/refci/fixtures/gnupg"
	"refci.dev/refci/queue"
)

// These tests drive the real refci binary against real git and gpg.

var refciBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "refci-e2e-bin-")
	if err != nil {
		panic(err)
	}
	refciBin = filepath.Join(dir, "refci")
	// refci-shim, refci-job and refci-hook beside refci, as make build
	// puts them: the workers of these tests run their jobs through the
	// light shim (worker tests cover refci being its own shim), their
	// pipelines' refci job is the light job client (worker tests cover
	// refci alone), and refci serve's pushes run the light hook client
	// (gitproto/sshd's tests cover refci's own); refci mirror, refci mail
	// and the workers' [[forge]] and [mail] run in refci-forge. All
	// without VCS stamps,
	// so that their identities match in any checkout.
	for _, b := range [][2]string{{refciBin, "."}, {filepath.Join(dir, "refci-shim"), "../refci-shim"}, {filepath.Join(dir, "refci-job"), "../refci-job"}, {filepath.Join(dir, "refci-hook"), "../refci-hook"}, {filepath.Join(dir, "refci-forge"), "../refci-forge"}} {
		out, err := exec.Command("go", "build", "-buildvcs=false", "-o", b[0], b[1]).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b[1], err, out)
			os.Exit(1)
		}
	}
	code := giteafix.Main(m) // a private HOME, and the test Gitea when built
	os.RemoveAll(dir)
	os.Exit(code)
}

// sandbox is one test's world: a refci home, a git identity, a repo.
type sandbox struct {
	t    *testing.T
	root string
	home string // REFCI_HOME
	repo string
	env  []string
}

func newSandbox(t *testing.T) *sandbox {
	t.Helper()
	root := t.TempDir()
	s := &sandbox{t: t, root: root, home: filepath.Join(root, "refci-home"), repo: filepath.Join(root, "repo")}
	s.env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + root,
		"REFCI_HOME=" + s.home,
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=Test User", "GIT_AUTHOR_EMAIL=test@example.invalid",
		"GIT_COMMITTER_NAME=Test User", "GIT_COMMITTER_EMAIL=test@example.invalid",
		"GNUPGHOME=" + filepath.Join(root, "gnupg"),
		"SECRET_OF_THE_WORKER=leak-canary",
	}
	os.Mkdir(filepath.Join(root, "gnupg"), 0o700)
	s.git("", "init", "-q", "-b", "main", s.repo)
	return s
}

// runGit runs git in dir (the repo when dir is "", the sandbox's root
// for init and clone) in the sandbox's environment, which the refci
// binary gets too (its HOME, GNUPGHOME and git identity), with stdin,
// and returns its output and error output together.
func (s *sandbox) runGit(dir, stdin string, args ...string) (string, error) {
	if dir == "" {
		dir = s.repo
	}
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	if args[0] == "init" || args[0] == "clone" {
		cmd.Dir = s.root
	}
	cmd.Env = s.env
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// git is runGit without stdin that fails the test when git fails and
// returns the output trimmed.
func (s *sandbox) git(dir string, args ...string) string {
	s.t.Helper()
	out, err := s.runGit(dir, "", args...)
	if err != nil {
		s.t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(out)
}

// write writes a file into the repo with mode.
func (s *sandbox) write(name, content string, mode os.FileMode) {
	s.t.Helper()
	fixtures.WriteFile(s.t, s.repo, name, content, mode)
}

// commit writes .refci/run with script and commits everything.
func (s *sandbox) pipeline(script string) string {
	s.t.Helper()
	s.write(".refci/run", "#!/bin/sh\n"+script, 0o755)
	return s.commitAll("pipeline")
}

func (s *sandbox) commitAll(msg string) string {
	s.t.Helper()
	s.git("", "add", "-A")
	s.git("", "commit", "-q", "--allow-empty", "-m", msg)
	return s.git("", "rev-parse", "HEAD")
}

type result struct {
	code           int
	stdout, stderr string
	maxRSSKiB      int64
}

// refci runs the binary in the repo.
func (s *sandbox) refci(args ...string) result {
	s.t.Helper()
	return s.refciIn(s.repo, args...)
}

func (s *sandbox) refciIn(dir string, args ...string) result {
	s.t.Helper()
	cmd := exec.Command(refciBin, args...)
	cmd.Dir = dir
	cmd.Env = s.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		s.t.Fatalf("refci %v: %v", args, err)
	}
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			r.maxRSSKiB = ru.Maxrss
		}
	}
	return r
}

func (r result) want(t *testing.T, code int) result {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, tail(r.stdout), tail(r.stderr))
	}
	return r
}

func tail(s string) string {
	if len(s) > 4000 {
		return "..." + s[len(s)-4000:]
	}
	return s
}

// status reads the latest status.json of rev through the CLI.
func (s *sandbox) status(rev string) *queue.Status {
	s.t.Helper()
	r := s.refci("status", "--json", rev)
	st, err := queue.DecodeStatus([]byte(r.stdout))
	if err != nil {
		s.t.Fatalf("status --json %s: %v\n%s\n%s", rev, err, r.stdout, r.stderr)
	}
	return st
}

func (s *sandbox) runRefs() []string {
	s.t.Helper()
	out := s.git("", "for-each-ref", "--format=%(refname)", "refs/ci/runs/")
	if out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

func TestRunSuccessEndToEnd(t *testing.T) {
	s := newSandbox(t)
	s.write("README", "hello\n", 0o644)
	head := s.pipeline(`set -eu
echo "target=$REFCI_TARGET request=$REFCI_REQUEST ci=$CI refci=$REFCI attempt=$REFCI_ATTEMPT trusted=$REFCI_TRUSTED"
echo "canary=${SECRET_OF_THE_WORKER:-absent} home=$HOME"
echo "pwd-has-readme=$(cat README)"
test -z "$(git status --porcelain 2>/dev/null || true)"
mkdir -p "$REFCI_ARTIFACTS/reports"
echo report > "$REFCI_ARTIFACTS/reports/r.txt"
refci job build -- sh -c 'echo building; echo to-stderr >&2'
refci job unit --needs build -- sh -c 'echo unit ok' &
refci job lint -- sh -c 'echo lint ok' &
wait
`)
	// A dirty working tree and index must neither be seen nor touched.
	s.write("README", "dirty\n", 0o644)
	s.write("staged.txt", "staged\n", 0o644)
	s.git("", "add", "staged.txt")
	indexBefore, _ := os.ReadFile(filepath.Join(s.repo, ".git", "index"))

	r := s.refci("run").want(t, 0)
	if !strings.Contains(r.stdout, "refci: success in") || !strings.Contains(r.stdout, "refs/ci/runs/"+head+"/") {
		t.Errorf("summary missing:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, "created a signing key") {
		t.Errorf("first run should say it created a key:\n%s", r.stderr)
	}
	indexAfter, _ := os.ReadFile(filepath.Join(s.repo, ".git", "index"))
	if !bytes.Equal(indexBefore, indexAfter) {
		t.Error("refci run changed the user's index")
	}
	if b, _ := os.ReadFile(filepath.Join(s.repo, "README")); string(b) != "dirty\n" {
		t.Errorf("refci run changed the work tree: %q", b)
	}

	st := s.status("HEAD")
	if st.State != queue.Success || st.Target != head || st.Request != "local" || st.Attempt != 1 || st.Format != 1 {
		t.Fatalf("status: %+v", st)
	}
	if st.ExitCode == nil || *st.ExitCode != 0 {
		t.Errorf("exit code %v", st.ExitCode)
	}
	if len(st.Jobs) != 3 {
		t.Fatalf("jobs: %+v", st.Jobs)
	}
	for _, j := range st.Jobs {
		if j.State != queue.Success || j.Log != "jobs/"+j.Name+"/log.txt" {
			t.Errorf("job %+v", j)
		}
	}
	if len(st.Artifacts) != 1 || st.Artifacts[0].Path != "reports/r.txt" || st.Artifacts[0].Size != 7 {
		t.Errorf("artifacts: %+v", st.Artifacts)
	}
	// git finds nothing wrong with the result's objects.
	s.git("", "fsck", "--strict", "--no-dangling", "--no-progress")

	log := s.refci("log").want(t, 0).stdout
	for _, w := range []string{"request=local ci=true refci=1 attempt=1 trusted=1", "canary=absent", "pwd-has-readme=hello", "[build] building", "[build] to-stderr", "[unit] unit ok"} {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
	if strings.Contains(log, "leak-canary") {
		t.Error("the worker's environment leaked into the pipeline")
	}
	if jl := s.refci("log", "--job", "build").want(t, 0).stdout; jl != "building\nto-stderr\n" {
		t.Errorf("job log %q", jl)
	}
	human := s.refci("status").want(t, 0).stdout
	for _, w := range []string{"SUCCESS", head[:12], "build", "unit", "(needs build)", "reports/r.txt"} {
		if !strings.Contains(human, w) {
			t.Errorf("status lacks %q:\n%s", w, human)
		}
	}
	if runs := s.refci("runs").want(t, 0).stdout; !strings.Contains(runs, st.Run) || !strings.Contains(runs, "success") {
		t.Errorf("runs: %s", runs)
	}
	v := s.refci("verify").want(t, 0).stdout
	if !strings.Contains(v, "good signature") || !strings.Contains(v, "verified") {
		t.Errorf("verify: %s", v)
	}

	// Stock git and gpg accept the signature once the key is imported.
	pub := s.refci("keys", "export").want(t, 0).stdout
	fpr := strings.Fields(s.refci("keys", "show").want(t, 0).stdout)[0]
	s.gpgImport(pub)
	refs := s.runRefs()
	if len(refs) != 1 {
		t.Fatalf("run refs: %v", refs)
	}
	out := s.gitErr("", "verify-commit", "--raw", refs[0])
	if !strings.Contains(out, "GOODSIG") || !strings.Contains(out, fpr) {
		t.Errorf("git verify-commit: %s", out)
	}
	s.git("", "fsck", "--strict", "--no-dangling")

	// Share: push to a bare remote, fetch in another clone, verify there.
	bare := filepath.Join(s.root, "remote.git")
	s.git("", "init", "-q", "--bare", "-b", "main", bare)
	s.git("", "push", "-q", bare, "main", "refs/ci/*:refs/ci/*")
	other := filepath.Join(s.root, "other")
	s.git("", "clone", "-q", bare, other)
	s.git(other, "fetch", "-q", "origin", "+refs/ci/*:refs/ci/*")
	keyFile := filepath.Join(s.root, "worker.asc")
	os.WriteFile(keyFile, []byte(pub), 0o644)
	s.env = append(s.env, "REFCI_HOME="+filepath.Join(s.root, "other-home")) // a stranger: does not know the key
	if r := s.refciIn(other, "verify"); r.code == 0 || !strings.Contains(r.stderr, "no keys") {
		t.Errorf("verify without keys: %d %s", r.code, r.stderr)
	}
	if v := s.refciIn(other, "verify", "--keyring", keyFile).want(t, 0).stdout; !strings.Contains(v, fpr) {
		t.Errorf("verify in clone: %s", v)
	}
	if st2 := s.refciIn(other, "status", "--json", "main").want(t, 0).stdout; !strings.Contains(st2, `"state": "success"`) {
		t.Errorf("status in clone: %s", st2)
	}
}

// gitErr runs git and returns combined output even when it fails.
func (s *sandbox) gitErr(dir string, args ...string) string {
	out, _ := s.runGit(dir, "", args...)
	return out
}

// gpgImport imports armored keys into the sandbox's GNUPGHOME.
func (s *sandbox) gpgImport(armored string) {
	s.t.Helper()
	gnupg.At(s.t, filepath.Join(s.root, "gnupg")).Run([]byte(armored), "--import")
}

func TestRunFailureAndJobs(t *testing.T) {
	s := newSandbox(t)
	s.pipeline(`
refci job build -- sh -c 'echo compile error >&2; exit 3'
refci job test --needs build -- sh -c 'touch "$HOME/test-ran"'
echo "test exit: $?"
exit 0
`)
	r := s.refci("run").want(t, 1)
	if !strings.Contains(r.stdout, "refci: failure") || !strings.Contains(r.stdout, "job build") {
		t.Errorf("summary: %s", r.stdout)
	}
	st := s.status("HEAD")
	if st.State != queue.Failure || len(st.Jobs) != 2 {
		t.Fatalf("%+v", st)
	}
	build, test := st.Jobs[0], st.Jobs[1]
	if build.State != queue.Failure || build.ExitCode == nil || *build.ExitCode != 3 {
		t.Errorf("build: %+v", build)
	}
	if test.State != queue.Skipped || !strings.Contains(test.Reason, "build") {
		t.Errorf("test: %+v", test)
	}
	if log := s.refci("log").stdout; !strings.Contains(log, "test exit: 1") || !strings.Contains(log, "[build] compile error") {
		t.Errorf("log: %s", log)
	}

	// A plain non-zero exit.
	s.pipeline("echo bye; exit 7\n")
	s.refci("run").want(t, 1)
	st = s.status("HEAD")
	if st.State != queue.Failure || *st.ExitCode != 7 || !strings.Contains(st.Reason, "code 7") {
		t.Errorf("%+v", st)
	}
	// refci job outside a pipeline.
	if r := s.refci("job", "x", "--", "true"); r.code != 2 || !strings.Contains(r.stderr, "not inside a refci pipeline") {
		t.Errorf("job outside: %d %s", r.code, r.stderr)
	}
}

func TestRunConfigurationErrors(t *testing.T) {
	s := newSandbox(t)
	// A repository without commits.
	if r := s.refci("run"); r.code != 2 || !strings.Contains(r.stderr, "no commits") {
		t.Errorf("empty repo: %d %s", r.code, r.stderr)
	}
	// No .refci/run: an error result that says how to add one.
	s.write("README", "x\n", 0o644)
	s.commitAll("no pipeline")
	r := s.refci("run").want(t, 2)
	if !strings.Contains(r.stdout, "no .refci/run") || !strings.Contains(r.stdout, "refci init") {
		t.Errorf("no pipeline: %s", r.stdout)
	}
	if n := strings.Count(r.stdout+r.stderr, "no .refci/run"); n != 1 {
		t.Errorf("no pipeline: the reason is printed %d times, want once:\n%s%s", n, r.stdout, r.stderr)
	}
	if st := s.status("HEAD"); st.State != queue.Error || st.ExitCode != nil {
		t.Errorf("no pipeline status: %+v", st)
	}
	// Not executable.
	s.write(".refci/run", "#!/bin/sh\necho hi\n", 0o644)
	s.commitAll("not executable")
	if r := s.refci("run").want(t, 2); !strings.Contains(r.stdout, "not executable") || !strings.Contains(r.stdout, "chmod +x") {
		t.Errorf("not executable: %s", r.stdout)
	}
	// Executable, but the kernel cannot run it: the user's configuration
	// too (exit 2), each with what to do.
	run := filepath.Join(s.repo, ".refci", "run")
	for _, c := range []struct{ name, script, want string }{
		{"no #! line", "echo hi\n", "a script needs a #! line first (for example #!/bin/sh)"},
		{"Windows line endings", "#!/bin/sh\r\necho hi\r\n", "the first line of .refci/run ends with a carriage return (Windows line endings), so its interpreter is not found: convert it with dos2unix or `sed -i 's/\\r$//' .refci/run`"},
	} {
		s.write(".refci/run", c.script, 0o755)
		if err := os.Chmod(run, 0o755); err != nil {
			t.Fatal(err)
		}
		s.commitAll(c.name)
		r := s.refci("run")
		if r.code != 2 || !strings.Contains(r.stdout, c.want) || strings.Count(r.stdout+r.stderr, c.want) != 1 {
			t.Errorf("%s: exit %d, want 2 and once %q:\n%s%s", c.name, r.code, c.want, r.stdout, r.stderr)
		}
		if st := s.status("HEAD"); st.State != queue.Error || st.Extra["config_error"] != true {
			t.Errorf("%s: status %+v", c.name, st)
		}
	}
	// A symlink out of the tree.
	os.Remove(filepath.Join(s.repo, ".refci", "run"))
	os.Symlink("/bin/true", filepath.Join(s.repo, ".refci", "run"))
	s.commitAll("symlink out")
	if r := s.refci("run").want(t, 2); !strings.Contains(r.stdout, "outside the repository") {
		t.Errorf("symlink out: %s", r.stdout)
	}
	// A symlink inside the tree is fine.
	os.Remove(filepath.Join(s.repo, ".refci", "run"))
	s.write("ci.sh", "#!/bin/sh\necho via-link\n", 0o755)
	os.Symlink("../ci.sh", filepath.Join(s.repo, ".refci", "run"))
	s.commitAll("symlink in")
	if r := s.refci("run").want(t, 0); !strings.Contains(r.stdout, "via-link") {
		t.Errorf("symlink in: %s", r.stdout)
	}
	// REV that is not a commit, or does not exist.
	tree := s.git("", "rev-parse", "HEAD^{tree}")
	blob := s.git("", "rev-parse", "HEAD:README")
	for rev, want := range map[string]string{tree: "is a tree", blob: "is a blob", "no-such-branch": "unknown revision"} {
		before := len(s.runRefs())
		if r := s.refci("run", rev); r.code != 2 || !strings.Contains(r.stderr, want) {
			t.Errorf("run %s: %d %q, want %q", rev, r.code, r.stderr, want)
		}
		if len(s.runRefs()) != before {
			t.Errorf("run %s recorded a result", rev)
		}
	}
	// Usage errors.
	if r := s.refci("run", "--bogus"); r.code != 2 || !strings.Contains(r.stderr, "bogus") {
		t.Errorf("bad flag: %d %s", r.code, r.stderr)
	}
	if r := s.refci("run", "-h"); r.code != 0 || !strings.Contains(r.stdout, "Usage: refci run") {
		t.Errorf("-h: %d %s", r.code, r.stdout)
	}
	if r := s.refciIn(s.root, "run"); r.code != 2 || !strings.Contains(r.stderr, "not a git repository") {
		t.Errorf("outside a repo: %d %s", r.code, r.stderr)
	}
}

func TestRunRevisions(t *testing.T) {
	s := newSandbox(t)
	first := s.pipeline("echo first\n")
	s.git("", "tag", "-a", "-m", "annotated", "v1")
	s.git("", "tag", "-a", "-m", "tag of a tag", "v1-outer", "v1")
	s.git("", "tag", "light")
	s.git("", "checkout", "-q", "-b", "feature")
	second := s.pipeline("echo second\n")
	s.git("", "checkout", "-q", "main")
	for rev, want := range map[string]string{"v1": first, "v1-outer": first, "light": first, "feature": second, second[:10]: second, "feature~1": first} {
		r := s.refci("run", "-q", rev).want(t, 0)
		if !strings.Contains(r.stdout, "refs/ci/runs/"+want+"/") {
			t.Errorf("run %s: %s", rev, r.stdout)
		}
	}
	if runs := strings.Count(s.refci("runs", first).stdout, first[:12]); runs != 4 {
		t.Errorf("runs of first: %d", runs)
	}
	all := strings.Split(strings.TrimSpace(s.refci("runs", "--all").stdout), "\n")
	if len(all) != 6 {
		t.Fatalf("runs --all: %v", all)
	}
	for i := 1; i < len(all); i++ { // newest first
		if all[i-1][:24] < all[i][:24] {
			t.Errorf("runs not newest first: %q before %q", all[i-1], all[i])
		}
	}
}

func TestRunOutputIsStoredVerbatim(t *testing.T) {
	s := newSandbox(t)
	s.pipeline(`printf 'bad utf8: \377\376 nul: \000 end\n'
printf '\033[31mred\033[0m\n'
printf 'no newline at end'
`)
	s.refci("run", "-q").want(t, 0)
	got := s.refci("log").stdout
	want := "bad utf8: \xff\xfe nul: \x00 end\n\x1b[31mred\x1b[0m\nno newline at end"
	if got != want {
		t.Errorf("log %q, want %q", got, want)
	}
	if st := s.status("HEAD"); st.LogBytes != int64(len(want)) || st.LogTruncated {
		t.Errorf("log bytes %d truncated %v", st.LogBytes, st.LogTruncated)
	}
}

func TestRunHugeOutputIsCappedWithFlatMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 1 GiB through a pipe")
	}
	s := newSandbox(t)
	s.pipeline(`echo first-line
head -c 1073741824 /dev/zero | tr '\0' 'x'
echo
echo last-line
`)
	r := s.refci("run", "-q", "--log-cap", "1048576").want(t, 0)
	st := s.status("HEAD")
	if !st.LogTruncated || st.LogBytes < 1<<30 {
		t.Errorf("truncated %v bytes %d", st.LogTruncated, st.LogBytes)
	}
	log := s.refci("log").stdout
	if !strings.HasPrefix(log, "first-line\n") || !strings.HasSuffix(log, "\nlast-line\n") || !strings.Contains(log, "bytes omitted") {
		t.Errorf("log head/tail wrong: %q ... %q", log[:40], log[len(log)-40:])
	}
	if len(log) > 1<<20+1024 {
		t.Errorf("stored log is %d bytes, cap 1 MiB", len(log))
	}
	if r.maxRSSKiB > 150*1024 {
		t.Errorf("refci peak RSS %d KiB for 1 GiB of output", r.maxRSSKiB)
	}
	t.Logf("refci peak RSS while storing 1 GiB of output: %d KiB", r.maxRSSKiB)
}

func TestRunArtifactsAreChecked(t *testing.T) {
	s := newSandbox(t)
	s.pipeline(`set -e
cd "$REFCI_ARTIFACTS"
echo ok > good.txt
mkdir -p sub && echo nested > sub/n.txt
ln -s /etc/passwd passwd-link
ln -s .. up
head -c 5000 /dev/zero > big.bin
mkfifo pipe
`)
	s.refci("run", "-q", "--artifact-cap", "4096").want(t, 0)
	st := s.status("HEAD")
	var paths []string
	for _, a := range st.Artifacts {
		paths = append(paths, a.Path)
	}
	if strings.Join(paths, ",") != "good.txt,sub/n.txt" {
		t.Errorf("stored %v", paths)
	}
	reasons := map[string]string{}
	for _, a := range st.ArtifactsSkipped {
		reasons[a.Path] = a.Reason
	}
	for p, want := range map[string]string{"passwd-link": "symlink", "up": "symlink", "big.bin": "cap", "pipe": "not a regular file"} {
		if !strings.Contains(reasons[p], want) {
			t.Errorf("skipped %s: %q, want %q (all: %v)", p, reasons[p], want, reasons)
		}
	}
	refs := s.runRefs()
	if out := s.git("", "ls-tree", "-r", "--name-only", refs[0]); strings.Contains(out, "passwd") || !strings.Contains(out, "artifacts/sub/n.txt") {
		t.Errorf("tree: %s", out)
	}
	// Total cap.
	s.pipeline(`cd "$REFCI_ARTIFACTS"; head -c 3000 /dev/zero > a; head -c 3000 /dev/zero > b`)
	s.refci("run", "-q", "--artifacts-total-cap", "4000").want(t, 0)
	st = s.status("HEAD")
	if len(st.Artifacts) != 1 || len(st.ArtifactsSkipped) != 1 || !strings.Contains(st.ArtifactsSkipped[0].Reason, "total cap") {
		t.Errorf("total cap: %+v %+v", st.Artifacts, st.ArtifactsSkipped)
	}
}

// alive reports whether a process whose command line contains marker exists.
func alive(marker string) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		b = bytes.ReplaceAll(b, []byte{0}, []byte{' '}) // arguments are NUL-separated
		if err == nil && bytes.Contains(b, []byte(marker)) {
			return true
		}
	}
	return false
}

func TestRunKillsDaemonsAndTimesOut(t *testing.T) {
	s := newSandbox(t)
	marker := fmt.Sprintf("%d.%03d", 4000+time.Now().UnixNano()%1000, time.Now().Nanosecond()%1000)
	s.pipeline(fmt.Sprintf(`setsid sleep %s >/dev/null 2>&1 &
( (sleep %s >/dev/null 2>&1 &) & )
echo started daemons
`, marker, marker))
	s.pipeline(fmt.Sprintf(`setsid sleep %[1]s >/dev/null 2>&1 &
( (sleep %[1]s >/dev/null 2>&1 &) & )
sleep 0.2
for p in /proc/[0-9]*; do { tr '\0' ' ' < $p/cmdline; } 2>/dev/null; echo; done | grep -c "^sleep %[1]s"
`, marker))
	r0 := s.refci("run", "-q").want(t, 0)
	if log := s.refci("log").stdout; !strings.HasPrefix(log, "2\n") {
		t.Fatalf("the pipeline should see its 2 daemons running, log: %q %s", log, r0.stdout)
	}
	if alive("sleep " + marker) {
		t.Fatal("a daemon started by the pipeline survived the run")
	}
	if st := s.status("HEAD"); st.Leftovers < 2 {
		t.Errorf("leftovers %d", st.Leftovers)
	}

	// Timeout: terminate, then kill, grandchildren included.
	marker2 := marker + "1"
	s.pipeline(fmt.Sprintf(`trap '' TERM
sh -c 'trap "" TERM; sleep %s' &
sleep %s
`, marker2, marker2))
	start := time.Now()
	r := s.refci("run", "-q", "--timeout", "500ms", "--kill-grace", "300ms").want(t, 1)
	if time.Since(start) > 30*time.Second {
		t.Errorf("timeout took %s", time.Since(start))
	}
	st := s.status("HEAD")
	if st.State != queue.Failure || !st.TimedOut || !strings.Contains(st.Reason, "timed out after 500ms") {
		t.Errorf("timeout status: %+v\n%s", st, r.stdout)
	}
	if alive("sleep " + marker2) {
		t.Error("a process of the timed-out pipeline survived")
	}
}

func TestRunCtrlCRecordsCancelled(t *testing.T) {
	s := newSandbox(t)
	s.pipeline("echo waiting; sleep 60\n")
	cmd := exec.Command(refciBin, "run", "--kill-grace", "200ms")
	cmd.Dir = s.repo
	cmd.Env = s.env
	out := &fixtures.Buffer{} // written by the command's copier as the test reads it
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The pipeline runs, so refci handles SIGINT by now; before, the
	// signal would kill refci itself.
	fixtures.WaitFor(t, 2*time.Minute, "the pipeline to start", func() bool { return strings.Contains(out.String(), "waiting") })
	cmd.Process.Signal(os.Interrupt)
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v\n%s", err, out.String())
	}
	st := s.status("HEAD")
	if st.State != queue.Cancelled || !strings.Contains(st.Reason, "interrupt") {
		t.Errorf("status: %+v\n%s", st, out.String())
	}
}

// A run whose result does not fit on the disk still ends with one: a
// short result in state error saying so, with the log and without the
// artifacts that did not fit; no half-written objects are left behind.
func TestRunDiskFullRecordsAnErrorResult(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare not installed")
	}
	if out, err := exec.Command("unshare", "-Urm", "true").CombinedOutput(); err != nil {
		t.Skipf("user namespaces unavailable: %v %s", err, out)
	}
	s := newSandbox(t)
	// The repository lives on a 2 MiB tmpfs; the pipeline's artifact needs more.
	script := fmt.Sprintf(`set -e
mnt=%[1]s/small
mkdir -p "$mnt"
mount -t tmpfs -o size=2m tmpfs "$mnt"
cd "$mnt"
git init -q -b main r && cd r
mkdir .refci
printf '#!/bin/sh\nhead -c 1500000 /dev/urandom > "$REFCI_ARTIFACTS/big"\nhead -c 1500000 /dev/urandom > "$REFCI_ARTIFACTS/big2"\n' > .refci/run
chmod +x .refci/run
git add -A && git commit -q -m x
set +e
%[2]s run -q
echo "exit=$?"
echo "refs=$(git for-each-ref refs/ci/ | wc -l)"
echo "tmpfiles=$(find .git/objects -name 'tmp_*' | wc -l)"
git show "$(git for-each-ref --format='%%(refname)' refs/ci/runs/):status.json" | tr -d ' \n'
echo
git fsck --no-dangling >/dev/null 2>&1 && echo fsck-ok
`, s.root, refciBin)
	cmd := exec.Command("unshare", "-Urm", "sh", "-c", script)
	cmd.Env = s.env
	out, _ := cmd.CombinedOutput()
	o := string(out)
	if !strings.Contains(o, "exit=3") || !strings.Contains(o, "no space left on device writing the result") {
		t.Errorf("disk full: want exit 3 and a clear message:\n%s", o)
	}
	if !strings.Contains(o, "the pipeline had ended success") {
		t.Errorf("disk full: the message should still say how the pipeline ended:\n%s", o)
	}
	if !strings.Contains(o, "refs=1") || !strings.Contains(o, "fsck-ok") || !strings.Contains(o, "tmpfiles=0") {
		t.Errorf("disk full: want one result ref and a sound repository:\n%s", o)
	}
	if !strings.Contains(o, `"state":"error","reason":"nospaceleftondevicewritingtheresult:`) || !strings.Contains(o, `"artifacts":[]`) ||
		!strings.Contains(o, `{"path":"big2","reason":"notstored:nospaceleftondevicewritingtheresult"}`) {
		t.Errorf("disk full: the recorded result:\n%s", o)
	}
}

func TestStatusRefusesUnknownFormat(t *testing.T) {
	s := newSandbox(t)
	head := s.pipeline("true\n")
	// Hand-craft a result written by a future refci.
	blob := s.gitStdin(`{"format": 99, "state": "success"}`, "hash-object", "-w", "--stdin")
	tree := s.gitStdin(fmt.Sprintf("100644 blob %s\tstatus.json\n", blob), "mktree")
	commit := s.git("", "commit-tree", "-m", "future", tree)
	s.git("", "update-ref", "refs/ci/runs/"+head+"/20991231T000000.000Z-abcdef", commit)
	r := s.refci("status", "refs/ci/runs/"+head+"/20991231T000000.000Z-abcdef")
	if r.code != 2 || !strings.Contains(r.stderr, "format 99") || !strings.Contains(r.stderr, "upgrade refci") {
		t.Errorf("status of a format-99 result: %d %s", r.code, r.stderr)
	}
	// verify refuses the unsigned commit clearly.
	s.refci("keys", "show").want(t, 0)
	s.refci("run", "-q").want(t, 0) // a real run exists too
	if r := s.refci("verify", "refs/ci/runs/"+head+"/20991231T000000.000Z-abcdef"); r.code == 0 {
		t.Errorf("verify accepted an unsigned, unreadable result: %s", r.stdout)
	}
}

func TestVerifyRejectsForeignAndTamperedSignatures(t *testing.T) {
	s := newSandbox(t)
	s.pipeline("true\n")
	s.refci("run", "-q").want(t, 0)
	ref := s.runRefs()[0]
	// A stranger's keyring does not contain the worker's key.
	strangerHome := filepath.Join(s.root, "stranger")
	env := s.env
	s.env = append(append([]string{}, env...), "REFCI_HOME="+strangerHome)
	s.refci("keys", "show").want(t, 0)
	r := s.refci("verify", ref)
	s.env = env
	if r.code != 1 || !strings.Contains(r.stderr, "not in the keyring") {
		t.Errorf("foreign key: %d %s", r.code, r.stderr)
	}
	// Tamper: same signature, changed message.
	raw := s.git("", "cat-file", "commit", ref)
	forged := strings.Replace(raw, "refci: success", "refci: success!", 1)
	h := s.gitStdin(forged+"\n", "hash-object", "-t", "commit", "-w", "--stdin")
	s.git("", "update-ref", ref, h)
	if r := s.refci("verify", ref); r.code != 1 || !strings.Contains(r.stderr, "bad signature") {
		t.Errorf("tampered: %d %s", r.code, r.stderr)
	}
}

// gitStdin is git in the repo with stdin.
func (s *sandbox) gitStdin(stdin string, args ...string) string {
	s.t.Helper()
	out, err := s.runGit("", stdin, args...)
	if err != nil {
		s.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(out)
}

func TestInitWritesAWorkingStarter(t *testing.T) {
	s := newSandbox(t)
	s.write("README", "x\n", 0o644)
	s.commitAll("first")
	r := s.refci("init").want(t, 0)
	if !strings.Contains(r.stdout, "git add .refci/run") {
		t.Errorf("init: %s", r.stdout)
	}
	if r := s.refci("init"); r.code != 2 || !strings.Contains(r.stderr, "--force") {
		t.Errorf("second init: %d %s", r.code, r.stderr)
	}
	s.commitAll("add pipeline")
	s.refci("run", "-q").want(t, 0)
	st := s.status("HEAD")
	if len(st.Jobs) != 1 || st.Jobs[0].Name != "check" {
		t.Errorf("starter jobs: %+v", st.Jobs)
	}
	var js map[string]any
	if err := json.Unmarshal([]byte(s.refci("status", "--json").stdout), &js); err != nil {
		t.Error(err)
	}
	for _, k := range []string{"format", "state", "reason", "target", "request", "run", "attempt", "worker", "env", "trusted", "started", "finished", "duration_ms", "exit_code", "jobs", "artifacts", "log_truncated"} {
		if _, ok := js[k]; !ok {
			t.Errorf("status.json lacks %q", k)
		}
	}
}

func TestKeyFlagSelectsAnotherKey(t *testing.T) {
	s := newSandbox(t)
	s.pipeline("true\n")
	// Make a second key in another home, then use it from this one with --key.
	own, other, keyFile := s.twoKeys()
	if got := strings.Fields(s.refci("keys", "show", "--key", keyFile).want(t, 0).stdout)[0]; got != other || got == own {
		t.Fatalf("keys show --key: %s (own %s, other %s)", got, own, other)
	}
	s.refci("run", "-q", "--key", keyFile).want(t, 0)
	if st := s.status("HEAD"); st.Worker != other {
		t.Errorf("run --key signed as %s, want %s", st.Worker, other)
	}
	// The default keyring (own key) does not know it; --key adds it.
	if r := s.refci("verify"); r.code != 1 || !strings.Contains(r.stderr, "not in the keyring") {
		t.Errorf("verify with the own key only: %d %s", r.code, r.stderr)
	}
	if v := s.refci("verify", "--key", keyFile).want(t, 0).stdout; !strings.Contains(v, other) {
		t.Errorf("verify --key: %s", v)
	}
	if r := s.refci("keys", "show", "--key", filepath.Join(s.root, "missing.asc")); r.code != 2 || !strings.Contains(r.stderr, "no private key") {
		t.Errorf("missing --key: %d %s", r.code, r.stderr)
	}
}

// A result whose status.json names one worker but whose commit another
// key signed is not believed, even when both keys are trusted.
func TestVerifyRejectsAWorkerOtherThanTheSigner(t *testing.T) {
	s := newSandbox(t)
	s.pipeline("true\n")
	own, other, otherKey := s.twoKeys()
	s.refci("run", "-q", "--key", otherKey).want(t, 0)
	ref := s.runRefs()[0]
	// The other key re-signs the result with status.json claiming the
	// first worker ran it.
	s.gpgImport(string(must(os.ReadFile(otherKey))))
	st := strings.ReplaceAll(s.git("", "show", ref+":status.json"), other, own)
	treeID := s.treeWithStatus(ref, st+"\n")
	forged := s.gitStdin(s.git("", "show", "-s", "--format=%B", ref), "commit-tree", "-S"+other, "-F", "-", treeID)
	s.git("", "update-ref", ref, forged)
	s.git("", "verify-commit", forged) // a good signature as far as git can tell
	r := s.refci("verify", "--key", otherKey, ref)
	if r.code != 1 || !strings.Contains(r.stderr, "status.json names worker "+own+" but the commit is signed by "+other) {
		t.Errorf("verify of a result signed by another worker than it names: %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// twoKeys makes the sandbox's own key and a second one in another home;
// it returns both fingerprints and the second key's file.
func (s *sandbox) twoKeys() (own, other, otherKey string) {
	s.t.Helper()
	own = strings.Fields(s.refci("keys", "show").want(s.t, 0).stdout)[0]
	env := s.env
	s.env = append(append([]string{}, env...), "REFCI_HOME="+filepath.Join(s.root, "other"))
	other = strings.Fields(s.refci("keys", "show").want(s.t, 0).stdout)[0]
	s.env = env
	return own, other, filepath.Join(s.root, "other", "key.asc")
}

// background is a refci process started by startRefci: its output as it
// comes; done is closed once it has ended, and err is then its exit.
type background struct {
	cmd         *exec.Cmd
	out, errOut *fixtures.Buffer
	done        chan struct{}
	err         error
}

// startRefci starts refci with env in dir and stops it (SIGTERM) when
// the test ends, logging its output if the test failed.
func startRefci(t *testing.T, dir string, env []string, args ...string) *background {
	t.Helper()
	cmd := exec.Command(refciBin, args...)
	cmd.Dir, cmd.Env = dir, env
	b := &background{cmd: cmd, out: &fixtures.Buffer{}, errOut: &fixtures.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = b.out, b.errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.err = cmd.Wait(); close(b.done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-b.done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("refci %s:\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), tail(b.out.String()), tail(b.errOut.String()))
		}
	})
	return b
}

// A job that fails inside a pipeline that exits 0 fails the run; what
// the summary and the job tree say reads as a sentence, and a job's exit
// code is said once ("exit 1", not "exit 1  exited with code 1").
func TestRunJobFailureMessages(t *testing.T) {
	s := newSandbox(t)
	s.pipeline("refci job unit -- sh -c 'exit 1' || true\nexit 0\n")
	r := s.refci("run").want(t, 1)
	const reason = "job unit failed (.refci/run exited 0)"
	if !strings.Contains(r.stdout, "refci: failure in ") || !strings.Contains(r.stdout, ": "+reason+"\n") {
		t.Errorf("run's summary, want %q:\n%s", reason, r.stdout)
	}
	st := s.status("HEAD")
	if st.Reason != reason || len(st.Jobs) != 1 || st.Jobs[0].Reason != "" || st.Jobs[0].ExitCode == nil || *st.Jobs[0].ExitCode != 1 {
		t.Errorf("status: reason %q, jobs %+v", st.Reason, st.Jobs)
	}
	out := s.refci("status").want(t, 1).stdout
	if !strings.Contains(out, "exit 1") || strings.Contains(out, "exited with code") {
		t.Errorf("status, want the job's exit code once:\n%s", out)
	}
}

// With no run yet, status names the command to start one exactly as it
// is typed: 'refci run' (no stray space) or 'refci run REV'.
func TestStatusNoRunsYet(t *testing.T) {
	s := newSandbox(t)
	s.pipeline("true\n")
	head := s.git("", "rev-parse", "--short=12", "HEAD")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"status"}, "refci: HEAD (" + head + "): no runs yet; start one with 'refci run', or fetch its runs with: refci fetch\n"},
		{[]string{"status", "main"}, "refci: main (" + head + "): no runs yet; start one with 'refci run main', or fetch its runs with: refci fetch main\n"},
	} {
		if r := s.refci(c.args...); r.code != 2 || r.stderr != c.want {
			t.Errorf("%s: exit %d, stderr %q, want 2 and %q", c.args, r.code, r.stderr, c.want)
		}
	}
}
