package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/queue"
)

// These tests run `refci serve` (the built binary) and talk to it with
// the stock ssh and git clients.

type served struct {
	*sandbox
	cmd        *exec.Cmd
	out, log   *fixtures.Buffer
	addr       string
	knownHosts string
	data       string
	adminKey   string
	adminFP    string
	stopped    bool
}

var listenRe = regexp.MustCompile(`listening on ssh://(127\.0\.0\.1:\d+)`)

// startServe starts refci serve on a free port with a fresh admin key.
func startServe(t *testing.T, extra ...string) *served {
	t.Helper()
	s := newSandbox(t)
	sv := &served{sandbox: s, out: &fixtures.Buffer{}, log: &fixtures.Buffer{}, data: filepath.Join(s.home, "serve")}
	admin := fixtures.SSHKeyFiles(t, s.root, "admin")
	sv.adminKey, sv.adminFP = admin.Path, admin.Fingerprint
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--admin", sv.adminKey + ".pub", "--concurrency", "2"}, extra...)
	sv.cmd = exec.Command(refciBin, args...)
	sv.cmd.Env = s.env
	sv.cmd.Stdout, sv.cmd.Stderr = sv.out, sv.log
	if err := sv.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sv.stop()
		if t.Failed() {
			t.Logf("serve stdout:\n%s\nserve log:\n%s", tail(sv.out.String()), tail(sv.log.String()))
		}
	})
	fixtures.WaitFor(t, 20*time.Second, "refci serve to start (its output and log follow)", func() bool {
		o := sv.out.String()
		m := listenRe.FindStringSubmatch(o)
		if m == nil || !strings.Contains(o, "known_hosts line:\n  [") || !strings.HasSuffix(o, "\n\n") {
			return false
		}
		sv.addr = m[1]
		_, kh, _ := strings.Cut(o, "known_hosts line:\n  ")
		kh, _, _ = strings.Cut(kh, "\n")
		sv.knownHosts = filepath.Join(s.root, "known_hosts")
		os.WriteFile(sv.knownHosts, []byte(kh+"\n"), 0o600)
		return true
	})
	sv.useKey(sv.adminKey)
	s.git("", "remote", "add", "ci", sv.url("app.git"))
	return sv
}

func (sv *served) url(repo string) string { return "ssh://git@" + sv.addr + "/" + repo }

// useKey makes git in the sandbox use key (and only it).
func (sv *served) useKey(key string) {
	sv.env = append(sv.env, "GIT_SSH_COMMAND="+sv.sshCommand(key))
}

func (sv *served) sshCommand(key string) string {
	return "ssh -i " + key + " -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=" + sv.knownHosts
}

// stop sends SIGTERM and waits for the server to exit.
func (sv *served) stop() int {
	if sv.stopped {
		return sv.cmd.ProcessState.ExitCode()
	}
	sv.stopped = true
	sv.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { sv.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		sv.cmd.Process.Kill()
		<-done
		sv.t.Errorf("refci serve did not stop within 40 s of SIGTERM")
	}
	return sv.cmd.ProcessState.ExitCode()
}

// bare is the served repository's directory.
func (sv *served) bare(repo string) string { return filepath.Join(sv.data, "repos", repo) }

func (sv *served) waitFinal(repo, request string, d time.Duration) *queue.Status {
	sv.t.Helper()
	var st *queue.Status
	fixtures.WaitFor(sv.t, d, "a final result for request "+request, func() bool {
		st, _ = findFinal(sv.bare(repo), request)
		return st != nil
	})
	return st
}

