package mail

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
)

const mimeDiff = "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-one\n+two\n"

// mimeMail is a message with the given subject, extra header lines and
// body (LF line ends, turned into CRLF as on the wire).
func mimeMail(subject, headers, body string) string {
	s := "From: Ann <ann@example.org>\nMessage-Id: <m@example.org>\nDate: Tue, 14 Nov 2023 22:13:20 +0000\nSubject: " + subject + "\nMIME-Version: 1.0\n" + headers + "\n" + body
	return strings.ReplaceAll(s, "\n", "\r\n")
}

func b64(s string) string {
	e := base64.StdEncoding.EncodeToString([]byte(s))
	var b strings.Builder
	for len(e) > 76 {
		b.WriteString(e[:76] + "\n")
		e = e[76:]
	}
	return b.String() + e + "\n"
}

// nested wraps inner (a part with its header) in n multipart/mixed
// levels, the outermost of which has the header nestedHeader.
func nested(n int, inner string) string {
	for i := 0; i < n-1; i++ {
		b := fmt.Sprintf("b%d", i)
		inner = "Content-Type: multipart/mixed; boundary=" + b + "\n\n--" + b + "\n" + inner + "\n--" + b + "--\n"
	}
	return "--top\n" + inner + "\n--top--\n"
}

const nestedHeader = "Content-Type: multipart/mixed; boundary=top\n"

