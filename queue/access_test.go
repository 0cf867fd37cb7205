package queue

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
)

// testKey is the SSH key of seed as an authorized_keys line ending in
// "key" and a letter, and its fingerprint.
func testKey(t *testing.T, seed byte) (line, fp string) {
	t.Helper()
	k := fixtures.SSHKeyFromSeed(t, seed, "key"+string('a'+seed))
	return k.AuthorizedKey, k.Fingerprint
}

func TestRolesMayUpdate(t *testing.T) {
	cases := []struct {
		roles    string
		ref      string
		deleting bool
		ok       bool
	}{
		{"read", "refs/ci/requests/x", false, false},
		{"trigger", "refs/ci/requests/x", false, true},
		{"trigger", "refs/ci/requests/x", true, true},
		{"trusted", "refs/ci/requests/a/b", false, true},
		{"trigger", "refs/heads/main", false, false},
		{"trigger", "refs/tags/v1", false, false},
		{"trigger", "refs/ci/runs/abc/def", false, false},
		{"trigger", "refs/ci/claims/x", false, false},
		{"trigger", "refs/ci/secrets/prod", false, false},
		{"trusted", "refs/ci/secrets/prod", false, false},
		{"worker", "refs/ci/claims/x", false, true},
		{"worker", "refs/ci/claims/x", true, true},
		{"worker", "refs/ci/runs/abc/def", false, true},
		{"worker", "refs/ci/requests/x", true, true},
		{"worker", "refs/ci/requests/x", false, false},
		{"worker", "refs/heads/main", false, false},
		{"worker", "refs/ci/secrets/prod", false, false},
		{"admin", "refs/heads/main", false, true},
		{"admin", "refs/ci/secrets/prod", false, true},
		{"admin", "refs/ci/runs/abc/def", true, true},
		{"none", "refs/ci/requests/x", false, false},
		{"worker", "refs/ci/mail/ledger/ci", false, true},
		{"worker", "refs/ci/mail/patches/0123456789abcdef/v1", false, true},
		{"trigger", "refs/ci/mail/ledger/ci", false, false},
		{"trusted", "refs/ci/mail/ledger/ci", false, false},
		{"read", "refs/ci/mail/ledger/ci", false, false},
		{"admin", "refs/ci/mail/ledger/ci", true, true},
	}
	for _, c := range cases {
		r, err := ParseRoles(c.roles)
		if err != nil {
			t.Fatal(err)
		}
		err = r.MayUpdate(c.ref, c.deleting)
		if (err == nil) != c.ok {
			t.Errorf("%s update %s (delete %v): err %v, want ok=%v", c.roles, c.ref, c.deleting, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "this key has "+c.roles) {
			t.Errorf("the refusal %q does not say the key's roles", err)
		}
	}
	if _, err := ParseRoles("owner"); err == nil || !strings.Contains(err.Error(), "read, trigger") {
		t.Errorf("unknown role: %v", err)
	}
	tr, _ := ParseRoles("trusted")
	if !tr.Trusted() || !tr.MayRead() || tr.MayCreate() {
		t.Errorf("trusted: %v %v %v", tr.Trusted(), tr.MayRead(), tr.MayCreate())
	}
	ad, _ := ParseRoles("admin")
	if !ad.Trusted() || !ad.MayCreate() {
		t.Error("admin must be trusted and create repositories")
	}
	trig, _ := ParseRoles("trigger")
	if trig.Trusted() {
		t.Error("trigger alone must not be trusted")
	}
	if Roles(0).MayRead() {
		t.Error("no roles must not read")
	}
}

func TestParseAccess(t *testing.T) {
	alice, aliceFP := testKey(t, 1)
	bob, bobFP := testKey(t, 2)
	_, carolFP := testKey(t, 3)
	_, daveFP := testKey(t, 4)
	file := "# comment\n\n" +
		"admin " + alice + "\n" +
		"trigger\t" + bob + "\n" +
		"none@private " + bob + "\n" +
		"trusted@app.git " + bob + "\n" +
		"read,worker " + carolFP + "\n"
	a, err := ParseAccess(strings.NewReader(file), "roles")
	if err != nil {
		t.Fatal(err)
	}
	check := func(fp, repo, want string) {
		t.Helper()
		if got := a.Roles(fp, repo).String(); got != want {
			t.Errorf("roles of %s in %q = %s, want %s", fp, repo, got, want)
		}
	}
	check(aliceFP, "", "admin")
	check(aliceFP, "app.git", "admin")
	check(bobFP, "other.git", "trigger")
	check(bobFP, "private.git", "none")
	check(bobFP, "private", "none")
	check(bobFP, "app.git", "trusted")
	check(carolFP, "x.git", "read,worker")
	check(daveFP, "", "none")
	if !a.Known(bobFP) || a.Known(daveFP) {
		t.Error("Known")
	}
	if ad := a.Admins(); len(ad) != 1 || ad[0].Fingerprint != aliceFP || ad[0].Label != "keyb" {
		t.Errorf("admins %+v", ad)
	}

	bad := []struct{ text, want string }{
		{"admin\n", "write ROLES KEY"},
		{"owner " + alice + "\n", "unknown role \"owner\""},
		{"admin ssh-ed25519 AAAAnotakey\n", "not an OpenSSH public key"},
		{"admin SHA256:short\n", "is not a SHA256 fingerprint"},
		{"trigger@ " + alice + "\n", "not a repository name"},
		{"admin no-pty " + alice + "\n", "options (no-pty) are not supported"},
	}
	for _, b := range bad {
		_, err := ParseAccess(strings.NewReader("# x\n"+b.text), "roles")
		if err == nil || !strings.Contains(err.Error(), b.want) || !strings.Contains(err.Error(), "roles:2:") {
			t.Errorf("%q: error %v, want it to say %q at roles:2", b.text, err, b.want)
		}
	}
}

func TestAccessFileReloads(t *testing.T) {
	alice, aliceFP := testKey(t, 1)
	p := filepath.Join(t.TempDir(), "roles")
	write := func(s string, mtime time.Time) {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, mtime, mtime)
	}
	t0 := time.Now().Add(-time.Hour)
	write("read "+alice+"\n", t0)
	f, err := NewAccessFile(p)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := f.Load()
	if a.Roles(aliceFP, "") != RoleRead {
		t.Fatal("first read")
	}
	write("admin "+alice+"\n", t0.Add(time.Second))
	a, err = f.Load()
	if err != nil || a.Roles(aliceFP, "") != RoleAdmin {
		t.Fatalf("after edit: %v %v", a.Roles(aliceFP, ""), err)
	}
	// A broken edit keeps the previous roles and says so.
	write("admin ssh-ed25519 broken\n", t0.Add(2*time.Second))
	a, err = f.Load()
	if err == nil || a.Roles(aliceFP, "") != RoleAdmin {
		t.Fatalf("broken edit: %v %v", a.Roles(aliceFP, ""), err)
	}
	os.Remove(p)
	if _, err := f.Load(); err == nil {
		t.Fatal("a removed file must be reported")
	}
	if _, err := NewAccessFile(p); err == nil {
		t.Fatal("a missing file must be an error at start")
	}
}

