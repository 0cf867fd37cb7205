package secrets

// Environments: the OpenPGP side of refs/ci/secrets/<env>. A value is one
// armored OpenPGP message, encrypted to every recipient of the environment
// and signed by the admin who wrote it. This file knows nothing about git:
// callers hand it bytes read from the environment's commit.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// Limits on values.
const (
	// MinValueLen is the shortest value refci stores or hands out. A
	// shorter value would be masked wherever its bytes happen to occur
	// in a log (over-masking), so it is refused instead.
	MinValueLen = 6
	// MaxValueLen is the longest value, in bytes.
	MaxValueLen = 64 << 10
)

// Errors of Open. The returned error wraps one of them and adds detail.
var (
	// ErrNotRecipient means the message is not encrypted to the key
	// trying to open it (for instance, a recipient removed since).
	ErrNotRecipient = errors.New("secrets: not encrypted to this key")
	// ErrUnsignedValue means the message carries no signature, or it is
	// not encrypted at all.
	ErrUnsignedValue = errors.New("secrets: value is not signed and encrypted")
	// ErrWriterNotAllowed means the value was signed by a key that is not
	// one of the allowed writers (the admins).
	ErrWriterNotAllowed = errors.New("secrets: value signed by a key that is not an admin")
)

// Factotum performs the operations that need a private key, so that the
// key itself never leaves it (the idea of Plan 9's and upspin's factotum).
// *Identity implements it. Implementations must be safe for concurrent use.
type Factotum interface {
	// Fingerprint is the primary key's fingerprint, 40 upper-case hex
	// digits; UserID is "Name <email>".
	Fingerprint() string
	UserID() string
	// SignDetached returns an armored detached signature of message.
	SignDetached(message []byte) (string, error)
	// Seal encrypts value to every key of recipients and signs it.
	Seal(value []byte, recipients Keyring) ([]byte, error)
	// Open decrypts sealed and checks that a key of writers signed it.
	Open(sealed []byte, writers Keyring) ([]byte, Signer, error)
}

var _ Factotum = (*Identity)(nil)

// messageConfig is used to write values: AES-256 in SEIPDv1 (MDC, no
// AEAD), SHA-256 signatures and no compression, which GnuPG 2.2 reads.
var messageConfig = &packet.Config{
	DefaultHash:            signatureHash,
	DefaultCipher:          packet.CipherAES256,
	DefaultCompressionAlgo: packet.CompressionNone,
	AEADConfig:             nil,
}

// armorMessage is the armor type of an OpenPGP message.
const armorMessage = "PGP MESSAGE"

