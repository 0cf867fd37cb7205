// Package mail turns patch mail into series that can be tested: it parses
// one message (MIME with go-message: multipart, attachments, charsets,
// RFC 2047 subjects), classifies it (patch, cover letter, reply,
// auto-generated, no patch), groups patches into series by version and
// threading, and applies a series with git am in a scratch clone. The
// Bridge puts it to work: it reads a Mailbox (IMAPBox: an IMAP folder;
// imap.go is the only user of go-imap in refci), asks for a run of each
// complete series, and sends one reply per series through a Sender
// (SMTPSender), keeping what it did in a ledger ref on the remote so that
// it happens once (PROTOCOL.md, section 14).
package mail

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	netmail "net/mail"
	"regexp"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	message "github.com/emersion/go-message"
	"github.com/emersion/go-message/charset"
	"github.com/emersion/go-message/textproto"
)

// MaxMessageSize is the largest message ParseMessage reads; a larger one
// is refused with ErrTooLarge after reading MaxMessageSize+1 bytes.
const MaxMessageSize = 10 << 20

// ErrTooLarge is returned (wrapped) by ParseMessage for a message over
// MaxMessageSize, and by Mailbox.Fetch for one over its limit.
var ErrTooLarge = errors.New("message too large")

// Bounds on a message's MIME tree: a message nested deeper, or with more
// parts, is KindOther (no patch is sent like that; the bounds keep a
// hostile message from costing more than its size).
const (
	MaxMIMEDepth = 8   // multiparts inside multiparts
	MaxMIMEParts = 100 // parts in the whole message
)

// Kind is what a message is to the bridge. The zero value is KindOther.
type Kind int

const (
	KindOther Kind = iota // holds no patch: ignored
	KindPatch             // [PATCH ...] with a diff --git in the body
	KindCover             // [PATCH ... 0/N]: a series' cover letter
	KindReply             // Re: ...: a reply, never a patch
	KindAuto              // auto-generated: Auto-Submitted not "no", Return-Path <>, Precedence bulk or junk (list is fine), or an X-Refci-* header
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
	Subject    string  // decoded (RFC 2047, any charset go-message knows), unfolded
	Tag        Subject // Subject parsed
	// AutoSubmitted and Precedence are the header values, lower case.
	AutoSubmitted, Precedence string
	// ReturnPath is the Return-Path header as it stands ("<>" for the
	// null sender); HasReturnPath tells a missing header from an empty one.
	ReturnPath    string
	HasReturnPath bool
	// Refci holds the message's X-Refci-* header fields (canonical name
	// to first value; nil when it has none). refci's own replies carry
	// X-Refci-State and X-Refci-Run, so a message that has any is refci's
	// mail come back (a loop, or a forgery of it): it is KindAuto and
	// never answered.
	Refci map[string]string
	// Body is the text the message holds, in UTF-8 with LF line ends:
	// the text/plain parts not sent as attachments (the first text/plain
	// of a multipart/alternative) followed by the patches attached as
	// text/x-patch, text/x-diff, or text/plain named *.patch or *.diff;
	// transfer encodings undone, charsets converted (a charset
	// go-message does not know is read as is), format=flowed lines
	// joined as git am joins them. A patch file attached
	// whole (git format-patch's output, as a mail client attaches it)
	// stands alone instead: its From, Date and Subject as the first lines
	// (git am takes them as the commit's author, date and title) and its
	// text; the message's own text, a note to people, is left out. ""
	// when the message holds no such part (HTML-only mail), holds several
	// patch files, or its MIME is broken.
	Body string
	// Raw is the message git am reads; as read for every kind but
	// KindPatch and KindCover. A patch or cover letter of one text/plain
	// part in a charset go-message knows keeps its charset: git am
	// converts the commit message itself and applies the diff's bytes as
	// they are, as it would from a mailbox. It is kept as read when in
	// 7bit or 8bit, and rebuilt with its quoted-printable or base64
	// undone otherwise, so that the bytes git am applies are the ones
	// Apply checked. Any other message (multipart, attachments, an
	// unknown charset) is rebuilt as one text/plain UTF-8 part holding
	// Body. A rebuilt message keeps the original header fields other than
	// MIME's.
	Raw []byte
	// Reason says why the message is not a patch or a cover letter, for
	// the bridge's log ("HTML-only mail: ...", "broken MIME: ...");
	// "" for KindPatch and KindCover.
	Reason string
	Kind   Kind

	// applied is the text git am applies when Raw is kept as read: Body
	// before charset conversion. Apply checks its paths too. "" when it
	// is Body.
	applied string
}