var mimeCases = []struct {
	name, subject, headers, body string
	kind                         Kind
	body2                        string // a text Body must hold; "-" for Body == ""
	reason                       string // a text Reason must hold
	rebuilt                      bool   // Raw is rebuilt (not as read)
}{
	{name: "alternative takes text/plain",
		subject: "[PATCH] x", headers: "Content-Type: multipart/alternative; boundary=\"=-b\"\n",
		body: "preamble\n--=-b\nContent-Type: text/plain; charset=utf-8\n\nwhy\n---\n" + mimeDiff + "\n--=-b\nContent-Type: text/html\n\n<pre>diff --git a/evil b/evil</pre>\n--=-b--\n",
		kind: KindPatch, body2: "why\n---\n" + mimeDiff, rebuilt: true},
	{name: "alternative html first",
		subject: "[PATCH] x", headers: "Content-Type: multipart/alternative; boundary=b\n",
		body: "--b\nContent-Type: text/html\n\n<p>x</p>\n--b\nContent-Type: text/plain\n\nwhy\n---\n" + mimeDiff + "\n--b--\n",
		kind: KindPatch, body2: "why\n---\n" + mimeDiff, rebuilt: true},
	{name: "x-patch attachment in base64",
		subject: "[PATCH] x", headers: "Content-Type: multipart/mixed; boundary=b\n",
		body: "--b\nContent-Type: text/plain\n\nwhy, see the attachment\n--b\nContent-Type: text/x-patch; name=\"0001-x.patch\"\nContent-Disposition: attachment; filename=\"0001-x.patch\"\nContent-Transfer-Encoding: base64\n\n" + b64(mimeDiff) + "--b\nContent-Type: image/png\nContent-Transfer-Encoding: base64\n\n!!!!not base64!!!!\n--b--\n",
		kind: KindPatch, body2: "why, see the attachment\n" + mimeDiff, rebuilt: true},
	{name: "x-diff attachment alone",
		subject: "[PATCH 1/1] x", headers: "Content-Type: multipart/mixed; boundary=b\n",
		body: "--b\nContent-Type: text/x-diff\nContent-Disposition: attachment\n\n" + mimeDiff + "--b--\n",
		kind: KindPatch, body2: mimeDiff, rebuilt: true},
	{name: "text/plain attachment named .diff",
		subject: "[PATCH] x", headers: "Content-Type: multipart/mixed; boundary=b\n",
		body: "--b\nContent-Type: text/plain\nContent-Disposition: attachment; filename=x.diff\n\n" + mimeDiff + "--b\nContent-Type: text/plain\nContent-Disposition: attachment; filename=notes.txt\n\nnot this\n--b--\n",
		kind: KindPatch, body2: mimeDiff, rebuilt: true},
	{name: "signed patch",
		subject: "[PATCH] x", headers: "Content-Type: multipart/signed; boundary=s; protocol=\"application/pgp-signature\"\n",
		body: "--s\nContent-Type: text/plain\n\nwhy\n---\n" + mimeDiff + "\n--s\nContent-Type: application/pgp-signature\n\n-----BEGIN PGP SIGNATURE-----\nxx\n-----END PGP SIGNATURE-----\n--s--\n",
		kind: KindPatch, body2: "why\n---\n" + mimeDiff, rebuilt: true},
	{name: "iso-8859-1 quoted-printable",
		subject: "=?ISO-8859-1?Q?[PATCH]_caf=E9?=", headers: "Content-Type: text/plain; charset=ISO-8859-1\nContent-Transfer-Encoding: quoted-printable\n",
		body: "caf=E9 au lait\n---\n" + mimeDiff, kind: KindPatch, body2: "café au lait\n", rebuilt: true},
	{name: "windows-1252 8bit",
		subject: "[PATCH] quotes", headers: "Content-Type: text/plain; charset=windows-1252\nContent-Transfer-Encoding: 8bit\n",
		body: "\x93quoted\x94\n---\n" + mimeDiff, kind: KindPatch, body2: "“quoted”\n"},
	{name: "unknown charset read as is",
		subject: "[PATCH] x", headers: "Content-Type: text/plain; charset=x-unknown-8bit\n",
		body: "why \xff\n---\n" + mimeDiff, kind: KindPatch, body2: "why \xff\n", rebuilt: true},
	{name: "unknown charset in the subject",
		subject: "=?x-unknown?q?=5BPATCH=5D_x?=", headers: "",
		body: "why\n---\n" + mimeDiff, kind: KindPatch, body2: "why"},
	{name: "html only",
		subject: "[PATCH] x", headers: "Content-Type: text/html; charset=utf-8\n",
		body: "<pre>" + mimeDiff + "</pre>\n", kind: KindOther, body2: "-", reason: "HTML-only"},
	{name: "html only alternative",
		subject: "[PATCH] x", headers: "Content-Type: multipart/alternative; boundary=b\n",
		body: "--b\nContent-Type: text/html\n\n<pre>" + mimeDiff + "</pre>\n--b--\n", kind: KindOther, body2: "-", reason: "HTML-only"},
	{name: "multipart without boundary",
		subject: "[PATCH] x", headers: "Content-Type: multipart/mixed\n",
		body: "--b\nContent-Type: text/plain\n\n" + mimeDiff + "--b--\n", kind: KindOther, body2: "-", reason: "without a boundary"},
	{name: "boundary never found",
		subject: "[PATCH] x", headers: "Content-Type: multipart/mixed; boundary=zz\n",
		body: "--b\nContent-Type: text/plain\n\n" + mimeDiff + "--b--\n", kind: KindOther, body2: "-", reason: "broken MIME"},
	{name: "no closing boundary",
		subject: "[PATCH] x", headers: "Content-Type: multipart/mixed; boundary=b\n",
		body: "--b\nContent-Type: text/plain\n\n" + mimeDiff, kind: KindOther, body2: "-", reason: "broken MIME"},
	{name: "bad base64",
		subject: "[PATCH] x", headers: "Content-Type: text/plain\nContent-Transfer-Encoding: base64\n",
		body: "ZGlmZiAtLWdpdCBh!!!*\n", kind: KindOther, body2: "-", reason: "broken MIME"},
	{name: "unknown transfer encoding",
		subject: "[PATCH] x", headers: "Content-Type: text/plain\nContent-Transfer-Encoding: x-uuencode\n",
		body: mimeDiff, kind: KindOther, body2: "-", reason: "broken MIME"},
	{name: "bad content type",
		subject: "[PATCH] x", headers: "Content-Type: ;;;\n",
		body: mimeDiff, kind: KindOther, body2: "-", reason: "Content-Type"},
	{name: "nested at the limit",
		subject: "[PATCH] x", headers: nestedHeader, body: nested(MaxMIMEDepth, "Content-Type: text/plain\n\n"+mimeDiff),
		kind: KindPatch, body2: mimeDiff, rebuilt: true},
	{name: "nested too deep",
		subject: "[PATCH] x", headers: nestedHeader, body: nested(MaxMIMEDepth+1, "Content-Type: text/plain\n\n"+mimeDiff),
		kind: KindOther, body2: "-", reason: "nested deeper"},
	{name: "too many parts",
		subject: "[PATCH] x", headers: "Content-Type: multipart/mixed; boundary=b\n",
		body: strings.Repeat("--b\nContent-Type: image/png\n\nx\n", MaxMIMEParts) + "--b\n\n" + mimeDiff + "--b--\n",
		kind: KindOther, body2: "-", reason: "MIME parts"},
	{name: "attached patch file",
		subject: "[PATCH] x", headers: "Content-Type: multipart/mixed; boundary=b\n",
		body: "--b\n\nnote\n--b\nContent-Type: text/x-patch\nContent-Disposition: attachment; filename=0001-x.patch\n\nFrom " + strings.Repeat("0", 40) + " Mon Sep 17 00:00:00 2001\nFrom: Bo <bo@x>\nSubject: [PATCH] =?utf-8?q?caf=C3=A9?=\n\nwhy\n---\n" + mimeDiff + "--b--\n",
		kind: KindPatch, body2: "From: Bo <bo@x>\nSubject: [PATCH] café\n\nwhy\n---\n" + mimeDiff, rebuilt: true},
	{name: "attached patch file without a header",
		subject: "[PATCH] x", headers: "Content-Type: multipart/mixed; boundary=b\n",
		body: "--b\nContent-Type: text/x-patch\n\nFrom " + strings.Repeat("0", 40) + " Mon Sep 17 00:00:00 2001\n no header\n" + mimeDiff + "--b--\n",
		kind: KindOther, body2: "-", reason: "attached patch file"},
	{name: "long lines in a part",
		subject: "[PATCH] x", headers: "Content-Type: multipart/mixed; boundary=b\n",
		body: "--b\nContent-Type: text/x-diff\n\n" + strings.Replace(mimeDiff, "+two", "+"+strings.Repeat("minified;", 20000), 1) + "--b--\n",
		kind: KindPatch, body2: strings.Repeat("minified;", 20000) + "\n", rebuilt: true},
	{name: "flowed",
		subject: "[PATCH] x", headers: "Content-Type: text/plain; format=flowed; delsp=yes\nContent-Transfer-Encoding: quoted-printable\n",
		body: "why=20\nnot\n---\n" + strings.Replace(mimeDiff, "+two", "+tw=20\no", 1),
		kind: KindPatch, body2: "whynot\n---\n" + mimeDiff, rebuilt: true},
	{name: "refci's own reply",
		subject: "Re: [PATCH] x", headers: "X-Refci-State: failed\nX-Refci-Run: r1\n",
		body: "the run failed\n", kind: KindAuto, reason: "mail loop"},
	{name: "refci header without auto-submitted on a patch",
		subject: "[PATCH] x", headers: "x-refci-state: passed\n",
		body: "why\n---\n" + mimeDiff, kind: KindAuto, reason: "X-Refci"},
	{name: "auto-submitted",
		subject: "[PATCH] x", headers: "Auto-Submitted: auto-generated; x=y\n",
		body: "why\n---\n" + mimeDiff, kind: KindAuto, reason: "auto-generated"},
	{name: "no patch tag",
		subject: "hello", body: mimeDiff, kind: KindOther, reason: "[PATCH]"},
	{name: "no diff",
		subject: "[PATCH 1/2] x", body: "words\n", kind: KindOther, reason: "no diff"},
}

