//go:build linux

package worker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/secrets"
	"refci.dev/refci/secrets/envstore"
)

// TestEnvSecretsFetchesVerifiesAndDecrypts runs EnvSecrets as a worker
// does: an admin's environment pushed to a remote (a real bare
// repository), fetched into the worker's cache, verified against the
// worker's admin keys, its values decrypted with the worker's key.
func TestEnvSecretsFetchesVerifiesAndDecrypts(t *testing.T) {
	admin, worker := fixtures.OpenPGPIdentity(t, "Test Admin"), fixtures.OpenPGPIdentity(t, "Test Worker")
	origin := fixtures.BareRepo(t, "origin.git")
	originRepo, err := gitproto.Open(origin)
	if err != nil {
		t.Fatal(err)
	}
	store := &envstore.Store{Repo: originRepo}
	pub, err := worker.ArmoredPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "worker.asc")
	if err := os.WriteFile(keyFile, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	policy, err := envstore.NewPolicy([]string{"main"}, []string{"TOKEN"}, false)
	if err != nil {
		t.Fatal(err)
	}
	created, err := store.Create("staging", admin, envstore.NewSpec{RecipientFiles: []string{keyFile}, Policy: policy})
	if err != nil {
		t.Fatal(err)
	}
	ed, err := store.Edit("staging")
	if err != nil {
		t.Fatal(err)
	}
	if err := ed.Authorize(admin); err != nil {
		t.Fatal(err)
	}
	set, err := ed.Set("TOKEN", []byte("s3cret-token"))
	if err != nil || set.Commit == created.Commit {
		t.Fatalf("Set = %+v, %v", set, err)
	}

	cache := fixtures.BareRepo(t, "cache.git")
	cacheRepo, err := gitproto.Open(cache)
	if err != nil {
		t.Fatal(err)
	}
	rem := &gitproto.Remote{URL: "file://" + origin, Cache: cache}
	var admins secrets.Keyring
	admins.Add(admin)
	open := EnvSecrets(&envstore.Opener{Admins: admins, Key: worker, Remotes: func(u string) *gitproto.Remote {
		if u == rem.URL {
			return rem
		}
		return nil
	}})
	ctx := context.Background()
	q := SecretsQuery{Remote: rem.URL, Repo: cacheRepo, Env: "staging", Request: "main", Trusted: true, TrustReason: "signed by a trusted key"}
	src, err := open(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if info := src.Info(); info.Commit != set.Commit.String() || strings.Join(info.Exported, ",") != "TOKEN" {
		t.Errorf("Info = %+v; want commit %v exporting TOKEN", info, set.Commit)
	}
	if v, err := src.Secret("TOKEN"); err != nil || string(v) != "s3cret-token" {
		t.Errorf("Secret(TOKEN) = %q, %v", v, err)
	}
	if _, err := src.Secret("NOPE"); !errors.Is(err, ErrSecretNotFound) {
		t.Errorf("Secret(NOPE) = %v; want ErrSecretNotFound", err)
	}

	refused := q
	refused.Trusted, refused.TrustReason = false, "not signed"
	if _, err := open(ctx, refused); err == nil || !strings.Contains(err.Error(), "(not signed)") {
		t.Errorf("an untrusted request: %v; want refused, saying why", err)
	}
	other := q
	other.Remote = "file:///elsewhere.git"
	if _, err := open(ctx, other); err == nil || !strings.Contains(err.Error(), "unknown remote") {
		t.Errorf("an unknown remote: %v", err)
	}
	// A worker that does not take the signer for an admin believes nothing.
	var strangers secrets.Keyring
	strangers.Add(fixtures.OpenPGPIdentity(t, "Test Stranger"))
	if _, err := EnvSecrets(&envstore.Opener{Admins: strangers, Key: worker, Remotes: func(string) *gitproto.Remote { return rem }})(ctx, q); err == nil || !strings.Contains(err.Error(), "not an admin key of this worker") {
		t.Errorf("an environment signed by a key that is no admin: %v", err)
	}
}