// ParseMessage reads and classifies one message. It reads at most
// MaxMessageSize+1 bytes of r and fails with ErrTooLarge on a larger
// message; it fails too on a message whose header cannot be read at all.
// Anything else odd (broken MIME, bad base64, unknown charsets, HTML-only
// mail, deep nesting) gives a Message of KindOther with a Reason, never an
// error or a panic.
func ParseMessage(r io.Reader) (*Message, error) {
	raw, err := io.ReadAll(io.LimitReader(r, MaxMessageSize+1))
	if err != nil {
		return nil, fmt.Errorf("read message: %w", err)
	}
	if len(raw) > MaxMessageSize {
		return nil, fmt.Errorf("message is larger than %d MiB: %w", MaxMessageSize>>20, ErrTooLarge)
	}
	rest := raw
	if bytes.HasPrefix(rest, []byte("From ")) && !bytes.HasPrefix(bytes.TrimLeft(rest[4:], " \t"), []byte(":")) {
		// an mbox "From " line, as git format-patch writes: not a field
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			rest = rest[i+1:]
		}
	}
	br := bufio.NewReader(bytes.NewReader(rest))
	th, err := textproto.ReadHeader(br)
	if err != nil && (err != io.EOF || th.Len() == 0) {
		return nil, fmt.Errorf("parse message header: %w", err)
	}
	h := message.Header{Header: th}
	m := &Message{Raw: raw}
	m.ID = firstID(h.Get("Message-Id"))
	m.InReplyTo = firstID(h.Get("In-Reply-To"))
	m.References = ids(h.Get("References"))
	from := h.Get("From")
	if a, err := addressParser.Parse(from); err == nil {
		m.From, m.FromName = strings.ToLower(a.Address), a.Name
	} else {
		m.From = strings.ToLower(strings.TrimSpace(from))
	}
	if d, err := netmail.ParseDate(h.Get("Date")); err == nil {
		m.Date = d
	}
	m.Subject = decodeHeader(h.Get("Subject"))
	m.Tag = ParseSubject(m.Subject)
	m.AutoSubmitted = headerToken(h.Get("Auto-Submitted"))
	m.Precedence = headerToken(h.Get("Precedence"))
	if h.Has("Return-Path") {
		m.ReturnPath, m.HasReturnPath = strings.TrimSpace(h.Get("Return-Path")), true
	}
	for f := h.Fields(); f.Next(); {
		if k := f.Key(); len(k) > len("X-Refci-") && strings.EqualFold(k[:len("X-Refci-")], "X-Refci-") {
			if m.Refci == nil {
				m.Refci = map[string]string{}
			}
			if _, ok := m.Refci[k]; !ok {
				m.Refci[k] = f.Value()
			}
		}
	}

	w := &walker{}
	why := w.walk(th, br, 0)
	if why != "" {
		why = "broken MIME: " + why
	}
	m.Body = w.body.String()
	switch {
	case why != "":
		m.Body = ""
	case len(w.files) == 1:
		m.Body = w.files[0]
	case len(w.files) > 1:
		m.Body = ""
		why = fmt.Sprintf("%d patch files attached to one message: send each patch as a message of its own (git send-email)", len(w.files))
	}
	m.Kind, m.Reason = classify(m, why, w.html)
	if m.Kind == KindPatch || m.Kind == KindCover {
		single := !w.multi && w.parts == 1 && !w.unknownCharset && w.textParts == 1
		switch enc := strings.ToLower(h.Get("Content-Transfer-Encoding")); {
		case single && (enc == "" || enc == "7bit" || enc == "8bit" || enc == "binary"):
			// As read: git am decodes nothing, so it applies the bytes
			// Apply checks.
		case single:
			// Quoted-printable or base64: decoded here, so that git am
			// applies exactly the bytes Apply checks, in the charset
			// the message declared.
			m.Raw = rebuild(th, w.applied.String(), w.charset)
		default:
			m.Raw = rebuild(th, m.Body, "utf-8")
		}
		if single && w.applied.String() != m.Body {
			m.applied = w.applied.String()
		}
	}
	return m, nil
}

