package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/queue"
	"refci.dev/refci/worker/proc"
)

// A pipeline run by `refci worker` can neither read the worker's key
// (its $REFCI_HOME is hidden) nor get at the worker's memory, environment
// or files through /proc (the worker is not dumpable); the result is
// still signed and verifies.
func TestWorkerHidesItsKeyAndMemory(t *testing.T) {
	if err := proc.CheckIsolation(refciBin); err != nil {
		t.Skipf("no user namespaces here: %v", err)
	}
	f := newFleet(t, "true\n")
	w := f.startWorker("a")
	home := filepath.Join(f.root, "worker-a")
	f.waitFor("the worker's key", 30*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(home, "key.asc"))
		return err == nil
	})
	pid := w.Process.Pid
	f.pipeline(fmt.Sprintf(`
cat %[1]s/key.asc || echo "key hidden"
echo "home:[$(ls -A %[1]s)]"
(exec 3</proc/%[2]d/mem) 2>/dev/null && echo "MEM OPENED" || echo "mem refused"
cat /proc/%[2]d/environ 2>/dev/null | tr '\0' '\n' || echo "environ refused"
cat /proc/%[2]d/root%[1]s/key.asc 2>/dev/null || echo "root refused"
refci job check -- echo job-ran
`, home, pid))
	f.git("", "push", "-q", "origin", "main", "HEAD:refs/ci/requests/peek")
	f.waitFor("the result", time.Minute, func() bool { return len(f.finalResults()["peek"]) == 1 })
	st := f.finalResults()["peek"][0]
	ref := f.remoteRefs("refs/ci/runs/")[0]
	log := f.gitErr(f.bare, "show", ref+":log.txt")
	if st.State != "success" || st.Extra["isolation"] != nil {
		t.Errorf("state %s (%s), extra %v\n%s", st.State, st.Reason, st.Extra, log)
	}
	if strings.Contains(log, "PGP PRIVATE KEY") || strings.Contains(log, "leak-canary") || strings.Contains(log, "MEM OPENED") {
		t.Errorf("the pipeline got at the worker's secrets:\n%s", log)
	}
	for _, want := range []string{"key hidden", "home:[]", "mem refused", "root refused", "job-ran"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	keyFile := f.exportKey(home, "worker-a.asc")
	f.git("", "fetch", "-q", "origin", "+refs/ci/*:refs/ci/*")
	f.refci("verify", "--keyring", keyFile, ref).want(t, 0)
}