func TestParseMIME(t *testing.T) {
	for _, tc := range mimeCases {
		t.Run(tc.name, func(t *testing.T) {
			raw := mimeMail(tc.subject, tc.headers, tc.body)
			m, err := ParseMessage(strings.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}
			if m.Kind != tc.kind {
				t.Fatalf("kind %v (%s), want %v", m.Kind, m.Reason, tc.kind)
			}
			switch {
			case tc.body2 == "-" && m.Body != "":
				t.Errorf("body %q, want none", m.Body)
			case tc.body2 != "-" && !strings.Contains(m.Body, tc.body2):
				t.Errorf("body %q, want it to hold %q", m.Body, tc.body2)
			}
			if strings.Contains(m.Body, "<pre>") || strings.Contains(m.Body, "not this") || strings.Contains(m.Body, "\r") {
				t.Errorf("body %q holds HTML, a non-patch attachment or a CR", m.Body)
			}
			if !strings.Contains(m.Reason, tc.reason) || (m.Reason == "") != (m.Kind == KindPatch || m.Kind == KindCover) {
				t.Errorf("reason %q, want one holding %q", m.Reason, tc.reason)
			}
			if got := string(m.Raw) != raw; got != tc.rebuilt {
				t.Errorf("Raw rebuilt %v, want %v:\n%s", got, tc.rebuilt, m.Raw)
			}
			if tc.name == "iso-8859-1 quoted-printable" && (!strings.Contains(string(m.Raw), "charset=iso-8859-1") || !strings.Contains(string(m.Raw), "\ncaf\xe9 au lait\n")) {
				t.Errorf("quoted-printable not undone in the message's charset:\n%s", m.Raw)
			}
			if m.Kind == KindPatch {
				again, err := ParseMessage(strings.NewReader(string(m.Raw)))
				if err != nil || again.Kind != KindPatch || again.Body != m.Body || again.Subject != m.Subject || again.ID != m.ID {
					t.Errorf("Raw parses as %+v (%v)", again, err)
				}
			}
		})
	}
	m, _ := ParseMessage(strings.NewReader(mimeMail("Re: x", "X-Refci-State: failed\nX-Refci-Run: r1\n", "x\n")))
	if m.Refci["X-Refci-State"] != "failed" || m.Refci["X-Refci-Run"] != "r1" || len(m.Refci) != 2 {
		t.Errorf("Refci %v", m.Refci)
	}
	m, _ = ParseMessage(strings.NewReader(mimeMail("=?windows-1252?q?=5BPATCH=5D_=93x=94?=", "", "x\n")))
	if m.Subject != "[PATCH] “x”" {
		t.Errorf("subject %q", m.Subject)
	}
	m, _ = ParseMessage(strings.NewReader(strings.Replace(mimeMail("[PATCH] x", "", "x\n"), "From: Ann", "From: =?iso-8859-15?q?Ren=E9_=A4?=", 1)))
	if m.FromName != "René €" || m.From != "ann@example.org" {
		t.Errorf("from %q <%s>", m.FromName, m.From)
	}
}