// classify decides Kind and Reason. RFC 3834: Auto-Submitted other than
// "no" or a null return path is auto-generated. Precedence bulk and junk
// are taken as auto-generated too; Precedence list is not, since a list
// delivers the very patches the bridge exists for (the bridge still never
// answers KindAuto, and replies only in the thread).
func classify(m *Message, why string, html bool) (Kind, string) {
	switch {
	case len(m.Refci) > 0:
		return KindAuto, "it carries refci's own X-Refci-* headers: a mail loop"
	case m.AutoSubmitted != "" && m.AutoSubmitted != "no":
		return KindAuto, "auto-generated (Auto-Submitted: " + m.AutoSubmitted + ")"
	case m.HasReturnPath && strings.Trim(m.ReturnPath, "<> \t") == "":
		return KindAuto, "auto-generated (null Return-Path)"
	case m.Precedence == "bulk" || m.Precedence == "junk":
		return KindAuto, "auto-generated (Precedence: " + m.Precedence + ")"
	case m.Tag.Re:
		return KindReply, "a reply (Re: subject)"
	case why != "":
		return KindOther, why
	case !m.Tag.Patch:
		return KindOther, "no [PATCH] tag in the subject"
	case m.Tag.Index == 0:
		return KindCover, ""
	case hasDiff(m.Body):
		return KindPatch, ""
	case html && m.Body == "":
		return KindOther, "HTML-only mail holds no plain-text patch; send patches as plain text (git send-email)"
	}
	return KindOther, "no diff --git in the plain-text body"
}

func hasDiff(body string) bool {
	return strings.HasPrefix(body, "diff --git ") || strings.Contains(body, "\ndiff --git ")
}

// walker collects a message's text from its MIME tree.
type walker struct {
	body, applied  strings.Builder
	parts          int  // leaves and multiparts seen
	textParts      int  // parts taken into body
	multi          bool // a multipart was seen
	html           bool // a text/html part was seen
	unknownCharset bool
	charset        string   // the last text part's charset, lower case
	files          []string // patch files attached whole, as git am should read each
}

