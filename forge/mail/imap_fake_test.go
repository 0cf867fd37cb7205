package mail

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// fakeIMAP is a hostile server on 127.0.0.1, in addition to the real
// Dovecot: it serves one connection with serve and returns its address.
func fakeIMAP(t *testing.T, serve func(c net.Conn, r *bufio.Reader)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		serve(c, bufio.NewReader(c))
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String()
}

// answer answers LOGIN and EXAMINE as a server would and everything else
// with other's reply (tag, command line), until the client goes.
func answer(c net.Conn, r *bufio.Reader, other func(tag, line string) string) {
	io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 IDLE] fake ready\r\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		tag, cmd, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		switch verb, _, _ := strings.Cut(cmd, " "); strings.ToUpper(verb) {
		case "LOGIN":
			fmt.Fprintf(c, "%s OK logged in\r\n", tag)
		case "EXAMINE":
			fmt.Fprintf(c, "* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n%s OK [READ-ONLY] done\r\n", tag)
		case "LOGOUT":
			fmt.Fprintf(c, "* BYE\r\n%s OK bye\r\n", tag)
			return
		default:
			io.WriteString(c, other(tag, cmd))
		}
	}
}

// TestIMAPLyingServer: a server that announces a 4 GB string for a
// message whose size it gave as 10 bytes gets the connection cut before
// anything is allocated for the string; Fetch says ErrTooLarge.
func TestIMAPLyingServer(t *testing.T) {
	addr := fakeIMAP(t, func(c net.Conn, r *bufio.Reader) {
		answer(c, r, func(tag, cmd string) string {
			if strings.HasPrefix(cmd, "UID FETCH") {
				return "* 1 FETCH (UID 1 RFC822.SIZE 10 BODY[]<0> {4000000000}\r\n" + strings.Repeat("x", 4096)
			}
			return tag + " OK\r\n"
		})
	})
	b := dialBox(t, "imap+insecure://"+addr, nil)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := b.Fetch(context.Background(), Envelope{Key: "7/1", Size: 10}, 1<<20)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "the server sent more than") {
		t.Fatalf("Fetch: %v", err)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 64<<20 {
		t.Fatalf("Fetch allocated %d bytes", d)
	}
}

// TestIMAPSTARTTLSInjection: plain text a server (or someone in the
// middle) sends after accepting STARTTLS, before TLS, is refused.
func TestIMAPSTARTTLSInjection(t *testing.T) {
	addr := fakeIMAP(t, func(c net.Conn, r *bufio.Reader) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
		line, _ := r.ReadString('\n')
		tag, _, _ := strings.Cut(line, " ")
		io.WriteString(c, tag+" OK begin TLS\r\n* 1 EXISTS\r\n")
		io.Copy(io.Discard, r)
	})
	_, err := DialIMAP(context.Background(), IMAPConfig{URL: "imap://" + addr, User: "ci", Password: "pw"})
	if err == nil || !strings.Contains(err.Error(), "sent data after accepting STARTTLS") {
		t.Fatalf("DialIMAP: %v", err)
	}
}

// TestIMAPTimeout: a server that accepts but never greets is given up
// after the timeout, with an error that says so.
func TestIMAPTimeout(t *testing.T) {
	addr := fakeIMAP(t, func(c net.Conn, r *bufio.Reader) { io.Copy(io.Discard, r) })
	start := time.Now()
	_, err := DialIMAP(context.Background(), IMAPConfig{URL: "imap+insecure://" + addr, User: "ci", Password: "pw", Timeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "no answer from the server within 300ms") {
		t.Fatalf("DialIMAP: %v", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("gave up after %s", d)
	}
	// A cancelled context ends a dial at once, too.
	ctx, cancel := context.WithCancel(context.Background())
	addr = fakeIMAP(t, func(c net.Conn, r *bufio.Reader) { cancel(); io.Copy(io.Discard, r) })
	_, err = DialIMAP(ctx, IMAPConfig{URL: "imap+insecure://" + addr, User: "ci", Password: "pw"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("DialIMAP with a cancelled context: %v", err)
	}
}

// TestIMAPEndlessLine: a server that sends a line without end is cut off
// after maxLine bytes.
func TestIMAPEndlessLine(t *testing.T) {
	addr := fakeIMAP(t, func(c net.Conn, r *bufio.Reader) {
		io.WriteString(c, "* OK ready\r\n")
		r.ReadString('\n')
		io.WriteString(c, "* OK ")
		chunk := []byte(strings.Repeat("x", 1<<20))
		for i := 0; i < maxLine>>20+2; i++ {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	_, err := DialIMAP(context.Background(), IMAPConfig{URL: "imap+insecure://" + addr, User: "ci", Password: "pw"})
	if err == nil || !strings.Contains(err.Error(), "connection lost") {
		t.Fatalf("DialIMAP: %v", err)
	}
}

// TestIMAPGreetings: a server that says BYE, or refuses LOGIN without
// TLS, or does not speak IMAP, is refused with an error that says so.
func TestIMAPGreetings(t *testing.T) {
	for greeting, says := range map[string]string{
		"* BYE too many connections\r\n":                      "refused the session: too many connections",
		"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED] ready\r\n": "LOGINDISABLED",
		"220 smtp.example.invalid ESMTP\r\n":                  "not an IMAP greeting",
	} {
		addr := fakeIMAP(t, func(c net.Conn, r *bufio.Reader) {
			io.WriteString(c, greeting)
			io.Copy(io.Discard, r)
		})
		_, err := DialIMAP(context.Background(), IMAPConfig{URL: "imap+insecure://" + addr, User: "ci", Password: "pw"})
		if err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("greeting %q: %v", greeting, err)
		}
	}
}