func (sv *served) addRole(line string) {
	sv.t.Helper()
	f, err := os.OpenFile(filepath.Join(sv.data, "roles"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		sv.t.Fatal(err)
	}
	fmt.Fprintln(f, line)
	f.Close()
}

// From nothing to a green, signed result with stock git over ssh; the
// request runs at once; push options become request options; a restart
// keeps the host key and the repositories.
func TestServeEndToEnd(t *testing.T) {
	// The embedded worker polls once an hour: only the push's wake-up can
	// run a request within the tests' guards, however loaded the machine.
	sv := startServe(t, "--poll", "1h")
	o := sv.out.String()
	for _, want := range []string{"admin:     " + sv.adminFP + " (from " + sv.adminKey + ".pub)", "git remote add ci ssh://" + sv.addr + "/app.git", "refci worker --remote ssh://" + sv.addr} {
		if !strings.Contains(o, want) {
			t.Errorf("the banner lacks %q:\n%s", want, o)
		}
	}
	// Pushes run the light hook client beside refci (make build puts it
	// there), and refci itself should it go.
	hook, err := os.ReadFile(filepath.Join(sv.data, "state", "hooks", "update"))
	if light := filepath.Join(filepath.Dir(refciBin), "refci-hook"); err != nil || !strings.Contains(string(hook), "exec '"+light+"' update") || !strings.Contains(string(hook), "exec '"+refciBin+"' '__hook' update") {
		t.Errorf("the update hook (%v):\n%s", err, hook)
	}
	head := sv.pipeline(`echo "env=$REFCI_ENV trusted=$REFCI_TRUSTED"` + "\n")
	sv.git("", "push", "-q", "ci", "main") // creates app.git
	time.Sleep(300 * time.Millisecond)
	if runs, _ := fixtures.RunGit(sv.bare("app.git"), nil, nil, "for-each-ref", "refs/ci/"); len(runs) > 0 {
		t.Errorf("a branch push started something:\n%s", runs)
	}
	out := sv.git("", "push", "-o", "env=staging", "-o", "timeout=5m", "ci", "HEAD:refs/ci/requests/first")
	if !strings.Contains(out, "refci: request first queued (trusted)") {
		t.Errorf("push output:\n%s", out)
	}
	st := sv.waitFinal("app.git", "first", 2*time.Minute) // the push woke the worker: the poll is an hour
	if st.State != queue.Success || st.Target != head || st.Env != "staging" || !st.Trusted ||
		st.TrustNote != "pushed over SSH by trusted key "+sv.adminFP {
		t.Errorf("status: %+v", st)
	}
	// refci verify fetches the commit's runs over SSH (protocol v2, its
	// ref-prefix) and verifies the result; then refci log reads it here.
	if r := sv.refci("verify", "--remote", "ci").want(t, 0); !strings.Contains(r.stderr, "refci: fetched the runs of "+head[:12]+" from ci") {
		t.Errorf("verify did not fetch the run: %s", r.stderr)
	}
	if log := sv.refci("log").want(t, 0).stdout; !strings.Contains(log, "env=staging trusted=1") {
		t.Errorf("log: %s", log)
	}
	// Bad push options are refused before anything lands.
	out = sv.gitErr("", "push", "-o", "colour=blue", "ci", "HEAD:refs/ci/requests/bad")
	if !strings.Contains(out, `unknown push option "colour=blue"`) {
		t.Errorf("unknown option:\n%s", out)
	}
	if ls := sv.git("", "ls-remote", "ci", "refs/ci/requests/bad"); ls != "" {
		t.Errorf("a refused push landed: %s", ls)
	}
	logs := sv.log.String()
	if !regexp.MustCompile(`msg="git push" component=ssh key=` + regexp.QuoteMeta(sv.adminFP) + `.* repo=app.git .*updated=refs/ci/requests/first`).MatchString(logs) {
		t.Errorf("no log line for the push:\n%s", tail(logs))
	}
	// A restart keeps the host key (known_hosts still matches) and serves
	// the existing repository to the embedded worker.
	if code := sv.stop(); code != 0 {
		t.Fatalf("serve exited %d", code)
	}
	sv2 := &served{sandbox: sv.sandbox, out: &fixtures.Buffer{}, log: &fixtures.Buffer{}, data: sv.data}
	sv2.cmd = exec.Command(refciBin, "serve", "--listen", sv.addr)
	sv2.cmd.Env = sv.env
	sv2.cmd.Stdout, sv2.cmd.Stderr = sv2.out, sv2.log
	if err := sv2.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer sv2.stop()
	fixtures.WaitFor(t, time.Minute, "the restarted server to serve", func() bool { return strings.Contains(sv2.log.String(), "msg=serving") })
	if !strings.Contains(sv2.out.String(), sv.adminFP+" admin (from ") || !strings.Contains(sv2.out.String(), "repositories: app.git") {
		t.Errorf("second start banner:\n%s", sv2.out.String())
	}
	sv.git("", "commit", "-q", "--allow-empty", "-m", "again")
	sv.git("", "push", "-q", "ci", "HEAD:refs/ci/requests/second")
	sv2.sandbox = sv.sandbox
	if st := sv2.waitFinal("app.git", "second", 2*time.Minute); st.State != queue.Success {
		t.Errorf("after restart: %+v", st)
	}
}

// Roles: a trigger key pushes requests only, each refused ref is named,
// its runs are untrusted; the roles file is re-read without a restart;
// a worker key may write claims and runs but not push requests.
func TestServeRolesAndReload(t *testing.T) {
	sv := startServe(t)
	sv.pipeline("echo trusted=$REFCI_TRUSTED\n")
	sv.git("", "push", "-q", "ci", "main")
	adminEnv := append([]string{}, sv.env...)

	trigKey := fixtures.SSHKeyFiles(t, sv.root, "trigger")
	trig, trigFP := trigKey.Path, trigKey.Fingerprint
	sv.useKey(trig)
	// Unknown until the roles file says so.
	if out := sv.gitErr("", "ls-remote", "ci"); !strings.Contains(out, "Permission denied (publickey)") {
		t.Errorf("unknown key:\n%s", out)
	}
	// The admin learns which key knocked, to add it. The server may log
	// it after the client has heard the refusal: wait for the line.
	fixtures.WaitForShowing(t, time.Minute, "the unknown key in the log", func() bool {
		l := sv.log.String()
		return strings.Contains(l, "refused an unknown key; an admin can add it to the roles file") && strings.Contains(l, " key="+trigFP+" type=ssh-ed25519 addr=127.0.0.1:")
	}, func() string { return tail(sv.log.String()) })
	sv.addRole("trigger " + strings.TrimSpace(string(must(os.ReadFile(trig+".pub")))))
	sv.git("", "ls-remote", "ci") // re-read without a restart
	sv.git("", "commit", "-q", "--allow-empty", "-m", "not on main yet")
	head := sv.git("", "rev-parse", "HEAD")
	for _, ref := range []string{"refs/heads/main", "refs/heads/new", "refs/tags/v1", "refs/ci/runs/" + head + "/20261122T093000.123Z-3f9a1c0b2d4e", "refs/ci/claims/x", "refs/ci/secrets/prod"} {
		out := sv.gitErr("", "push", "--force", "ci", "HEAD:"+ref)
		if !strings.Contains(out, "refused "+ref+":") || !strings.Contains(out, "(hook declined)") {
			t.Errorf("trigger key pushing %s:\n%s", ref, out)
		}
	}
	// A mixed push: the request lands, the branch is refused by name.
	sv.git("", "commit", "-q", "--allow-empty", "-m", "mixed")
	out := sv.gitErr("", "push", "ci", "HEAD:refs/ci/requests/t1", "HEAD:refs/heads/main")
	if !strings.Contains(out, "refused refs/heads/main:") || !strings.Contains(out, "[new reference]   HEAD -> refs/ci/requests/t1") {
		t.Errorf("mixed push:\n%s", out)
	}
	st := sv.waitFinal("app.git", "t1", 2*time.Minute)
	if st.State != queue.Success || st.Trusted || !strings.HasPrefix(st.TrustNote, "not pushed over SSH by a key with the trusted role; this worker trusts no requester key") {
		t.Errorf("a trigger key's run: %+v", st)
	}
	// Promote the key to trusted, for this repository only.
	sv.addRole("trusted@app " + trigFP)
	sv.git("", "commit", "-q", "--allow-empty", "-m", "trusted now")
	sv.git("", "push", "-q", "ci", "HEAD:refs/ci/requests/t2")
	if st := sv.waitFinal("app.git", "t2", 2*time.Minute); !st.Trusted || !strings.Contains(st.TrustNote, trigFP) {
		t.Errorf("a trusted key's run: %+v", st)
	}
	// none@REPO: the key has no access to that repository only.
	sv.addRole("none@other " + trigFP)
	sv.git("", "ls-remote", "ci")

	// A worker key: claims and runs yes, new requests no, deleting a
	// request it did not claim no (the rest: serve_trust_e2e_test.go).
	wk := fixtures.SSHKeyFiles(t, sv.root, "worker")
	sv.addRole("worker " + wk.AuthorizedKey)
	sv.useKey(wk.Path)
	sv.git("", "push", "-q", "ci", "HEAD:refs/ci/claims/w1", "HEAD:refs/ci/runs/"+head+"/20261122T093000.123Z-3f9a1c0b2d4e")
	if out := sv.gitErr("", "push", "ci", "HEAD:refs/ci/requests/w1"); !strings.Contains(out, "refused refs/ci/requests/w1: ") {
		t.Errorf("worker pushing a request:\n%s", out)
	}
	sv.env = adminEnv
	// w2's pipeline runs long enough for the worker key to try deleting
	// the request before the embedded worker finishes it.
	sv.pipeline("sleep 3\n")
	sv.git("", "push", "-q", "ci", "HEAD:refs/ci/requests/w2", "HEAD:refs/ci/secrets/prod", "HEAD:refs/tags/v1")
	sv.useKey(wk.Path)
	if out := sv.gitErr("", "push", "ci", ":refs/ci/claims/w1", ":refs/ci/requests/w2"); !strings.Contains(out, "refused refs/ci/requests/w2: ") || !strings.Contains(out, "[deleted]         refs/ci/claims/w1") {
		t.Errorf("worker deleting its own claim and a request it did not claim:\n%s", out)
	}
	// A broken edit keeps the previous roles.
	sv.addRole("owner " + trigFP)
	sv.git("", "ls-remote", "ci")
	if !strings.Contains(sv.log.String(), `unknown role \"owner\"`) {
		t.Errorf("the broken roles file was not reported:\n%s", tail(sv.log.String()))
	}
	sv.env = adminEnv
	sv.git("", "push", "-q", sv.url("other.git"), "main")
	sv.useKey(trig)
	if out := sv.gitErr("", "ls-remote", sv.url("other.git")); !strings.Contains(out, "has no access to other.git") {
		t.Errorf("none@other:\n%s", out)
	}
	if bad := filepath.Join(sv.data, "repos"); len(must(os.ReadDir(bad))) != 2 {
		t.Errorf("repositories: %v", must(os.ReadDir(bad)))
	}
	if _, err := fixtures.RunGit(sv.bare("app.git"), nil, nil, "fsck", "--strict"); err != nil {
		t.Errorf("fsck: %v", err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// Remote workers poll the endpoint over ssh with a worker key; SIGTERM
// lets a running pipeline finish and publishes its result.
func TestServeRemoteWorkerAndGracefulStop(t *testing.T) {
	sv := startServe(t, "--no-worker", "--http", "0")
	// The viewer directory is served read-only on loopback.
	m := regexp.MustCompile(`viewer:    (http://127\.0\.0\.1:\d+/)`).FindStringSubmatch(sv.out.String())
	if m == nil {
		t.Fatalf("no viewer URL in the banner:\n%s", sv.out.String())
	}
	if code, body := httpGet(t, m[1]); code != 200 || !strings.Contains(body, "No repository yet") {
		t.Errorf("GET viewer / before any push: %d\n%s", code, body)
	}
	for _, p := range []string{"roles", "host_key", "app.git/../roles", "nope.git/", "repos/app.git/config"} {
		if code, body := httpGet(t, m[1]+p); code == 200 {
			t.Errorf("GET viewer %s: 200, want a refusal:\n%.200s", p, body)
		}
	}
	if resp, err := http.Post(m[1]+"index.html", "text/plain", strings.NewReader("x")); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST viewer: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	sv.pipeline("sleep 1\necho done\n")
	sv.git("", "push", "-q", "ci", "main", "HEAD:refs/ci/requests/r1")
	wk := fixtures.SSHKeyFiles(t, sv.root, "worker")
	sv.addRole("worker " + wk.AuthorizedKey)
	startRefci(t, sv.root, append(append([]string{}, sv.env...), "REFCI_HOME="+filepath.Join(sv.root, "remote-worker"), "GIT_SSH_COMMAND="+sv.sshCommand(wk.Path)),
		"worker", "--remote", sv.url("app.git"), "--poll", "200ms", "--lease", "3s")
	st := sv.waitFinal("app.git", "r1", 2*time.Minute)
	if st.State != queue.Success || st.Trusted {
		t.Errorf("remote worker's run: %+v", st)
	}
	// The repository's site is built when asked for, with the new run.
	if code, body := httpGet(t, m[1]); code != 200 || !strings.Contains(body, `href="app.git/"`) {
		t.Errorf("GET viewer /: %d\n%s", code, body)
	}
	if code, body := httpGet(t, m[1]+"app.git"); code != 200 || !strings.Contains(body, st.Run) || !strings.Contains(body, "r1") {
		t.Errorf("GET viewer app.git: %d, want the run %s in:\n%.500s", code, st.Run, body)
	} else if !strings.Contains(body, "success (unverified)") || !strings.Contains(body, "signed by a key not in the keyring") {
		// The site trusts the server's key and $REFCI_HOME/trusted/ only.
		t.Errorf("GET viewer app.git: the remote worker's run is not shown unverified")
	}
	// The claim goes after the result: wait for it, however long the
	// worker takes on a loaded machine.
	fixtures.WaitFor(t, time.Minute, "the request and claim to go", func() bool {
		return len(fixtures.GitBytes(t, sv.bare("app.git"), "for-each-ref", "refs/ci/requests/", "refs/ci/claims/")) == 0
	})
}

func TestServeDrainsOnSIGTERM(t *testing.T) {
	sv := startServe(t)
	marker := filepath.Join(t.TempDir(), "started") // not under HOME, which pipelines cannot write
	sv.pipeline("touch " + marker + "\nsleep 2\necho finished\n")
	sv.git("", "push", "-q", "ci", "main", "HEAD:refs/ci/requests/slow")
	fixtures.WaitFor(t, 2*time.Minute, "the pipeline to start", func() bool { _, err := os.Stat(marker); return err == nil })
	if code := sv.stop(); code != 0 {
		t.Fatalf("serve exited %d", code)
	}
	out := fixtures.GitBytes(t, sv.bare("app.git"), "for-each-ref", "--format=%(refname)", "refs/ci/runs/")
	ref := strings.TrimSpace(string(out))
	b, err := fixtures.RunGit(sv.bare("app.git"), nil, nil, "show", ref+":status.json")
	if err != nil {
		t.Fatalf("no result after a graceful stop: %v (%q)", err, out)
	}
	if st, err := queue.DecodeStatus(b); err != nil || st.State != queue.Success {
		t.Errorf("the running pipeline did not finish: %+v %v", st, err)
	}
}

// A second SIGTERM cancels the running pipelines at any time: also once
// the SSH side has drained and the worker is finishing its runs (it was
// ignored then, although the first signal's log line says "again to
// cancel them at once").
func TestServeSecondSignalCancelsWhileTheWorkerFinishes(t *testing.T) {
	sv := startServe(t)
	marker := filepath.Join(t.TempDir(), "started")
	sv.pipeline("touch " + marker + "\nsleep 600\n")
	sv.git("", "push", "-q", "ci", "main", "HEAD:refs/ci/requests/slow")
	fixtures.WaitFor(t, 2*time.Minute, "the pipeline to start", func() bool { _, err := os.Stat(marker); return err == nil })
	sv.cmd.Process.Signal(syscall.SIGTERM)
	fixtures.WaitFor(t, time.Minute, "the worker to stop claiming", func() bool {
		return strings.Contains(sv.log.String(), "stopping: claiming nothing more")
	})
	sv.cmd.Process.Signal(syscall.SIGTERM)
	// Taken, not left to the worker's grace period (30 s), which would
	// cancel the run too.
	fixtures.WaitFor(t, time.Minute, "serve to take the second signal", func() bool {
		return strings.Contains(sv.log.String(), "second signal: cancelling running pipelines now")
	})
	if code := sv.stop(); code != 0 {
		t.Fatalf("serve exited %d", code)
	}
	if st := sv.waitFinal("app.git", "slow", time.Second); st.State != queue.Cancelled {
		t.Errorf("the run after a second signal: %s %s", st.State, st.Reason)
	}
}

func TestServeUsage(t *testing.T) {
	s := newSandbox(t)
	r := s.refci("serve", "-h").want(t, 0)
	if !strings.Contains(r.stdout, "Usage: refci serve") || !strings.Contains(r.stdout, "-roles") {
		t.Errorf("-h: %s", r.stdout)
	}
	// No admin key anywhere: a clear error.
	r = s.refci("serve", "--listen", "127.0.0.1:0").want(t, 2)
	if !strings.Contains(r.stderr, "no admin key: pass --admin KEY.pub") {
		t.Errorf("no admin: %s", r.stderr)
	}
	r = s.refci("serve", "--admin", filepath.Join(s.root, "missing.pub")).want(t, 2)
	if !strings.HasPrefix(r.stderr, "refci: serve: --admin ") {
		t.Errorf("missing admin file: %s", r.stderr)
	}
	r = s.refci("serve", "--max-pack", "lots").want(t, 2)
	if !strings.Contains(r.stderr, "is not a size") {
		t.Errorf("bad size: %s", r.stderr)
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A worker reaches an ssh:// remote the way the user's own git does: the
// host alias, port, user and known hosts come from an ssh config file, and
// the key from a running ssh-agent (it is on no path the worker is given).
// ssh reads ~/.ssh/config from the passwd entry's home, not $HOME, so the
// test names its config file with -F, as a user's core.sshCommand may.
func TestWorkerUsesSSHConfigAndAgent(t *testing.T) {
	sv := startServe(t, "--no-worker")
	sv.pipeline("echo via the agent\n")
	sv.git("", "push", "-q", "ci", "main", "HEAD:refs/ci/requests/agent")
	wkKey := fixtures.SSHKeyFiles(t, sv.root, "worker-agent")
	wk := wkKey.Path
	sv.addRole("worker " + wkKey.AuthorizedKey)

	agentSock := filepath.Join(sv.root, "agent.sock")
	agent := exec.Command("ssh-agent", "-D", "-a", agentSock)
	if err := agent.Start(); err != nil {
		t.Fatalf("ssh-agent: %v", err)
	}
	defer func() { agent.Process.Kill(); agent.Wait() }()
	fixtures.WaitFor(t, 10*time.Second, "ssh-agent to start", func() bool { _, err := os.Stat(agentSock); return err == nil })
	add := exec.Command("ssh-add", "-q", wk)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+agentSock)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v\n%s", err, out)
	}
	// The key file goes: only the agent holds it now.
	os.Remove(wk)

	host, port, _ := strings.Cut(sv.addr, ":")
	config := filepath.Join(sv.root, "ssh_config")
	os.WriteFile(config, []byte(fmt.Sprintf("Host ci-alias\n  HostName %s\n  Port %s\n  User git\n  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n  BatchMode yes\n  IdentityFile none\n",
		host, port, sv.knownHosts)), 0o600)
	var env []string
	for _, kv := range sv.env {
		if !strings.HasPrefix(kv, "GIT_SSH_COMMAND=") {
			env = append(env, kv)
		}
	}
	startRefci(t, sv.root, append(env, "GIT_SSH_COMMAND=ssh -F "+config, "SSH_AUTH_SOCK="+agentSock, "REFCI_HOME="+filepath.Join(sv.root, "agent-worker")),
		"worker", "--remote", "ssh://ci-alias/app.git", "--poll", "200ms", "--lease", "3s")
	if st := sv.waitFinal("app.git", "agent", 2*time.Minute); st.State != queue.Success {
		t.Errorf("the run through ssh config and agent: %+v", st)
	}
}

// Issue 20: the embedded worker claims a pushed request from the push's
// own hook (worker.Dispatch), not at its poll, which is an hour away
// here; a worker on another key, claiming over SSH every 200 ms, races
// it for the same requests, and each runs exactly once.
func TestServeDirectClaimsRaceARemoteWorker(t *testing.T) {
	sv := startServe(t, "--poll", "1h")
	// Runs of 2 s: the embedded worker (2 at once) claims only as many
	// as it has places for, and leaves the rest to the race.
	sv.pipeline("sleep 2\necho ran\n")
	// The first push makes the repository, whose loop polls once at
	// start; once its request has a result, that loop looks again only
	// in an hour.
	sv.git("", "push", "-q", "ci", "main", "HEAD:refs/ci/requests/r0")
	if st := sv.waitFinal("app.git", "r0", 2*time.Minute); st.State != queue.Success {
		t.Fatalf("r0: %+v", st)
	}
	fixtures.WaitFor(t, time.Minute, "r0's request and claim to go", func() bool {
		return len(fixtures.GitBytes(t, sv.bare("app.git"), "for-each-ref", "refs/ci/requests/", "refs/ci/claims/")) == 0
	})
	sv.git("", "commit", "-q", "--allow-empty", "-m", "one")
	sv.git("", "push", "-q", "ci", "HEAD:refs/ci/requests/alone")
	if st := sv.waitFinal("app.git", "alone", 2*time.Minute); st.State != queue.Success || !strings.Contains(sv.out.String(), "results signed by "+st.Worker+";") {
		t.Fatalf("a request pushed with the poll an hour away: %+v", st)
	}

	wk := sv.keyWith("worker-r", "worker")
	startRefci(t, sv.root, append(append([]string{}, wk.env...), "REFCI_HOME="+filepath.Join(sv.root, "remote-worker")),
		"worker", "--remote", sv.url("app.git"), "--poll", "200ms", "--lease", "5s", "--concurrency", "4")
	sv.git("", "commit", "-q", "--allow-empty", "-m", "two")
	var specs, names []string
	for i := range 8 {
		names = append(names, fmt.Sprintf("race%d", i))
		specs = append(specs, "HEAD:refs/ci/requests/"+names[i])
	}
	sv.git("", append([]string{"push", "-q", "ci"}, specs...)...)
	for _, r := range names {
		if st := sv.waitFinal("app.git", r, 2*time.Minute); st.State != queue.Success {
			t.Errorf("%s: %+v", r, st)
		}
	}
	fixtures.WaitFor(t, time.Minute, "every request and claim to go", func() bool {
		return len(fixtures.GitBytes(t, sv.bare("app.git"), "for-each-ref", "refs/ci/requests/", "refs/ci/claims/")) == 0
	})
	runs := map[string]int{}
	byWorker := map[string]int{}
	for _, ref := range strings.Fields(fixtures.Git(t, sv.bare("app.git"), "for-each-ref", "--format=%(refname)", "refs/ci/runs/")) {
		st, err := queue.DecodeStatus(fixtures.GitBytes(t, sv.bare("app.git"), "show", ref+":status.json"))
		if err != nil {
			t.Fatal(err)
		}
		runs[st.Request]++
		byWorker[st.Worker]++
	}
	for _, r := range names {
		if runs[r] != 1 {
			t.Errorf("request %s ran %d times; want exactly once", r, runs[r])
		}
	}
	t.Logf("runs by worker: %v", byWorker)
}
