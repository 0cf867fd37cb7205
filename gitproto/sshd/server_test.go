package sshd

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"refci.dev/refci/fixtures"
)

// These tests drive the server with the stock OpenSSH client and git.
// The test binary doubles as the hook client (TestMain).

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == HookArg {
		os.Exit(HookMain(os.Args[2:]))
	}
	os.Exit(fixtures.PrivateHome(m))
}

// testPolicy grants by fingerprint: "r" read, "w" push any ref except
// refs/forbidden/*, "c" create repositories.
type testPolicy struct {
	mu     sync.Mutex
	grants map[string]string
	check  func(*Push, RefUpdate) error // more checks, when set
}

func (p *testPolicy) grant(fp, g string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.grants[fp] = g
}

func (p *testPolicy) get(fp string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.grants[fp]
}

func (p *testPolicy) Known(fp string) bool { return p.get(fp) != "" }

func (p *testPolicy) AllowRepo(id Identity, repo string, op Op) error {
	g := p.get(id.Fingerprint)
	need := map[Op]string{OpRead: "r", OpPush: "w", OpCreate: "c"}[op]
	if !strings.Contains(g, need) {
		return fmt.Errorf("key %s may not %s %s", id.Fingerprint, op, repo)
	}
	return nil
}

func (p *testPolicy) AllowRef(push *Push, u RefUpdate) error {
	if strings.HasPrefix(u.Name, "refs/forbidden/") {
		return errors.New("forbidden by the test policy")
	}
	if p.check != nil {
		return p.check(push, u)
	}
	return nil
}

type testServer struct {
	t        *testing.T
	root     string
	srv      *Server
	addr     string
	policy   *testPolicy
	logs     *fixtures.Buffer
	known    string
	mu       sync.Mutex
	received []*Receive
}

func startServer(t *testing.T, mod func(*Config)) *testServer {
	t.Helper()
	root := t.TempDir()
	signer := fixtures.NewSSHKey(t, "host").Signer
	ts := &testServer{t: t, root: root, policy: &testPolicy{grants: map[string]string{}}, logs: &fixtures.Buffer{}}
	cfg := Config{
		Root: filepath.Join(root, "repos"), StateDir: filepath.Join(root, "state"), HostKey: signer,
		Policy: ts.policy, Logger: slog.New(slog.NewTextHandler(ts.logs, nil)),
		CheckPushOptions: func(id Identity, repo string, ups []RefUpdate, opts []string) error {
			for _, o := range opts {
				if o == "bad" {
					return errors.New("push option \"bad\" is not known")
				}
			}
			return nil
		},
		OnReceive: func(ctx context.Context, r *Receive) string {
			ts.mu.Lock()
			ts.received = append(ts.received, r)
			ts.mu.Unlock()
			return "received " + fmt.Sprint(len(r.Updates)) + " updates"
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	var err error
	ts.srv, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	go ts.srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ts.srv.Shutdown(ctx)
		if t.Failed() {
			t.Logf("server log:\n%s", ts.logs.String())
		}
	})
	ts.known = filepath.Join(root, "known_hosts")
	pub := gossh.MarshalAuthorizedKey(signer.PublicKey())
	os.WriteFile(ts.known, []byte("[127.0.0.1]:"+ts.port()+" "+string(pub)), 0o600)
	return ts
}

func (ts *testServer) port() string {
	_, p, _ := net.SplitHostPort(ts.addr)
	return p
}

// newKey writes a new ed25519 key to dir/name (and name.pub) and returns
// its path and fingerprint.
func newKey(t *testing.T, dir, name string) (string, string) {
	t.Helper()
	k := fixtures.NewSSHKey(t, name)
	return k.WriteFiles(t, dir, name), k.Fingerprint
}

// client is a user with a key and a working repository.
type client struct {
	ts   *testServer
	key  string
	fp   string
	dir  string
	env  []string
	url  string
	repo string
}

func (ts *testServer) client(name, grants string) *client {
	ts.t.Helper()
	dir := filepath.Join(ts.root, "client-"+name)
	os.MkdirAll(dir, 0o700)
	key, fp := newKey(ts.t, dir, "id")
	if grants != "" {
		ts.policy.grant(fp, grants)
	}
	c := &client{ts: ts, key: key, fp: fp, dir: dir, url: "ssh://git@127.0.0.1:" + ts.port(), repo: filepath.Join(dir, "work")}
	c.env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.invalid", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.invalid",
		"GIT_SSH_COMMAND=" + c.sshCommand(),
	}
	return c
}

func (c *client) sshCommand(extra ...string) string {
	return strings.Join(append([]string{"ssh", "-i", c.key, "-o", "IdentitiesOnly=yes", "-o", "UserKnownHostsFile=" + c.ts.known,
		"-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"}, extra...), " ")
}

