package mail

// The connection under IMAPBox: TLS and STARTTLS, the greeting, and two
// wrappers of the stream (wire: deadlines, counts and cutting at the TCP
// level; guard: literal and line sizes inside TLS).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func (b *IMAPBox) tlsConfig() *tls.Config {
	cfg := &tls.Config{}
	if b.tls != nil {
		cfg = b.tls.Clone()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = b.target.host
	}
	if cfg.MinVersion == 0 {
		cfg.MinVersion = tls.VersionTLS12
	}
	return cfg
}

func (b *IMAPBox) tlsError(err error) error {
	return fmt.Errorf("TLS with %s (%s): %v (is the certificate valid for %s and from a CA this machine trusts?)", b.target.host, b.target, err, b.target.host)
}

// startTLS reads the greeting, checks that the server offers STARTTLS,
// issues it and does the handshake. It reads no further than the tagged
// answer to STARTTLS and refuses a server that sends more before TLS
// (plain text injected there would be taken as protected).
//
// A server on a loopback address (the address connected to, not the
// name) that offers no STARTTLS is spoken to in plain text, as smtp://
// does: startTLS then returns a nil conn and the plain session's
// greeting and what the server sent after it.
func (b *IMAPBox) startTLS(ctx context.Context, w *wire) (conn net.Conn, greeting string, rest []byte, err error) {
	t := b.target
	br := bufio.NewReaderSize(w, 4096)
	line, err := readLine(br)
	if err != nil {
		return nil, "", nil, fmt.Errorf("connect to %s: no IMAP greeting: %v", t, errOr(w.err(), err))
	}
	if !strings.HasPrefix(line, "* OK") {
		return nil, "", nil, fmt.Errorf("connect to %s: the server greeted with %q, not * OK: STARTTLS is impossible", t, line)
	}
	caps := capabilities(line)
	if caps == nil {
		if _, err := io.WriteString(w, "C1 CAPABILITY\r\n"); err != nil {
			return nil, "", nil, fmt.Errorf("connect to %s: %v", t, err)
		}
		for {
			line, err := readLine(br)
			if err != nil {
				return nil, "", nil, fmt.Errorf("connect to %s: CAPABILITY: %v", t, errOr(w.err(), err))
			}
			if rest, ok := strings.CutPrefix(line, "* CAPABILITY "); ok {
				caps = strings.Fields(strings.ToUpper(rest))
			} else if strings.HasPrefix(line, "C1 ") {
				break
			}
		}
	}
	if !slices.Contains(caps, "STARTTLS") {
		if a, ok := w.RemoteAddr().(*net.TCPAddr); ok && a.IP.IsLoopback() {
			if slices.Contains(caps, "LOGINDISABLED") {
				return nil, "", nil, imapConfigError{fmt.Errorf("connect to %s: the server offers neither STARTTLS nor a login in plain text (LOGINDISABLED): use imaps://", t)}
			}
			rest, _ := br.Peek(br.Buffered())
			return nil, line, bytes.Clone(rest), nil
		}
		return nil, "", nil, imapConfigError{fmt.Errorf("connect to %s: the server does not offer STARTTLS; use imaps://, or for a server on this machine imap:// to a loopback address or imap+insecure://", t)}
	}
	if _, err := io.WriteString(w, "C2 STARTTLS\r\n"); err != nil {
		return nil, "", nil, fmt.Errorf("connect to %s: %v", t, err)
	}
	for {
		line, err := readLine(br)
		if err != nil {
			return nil, "", nil, fmt.Errorf("connect to %s: STARTTLS: %v", t, errOr(w.err(), err))
		}
		if rest, ok := strings.CutPrefix(line, "C2 "); ok {
			if !strings.HasPrefix(strings.ToUpper(rest), "OK") {
				return nil, "", nil, fmt.Errorf("connect to %s: the server refused STARTTLS: %s", t, rest)
			}
			break
		}
	}
	if br.Buffered() > 0 {
		return nil, "", nil, fmt.Errorf("connect to %s: the server sent data after accepting STARTTLS, before TLS began: refused (someone in the middle?)", t)
	}
	tc := tls.Client(w, b.tlsConfig())
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, "", nil, b.tlsError(err)
	}
	return tc, "", nil, nil
}

// readLine reads one line of at most 4 KiB, without its CRLF.
func readLine(br *bufio.Reader) (string, error) {
	line, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return "", errors.New("a line longer than 4 KiB")
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

// capabilities returns the capabilities of a greeting's [CAPABILITY ...]
// code, upper case, or nil when it has none.
func capabilities(greeting string) []string {
	_, rest, ok := strings.Cut(greeting, "[CAPABILITY ")
	if !ok {
		return nil
	}
	list, _, ok := strings.Cut(rest, "]")
	if !ok {
		return nil
	}
	return strings.Fields(strings.ToUpper(list))
}

// imapLog sends go-imap's own complaints (a read error when a connection
// ends) to the logger, at debug level.
type imapLog struct{ log *slog.Logger }

func (l imapLog) Printf(format string, v ...any) {
	l.log.Debug("go-imap: " + fmt.Sprintf(format, v...))
}

func (l imapLog) Println(v ...any) {
	l.log.Debug("go-imap: " + strings.TrimSuffix(fmt.Sprintln(v...), "\n"))
}

// wire is the TCP connection: it counts bytes, keeps an inactivity
// deadline while an operation runs (none in between, so an idle session
// is not cut), and can be cut from another goroutine. go-imap's own
// deadline calls are ignored: it would clear ours.
type wire struct {
	net.Conn
	stats *imapStats

	mu      sync.Mutex
	timeout time.Duration // 0: no deadline
	broken  error
}

func (w *wire) Read(p []byte) (int, error) {
	w.mu.Lock()
	if w.broken != nil {
		w.mu.Unlock()
		return 0, w.broken
	}
	if w.timeout > 0 {
		w.Conn.SetReadDeadline(time.Now().Add(w.timeout))
	}
	w.mu.Unlock()
	n, err := w.Conn.Read(p)
	w.stats.bytesIn.Add(int64(n))
	return n, w.wrap(err)
}

func (w *wire) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.broken != nil {
		w.mu.Unlock()
		return 0, w.broken
	}
	if w.timeout > 0 {
		w.Conn.SetWriteDeadline(time.Now().Add(w.timeout))
	}
	w.mu.Unlock()
	n, err := w.Conn.Write(p)
	w.stats.bytesOut.Add(int64(n))
	return n, w.wrap(err)
}

