package secrets

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// Keyring is a set of public keys trusted to sign.
//
// The zero value is an empty keyring, which verifies nothing. Copies of a
// Keyring share its keys, but adding keys to one never changes another.
// Len and VerifyDetached may be called concurrently; Add must not run
// concurrently with any other use of the same Keyring.
type Keyring struct {
	entities openpgp.EntityList // public parts only
}

// ReadKeyring reads public keys from r: one or several concatenated armored
// blocks ("PGP PUBLIC KEY BLOCK", as `gpg --armor --export` writes; a
// "PGP PRIVATE KEY BLOCK" is accepted and only its public part kept), or
// binary keys (`gpg --export`). Keys go-crypto cannot use are skipped, but
// input with no usable key at all is an error.
func ReadKeyring(r io.Reader) (Keyring, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return Keyring{}, fmt.Errorf("secrets: read keyring: %w", err)
	}
	el, err := parseKeys(data)
	if err != nil {
		return Keyring{}, fmt.Errorf("secrets: read keyring: %w", err)
	}
	var k Keyring
	k.addEntities(el)
	return k, nil
}

// ReadKeyringFiles reads the keys of each file as ReadKeyring does and
// returns them all in one keyring. No paths give an empty keyring.
func ReadKeyringFiles(paths ...string) (Keyring, error) {
	var k Keyring
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			return Keyring{}, fmt.Errorf("secrets: read keyring: %w", err)
		}
		el, err := parseKeys(data)
		if err != nil {
			return Keyring{}, fmt.Errorf("secrets: read keyring %s: %w", path, err)
		}
		k.addEntities(el)
	}
	return k, nil
}

// armorStart begins every armored block.
const armorStart = "-----BEGIN PGP "

// parseKeys reads the keys in data: binary, or armored blocks, ignoring
// text around them.
func parseKeys(data []byte) (openpgp.EntityList, error) {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, errors.New("no keys found: empty input")
	}
	if trimmed[0]&0x80 != 0 { // every binary OpenPGP packet starts so
		el, err := openpgp.ReadKeyRing(bytes.NewReader(trimmed))
		if err != nil {
			return nil, fmt.Errorf("bad binary key: %v", err)
		}
		return el, nil
	}
	start := bytes.Index(trimmed, []byte(armorStart))
	if start < 0 {
		return nil, errors.New("not OpenPGP keys: no \"-----BEGIN PGP PUBLIC KEY BLOCK-----\" line")
	}
	trimmed = trimmed[start:]
	// go-crypto decodes one armored block per reader, so cut the input
	// at each block's start.
	var all openpgp.EntityList
	for len(trimmed) > 0 {
		next := bytes.Index(trimmed[1:], []byte(armorStart)) + 1
		if next == 0 {
			next = len(trimmed)
		}
		block, err := armor.Decode(bytes.NewReader(trimmed[:next]))
		trimmed = trimmed[next:]
		if err != nil {
			return nil, fmt.Errorf("bad armor: %v", err)
		}
		if block.Type != openpgp.PublicKeyType && block.Type != openpgp.PrivateKeyType {
			return nil, fmt.Errorf("found a %q block, want %q", block.Type, openpgp.PublicKeyType)
		}
		el, err := openpgp.ReadKeyRing(block.Body)
		if err != nil {
			return nil, fmt.Errorf("bad key: %v", err)
		}
		all = append(all, el...)
	}
	return all, nil
}

// Add adds the public keys of ids to k.
func (k *Keyring) Add(ids ...*Identity) {
	el := make(openpgp.EntityList, len(ids))
	for i, id := range ids {
		el[i] = id.entity
	}
	k.addEntities(el)
}

// addEntities adds the public parts of el to k.
func (k *Keyring) addEntities(el openpgp.EntityList) {
	// Cap the slice so append copies rather than writing into an array that
	// copies of k share.
	k.entities = k.entities[:len(k.entities):len(k.entities)]
	for _, e := range el {
		k.entities = append(k.entities, publicOnly(e))
	}
}

// publicOnly returns a shallow copy of e without its secret keys.
func publicOnly(e *openpgp.Entity) *openpgp.Entity {
	pub := *e
	pub.PrivateKey = nil
	pub.Subkeys = make([]openpgp.Subkey, len(e.Subkeys))
	for i, sub := range e.Subkeys {
		sub.PrivateKey = nil
		pub.Subkeys[i] = sub
	}
	return &pub
}

// Len returns the number of keys in k, counting duplicates.
func (k Keyring) Len() int { return len(k.entities) }

// Signer describes who made a valid signature. VerifyDetached returns the
// zero Signer, naming no one, with every error.
type Signer struct {
	// Fingerprint is the signer's primary key fingerprint, 40 upper-case
	// hexadecimal characters, even when a subkey made the signature.
	Fingerprint string
	// UserID is the signer's primary user ID, "Name <email>".
	UserID string
}