// run runs a command in the client's work repository (or dir when the
// command is clone/init) and returns combined output and error.
func (c *client) run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = c.repo
	if _, err := os.Stat(c.repo); err != nil {
		cmd.Dir = c.dir
	}
	cmd.Env = c.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (c *client) must(name string, args ...string) string {
	c.ts.t.Helper()
	out, err := c.run(name, args...)
	if err != nil {
		c.ts.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func (c *client) initRepo(files int) {
	c.ts.t.Helper()
	c.must("git", "init", "-q", "-b", "main", c.repo)
	for i := 0; i < files; i++ {
		os.WriteFile(filepath.Join(c.repo, fmt.Sprintf("f%d", i)), []byte(fmt.Sprintf("file %d\n", i)), 0o644)
		c.must("git", "add", "-A")
		c.must("git", "commit", "-q", "-m", fmt.Sprintf("commit %d", i))
	}
}

func TestCleanRepoName(t *testing.T) {
	good := map[string]string{
		"/app.git": "app.git", "app": "app.git", "/org/app": "org/app.git", "a/b/c.git": "a/b/c.git",
		"/App_1-x.git/": "App_1-x.git",
	}
	for in, want := range good {
		got, err := CleanRepoName(in)
		if err != nil || got != want {
			t.Errorf("CleanRepoName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "/", "../x", "/../x.git", "a/../b", "//etc/passwd", "~/x", "~root/x", "a//b", ".git", "/.hidden.git",
		"a b", "a\nb", "x.git/y.git", "a/b/c/d", "a;rm", "/etc/passwd\x00", strings.Repeat("a", 201)} {
		if got, err := CleanRepoName(in); err == nil || !errors.Is(err, ErrBadRepoName) {
			t.Errorf("CleanRepoName(%q) = %q, %v; want a refusal", in, got, err)
		}
	}
}

func TestPushCreateCloneFetch(t *testing.T) {
	ts := startServer(t, nil)
	admin := ts.client("admin", "rwc")
	admin.initRepo(3)
	out := admin.must("git", "push", admin.url+"/app.git", "main")
	if !strings.Contains(out, "received 1 updates") {
		t.Errorf("the push did not show OnReceive's message:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(ts.root, "repos", "app.git", "HEAD")); err != nil {
		t.Fatal("the repository was not created")
	}
	reader := ts.client("reader", "r")
	// Protocol v2 reaches upload-pack (GIT_PROTOCOL is passed through).
	reader.env = append(reader.env, "GIT_TRACE_PACKET=1")
	out = reader.must("git", "-c", "protocol.version=2", "clone", "-q", reader.url+"/app", reader.repo)
	if !strings.Contains(out, "version 2") {
		t.Errorf("the clone did not speak protocol v2:\n%s", tail(out))
	}
	if got := strings.TrimSpace(reader.must("git", "rev-list", "--count", "HEAD")); got != "3" {
		t.Errorf("clone has %s commits", got)
	}
	reader.must("git", "fetch", "-q", "origin", "+refs/ci/*:refs/ci/*")
	// A shallow clone and a partial clone work.
	sh := ts.client("shallow", "r")
	sh.must("git", "clone", "-q", "--depth=1", sh.url+"/app.git", sh.repo)
	if got := strings.TrimSpace(sh.must("git", "rev-list", "--count", "HEAD")); got != "1" {
		t.Errorf("shallow clone has %s commits", got)
	}
	sh.must("git", "fetch", "-q", "--deepen=1", "origin")
	if got := strings.TrimSpace(sh.must("git", "rev-list", "--count", "HEAD")); got != "2" {
		t.Errorf("deepened clone has %s commits", got)
	}
	pc := ts.client("partial", "r")
	pc.must("git", "clone", "-q", "--filter=blob:none", pc.url+"/app.git", pc.repo)

	// A reader cannot push; a pusher cannot create repositories.
	reader.env = reader.env[:len(reader.env)-1]
	reader.must("git", "commit", "-q", "--allow-empty", "-m", "x")
	if out, err := reader.run("git", "push", "origin", "HEAD:refs/heads/x"); err == nil || !strings.Contains(out, "may not push app.git") {
		t.Errorf("a read-only key pushed: %v\n%s", err, out)
	}
	// A new repository whose first branch is not main gets HEAD on it.
	admin.must("git", "push", "-q", admin.url+"/trunk.git", "main:trunk")
	tr := ts.client("trunk", "r")
	tr.must("git", "clone", "-q", tr.url+"/trunk.git", tr.repo)
	if b := strings.TrimSpace(tr.must("git", "branch", "--show-current")); b != "trunk" {
		t.Errorf("clone of a repository with only trunk checked out %q", b)
	}
	pusher := ts.client("pusher", "rw")
	pusher.initRepo(1)
	if out, err := pusher.run("git", "push", pusher.url+"/new.git", "main"); err == nil || !strings.Contains(out, "new.git does not exist") {
		t.Errorf("a non-admin created a repository: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(ts.root, "repos", "new.git")); err == nil {
		t.Error("new.git exists")
	}
	logs := ts.logs.String()
	for _, want := range []string{"msg=\"git push\" key=" + admin.fp, "repo=app.git", "updated=refs/heads/main", "msg=\"git fetch\" key=" + reader.fp, `protocol="version=2"`, "msg=\"repository created\"", `refs="refs/ci/ refs/tags/" wants=0`, `refs="HEAD refs/heads/ refs/tags/" wants=`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q:\n%s", want, logs)
		}
	}
}

func tail(s string) string {
	if len(s) > 3000 {
		return "..." + s[len(s)-3000:]
	}
	return s
}

func TestPerRefRefusalAtomicAndPushOptions(t *testing.T) {
	ts := startServer(t, nil)
	c := ts.client("c", "rwc")
	c.initRepo(2)
	c.must("git", "push", "-q", c.url+"/app.git", "main")
	c.must("git", "remote", "add", "origin", c.url+"/app.git")
	// One allowed and one refused ref: the report names the refused one,
	// the allowed one lands.
	out, err := c.run("git", "push", "origin", "HEAD:refs/heads/ok", "HEAD:refs/forbidden/x")
	if err == nil || !strings.Contains(out, "refs/forbidden/x (hook declined)") || !strings.Contains(out, "refused refs/forbidden/x: forbidden by the test policy") {
		t.Errorf("refused ref not named: %v\n%s", err, out)
	}
	if refs := c.must("git", "ls-remote", "origin"); !strings.Contains(refs, "refs/heads/ok") || strings.Contains(refs, "forbidden") {
		t.Errorf("remote refs after a partly refused push:\n%s", refs)
	}
	// --atomic: all or nothing.
	out, err = c.run("git", "push", "--atomic", "origin", "HEAD:refs/heads/a1", "HEAD:refs/forbidden/y")
	if err == nil {
		t.Errorf("atomic push with a refused ref succeeded:\n%s", out)
	}
	if refs := c.must("git", "ls-remote", "origin"); strings.Contains(refs, "refs/heads/a1") {
		t.Errorf("an atomic push landed half:\n%s", refs)
	}
	c.must("git", "push", "-q", "--atomic", "origin", "HEAD:refs/heads/a1", "HEAD:refs/heads/a2")
	if refs := c.must("git", "ls-remote", "origin"); !strings.Contains(refs, "refs/heads/a1") || !strings.Contains(refs, "refs/heads/a2") {
		t.Errorf("an atomic push did not land:\n%s", refs)
	}
	// Push options reach CheckPush and OnReceive.
	c.must("git", "push", "-q", "-o", "env=staging", "-o", "timeout=5m", "origin", "HEAD:refs/heads/opts")
	ts.mu.Lock()
	last := ts.received[len(ts.received)-1]
	ts.mu.Unlock()
	if strings.Join(last.PushOptions, " ") != "env=staging timeout=5m" || last.Updates[0].Name != "refs/heads/opts" || last.ID.Fingerprint != c.fp {
		t.Errorf("OnReceive got %+v", last)
	}
	out, err = c.run("git", "push", "-o", "bad", "origin", "HEAD:refs/heads/badopt")
	if err == nil || !strings.Contains(out, "push option \"bad\" is not known") {
		t.Errorf("bad push option: %v\n%s", err, out)
	}
	// A stale update (the CAS of --force-with-lease) is refused by git.
	c.must("git", "commit", "-q", "--allow-empty", "-m", "next")
	out, err = c.run("git", "push", "--force-with-lease=refs/heads/ok:"+strings.Repeat("1", 40), "origin", "HEAD:refs/heads/ok")
	if err == nil {
		t.Errorf("a stale lease was accepted:\n%s", out)
	}
}

func TestRefusedSessions(t *testing.T) {
	ts := startServer(t, nil)
	admin := ts.client("admin", "rwc")
	admin.initRepo(1)
	admin.must("git", "push", "-q", admin.url+"/app.git", "main")
	host := []string{"-p", ts.port(), "git@127.0.0.1"}
	sshArgs := func(c *client, extra ...string) []string {
		return append(strings.Fields(c.sshCommand(extra...))[1:], host...)
	}

	// An unknown key is refused at authentication.
	stranger := ts.client("stranger", "")
	out, err := stranger.run("git", "ls-remote", stranger.url+"/app.git")
	if err == nil || !strings.Contains(out, "Permission denied (publickey)") {
		t.Errorf("unknown key: %v\n%s", err, out)
	}
	// Password and keyboard-interactive are not offered.
	for _, m := range []string{"password", "keyboard-interactive"} {
		out, err := admin.run("ssh", sshArgs(admin, "-o", "PreferredAuthentications="+m, "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1")...)
		if err == nil || !strings.Contains(out, "Permission denied (publickey)") {
			t.Errorf("%s auth: %v\n%s", m, err, out)
		}
	}
	// An interactive shell, with or without a terminal.
	out, err = admin.run("ssh", sshArgs(admin, "-T")...)
	if err == nil || !strings.Contains(out, "offers no shell") {
		t.Errorf("shell: %v\n%s", err, out)
	}
	out, err = admin.run("ssh", sshArgs(admin, "-tt")...)
	if err == nil || !strings.Contains(out, "offers no shell") && !strings.Contains(out, "PTY allocation request failed") {
		t.Errorf("shell with a pty: %v\n%s", err, out)
	}
	// Commands other than git's two services.
	for _, cmd := range []string{"id", "git-upload-archive '/app.git'", "git-upload-pack '/app.git'; id", "sh -c id", "git config --list"} {
		out, err := admin.run("ssh", append(sshArgs(admin), cmd)...)
		if err == nil || strings.Contains(out, "uid=") || !(strings.Contains(out, "only git fetch and push are served") || strings.Contains(out, "bad repository name")) {
			t.Errorf("command %q: %v\n%s", cmd, err, out)
		}
	}
	// Path traversal, absolute paths, symlinks.
	outside := filepath.Join(ts.root, "outside.git")
	fixtures.Git(t, ts.root, "init", "-q", "--bare", outside)
	os.Symlink(outside, filepath.Join(ts.root, "repos", "link.git"))
	os.Symlink(ts.root, filepath.Join(ts.root, "repos", "dir"))
	for _, path := range []string{"/../outside.git", "/../../etc", "//etc/passwd", "/~/x.git", "/link.git", "/dir/outside.git", "/app.git/../outside.git"} {
		out, err := admin.run("git", "ls-remote", admin.url+path)
		if err == nil || !strings.Contains(out, "bad repository name") {
			t.Errorf("path %q: %v\n%s", path, err, out)
		}
		out, err = admin.run("ssh", append(sshArgs(admin), "git-receive-pack '"+path+"'")...)
		if err == nil || !strings.Contains(out, "bad repository name") {
			t.Errorf("receive-pack %q: %v\n%s", path, err, out)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(ts.root, "repos")); len(ents) != 3 {
		t.Errorf("the repository root changed: %v", ents)
	}
	// Port forwarding is not offered.
	out, err = admin.run("ssh", sshArgs(admin, "-N", "-o", "ExitOnForwardFailure=yes", "-L", "127.0.0.1:0:127.0.0.1:22")...)
	if err == nil {
		t.Errorf("port forwarding was accepted:\n%s", out)
	}
}

// The session's identity is the key that authenticated, even when the
// client offered another, known key first.
func TestIdentityIsTheAuthenticatedKey(t *testing.T) {
	ts := startServer(t, nil)
	admin := ts.client("admin", "rwc")
	admin.initRepo(1)
	admin.must("git", "push", "-q", admin.url+"/app.git", "main")
	reader := ts.client("reader", "r")
	// Offer the admin's public key first (without its private key, so it
	// cannot sign), then authenticate with the reader's key.
	os.WriteFile(filepath.Join(reader.dir, "adminpub.pub"), must(os.ReadFile(admin.key+".pub")), 0o600)
	cmd := strings.Join([]string{"ssh", "-i", filepath.Join(reader.dir, "adminpub.pub"), "-i", reader.key, "-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=" + ts.known, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"}, " ")
	reader.env = append(reader.env, "GIT_SSH_COMMAND="+cmd)
	reader.must("git", "clone", "-q", reader.url+"/app.git", reader.repo)
	reader.must("git", "commit", "-q", "--allow-empty", "-m", "x")
	out, err := reader.run("git", "push", "origin", "HEAD:refs/heads/evil")
	if err == nil || !strings.Contains(out, "key "+reader.fp+" may not push") {
		t.Errorf("push with a borrowed identity: %v\n%s", err, out)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestConcurrentPushesToOneRef(t *testing.T) {
	ts := startServer(t, nil)
	admin := ts.client("admin", "rwc")
	admin.initRepo(1)
	admin.must("git", "push", "-q", admin.url+"/app.git", "main")
	const n = 50
	// Each pusher makes its own commit and races to create the same ref
	// (create-if-absent, as a request is pushed).
	commits := make([]string, n)
	for i := 0; i < n; i++ {
		admin.must("git", "commit", "-q", "--allow-empty", "-m", fmt.Sprintf("racer %d", i))
		commits[i] = strings.TrimSpace(admin.must("git", "rev-parse", "HEAD"))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	var outs []string
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := admin.run("git", "push", "--porcelain", "--force-with-lease=refs/ci/requests/x:", admin.url+"/app.git", commits[i]+":refs/ci/requests/x")
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				wins++
			}
			outs = append(outs, out)
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("%d pushes won, want exactly 1:\n%s", wins, tail(strings.Join(outs, "\n")))
	}
	// Plain forced pushes racing on one request: each lands whole or not
	// at all, and the ref ends on one of the pushed commits.
	wg = sync.WaitGroup{}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			admin.run("git", "push", "-q", admin.url+"/app.git", "+"+commits[i]+":refs/ci/requests/y")
		}()
	}
	wg.Wait()
	bare := filepath.Join(ts.root, "repos", "app.git")
	yv, _ := fixtures.RunGit(bare, nil, nil, "rev-parse", "refs/ci/requests/y")
	if !slices.Contains(commits, strings.TrimSpace(string(yv))) {
		t.Errorf("after forced racing pushes the request holds %q", yv)
	}
	if out, err := fixtures.RunGit(bare, nil, nil, "fsck", "--strict"); err != nil {
		t.Errorf("git fsck: %v\n%s", err, out)
	}
	val, _ := fixtures.RunGit(bare, nil, nil, "rev-parse", "refs/ci/requests/x")
	found := false
	for _, c := range commits {
		found = found || c == strings.TrimSpace(string(val))
	}
	if !found {
		t.Errorf("the request holds %s, none of the pushed commits", val)
	}
}

func TestShutdownDrainsSessionsAndLimits(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxSessions = 1; c.MaxPackBytes = 2000 })
	admin := ts.client("admin", "rwc")
	admin.initRepo(1)
	admin.must("git", "push", "-q", admin.url+"/app.git", "main")
	// The pack size limit.
	big := make([]byte, 200000)
	rand.Read(big)
	os.WriteFile(filepath.Join(admin.repo, "big"), big, 0o644)
	admin.must("git", "add", "big")
	admin.must("git", "commit", "-q", "-m", "big")
	if out, err := admin.run("git", "push", admin.url+"/app.git", "HEAD:refs/heads/big"); err == nil || !strings.Contains(out, "maximum") && !strings.Contains(out, "too large") {
		t.Errorf("an oversized pack was accepted: %v\n%s", err, out)
	}
	// A session holding the only slot: a second one waits, then runs.
	hold := exec.Command("ssh", append(strings.Fields(admin.sshCommand())[1:], "-p", ts.port(), "git@127.0.0.1", "git-upload-pack '/app.git'")...)
	hold.Env = admin.env
	stdin, _ := hold.StdinPipe()
	var holdOut fixtures.Buffer // written by the command's copier as the test reads it
	hold.Stdout = &holdOut
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	// The slot is held once the advertisement came: wait for it (a
	// failure, not a reason to go on, if it never comes).
	fixtures.WaitFor(t, time.Minute, "the holding session's advertisement", func() bool { return strings.Contains(holdOut.String(), "0000") })
	second := make(chan error, 1)
	go func() {
		_, err := admin.run("git", "ls-remote", admin.url+"/app.git")
		second <- err
	}()
	select {
	case err := <-second:
		t.Fatalf("a second session ran beside the only slot's: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	// Shutdown waits for the running session, which ends when its client
	// does; the waiting one is then refused (the server drains).
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- ts.srv.Shutdown(ctx)
	}()
	select {
	case <-done:
		t.Fatal("Shutdown returned while a git session ran")
	case <-time.After(300 * time.Millisecond):
	}
	stdin.Write([]byte("0000"))
	stdin.Close()
	hold.Wait()
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	<-second
	if _, err := os.Stat(ts.srv.hooks.path); err == nil {
		t.Error("the hook socket outlived the server")
	}
}

func TestValidGitProtocol(t *testing.T) {
	for v, ok := range map[string]bool{"version=2": true, "version=2:object-format=sha256": true, "": false,
		"version=2\nGIT_DIR=/": false, "a b": false, "x;id": false, strings.Repeat("a", 65): false} {
		if validGitProtocol(v) != ok {
			t.Errorf("validGitProtocol(%q) = %v", v, !ok)
		}
	}
}

// dialKey opens an authenticated SSH connection with the client's key
// (Go's client: a connection that holds no session).
func (c *client) dialKey() (*gossh.Client, error) {
	b, err := os.ReadFile(c.key)
	if err != nil {
		return nil, err
	}
	signer, err := gossh.ParsePrivateKey(b)
	if err != nil {
		return nil, err
	}
	return gossh.Dial("tcp", c.ts.addr, &gossh.ClientConfig{
		User: "git", Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second,
	})
}

func TestConnectionLimit(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxSessions = 1 })
	admin := ts.client("admin", "rwc")
	admin.initRepo(1)
	admin.must("git", "push", "-q", admin.url+"/app.git", "main")
	// Four idle authenticated connections fill the server (4 x MaxSessions).
	var conns []*gossh.Client
	for i := 0; i < 4; i++ {
		c, err := admin.dialKey()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// (The push's own connection may still hold its place for a moment
	// after git exits: then the fourth is turned away too, and what
	// follows holds all the same.)
	out, err := admin.run("git", "ls-remote", admin.url+"/app.git")
	if err == nil || !strings.Contains(out, "the server is busy (4 connections at once)") {
		t.Errorf("a fifth connection was served: %v\n%s", err, out)
	}
	conns[0].Close()
	fixtures.WaitFor(t, time.Minute, "a closed connection to free its place", func() bool {
		_, err := admin.run("git", "ls-remote", admin.url+"/app.git")
		return err == nil
	})
	for _, c := range conns[1:] {
		c.Close()
	}
	if !strings.Contains(ts.logs.String(), "too many connections; turning one away") {
		t.Error("the refusal was not logged")
	}
}

// openIdle opens a TCP connection and reads the server's version line,
// so it was accepted; it then says nothing.
func openIdle(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := dialIdle(addr)
	if err != nil {
		t.Fatalf("no version line: %v", err)
	}
	return c
}

// dialIdle connects and reads the server's version line; an error means
// the server closed the connection first (it was turned away).
func dialIdle(addr string) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	line := make([]byte, 0, 64)
	b := make([]byte, 1)
	for len(line) < 64 {
		if _, err := c.Read(b); err != nil {
			c.Close()
			return nil, err
		}
		if line = append(line, b[0]); b[0] == '\n' {
			break
		}
	}
	if !strings.HasPrefix(string(line), "SSH-2.0-") {
		c.Close()
		return nil, fmt.Errorf("version line %q", line)
	}
	return c, nil
}

// A few hundred idle TCP connections from the client's own address do
// not lock it out: at most MaxUnauthPerAddr stay open, and a new
// connection closes the one idle longest once it has been idle for
// EvictIdle.
func TestFloodOfIdleConnections(t *testing.T) {
	const evictIdle = 300 * time.Millisecond
	ts := startServer(t, func(c *Config) { c.MaxSessions, c.EvictIdle = 4, evictIdle })
	admin := ts.client("admin", "rwc")
	admin.initRepo(1)
	admin.must("git", "push", "-q", admin.url+"/app.git", "main")
	const n = 300
	var flood []net.Conn
	for i := 0; i < n; i++ {
		// Each is let in (closing an idle one) or turned away before
		// the next.
		if c, err := dialIdle(ts.addr); err == nil {
			flood = append(flood, c)
		}
	}
	if len(flood) < 8 {
		t.Fatalf("only %d of %d connections were let in, want at least 8", len(flood), n)
	}
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	// They are held open, idle, while a real client comes in: once the
	// ones waiting have been idle for EvictIdle, it closes one of them.
	time.Sleep(evictIdle + 100*time.Millisecond)
	if out, err := admin.run("git", "ls-remote", admin.url+"/app.git"); err != nil || !strings.Contains(out, "refs/heads/main") {
		t.Fatalf("git ls-remote during the flood: %v\n%s", err, out)
	}
	if out, err := admin.run("git", "push", "-q", admin.url+"/app.git", "main:refs/heads/during-flood"); err != nil {
		t.Fatalf("git push during the flood: %v\n%s", err, out)
	}
	// Every connection the server closed reads EOF at once; the ones
	// still open time out.
	var mu sync.Mutex
	var wg sync.WaitGroup
	open := 0
	for _, c := range flood {
		wg.Add(1)
		go func(c net.Conn) {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, err := c.Read(make([]byte, 1))
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				mu.Lock()
				open++
				mu.Unlock()
			}
		}(c)
	}
	wg.Wait()
	if open > 8 {
		t.Errorf("%d of %d idle connections are still open, want at most 8 (MaxUnauthPerAddr)", open, n)
	}
	if !strings.Contains(ts.logs.String(), "too many connections waiting to log in; closed the one idle longest") {
		t.Error("the evictions were not logged")
	}
}

// Clients busy logging in are not cut off by each other, however many
// come at once from one address (up to MaxUnauthPerAddr, by default
// MaxSessions): only idle connections are closed to make room. (With a
// fixed limit of 8 per address, 42 of 50 concurrent fetches failed.)
func TestManyClientsAtOnce(t *testing.T) {
	const n = 40
	ts := startServer(t, func(c *Config) { c.MaxSessions = n }) // the per-address limit defaults to MaxSessions
	admin := ts.client("admin", "rwc")
	admin.initRepo(1)
	admin.must("git", "push", "-q", admin.url+"/app.git", "main")
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			out, err := admin.run("git", "ls-remote", admin.url+"/app.git")
			if err == nil && !strings.Contains(out, "refs/heads/main") {
				err = fmt.Errorf("no main in %q", out)
			}
			errs <- err
		}()
	}
	failed := 0
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			failed++
			t.Log(err)
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d concurrent git ls-remote failed", failed, n)
	}
	if strings.Contains(ts.logs.String(), "closed the one idle longest") || strings.Contains(ts.logs.String(), "turned new ones away") {
		t.Errorf("a connection was closed or turned away:\n%s", ts.logs.String())
	}
}

