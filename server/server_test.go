package server

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto/sshd"
	"refci.dev/refci/queue"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestServeBannerGolden(t *testing.T) {
	var b bytes.Buffer
	WriteBanner(&b, Banner{
		Data: "/home/alice/.config/refci/serve", Roles: "/home/alice/.config/refci/serve/roles",
		Admins:  []string{"SHA256:3q2+7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA (from /home/alice/.ssh/id_ed25519.pub)"},
		Addr:    "127.0.0.1:2222",
		HostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO2eiDgeBrIlHD9JTyRIQ0cbWKYSsYXiWVtZ9HN7rHVZ",
		HostFP:  "SHA256:Zifg081RHjad6KTZqeqtaCFuioVm+j0PMZDOJob2UQA", Signer: "87C91535668C63BA359D7A3291E619F9B1824546",
		Repos: []string{"app.git", "org/lib.git"}, Concurrency: 2, HTTP: "http://127.0.0.1:8080/",
	})
	golden := filepath.Join("testdata", "serve_banner.golden")
	if *updateGolden {
		os.MkdirAll("testdata", 0o755)
		os.WriteFile(golden, b.Bytes(), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run TestServeBannerGolden -update)", err)
	}
	if b.String() != string(want) {
		t.Errorf("banner differs from %s (go test -update to accept):\n%s", golden, b.String())
	}
}

func TestPushOptionsAndSizes(t *testing.T) {
	o, err := requestOptions([]string{"env=staging", "timeout=20m"})
	if err != nil || o.Env != "staging" || o.Timeout != 20*time.Minute {
		t.Errorf("%+v %v", o, err)
	}
	for opt, want := range map[string]string{"env=a b": "env=", "timeout=soon": "timeout=", "ci.skip": "unknown push option \"ci.skip\"", "env": "env="} {
		if _, err := requestOptions([]string{opt}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v", opt, err)
		}
	}
	req := []sshd.RefUpdate{{Name: "refs/heads/main", New: "1"}}
	if err := checkPushOptions(sshd.Identity{}, "app.git", req, []string{"env=x"}); err == nil || !strings.Contains(err.Error(), "apply to requests only") {
		t.Errorf("options on a branch push: %v", err)
	}
	req = append(req, sshd.RefUpdate{Name: queue.RequestRef("x"), New: "2"})
	if err := checkPushOptions(sshd.Identity{}, "app.git", req, []string{"env=x"}); err != nil {
		t.Error(err)
	}
	for in, want := range map[string]int64{"1000": 1000, "2K": 2048, "5M": 5 << 20, "1G": 1 << 30} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v", in, got, err)
		}
	}
	if _, err := ParseSize("-1"); err == nil {
		t.Error("negative size accepted")
	}
}

func TestTrustStoreKeepsTheNewest(t *testing.T) {
	ts := &trustStore{dir: t.TempDir()}
	id := func(i int) string { return fmt.Sprintf("%040d", i) }
	for i := 0; i < 2*maxTrustRecords; i++ {
		if err := ts.record("org/app.git", id(i), "SHA256:k"); err != nil {
			t.Fatal(err)
		}
	}
	if ts.lookup("org/app.git", id(maxTrustRecords-1)) != "" {
		t.Error("an old record was kept")
	}
	if ts.lookup("org/app.git", id(2*maxTrustRecords-1)) != "SHA256:k" || ts.lookup("org/app.git", id(maxTrustRecords)) != "SHA256:k" {
		t.Error("a recent record is missing")
	}
	if ts.lookup("other.git", id(20)) != "" {
		t.Error("records leak between repositories")
	}
}

