package envstore

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
)

// TestCreateAndEditEndToEnd drives an environment through every change an
// admin makes, as refci secrets does, on a real repository with real
// keys, and checks each version as a worker reads it.
func TestCreateAndEditEndToEnd(t *testing.T) {
	admin, worker, second, outsider := newIdentity(t, "Admin"), newIdentity(t, "Worker"), newIdentity(t, "Second"), newIdentity(t, "Outsider")
	s := &Store{Repo: newRepo(t)}

	_, err := s.Create("staging", admin, NewSpec{})
	wantUsage(t, "Create without recipients", err, "staging: no recipients; give the public key of each worker")
	_, err = s.Create("staging", admin, NewSpec{RecipientFiles: []string{filepath.Join(t.TempDir(), "missing.asc")}})
	wantUsage(t, "Create with a missing key file", err, "--recipient: ")
	_, err = s.Create("staging", admin, NewSpec{AdminFiles: []string{keyFile(t, outsider)}, RecipientFiles: []string{keyFile(t, worker)}})
	wantUsage(t, "Create by a key outside the admins", err, "is not among the --admin keys")
	_, err = s.Create("../x", admin, NewSpec{RecipientFiles: []string{keyFile(t, worker)}})
	wantUsage(t, "Create of an invalid name", err, "")
	if tip, _ := s.Tip("staging"); tip != gitproto.ZeroHash {
		t.Fatalf("a refused Create wrote %v", tip)
	}

	policy, err := NewPolicy([]string{"main"}, []string{"TOKEN"}, false)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := s.Create("staging", admin, NewSpec{RecipientFiles: []string{keyFile(t, worker)}, Policy: policy})
	if err != nil {
		t.Fatal(err)
	}
	if ch.Ref != queue.SecretsRef("staging") || ch.Subject != "init staging" || ch.Signer != admin.Fingerprint() ||
		!ch.Env.Recipients.Has(worker.Fingerprint()) || !ch.Env.Recipients.Has(admin.Fingerprint()) || len(ch.Env.Policy.Requests) != 1 {
		t.Errorf("Create = %+v", ch)
	}
	if tip, _ := s.Tip("staging"); tip != ch.Commit {
		t.Errorf("the ref is at %v; want the version created, %v", tip, ch.Commit)
	}
	if _, err := Verify(s.Repo, "staging", ch.Commit, keyring(admin)); err != nil {
		t.Errorf("the first version does not verify: %v", err)
	}
	_, err = s.Create("staging", admin, NewSpec{RecipientFiles: []string{keyFile(t, worker)}})
	wantUsage(t, "Create of an existing environment", err, "already exists")

	_, err = s.Edit("nothere")
	wantUsage(t, "Edit of a missing environment", err, "there is no refs/ci/secrets/nothere in this repository")
	ed, err := s.Edit("staging")
	if err != nil || ed.Base != ch.Commit || ed.Env.Name != "staging" {
		t.Fatalf("Edit = %+v, %v", ed, err)
	}
	if _, err := ed.Set("TOKEN", []byte("s3cret-1")); err == nil || errors.Is(err, ErrUsage) {
		t.Errorf("Set before Authorize = %v; want the caller's error", err)
	}
	wantUsage(t, "Authorize of a key that is no admin", ed.Authorize(outsider), "is not an admin of staging")
	if err := ed.Authorize(admin); err != nil {
		t.Fatal(err)
	}
	set, err := ed.Set("TOKEN", []byte("s3cret-1"))
	if err != nil || set.Subject != "set TOKEN" || set.Commit == ch.Commit || ed.Base != set.Commit {
		t.Fatalf("Set = %+v, %v", set, err)
	}
	// The Edit goes on from the version it wrote.
	sealed, err := admin.Seal([]byte("from-gpg"), ed.Env.Recipients)
	if err != nil {
		t.Fatal(err)
	}
	v, sealedCh, err := ed.SetSealed("OTHER", sealed)
	if err != nil || string(v) != "from-gpg" || sealedCh.Subject != "set OTHER" {
		t.Fatalf("SetSealed = %q, %+v, %v", v, sealedCh, err)
	}
	// A Change keeps the version it wrote, whatever the Edit does next.
	if names := set.Env.Names(); len(names) != 1 || names[0] != "TOKEN" {
		t.Errorf("the first Change's version has %v after a later change, want [TOKEN]", names)
	}
	_, err = ed.AddRecipients(filepath.Join(t.TempDir(), "missing.asc"))
	wantUsage(t, "AddRecipients of a missing file", err, "--recipient: ")
	added, err := ed.AddRecipients(keyFile(t, second))
	if err != nil || added.Subject != "add recipient "+second.Fingerprint() {
		t.Fatalf("AddRecipients = %+v, %v", added, err)
	}
	removed, err := ed.RemoveRecipient(worker.Fingerprint())
	if err != nil || removed.Subject != "remove recipient "+worker.Fingerprint() {
		t.Fatalf("RemoveRecipient = %+v, %v", removed, err)
	}
	pol, err := ed.SetPolicy(secrets.Policy{AllowUntrusted: true})
	if err != nil || !strings.HasPrefix(pol.Subject, "policy: any request, trusted or not") {
		t.Fatalf("SetPolicy = %+v, %v", pol, err)
	}

	// What was committed is what a fresh load reads, in that order.
	got, err := s.Edit("staging")
	if err != nil || got.Base != pol.Commit {
		t.Fatalf("the ref is at %v, %v; want the last change %v", got.Base, err, pol.Commit)
	}
	var subjects []string
	if err := s.History(got.Base, func(v Version) error { subjects = append(subjects, v.Subject); return nil }); err != nil {
		t.Fatal(err)
	}
	want := "policy: any request, trusted or not; any request name|remove recipient " + worker.Fingerprint() + "|add recipient " + second.Fingerprint() + "|set OTHER|set TOKEN|init staging"
	if strings.Join(subjects, "|") != want {
		t.Errorf("history %q; want %q", strings.Join(subjects, "|"), want)
	}
	if v, err := got.Env.Value(second, "TOKEN"); err != nil || string(v) != "s3cret-1" {
		t.Errorf("the added recipient reads TOKEN as %q, %v", v, err)
	}
	if _, err := got.Env.Value(worker, "TOKEN"); !errors.Is(err, secrets.ErrNotRecipient) || !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "ask an admin to add yours") {
		t.Errorf("the removed recipient reads the last version: %v; want ErrNotRecipient", err)
	}
	_, err = got.Env.Value(second, "NOPE")
	wantUsage(t, "Value of a missing name", err, "staging has no secret NOPE; it has: OTHER, TOKEN")
	if _, err := got.Env.Sealed("OTHER"); err != nil {
		t.Errorf("Sealed(OTHER): %v", err)
	}

	// A change that fails half-way (the new recipient is added, but the
	// admin cannot re-encrypt a value sealed to others only) commits
	// nothing and puts the loaded version back: a later change of that
	// Edit does not commit the half-made one.
	half, _ := s.Edit("staging")
	if err := half.Authorize(admin); err != nil {
		t.Fatal(err)
	}
	half.Env.Values["TOKEN"], err = admin.Seal([]byte("not-for-the-admin"), keyring(second))
	if err != nil {
		t.Fatal(err)
	}
	var nr *NotRecipientError
	if _, err := half.AddRecipients(keyFile(t, outsider)); !errors.As(err, &nr) {
		t.Fatalf("AddRecipients by an admin who cannot re-encrypt: %v; want a *NotRecipientError", err)
	}
	if half.Env.Recipients.Has(outsider.Fingerprint()) || half.Base != pol.Commit {
		t.Errorf("a failed change left the outsider a recipient (%v) or moved Base (%v)", half.Env.Recipients.Has(outsider.Fingerprint()), half.Base)
	}
	after, err := half.SetPolicy(secrets.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := s.Read(after.Commit); err != nil || v.Recipients.Has(outsider.Fingerprint()) {
		t.Errorf("the change after a failed one committed its half: %v", err)
	}
	pol = after

	// Two admins at once: the second change, made on the version both
	// loaded, loses the compare-and-swap and writes nothing.
	a, _ := s.Edit("staging")
	b, _ := s.Edit("staging")
	if err := a.Authorize(admin); err != nil {
		t.Fatal(err)
	}
	if err := b.Authorize(admin); err != nil {
		t.Fatal(err)
	}
	won, err := a.Set("RACE", []byte("first-value"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Set("RACE", []byte("second-value")); err == nil || !strings.Contains(err.Error(), "changed while refci was writing it; run the command again") {
		t.Errorf("the losing change: %v", err)
	}
	if tip, _ := s.Tip("staging"); tip != won.Commit {
		t.Errorf("the ref is at %v; want the winner %v", tip, won.Commit)
	}
}
