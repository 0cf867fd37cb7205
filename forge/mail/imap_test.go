package mail

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures/dovecot"
)

func TestParseIMAPURL(t *testing.T) {
	good := []struct {
		url                         string
		scheme, host, addr, mailbox string
	}{
		{"imaps://mail.example.org", "imaps", "mail.example.org", "mail.example.org:993", "INBOX"},
		{"imaps://mail.example.org/", "imaps", "mail.example.org", "mail.example.org:993", "INBOX"},
		{"IMAPS://mail.example.org:1993/Lists/refci", "imaps", "mail.example.org", "mail.example.org:1993", "Lists/refci"},
		{"imap://mail.example.org/INBOX", "imap", "mail.example.org", "mail.example.org:143", "INBOX"},
		{"imap://[2001:db8::1]:10143/patches", "imap", "2001:db8::1", "[2001:db8::1]:10143", "patches"},
		{"imaps://mail.example.org/a%20b", "imaps", "mail.example.org", "mail.example.org:993", "a b"},
		{"imap+insecure://127.0.0.1:1143/INBOX", "imap+insecure", "127.0.0.1", "127.0.0.1:1143", "INBOX"},
		{"imap+insecure://127.9.9.9", "imap+insecure", "127.9.9.9", "127.9.9.9:143", "INBOX"},
		{"imap+insecure://[::1]:1143", "imap+insecure", "::1", "[::1]:1143", "INBOX"},
		{"imap+insecure://LocalHost/INBOX", "imap+insecure", "LocalHost", "LocalHost:143", "INBOX"},
	}
	for _, c := range good {
		got, err := parseIMAPURL(c.url)
		if err != nil {
			t.Errorf("%s: %v", c.url, err)
			continue
		}
		want := imapTarget{scheme: c.scheme, host: c.host, addr: c.addr, mailbox: c.mailbox}
		if got != want {
			t.Errorf("%s: got %+v, want %+v", c.url, got, want)
		}
	}
	bad := []struct{ url, says string }{
		{"pop3://mail.example.org", "scheme must be"},
		{"mail.example.org", "scheme must be"},
		{"imaps://ci:hunter2@mail.example.org/INBOX", "must not hold a user or password"},
		{"imaps://ci@mail.example.org/INBOX", "must not hold a user or password"},
		{"imaps:///INBOX", "no host"},
		{"imaps:mail.example.org", "no host"},
		{"imaps://mail.example.org/INBOX?x=1", "query or fragment"},
		{"imaps://mail.example.org/INBOX#x", "query or fragment"},
		{"imaps://mail.example.org:0/", "bad port"},
		{"imaps://mail.example.org:70000/", "bad port"},
		{"imaps://mail.example.org/a%0d%0aX LOGOUT", "control character"},
		{"imap+insecure://mail.example.org/INBOX", "only to a loopback address"},
		{"imap+insecure://10.0.0.1/INBOX", "only to a loopback address"},
		{"imap+insecure://[::ffff:10.0.0.1]/INBOX", "only to a loopback address"},
		{"imap+insecure://localhost.example.org/INBOX", "only to a loopback address"},
		{"imap+insecure://0.0.0.0/INBOX", "only to a loopback address"},
	}
	for _, c := range bad {
		_, err := parseIMAPURL(c.url)
		if err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: error %v, want one saying %q", c.url, err, c.says)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: the error shows the password: %v", c.url, err)
		}
	}
}

func TestAnnouncedLiteral(t *testing.T) {
	for in, want := range map[string]int64{
		"* 1 FETCH (BODY[] {123}\r":   123,
		"* 1 FETCH (BODY[] {0}\r":     0,
		"a LOGIN {5+}\r":              5,
		"{99999999999999999999999}\r": 1<<63 - 1,
	} {
		if n, ok := announced([]byte(in)); !ok || n != want {
			t.Errorf("%q: %d %v, want %d", in, n, ok, want)
		}
	}
	for _, in := range []string{"* OK done\r", "{12}", "x {}\r", "x {1a}\r", "\"{12}\" x\r"} {
		if n, ok := announced([]byte(in)); ok {
			t.Errorf("%q: taken as a literal of %d", in, n)
		}
	}
}

// TestIMAPPlainTextRefusedBeforeDialing: a plain-text URL naming another
// machine is refused by DialIMAP at once (192.0.2.1 is TEST-NET-1:
// dialing it would hang until the timeout).
func TestIMAPPlainTextRefusedBeforeDialing(t *testing.T) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := DialIMAP(ctx, IMAPConfig{URL: "imap+insecure://192.0.2.1/INBOX", User: "ci", Password: "secret-password"})
	if err == nil || !strings.Contains(err.Error(), "only to a loopback address") {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("refusing took %s: did it dial?", d)
	}
}

// imapMessage is a small mail with CRLF line ends (so that Dovecot serves
// it byte for byte).
func imapMessage(id, body string) []byte {
	return []byte(strings.ReplaceAll(fmt.Sprintf("From: A U Thor <author@example.invalid>\n"+
		"To: ci@example.invalid\nSubject: [PATCH] %s\nDate: Tue, 14 Nov 2023 22:13:20 +0000\n"+
		"Message-ID: <%s>\n\n%s\n", id, id, body), "\n", "\r\n"))
}

