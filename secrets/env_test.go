package secrets

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"refci.dev/refci/fixtures/gnupg"
)

func keyringOf(t testing.TB, ids ...*Identity) Keyring {
	t.Helper()
	var k Keyring
	k.Add(ids...)
	return k
}

func TestSealOpenRecipientsAndWriters(t *testing.T) {
	admin, w1, w2, outsider := mustGenerate(t, "Admin"), mustGenerate(t, "Worker One"), mustGenerate(t, "Worker Two"), mustGenerate(t, "Outsider")
	value := []byte("s3cr3t-token\nsecond line")
	sealed, err := admin.Seal(value, keyringOf(t, w1, w2, admin))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(sealed, []byte("-----BEGIN PGP MESSAGE-----\n")) || bytes.Contains(sealed, []byte("s3cr3t")) {
		t.Fatalf("sealed value is not an armored message hiding the value:\n%s", sealed)
	}
	admins := keyringOf(t, admin)
	for _, id := range []*Identity{w1, w2, admin} {
		got, who, err := id.Open(sealed, admins)
		if err != nil {
			t.Fatalf("%s: Open: %v", id.UserID(), err)
		}
		if !bytes.Equal(got, value) || who.Fingerprint != admin.Fingerprint() {
			t.Errorf("%s: Open = %q by %s, want %q by %s", id.UserID(), got, who.Fingerprint, value, admin.Fingerprint())
		}
	}
	if _, _, err := outsider.Open(sealed, admins); !errors.Is(err, ErrNotRecipient) {
		t.Errorf("outsider Open: %v, want ErrNotRecipient", err)
	}
	// A recipient may not write: its signature is not an admin's, even
	// though the recipient itself opens the message.
	forged, err := w1.Seal([]byte("forged-value"), keyringOf(t, w1, w2))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []*Identity{w1, w2} {
		if _, _, err := id.Open(forged, admins); !errors.Is(err, ErrWriterNotAllowed) {
			t.Errorf("%s: Open of a value signed by a worker: %v, want ErrWriterNotAllowed", id.UserID(), err)
		}
	}
	// A corrupted message is refused.
	bad := bytes.Replace(sealed, []byte("\n"), []byte("\nAAAA"), 3)
	if _, _, err := w1.Open(bad, admins); err == nil {
		t.Error("Open of a corrupted message succeeded")
	}
}

func TestRemovedRecipientCannotOpenNewVersion(t *testing.T) {
	admin, w1, w2 := mustGenerate(t, "Admin"), mustGenerate(t, "Worker One"), mustGenerate(t, "Worker Two")
	recipients := keyringOf(t, admin, w1, w2)
	old, err := admin.Seal([]byte("version-one"), recipients)
	if err != nil {
		t.Fatal(err)
	}
	recipients, found := recipients.Without(strings.ToLower(w2.Fingerprint()))
	if !found || recipients.Has(w2.Fingerprint()) || len(recipients.Keys()) != 2 {
		t.Fatalf("Without: found %v, keys %v", found, recipients.Keys())
	}
	// Re-encryption, as `refci secrets recipients remove` does it.
	v, _, err := admin.Open(old, keyringOf(t, admin))
	if err != nil {
		t.Fatal(err)
	}
	reSealed, err := admin.Seal(v, recipients)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := w2.Open(reSealed, keyringOf(t, admin)); !errors.Is(err, ErrNotRecipient) {
		t.Errorf("removed recipient opens the new version: %v", err)
	}
	if got, _, err := w1.Open(reSealed, keyringOf(t, admin)); err != nil || string(got) != "version-one" {
		t.Errorf("remaining recipient: %q, %v", got, err)
	}
}

func TestGPGDecryptsSealedValue(t *testing.T) {
	g := gnupg.New(t)
	admin, w1, w2 := mustGenerate(t, "Admin"), mustGenerate(t, "Worker One"), mustGenerate(t, "Worker Two")
	priv, err := w2.armoredPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	g.Run(priv, "--import")
	g.Run(mustPublicKey(t, admin), "--import")
	value := []byte("netlify-token-0123456789")
	sealed, err := admin.Seal(value, keyringOf(t, w1, w2))
	if err != nil {
		t.Fatal(err)
	}
	packets := g.Run(sealed, "--list-packets")
	if strings.Contains(packets, "aead") || strings.Contains(packets, "AEAD") || !strings.Contains(packets, "mdc_method: 2") {
		t.Errorf("the message is not SEIPDv1 with MDC:\n%s", packets)
	}
	if n := strings.Count(packets, ":pubkey enc packet:"); n != 2 {
		t.Errorf("%d public-key encrypted session keys, want 2:\n%s", n, packets)
	}
	out, errOut, err := g.Try(sealed, "--status-fd", "2", "--decrypt")
	if err != nil {
		t.Fatalf("gpg --decrypt: %v\n%s", err, errOut)
	}
	if out != string(value) {
		t.Errorf("gpg decrypted %q, want %q", out, value)
	}
	if v := gnupg.Status(errOut, "VALIDSIG"); len(v) != 1 || !strings.Contains(v[0], admin.Fingerprint()) {
		t.Errorf("gpg did not report a valid signature by the admin:\n%s", errOut)
	}
}