// refci run --isolate hides $REFCI_HOME from its pipeline too.
func TestRunHidesTheKey(t *testing.T) {
	if err := proc.CheckIsolation(refciBin); err != nil {
		t.Skipf("no user namespaces here: %v", err)
	}
	s := newSandbox(t)
	s.refci("keys", "show").want(t, 0) // creates the key
	s.pipeline(fmt.Sprintf("cat %s/key.asc || echo 'key hidden'\n", s.home))
	r := s.refci("run", "--isolate")
	if r.code != 0 || strings.Contains(r.stdout, "PGP PRIVATE KEY") || !strings.Contains(r.stdout, "key hidden") {
		t.Fatalf("refci run: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
}

// attack is a pipeline that tries to get code run by refci's own git,
// ssh or refci, the way an attacker would: through the user's git and ssh
// configuration and dotfiles, the caches, the remote's hooks and
// configuration, a program dropped into a PATH directory, refci's own
// directory, git's templates and /etc (the tests run as root: there only
// the read-only file system stops it). Its payload, if it ever runs,
// leaves a file in ran. It also writes the pipeline's own places, which
// must stay writable.
type attack struct {
	sync, ran string   // the payload's directory; where it leaves a file when it runs
	files     []string // files the attack would make on this machine, removed when the test ends
}

func newAttack(t *testing.T) *attack {
	a := &attack{sync: t.TempDir()} // under /tmp: the pipeline may write it
	a.ran = filepath.Join(a.sync, "ran")
	if err := os.Mkdir(a.ran, 0o777); err != nil {
		t.Fatal(err)
	}
	a.files = []string{"/etc/refci-attack", "/usr/local/bin/refci-attack", filepath.Join(filepath.Dir(refciBin), "git")}
	if out, err := fixtures.RunGit("", nil, nil, "--exec-path"); err == nil {
		a.files = append(a.files, filepath.Join(strings.TrimSpace(string(out)), "../../share/git-core/templates/refci-attack"))
	}
	for _, p := range a.files {
		t.Cleanup(func() { os.Remove(p) })
	}
	return a
}

// script is the pipeline: home is the refci process' $HOME, remote the
// repository it serves, pathDir a directory of its PATH, data its
// $REFCI_HOME or data directory.
func (a *attack) script(home, remote, pathDir, data string) string {
	return fmt.Sprintf(`
S=%[1]s; H=%[2]s; BARE=%[3]s; P=%[4]s; W=%[5]s; BIN=%[6]s
printf '#!/bin/sh\ntouch "%[7]s/$(basename "$0")-$$"\n' > $S/payload; chmod +x $S/payload
mkdir -p $S/hooks; for h in pre-push reference-transaction post-update pre-receive update post-receive pre-auto-gc; do cp $S/payload $S/hooks/$h; done
printf '[core]\n\thooksPath = %%s\n\tfsmonitor = %%s\n\tsshCommand = %%s\n[credential]\n\thelper = %%s\n[include]\n\tpath = %%s\n' $S/hooks $S/payload $S/payload $S/payload $S/evil2.cfg > $S/evil.cfg
printf '[core]\n\thooksPath = %%s\n' $S/hooks > $S/evil2.cfg
try() { if (eval "$2") >/dev/null 2>&1; then echo "ATTACK $1: wrote"; else echo "ATTACK $1: refused"; fi; }
try gitconfig 'cp $S/evil.cfg $H/.gitconfig'
try git-config-global 'HOME=$H git config --global core.hooksPath $S/hooks'
try xdg-gitconfig 'mkdir -p $H/.config/git && cp $S/evil.cfg $H/.config/git/config'
try ssh-config 'mkdir -p $H/.ssh && printf "Host *\n  ProxyCommand $S/payload\n" > $H/.ssh/config'
try profile 'echo $S/payload >> $H/.profile'
try data 'mkdir -p $W/cache/x.git/hooks'
try data-config 'for c in $W/cache/*.git $W/serve/repos/*.git; do cp $S/evil.cfg $c/config || exit 1; done; test -d $W/cache/x.git'
try serve-hooks 'cp $S/payload $W/serve/state/hooks/pre-receive'
try remote-hooks 'cp $S/payload $BARE/hooks/reference-transaction'
try remote-config 'git config -f $BARE/config core.hooksPath $S/hooks'
try path-git 'printf "#!/bin/sh\n$S/payload\nexec /usr/bin/git \"\$@\"\n" > $P/git && chmod +x $P/git'
try path-ssh 'cp $S/payload $P/ssh'
try refci-dir 'cp $S/payload $BIN/git'
try refci-touch 'touch -c $BIN/refci $BIN/refci-shim'
try etc 'echo x > /etc/refci-attack'
try usr 'cp $S/payload /usr/local/bin/refci-attack'
try templates 'cp $S/payload "$(git --exec-path)/../../share/git-core/templates/refci-attack"'
try kernel-sysctl 'cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern'
try kernel-sys 'cat /sys/kernel/uevent_helper > /sys/kernel/uevent_helper'
try nested-userns 'unshare -Urm sh -c "mount -o remount,bind,rw $H || mount -o remount,rw $H || mount -o remount,rw /; cp $S/evil.cfg $H/.gitconfig"'
try own-home 'echo x > "$HOME/f" && HOME=$HOME git config --global core.hooksPath /x'
try own-nested-userns 'unshare -Urm sh -c "echo x > \"\$TMPDIR/nested\""'
try own-tmp 'echo x > "$TMPDIR/f"'
try tmp 'cp $S/payload $S/tmp-write && rm $S/tmp-write'
try artifacts 'echo x > "$REFCI_ARTIFACTS/a.txt"'
try checkout 'echo x > checkout-file'
refci job after-attack -- git --version
`, a.sync, home, remote, pathDir, data, filepath.Dir(refciBin), a.ran)
}

// check checks the attack's log and that its payload never ran; made
// are more files the attack would have made.
func (a *attack) check(t *testing.T, log string, made ...string) {
	t.Helper()
	for _, v := range []string{"gitconfig", "git-config-global", "xdg-gitconfig", "ssh-config", "profile", "data", "data-config", "serve-hooks", "remote-hooks", "remote-config",
		"path-git", "path-ssh", "refci-dir", "refci-touch", "etc", "usr", "templates", "kernel-sysctl", "kernel-sys", "nested-userns"} {
		if !strings.Contains(log, "ATTACK "+v+": refused\n") {
			t.Errorf("attack %s was not refused:\n%s", v, log)
		}
	}
	own := []string{"own-home", "own-tmp", "tmp", "artifacts", "checkout"}
	if _, err := exec.LookPath("unshare"); err == nil && os.Geteuid() != 0 {
		// A pipeline's own containers still work (/proc stays writable
		// for their id maps). Not as root: mapping root needs
		// CAP_SETFCAP, which the pipeline does not have, so nested
		// user namespaces are for unprivileged workers only.
		own = append(own, "own-nested-userns")
	}
	for _, v := range own {
		if !strings.Contains(log, "ATTACK "+v+": wrote\n") {
			t.Errorf("the pipeline could not write its own place (%s):\n%s", v, log)
		}
	}
	if ents, _ := os.ReadDir(a.ran); len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("attacker code ran outside the pipeline: %v", names)
	}
	for _, p := range append(made, a.files...) {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("the pipeline made %s", p)
		}
	}
}

