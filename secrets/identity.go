package secrets

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// Identity is a worker's or user's OpenPGP key pair with its private key
// material unlocked, ready to sign.
//
// Get one from [Generate], [Load] or [LoadOrCreate]; the zero Identity holds
// no key and its methods must not be called. An Identity is never modified
// after construction and is safe for concurrent use.
type Identity struct {
	entity      *openpgp.Entity
	fingerprint string
	userID      string
}

// Generate makes a new key pair for name and email, created at now: a v4
// Ed25519 primary key (legacy EdDSA algorithm 22) that certifies and signs,
// and a Curve25519 ECDH subkey that encrypts. Neither expires.
//
// now is the key's creation time, normally time.Now(). It must not be in the
// future: such a key cannot sign yet, and Generate refuses to make it.
func Generate(name, email string, now time.Time) (*Identity, error) {
	if name == "" && email == "" {
		return nil, errors.New("secrets: generate key: name and email are both empty")
	}
	if strings.ContainsFunc(name+email, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return nil, errors.New("secrets: generate key: name or email contains a control character")
	}
	e, err := openpgp.NewEntity(name, "", email, keyConfig(now))
	if err != nil {
		return nil, fmt.Errorf("secrets: generate key for %q <%s>: %w", name, email, err)
	}
	id, err := newIdentity(e)
	if err != nil {
		return nil, fmt.Errorf("secrets: generate key: %w", err)
	}
	return id, nil
}

// newIdentity wraps e after checking it can sign now and holds no locked or
// missing secret key material. Its errors are for the caller to prefix.
func newIdentity(e *openpgp.Entity) (*Identity, error) {
	if e.PrivateKey == nil {
		return nil, errors.New("not a private key: the file holds only a public key")
	}
	if e.PrimaryKey.Version != 4 {
		return nil, fmt.Errorf("version %d keys are not supported (GnuPG 2.2 reads only version 4)", e.PrimaryKey.Version)
	}
	if e.PrivateKey.Dummy() {
		return nil, errors.New("the primary secret key is missing (a GnuPG stub, e.g. from --export-secret-subkeys); export the full secret key")
	}
	encrypted := e.PrivateKey.Encrypted
	for _, sub := range e.Subkeys {
		encrypted = encrypted || sub.PrivateKey != nil && sub.PrivateKey.Encrypted
	}
	if encrypted {
		return nil, errors.New("the secret key is protected by a passphrase, which refci does not support; " +
			"remove it (gpg --passwd KEYID, then an empty passphrase) and export the key again")
	}
	signing, ok := e.SigningKey(time.Now())
	if !ok {
		return nil, errors.New("the key has no usable signing key (expired, revoked, created in the future, or not allowed to sign)")
	}
	if signing.PrivateKey == nil || signing.PrivateKey.Dummy() {
		return nil, errors.New("the secret part of the signing key is missing")
	}
	switch algo := signing.PublicKey.PubKeyAlgo; algo {
	case packet.PubKeyAlgoEdDSA, packet.PubKeyAlgoECDSA, packet.PubKeyAlgoRSA, packet.PubKeyAlgoRSASignOnly:
	default:
		return nil, fmt.Errorf("signing key algorithm %d is not supported (GnuPG 2.2 could not verify its signatures)", algo)
	}
	return &Identity{
		entity:      e,
		fingerprint: fingerprint(e.PrimaryKey),
		userID:      userID(e),
	}, nil
}

// fingerprint formats a key's fingerprint as GnuPG prints it in its status
// lines: upper-case hexadecimal without spaces.
func fingerprint(pk *packet.PublicKey) string {
	return fmt.Sprintf("%X", pk.Fingerprint)
}

// userID returns e's primary user ID, or "" if it has none.
func userID(e *openpgp.Entity) string {
	if id := e.PrimaryIdentity(); id != nil {
		return id.Name
	}
	return ""
}

// Fingerprint returns the primary key's fingerprint: 40 upper-case
// hexadecimal characters, as in GnuPG's VALIDSIG status line.
func (id *Identity) Fingerprint() string { return id.fingerprint }

// UserID returns the primary user ID, "Name <email>".
func (id *Identity) UserID() string { return id.userID }

// Entity returns the underlying go-crypto entity, private key included.
// Callers must not modify it.
func (id *Identity) Entity() *openpgp.Entity { return id.entity }

// ArmoredPublicKey returns the public key, with its user ID, subkey and
// self-signatures, as an armored "PGP PUBLIC KEY BLOCK" that GnuPG imports.
func (id *Identity) ArmoredPublicKey() ([]byte, error) {
	var buf bytes.Buffer
	w, err := armor.Encode(&buf, openpgp.PublicKeyType, nil)
	if err != nil {
		return nil, err
	}
	if err := id.entity.Serialize(w); err != nil {
		return nil, fmt.Errorf("secrets: serialize public key: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

// armoredPrivateKey returns the unprotected secret key as an armored
// "PGP PRIVATE KEY BLOCK".
func (id *Identity) armoredPrivateKey() ([]byte, error) {
	var buf bytes.Buffer
	w, err := armor.Encode(&buf, openpgp.PrivateKeyType, nil)
	if err != nil {
		return nil, err
	}
	// The self-signatures are already valid: write them as they are rather
	// than re-signing.
	if err := id.entity.SerializePrivateWithoutSigning(w, nil); err != nil {
		return nil, fmt.Errorf("secrets: serialize private key: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

// SignDetached signs message and returns the armored detached signature
// ("-----BEGIN PGP SIGNATURE-----" ... "-----END PGP SIGNATURE-----\n"): a
// binary-mode SHA-256 signature, exactly what a git commit's gpgsig header
// holds. It signs with the newest valid signing subkey if the key has one,
// else with the primary key.
func (id *Identity) SignDetached(message []byte) (string, error) {
	var b strings.Builder
	b.Grow(300)
	if err := openpgp.ArmoredDetachSign(&b, id.entity, bytes.NewReader(message), signConfig); err != nil {
		return "", fmt.Errorf("secrets: sign with key %s: %w", id.fingerprint, err)
	}
	b.WriteByte('\n')
	return b.String(), nil
}
