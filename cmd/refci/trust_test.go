package main

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/secrets"
	"refci.dev/refci/worker"
)

func TestSignatureTrustOnCommits(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("git", "init", "-q", "--bare", dir).CombinedOutput(); err != nil {
		t.Fatalf("git init: %v\n%s", err, out)
	}
	repo, err := gitproto.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	alice, err := secrets.Generate("Alice", "alice@example.invalid", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	mallory, _ := secrets.Generate("Mallory", "m@example.invalid", time.Now())
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
	policy := signatureTrust(trusted)
	for _, tc := range []struct {
		target gitproto.Hash
		want   bool
		why    string
	}{
		{signed, true, "the target commit is signed by trusted key " + alice.Fingerprint()},
		{unsigned, false, "untrusted: the target commit is not signed"},
		{foreign, false, "untrusted: the target commit is signed by a key this worker does not trust"},
	} {
		ok, why := policy(worker.TrustQuery{Repo: repo, Request: "r", RequestObject: tc.target, Target: tc.target})
		if ok != tc.want || !strings.HasPrefix(why, tc.why) {
			t.Errorf("%s: %v %q, want %v %q", tc.target, ok, why, tc.want, tc.why)
		}
	}
	if ok, why := signatureTrust(secrets.Keyring{})(worker.TrustQuery{Repo: repo, RequestObject: signed, Target: signed}); ok || !strings.Contains(why, "--trusted FILE") {
		t.Errorf("no trusted keys: %v %q", ok, why)
	}
}