// A pipeline run by `refci worker` attacks it (attack); the worker then
// handles more runs (fetch, push, gc) without running any of the
// attacker's code, and the attack's result verifies.
func TestPipelineCannotChangeWhatTheWorkerRuns(t *testing.T) {
	if err := proc.CheckIsolation(refciBin); err != nil {
		t.Skipf("no user namespaces here: %v", err)
	}
	a := newAttack(t)
	pathDir := t.TempDir() // first on the worker's PATH
	f := newFleet(t, "true\n")
	whome := filepath.Join(f.root, "worker-a")
	f.pipeline(a.script(f.root, f.bare, pathDir, whome))
	f.git("", "push", "-q", "origin", "main")
	for i, kv := range f.env {
		if strings.HasPrefix(kv, "PATH=") {
			f.env[i] = "PATH=" + pathDir + ":" + strings.TrimPrefix(kv, "PATH=")
		}
	}
	f.startWorker("a")
	f.git("", "push", "-q", "origin", "HEAD:refs/ci/requests/attack")
	f.waitFor("the attack's result", time.Minute, func() bool { return len(f.finalResults()["attack"]) == 1 })
	// More runs: the worker fetches, runs, pushes (and gc) again.
	f.pipeline("echo second run\n")
	f.git("", "push", "-q", "origin", "main", "HEAD:refs/ci/requests/after-1", "HEAD:refs/ci/requests/after-2")
	f.waitFor("the later results", 2*time.Minute, func() bool {
		r := f.finalResults()
		return len(r["after-1"]) == 1 && len(r["after-2"]) == 1
	})
	res := f.finalResults()
	st, log := finalRunLog(t, f.bare, "attack")
	if st.State != "success" || st.Extra["isolation"] != nil {
		t.Errorf("attack: state %s (%s), extra %v\n%s", st.State, st.Reason, st.Extra, log)
	}
	for _, r := range []string{"after-1", "after-2"} {
		if st := res[r][0]; st.State != "success" {
			t.Errorf("%s: state %s (%s)", r, st.State, st.Reason)
		}
	}
	a.check(t, log, filepath.Join(f.root, ".gitconfig"), filepath.Join(f.root, ".ssh"), filepath.Join(f.root, ".config", "git"), filepath.Join(pathDir, "git"))
	keyFile := f.exportKey(whome, "worker-a.asc")
	f.git("", "fetch", "-q", "origin", "+refs/ci/*:refs/ci/*")
	f.refci("verify", "--keyring", keyFile).want(t, 0)
}