// An unauthenticated connection is closed at the handshake deadline; an
// authenticated one is not.
func TestHandshakeDeadline(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.HandshakeTimeout = time.Second })
	admin := ts.client("admin", "rwc")
	admin.initRepo(1)
	admin.must("git", "push", "-q", admin.url+"/app.git", "main")
	authed, err := admin.dialKey()
	if err != nil {
		t.Fatal(err)
	}
	defer authed.Close()
	t0 := time.Now() // before the server accepts it
	idle := openIdle(t, ts.addr)
	defer idle.Close()
	idle.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadAll(idle); err != nil {
		t.Fatalf("the idle connection was not closed: %v", err)
	}
	if el := time.Since(t0); el < 900*time.Millisecond {
		t.Errorf("closed after %s, before the handshake deadline", el)
	}
	// The authenticated connection is older than the deadline and works.
	sess, err := authed.NewSession()
	if err != nil {
		t.Fatalf("the authenticated connection was closed: %v", err)
	}
	defer sess.Close()
	sess.Stdin = strings.NewReader("0000")
	out, err := sess.Output("git-upload-pack '/app.git'")
	if err != nil || !strings.Contains(string(out), "refs/heads/main") {
		t.Errorf("upload-pack on the old connection: %v\n%s", err, out)
	}
}

