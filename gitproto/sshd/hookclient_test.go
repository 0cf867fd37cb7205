package sshd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"refci.dev/refci/gitproto/sshd/hookclient"
)

// The light hook client, built once for the tests that run it.
var lightHook = struct {
	once sync.Once
	path string
	err  string
}{}

func buildLightHook(t *testing.T) string {
	t.Helper()
	lightHook.once.Do(func() {
		dir, err := os.MkdirTemp("", "refci-hook-test-")
		if err != nil {
			lightHook.err = err.Error()
			return
		}
		exe := filepath.Join(dir, HookClientName)
		if out, err := exec.Command("go", "build", "-buildvcs=false", "-o", exe, "refci.dev/refci/cmd/refci-hook").CombinedOutput(); err != nil {
			lightHook.err = string(out) + err.Error()
			return
		}
		lightHook.path = exe
	})
	if lightHook.err != "" {
		t.Fatalf("go build refci-hook: %s", lightHook.err)
	}
	return lightHook.path
}

// countingScript writes an executable shell script at path that appends
// a line to log and then runs exe with its arguments.
func countingScript(t *testing.T, path, log string, exe ...string) {
	t.Helper()
	q := make([]string, len(exe))
	for i, e := range exe {
		q[i] = "'" + e + "'"
	}
	script := "#!/bin/sh\necho \"$1\" >> '" + log + "'\nexec " + strings.Join(q, " ") + " \"$@\"\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

func lines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// With Config.HookClient, every hook of a push is answered through the
// light client (cmd/refci-hook, built): refusals, push options and
// OnReceive's message reach the pusher as with the full one. Once it is
// gone (an upgrade removed it), the hooks fall back to HookCommand.
func TestLightHookClientAndFallback(t *testing.T) {
	light := buildLightHook(t)
	dir := t.TempDir()
	lightLog, fullLog := filepath.Join(dir, "light.log"), filepath.Join(dir, "full.log")
	// Each client behind a script that notes which one ran.
	wrapped := filepath.Join(dir, HookClientName)
	countingScript(t, wrapped, lightLog, light)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	full := filepath.Join(dir, "full")
	countingScript(t, full, fullLog, self, HookArg)
	ts := startServer(t, func(c *Config) {
		c.HookClient = wrapped
		c.HookCommand = []string{full}
	})
	c := ts.client("c", "rwc")
	c.initRepo(1)
	c.must("git", "push", "-q", c.url+"/app.git", "main")
	c.must("git", "remote", "add", "origin", c.url+"/app.git")

	out, err := c.run("git", "push", "-o", "env=staging", "origin", "HEAD:refs/heads/ok", "HEAD:refs/forbidden/x")
	if err == nil || !strings.Contains(out, "refs/forbidden/x (hook declined)") || !strings.Contains(out, "remote: refci: refused refs/forbidden/x: forbidden by the test policy") {
		t.Errorf("the refusal did not reach the pusher: %v\n%s", err, out)
	}
	if !strings.Contains(out, "remote: received 1 updates") {
		t.Errorf("OnReceive's message did not reach the pusher:\n%s", out)
	}
	ts.mu.Lock()
	last := ts.received[len(ts.received)-1]
	ts.mu.Unlock()
	if strings.Join(last.PushOptions, " ") != "env=staging" || len(last.Updates) != 1 || last.Updates[0].Name != "refs/heads/ok" {
		t.Errorf("OnReceive got %+v", last)
	}
	out, err = c.run("git", "push", "-o", "bad", "origin", "HEAD:refs/heads/badopt")
	if err == nil || !strings.Contains(out, "push option \"bad\" is not known") {
		t.Errorf("a bad push option through the light client: %v\n%s", err, out)
	}
	got := strings.Join(lines(t, lightLog), " ")
	// The first push (creating the repository): pre-receive, update,
	// post-receive; the second (options): pre-receive, update twice,
	// post-receive; the third (refused at once): pre-receive.
	if want := "pre-receive update post-receive pre-receive update update post-receive pre-receive"; got != want {
		t.Errorf("the light client ran for %q, want %q", got, want)
	}
	if l := lines(t, fullLog); len(l) != 0 {
		t.Errorf("the full client ran beside the light one: %q", l)
	}

	// The light client removed: the same hooks run the full one.
	if err := os.Remove(wrapped); err != nil {
		t.Fatal(err)
	}
	out, err = c.run("git", "push", "origin", "HEAD:refs/heads/after", "HEAD:refs/forbidden/z")
	if err == nil || !strings.Contains(out, "remote: refci: refused refs/forbidden/z: forbidden by the test policy") || !strings.Contains(out, "remote: received 1 updates") {
		t.Errorf("push with the full client: %v\n%s", err, out)
	}
	if got := strings.Join(lines(t, fullLog), " "); got != "update update post-receive" {
		t.Errorf("the full client ran for %q", got)
	}
	if refs := c.must("git", "ls-remote", "origin"); !strings.Contains(refs, "refs/heads/after") || !strings.Contains(refs, "refs/heads/ok") || strings.Contains(refs, "forbidden") {
		t.Errorf("remote refs:\n%s", refs)
	}
}

// Without HookClient the scripts name only HookCommand, as before.
func TestHookScriptsWithoutLightClient(t *testing.T) {
	ts := startServer(t, nil)
	b, err := os.ReadFile(filepath.Join(ts.srv.hooksDir, "update"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), HookClientName) || strings.Count(string(b), "exec ") != 1 {
		t.Errorf("update hook:\n%s", b)
	}
}

// The light client asks the server like the full one: without the
// server's environment it refuses to run, and the server refuses a token
// it does not know (a hook run by hand, or a finished push's).
func TestLightHookClientRefused(t *testing.T) {
	light := buildLightHook(t)
	ts := startServer(t, nil)
	run := func(env []string, args ...string) (int, string) {
		cmd := exec.Command(light, args...)
		cmd.Env = env
		cmd.Stdin = strings.NewReader(strings.Repeat("0", 40) + " " + strings.Repeat("1", 40) + " refs/heads/main\n")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), stderr.String()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, stderr.String()
	}
	for _, hook := range [][]string{{"post-receive"}, {"update", "refs/heads/main", strings.Repeat("0", 40), strings.Repeat("1", 40)}} {
		code, msg := run([]string{hookclient.EnvSocket + "=" + ts.srv.hooks.path, hookclient.EnvToken + "=not-a-token"}, hook...)
		if code != 1 || !strings.Contains(msg, "this push session is not known to the server") {
			t.Errorf("%s with a bad token: exit %d, %q", hook[0], code, msg)
		}
	}
	if code, msg := run(nil, "update", "refs/heads/main", "a", "b"); code != 1 || !strings.Contains(msg, "runs only under refci serve") {
		t.Errorf("outside refci serve: exit %d, %q", code, msg)
	}
	code, msg := run([]string{hookclient.EnvSocket + "=" + filepath.Join(t.TempDir(), "nothing.sock"), hookclient.EnvToken + "=x"}, "update", "r", "a", "b")
	if code != 1 || !strings.Contains(msg, "hook socket is not answering") {
		t.Errorf("no server: exit %d, %q", code, msg)
	}
	if code, msg := run(nil); code != 2 || !strings.Contains(msg, "internal helper of refci serve") {
		t.Errorf("no arguments: exit %d, %q", code, msg)
	}
	ts.mu.Lock()
	n := len(ts.received)
	ts.mu.Unlock()
	if n != 0 {
		t.Errorf("OnReceive heard of %d pushes", n)
	}
}

