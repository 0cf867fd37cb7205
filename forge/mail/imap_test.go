package mail

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
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

func envelopeIDs(envs []Envelope) []string {
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
	got := envelopeIDs(envs)
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
	waited := waitIdling(t, b, ctx, 10*time.Minute)
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
	if !slices.Equal(envelopeIDs(envs), []string{"three@example.invalid"}) {
		t.Fatalf("New after Wait: %v", envs)
	}
	if raw := fetch(t, b, envs[0], 1<<20); !bytes.Equal(raw, m3) {
		t.Fatalf("Fetch: %q", raw)
	}

	// A cancelled Wait ends IDLE cleanly: the session goes on.
	cctx, cancel := context.WithCancel(ctx)
	waited = waitIdling(t, b, cctx, 10*time.Minute)
	cancel()
	if err := <-waited; !errors.Is(err, context.Canceled) {
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

// waitIdling starts b.Wait(ctx, d) and returns, with the channel its
// result comes on, once the server has said it is idling ("+ idling").
// A Wait that returns before (a wake-up left from before, which the
// interface allows) is started again.
func waitIdling(t testing.TB, b *IMAPBox, ctx context.Context, d time.Duration) <-chan error {
	t.Helper()
	for range 5 {
		select {
		case <-b.stats.plus:
		default:
		}
		waited := make(chan error, 1)
		go func() { waited <- b.Wait(ctx, d) }()
		select {
		case <-b.stats.plus:
			return waited
		case err := <-waited:
			if err != nil {
				t.Fatalf("Wait: %v", err)
			}
		case <-time.After(2 * time.Minute):
			t.Fatal("the server never said it was idling")
		}
	}
	t.Fatal("Wait returns at once, again and again")
	return nil
}

func dialErr(t testing.TB, cfg IMAPConfig) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := DialIMAP(ctx, cfg)
	if err == nil {
		b.Close()
		t.Fatalf("DialIMAP %s worked", cfg.URL)
	}
	if strings.Contains(err.Error(), cfg.Password) {
		t.Fatalf("the error shows the password: %v", err)
	}
	return err
}

// TestIMAPTLS: imaps and STARTTLS with the server's CA; both refused with
// the system's roots, naming the host.
func TestIMAPTLS(t *testing.T) {
	s := dovecot.Start(t)
	s.Deliver(t, s.User, imapMessage("tls@example.invalid", "x"))
	for _, url := range []string{"imaps://" + s.TLSAddr + "/INBOX", "imap://" + s.Addr} {
		b := dialBox(t, url, s)
		if envs := newMail(t, b); !slices.Equal(envelopeIDs(envs), []string{"tls@example.invalid"}) {
			t.Fatalf("%s: %v", url, envs)
		}
		if tc, ok := b.sess.guard.Conn.(*tls.Conn); !ok || tc.ConnectionState().Version < tls.VersionTLS12 {
			t.Fatalf("%s: not over TLS 1.2+", url)
		}
		err := dialErr(t, IMAPConfig{URL: url, User: s.User, Password: s.Password})
		if !strings.Contains(err.Error(), "TLS with 127.0.0.1") || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("%s with the system's roots: %v", url, err)
		}
	}
}

// TestIMAPWithoutSTARTTLS: imap:// is refused by a server that offers no
// STARTTLS; imap+insecure:// to it on 127.0.0.1 works.
func TestIMAPWithoutSTARTTLS(t *testing.T) {
	s := dovecot.StartPlain(t)
	s.Deliver(t, s.User, imapMessage("plain@example.invalid", "x"))
	// imap:// to a server on a loopback address that offers no
	// STARTTLS speaks plain text, as smtp:// does; so does
	// imap+insecure:// (which never tries STARTTLS).
	for _, url := range []string{"imap://" + s.Addr, "imap+insecure://" + s.Addr} {
		b := dialBox(t, url, nil)
		if envs := newMail(t, b); !slices.Equal(envelopeIDs(envs), []string{"plain@example.invalid"}) {
			t.Fatalf("%s: %v", url, envs)
		}
	}
}