// A pipeline run by refci serve's embedded worker attacks it (attack):
// its data directory (repositories, their hooks, the caches) is hidden,
// the rest read-only; serve takes more pushes and runs them without
// running any of the attacker's code. Started as root, it says once why
// that is unsafe.
func TestPipelineCannotChangeWhatServeRuns(t *testing.T) {
	if err := proc.CheckIsolation(refciBin); err != nil {
		t.Skipf("no user namespaces here: %v", err)
	}
	a := newAttack(t)
	sv := startServe(t)
	// No directory of the test's own on serve's PATH: its directories
	// are read-only as any other is (attack "usr").
	sv.pipeline(a.script(sv.root, sv.bare("app.git"), "/nonexistent", sv.home))
	sv.git("", "push", "-q", "ci", "main", "HEAD:refs/ci/requests/attack")
	st := sv.waitFinal("app.git", "attack", time.Minute)
	_, log := finalRunLog(t, sv.bare("app.git"), "attack")
	if st.State != queue.Success || st.Extra["isolation"] != nil {
		t.Errorf("attack: state %s (%s), extra %v\n%s", st.State, st.Reason, st.Extra, log)
	}
	sv.pipeline("echo second run\n")
	sv.git("", "push", "-q", "ci", "main", "HEAD:refs/ci/requests/after")
	if st := sv.waitFinal("app.git", "after", time.Minute); st.State != queue.Success {
		t.Errorf("after: state %s (%s)", st.State, st.Reason)
	}
	a.check(t, log, filepath.Join(sv.root, ".gitconfig"), filepath.Join(sv.root, ".ssh"))
	sv.git("", "fetch", "-q", "ci", "+refs/ci/*:refs/ci/*")
	sv.refci("verify").want(t, 0)
	roots := strings.Count(sv.log.String(), "running as root")
	if want := map[bool]int{true: 1, false: 0}[os.Geteuid() == 0]; roots != want {
		t.Errorf("serve (euid %d) warned %d times that it runs as root", os.Geteuid(), roots)
	}
}

// finalRunLog is the log of the final result of request in the
// repository bare.
func finalRunLog(t *testing.T, bare, request string) (*queue.Status, string) {
	t.Helper()
	st, log := findFinal(bare, request)
	if st == nil {
		t.Fatalf("no final result for %s in %s", request, bare)
	}
	return st, log
}

// findFinal returns the final status of request in the repository bare
// and its log, or nil and "" when there is none yet.
func findFinal(bare, request string) (*queue.Status, string) {
	refs, _ := fixtures.RunGit(bare, nil, nil, "for-each-ref", "--format=%(refname)", "refs/ci/runs/") // none before the first push
	for _, ref := range strings.Fields(string(refs)) {
		b, err := fixtures.RunGit(bare, nil, nil, "show", ref+":status.json")
		if err != nil {
			continue
		}
		if st, err := queue.DecodeStatus(b); err == nil && st.Request == request && st.State.Final() {
			log, _ := fixtures.RunGit(bare, nil, nil, "show", ref+":log.txt")
			return st, string(log)
		}
	}
	return nil, ""
}