// wrap says why a read or write failed: the cut's reason, or a timeout.
func (w *wire) wrap(err error) error {
	if err == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.broken != nil {
		return w.broken
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		w.broken = fmt.Errorf("no answer from the server within %s", w.timeout)
		return w.broken
	}
	return err
}

func (w *wire) SetDeadline(time.Time) error      { return nil }
func (w *wire) SetReadDeadline(time.Time) error  { return nil }
func (w *wire) SetWriteDeadline(time.Time) error { return nil }

func (w *wire) arm(timeout time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.timeout = timeout
	if w.broken == nil {
		w.Conn.SetDeadline(time.Now().Add(timeout))
	}
}

func (w *wire) disarm() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.timeout = 0
	if w.broken == nil {
		w.Conn.SetDeadline(time.Time{})
	}
}

// cut makes every read and write fail with err from now on, and
// interrupts those in progress.
func (w *wire) cut(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.broken == nil {
		w.broken = err
		w.Conn.SetDeadline(time.Unix(1, 0))
	}
}

func (w *wire) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.broken
}

// guard is the IMAP stream as go-imap reads it (inside TLS). It first
// serves prefix (a greeting), then checks every literal the server
// announces ({N} at the end of a line) against limit, failing the read
// before go-imap allocates N bytes for it. It counts the command lines
// written.
type guard struct {
	net.Conn
	prefix []byte
	stats  *imapStats

	limitMu sync.Mutex
	limit   int64
	tripped atomic.Bool

	// Reader state, only touched by the reading goroutine.
	inLiteral int64  // bytes of the current literal still to come
	tail      []byte // the end of the current line, up to 24 bytes
	lineLen   int64  // bytes of the current line so far, literals aside
}

func (g *guard) setLimit(n int64) {
	g.limitMu.Lock()
	g.limit = n
	g.limitMu.Unlock()
}

var errLiteralTooLarge = errors.New("the server announced a string larger than allowed")

func (g *guard) Read(p []byte) (int, error) {
	if len(g.prefix) > 0 {
		n := copy(p, g.prefix)
		g.prefix = g.prefix[n:]
		return n, nil
	}
	n, err := g.Conn.Read(p)
	if n > 0 {
		if serr := g.scan(p[:n]); serr != nil {
			return 0, serr
		}
	}
	return n, err
}

// scan follows the stream: literal bodies are skipped, and a line that
// ends in {N} or {N+} announces a literal of N bytes.
func (g *guard) scan(b []byte) error {
	for i := 0; i < len(b); {
		if g.inLiteral > 0 {
			k := int64(len(b) - i)
			if k > g.inLiteral {
				k = g.inLiteral
			}
			g.inLiteral -= k
			i += int(k)
			continue
		}
		c := b[i]
		i++
		if c != '\n' {
			if g.lineLen++; g.lineLen > maxLine {
				return fmt.Errorf("the server sent a line longer than %d bytes", maxLine)
			}
			if len(g.tail) == 24 {
				copy(g.tail, g.tail[1:])
				g.tail = g.tail[:23]
			}
			g.tail = append(g.tail, c)
			continue
		}
		g.lineLen = 0
		n, ok := announced(g.tail)
		if len(g.tail) > 0 && g.tail[0] == '+' {
			select {
			case g.stats.plus <- struct{}{}:
			default:
			}
		}
		g.tail = g.tail[:0]
		if !ok {
			continue
		}
		g.limitMu.Lock()
		limit := g.limit
		g.limitMu.Unlock()
		if n > limit {
			g.tripped.Store(true)
			return fmt.Errorf("%w: %d bytes, at most %d", errLiteralTooLarge, n, limit)
		}
		g.inLiteral = n
	}
	return nil
}

// announced parses a line's end "{N}\r" or "{N+}\r".
func announced(tail []byte) (int64, bool) {
	t, ok := bytes.CutSuffix(tail, []byte("}\r"))
	if !ok {
		return 0, false
	}
	t = bytes.TrimSuffix(t, []byte("+"))
	i := bytes.LastIndexByte(t, '{')
	if i < 0 || i == len(t)-1 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(t[i+1:]), 10, 64)
	if err != nil || n < 0 {
		// Too long to be a number: larger than any limit.
		return 1<<63 - 1, len(t)-i-1 > 18 && allDigits(t[i+1:])
	}
	return n, true
}

func allDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(b) > 0
}

func (g *guard) Write(p []byte) (int, error) {
	g.stats.lines.Add(int64(bytes.Count(p, []byte("\r\n"))))
	return g.Conn.Write(p)
}