func dialBox(t testing.TB, url string, roots *dovecot.Server) *IMAPBox {
	t.Helper()
	cfg := IMAPConfig{URL: url, User: dovecot.User, Password: dovecot.Password, Timeout: 30 * time.Second}
	if roots != nil {
		cfg.TLS = &tls.Config{RootCAs: roots.CAPool}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := DialIMAP(ctx, cfg)
	if err != nil {
		t.Fatalf("DialIMAP %s: %v", url, err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func newMail(t testing.TB, b *IMAPBox) []Envelope {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	envs, err := b.New(ctx)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return envs
}

func messageIDs(envs []Envelope) []string {
	var out []string
	for _, e := range envs {
		out = append(out, e.MessageID)
	}
	return out
}

func fetch(t testing.TB, b *IMAPBox, e Envelope, max int64) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	raw, err := b.Fetch(ctx, e, max)
	if err != nil {
		t.Fatalf("Fetch %s: %v", e.Key, err)
	}
	return raw
}

// TestIMAPNewFetchWait: mail delivered before and during a Wait is
// returned once each, byte for byte, without marking it \Seen.
func TestIMAPNewFetchWait(t *testing.T) {
	s := dovecot.Start(t)
	m1, m2, m3 := imapMessage("one@example.invalid", "first"), imapMessage("two@example.invalid", "second"), imapMessage("three@example.invalid", "third")
	s.Deliver(t, s.User, m1)
	s.Deliver(t, s.User, m2)
	b := dialBox(t, "imaps://"+s.TLSAddr+"/INBOX", s)

	envs := newMail(t, b)
	got := messageIDs(envs)
	slices.Sort(got) // two deliveries before the first look: either order
	if !slices.Equal(got, []string{"one@example.invalid", "two@example.invalid"}) {
		t.Fatalf("first New: %v", envs)
	}
	for _, e := range envs {
		want := m1
		if e.MessageID == "two@example.invalid" {
			want = m2
		}
		if raw := fetch(t, b, e, 1<<20); !bytes.Equal(raw, want) {
			t.Fatalf("Fetch %s:\n%q\nwant\n%q", e.Key, raw, want)
		}
		if e.Size != int64(len(want)) || !strings.Contains(e.Key, "/") {
			t.Fatalf("envelope %+v: want size %d and a <uidvalidity>/<uid> key", e, len(want))
		}
	}
	if envs := newMail(t, b); len(envs) != 0 {
		t.Fatalf("second New returned %v again", envs)
	}

	// Nothing new: Wait returns after d.
	ctx := context.Background()
	start := time.Now()
	if err := b.Wait(ctx, 300*time.Millisecond); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("Wait returned after %s with nothing new", d)
	}

	// Delivered during a Wait: IDLE wakes it long before d.
	waited := make(chan error, 1)
	isIdling := idling(t, b)
	go func() { waited <- b.Wait(ctx, 10*time.Minute) }()
	isIdling()
	s.Deliver(t, s.User, m3)
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("Wait: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Wait did not return after a delivery")
	}
	envs = newMail(t, b)
	if !slices.Equal(messageIDs(envs), []string{"three@example.invalid"}) {
		t.Fatalf("New after Wait: %v", envs)
	}
	if raw := fetch(t, b, envs[0], 1<<20); !bytes.Equal(raw, m3) {
		t.Fatalf("Fetch: %q", raw)
	}

	// A cancelled Wait ends IDLE cleanly: the session goes on.
	cctx, cancel := context.WithCancel(ctx)
	isIdling = idling(t, b)
	go func() { isIdling(); cancel() }()
	if err := b.Wait(cctx, 10*time.Minute); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Wait: %v", err)
	}
	dials := b.stats.dials.Load()
	if envs := newMail(t, b); len(envs) != 0 || b.stats.dials.Load() != dials {
		t.Fatalf("after a cancelled Wait: %v, %d dials (was %d)", envs, b.stats.dials.Load(), dials)
	}

	// Read only: nothing was marked \Seen (Maildir flag S), deleted or moved.
	cur, _ := filepath.Glob(filepath.Join(maildir(s), "cur", "*"))
	nw, _ := filepath.Glob(filepath.Join(maildir(s), "new", "*"))
	if len(cur)+len(nw) != 3 {
		t.Fatalf("the Maildir holds %d messages, want 3", len(cur)+len(nw))
	}
	for _, f := range cur {
		if _, flags, _ := strings.Cut(filepath.Base(f), ":2,"); strings.Contains(flags, "S") {
			t.Fatalf("%s is marked seen", f)
		}
	}
}

func maildir(s *dovecot.Server) string {
	return filepath.Join(filepath.Dir(s.LogPath()), "mail", s.User)
}

// idling returns a function that waits until the server has said it
// is idling ("+ idling") after the call of idling; call idling before
// starting Wait.
func idling(t testing.TB, b *IMAPBox) func() {
	t.Helper()
	select {
	case <-b.stats.plus:
	default:
	}
	return func() {
		t.Helper()
		select {
		case <-b.stats.plus:
		case <-time.After(2 * time.Minute):
			t.Error("the server never said it was idling")
		}
	}
}
