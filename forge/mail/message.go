// Package mail turns patch mail into series that can be tested: it parses
// one message (net/mail, RFC 2047 subjects), classifies it (patch, cover
// letter, reply, auto-generated, no patch), groups patches into series by
// version and threading, and applies a series with git am in a scratch
// clone. The Bridge puts it to work: it reads a Mailbox, asks for a run
// of each complete series, and sends one reply per series through a
// Sender, keeping what it did in a ledger ref on the remote so that it
// happens once (PROTOCOL.md, section 14). IMAP and SMTP live behind the
// Mailbox and Sender interfaces.
//
// Only text/plain bodies (7bit, 8bit, quoted-printable or base64) are read
// for now; a multipart or HTML-only message has an empty Body and so is
// never a patch.
package mail

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	netmail "net/mail"
	"strings"
	"time"
)

// MaxMessageSize is the largest message ParseMessage reads; a larger one
// is refused with ErrTooLarge.
const MaxMessageSize = 10 << 20

// ErrTooLarge is returned by ParseMessage for a message over MaxMessageSize.
var ErrTooLarge = errors.New("message is larger than 10 MiB")

// Kind is what a message is to the bridge. The zero value is KindOther.
type Kind int

const (
	KindOther Kind = iota // holds no patch: ignored
	KindPatch             // [PATCH ...] with a diff --git in the body
	KindCover             // [PATCH ... 0/N]: a series' cover letter
	KindReply             // Re: ...: a reply, never a patch
	KindAuto              // auto-generated: Auto-Submitted not "no", Return-Path <>, Precedence bulk or junk (list is fine)
)

func (k Kind) String() string {
	switch k {
	case KindPatch:
		return "patch"
	case KindCover:
		return "cover"
	case KindReply:
		return "reply"
	case KindAuto:
		return "auto"
	}
	return "other"
}

// Message is one parsed mail. The zero value is an empty message of
// KindOther. A Message is not changed after ParseMessage returns it and is
// safe to read from several goroutines.
type Message struct {
	ID         string   // Message-ID without angle brackets; "" when missing
	InReplyTo  string   // the first id of In-Reply-To, without brackets
	References []string // References, oldest first, without brackets
	From       string   // the sender's address, lower case
	FromName   string   // the sender's display name
	Date       time.Time
	Subject    string  // decoded (RFC 2047), unfolded
	Tag        Subject // Subject parsed
	// AutoSubmitted and Precedence are the header values, lower case.
	AutoSubmitted, Precedence string
	// ReturnPath is the Return-Path header as it stands ("<>" for the
	// null sender); HasReturnPath tells a missing header from an empty one.
	ReturnPath    string
	HasReturnPath bool
	Body          string // the text/plain body, transfer encoding undone; "" otherwise
	Raw           []byte // the message as read, for git am
	Kind          Kind
}

// ParseMessage reads and classifies one message. It fails only on a
// message that net/mail cannot read at all or one over MaxMessageSize;
// odd headers and bodies give empty fields, never an error.
func ParseMessage(r io.Reader) (*Message, error) {
	raw, err := io.ReadAll(io.LimitReader(r, MaxMessageSize+1))
	if err != nil {
		return nil, fmt.Errorf("read message: %w", err)
	}
	if len(raw) > MaxMessageSize {
		return nil, ErrTooLarge
	}
	nm, err := netmail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("parse message: %w", err)
	}
	h := nm.Header
	m := &Message{Raw: raw}
	m.ID = firstID(h.Get("Message-Id"))
	m.InReplyTo = firstID(h.Get("In-Reply-To"))
	m.References = ids(h.Get("References"))
	if a, err := netmail.ParseAddress(h.Get("From")); err == nil {
		m.From, m.FromName = strings.ToLower(a.Address), a.Name
	} else {
		m.From = strings.ToLower(strings.TrimSpace(h.Get("From")))
	}
	if d, err := h.Date(); err == nil {
		m.Date = d
	}
	m.Subject = decodeHeader(h.Get("Subject"))
	m.Tag = ParseSubject(m.Subject)
	m.AutoSubmitted = headerToken(h.Get("Auto-Submitted"))
	m.Precedence = headerToken(h.Get("Precedence"))
	if v, ok := h["Return-Path"]; ok && len(v) > 0 {
		m.ReturnPath, m.HasReturnPath = strings.TrimSpace(v[0]), true
	}
	m.Body = textBody(h, nm.Body)
	m.Kind = classify(m)
	return m, nil
}