func TestAccessOnSite(t *testing.T) {
	admin, _ := testKey(t, 1)
	bob, bobFP := testKey(t, 2)
	carol, _ := testKey(t, 3)
	cases := []struct {
		file string
		on   map[string]bool
	}{
		{"admin " + admin + "\ntrigger " + bob, map[string]bool{"app.git": true, "x/y": true}},
		// none@REPO: bob may not read secret.git, so the site does not show it.
		{"admin " + admin + "\ntrigger " + bob + "\nnone@secret " + bobFP, map[string]bool{"app.git": true, "secret.git": false}},
		// A key with roles in one repository only cannot read the others.
		{"admin " + admin + "\ntrigger@app.git " + carol, map[string]bool{"app": true, "other.git": false}},
		// An admin puts a restricted repository on the site.
		{"admin " + admin + "\nnone@secret " + bobFP + "\npublic secret.git other", map[string]bool{"secret": true, "other.git": true}},
		{"", map[string]bool{"app.git": true}},
	}
	for i, c := range cases {
		a, err := ParseAccess(strings.NewReader(c.file), "roles")
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		for repo, want := range c.on {
			if got := a.OnSite(repo); got != want {
				t.Errorf("case %d: OnSite(%s) = %v, want %v", i, repo, got, want)
			}
		}
	}
	for _, bad := range []string{"public", "public ../x", "public /abs", "public@app.git x"} {
		if _, err := ParseAccess(strings.NewReader(bad), "roles"); err == nil {
			t.Errorf("%q was accepted", bad)
		}
	}
	var nilAccess *Access
	if nilAccess.OnSite("app.git") {
		t.Error("a nil Access shows repositories")
	}
}
