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
