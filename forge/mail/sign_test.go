package mail

import (
	"bytes"
	"errors"
	"io"
	netmail "net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gomessage "github.com/emersion/go-message"
	gomail "github.com/emersion/go-message/mail"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/gnupg"
	"refci.dev/refci/secrets"
)

// verifyPGPMIME checks raw as a PGP/MIME signed reply (RFC 3156): the
// first part, cut out as a receiver cuts it, and the second part's
// signature are given to the real gpg, which must find a good signature
// by the key of fingerprint fpr. It returns the text of the first part.
func verifyPGPMIME(t *testing.T, g *gnupg.GPG, raw []byte, fpr string) string {
	t.Helper()
	m, err := netmail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	ct := m.Header.Get("Content-Type")
	for _, want := range []string{"multipart/signed", "micalg=pgp-sha256", `protocol="application/pgp-signature"`} {
		if !strings.Contains(ct, want) {
			t.Fatalf("Content-Type %q lacks %s", ct, want)
		}
	}
	if m.Header.Get("Content-Transfer-Encoding") != "" {
		t.Errorf("a multipart/signed message with a Content-Transfer-Encoding")
	}
	_, params, _ := strings.Cut(ct, `boundary="`)
	boundary, _, _ := strings.Cut(params, `"`)
	body, _ := io.ReadAll(m.Body)
	open := []byte("--" + boundary + "\r\n")
	i := bytes.Index(body, open)
	if i < 0 {
		t.Fatalf("no first boundary in:\n%s", body)
	}
	rest := body[i+len(open):]
	j := bytes.Index(rest, []byte("\r\n--"+boundary+"\r\n"))
	if j < 0 {
		t.Fatalf("no second boundary")
	}
	signed := rest[:j]
	sigPart := rest[j+len("\r\n--"+boundary+"\r\n"):]
	k := bytes.Index(sigPart, []byte("\r\n--"+boundary+"--"))
	if k < 0 {
		t.Fatalf("no closing boundary")
	}
	_, sig, ok := bytes.Cut(sigPart[:k], []byte("\r\n\r\n"))
	if !ok || !bytes.Contains(sigPart[:k], []byte("Content-Type: application/pgp-signature")) {
		t.Fatalf("the second part is not a signature:\n%s", sigPart[:k])
	}
	dir := t.TempDir()
	data, sigFile := filepath.Join(dir, "part"), filepath.Join(dir, "part.asc")
	os.WriteFile(data, signed, 0o600)
	os.WriteFile(sigFile, sig, 0o600)
	out, errOut, err := g.Try(nil, "--status-fd", "1", "--verify", sigFile, data)
	if err != nil {
		t.Fatalf("gpg --verify: %v\n%s\n%s", err, out, errOut)
	}
	if valid := gnupg.Status(out, "VALIDSIG"); len(valid) == 0 || !strings.Contains(out, "[GNUPG:] GOODSIG ") ||
		!strings.Contains(strings.ToUpper(strings.Join(valid, " ")), strings.ToUpper(fpr)) {
		t.Errorf("gpg found no good signature by %s:\n%s", fpr, out)
	}
	// Any change of the signed part breaks the signature.
	os.WriteFile(data, bytes.Replace(signed, []byte("refci"), []byte("refcj"), 1), 0o600)
	if out, _, err := g.Try(nil, "--status-fd", "1", "--verify", sigFile, data); err == nil || !strings.Contains(out, "BADSIG") {
		t.Errorf("gpg accepted a changed part:\n%s", out)
	}
	// A MIME reader sees two parts, the first the text.
	e, err := gomessage.Read(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	mr := e.MultipartReader()
	if mr == nil {
		t.Fatal("go-message does not read it as multipart")
	}
	p, err := mr.NextPart()
	if err != nil {
		t.Fatal(err)
	}
	text, _ := io.ReadAll(p.Body)
	if p2, err := mr.NextPart(); err != nil || !strings.HasPrefix(p2.Header.Get("Content-Type"), "application/pgp-signature") {
		t.Errorf("second part: %v", err)
	}
	if _, err := mr.NextPart(); !errors.Is(err, io.EOF) {
		t.Errorf("more than two parts: %v", err)
	}
	return string(text)
}

// A signed reply is RFC 3156 PGP/MIME that the real gpg verifies against
// the worker's key, with the same text and headers as the unsigned one.
func TestReplySignedPGPMIME(t *testing.T) {
	g := gnupg.New(t)
	id := fixtures.OpenPGPIdentity(t, "Test Worker")
	pub, err := id.ArmoredPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	g.Run(pub, "--import")
	from := &netmail.Address{Name: "refci", Address: "ci@example.org"}
	th := thread{Series: "6c2da30412e2658f/v1", Version: 1, Total: 1, Title: "From the start: trailing spaces ",
		Subject: "[PATCH] x", Root: "p1@example.org", Author: "ann@example.org", Cc: []string{"list@example.org"}}
	out := outcome{state: StateNotApplied, problem: "From here on a line starts with From, and one ends in spaces   \nFrom again.\n\xc3\xa9t\xc3\xa9"}
	opts := replyOptions{from: from, fetchURL: "https://git.example.org/app.git", now: time.Date(2026, 12, 7, 9, 30, 0, 0, time.UTC)}
	id0, rcpt0, plain, err := compose(opts, th, out)
	if err != nil {
		t.Fatal(err)
	}
	opts.signer = id
	id1, rcpt1, raw, err := compose(opts, th, out)
	if err != nil {
		t.Fatal(err)
	}
	if id0 != id1 || strings.Join(rcpt0, " ") != strings.Join(rcpt1, " ") {
		t.Errorf("signing changed the Message-ID or recipients")
	}
	text := verifyPGPMIME(t, g, raw, id.Fingerprint())
	pm, _ := gomail.CreateReader(bytes.NewReader(plain))
	pp, _ := pm.NextPart()
	want, _ := io.ReadAll(pp.Body)
	if text != string(want) {
		t.Errorf("the signed text differs from the unsigned reply's:\n%q\n%q", text, want)
	}
	sm, _ := netmail.ReadMessage(bytes.NewReader(raw))
	um, _ := netmail.ReadMessage(bytes.NewReader(plain))
	for _, k := range []string{"Subject", "In-Reply-To", "References", "Message-Id", "X-Refci-State", "Auto-Submitted", "To", "Cc", "From", "Date", "Mime-Version"} {
		if sm.Header.Get(k) != um.Header.Get(k) {
			t.Errorf("%s: signed %q, unsigned %q", k, sm.Header.Get(k), um.Header.Get(k))
		}
	}
	for i, l := range strings.Split(string(raw), "\r\n") {
		if len(l) > 998 || strings.ContainsFunc(l, func(r rune) bool { return r > 0x7e || r < ' ' && r != '\t' }) {
			t.Errorf("line %d is not 7-bit clean or too long: %q", i, l)
		}
		if strings.HasPrefix(l, "From ") {
			t.Errorf("line %d starts with From : %q", i, l)
		}
	}
	var _ Signer = (*secrets.Identity)(nil)
}

// A bridge with a Signer sends every reply signed with the worker's key;
// gpg verifies the reply of a real run.
func TestBridgeSignsReplies(t *testing.T) {
	g := gnupg.New(t)
	id := fixtures.OpenPGPIdentity(t, "Test Worker")
	pub, err := id.ArmoredPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	g.Run(pub, "--import")
	w := newWorld(t)
	w.mail.deliver(w.series("--base="+w.base, "--cover-letter", "--thread", "main..topic")...)
	snd := &recSender{}
	w.bridge("one", "", snd, func(c *Config) { c.Signer = id })
	got := waitMails(t, snd, 1)
	text := verifyPGPMIME(t, g, got[0].raw, id.Fingerprint())
	if !strings.Contains(text, "it passed") {
		t.Errorf("the signed text:\n%s", text)
	}
	if hdr, _ := parseMail(t, got[0].raw); hdr.Header.Get("X-Refci-State") != "success" {
		t.Errorf("state %q", hdr.Header.Get("X-Refci-State"))
	}
}