// patchFileLine is the first line of a file git format-patch writes.
var patchFileLine = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^From [0-9a-f]{40}(?:[0-9a-f]{24})? Mon Sep 17 00:00:00 2001\r?\n`)
})

// walk reads one entity (header h, raw body r) at depth (0 for the
// message); it returns why the MIME is broken, or "".
func (w *walker) walk(h textproto.Header, r io.Reader, depth int) string {
	w.parts++
	if w.parts > MaxMIMEParts {
		return fmt.Sprintf("more than %d MIME parts", MaxMIMEParts)
	}
	mh := message.Header{Header: h}
	mt, params := "text/plain", map[string]string(nil)
	if ct := h.Get("Content-Type"); ct != "" {
		var err error
		mt, params, err = mime.ParseMediaType(ct)
		if err != nil && !errors.Is(err, mime.ErrInvalidMediaParameter) {
			return fmt.Sprintf("bad Content-Type %q", ct)
		}
	}
	if strings.HasPrefix(mt, "multipart/") {
		w.multi = true
		if depth >= MaxMIMEDepth {
			return fmt.Sprintf("multiparts nested deeper than %d", MaxMIMEDepth)
		}
		b := params["boundary"]
		if b == "" {
			return mt + " without a boundary"
		}
		mr := textproto.NewMultipartReader(r, b)
		taken := w.textParts
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				return ""
			}
			if err != nil {
				return err.Error()
			}
			if mt == "multipart/alternative" && w.textParts > taken {
				continue // the text/plain alternative was taken: skip the rest
			}
			if why := w.walk(p.Header, p, depth+1); why != "" {
				return why
			}
		}
	}
	disp, dparams, _ := mh.ContentDisposition()
	name := strings.ToLower(dparams["filename"])
	if name == "" {
		name = strings.ToLower(params["name"])
	}
	attached := strings.EqualFold(disp, "attachment")
	isPatchName := strings.HasSuffix(name, ".patch") || strings.HasSuffix(name, ".diff")
	switch {
	case mt == "text/html":
		w.html = true
		return ""
	case mt == "text/plain" && (!attached || isPatchName),
		mt == "text/x-patch", mt == "text/x-diff", mt == "text/x-diff-patch",
		mt == "application/x-patch" && isPatchName:
	default:
		return "" // an attachment that holds no patch, a signature, an image...
	}
	// Undo the transfer encoding only (the header without its charset):
	// the charset is converted below, keeping the bytes git am applies.
	nh := message.Header{Header: h.Copy()}
	nh.Del("Content-Type")
	e, err := message.New(nh, r)
	if err != nil {
		return fmt.Sprintf("%s part: %v", mt, err)
	}
	b, err := io.ReadAll(e.Body)
	if err != nil {
		return fmt.Sprintf("%s part: %v", mt, err)
	}
	text := b
	switch cs := strings.ToLower(params["charset"]); cs {
	case "", "utf-8", "utf8", "us-ascii":
	default:
		if cr, err := charset.Reader(cs, bytes.NewReader(b)); err != nil || cr == nil {
			w.unknownCharset = true // read as is: an ASCII patch still applies
		} else if conv, err := io.ReadAll(cr); err == nil {
			text = conv
		} else {
			w.unknownCharset = true
		}
	}
	if mt != "text/plain" || attached {
		if line := patchFileLine().Find(text); line != nil {
			return w.patchFile(text[len(line):], depth)
		}
	}
	if strings.EqualFold(params["format"], "flowed") {
		// As git am reads it (RFC 3676 as git implements it): what
		// is checked is what is applied, and a rebuilt message is not
		// flowed any more.
		delsp := strings.EqualFold(params["delsp"], "yes")
		text, b = unflow(text, delsp), unflow(b, delsp)
	}
	w.textParts++
	w.charset = strings.ToLower(params["charset"])
	appendText(&w.body, text)
	appendText(&w.applied, b)
	return ""
}

// unflow joins the lines of format=flowed text as git mailinfo does: a
// line ending in a space continues on the next (without that space when
// delsp), a leading space is removed (stuffing), and the signature
// separator "-- " stays a line of its own.
func unflow(b []byte, delsp bool) []byte {
	var out, prev []byte
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if string(line) == "-- " {
			if len(prev) > 0 {
				out = append(append(out, prev...), '\n')
				prev = prev[:0]
			}
			out = append(out, "-- \n"...)
			continue
		}
		line = bytes.TrimPrefix(line, []byte(" "))
		if n := len(line); n > 0 && line[n-1] == ' ' {
			if delsp {
				n--
			}
			prev = append(prev, line[:n]...)
			continue
		}
		out = append(append(append(out, prev...), line...), '\n')
		prev = prev[:0]
	}
	if len(prev) > 0 {
		out = append(append(out, prev...), '\n')
	}
	return out
}

// patchFile reads an attached git format-patch file (after its first
// line) into w.files: From, Date and Subject as in-body header lines,
// then its text.
func (w *walker) patchFile(b []byte, depth int) string {
	if depth >= MaxMIMEDepth {
		return fmt.Sprintf("patch files nested deeper than %d", MaxMIMEDepth)
	}
	br := bufio.NewReader(bytes.NewReader(b))
	h, err := textproto.ReadHeader(br)
	if err != nil {
		return fmt.Sprintf("attached patch file: %v", err)
	}
	inner := &walker{parts: w.parts}
	why := inner.walk(h, br, depth+1)
	w.parts = inner.parts
	if why != "" {
		return "attached patch file: " + why
	}
	var sb strings.Builder
	for _, k := range []string{"From", "Date", "Subject"} {
		if v := decodeHeader(h.Get(k)); v != "" {
			sb.WriteString(k + ": " + v + "\n")
		}
	}
	sb.WriteString("\n")
	sb.WriteString(inner.body.String())
	w.files = append(w.files, sb.String())
	return ""
}

// appendText adds a part's text with LF line ends, ending in a line end
// (a part's last line end belongs to the boundary that follows it).
func appendText(sb *strings.Builder, b []byte) {
	s := string(b)
	if s != "" && !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	sb.WriteString(lf(s))
}

// lf ends lines with LF alone: any CRs before an LF are dropped (all of
// them, so that reading the result again changes nothing).
func lf(s string) string {
	if !strings.Contains(s, "\r\n") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	crs := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\r':
			crs++
			continue
		case '\n':
			crs = 0
		}
		for ; crs > 0; crs-- {
			b.WriteByte('\r')
		}
		b.WriteByte(s[i])
	}
	for ; crs > 0; crs-- {
		b.WriteByte('\r')
	}
	return b.String()
}

// rebuild makes the message git am reads: h's fields other than MIME's,
// and body as one text/plain 8bit part in charset cs ("" for US-ASCII).
func rebuild(h textproto.Header, body, cs string) []byte {
	ct := "text/plain"
	if cs != "" {
		if f := mime.FormatMediaType("text/plain", map[string]string{"charset": cs}); f != "" {
			ct = f
		}
	}
	out := h.Copy()
	for f := out.Fields(); f.Next(); {
		if k := strings.ToLower(f.Key()); strings.HasPrefix(k, "content-") || k == "mime-version" {
			f.Del()
		}
	}
	var b bytes.Buffer
	if err := textproto.WriteHeader(&b, out); err != nil {
		// A field go-message read but cannot write again: keep the
		// few git am reads.
		b.Reset()
		for _, k := range []string{"From", "Date", "Subject", "Message-Id"} {
			if v := h.Get(k); v != "" && utf8.ValidString(v) {
				fmt.Fprintf(&b, "%s: %s\r\n", k, strings.NewReplacer("\r", " ", "\n", " ").Replace(v))
			}
		}
	} else {
		b.Truncate(b.Len() - 2) // the header's end: MIME's fields go last
	}
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: " + ct + "\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
	b.WriteString(body)
	return b.Bytes()
}

// headerToken is the value's first token, lower case: "auto-generated;
// x=y" gives "auto-generated".
func headerToken(v string) string {
	v, _, _ = strings.Cut(v, ";")
	return strings.ToLower(strings.TrimSpace(v))
}

// wordDecoder decodes RFC 2047 words in any charset go-message's charset
// package knows; a word in another charset keeps its bytes rather than
// fail the whole header.
var wordDecoder = &mime.WordDecoder{CharsetReader: func(cs string, r io.Reader) (io.Reader, error) {
	if cr, err := charset.Reader(cs, r); err == nil && cr != nil {
		return cr, nil
	}
	return r, nil
}}

var addressParser = &netmail.AddressParser{WordDecoder: wordDecoder}

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