// Three refci processes of one user run pipelines at once: refci serve's
// embedded worker, a refci worker started after serve's pipeline did, and
// a refci run --isolate started after both. Each pipeline leaves a canary
// in its run directory (checkout, HOME, TMPDIR) and looks for the
// others' once all three run: none sees another's run, even of a process
// that started after it, and each sees its own run directory only.
func TestPipelinesSeeNoOtherRefciProcessRuns(t *testing.T) {
	if err := proc.CheckIsolation(refciBin); err != nil {
		t.Skipf("no user namespaces here: %v", err)
	}
	sync := t.TempDir()
	script := fmt.Sprintf(`
S=%[1]s; me=$REFCI_REQUEST; root=/tmp/refci-$(id -u)
for d in . "$HOME" "$TMPDIR" "$REFCI_ARTIFACTS"; do echo "canary-$me" > "$d/canary"; done
touch $S/ready-$me
waitall() { n=0; until [ -e $S/$1-serve ] && [ -e $S/$1-worker ] && [ -e $S/$1-local ]; do n=$((n+1)); if [ $n -gt 1800 ]; then echo "TIMEOUT waiting for $1"; return; fi; sleep 0.1; done; }
waitall ready
echo "root entries: $(ls -A $root | wc -l) $(ls -A $root/* | wc -l)"
for o in serve worker local; do
	[ $o = $me ] && continue
	if grep -rqs "canary-$o" $root /tmp/refci-* 2>/dev/null; then echo "SAW $o"; else echo "HIDDEN $o"; fi
done
grep -rqs "canary-$me" $root && echo "OWN visible"
touch $S/done-$me
waitall done
`, sync)
	wait := func(name string) {
		t.Helper()
		fixtures.WaitFor(t, 2*time.Minute, name, func() bool { _, err := os.Stat(filepath.Join(sync, name)); return err == nil })
	}
	sv := startServe(t)
	sv.pipeline(script)
	sv.git("", "push", "-q", "ci", "main", "HEAD:refs/ci/requests/serve")
	wait("ready-serve")
	f := newFleet(t, script)
	f.startWorker("a")
	f.git("", "push", "-q", "origin", "HEAD:refs/ci/requests/worker")
	wait("ready-worker")
	local := f.refci("run", "--isolate")
	sv.waitFinal("app.git", "serve", time.Minute)
	st, serveLog := finalRunLog(t, sv.bare("app.git"), "serve")
	if st.State != queue.Success {
		t.Errorf("serve's run: %s (%s)", st.State, st.Reason)
	}
	f.waitFor("the worker's result", time.Minute, func() bool { return len(f.finalResults()["worker"]) == 1 })
	st, workerLog := finalRunLog(t, f.bare, "worker")
	if st.State != queue.Success {
		t.Errorf("the worker's run: %s (%s)", st.State, st.Reason)
	}
	if local.code != 0 {
		t.Errorf("refci run --isolate: %d\n%s\n%s", local.code, local.stdout, local.stderr)
	}
	for me, log := range map[string]string{"serve": serveLog, "worker": workerLog, "local": local.stdout} {
		for _, o := range []string{"serve", "worker", "local"} {
			if o != me && !strings.Contains(log, "HIDDEN "+o+"\n") {
				t.Errorf("the %s pipeline saw the %s run, or did not look:\n%s", me, o, log)
			}
		}
		if !strings.Contains(log, "root entries: 1 1\n") || !strings.Contains(log, "OWN visible") || strings.Contains(log, "TIMEOUT") {
			t.Errorf("the %s pipeline does not see its own run directory alone:\n%s", me, log)
		}
	}
}

