// Package secrets holds refci's OpenPGP operations: worker identities,
// signing and verifying, and the values of secrets environments (sealed
// to recipients, signed by admins; see env.go) with their policy. It knows
// nothing about git: callers hand it bytes.
//
// Keys are made to be read by stock GnuPG 2.2: version 4 keys with an
// Ed25519 primary key (the legacy EdDSA algorithm, 22) for signing and a
// Curve25519 ECDH subkey for encryption. No version 6 key, no AEAD or SEIPDv2
// preference and no Argon2-protected secret key is ever written.
package secrets

import (
	"crypto"
	"errors"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// Errors returned by [Keyring.VerifyDetached]. Callers branch on them with
// errors.Is; the returned error wraps one of them and adds detail, such as
// the issuer of a signature by an unknown key.
var (
	// ErrNoSignature means the signature was empty: the data is unsigned.
	ErrNoSignature = errors.New("secrets: no signature")
	// ErrUnknownKey means a well-formed signature was made by a key that
	// is not in the keyring.
	ErrUnknownKey = errors.New("secrets: signed by a key not in the keyring")
	// ErrBadSignature means the signature is malformed, does not match the
	// message, or was made by a key that may not sign.
	ErrBadSignature = errors.New("secrets: bad signature")
	// ErrKeyExpired means the signature was made by a key of the keyring
	// that has expired (or whose creation time is still in the future), or
	// the signature itself has expired.
	ErrKeyExpired = errors.New("secrets: signing key or signature expired")
	// ErrKeyRevoked means the signature was made by a key of the keyring
	// that has been revoked.
	ErrKeyRevoked = errors.New("secrets: signing key revoked")
)

// signatureHash is the digest of every signature this package makes.
const signatureHash = crypto.SHA256

// keyConfig is the go-crypto configuration for generating a key created at
// now. Each field that matters for GnuPG 2.2 is spelled out:
//   - V6Keys false: a version 4 key;
//   - Algorithm PubKeyAlgoEdDSA with Curve25519: legacy EdDSA (22) on
//     Ed25519, and NewEntity then adds an ECDH subkey on Curve25519;
//   - AEADConfig nil: the self-signature's Features subpacket carries only
//     the SEIPDv1 (MDC) bit, and no preferred AEAD ciphersuites.
func keyConfig(now time.Time) *packet.Config {
	return &packet.Config{
		V6Keys:        false,
		Algorithm:     packet.PubKeyAlgoEdDSA,
		Curve:         packet.Curve25519,
		DefaultHash:   signatureHash,
		DefaultCipher: packet.CipherAES256,
		AEADConfig:    nil,
		Time:          func() time.Time { return now },
	}
}

// signConfig is the go-crypto configuration for signing messages. It is
// read-only: go-crypto only calls its getters.
var signConfig = &packet.Config{DefaultHash: signatureHash}
