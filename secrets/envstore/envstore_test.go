package envstore

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
)

func TestMain(m *testing.M) { os.Exit(fixtures.PrivateHome(m)) }

func newRepo(t *testing.T) *gitproto.Repo {
	t.Helper()
	repo, err := gitproto.Open(fixtures.BareRepo(t, "repo.git"))
	if err != nil {
		t.Fatal(err)
	}
	return repo
}

func newIdentity(t *testing.T, name string) *secrets.Identity {
	return fixtures.OpenPGPIdentity(t, "Test "+name)
}

func keyring(ids ...*secrets.Identity) secrets.Keyring {
	var k secrets.Keyring
	k.Add(ids...)
	return k
}

// initEnv writes the first version of env with admin as its admin and
// worker as a recipient, holding value TOKEN.
func initEnv(t *testing.T, s *Store, env string, admin, worker *secrets.Identity) gitproto.Hash {
	t.Helper()
	admins := keyring(admin)
	raw, err := admins.Armored()
	if err != nil {
		t.Fatal(err)
	}
	policy, err := NewPolicy([]string{"main"}, []string{"TOKEN"}, false)
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{Recipients: keyring(admin, worker), Admins: admins, AdminsRaw: raw, Policy: policy, Values: map[string][]byte{}}
	if e.Values["TOKEN"], err = admin.Seal([]byte("s3cret"), e.Recipients); err != nil {
		t.Fatal(err)
	}
	h, err := s.Commit(env, gitproto.ZeroHash, e, admin, "init "+env)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestStoreWritesASignedCommitAndReadsItBack(t *testing.T) {
	repo := newRepo(t)
	admin, worker := newIdentity(t, "Admin"), newIdentity(t, "Worker")
	when := time.Unix(1700000100, 0).UTC()
	s := &Store{Repo: repo, Now: func() time.Time { return when }}
	if tip, err := s.Tip("staging"); err != nil || tip != gitproto.ZeroHash {
		t.Fatalf("Tip of a missing environment = %v, %v; want ZeroHash, nil", tip, err)
	}
	if _, err := s.Tip("../x"); err == nil {
		t.Error("Tip of an invalid name: no error")
	}
	h := initEnv(t, s, "staging", admin, worker)
	if tip, err := s.Tip("staging"); err != nil || tip != h {
		t.Fatalf("Tip = %v, %v; want %v", tip, err, h)
	}
	if got, err := repo.RefHash(queue.SecretsRef("staging")); err != nil || got != h {
		t.Fatalf("%s = %v, %v; want %v", queue.SecretsRef("staging"), got, err, h)
	}
	c, err := repo.Commit(h)
	if err != nil {
		t.Fatal(err)
	}
	if c.Message != "refci secrets: init staging\n\nRefci-Secrets-Env: staging\n" || c.Author.Name != "Test Admin" || !c.Author.When.Equal(when) {
		t.Errorf("commit = %q by %q at %v", c.Message, c.Author.Name, c.Author.When)
	}
	who, err := Verify(repo, "staging", h, keyring(admin))
	if err != nil || who.Fingerprint != admin.Fingerprint() {
		t.Fatalf("Verify = %v, %v; want signed by the admin", who, err)
	}
	e, err := s.Read(h)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.Names(); len(got) != 1 || got[0] != "TOKEN" {
		t.Errorf("Names = %v", got)
	}
	if !e.isAdmin(admin.Fingerprint()) || e.isAdmin(worker.Fingerprint()) {
		t.Error("IsAdmin: the admin is not one, or the worker is")
	}
	if len(e.Recipients.Keys()) != 2 || len(e.Policy.Environment) != 1 {
		t.Errorf("recipients %d, policy %+v", len(e.Recipients.Keys()), e.Policy)
	}
	v, _, err := worker.Open(e.Values["TOKEN"], keyring(admin))
	if err != nil || string(v) != "s3cret" {
		t.Errorf("the worker opens TOKEN as %q, %v", v, err)
	}
	// A commit on a stale tip loses the compare-and-swap.
	if _, err := s.Commit("staging", gitproto.ZeroHash, e, admin, "again"); err == nil || !strings.Contains(err.Error(), "changed while refci was writing it") {
		t.Errorf("Commit on a stale tip: %v", err)
	}
}

func TestVerifyRefusesACommitNotSignedByAnAdmin(t *testing.T) {
	repo := newRepo(t)
	admin, other, worker := newIdentity(t, "Admin"), newIdentity(t, "Other"), newIdentity(t, "Worker")
	s := &Store{Repo: repo}
	h := initEnv(t, s, "prod", other, worker) // signed by a key the worker does not take for an admin
	_, err := Verify(repo, "prod", h, keyring(admin))
	if err == nil || !strings.Contains(err.Error(), "is signed by a key that is not an admin key of this worker") {
		t.Errorf("Verify of a commit by a non-admin = %v", err)
	}
	o := &Opener{Admins: keyring(admin), Key: worker}
	if src, err := o.Open(context.Background(), Query{Repo: repo, Env: "prod", Request: "main", Trusted: true}); err == nil || src != nil {
		t.Errorf("Open of an environment signed by a non-admin = %v, %v; want refused", src, err)
	}
}

func TestOpenerChecksPolicyAndDecrypts(t *testing.T) {
	repo := newRepo(t)
	admin, worker := newIdentity(t, "Admin"), newIdentity(t, "Worker")
	s := &Store{Repo: repo}
	h := initEnv(t, s, "staging", admin, worker)
	o := &Opener{Admins: keyring(admin), Key: worker}
	ctx := context.Background()
	if _, err := o.Open(ctx, Query{Repo: repo, Env: "staging", Request: "feature", Trusted: true, TrustReason: "signed"}); err == nil {
		t.Error("a request the policy does not name opened the environment")
	}
	if _, err := o.Open(ctx, Query{Repo: repo, Env: "staging", Request: "main", Trusted: false, TrustReason: "unsigned"}); err == nil {
		t.Error("an untrusted request opened a trusted-only environment")
	}
	src, err := o.Open(ctx, Query{Repo: repo, Env: "staging", Request: "main", Trusted: true})
	if err != nil {
		t.Fatal(err)
	}
	if src.Commit() != h || len(src.Exported()) != 1 || src.Exported()[0] != "TOKEN" {
		t.Errorf("Source: commit %v, exported %v", src.Commit(), src.Exported())
	}
	if v, err := src.Secret("TOKEN"); err != nil || string(v) != "s3cret" {
		t.Errorf("Secret(TOKEN) = %q, %v", v, err)
	}
	if _, err := src.Secret("NOPE"); !errors.Is(err, ErrNoSecret) {
		t.Errorf("Secret(NOPE) = %v; want ErrNoSecret", err)
	}
	if seen, err := repo.RefHash(queue.SeenSecretsRef("staging")); err != nil || seen != h {
		t.Errorf("the verified version is not remembered: %v, %v", seen, err)
	}
	// An older version put back is refused: it does not descend from the
	// one verified last.
	e, err := s.Read(h)
	if err != nil {
		t.Fatal(err)
	}
	e.Values["OTHER"] = e.Values["TOKEN"]
	newer, err := s.Commit("staging", h, e, admin, "set OTHER")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.Open(ctx, Query{Repo: repo, Env: "staging", Request: "main", Trusted: true}); err != nil {
		t.Fatal(err)
	}
	if err := repo.UpdateRef(queue.SecretsRef("staging"), h, newer); err != nil {
		t.Fatal(err)
	}
	if _, err := o.Open(ctx, Query{Repo: repo, Env: "staging", Request: "main", Trusted: true}); err == nil || !strings.Contains(err.Error(), "not a fast-forward") {
		t.Errorf("an older version replayed: %v", err)
	}
}

func TestHistoryAndLastChanges(t *testing.T) {
	repo := newRepo(t)
	admin, worker := newIdentity(t, "Admin"), newIdentity(t, "Worker")
	clock := time.Unix(1700000000, 0).UTC()
	s := &Store{Repo: repo, Now: func() time.Time { clock = clock.Add(time.Minute); return clock }}
	first := initEnv(t, s, "staging", admin, worker)
	e, err := s.Read(first)
	if err != nil {
		t.Fatal(err)
	}
	if e.Values["OTHER"], err = admin.Seal([]byte("x"), e.Recipients); err != nil {
		t.Fatal(err)
	}
	second, err := s.Commit("staging", first, e, admin, "set OTHER")
	if err != nil {
		t.Fatal(err)
	}
	e.Recipients, _ = e.Recipients.Without(worker.Fingerprint())
	if err := e.reseal(admin); err != nil {
		t.Fatal(err)
	}
	third, err := s.Commit("staging", second, e, admin, "remove recipient")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	if err := s.History(third, func(v Version) error {
		got = append(got, v.Subject+"@"+v.Commit.String()[:7])
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"remove recipient@" + third.String()[:7], "set OTHER@" + second.String()[:7], "init staging@" + first.String()[:7]}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("History = %v, want %v", got, want)
	}
	changes, err := s.LastChanges(third)
	if err != nil {
		t.Fatal(err)
	}
	// Both values were re-encrypted by the last version.
	if changes["TOKEN"].Commit != third || changes["OTHER"].Commit != third {
		t.Errorf("LastChanges = %+v", changes)
	}
	changes, err = s.LastChanges(second)
	if err != nil {
		t.Fatal(err)
	}
	if changes["TOKEN"].Commit != first || changes["OTHER"].Commit != second || changes["OTHER"].Author.Name != "Test Admin" {
		t.Errorf("LastChanges at the second version = %+v", changes)
	}
}

func TestResealNeedsARecipient(t *testing.T) {
	repo := newRepo(t)
	admin, worker, outsider := newIdentity(t, "Admin"), newIdentity(t, "Worker"), newIdentity(t, "Outsider")
	s := &Store{Repo: repo}
	h := initEnv(t, s, "staging", admin, worker)
	e, err := s.Read(h)
	if err != nil {
		t.Fatal(err)
	}
	err = e.reseal(outsider)
	var nr *NotRecipientError
	if !errors.As(err, &nr) || !errors.Is(err, secrets.ErrNotRecipient) || nr.Name != "TOKEN" {
		t.Errorf("Reseal by a key that is no recipient = %v", err)
	}
}

func TestNewPolicyRefusesABadName(t *testing.T) {
	if _, err := NewPolicy(nil, []string{"not a name"}, false); err == nil {
		t.Error("NewPolicy took an export that is not a value name")
	}
	p, err := NewPolicy([]string{"release/*"}, nil, true)
	if err != nil || !p.AllowUntrusted || len(p.Requests) != 1 {
		t.Errorf("NewPolicy = %+v, %v", p, err)
	}
}

func TestOpenSealedBelievesOnlyAnAdminsSeal(t *testing.T) {
	repo := newRepo(t)
	admin, worker, outsider := newIdentity(t, "Admin"), newIdentity(t, "Worker"), newIdentity(t, "Outsider")
	s := &Store{Repo: repo}
	e, err := s.Read(initEnv(t, s, "staging", admin, worker))
	if err != nil {
		t.Fatal(err)
	}
	byAdmin, err := admin.Seal([]byte("value-1"), e.Recipients)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := e.openSealed(admin, byAdmin); err != nil || string(v) != "value-1" {
		t.Errorf("OpenSealed of the admin's seal = %q, %v", v, err)
	}
	byOutsider, err := outsider.Seal([]byte("value-2"), e.Recipients)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.openSealed(admin, byOutsider); err == nil {
		t.Error("OpenSealed believed a value sealed by a key that is no admin")
	}
}
