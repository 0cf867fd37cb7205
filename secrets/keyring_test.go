package secrets

import (
	"bytes"
	"crypto"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"

	"refci.dev/refci/fixtures/gnupg"
)

// TestVerifyGPGSignature checks that a key and a signature made by GnuPG
// itself verify, with the GnuPG key's fingerprint, and that a tampered
// message does not.
func TestVerifyGPGSignature(t *testing.T) {
	g := gnupg.New(t)
	fpr := g.GenKey("Test <t@example.invalid>", "ed25519", "sign", "never")
	sig := g.Run(commitLike, "--armor", "--detach-sign", "--local-user", fpr)

	k, err := ReadKeyring(strings.NewReader(g.Run(nil, "--armor", "--export", fpr)))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := k.VerifyDetached(commitLike, sig)
	if err != nil {
		t.Fatalf("VerifyDetached of a gpg signature: %v", err)
	}
	if want := (Signer{Fingerprint: fpr, UserID: "Test <t@example.invalid>"}); signer != want {
		t.Errorf("signer = %+v, want %+v", signer, want)
	}

	tampered := bytes.Replace(commitLike, []byte("success"), []byte("failure"), 1)
	if _, err := k.VerifyDetached(tampered, sig); !errors.Is(err, ErrBadSignature) {
		t.Errorf("VerifyDetached of a tampered message: %v, want ErrBadSignature", err)
	}
}

// TestVerifyGPGSubkeySignature checks that a signature by a signing subkey
// is reported with the primary key's fingerprint.
func TestVerifyGPGSubkeySignature(t *testing.T) {
	g := gnupg.New(t)
	fpr := g.GenKey("Sub <sub@example.invalid>", "ed25519", "cert", "never")
	g.Run(nil, "--passphrase", "", "--pinentry-mode", "loopback", "--quick-add-key", fpr, "ed25519", "sign", "never")
	sig := g.Run(commitLike, "--armor", "--detach-sign", "--local-user", fpr)
	if packets := g.Run([]byte(sig), "--list-packets"); strings.Contains(packets, fpr) {
		t.Fatalf("gpg signed with the primary key, not the subkey:\n%s", packets)
	}
	k, err := ReadKeyring(strings.NewReader(g.Run(nil, "--armor", "--export", fpr)))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := k.VerifyDetached(commitLike, sig)
	if err != nil || signer.Fingerprint != fpr {
		t.Errorf("VerifyDetached = %+v, %v, want primary fingerprint %s", signer, err, fpr)
	}
}

func TestVerifyErrors(t *testing.T) {
	trusted := mustGenerate(t, "Trusted")
	stranger := mustGenerate(t, "Stranger")
	var k Keyring
	k.Add(trusted)
	good := mustSign(t, trusted, commitLike)
	bySranger := mustSign(t, stranger, commitLike)
	other := mustSign(t, trusted, []byte("another message"))

	for _, tc := range []struct {
		name    string
		keyring Keyring
		msg     []byte
		sig     string
		want    error
	}{
		{"empty", k, commitLike, "", ErrNoSignature},
		{"blank", k, commitLike, " \n\t\n", ErrNoSignature},
		{"unknown key", k, commitLike, bySranger, ErrUnknownKey},
		{"empty keyring", Keyring{}, commitLike, good, ErrUnknownKey},
		{"tampered message", k, append(bytes.Clone(commitLike), '\n'), good, ErrBadSignature},
		{"empty message", k, nil, good, ErrBadSignature},
		{"signature of another message", k, commitLike, other, ErrBadSignature},
		{"garbage", k, commitLike, "this is not a signature", ErrBadSignature},
		{"garbage armor", k, commitLike, "-----BEGIN PGP SIGNATURE-----\n\n!!!!\n-----END PGP SIGNATURE-----\n", ErrBadSignature},
		{"empty armor", k, commitLike, "-----BEGIN PGP SIGNATURE-----\n\n-----END PGP SIGNATURE-----\n", ErrBadSignature},
		{"truncated", k, commitLike, good[:len(good)/2], ErrBadSignature},
		{"flipped byte", k, commitLike, flipBase64(good), ErrBadSignature},
		{"public key block", k, commitLike, string(mustPublicKey(t, trusted)), ErrBadSignature},
		{"two signatures", k, commitLike, good + bySranger, ErrBadSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			signer, err := tc.keyring.VerifyDetached(tc.msg, tc.sig)
			if !errors.Is(err, tc.want) {
				t.Fatalf("VerifyDetached = %+v, %v; want %v", signer, err, tc.want)
			}
			if signer != (Signer{}) {
				t.Errorf("failed VerifyDetached returned signer %+v", signer)
			}
		})
	}

	// The stranger is named, so the user can tell whose key to add.
	_, err := k.VerifyDetached(commitLike, bySranger)
	if !strings.Contains(err.Error(), stranger.Fingerprint()) {
		t.Errorf("error %q does not name the issuer %s", err, stranger.Fingerprint())
	}
	if signer, err := k.VerifyDetached(commitLike, good); err != nil || signer.Fingerprint != trusted.Fingerprint() {
		t.Errorf("VerifyDetached of a good signature = %+v, %v", signer, err)
	}
}