// countingReader is an endless message that counts what was read of it.
type countingReader struct{ n int64 }

func (r *countingReader) Read(p []byte) (int, error) {
	const head = "From: a@b\r\nSubject: [PATCH] big\r\n\r\n"
	for i := range p {
		if r.n+int64(i) < int64(len(head)) {
			p[i] = head[r.n+int64(i)]
		} else {
			p[i] = 'x'
		}
	}
	r.n += int64(len(p))
	if r.n >= 50<<20 {
		return len(p), io.EOF
	}
	return len(p), nil
}

func TestParseMessageTooLarge(t *testing.T) {
	r := &countingReader{}
	if _, err := ParseMessage(r); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err %v, want ErrTooLarge", err)
	}
	// io.ReadAll asks for more than it needs only up to its buffer: the
	// limit is what it may have read.
	if r.n > MaxMessageSize+1 {
		t.Errorf("read %d bytes of a 50 MB message, want at most %d", r.n, MaxMessageSize+1)
	}
	at := strings.Repeat("x", MaxMessageSize-len("Subject: x\n\n"))
	if m, err := ParseMessage(strings.NewReader("Subject: x\n\n" + at)); err != nil || m.Kind != KindOther {
		t.Errorf("a message of exactly MaxMessageSize: %v", err)
	}
}

