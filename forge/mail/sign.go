package mail

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"mime/quotedprintable"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/emersion/go-message/textproto"
)

// A Signer signs replies: SignDetached returns an ASCII-armored detached
// OpenPGP signature of message ("-----BEGIN PGP SIGNATURE-----" ...), in
// binary mode (the message is signed byte for byte). *secrets.Identity,
// the worker's key, implements it. It must be safe for concurrent use.
type Signer interface {
	SignDetached(message []byte) (string, error)
}

// micalgs names the hash algorithms RFC 3156 (and RFC 4880's registry)
// give a micalg for.
var micalgs = map[crypto.Hash]string{
	crypto.SHA1: "pgp-sha1", crypto.SHA224: "pgp-sha224", crypto.SHA256: "pgp-sha256",
	crypto.SHA384: "pgp-sha384", crypto.SHA512: "pgp-sha512",
}

// signatureHash reads the hash algorithm of an armored detached
// signature, for the micalg parameter.
func signatureHash(armored string) (string, error) {
	blk, err := armor.Decode(strings.NewReader(armored))
	if err != nil {
		return "", fmt.Errorf("not an armored signature: %w", err)
	}
	if blk.Type != "PGP SIGNATURE" {
		return "", fmt.Errorf("armored %q, not a signature", blk.Type)
	}
	p, err := packet.Read(blk.Body)
	if err != nil {
		return "", fmt.Errorf("read the signature: %w", err)
	}
	sig, ok := p.(*packet.Signature)
	if !ok {
		return "", errors.New("the armored block holds no signature packet")
	}
	m, ok := micalgs[sig.Hash]
	if !ok {
		return "", fmt.Errorf("hash algorithm %v has no PGP/MIME name", sig.Hash)
	}
	return m, nil
}

// qpBody encodes a text body (LF line ends) as quoted-printable with CRLF
// line ends, 7-bit clean as RFC 3156 asks of signed parts: trailing white
// space is encoded, and so is the space of a line starting "From " (some
// mail systems rewrite it to ">From ", which would break the signature).
func qpBody(body string) []byte {
	var b bytes.Buffer
	w := quotedprintable.NewWriter(&b)
	w.Write([]byte(strings.ReplaceAll(body, "\n", "\r\n")))
	w.Close()
	out := b.Bytes()
	if bytes.HasPrefix(out, []byte("From ")) {
		out = append([]byte("From=20"), out[5:]...)
	}
	return bytes.ReplaceAll(out, []byte("\r\nFrom "), []byte("\r\nFrom=20"))
}

// signedMessage writes h (the reply's header, without its Content-Type
// and Content-Transfer-Encoding) and a multipart/signed body (RFC 3156)
// of the plain-text body, signed by s.
func signedMessage(h textproto.Header, body string, s Signer) ([]byte, error) {
	var inner bytes.Buffer
	inner.WriteString("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n")
	inner.Write(qpBody(body))
	signed := inner.Bytes() // ends in CRLF; the CRLF written before the boundary is the delimiter's
	sig, err := s.SignDetached(signed)
	if err != nil {
		return nil, fmt.Errorf("sign the reply: %w", err)
	}
	micalg, err := signatureHash(sig)
	if err != nil {
		return nil, fmt.Errorf("sign the reply: %w", err)
	}
	// The boundary: "=_" cannot occur in quoted-printable text (a "="
	// there is always followed by two hex digits or a line end) nor in
	// the armor's base64.
	sum := sha256.Sum256([]byte(sig))
	boundary := "=_refci_" + hex.EncodeToString(sum[:12])
	h.Set("Content-Type", `multipart/signed; micalg=`+micalg+`; protocol="application/pgp-signature"; boundary="`+boundary+`"`)
	h.Del("Content-Transfer-Encoding")
	var b bytes.Buffer
	if err := textproto.WriteHeader(&b, h); err != nil {
		return nil, err
	}
	b.WriteString("This is an OpenPGP/MIME signed message (RFC 3156).\r\n")
	b.WriteString("--" + boundary + "\r\n")
	b.Write(signed)
	b.WriteString("\r\n--" + boundary + "\r\n")
	b.WriteString("Content-Type: application/pgp-signature; name=\"signature.asc\"\r\n")
	b.WriteString("Content-Description: OpenPGP digital signature\r\n")
	b.WriteString("Content-Disposition: attachment; filename=\"signature.asc\"\r\n\r\n")
	b.WriteString(strings.ReplaceAll(strings.TrimRight(sig, "\n"), "\n", "\r\n"))
	b.WriteString("\r\n--" + boundary + "--\r\n")
	return b.Bytes(), nil
}