func TestIMAPWrongPassword(t *testing.T) {
	s := dovecot.Start(t)
	err := dialErr(t, IMAPConfig{URL: "imaps://" + s.TLSAddr, User: s.User, Password: "not-the-password-4711", TLS: &tls.Config{RootCAs: s.CAPool}})
	if !strings.Contains(err.Error(), "refused the user or password (check user and password_file)") || !errors.Is(err, ErrIMAPConfig) {
		t.Fatalf("wrong password: %v", err)
	}
	err = dialErr(t, IMAPConfig{URL: "imaps://" + s.TLSAddr + "/NoSuchFolder", User: s.User, Password: s.Password, TLS: &tls.Config{RootCAs: s.CAPool}})
	if !strings.Contains(err.Error(), `open mailbox "NoSuchFolder"`) || !strings.Contains(err.Error(), "does the mailbox exist?") || !errors.Is(err, ErrIMAPConfig) {
		t.Fatalf("missing mailbox: %v", err)
	}
	s.Stop(t)
	err = dialErr(t, IMAPConfig{URL: "imaps://" + s.TLSAddr, User: s.User, Password: s.Password, TLS: &tls.Config{RootCAs: s.CAPool}})
	if !strings.Contains(err.Error(), "connect to imaps://"+s.TLSAddr) || !strings.Contains(err.Error(), "is the server up") || errors.Is(err, ErrIMAPConfig) {
		t.Fatalf("server down: %v", err)
	}
}

// TestIMAPRestart: Dovecot restarted between calls, and during a Wait;
// the next call reconnects and goes on after the last message returned.
func TestIMAPRestart(t *testing.T) {
	s := dovecot.Start(t)
	s.Deliver(t, s.User, imapMessage("before@example.invalid", "x"))
	b := dialBox(t, "imaps://"+s.TLSAddr, s)
	if envs := newMail(t, b); !slices.Equal(envelopeIDs(envs), []string{"before@example.invalid"}) {
		t.Fatalf("first New: %v", envs)
	}
	uv := b.uidValidity

	s.Restart(t)
	s.Deliver(t, s.User, imapMessage("after@example.invalid", "x"))
	envs := newMail(t, b)
	if !slices.Equal(envelopeIDs(envs), []string{"after@example.invalid"}) {
		t.Fatalf("New after a restart: %v", envs)
	}
	if b.stats.dials.Load() != 2 || b.uidValidity != uv {
		t.Fatalf("%d dials, UIDVALIDITY %d (was %d)", b.stats.dials.Load(), b.uidValidity, uv)
	}
	if raw := fetch(t, b, envs[0], 1<<20); !bytes.Contains(raw, []byte("<after@example.invalid>")) {
		t.Fatalf("Fetch after a restart: %q", raw)
	}

	// Stopped during a Wait: Wait returns, New says what failed and the
	// one after the restart goes on.
	waited := waitIdling(t, b, context.Background(), 10*time.Minute)
	s.Stop(t)
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("Wait cut by a stop: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Wait did not return when the server stopped")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := b.New(ctx); err == nil || !strings.Contains(err.Error(), "is the server up") {
		t.Fatalf("New with the server down: %v", err)
	}
	if err := b.Wait(ctx, time.Minute); err == nil {
		t.Fatal("Wait with the server down: no error")
	}
	s.Restart(t)
	s.Deliver(t, s.User, imapMessage("later@example.invalid", "x"))
	if envs := newMail(t, b); !slices.Equal(envelopeIDs(envs), []string{"later@example.invalid"}) {
		t.Fatalf("New after the second restart: %v", envs)
	}

	// A renumbered mailbox (its UIDVALIDITY changed: here, recreated) is
	// read from the start.
	s.Stop(t)
	md := maildir(s)
	for _, f := range []string{"dovecot-uidlist", "dovecot-uidvalidity", "dovecot.index", "dovecot.index.log", "dovecot.index.cache"} {
		os.Remove(filepath.Join(md, f))
	}
	olds, _ := filepath.Glob(filepath.Join(md, "dovecot-uidvalidity.*"))
	for _, f := range olds {
		os.Remove(f)
	}
	s.Restart(t)
	envs = newMail(t, b)
	got := envelopeIDs(envs)
	slices.Sort(got)
	if !slices.Equal(got, []string{"after@example.invalid", "before@example.invalid", "later@example.invalid"}) || b.uidValidity == uv {
		t.Fatalf("New after renumbering: %v (UIDVALIDITY %d, was %d)", envs, b.uidValidity, uv)
	}
	// A key of the old numbering is refused, not taken for another message.
	if _, err := b.Fetch(ctx, Envelope{Key: fmt.Sprintf("%d/1", uv)}, 1<<20); err == nil || !strings.Contains(err.Error(), "renumbered") {
		t.Fatalf("Fetch with an old key: %v", err)
	}
}