// TestApplyMIME applies real git format-patch --attach output (a
// multipart with the patch as an attachment) and hand-made mail in other
// charsets: git am takes Raw and gives the branch's tree and the commit
// messages in UTF-8.
func TestApplyMIME(t *testing.T) {
	dir, base := branch(t)
	ms := formatPatch(t, dir, "--attach", "--base="+base, "--cover-letter", "--thread", "main..topic")
	for _, m := range ms[1:] {
		if m.Kind != KindPatch || string(m.Raw) == "" || !strings.Contains(m.Body, "\ndiff --git ") {
			t.Fatalf("%s: kind %v (%s)", m.Subject, m.Kind, m.Reason)
		}
	}
	s := Group(ms)[0]
	if s.Base() != base {
		t.Errorf("base %q", s.Base())
	}
	scratch := filepath.Join(t.TempDir(), "scratch")
	fixtures.Git(t, dir, "clone", "-q", dir, scratch)
	head, err := Apply(context.Background(), scratch, base, s)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fixtures.Git(t, scratch, "rev-parse", head+"^{tree}"), fixtures.Git(t, dir, "rev-parse", "topic^{tree}"); got != want {
		t.Errorf("applied tree %s, branch tree %s", got, want)
	}
	if got, want := fixtures.Git(t, scratch, "log", "--format=%s", base+".."+head), fixtures.Git(t, dir, "log", "--format=%s", "main..topic"); got != want {
		t.Errorf("subjects %q, want %q", got, want)
	}

	// One patch in each way a mail client may send it, against base.
	patch := fixtures.Git(t, dir, "diff", base, "topic~2") + "\n"
	for _, tc := range []struct{ name, subject, headers, body string }{
		{"latin-1 single part", "=?iso-8859-1?q?[PATCH]_caf=E9?=", "Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n", "caf=E9 cr=E8me\n---\n" + patch},
		{"windows-1252 alternative", "[PATCH] =?windows-1252?q?caf=E9?=", "Content-Type: multipart/alternative; boundary=b\n",
			"--b\nContent-Type: text/plain; charset=windows-1252\nContent-Transfer-Encoding: 8bit\n\ncaf\xe9 cr\xe8me\n---\n" + patch + "--b\nContent-Type: text/html\n\n<p>html</p>\n--b--\n"},
		{"base64 attachment", "[PATCH] café", "Content-Type: multipart/mixed; boundary=b\n",
			"--b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\ncafé crème\n--b\nContent-Type: text/x-diff; charset=us-ascii\nContent-Disposition: attachment; filename=a.diff\nContent-Transfer-Encoding: base64\n\n" + b64(patch) + "--b--\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseMessage(strings.NewReader(mimeMail(tc.subject, tc.headers, tc.body)))
			if err != nil || m.Kind != KindPatch {
				t.Fatalf("%v %v (%s)", err, m.Kind, m.Reason)
			}
			scratch := filepath.Join(t.TempDir(), "scratch")
			fixtures.Git(t, dir, "clone", "-q", dir, scratch)
			head, err := Apply(context.Background(), scratch, base, Group([]*Message{m})[0])
			if err != nil {
				t.Fatal(err)
			}
			if got, want := fixtures.Git(t, scratch, "rev-parse", head+"^{tree}"), fixtures.Git(t, dir, "rev-parse", "topic~2^{tree}"); got != want {
				t.Errorf("applied tree %s, want %s", got, want)
			}
			if msg := fixtures.Git(t, scratch, "log", "-1", "--format=%s%n%n%b", head); !strings.HasPrefix(msg, "café\n\ncafé crème") {
				t.Errorf("commit message %q", msg)
			}
		})
	}
}

// TestHostileCharset: in ISO-2022-JP, bytes between ESC $ B and ESC ( B
// are read in pairs as kanji, so a path that git am would apply as
// a/b\x1b$B/.git/cc\x1b(B/config reads as harmless text once converted.
// Apply checks the bytes git am applies too.
func TestHostileCharset(t *testing.T) {
	path := "b\x1b$B/.git/cc\x1b(B/config"
	diff := "diff --git a/" + path + " b/" + path + "\nnew file mode 100644\n--- /dev/null\n+++ b/" + path + "\n@@ -0,0 +1 @@\n+boom\n"
	m, err := ParseMessage(strings.NewReader(mimeMail("[PATCH] x", "Content-Type: text/plain; charset=iso-2022-jp\n", "why\n---\n"+diff)))
	if err != nil || m.Kind != KindPatch {
		t.Fatalf("%v %v (%s)", err, m.Kind, m.Reason)
	}
	if bad := UnsafePaths(m.Body); len(bad) != 0 {
		t.Fatalf("the converted body shows %q: the test does not test the bypass", bad)
	}
	dir, base := branch(t)
	if _, err := Apply(context.Background(), dir, base, Group([]*Message{m})[0]); !errors.Is(err, ErrUnsafePath) {
		t.Errorf("err %v, want ErrUnsafePath", err)
	}
}