// The user's credentials, with which refci's own ssh, git and gpg reach
// remotes, are hidden from a worker's pipelines although the rest of the
// user's home is readable: ~/.ssh, the ssh agent's socket, ~/.gnupg,
// git's credential store, ~/.netrc, the runtime directory. A worker
// started as root says once why that is unsafe.
func TestPipelineCannotReachTheUsersCredentials(t *testing.T) {
	if err := proc.CheckIsolation(refciBin); err != nil {
		t.Skipf("no user namespaces here: %v", err)
	}
	f := newFleet(t, "true\n")
	runtimeDir := t.TempDir()
	sock := filepath.Join(runtimeDir, "ssh-agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, p := range []string{".ssh/id_ed25519", ".gnupg/private-keys-v1.d/k.key", ".git-credentials", ".netrc", ".config/git/credentials", "readable"} {
		full := filepath.Join(f.root, p)
		os.MkdirAll(filepath.Dir(full), 0o700)
		if err := os.WriteFile(full, []byte("CREDENTIAL-CANARY "+p+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(runtimeDir, "bus"), []byte("CREDENTIAL-CANARY runtime\n"), 0o600)
	f.pipeline(fmt.Sprintf(`H=%[1]s
for p in .ssh/id_ed25519 .gnupg/private-keys-v1.d/k.key .git-credentials .netrc .config/git/credentials readable; do cat $H/$p 2>/dev/null; done
cat %[2]s/bus 2>/dev/null
if test -S %[3]s; then echo "AGENT REACHABLE"; else echo "agent hidden"; fi
`, f.root, runtimeDir, sock))
	f.git("", "push", "-q", "origin", "main")
	f.env = append(f.env, "SSH_AUTH_SOCK="+sock, "XDG_RUNTIME_DIR="+runtimeDir)
	f.startWorker("a")
	f.git("", "push", "-q", "origin", "HEAD:refs/ci/requests/peek")
	f.waitFor("the result", time.Minute, func() bool { return len(f.finalResults()["peek"]) == 1 })
	st, log := finalRunLog(t, f.bare, "peek")
	if st.State != queue.Success {
		t.Errorf("state %s (%s)", st.State, st.Reason)
	}
	if strings.Count(log, "CREDENTIAL-CANARY") != 1 || !strings.Contains(log, "CREDENTIAL-CANARY readable\n") || !strings.Contains(log, "agent hidden") {
		t.Errorf("the pipeline read the user's credentials, or not the rest of the home:\n%s", log)
	}
	f.stopAll()
	roots := strings.Count(f.logs[0].String(), "running as root")
	if want := map[bool]int{true: 1, false: 0}[os.Geteuid() == 0]; roots != want {
		t.Errorf("the worker (euid %d) warned %d times that it runs as root:\n%s", os.Geteuid(), roots, f.logs[0].String())
	}
}

// writable = [...] in a worker's configuration lets its pipelines write a
// directory outside the scratch places (here under the user's home,
// read-only otherwise); a relative path is refused at start.
func TestWorkerConfigWritable(t *testing.T) {
	if err := proc.CheckIsolation(refciBin); err != nil {
		t.Skipf("no user namespaces here: %v", err)
	}
	f := newFleet(t, "true\n")
	shared, other := filepath.Join(f.root, "shared-cache"), filepath.Join(f.root, "other")
	os.Mkdir(shared, 0o755)
	os.Mkdir(other, 0o755)
	f.pipeline(fmt.Sprintf(`echo x > %s/f && echo "shared: wrote"
echo x > %s/f 2>/dev/null || echo "other: refused"
`, shared, other))
	f.git("", "push", "-q", "origin", "main")
	cfg := filepath.Join(f.root, "worker.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("remotes = [%q]\npoll = \"200ms\"\nwritable = [%q]\n", "file://"+f.bare, shared)), 0o644)
	f.startWorker("a", "--config", cfg)
	f.git("", "push", "-q", "origin", "HEAD:refs/ci/requests/w")
	f.waitFor("the result", time.Minute, func() bool { return len(f.finalResults()["w"]) == 1 })
	if _, log := finalRunLog(t, f.bare, "w"); !strings.Contains(log, "shared: wrote\n") || !strings.Contains(log, "other: refused\n") {
		t.Errorf("log:\n%s", log)
	}
	os.WriteFile(cfg, []byte("remotes = [\"file:///nonexistent\"]\nwritable = [\"cache\"]\n"), 0o644)
	if r := f.refci("worker", "--config", cfg); r.code != 2 || !strings.Contains(r.stderr, `writable: "cache" is not an absolute path`) {
		t.Errorf("a relative writable path: %d %q", r.code, r.stderr)
	}
}
