package envstore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/secrets"
)

// wantUsage fails unless err is an ErrUsage error whose text holds want.
func wantUsage(t *testing.T, what string, err error, want string) {
	t.Helper()
	if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), want) {
		t.Errorf("%s: err = %v; want an ErrUsage error holding %q", what, err, want)
	}
}

// keyFile writes the public keys of ids to a file and returns its path.
func keyFile(t *testing.T, ids ...*secrets.Identity) string {
	t.Helper()
	b, err := keyring(ids...).Armored()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "keys.asc")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// signOnlyKey is a public key without an encryption subkey.
func signOnlyKey(t *testing.T) secrets.Keyring {
	t.Helper()
	e, err := openpgp.NewEntity("Test Signer", "", "test.signer@example.invalid", nil)
	if err != nil {
		t.Fatal(err)
	}
	e.Subkeys = nil
	var buf bytes.Buffer
	w, err := armor.Encode(&buf, openpgp.PublicKeyType, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Serialize(w); err != nil {
		t.Fatal(err)
	}
	w.Close()
	k, err := secrets.ReadKeyring(&buf)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newStoreEnv inits env "staging" with admin as admin and worker as a
// recipient, and loads it.
func newStoreEnv(t *testing.T, admin, worker *secrets.Identity) (*Store, *Env, gitproto.Hash) {
	t.Helper()
	s := &Store{Repo: newRepo(t)}
	e, err := newEnv("staging", admin, secrets.Keyring{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.setRecipients(keyring(worker)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.writeFirst(e, admin); err != nil {
		t.Fatal(err)
	}
	e, tip, err := s.load("staging")
	if err != nil {
		t.Fatal(err)
	}
	return s, e, tip
}

func TestInitRules(t *testing.T) {
	admin, other, worker := newIdentity(t, "Admin"), newIdentity(t, "Other"), newIdentity(t, "Worker")
	s := &Store{Repo: newRepo(t)}

	_, _, err := s.load("staging")
	wantUsage(t, "Load of a missing environment", err, "there is no refs/ci/secrets/staging in this repository; create it with 'refci secrets init staging")
	if err := s.CheckNew("staging"); err != nil {
		t.Errorf("CheckNew of a missing environment: %v", err)
	}

	_, err = newEnv("staging", admin, keyring(other))
	wantUsage(t, "NewEnv with the signer not among the admins", err, "your key "+admin.Fingerprint()+" is not among the --admin keys")

	e, err := newEnv("staging", admin, secrets.Keyring{})
	if err != nil {
		t.Fatal(err)
	}
	if !e.Admins.Has(admin.Fingerprint()) || e.Admins.Len() != 1 || len(e.AdminsRaw) == 0 {
		t.Errorf("NewEnv without admins: admins %s; want the signer alone", fingerprints(e.Admins))
	}
	wantUsage(t, "SetRecipients with a sign-only key", e.setRecipients(signOnlyKey(t)), "has no encryption subkey; export a refci key with 'refci keys export'")
	if err := e.setRecipients(keyring(worker)); err != nil {
		t.Fatal(err)
	}
	if !e.Recipients.Has(worker.Fingerprint()) || !e.Recipients.Has(admin.Fingerprint()) {
		t.Errorf("recipients %s; want the worker and the admin", fingerprints(e.Recipients))
	}
	h, subject, err := s.writeFirst(e, admin)
	if err != nil || subject != "init staging" {
		t.Fatalf("Init = %q, %v", subject, err)
	}
	if v, err := s.Repo.Commit(h); err != nil || !strings.HasPrefix(v.Message, "refci secrets: init staging\n") {
		t.Errorf("first commit %v, %v; want subject 'init staging'", v, err)
	}
	_, _, err = s.writeFirst(e, admin)
	wantUsage(t, "Init of an existing environment", err, "refs/ci/secrets/staging already exists (commit ")
	wantUsage(t, "CheckNew of an existing environment", s.CheckNew("staging"), "change it with 'refci secrets set|recipients|policy'")

	got, tip, err := s.load("staging")
	if err != nil || tip != h || got.Name != "staging" || !got.Recipients.Has(worker.Fingerprint()) {
		t.Fatalf("Load = %+v, %v, %v; want the version at %v", got, tip, err, h)
	}
	if err := got.checkAdmin(admin.Fingerprint()); err != nil {
		t.Errorf("CheckAdmin of the admin: %v", err)
	}
	wantUsage(t, "CheckAdmin of another key", got.checkAdmin(other.Fingerprint()), "your key "+other.Fingerprint()+" is not an admin of staging (its admins.asc lists "+admin.Fingerprint()+")")
}

func TestSetRules(t *testing.T) {
	admin, worker, stranger := newIdentity(t, "Admin"), newIdentity(t, "Worker"), newIdentity(t, "Stranger")
	_, e, _ := newStoreEnv(t, admin, worker)

	if subject, err := e.set(admin, "TOKEN", []byte("s3cret-1")); err != nil || subject != "set TOKEN" {
		t.Fatalf("Set = %q, %v; want set TOKEN", subject, err)
	}
	if subject, err := e.set(admin, "TOKEN", []byte("s3cret-2")); err != nil || subject != "set a new version of TOKEN" {
		t.Fatalf("Set again = %q, %v; want set a new version of TOKEN", subject, err)
	}
	if v, _, err := worker.Open(e.Values["TOKEN"], e.Admins); err != nil || string(v) != "s3cret-2" {
		t.Errorf("the worker opens %q, %v; want s3cret-2", v, err)
	}
	_, err := e.set(admin, "bad name", []byte("s3cret"))
	wantUsage(t, "Set of an invalid name", err, "")
	_, err = e.set(admin, "EMPTY", nil)
	wantUsage(t, "Set of an empty value", err, "EMPTY: ")

	sealed, err := admin.Seal([]byte("from-gpg"), e.Recipients)
	if err != nil {
		t.Fatal(err)
	}
	v, subject, err := e.setSealed(admin, "OTHER", sealed)
	if err != nil || string(v) != "from-gpg" || subject != "set OTHER" || !bytes.Equal(e.Values["OTHER"], sealed) {
		t.Errorf("SetSealed = %q, %q, %v; want the value stored as sealed", v, subject, err)
	}
	foreign, err := stranger.Seal([]byte("from-gpg"), e.Recipients)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = e.setSealed(admin, "OTHER", foreign)
	wantUsage(t, "SetSealed of a stranger's seal", err, "OTHER: the --sealed message cannot be used: ")
}

func TestRecipientRules(t *testing.T) {
	admin, worker, second, outsider := newIdentity(t, "Admin"), newIdentity(t, "Worker"), newIdentity(t, "Second"), newIdentity(t, "Outsider")
	_, e, _ := newStoreEnv(t, admin, worker)
	if _, err := e.set(admin, "TOKEN", []byte("s3cret")); err != nil {
		t.Fatal(err)
	}

	_, err := e.addRecipients(admin, "signer.asc", signOnlyKey(t))
	wantUsage(t, "AddRecipients of a sign-only key", err, "--recipient: key ")
	_, err = e.addRecipients(admin, "worker.asc", keyring(worker))
	wantUsage(t, "AddRecipients of a recipient", err, "worker.asc: every key in it is already a recipient of staging")
	subject, err := e.addRecipients(admin, "second.asc", keyring(second))
	if err != nil || subject != "add recipient "+second.Fingerprint() {
		t.Fatalf("AddRecipients = %q, %v", subject, err)
	}
	if v, _, err := second.Open(e.Values["TOKEN"], e.Admins); err != nil || string(v) != "s3cret" {
		t.Errorf("the new recipient opens %q, %v; want the resealed value", v, err)
	}

	_, err = e.removeRecipient(admin, outsider.Fingerprint())
	wantUsage(t, "RemoveRecipient of a stranger", err, outsider.Fingerprint()+" is not a recipient of staging; see 'refci secrets list staging'")
	_, err = e.removeRecipient(admin, filepath.Join(t.TempDir(), "missing.asc"))
	wantUsage(t, "RemoveRecipient of a missing file", err, "is neither a 40-digit fingerprint nor a readable key file")
	_, err = e.removeRecipient(admin, keyFile(t, worker, second))
	wantUsage(t, "RemoveRecipient of a file with two keys", err, "holds 2 keys; remove one fingerprint at a time")
	subject, err = e.removeRecipient(admin, keyFile(t, second))
	if err != nil || subject != "remove recipient "+second.Fingerprint() {
		t.Fatalf("RemoveRecipient by file = %q, %v", subject, err)
	}
	if _, err := e.removeRecipient(admin, strings.ToLower(worker.Fingerprint())); err != nil {
		t.Fatalf("RemoveRecipient by fingerprint: %v", err)
	}
	_, err = e.removeRecipient(admin, admin.Fingerprint())
	wantUsage(t, "RemoveRecipient of the last recipient", err, admin.Fingerprint()+" is the last recipient of staging; add another first")

	// A key that cannot decrypt cannot reseal.
	_, e, _ = newStoreEnv(t, admin, worker)
	if _, err := e.set(admin, "TOKEN", []byte("s3cret")); err != nil {
		t.Fatal(err)
	}
	_, err = e.addRecipients(outsider, "second.asc", keyring(second))
	var nr *NotRecipientError
	if !errors.As(err, &nr) || !errors.Is(err, ErrUsage) {
		t.Errorf("AddRecipients by a non-recipient: %v; want a *NotRecipientError that Is ErrUsage", err)
	}
}

func TestPolicyRules(t *testing.T) {
	admin, worker := newIdentity(t, "Admin"), newIdentity(t, "Worker")
	_, e, _ := newStoreEnv(t, admin, worker)
	if got := DescribePolicy(e.Policy); got != "trusted requests only; any request name" {
		t.Errorf("zero policy: %q", got)
	}
	p, err := NewPolicy([]string{"main", "release/*"}, []string{"TOKEN"}, true)
	if err != nil {
		t.Fatal(err)
	}
	want := "policy: any request, trusted or not; request names matching main, release/*; exported as variables: TOKEN"
	if got := e.setPolicy(p); got != want || !e.Policy.AllowUntrusted {
		t.Errorf("SetPolicy = %q; want %q", got, want)
	}
	_, err = NewPolicy(nil, []string{"bad name"}, false)
	wantUsage(t, "NewPolicy of a bad name", err, "")
}