// TestApplyAttachedPatchFile: a mail client's user attaches the file git
// format-patch wrote. git am gets the file's author, date, title and
// message, not the note around it.
func TestApplyAttachedPatchFile(t *testing.T) {
	dir, base := branch(t)
	file := fixtures.Git(t, dir, "format-patch", "-1", "--stdout", "topic~2") + "\n"
	attach := func(name, content string) string {
		return "--b\nContent-Type: text/x-patch; charset=UTF-8; name=\"" + name + "\"\nContent-Disposition: attachment; filename=\"" + name + "\"\nContent-Transfer-Encoding: base64\n\n" + b64(content)
	}
	note := "--b\nContent-Type: text/plain; charset=utf-8\n\nPlease apply the attached patch.\n"
	raw := strings.Replace(mimeMail("[PATCH] a: two (attached)", "Content-Type: multipart/mixed; boundary=b\n", note+attach("0001-a-two.patch", file)+"--b--\n"), "Ann <ann@", "Zed <zed@", 1)
	m, err := ParseMessage(strings.NewReader(raw))
	if err != nil || m.Kind != KindPatch {
		t.Fatalf("%v %v (%s)", err, m.Kind, m.Reason)
	}
	if strings.Contains(m.Body, "Please apply") || !strings.HasPrefix(m.Body, "From: ") || !strings.Contains(m.Body, "\nSubject: [PATCH] a: two\n\n") {
		t.Errorf("body %q", m.Body)
	}
	scratch := filepath.Join(t.TempDir(), "scratch")
	fixtures.Git(t, dir, "clone", "-q", dir, scratch)
	head, err := Apply(context.Background(), scratch, base, Group([]*Message{m})[0])
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fixtures.Git(t, scratch, "rev-parse", head+"^{tree}"), fixtures.Git(t, dir, "rev-parse", "topic~2^{tree}"); got != want {
		t.Errorf("applied tree %s, want %s", got, want)
	}
	format := "--format=%an <%ae>|%ad|%B"
	if got, want := fixtures.Git(t, scratch, "log", "-1", format, head), fixtures.Git(t, dir, "log", "-1", format, "topic~2"); got != want {
		t.Errorf("commit %q, want %q", got, want)
	}

	// Two files in one message cannot be one patch.
	two := mimeMail("[PATCH] two", "Content-Type: multipart/mixed; boundary=b\n", attach("1.patch", file)+attach("2.patch", file)+"--b--\n")
	if m, err := ParseMessage(strings.NewReader(two)); err != nil || m.Kind != KindOther || !strings.Contains(m.Reason, "2 patch files") {
		t.Errorf("two files: %v %v (%s)", err, m.Kind, m.Reason)
	}
}

func TestLF(t *testing.T) {
	for in, want := range map[string]string{"": "", "a\r\nb": "a\nb", "a\r\r\nb\r": "a\nb\r", "\rx\r\n\r": "\rx\n\r", "a\nb": "a\nb"} {
		if got := lf(in); got != want || lf(got) != got {
			t.Errorf("lf(%q) = %q, want %q", in, got, want)
		}
	}
}

// benchPatch is a typical patch mail: a commit message and a 200-line
// diff, as git format-patch writes it.
func benchPatch() string {
	var d strings.Builder
	d.WriteString("diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1,100 +1,100 @@\n")
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&d, "-old line %d of the file\n+new line %d of the file\n", i, i)
	}
	return "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\nFrom: Ann <ann@example.org>\nDate: Tue, 14 Nov 2023 22:13:20 +0000\nSubject: [PATCH v2 3/5] a: rewrite every line\nMessage-Id: <3@example.org>\nIn-Reply-To: <0@example.org>\nReferences: <0@example.org>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\nWhy it is better.\n\nSigned-off-by: Ann <ann@example.org>\n---\n a.txt | 200 ++++----\n\n" + d.String() + "-- \n2.39.5\n"
}

