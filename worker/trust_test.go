package worker

import (
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/secrets"
)

func TestSignatureTrustOnCommits(t *testing.T) {
	repo, err := gitproto.Open(fixtures.BareRepo(t, "repo.git"))
	if err != nil {
		t.Fatal(err)
	}
	alice, mallory := fixtures.OpenPGPIdentity(t, "Alice"), fixtures.OpenPGPIdentity(t, "Mallory")
	tree, err := repo.WriteTree(nil)
	if err != nil {
		t.Fatal(err)
	}
	commit := func(sign gitproto.SignFunc) gitproto.Hash {
		h, err := repo.WriteCommit(gitproto.CommitSpec{Tree: tree, Author: gitproto.NewSignature("A", "a@example.invalid", time.Now()), Message: "x\n"}, sign)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	signed, unsigned, foreign := commit(alice.SignDetached), commit(nil), commit(mallory.SignDetached)
	var trusted secrets.Keyring
	trusted.Add(alice)
	policy := SignatureTrust(trusted)
	for _, tc := range []struct {
		target gitproto.Hash
		want   bool
		why    string
	}{
		{signed, true, "the target commit is signed by trusted key " + alice.Fingerprint()},
		{unsigned, false, "untrusted: the target commit is not signed"},
		{foreign, false, "untrusted: the target commit is signed by a key this worker does not trust"},
	} {
		ok, why := policy(TrustQuery{Repo: repo, Request: "r", RequestObject: tc.target, Target: tc.target})
		if ok != tc.want || !strings.HasPrefix(why, tc.why) {
			t.Errorf("%s: %v %q, want %v %q", tc.target, ok, why, tc.want, tc.why)
		}
	}
	if ok, why := SignatureTrust(secrets.Keyring{})(TrustQuery{Repo: repo, RequestObject: signed, Target: signed}); ok || !strings.Contains(why, "--trusted FILE") {
		t.Errorf("no trusted keys: %v %q", ok, why)
	}
}

// A local run is trusted unless keys are named; then its commit's
// signature decides, and an empty keyring trusts nothing.
func TestLocalTrust(t *testing.T) {
	repo, err := gitproto.Open(fixtures.BareRepo(t, "repo.git"))
	if err != nil {
		t.Fatal(err)
	}
	alice := fixtures.OpenPGPIdentity(t, "Alice")
	tree, err := repo.WriteTree(nil)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := repo.WriteCommit(gitproto.CommitSpec{Tree: tree, Author: gitproto.NewSignature("A", "a@example.invalid", time.Now()), Message: "x\n"}, alice.SignDetached)
	if err != nil {
		t.Fatal(err)
	}
	unsigned, err := repo.WriteCommit(gitproto.CommitSpec{Tree: tree, Author: gitproto.NewSignature("A", "a@example.invalid", time.Now()), Message: "y\n"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var keys, none secrets.Keyring
	keys.Add(alice)
	for _, tc := range []struct {
		name    string
		target  gitproto.Hash
		trusted *secrets.Keyring
		want    bool
		why     string
	}{
		{"no keys named", unsigned, nil, true, "a local run, started by the user on this machine"},
		{"signed by a named key", signed, &keys, true, "the target commit is signed by trusted key " + alice.Fingerprint()},
		{"unsigned, keys named", unsigned, &keys, false, "untrusted: the target commit is not signed"},
		{"an empty keyring named", signed, &none, false, "this worker trusts no requester key"},
	} {
		if ok, why := LocalTrust(repo, tc.target, tc.trusted); ok != tc.want || !strings.HasPrefix(why, tc.why) {
			t.Errorf("%s: %v %q; want %v %q", tc.name, ok, why, tc.want, tc.why)
		}
	}
}