// flipBase64 changes one character in the middle of an armored block's
// first base64 line.
func flipBase64(armored string) string {
	lines := strings.Split(armored, "\n")
	b := []byte(lines[2])
	b[len(b)/2] ^= 'A' ^ 'B'
	if b[len(b)/2] == lines[2][len(b)/2] {
		b[len(b)/2] = 'Q'
	}
	lines[2] = string(b)
	return strings.Join(lines, "\n")
}

// TestVerifyRefusesNonSigningSubkey signs with a GnuPG-made authentication
// subkey (as used for SSH), which GnuPG itself would not sign with.
func TestVerifyRefusesNonSigningSubkey(t *testing.T) {
	g := gnupg.New(t)
	fpr := g.GenKey("Auth <auth@example.invalid>", "ed25519", "sign", "never")
	g.Run(nil, "--passphrase", "", "--pinentry-mode", "loopback", "--quick-add-key", fpr, "ed25519", "auth", "never")
	id, err := Load(g.File("key.asc", []byte(g.Run(nil, "--pinentry-mode", "loopback", "--passphrase", "", "--armor", "--export-secret-keys", fpr))))
	if err != nil {
		t.Fatal(err)
	}
	subs := id.Entity().Subkeys
	if len(subs) != 1 || !subs[0].Sig.FlagAuthenticate || subs[0].Sig.FlagSign {
		t.Fatalf("want one authentication-only subkey, got %d", len(subs))
	}
	auth := subs[0].PrivateKey

	// Sign by hand: go-crypto too refuses to pick this key for signing.
	sig := &packet.Signature{
		Version:           4,
		SigType:           packet.SigTypeBinary,
		PubKeyAlgo:        auth.PubKeyAlgo,
		Hash:              crypto.SHA256,
		CreationTime:      time.Now(),
		IssuerKeyId:       &auth.KeyId,
		IssuerFingerprint: auth.Fingerprint,
	}
	h, err := sig.PrepareSign(nil)
	if err != nil {
		t.Fatal(err)
	}
	h.Write(commitLike)
	if err := sig.Sign(h, auth, nil); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w, _ := armor.Encode(&buf, "PGP SIGNATURE", nil)
	if err := sig.Serialize(w); err != nil {
		t.Fatal(err)
	}
	w.Close()

	k, err := ReadKeyring(strings.NewReader(g.Run(nil, "--armor", "--export", fpr)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = k.VerifyDetached(commitLike, buf.String())
	if !errors.Is(err, ErrBadSignature) || !strings.Contains(err.Error(), "may not sign") {
		t.Errorf("VerifyDetached of an authentication subkey's signature: %v, want ErrBadSignature (may not sign)", err)
	}
	// The same key's real signing key is fine.
	if _, err := k.VerifyDetached(commitLike, mustSign(t, id, commitLike)); err != nil {
		t.Errorf("VerifyDetached of the primary key's signature: %v", err)
	}
}

// TestVerifyRefusesExpiredKey uses a key GnuPG made in 2020 that expired a
// day later, and a signature made while it was valid.
func TestVerifyRefusesExpiredKey(t *testing.T) {
	g := gnupg.New(t)
	fpr := g.GenKey("Old <old@example.invalid>", "ed25519", "sign", "1d", "--faked-system-time", "20200101T000000!")
	sig := g.Run(commitLike, "--faked-system-time", "20200101T010000!", "--armor", "--detach-sign", "--local-user", fpr)
	k, err := ReadKeyring(strings.NewReader(g.Run(nil, "--armor", "--export", fpr)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.VerifyDetached(commitLike, sig); !errors.Is(err, ErrKeyExpired) || !strings.Contains(err.Error(), fpr) {
		t.Errorf("VerifyDetached with an expired key: %v, want ErrKeyExpired naming %s", err, fpr)
	}
}

// TestVerifyRefusesRevokedKey revokes a key with the revocation certificate
// GnuPG made with it.
func TestVerifyRefusesRevokedKey(t *testing.T) {
	g := gnupg.New(t)
	fpr := g.GenKey("Revoked <rev@example.invalid>", "ed25519", "sign", "never")
	sig := g.Run(commitLike, "--armor", "--detach-sign", "--local-user", fpr)
	before, err := ReadKeyring(strings.NewReader(g.Run(nil, "--armor", "--export", fpr)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := before.VerifyDetached(commitLike, sig); err != nil {
		t.Fatalf("before revocation: %v", err)
	}

	rev, err := os.ReadFile(filepath.Join(g.Home, "openpgp-revocs.d", fpr+".rev"))
	if err != nil {
		t.Fatal(err)
	}
	// GnuPG guards the certificate against accidental import with a colon.
	rev = bytes.Replace(rev, []byte(":-----BEGIN"), []byte("-----BEGIN"), 1)
	g.Run(rev, "--import")
	after, err := ReadKeyring(strings.NewReader(g.Run(nil, "--armor", "--export", fpr)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := after.VerifyDetached(commitLike, sig); !errors.Is(err, ErrKeyRevoked) {
		t.Errorf("VerifyDetached with a revoked key: %v, want ErrKeyRevoked", err)
	}
}

// TestReadKeyringFormats reads concatenated armored blocks, binary keys and
// files, and checks bad input is refused.
func TestReadKeyringFormats(t *testing.T) {
	g := gnupg.New(t)
	a := g.GenKey("A <a@example.invalid>", "ed25519", "sign", "never")
	b := g.GenKey("B <b@example.invalid>", "nistp256", "sign", "never")
	sigA := g.Run(commitLike, "--armor", "--detach-sign", "--local-user", a)
	sigB := g.Run(commitLike, "--armor", "--detach-sign", "--local-user", b)
	armoredA := g.Run(nil, "--armor", "--export", a)
	armoredB := g.Run(nil, "--armor", "--export", b)
	ours := mustGenerate(t, "Ours")
	ourPub := string(mustPublicKey(t, ours))

	check := func(name string, k Keyring, want int) {
		t.Helper()
		if k.Len() != want {
			t.Errorf("%s: Len() = %d, want %d", name, k.Len(), want)
		}
		for _, tc := range []struct{ sig, fpr string }{{sigA, a}, {sigB, b}} {
			if s, err := k.VerifyDetached(commitLike, tc.sig); err != nil || s.Fingerprint != tc.fpr {
				t.Errorf("%s: VerifyDetached = %+v, %v; want %s", name, s, err, tc.fpr)
			}
		}
	}

	k, err := ReadKeyring(strings.NewReader("comment\n" + armoredA + "\n" + armoredB + ourPub))
	if err != nil {
		t.Fatal(err)
	}
	check("concatenated armor", k, 3)
	if _, err := k.VerifyDetached(commitLike, mustSign(t, ours, commitLike)); err != nil {
		t.Errorf("concatenated armor: our key: %v", err)
	}

	k, err = ReadKeyring(strings.NewReader(g.Run(nil, "--export")))
	if err != nil {
		t.Fatal(err)
	}
	check("binary", k, 2)

	k, err = ReadKeyringFiles(g.File("a.asc", []byte(armoredA)), g.File("b.gpg", []byte(g.Run(nil, "--export", b))))
	if err != nil {
		t.Fatal(err)
	}
	check("files", k, 2)

	if k, err := ReadKeyringFiles(); err != nil || k.Len() != 0 {
		t.Errorf("ReadKeyringFiles() = %d keys, %v; want an empty keyring", k.Len(), err)
	}
	if _, err := ReadKeyringFiles(filepath.Join(t.TempDir(), "missing.asc")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadKeyringFiles(missing) error %v, want one wrapping os.ErrNotExist", err)
	}
	for name, bad := range map[string]string{
		"empty":     "",
		"garbage":   "not a key\n",
		"signature": sigA,
		"binary":    "\x99garbage",
	} {
		if _, err := ReadKeyring(strings.NewReader(bad)); err == nil {
			t.Errorf("ReadKeyring(%s) succeeded", name)
		}
	}
}

func TestKeyringAddDoesNotAlias(t *testing.T) {
	a, b, c := mustGenerate(t, "A"), mustGenerate(t, "B"), mustGenerate(t, "C")
	var base Keyring
	base.Add(a)
	withB, withC := base, base
	withB.Add(b)
	withC.Add(c)
	if base.Len() != 1 || withB.Len() != 2 || withC.Len() != 2 {
		t.Fatalf("lengths %d %d %d, want 1 2 2", base.Len(), withB.Len(), withC.Len())
	}
	if _, err := withB.VerifyDetached(commitLike, mustSign(t, b, commitLike)); err != nil {
		t.Errorf("withB lost B: %v", err)
	}
	if _, err := withB.VerifyDetached(commitLike, mustSign(t, c, commitLike)); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("withB trusts C: %v", err)
	}
	for _, e := range withB.entities {
		if e.PrivateKey != nil {
			t.Error("keyring holds a private key")
		}
	}
}

// ReadTrustedDir takes every *.asc of the directory and the public part
// of one's own key when its file is there; nothing there is an empty
// keyring, a broken file an error.
func TestReadTrustedDir(t *testing.T) {
	home := t.TempDir()
	dir, own := filepath.Join(home, "trusted"), filepath.Join(home, "key.asc")
	if k, err := ReadTrustedDir(dir, own); err != nil || k.Len() != 0 {
		t.Fatalf("nothing there: %d keys, %v", k.Len(), err)
	}
	a, b := mustGenerate(t, "Worker A"), mustGenerate(t, "Worker B")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, id := range map[string]*Identity{"a.asc": a, "b.asc": b} {
		pub, err := id.ArmoredPublicKey()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), pub, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not a key"), 0o644) // not *.asc: not read
	if k, err := ReadTrustedDir(dir, own); err != nil || k.Len() != 2 || !k.Has(a.Fingerprint()) || !k.Has(b.Fingerprint()) {
		t.Errorf("two trusted keys: %d keys, %v", k.Len(), err)
	}
	me, _, err := LoadOrCreate(own, "Me", "me@example.invalid")
	if err != nil {
		t.Fatal(err)
	}
	k, err := ReadTrustedDir(dir, own)
	if err != nil || k.Len() != 3 || !k.Has(me.Fingerprint()) {
		t.Errorf("with one's own key: %d keys, %v", k.Len(), err)
	}
	for _, e := range k.entities {
		if e.PrivateKey != nil {
			t.Error("the keyring holds the private key")
		}
	}
	os.WriteFile(filepath.Join(dir, "broken.asc"), []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxx\n"), 0o644)
	if _, err := ReadTrustedDir(dir, own); err == nil || !strings.Contains(err.Error(), "broken.asc") {
		t.Errorf("a broken trusted key: %v", err)
	}
}