func TestEnsureAdmins(t *testing.T) {
	dir := t.TempDir()
	home := filepath.Join(dir, "home")
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	aKey, bKey := fixtures.SSHKeyFiles(t, filepath.Join(home, ".ssh"), "id_ed25519"), fixtures.SSHKeyFiles(t, filepath.Join(home, ".ssh"), "id_other")
	a, aFP, bFP := aKey.Path, aKey.Fingerprint, bKey.Fingerprint
	roles := filepath.Join(dir, "roles")
	notes, err := ensureAdmins(roles, nil, home)
	if err != nil || len(notes) != 2 || !strings.Contains(notes[0], aFP+" (from "+a+".pub)") {
		t.Fatalf("first start: %v %v", notes, err)
	}
	acc, err := queue.NewAccessFile(roles)
	if err != nil {
		t.Fatal(err)
	}
	l, _ := acc.Load()
	if l.Roles(aFP, "") != queue.RoleAdmin || l.Roles(bFP, "") != queue.RoleAdmin {
		t.Error("the user's keys are not admins")
	}
	if b, _ := os.ReadFile(roles); !strings.HasPrefix(string(b), "# refci serve: who may do what") {
		t.Errorf("no header:\n%s", b)
	}
	// Later starts take the file as it is.
	notes, err = ensureAdmins(roles, nil, filepath.Join(dir, "nobody"))
	if err != nil || len(notes) != 2 || !strings.Contains(notes[0], "(from "+roles+")") {
		t.Errorf("second start: %v %v", notes, err)
	}
	// --admin adds a key once.
	carol := fixtures.SSHKeyFiles(t, dir, "carol")
	c, cFP := carol.Path, carol.Fingerprint
	for i := 0; i < 2; i++ {
		if _, err := ensureAdmins(roles, []string{c + ".pub"}, home); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := os.ReadFile(roles); strings.Count(string(b), "carol") != 1 {
		t.Errorf("carol added %d times:\n%s", strings.Count(string(b), "carol"), b)
	}
	l, _ = acc.Load()
	if l.Roles(cFP, "") != queue.RoleAdmin {
		t.Error("--admin key is not admin")
	}
	os.WriteFile(filepath.Join(dir, "bad.pub"), []byte("not a key\n"), 0o600)
	if _, err := ensureAdmins(roles, []string{filepath.Join(dir, "bad.pub")}, home); err == nil || !strings.Contains(err.Error(), "not an OpenSSH public key") {
		t.Errorf("bad key file: %v", err)
	}
	if _, err := ensureAdmins(filepath.Join(dir, "roles2"), nil, filepath.Join(dir, "nobody")); err == nil || !strings.Contains(err.Error(), "no admin key") {
		t.Errorf("no keys anywhere: %v", err)
	}
}

// writeFileAtomic gives readers the old file or a whole new one, with the
// mode asked for whatever the old file's was, and makes its temporary
// file beside the target, not in TMPDIR. Writers at once each leave a
// whole file: none sees another's temporary file taken away.
func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	tmpdir := t.TempDir()
	t.Setenv("TMPDIR", tmpdir)
	old := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := os.Chtimes(tmpdir, old, old); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "roles")
	if err := os.WriteFile(path, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const writers = 8
	errs := make(chan error, writers)
	for i := 0; i < writers; i++ {
		go func() {
			errs <- writeFileAtomic(path, bytes.Repeat([]byte(fmt.Sprintf("writer %d\n", i)), 4096), 0o600)
		}()
	}
	for i := 0; i < writers; i++ {
		if err := <-errs; err != nil {
			t.Errorf("writer: %v", err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := bytes.Cut(b, []byte("\n"))
	if want := bytes.Repeat(append(first, '\n'), 4096); !bytes.HasPrefix(first, []byte("writer ")) || !bytes.Equal(b, want) {
		t.Errorf("the file is not one writer's whole content (%d bytes, starting %q)", len(b), first)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("the directory holds %d files, want the roles file only", len(ents))
	}
	if fi, err := os.Stat(tmpdir); err != nil || !fi.ModTime().Equal(old) {
		t.Errorf("files were made in TMPDIR (its mtime is %v, %v)", fi.ModTime(), err)
	}
}

// New prepares the data directory and the roles file, refuses bad admin
// keys with ErrRoles, and Serve returns nil once its context ends.
func TestServerLifecycle(t *testing.T) {
	dir := t.TempDir()
	if _, err := New(Config{DataDir: filepath.Join(dir, "bad"), Home: filepath.Join(dir, "nobody")}); !errors.Is(err, ErrRoles) || !strings.Contains(err.Error(), "no admin key") {
		t.Fatalf("no admin key: %v", err)
	}
	admin := fixtures.SSHKeyFiles(t, dir, "admin")
	key, fp := admin.Path, admin.Fingerprint
	srv, err := New(Config{DataDir: filepath.Join(dir, "data"), AdminKeyFiles: []string{key + ".pub"}, Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	p := srv.Paths()
	for _, d := range []string{p.Repos, p.Cache, p.Trust, p.Owners, p.WWW} {
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			t.Errorf("%s: %v", d, err)
		}
	}
	if srv.Access().Roles(fp, "app.git") != queue.RoleAdmin {
		t.Error("the admin key is not admin")
	}
	b := srv.Banner("127.0.0.1:2222")
	if len(b.Admins) != 1 || !strings.HasPrefix(b.Admins[0], fp) || !strings.HasPrefix(b.HostFP, "SHA256:") || b.Roles != filepath.Join(p.Root, "roles") {
		t.Errorf("banner: %+v", b)
	}
	if repos, err := srv.Repos(); err != nil || len(repos) != 0 {
		t.Errorf("repos: %v %v", repos, err)
	}
	if ok, why := srv.PushedByTrustedKey(filepath.Join(p.Repos, "app.git"), fmt.Sprintf("%040d", 1)); ok || !strings.Contains(why, "not pushed over SSH") {
		t.Errorf("trust without a record: %v %q", ok, why)
	}
	if ok, why := srv.PushedByTrustedKey(dir, fmt.Sprintf("%040d", 1)); ok || !strings.Contains(why, "not pushed through this refci serve") {
		t.Errorf("trust outside the server: %v %q", ok, why)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.ListenAndServe(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(ShutdownGrace):
		t.Fatal("Serve did not return once its context ended")
	}
	srv.Close()
}

// The owner store keeps the key that pushed a claim or run ref with the
// value it pushed, ignores other refs and forgets deleted ones.
func TestOwnerStoreRecords(t *testing.T) {
	o := &ownerStore{dir: t.TempDir()}
	claim, run := queue.ClaimRef("r1"), queue.RunsPrefix+"abc/1"
	push := &sshd.Receive{ID: sshd.Identity{Fingerprint: "SHA256:w"}, Repo: "app.git", Updates: []sshd.RefUpdate{
		{Name: claim, Old: sshd.ZeroID, New: "c1"}, {Name: run, Old: sshd.ZeroID, New: "r1"}, {Name: "refs/heads/main", Old: sshd.ZeroID, New: "m"},
	}}
	if err := o.record(push); err != nil {
		t.Fatal(err)
	}
	if o.owner("app.git", claim, "c1") != "SHA256:w" || o.owner("app.git", run, "r1") != "SHA256:w" {
		t.Error("the pushing key does not own its refs")
	}
	if o.owner("app.git", claim, "c2") != "" || o.owner("other.git", claim, "c1") != "" || o.owner("app.git", "refs/heads/main", "m") != "" {
		t.Error("an owner for another value, repository or a branch")
	}
	push.Updates = []sshd.RefUpdate{{Name: claim, Old: "c1", New: sshd.ZeroID}}
	if err := o.record(push); err != nil {
		t.Fatal(err)
	}
	if fp, _ := o.read("app.git", claim); fp != "" {
		t.Error("a deleted claim keeps its owner")
	}
}