// A refused key is logged with its fingerprint, type and address, once
// per connection however many keys the client offers, and not again for
// the same key and address within a minute.
func TestRefusedKeyIsLogged(t *testing.T) {
	ts := startServer(t, nil)
	admin := ts.client("admin", "rwc")
	admin.initRepo(1)
	admin.must("git", "push", "-q", admin.url+"/app.git", "main")
	stranger := ts.client("stranger", "")
	k2, _ := newKey(t, stranger.dir, "id2")
	k3, fp3 := newKey(t, stranger.dir, "id3")
	stranger.env = append(stranger.env, "GIT_SSH_COMMAND="+stranger.sshCommand("-i", k2, "-i", k3))
	for i := 0; i < 2; i++ {
		if out, err := stranger.run("git", "ls-remote", stranger.url+"/app.git"); err == nil || !strings.Contains(out, "Permission denied (publickey)") {
			t.Fatalf("an unknown key was let in: %v\n%s", err, out)
		}
	}
	// The line is written when the server is done with the connection,
	// which may be after the client heard the refusal: wait for it.
	fixtures.WaitForShowing(t, time.Minute, "the refused key's log line", func() bool {
		return strings.Contains(ts.logs.String(), "key="+stranger.fp+" type=ssh-ed25519 addr=127.0.0.1:")
	}, ts.logs.String)
	// Another key, offered alone, is logged; by then every line of the
	// stranger's two connections is written too.
	other := ts.client("other", "")
	other.key = k3
	other.env = append(other.env, "GIT_SSH_COMMAND="+other.sshCommand())
	other.run("git", "ls-remote", other.url+"/app.git")
	fixtures.WaitForShowing(t, time.Minute, "the second key's log line", func() bool {
		return strings.Contains(ts.logs.String(), "key="+fp3)
	}, ts.logs.String)
	if logs := ts.logs.String(); strings.Count(logs, "refused an unknown key") != 2 {
		t.Errorf("%d log lines for refused keys, want 2 (one per key, not per connection or offer):\n%s", strings.Count(logs, "refused an unknown key"), logs)
	}
}