// classify decides Kind. RFC 3834: Auto-Submitted other than "no" or a
// null return path is auto-generated. Precedence bulk and junk are taken
// as auto-generated too; Precedence list is not, since a list delivers the
// very patches the bridge exists for (the bridge still never answers
// KindAuto, and replies only in the thread).
func classify(m *Message) Kind {
	switch {
	case m.AutoSubmitted != "" && m.AutoSubmitted != "no",
		m.HasReturnPath && strings.Trim(m.ReturnPath, "<> \t") == "",
		m.Precedence == "bulk" || m.Precedence == "junk":
		return KindAuto
	case m.Tag.Re:
		return KindReply
	case m.Tag.Patch && m.Tag.Index == 0:
		return KindCover
	case m.Tag.Patch && hasDiff(m.Body):
		return KindPatch
	}
	return KindOther
}

func hasDiff(body string) bool {
	return strings.HasPrefix(body, "diff --git ") || strings.Contains(body, "\ndiff --git ")
}

// headerToken is the value's first token, lower case: "auto-generated;
// x=y" gives "auto-generated".
func headerToken(v string) string {
	v, _, _ = strings.Cut(v, ";")
	return strings.ToLower(strings.TrimSpace(v))
}

var wordDecoder = &mime.WordDecoder{CharsetReader: func(charset string, r io.Reader) (io.Reader, error) {
	// Only UTF-8, US-ASCII and ISO-8859-1 are built in; keep other
	// charsets' bytes rather than fail the whole subject.
	return r, nil
}}

func decodeHeader(v string) string {
	if d, err := wordDecoder.DecodeHeader(v); err == nil {
		v = d
	}
	return strings.Join(strings.Fields(v), " ")
}

func firstID(v string) string {
	if l := ids(v); len(l) > 0 {
		return l[0]
	}
	return ""
}

// ids reads a list of <id> (or bare words, for broken mailers).
func ids(v string) []string {
	var out []string
	for _, f := range strings.Fields(strings.NewReplacer("<", " <", ">", "> ", ",", " ").Replace(v)) {
		f = strings.TrimSuffix(strings.TrimPrefix(f, "<"), ">")
		if f != "" && !strings.ContainsAny(f, "<>") {
			out = append(out, f)
		}
	}
	return out
}

// textBody returns a text/plain body with its transfer encoding undone,
// or "" for anything else.
func textBody(h netmail.Header, body io.Reader) string {
	if ct := h.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "text/plain" {
			return ""
		}
	}
	switch strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding"))) {
	case "quoted-printable":
		body = quotedprintable.NewReader(body)
	case "base64":
		b, err := io.ReadAll(body)
		if err != nil {
			return ""
		}
		clean := strings.Map(func(r rune) rune {
			if r == '\r' || r == '\n' || r == ' ' || r == '\t' {
				return -1
			}
			return r
		}, string(b))
		d, err := base64.StdEncoding.DecodeString(clean)
		if err != nil {
			return ""
		}
		return strings.ReplaceAll(string(d), "\r\n", "\n")
	case "", "7bit", "8bit", "binary":
	default:
		return ""
	}
	b, err := io.ReadAll(body)
	if err != nil {
		return ""
	}
	return strings.ReplaceAll(string(b), "\r\n", "\n")
}