func TestOpenAcceptsGPGEncryptedValue(t *testing.T) {
	g := gnupg.New(t)
	adminFpr := g.GenKey("GPG Admin <admin@example.invalid>", "ed25519", "sign", "never")
	w1, w2 := mustGenerate(t, "Worker One"), mustGenerate(t, "Worker Two")
	g.Run(mustPublicKey(t, w1), "--import")
	g.Run(mustPublicKey(t, w2), "--import")
	value := "value-from-gpg\n"
	sealed := g.Run([]byte(value), "--armor", "--trust-model", "always", "--encrypt", "--sign",
		"--local-user", adminFpr, "--recipient", w1.Fingerprint(), "--recipient", w2.Fingerprint())
	admins, err := ReadKeyring(strings.NewReader(g.Run(nil, "--armor", "--export", adminFpr)))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []*Identity{w1, w2} {
		got, who, err := id.Open([]byte(sealed), admins)
		if err != nil || string(got) != value || who.Fingerprint != adminFpr {
			t.Errorf("%s: Open = %q by %s, %v; want %q by %s", id.UserID(), got, who.Fingerprint, err, value, adminFpr)
		}
	}
	// Encrypted but unsigned: refused.
	unsigned := g.Run([]byte(value), "--armor", "--trust-model", "always", "--encrypt", "--recipient", w1.Fingerprint())
	if _, _, err := w1.Open([]byte(unsigned), admins); !errors.Is(err, ErrUnsignedValue) {
		t.Errorf("unsigned value: %v, want ErrUnsignedValue", err)
	}
	// Signed but not encrypted: refused.
	clear := g.Run([]byte(value), "--armor", "--sign", "--local-user", adminFpr)
	if _, _, err := w1.Open([]byte(clear), admins); !errors.Is(err, ErrUnsignedValue) {
		t.Errorf("signed plaintext: %v, want ErrUnsignedValue", err)
	}
}

func TestKeyringArmoredRoundTrip(t *testing.T) {
	a, b := mustGenerate(t, "A Key"), mustGenerate(t, "B Key")
	k := keyringOf(t, a, b, a)
	arm, err := k.Armored()
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(arm, []byte("-----BEGIN PGP PUBLIC KEY BLOCK-----")); n != 2 {
		t.Errorf("%d key blocks, want 2 (duplicates dropped)", n)
	}
	again, err := ReadKeyring(bytes.NewReader(arm))
	if err != nil {
		t.Fatal(err)
	}
	arm2, _ := again.Armored()
	if !bytes.Equal(arm, arm2) {
		t.Error("Armored is not stable across a round trip")
	}
	keys := again.Keys()
	if len(keys) != 2 || !keys[0].CanEncrypt || !again.Has(a.Fingerprint()) || !again.Has(b.Fingerprint()) {
		t.Errorf("Keys() = %+v", keys)
	}
	g := gnupg.New(t)
	out := g.Run(arm, "--with-colons", "--show-keys")
	if strings.Count(out, "\nfpr:")+strings.Count(out[:min(len(out), 4)], "fpr:") < 2 {
		t.Errorf("gpg does not see both keys:\n%s", out)
	}
}

func TestValidateNameAndValue(t *testing.T) {
	for _, ok := range []string{"NETLIFY_TOKEN", "_X", "A1"} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "lower", "1ABC", "A-B", "A/B", "../X", strings.Repeat("A", 129)} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("ValidateName(%q) succeeded", bad)
		}
	}
	if err := ValidateValue([]byte("12345")); err == nil || !strings.Contains(err.Error(), "shorter than 6") {
		t.Errorf("short value: %v", err)
	}
	if err := ValidateValue([]byte("123456")); err != nil {
		t.Errorf("6-byte value: %v", err)
	}
}

func TestPolicy(t *testing.T) {
	def, err := ParsePolicy(nil)
	if err != nil {
		t.Fatal(err)
	}
	if ok, why := def.Allows("main", false); ok || !strings.Contains(why, "not trusted") {
		t.Errorf("default policy admits an untrusted request: %v %q", ok, why)
	}
	if ok, _ := def.Allows("anything", true); !ok {
		t.Error("default policy refuses a trusted request")
	}
	p, err := ParsePolicy([]byte("requests = [\"main\", \"release/*\"]\nenvironment = [\"TOKEN\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	for req, want := range map[string]bool{"main": true, "release/1.0": true, "release/1/x": false, "alice/topic": false} {
		if ok, why := p.Allows(req, true); ok != want {
			t.Errorf("Allows(%q) = %v (%s), want %v", req, ok, why, want)
		}
	}
	back, err := ParsePolicy(p.Encode())
	if err != nil || len(back.Requests) != 2 || back.Environment[0] != "TOKEN" || back.AllowUntrusted {
		t.Errorf("Encode round trip: %+v, %v\n%s", back, err, p.Encode())
	}
	for _, bad := range []string{"allow = true", "requests = [\"[\"]", "environment = [\"bad-name\"]", "requests = 3"} {
		if _, err := ParsePolicy([]byte(bad)); err == nil {
			t.Errorf("ParsePolicy(%q) succeeded", bad)
		}
	}
}
