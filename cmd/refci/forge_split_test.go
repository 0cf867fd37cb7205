package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/githubapi"
	"refci.dev/refci/queue"
	"refci.dev/refci/worker/proc"
)

// refci mirror and refci mail run in refci-forge, which refci execs: the
// help refci prints of them is refci-forge's, the golden one, in every
// way of asking; their usage errors are as any command's.
func TestForgeCommandsHelp(t *testing.T) {
	s := newSandbox(t)
	for _, name := range []string{"mirror", "mail"} {
		want, err := os.ReadFile(filepath.Join("testdata", "help", name+".txt"))
		if err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"help", name}, {name, "-h"}, {name, "--help"}} {
			r := runRefciEnv(t, s.env, args...)
			if r.code != 0 || r.stderr != "" || r.stdout != string(want) {
				t.Errorf("refci %v: exit %d, stderr %q, stdout differs from testdata/help/%s.txt:\n%s", args, r.code, r.stderr, name, r.stdout)
			}
		}
	}
	r := runRefciEnv(t, s.env, "help")
	for _, c := range []string{"refci mirror --config FILE\n", "refci mail --config FILE [--key FILE]\n"} {
		if !strings.Contains(r.stdout, c) {
			t.Errorf("refci help does not list %q:\n%s", c, r.stdout)
		}
	}
	r = runRefciEnv(t, s.env, "mirror", "--bogus")
	if want := "refci: mirror: flag provided but not defined: -bogus\nUsage: refci mirror --config FILE (see 'refci help mirror')\n"; r.code != exitUsage || r.stderr != want || r.stdout != "" {
		t.Errorf("refci mirror --bogus: exit %d, stderr %q, stdout %q; want exit 2 and %q", r.code, r.stderr, r.stdout, want)
	}
	r = runRefciEnv(t, s.env, "mail", "--config", filepath.Join(s.root, "nope.toml"))
	if r.code != exitUsage || !strings.HasPrefix(r.stderr, "refci: config "+filepath.Join(s.root, "nope.toml")+": open ") {
		t.Errorf("refci mail with a missing file: exit %d, stderr %q", r.code, r.stderr)
	}
}

// Without refci-forge beside refci, or with one that is not refci-forge
// of refci's build, refci mirror, refci mail and a worker with [[forge]]
// say so and what to do, and exit 3; the rest of refci, its help
// included, works.
func TestForgeCommandsNeedRefciForge(t *testing.T) {
	s := newSandbox(t)
	lone := filepath.Join(t.TempDir(), "refci")
	copyExe(t, refciBin, lone)
	tok := writeToken(t, s.root, "token", "tok", 0o600)
	cfg := filepath.Join(s.root, "worker.toml")
	body := fmt.Sprintf("remotes = [%q]\n[[forge]]\nkind = \"gitea\"\nrepo = \"org/app\"\ntoken_file = %q\n", fixtures.BareRepo(t, "app.git"), tok)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) result {
		t.Helper()
		old := refciBin
		refciBin = lone
		defer func() { refciBin = old }()
		return runRefciEnv(t, s.env, args...)
	}
	run("keys", "show")
	check := func(why string, wants ...string) {
		t.Helper()
		for _, args := range [][]string{{"mirror", "--config", cfg}, {"mail", "-h"}, {"help", "mirror"}, {"worker", "--config", cfg}} {
			r := run(args...)
			if r.code != exitInfra || strings.Count(r.stderr, "\n") != 1 || r.stdout != "" {
				t.Errorf("%s: refci %v: exit %d, stdout %q, stderr %q; want exit 3 and one line", why, args, r.code, r.stdout, r.stderr)
			}
			for _, w := range wants {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("%s: refci %v: stderr %q lacks %q", why, args, r.stderr, w)
				}
			}
		}
		if r := run("help"); r.code != 0 || !strings.Contains(r.stdout, "refci mirror --config FILE") {
			t.Errorf("%s: refci help: exit %d, %q", why, r.code, r.stdout)
		}
	}
	check("missing", "refci-forge is not in "+filepath.Dir(lone), "make build puts bin/refci-forge beside bin/refci")
	copyExe(t, filepath.Join(filepath.Dir(refciBin), "refci-hook"), filepath.Join(filepath.Dir(lone), "refci-forge"))
	check("another program", `is built from "refci.dev/refci/cmd/refci-hook", not refci.dev/refci/cmd/refci-forge`, "install refci and refci-forge of one build")
}

