package secrets

import (
	"bytes"
	"errors"
	"io"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"refci.dev/refci/fixtures/gnupg"
)

var fingerprintRE = regexp.MustCompile(`^[0-9A-F]{40}$`)

func mustGenerate(t testing.TB, name string) *Identity {
	t.Helper()
	id, err := Generate(name, strings.ToLower(strings.ReplaceAll(name, " ", "."))+"@example.invalid", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func mustPublicKey(t testing.TB, id *Identity) []byte {
	t.Helper()
	pub, err := id.ArmoredPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func mustSign(t testing.TB, id *Identity, msg []byte) string {
	t.Helper()
	sig, err := id.SignDetached(msg)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

// commitLike is a message shaped like the git commit payloads refci signs.
var commitLike = []byte("tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n" +
	"author refci <refci@example.invalid> 1700000000 +0000\n" +
	"committer refci <refci@example.invalid> 1700000000 +0000\n\nresult: success\n")

// TestGenerateProperties checks, as go-crypto and as GnuPG see them, that a
// generated key is v4 legacy EdDSA on Ed25519 with a Curve25519 ECDH subkey
// and advertises no AEAD feature or preference.
func TestGenerateProperties(t *testing.T) {
	created := time.Now().Add(-time.Hour).Truncate(time.Second)
	id, err := Generate("Worker One", "w1@example.invalid", created)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := id.UserID(), "Worker One <w1@example.invalid>"; got != want {
		t.Errorf("UserID() = %q, want %q", got, want)
	}
	if !fingerprintRE.MatchString(id.Fingerprint()) {
		t.Errorf("Fingerprint() = %q, want 40 upper-case hex digits", id.Fingerprint())
	}

	// go-crypto's view.
	e := id.Entity()
	pk := e.PrimaryKey
	if pk.Version != 4 || pk.PubKeyAlgo != packet.PubKeyAlgoEdDSA {
		t.Errorf("primary key: version %d algorithm %d, want version 4 algorithm 22", pk.Version, pk.PubKeyAlgo)
	}
	if c, err := pk.Curve(); err != nil || c != packet.Curve25519 {
		t.Errorf("primary key curve = %q, %v; want %q", c, err, packet.Curve25519)
	}
	if !pk.CreationTime.Equal(created) {
		t.Errorf("created %v, want %v", pk.CreationTime, created)
	}
	if len(e.Subkeys) != 1 {
		t.Fatalf("%d subkeys, want 1", len(e.Subkeys))
	}
	sub := e.Subkeys[0]
	if sub.PublicKey.Version != 4 || sub.PublicKey.PubKeyAlgo != packet.PubKeyAlgoECDH {
		t.Errorf("subkey: version %d algorithm %d, want version 4 algorithm 18", sub.PublicKey.Version, sub.PublicKey.PubKeyAlgo)
	}
	if c, err := sub.PublicKey.Curve(); err != nil || c != packet.Curve25519 {
		t.Errorf("subkey curve = %q, %v; want %q", c, err, packet.Curve25519)
	}
	if !sub.Sig.FlagEncryptCommunications || sub.Sig.FlagSign {
		t.Errorf("subkey flags: encrypt %v sign %v, want an encryption-only subkey", sub.Sig.FlagEncryptCommunications, sub.Sig.FlagSign)
	}
	self, _ := e.PrimarySelfSignature()
	if self.SEIPDv2 || !self.SEIPDv1 || len(self.PreferredCipherSuites) > 0 {
		t.Errorf("self-signature: SEIPDv1 %v SEIPDv2 %v AEAD suites %v, want only SEIPDv1", self.SEIPDv1, self.SEIPDv2, self.PreferredCipherSuites)
	}
	if !self.FlagSign || !self.FlagCertify {
		t.Errorf("primary key flags: sign %v certify %v, want both", self.FlagSign, self.FlagCertify)
	}
	if e.PrivateKey.Encrypted {
		t.Error("secret key is encrypted")
	}

	// GnuPG's view, from the raw packets.
	g := gnupg.New(t)
	pub := mustPublicKey(t, id)
	packets := g.Run(pub, "--list-packets")
	for _, want := range []string{
		"version 4, algo 22,", "ed25519 (1.3.6.1.4.1.11591.15.1)",
		"version 4, algo 18,", "cv25519 (1.3.6.1.4.1.3029.1.5.1)",
		"(features: 01)", "(key flags: 03)", "(key flags: 0C)",
	} {
		if !strings.Contains(packets, want) {
			t.Errorf("gpg --list-packets lacks %q:\n%s", want, packets)
		}
	}
	// 34: LibrePGP AEAD preferences; 39: RFC 9580 AEAD ciphersuites.
	for _, bad := range []string{"subpkt 34 ", "subpkt 39 ", "version 5", "version 6"} {
		if strings.Contains(packets, bad) {
			t.Errorf("gpg --list-packets shows %q:\n%s", bad, packets)
		}
	}
	keys := g.Run(pub, "--with-colons", "--show-keys")
	if got := gnupg.FirstField(t, keys, "fpr", 9); got != id.Fingerprint() {
		t.Errorf("gpg fingerprint %s, Fingerprint() %s", got, id.Fingerprint())
	}
	if algo, curve := gnupg.FirstField(t, keys, "pub", 3), gnupg.FirstField(t, keys, "pub", 16); algo != "22" || curve != "ed25519" {
		t.Errorf("gpg sees primary key algorithm %s curve %s, want 22 ed25519", algo, curve)
	}
	if algo, curve := gnupg.FirstField(t, keys, "sub", 3), gnupg.FirstField(t, keys, "sub", 16); algo != "18" || curve != "cv25519" {
		t.Errorf("gpg sees subkey algorithm %s curve %s, want 18 cv25519", algo, curve)
	}
}

func TestGenerateRejectsBadUserIDs(t *testing.T) {
	for _, tc := range []struct{ name, email string }{
		{"", ""},
		{"Evil <x@y>", "e@example.invalid"},
		{"Line\nBreak", "l@example.invalid"},
	} {
		if _, err := Generate(tc.name, tc.email, time.Now()); err == nil {
			t.Errorf("Generate(%q, %q) succeeded, want an error", tc.name, tc.email)
		}
	}
}

// TestGPGVerifiesSignDetached checks that GnuPG imports ArmoredPublicKey and
// accepts SignDetached's signatures, and that they have the shape a git
// gpgsig header has.
func TestGPGVerifiesSignDetached(t *testing.T) {
	g := gnupg.New(t)
	id := mustGenerate(t, "Worker Two")
	g.Run(mustPublicKey(t, id), "--import")

	sig := mustSign(t, id, commitLike)
	if !strings.HasPrefix(sig, "-----BEGIN PGP SIGNATURE-----\n") || !strings.HasSuffix(sig, "\n-----END PGP SIGNATURE-----\n") {
		t.Errorf("signature is not an armored block ending in a newline:\n%s", sig)
	}
	packets := g.Run([]byte(sig), "--list-packets")
	for _, want := range []string{"version 4,", "sigclass 0x00", "digest algo 8,", "issuer fpr v4 " + id.Fingerprint()} {
		if !strings.Contains(packets, want) {
			t.Errorf("gpg --list-packets of the signature lacks %q:\n%s", want, packets)
		}
	}

	sigFile := g.File("sig.asc", []byte(sig))
	out, errOut, err := g.Try(nil, "--status-fd", "1", "--verify", sigFile, g.File("msg", commitLike))
	if err != nil {
		t.Fatalf("gpg --verify: %v\n%s%s", err, out, errOut)
	}
	if good := gnupg.Status(out, "GOODSIG"); len(good) != 1 || !strings.HasSuffix(good[0], " "+id.UserID()) {
		t.Errorf("GOODSIG lines %q, want one for %s", good, id.UserID())
	}
	valid := gnupg.Status(out, "VALIDSIG")
	if len(valid) != 1 || !strings.HasPrefix(valid[0], id.Fingerprint()+" ") || !strings.HasSuffix(valid[0], " "+id.Fingerprint()) {
		t.Errorf("VALIDSIG lines %q, want one for %s", valid, id.Fingerprint())
	}

	tampered := append(bytes.Clone(commitLike), '!')
	out, _, err = g.Try(nil, "--status-fd", "1", "--verify", sigFile, g.File("tampered", tampered))
	if err == nil || len(gnupg.Status(out, "BADSIG")) != 1 {
		t.Errorf("gpg accepted a tampered message: %v\n%s", err, out)
	}
}

// TestGPGDecryptsForSubkey checks the encryption subkey works with GnuPG both
// ways: GnuPG decrypts what go-crypto encrypts to the public key, and
// go-crypto decrypts what GnuPG encrypts to it.
func TestGPGDecryptsForSubkey(t *testing.T) {
	g := gnupg.New(t)
	id := mustGenerate(t, "Worker Three")
	priv, err := id.armoredPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	g.Run(priv, "--pinentry-mode", "loopback", "--passphrase", "", "--import")
	secret := []byte("SECRET_TOKEN=hunter2\n")

	// go-crypto encrypts to the public key alone, as another machine would.
	pub, err := ReadKeyring(bytes.NewReader(mustPublicKey(t, id)))
	if err != nil {
		t.Fatal(err)
	}
	var ct bytes.Buffer
	w, err := openpgp.Encrypt(&ct, pub.entities, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(secret)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := g.Try(ct.Bytes(), "--pinentry-mode", "loopback", "--passphrase", "", "--decrypt")
	if err != nil || out != string(secret) {
		t.Errorf("gpg --decrypt = %q, %v, want %q\n%s", out, err, secret, errOut)
	}

	gpgCT := g.Run(secret, "--trust-model", "always", "--armor", "--encrypt", "--recipient", id.Fingerprint())
	block, err := armor.Decode(strings.NewReader(gpgCT))
	if err != nil {
		t.Fatal(err)
	}
	md, err := openpgp.ReadMessage(block.Body, openpgp.EntityList{id.Entity()}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(md.UnverifiedBody)
	if err != nil || !bytes.Equal(plain, secret) {
		t.Errorf("go-crypto decrypted %q, %v, want %q", plain, err, secret)
	}
}

func TestSignDetachedConcurrently(t *testing.T) {
	id := mustGenerate(t, "Worker Four")
	var k Keyring
	k.Add(id)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := append(bytes.Clone(commitLike), byte(i))
			sig, err := id.SignDetached(msg)
			if err == nil {
				_, err = k.VerifyDetached(msg, sig)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestGenerateRefusesFutureKey(t *testing.T) {
	// A key created in the future is not valid yet, so not usable.
	_, err := Generate("Future", "f@example.invalid", time.Now().Add(time.Hour))
	if err == nil {
		t.Fatal("Generate with a creation time in the future succeeded")
	}
	if !strings.Contains(err.Error(), "no usable signing key") {
		t.Errorf("error %q does not say why", err)
	}
	if errors.Is(err, ErrBadSignature) {
		t.Errorf("error %v wraps a verification error", err)
	}
}

func BenchmarkSignDetached(b *testing.B) {
	id := mustGenerate(b, "Bench")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := id.SignDetached(commitLike); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyDetached(b *testing.B) {
	id := mustGenerate(b, "Bench")
	var k Keyring
	k.Add(id)
	sig := mustSign(b, id, commitLike)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.VerifyDetached(commitLike, sig); err != nil {
			b.Fatal(err)
		}
	}
}