// TestIMAPTooLarge: a 50 MB message is refused by its size without being
// downloaded; an envelope that understates it gets at most max+1 bytes.
func TestIMAPTooLarge(t *testing.T) {
	s := dovecot.Start(t)
	line := strings.Repeat("x", 76) + "\r\n"
	big := append(imapMessage("big@example.invalid", "big"), bytes.Repeat([]byte(line), 50<<20/len(line))...)
	s.Deliver(t, s.User, big)
	b := dialBox(t, "imaps://"+s.TLSAddr, s)
	envs := newMail(t, b)
	if len(envs) != 1 || envs[0].Size != int64(len(big)) {
		t.Fatalf("New: %v, want one of %d bytes", envs, len(big))
	}
	ctx := context.Background()
	in := b.stats.bytesIn.Load()
	const max = 1 << 20
	if _, err := b.Fetch(ctx, envs[0], max); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Fetch: %v", err)
	}
	if d := b.stats.bytesIn.Load() - in; d != 0 {
		t.Fatalf("refusing by size read %d bytes", d)
	}
	lying := envs[0]
	lying.Size = 100
	if _, err := b.Fetch(ctx, lying, max); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Fetch with an understated size: %v", err)
	}
	if d := b.stats.bytesIn.Load() - in; d > max+64<<10 {
		t.Fatalf("Fetch with an understated size read %d bytes", d)
	}
	t.Logf("understated size: %d bytes read for a limit of %d", b.stats.bytesIn.Load()-in, max)
	// The session goes on.
	if envs := newMail(t, b); len(envs) != 0 {
		t.Fatalf("New: %v", envs)
	}
}

// TestIMAPThousand: New costs a NOOP, one search and one fetch, however
// many messages there are, and a NOOP and a search when there are none.
func TestIMAPThousand(t *testing.T) {
	s := dovecot.Start(t)
	for i := range 1000 {
		s.Deliver(t, s.User, imapMessage(fmt.Sprintf("m%d@example.invalid", i), "x"))
	}
	b := dialBox(t, "imaps://"+s.TLSAddr, s)
	lines := b.stats.lines.Load()
	start := time.Now()
	envs := newMail(t, b)
	took := time.Since(start)
	if len(envs) != 1000 || b.stats.lines.Load()-lines != 3 {
		t.Fatalf("New: %d messages with %d commands; want 1000 with 3", len(envs), b.stats.lines.Load()-lines)
	}
	seen := map[string]bool{}
	for _, e := range envs {
		seen[e.MessageID] = true
	}
	if len(seen) != 1000 {
		t.Fatalf("%d distinct Message-IDs", len(seen))
	}
	lines = b.stats.lines.Load()
	if envs := newMail(t, b); len(envs) != 0 || b.stats.lines.Load()-lines != 2 {
		t.Fatalf("second New: %d messages with %d commands", len(envs), b.stats.lines.Load()-lines)
	}
	t.Logf("New over 1,000 messages: %s, 3 commands", took)
}

// TestIMAPHugeHeader: a message with a 2 MB Message-ID header does not
// stall New (only its first 4 KiB are asked for), and the mail after it
// is read as usual, delivered between two calls of New without a Wait
// between them (New's NOOP makes Dovecot look).
func TestIMAPHugeHeader(t *testing.T) {
	s := dovecot.Start(t)
	huge := imapMessage(strings.Repeat("a", 2<<20)+"@example.invalid", "x")
	s.Deliver(t, s.User, huge)
	b := dialBox(t, "imaps://"+s.TLSAddr, s)
	envs := newMail(t, b)
	if len(envs) != 1 || envs[0].Size != int64(len(huge)) || len(envs[0].MessageID) > 4096 {
		t.Fatalf("New: %d envelopes, size %d, Message-ID of %d bytes", len(envs), envs[0].Size, len(envs[0].MessageID))
	}
	if raw := fetch(t, b, envs[0], 8<<20); !bytes.Equal(raw, huge) {
		t.Fatal("Fetch of the huge message differs")
	}
	s.Deliver(t, s.User, imapMessage("next@example.invalid", "x"))
	if envs := newMail(t, b); !slices.Equal(envelopeIDs(envs), []string{"next@example.invalid"}) {
		t.Fatalf("New after the huge one: %v", envs)
	}
}