// ChooseHookClient takes a refci-hook beside the program only when it is
// an executable built from cmd/refci-hook of the same build.
func TestChooseHookClient(t *testing.T) {
	light := buildLightHook(t)
	dir := t.TempDir()
	self := filepath.Join(dir, "refci")
	if p, note := ChooseHookClient(self); p != "" || note != "" {
		t.Errorf("none beside: %q, %q", p, note)
	}
	if p, note := ChooseHookClient("refci"); p != "" || note != "" {
		t.Errorf("a relative path: %q, %q", p, note)
	}
	beside := filepath.Join(dir, HookClientName)
	b, err := os.ReadFile(light)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(beside, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if p, note := ChooseHookClient(self); p != "" || !strings.Contains(note, "not an executable file") {
		t.Errorf("not executable: %q, %q", p, note)
	}
	os.Chmod(beside, 0o755)
	if p, note := ChooseHookClient(self); p != beside || note != "" {
		t.Errorf("the real one: %q, %q", p, note)
	}
	// Another program under that name (here this test binary).
	testBin, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(beside, testBin, 0o755); err != nil {
		t.Fatal(err)
	}
	if p, note := ChooseHookClient(self); p != "" || !strings.Contains(note, "not refci.dev/refci/cmd/refci-hook") {
		t.Errorf("another program: %q, %q", p, note)
	}
	if err := os.WriteFile(beside, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if p, note := ChooseHookClient(self); p != "" || !strings.Contains(note, "cannot read its build") {
		t.Errorf("a script: %q, %q", p, note)
	}
}

// OnAllowed hears of each update the update hook allowed in an existing
// repository, with the push's options, before the push is applied; not
// of refused ones.
func TestOnAllowed(t *testing.T) {
	var mu sync.Mutex
	var heard []string
	ts := startServer(t, func(c *Config) {
		c.OnAllowed = func(path string, u RefUpdate, options []string) {
			mu.Lock()
			defer mu.Unlock()
			heard = append(heard, filepath.Base(path)+" "+u.Name+" "+u.New+" "+strings.Join(options, ","))
		}
	})
	c := ts.client("c", "rwc")
	c.initRepo(1)
	c.must("git", "push", "-q", c.url+"/app.git", "main") // creates it: not heard
	head := strings.TrimSpace(c.must("git", "rev-parse", "HEAD"))
	c.run("git", "push", c.url+"/app.git", "HEAD:refs/heads/ok", "HEAD:refs/forbidden/x")
	c.must("git", "push", "-q", "-o", "env=x", c.url+"/app.git", "HEAD:refs/heads/opts")
	mu.Lock()
	defer mu.Unlock()
	want := []string{"app.git refs/heads/ok " + head + " ", "app.git refs/heads/opts " + head + " env=x"}
	if strings.Join(heard, "\n") != strings.Join(want, "\n") {
		t.Errorf("heard:\n%s\nwant:\n%s", strings.Join(heard, "\n"), strings.Join(want, "\n"))
	}
}