// weakHashes may not make a signature refci accepts.
var weakHashes = map[crypto.Hash]bool{crypto.MD5: true, crypto.SHA1: true, crypto.RIPEMD160: true}

// VerifyDetached checks that armoredSig, an armored detached signature
// holding exactly one signature (as in a git commit's gpgsig header), is a
// valid signature of message by a key of k, and returns who made it.
//
// The error wraps ErrNoSignature if armoredSig is empty or blank;
// ErrUnknownKey if the signature is well formed but made by a key that is
// not in k; ErrKeyExpired or ErrKeyRevoked if that key (or its signing
// subkey) is expired or revoked now; and ErrBadSignature in every other
// case: malformed signature, signature that does not match message, weak
// hash (MD5, SHA-1, RIPEMD-160), or a key of k that may not sign, such as an
// encryption or authentication subkey.
func (k Keyring) VerifyDetached(message []byte, armoredSig string) (Signer, error) {
	if strings.TrimSpace(armoredSig) == "" {
		return Signer{}, ErrNoSignature
	}
	if n := strings.Count(armoredSig, armorStart); n > 1 {
		return Signer{}, fmt.Errorf("%w: %d armored blocks, want one", ErrBadSignature, n)
	}
	block, err := armor.Decode(strings.NewReader(armoredSig))
	if err != nil {
		return Signer{}, fmt.Errorf("%w: not an armored OpenPGP signature", ErrBadSignature)
	}
	if block.Type != openpgp.SignatureType {
		return Signer{}, fmt.Errorf("%w: found a %q block, want %q", ErrBadSignature, block.Type, openpgp.SignatureType)
	}
	body, err := io.ReadAll(block.Body)
	if err != nil {
		return Signer{}, fmt.Errorf("%w: bad armor: %v", ErrBadSignature, err)
	}
	sig, err := onlySignature(body)
	if err != nil {
		return Signer{}, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	if weakHashes[sig.Hash] {
		return Signer{}, fmt.Errorf("%w: weak hash %v", ErrBadSignature, sig.Hash)
	}

	_, e, err := openpgp.VerifyDetachedSignature(k.entities, bytes.NewReader(message), bytes.NewReader(body), nil)
	switch {
	case err == nil:
		return Signer{Fingerprint: fingerprint(e.PrimaryKey), UserID: userID(e)}, nil
	case errors.Is(err, pgperrors.ErrUnknownIssuer):
		if len(k.entities.KeysById(*sig.IssuerKeyId)) > 0 {
			return Signer{}, fmt.Errorf("%w: made by %s, which may not sign", ErrBadSignature, issuer(sig))
		}
		return Signer{}, fmt.Errorf("%w: %s", ErrUnknownKey, issuer(sig))
	case errors.Is(err, pgperrors.ErrKeyRevoked):
		return Signer{}, fmt.Errorf("%w: key %s", ErrKeyRevoked, fingerprint(e.PrimaryKey))
	case errors.Is(err, pgperrors.ErrKeyExpired), errors.Is(err, pgperrors.ErrSignatureExpired):
		return Signer{}, fmt.Errorf("%w: key %s: %v", ErrKeyExpired, fingerprint(e.PrimaryKey), err)
	default:
		return Signer{}, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
}

// onlySignature parses body, which must hold exactly one signature packet
// naming its issuer.
func onlySignature(body []byte) (*packet.Signature, error) {
	r := packet.NewReader(bytes.NewReader(body))
	p, err := r.Next()
	if err == io.EOF {
		return nil, errors.New("no signature packet")
	}
	if err != nil {
		return nil, err
	}
	sig, ok := p.(*packet.Signature)
	if !ok {
		return nil, fmt.Errorf("found a %T packet, want a signature", p)
	}
	if sig.IssuerKeyId == nil {
		return nil, errors.New("the signature does not name its issuer")
	}
	if _, err := r.Next(); err != io.EOF {
		return nil, errors.New("more than one packet, want a single signature")
	}
	return sig, nil
}

// issuer describes who claims to have made sig.
func issuer(sig *packet.Signature) string {
	if len(sig.IssuerFingerprint) > 0 {
		return fmt.Sprintf("key %X", sig.IssuerFingerprint)
	}
	return fmt.Sprintf("key ID %016X", *sig.IssuerKeyId)
}

// ReadTrustedDir reads the keys a reader of results trusts when told of
// none: each dir/*.asc (armored public keys, as ReadKeyringFiles) and,
// when the file own is there, the public part of the private key in it
// (as Load). A dir without keys and an own file that is not there add
// nothing: the keyring may be empty. An unreadable file is an error.
func ReadTrustedDir(dir, own string) (Keyring, error) {
	trusted, _ := filepath.Glob(filepath.Join(dir, "*.asc"))
	k, err := ReadKeyringFiles(trusted...)
	if err != nil {
		return Keyring{}, err
	}
	if _, err := os.Stat(own); err == nil {
		id, err := Load(own)
		if err != nil {
			return Keyring{}, err
		}
		k.Add(id)
	}
	return k, nil
}