func TestIdleConnectionsAreClosed(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.IdleTimeout = time.Second })
	admin := ts.client("admin", "rwc")
	admin.initRepo(1)
	admin.must("git", "push", "-q", admin.url+"/app.git", "main")
	// A client that opens upload-pack and then says nothing.
	cmd := exec.Command("ssh", append(strings.Fields(admin.sshCommand())[1:], "-p", ts.port(), "git@127.0.0.1", "git-upload-pack '/app.git'")...)
	cmd.Env = admin.env
	stdin, _ := cmd.StdinPipe()
	defer stdin.Close()
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
		if el := time.Since(t0); el < 900*time.Millisecond {
			t.Errorf("closed after %s, before the idle time", el)
		}
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		t.Fatal("an idle session was still open after a minute (idle time 1 s)")
	}
}

// A policy sees the pushed objects (still in quarantine) and the earlier
// updates of the same push: it can require fast-forwards with real git.
func TestPolicySeesThePush(t *testing.T) {
	ts := startServer(t, nil)
	var mu sync.Mutex
	var earlier [][]RefUpdate
	ts.policy.check = func(p *Push, u RefUpdate) error {
		mu.Lock()
		earlier = append(earlier, p.Earlier)
		mu.Unlock()
		if p.Repo != "app.git" || p.ID.Fingerprint == "" {
			return fmt.Errorf("push %+v", p)
		}
		if !strings.HasPrefix(u.Name, "refs/ff/") || u.Old == zeroID || u.Deleting() {
			return nil
		}
		if p.RefValue(u.Name) != u.Old {
			return fmt.Errorf("RefValue(%s) = %q, want %s", u.Name, p.RefValue(u.Name), u.Old)
		}
		ok, err := p.IsAncestor(context.Background(), u.Old, u.New)
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("not a fast-forward")
		}
		return nil
	}
	admin := ts.client("admin", "rwc")
	admin.initRepo(2)
	admin.must("git", "push", "-q", admin.url+"/app.git", "main", "HEAD~1:refs/ff/x")
	// A new commit, only in the push's quarantine while the hook asks.
	admin.must("git", "commit", "-q", "--allow-empty", "-m", "new")
	admin.must("git", "push", "-q", admin.url+"/app.git", "HEAD:refs/ff/x")
	admin.must("git", "commit", "-q", "--amend", "--allow-empty", "-m", "rewritten")
	out, err := admin.run("git", "push", "--force", admin.url+"/app.git", "HEAD:refs/ff/x", "HEAD:refs/heads/other")
	if err == nil || !strings.Contains(out, "refused refs/ff/x: not a fast-forward") {
		t.Errorf("a forced push was allowed: %v\n%s", err, out)
	}
	if !strings.Contains(out, "* [new branch]      HEAD -> other") {
		t.Errorf("the other ref of the push was not applied:\n%s", out)
	}
	mu.Lock()
	defer mu.Unlock()
	// The first push's second ref saw the first one as allowed.
	if len(earlier) < 2 || len(earlier[0]) != 0 || len(earlier[1]) != 1 || earlier[1][0].Name != "refs/heads/main" && earlier[1][0].Name != "refs/ff/x" {
		t.Errorf("Earlier: %+v", earlier)
	}
}