// BenchmarkParseMessage: go test -run '^$' -bench ParseMessage ./forge/mail
func BenchmarkParseMessage(b *testing.B) {
	plain := benchPatch()
	i := strings.Index(plain, "Why it is better")
	multi := plain[:strings.Index(plain, "MIME-Version")] + "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain; charset=UTF-8\n\n" +
		plain[i:strings.Index(plain, "diff --git")] + "--b\nContent-Type: text/x-patch; name=a.patch\nContent-Disposition: attachment; filename=a.patch\nContent-Transfer-Encoding: base64\n\n" + b64(plain[strings.Index(plain, "diff --git"):]) + "--b--\n"
	for _, tc := range []struct{ name, raw string }{{"plain", plain}, {"multipart", multi}} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(tc.raw)))
			for b.Loop() {
				if m, err := ParseMessage(strings.NewReader(tc.raw)); err != nil || m.Kind != KindPatch {
					b.Fatal(err, m.Kind, m.Reason)
				}
			}
		})
	}
}

// TestFlowed: format=flowed text (Thunderbird's default) is read as git
// am reads it, in one part (git am unflows it) and in a multipart (Raw
// holds it unflowed); both apply.
func TestFlowed(t *testing.T) {
	if got := string(unflow([]byte("a \nb\n-- \nsig \nx  \n y\nlast "), true)); got != "ab\n-- \nsigx y\nlast\n" {
		t.Errorf("unflow delsp: %q", got)
	}
	if got := string(unflow([]byte("a \r\nb\r\n  c\n"), false)); got != "a b\n c\n" {
		t.Errorf("unflow: %q", got)
	}
	dir, base := branch(t)
	long := "two, and then some words, enough of them that a mail client would break the line"
	fixtures.Git(t, dir, "checkout", "-q", "-b", "long", base)
	fixtures.WriteFile(t, dir, "a.txt", long+"\n", 0o644)
	fixtures.CommitAll(t, dir, "a: long")
	patch := fixtures.Git(t, dir, "diff", base, "long") + "\n"
	flowed := strings.Replace(patch, "+"+long, "+two, and then some words, enough of them  \n that a mail client would break the line", 1)
	if flowed == patch {
		t.Fatal("no line to flow")
	}
	for _, tc := range []struct{ name, headers, body string }{
		{"one part", "Content-Type: text/plain; charset=utf-8; format=flowed; delsp=yes\n", "A message line that was \nsoft-broken.\n---\n" + flowed},
		{"multipart", "Content-Type: multipart/mixed; boundary=b\n", "--b\nContent-Type: text/plain; charset=utf-8; format=flowed; delsp=yes\n\nA message line that was \nsoft-broken.\n---\n" + flowed + "--b--\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseMessage(strings.NewReader(mimeMail("[PATCH] a: long", tc.headers, tc.body)))
			if err != nil || m.Kind != KindPatch || !strings.Contains(m.Body, "+"+long+"\n") {
				t.Fatalf("%v %v %q", err, m.Kind, m.Body)
			}
			scratch := filepath.Join(t.TempDir(), "scratch")
			fixtures.Git(t, dir, "clone", "-q", dir, scratch)
			head, err := Apply(context.Background(), scratch, base, Group([]*Message{m})[0])
			if err != nil {
				t.Fatal(err)
			}
			if got, want := fixtures.Git(t, scratch, "rev-parse", head+"^{tree}"), fixtures.Git(t, dir, "rev-parse", "long^{tree}"); got != want {
				t.Errorf("applied tree %s, want %s", got, want)
			}
			if msg := strings.TrimSpace(fixtures.Git(t, scratch, "log", "-1", "--format=%b", head)); msg != "A message line that wassoft-broken." {
				t.Errorf("message %q", msg)
			}
		})
	}
}