// Seal encrypts value to every key in recipients and signs it with id.
// The result is an armored "PGP MESSAGE" that `gpg --decrypt` reads.
func (id *Identity) Seal(value []byte, recipients Keyring) ([]byte, error) {
	if len(recipients.entities) == 0 {
		return nil, errors.New("secrets: seal: no recipients")
	}
	var buf bytes.Buffer
	aw, err := armor.Encode(&buf, armorMessage, nil)
	if err != nil {
		return nil, err
	}
	pw, err := openpgp.Encrypt(aw, recipients.entities, id.entity, &openpgp.FileHints{IsBinary: true}, messageConfig)
	if err != nil {
		return nil, fmt.Errorf("secrets: seal: %w", err)
	}
	if _, err := pw.Write(value); err != nil {
		return nil, fmt.Errorf("secrets: seal: %w", err)
	}
	if err := pw.Close(); err != nil {
		return nil, fmt.Errorf("secrets: seal: %w", err)
	}
	if err := aw.Close(); err != nil {
		return nil, fmt.Errorf("secrets: seal: %w", err)
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

// Open decrypts sealed, an armored or binary OpenPGP message, with id's
// key, and checks that it is signed by a key of writers. It refuses a
// message that is not encrypted, not signed, signed by a key outside
// writers (even id's own, unless id is in writers), signed with a weak
// hash, or with a signature that does not verify.
func (id *Identity) Open(sealed []byte, writers Keyring) ([]byte, Signer, error) {
	body := io.Reader(bytes.NewReader(sealed))
	if bytes.HasPrefix(bytes.TrimLeft(sealed, " \t\r\n"), []byte(armorStart)) {
		block, err := armor.Decode(bytes.NewReader(sealed))
		if err != nil {
			return nil, Signer{}, fmt.Errorf("secrets: open: bad armor: %v", err)
		}
		if block.Type != armorMessage {
			return nil, Signer{}, fmt.Errorf("secrets: open: found a %q block, want %q", block.Type, armorMessage)
		}
		body = block.Body
	}
	kr := append(openpgp.EntityList{id.entity}, writers.entities...)
	md, err := openpgp.ReadMessage(body, kr, nil, messageConfig)
	switch {
	case errors.Is(err, pgperrors.ErrKeyIncorrect):
		return nil, Signer{}, fmt.Errorf("%w (%s)", ErrNotRecipient, id.fingerprint)
	case err != nil:
		return nil, Signer{}, fmt.Errorf("secrets: open: %w", err)
	}
	if !md.IsEncrypted || md.DecryptedWith.Entity == nil {
		return nil, Signer{}, fmt.Errorf("%w: the message is not encrypted to a public key", ErrUnsignedValue)
	}
	value, err := io.ReadAll(io.LimitReader(md.UnverifiedBody, MaxValueLen+1))
	if err != nil {
		return nil, Signer{}, fmt.Errorf("secrets: open: %w", err)
	}
	if len(value) > MaxValueLen {
		return nil, Signer{}, fmt.Errorf("secrets: open: the value is over %d bytes", MaxValueLen)
	}
	if !md.IsSigned {
		return nil, Signer{}, fmt.Errorf("%w: the message carries no signature", ErrUnsignedValue)
	}
	if md.SignedBy == nil {
		return nil, Signer{}, fmt.Errorf("%w: key ID %016X", ErrWriterNotAllowed, md.SignedByKeyId)
	}
	if md.SignatureError != nil {
		return nil, Signer{}, fmt.Errorf("%w: %v", ErrBadSignature, md.SignatureError)
	}
	if md.Signature == nil || weakHashes[md.Signature.Hash] {
		return nil, Signer{}, fmt.Errorf("%w: no signature or a weak hash", ErrBadSignature)
	}
	fpr := fingerprint(md.SignedBy.Entity.PrimaryKey)
	if !writers.Has(fpr) {
		return nil, Signer{}, fmt.Errorf("%w: %s", ErrWriterNotAllowed, fpr)
	}
	return value, Signer{Fingerprint: fpr, UserID: userID(md.SignedBy.Entity)}, nil
}

// KeyInfo describes one key of a Keyring.
type KeyInfo struct {
	Fingerprint string // 40 upper-case hex digits
	UserID      string
	CanEncrypt  bool // has a valid encryption (sub)key now
}

// Keys lists the keys of k in order, without duplicates.
func (k Keyring) Keys() []KeyInfo {
	var out []KeyInfo
	seen := map[string]bool{}
	for _, e := range k.entities {
		f := fingerprint(e.PrimaryKey)
		if seen[f] {
			continue
		}
		seen[f] = true
		_, enc := e.EncryptionKey(time.Now())
		out = append(out, KeyInfo{Fingerprint: f, UserID: userID(e), CanEncrypt: enc})
	}
	return out
}

// Has reports whether k holds the key with primary fingerprint fpr
// (upper- or lower-case hex, spaces allowed).
func (k Keyring) Has(fpr string) bool {
	fpr = normalizeFingerprint(fpr)
	for _, e := range k.entities {
		if fingerprint(e.PrimaryKey) == fpr {
			return true
		}
	}
	return false
}

// Union returns the keys of k followed by those of other that k lacks.
func (k Keyring) Union(other Keyring) Keyring {
	var out Keyring
	out.entities = append(out.entities, k.entities...)
	for _, e := range other.entities {
		if !out.Has(fingerprint(e.PrimaryKey)) {
			out.entities = append(out.entities, e)
		}
	}
	return out.dedup()
}

// Without returns k without the key whose fingerprint is fpr, and whether
// there was one.
func (k Keyring) Without(fpr string) (Keyring, bool) {
	fpr = normalizeFingerprint(fpr)
	var out Keyring
	found := false
	for _, e := range k.entities {
		if fingerprint(e.PrimaryKey) == fpr {
			found = true
			continue
		}
		out.entities = append(out.entities, e)
	}
	return out, found
}

func (k Keyring) dedup() Keyring {
	var out Keyring
	seen := map[string]bool{}
	for _, e := range k.entities {
		f := fingerprint(e.PrimaryKey)
		if !seen[f] {
			seen[f] = true
			out.entities = append(out.entities, e)
		}
	}
	return out
}

// Armored returns the public keys of k, without duplicates, as one armored
// "PGP PUBLIC KEY BLOCK" per key, sorted by fingerprint so that the same
// set always gives the same bytes. `gpg --import` reads it.
func (k Keyring) Armored() ([]byte, error) {
	el := append(openpgp.EntityList(nil), k.dedup().entities...)
	sort.Slice(el, func(i, j int) bool { return fingerprint(el[i].PrimaryKey) < fingerprint(el[j].PrimaryKey) })
	var buf bytes.Buffer
	for _, e := range el {
		w, err := armor.Encode(&buf, openpgp.PublicKeyType, nil)
		if err != nil {
			return nil, err
		}
		if err := e.Serialize(w); err != nil {
			return nil, fmt.Errorf("secrets: serialize public key %s: %w", fingerprint(e.PrimaryKey), err)
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
		buf.WriteByte('\n')
	}
	return buf.Bytes(), nil
}

func normalizeFingerprint(s string) string {
	return strings.ToUpper(strings.ReplaceAll(strings.TrimPrefix(strings.TrimSpace(s), "0x"), " ", ""))
}

// IsFingerprint reports whether s looks like a full v4 fingerprint (40
// hex digits, spaces allowed), as opposed to a file name.
func IsFingerprint(s string) bool {
	return fingerprintPattern().MatchString(normalizeFingerprint(s))
}

var fingerprintPattern = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9A-F]{40}$`) })

// Value names: an environment-variable-like name.
var namePattern = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`) })