func TestQuarantineDir(t *testing.T) {
	repo := t.TempDir()
	q := filepath.Join(repo, "objects", "tmp_objdir-incoming-x")
	os.MkdirAll(q, 0o700)
	os.MkdirAll(filepath.Join(repo, "elsewhere"), 0o700)
	if got, err := quarantineDir(repo, q); err != nil || got != q {
		t.Errorf("the real quarantine: %q %v", got, err)
	}
	if got, err := quarantineDir(repo, "objects/tmp_objdir-incoming-x"); err != nil || got != q {
		t.Errorf("relative: %q %v", got, err)
	}
	if got, err := quarantineDir(repo, ""); err != nil || got != "" {
		t.Errorf("none: %q %v", got, err)
	}
	// The repository reached through a symlink, as the server may name it.
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(repo, link); err != nil {
		t.Fatal(err)
	}
	if got, err := quarantineDir(link, q); err != nil || got != q {
		t.Errorf("through a symlink: %q %v", got, err)
	}
	for _, bad := range []string{"/tmp", filepath.Join(repo, "elsewhere"), filepath.Join(repo, "objects"), filepath.Join(repo, "objects", "missing"), filepath.Join(repo, "objects", "..", "elsewhere"), q + "/../../../elsewhere"} {
		if got, err := quarantineDir(repo, bad); err == nil {
			t.Errorf("quarantineDir(%q) = %q, want an error", bad, got)
		}
	}
}