func copyExe(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// childrenOf lists the processes whose parent is pid and whose command
// name is comm.
func childrenOf(t *testing.T, pid int, comm string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	var out []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open {
			continue
		}
		f := strings.Fields(s[close+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) && s[open+1:close] == comm && f[0] != "Z" {
			out = append(out, p)
		}
	}
	return out
}

// A worker runs its [[forge]] in a refci-forge child; killed with
// SIGKILL, the child is said in the worker's log and started again, and
// the worker goes on: the next run shows on the forge through the new
// child, and the worker stops cleanly, its child with it. (forge/link's
// tests show wake-ups reaching a restarted child.)
func TestWorkerRestartsItsRefciForge(t *testing.T) {
	f := newFleet(t, "echo the tests pass\n")
	head := f.git(f.repo, "rev-parse", "HEAD")
	gh := githubapi.New(t, "org", "app", "ghp-worker-token")
	dir := t.TempDir()
	tok := writeToken(t, dir, "token", "ghp-worker-token", 0o600)
	cfg := filepath.Join(dir, "worker.toml")
	body := fmt.Sprintf("remotes = [%q]\n[[forge]]\nkind = \"github\"\nrepo = \"org/app\"\ntoken_file = %q\nbase_url = %q\n", "file://"+f.bare, tok, gh.URL)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	w := f.startWorker("a", "--config", cfg)
	log := func() string { f.mu.Lock(); defer f.mu.Unlock(); return f.logs[0].String() }
	status := func(ctx string) func() bool {
		return func() bool {
			s := gh.Statuses(head)
			return len(s) > 0 && s[len(s)-1].Context == ctx && s[len(s)-1].State == "success"
		}
	}
	f.git(f.repo, "push", "-q", "origin", "HEAD:refs/ci/requests/first")
	fixtures.WaitFor(t, 2*time.Minute, "the first run on the forge", status("refci/first"))
	var kids []int
	fixtures.WaitFor(t, time.Minute, "the worker's refci-forge", func() bool { kids = childrenOf(t, w.Process.Pid, "refci-forge"); return len(kids) == 1 })
	if err := syscall.Kill(kids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	fixtures.WaitFor(t, time.Minute, "the restart in the worker's log", func() bool {
		return strings.Contains(log(), "refci-forge (the forges and mail) exited; starting it again") && strings.Contains(log(), "refci-forge (the forges and mail) started again")
	})
	if l := log(); !strings.Contains(l, "signal: killed") {
		t.Errorf("the log does not say how the child ended:\n%s", l)
	}
	again := childrenOf(t, w.Process.Pid, "refci-forge")
	if len(again) != 1 || again[0] == kids[0] {
		t.Fatalf("children after the restart: %v (before: %v)", again, kids)
	}
	f.git(f.repo, "push", "-q", "origin", "HEAD:refs/ci/requests/second")
	fixtures.WaitFor(t, 2*time.Minute, "the second run on the forge", status("refci/second"))
	f.stopAll()
	if w.ProcessState == nil || w.ProcessState.ExitCode() != 0 {
		t.Errorf("the worker ended %v:\n%s", w.ProcessState, log())
	}
	if err := syscall.Kill(again[0], 0); err == nil {
		t.Errorf("refci-forge %d outlived the worker", again[0])
	}
	if strings.Contains(log(), "ghp-worker-token") {
		t.Error("the worker logged the token")
	}
}

// A worker whose [[forge]] and [mail] run in refci-forge still hides
// their secrets from pipelines: the token file, a GitHub App's key, the
// mail password file and the mirror's state (the mail server being down
// holds nothing up).
func TestWorkerHidesForgeAndMailSecrets(t *testing.T) {
	if err := proc.CheckIsolation(refciBin); err != nil {
		t.Skipf("no user namespaces here: %v", err)
	}
	f := newFleet(t, "true\n")
	gh := githubapi.New(t, "org", "app", "ghp-canary-token")
	secretDir := t.TempDir()
	tok := writeToken(t, secretDir, "token", "ghp-canary-token", 0o600)
	pw := writeToken(t, secretDir, "mail-password", "pw-canary", 0o600)
	state := filepath.Join(t.TempDir(), "mirror-state")
	ln, err := net.Listen("tcp", "127.0.0.1:0") // a mail server that never answers
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(t.TempDir(), "worker.toml")
	body := fmt.Sprintf(`remotes = [%q]
mirror_state = %q
[[forge]]
kind = "github"
repo = "org/app"
token_file = %q
base_url = %q
[mail]
imap = "imap+insecure://%s/INBOX"
smtp = "smtp+insecure://%s"
user = "ci"
password_file = %q
from = "ci@example.invalid"
`, "file://"+f.bare, state, tok, gh.URL, addr, addr, pw)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	f.startWorker("a", "--config", cfg)
	f.pipeline(fmt.Sprintf(`
echo "token:[$(cat %[1]s 2>/dev/null)]"
echo "password:[$(cat %[2]s 2>/dev/null)]"
echo "state:[$(ls -A %[3]s 2>/dev/null)]"
`, tok, pw, state))
	f.git("", "push", "-q", "origin", "main", "HEAD:refs/ci/requests/peek")
	f.waitFor("the result", 2*time.Minute, func() bool { return len(f.finalResults()["peek"]) == 1 })
	ref := f.remoteRefs("refs/ci/runs/")[0]
	log := f.gitErr(f.bare, "show", ref+":log.txt")
	if strings.Contains(log, "canary") {
		t.Errorf("the pipeline read a secret:\n%s", log)
	}
	for _, want := range []string{"token:[]", "password:[]", "state:[]"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if _, err := os.Stat(filepath.Join(state, "records")); err != nil {
		t.Errorf("the mirror keeps no state at %s: %v", state, err)
	}
}

// running reports whether process pid runs (not gone, not a zombie).
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// A worker killed with SIGKILL leaves no refci-forge behind: the end of
// its input stops the child.
func TestRefciForgeEndsWithAKilledWorker(t *testing.T) {
	f := newFleet(t, "true\n")
	gh := githubapi.New(t, "org", "app", "tok")
	dir := t.TempDir()
	tok := writeToken(t, dir, "token", "tok", 0o600)
	cfg := filepath.Join(dir, "worker.toml")
	body := fmt.Sprintf("remotes = [%q]\n[[forge]]\nkind = \"github\"\nrepo = \"org/app\"\ntoken_file = %q\nbase_url = %q\n", "file://"+f.bare, tok, gh.URL)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	w := f.startWorker("a", "--config", cfg)
	var kids []int
	fixtures.WaitFor(t, time.Minute, "the worker's refci-forge", func() bool { kids = childrenOf(t, w.Process.Pid, "refci-forge"); return len(kids) == 1 })
	if err := w.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	fixtures.WaitFor(t, time.Minute, "refci-forge to end after its worker", func() bool { return !running(kids[0]) })
}

// The worker and its refci-forge wake each other: with the worker
// polling every 10 minutes, a mailed series runs at once because the
// bridge's "asked" reaches the worker, and its reply follows the run
// (the worker's push wakes the bridge; its own look at the runs is every
// 30 s).
func TestMailWorkerAndItsChildWakeEachOther(t *testing.T) {
	w := newMailWorld(t)
	cfg := filepath.Join(w.root, "worker.toml")
	body := fmt.Sprintf("remotes = [%q]\npoll = \"10m\"\nlease = \"3s\"\ngrace = \"5s\"\n", "file://"+w.bare) + w.mailTable("imaps://"+w.dv.TLSAddr, "")
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	env := append(append([]string{}, w.env...), "REFCI_HOME="+filepath.Join(w.root, "home"))
	wk := startProc(t, env, "worker", "--config", cfg)
	fixtures.WaitForShowing(t, time.Minute, "the bridge to start", func() bool { return strings.Contains(wk.out.String(), "mail bridge started") }, wk.out.String)
	w.deliver(w.series("wake", []string{"--thread"}, map[string]string{"a.txt": "one\n"})...)
	fixtures.WaitForShowing(t, 45*time.Second, "the run, long before the worker's next poll", func() bool { return len(w.refs(queue.RunsPrefix)) == 1 }, wk.out.String)
	ran := time.Now()
	fixtures.WaitForShowing(t, 3*time.Minute, "the reply", func() bool { return len(w.sink.got()) == 1 }, wk.out.String)
	t.Logf("run to reply: %v", time.Since(ran))
}