// ValidateName checks a value name: upper-case letters, digits and '_',
// not starting with a digit, at most 128 bytes (it is also a file name,
// values/<NAME>.asc, and may become an environment variable).
func ValidateName(name string) error {
	switch {
	case name == "":
		return errors.New("empty secret name")
	case len(name) > 128:
		return fmt.Errorf("secret name %.20q... is %d bytes, at most 128", name, len(name))
	case !namePattern().MatchString(name):
		return fmt.Errorf("secret name %q: use upper-case letters, digits and '_', not starting with a digit (like NETLIFY_TOKEN)", name)
	}
	return nil
}

// ValidateValue checks a value before it is stored: not shorter than
// MinValueLen (it could not be masked without hiding unrelated text) and
// not longer than MaxValueLen.
func ValidateValue(value []byte) error {
	switch {
	case len(value) < MinValueLen:
		return fmt.Errorf("the value is %d bytes; refci refuses values shorter than %d bytes, because masking them would hide unrelated text in logs", len(value), MinValueLen)
	case len(value) > MaxValueLen:
		return fmt.Errorf("the value is %d bytes, over the limit of %d", len(value), MaxValueLen)
	}
	return nil
}

// Policy is the content of policy.toml: which requests may use an
// environment. The zero value is the default policy: trusted requests
// only, any request name, no value exposed in the environment. A Policy
// is a plain value, safe to share once built.
type Policy struct {
	// AllowUntrusted lets untrusted requests use the environment too.
	// Dangerous: anyone who can push a request can read every value.
	AllowUntrusted bool `toml:"allow_untrusted"`
	// Requests, when not empty, lists the request names that may use the
	// environment, as path.Match patterns ("main", "release/*"). `refci
	// trigger` names a request after the current branch, so this is also
	// the branch allow-list.
	Requests []string `toml:"requests"`
	// Environment lists the values put in the pipeline's environment as
	// variables of the same name, for tools that read nothing else. Other
	// values are handed out only by `refci secret NAME`.
	Environment []string `toml:"environment"`
}

// ParsePolicy reads policy.toml. Unknown keys, bad patterns and bad names
// are errors. Empty input is the default policy.
func ParsePolicy(b []byte) (Policy, error) {
	var p Policy
	md, err := toml.Decode(string(b), &p)
	if err != nil {
		return Policy{}, fmt.Errorf("policy.toml: %w", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return Policy{}, fmt.Errorf("policy.toml: unknown setting %q; known: allow_untrusted, requests, environment", und[0].String())
	}
	for _, r := range p.Requests {
		if _, err := path.Match(r, ""); err != nil || r == "" {
			return Policy{}, fmt.Errorf("policy.toml: requests: %q is not a valid pattern", r)
		}
	}
	for _, n := range p.Environment {
		if err := ValidateName(n); err != nil {
			return Policy{}, fmt.Errorf("policy.toml: environment: %w", err)
		}
	}
	return p, nil
}

// Encode writes p as policy.toml, with comments that explain each setting.
func (p Policy) Encode() []byte {
	var b strings.Builder
	b.WriteString("# Which requests may use this environment (refci secrets; see README).\n")
	b.WriteString("# allow_untrusted: also requests not signed by a trusted key (dangerous).\n")
	fmt.Fprintf(&b, "allow_untrusted = %t\n", p.AllowUntrusted)
	b.WriteString("# requests: request names (= branch names for refci trigger) allowed; empty: any.\n")
	fmt.Fprintf(&b, "requests = %s\n", tomlList(p.Requests))
	b.WriteString("# environment: values also exported as environment variables of the pipeline.\n")
	fmt.Fprintf(&b, "environment = %s\n", tomlList(p.Environment))
	return []byte(b.String())
}

func tomlList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// Allows says whether a request named request, trusted or not, may use the
// environment, and if not, why.
func (p Policy) Allows(request string, trusted bool) (bool, string) {
	if !trusted && !p.AllowUntrusted {
		return false, "the request is not trusted, and the environment's policy admits trusted requests only"
	}
	if len(p.Requests) == 0 {
		return true, ""
	}
	for _, pat := range p.Requests {
		if ok, _ := path.Match(pat, request); ok {
			return true, ""
		}
	}
	return false, fmt.Sprintf("the environment's policy admits only the requests %s, not %q", strings.Join(p.Requests, ", "), request)
}