// The repositories' root reached through a symlink: git reports the
// quarantine by its physical path, and it is still recognised.
func TestPolicySeesThePushUnderASymlinkedRoot(t *testing.T) {
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "repos")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, func(c *Config) { c.Root = link })
	ts.policy.check = func(p *Push, u RefUpdate) error {
		if u.Old == zeroID || u.Deleting() {
			return nil
		}
		if ok, err := p.IsAncestor(context.Background(), u.Old, u.New); err != nil || !ok {
			return fmt.Errorf("not a fast-forward (%v)", err)
		}
		return nil
	}
	admin := ts.client("admin", "rwc")
	admin.initRepo(1)
	admin.must("git", "push", "-q", admin.url+"/app.git", "main")
	admin.must("git", "commit", "-q", "--allow-empty", "-m", "new")
	admin.must("git", "push", "-q", admin.url+"/app.git", "main")
}

// The limiter's counts: evictions, authentication and closing leave
// nothing behind.
func TestLimiterAccounting(t *testing.T) {
	// Busy connections (none idle for EvictIdle) are kept, and a new one
	// beyond the limit is turned away instead.
	busy := &limiter{log: slog.New(slog.DiscardHandler), handshake: time.Minute, perAddr: 2, maxUnauth: 5, maxAuth: 2, idle: time.Hour, byAddr: map[string]int{}}
	var kept []*limitConn
	for i := 0; i < 3; i++ {
		a, b := net.Pipe()
		defer b.Close()
		kept = append(kept, busy.admit(a))
	}
	if kept[0] == nil || kept[1] == nil || kept[2] != nil || len(busy.unauth) != 2 {
		t.Fatalf("busy connections: admitted %v, waiting %d; want the first two kept and the third turned away", kept, len(busy.unauth))
	}
	for _, c := range kept[:2] {
		c.Close()
	}

	// With EvictIdle 0 every waiting connection is idle enough: the
	// idlest (the oldest, as none read or wrote) makes room.
	l := &limiter{log: slog.New(slog.DiscardHandler), handshake: time.Minute, perAddr: 3, maxUnauth: 5, maxAuth: 2, byAddr: map[string]int{}}
	var conns []*limitConn
	var peers []net.Conn
	for i := 0; i < 10; i++ {
		a, b := net.Pipe()
		peers = append(peers, b)
		conns = append(conns, l.admit(a))
	}
	count := func() (unauth, auth int) {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.unauth), l.nAuth
	}
	if u, _ := count(); u != 3 || l.byAddr["pipe"] != 3 {
		t.Fatalf("after 10 from one address: %d waiting, by address %v; want 3", u, l.byAddr)
	}
	// The 7 oldest were closed: their peers read EOF.
	for i, p := range peers {
		p.SetReadDeadline(time.Now().Add(time.Second))
		_, err := p.Read(make([]byte, 1))
		closed := errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe)
		if closed != (i < 7) {
			t.Errorf("connection %d: read %v", i, err)
		}
	}
	if !conns[7].authenticated() || !conns[8].authenticated() {
		t.Fatal("authentication within the limit was refused")
	}
	if conns[9].authenticated() || !conns[9].over() {
		t.Fatal("a third authenticated connection was let in (limit 2)")
	}
	if conns[0].authenticated() {
		t.Error("an evicted connection authenticated")
	}
	// The one turned away as over the limit still counts as waiting
	// (for the per-address limits) until it is closed.
	if u, a := count(); u != 1 || a != 2 {
		t.Errorf("waiting %d, authenticated %d; want 1 (the one over the limit), 2", u, a)
	}
	for _, c := range conns {
		c.Close()
	}
	if u, a := count(); u != 0 || a != 0 || len(l.byAddr) != 0 {
		t.Errorf("after closing all: waiting %d, authenticated %d, by address %v", u, a, l.byAddr)
	}
	// The handshake deadline cannot be pushed back before authentication.
	a, b := net.Pipe()
	defer b.Close()
	c := l.admit(a)
	defer c.Close()
	if got := c.clamp(time.Now().Add(time.Hour)); !got.Equal(c.by) {
		t.Errorf("clamp: %v, want the handshake deadline %v", got, c.by)
	}
	if got := c.clamp(time.Time{}); !got.Equal(c.by) {
		t.Errorf("clamp of no deadline: %v", got)
	}
}

// A push of requests alone to a repository that does not exist is
// refused, names the repositories there and says how to make one, and
// leaves nothing behind; a branch creates the repository and says so.
func TestPushOfRequestsDoesNotCreateRepository(t *testing.T) {
	ts := startServer(t, nil)
	admin := ts.client("admin", "rwc")
	admin.initRepo(1)
	admin.must("git", "push", "-q", admin.url+"/app.git", "main")
	out, err := admin.run("git", "push", admin.url+"/ap.git", "HEAD:refs/ci/requests/first")
	if err == nil {
		t.Fatalf("a push of a request created a repository:\n%s", out)
	}
	for _, want := range []string{"repository ap.git does not exist (repositories you may read here: app.git)", "pushing a branch to it, e.g. git push REMOTE HEAD"} {
		if !strings.Contains(out, want) {
			t.Errorf("the refusal lacks %q:\n%s", want, out)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(ts.root, "repos"))
	if len(ents) != 1 || ents[0].Name() != "app.git" {
		t.Errorf("the repositories' directory holds %v, want only app.git", ents)
	}
	// A non-admin's push and a fetch get the same explanation.
	reader := ts.client("reader", "r")
	if out, err := reader.run("git", "ls-remote", reader.url+"/ap.git"); err == nil || !strings.Contains(out, "repository ap.git does not exist (repositories you may read here: app.git)") {
		t.Errorf("fetch of a missing repository: %v\n%s", err, out)
	}
	// A branch with the request creates it, and the push output says so.
	out = admin.must("git", "push", admin.url+"/lib.git", "main", "HEAD:refs/ci/requests/first")
	if !strings.Contains(out, "refci: created repository lib.git") {
		t.Errorf("the push does not say it created the repository:\n%s", out)
	}
	if got := strings.TrimSpace(admin.must("git", "ls-remote", admin.url+"/lib.git")); strings.Count(got, "\n") != 2 {
		t.Errorf("lib.git's refs:\n%s", got)
	}
	// A later push to it does not say so again.
	if out := admin.must("git", "push", admin.url+"/lib.git", "HEAD:refs/ci/requests/second"); strings.Contains(out, "created") {
		t.Errorf("a push to an existing repository:\n%s", out)
	}
}

// Pushes that create the same repository at once: each that git reports
// as accepted has its branch there; the others are told to push again.
func TestConcurrentPushesCreatingOneRepository(t *testing.T) {
	ts := startServer(t, nil)
	admin := ts.client("admin", "rwc")
	admin.initRepo(1)
	const n = 4
	type result struct {
		branch, out string
		err         error
	}
	results := make(chan result, n)
	for i := 0; i < n; i++ {
		go func() {
			b := fmt.Sprintf("b%d", i)
			out, err := admin.run("git", "push", admin.url+"/new.git", "main:refs/heads/"+b)
			results <- result{b, out, err}
		}()
	}
	refs := ""
	for i := 0; i < n; i++ {
		r := <-results
		if r.err != nil {
			if !strings.Contains(r.out, "push again") {
				t.Errorf("push of %s failed without saying to push again: %v\n%s", r.branch, r.err, r.out)
			}
			continue
		}
		if refs == "" {
			refs = admin.must("git", "ls-remote", admin.url+"/new.git")
		}
		if !strings.Contains(admin.must("git", "ls-remote", admin.url+"/new.git"), "refs/heads/"+r.branch) {
			t.Errorf("the push of %s was accepted but its branch is not in the repository:\n%s", r.branch, r.out)
		}
	}
	if refs == "" {
		t.Error("no push created the repository")
	}
}
