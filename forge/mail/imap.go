package mail

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap"
	"github.com/emersion/go-imap/client"
)

// DefaultIMAPTimeout is IMAPConfig.Timeout's default: how long any network
// step (connecting, the TLS handshake, one command) may go without a byte
// from the server.
const DefaultIMAPTimeout = time.Minute

// RecheckInterval is how long a bridge waits in Wait before it looks at
// the mailbox again anyway (IMAP IDLE notifications can be lost). Each
// Wait issues IDLE anew, so IDLE is re-issued at least this often, well
// within the 29 minutes RFC 2177 allows.
const RecheckInterval = time.Minute

// idleRestart re-issues an IDLE that lasts this long (a Wait longer than
// it), as RFC 2177 asks (servers may log out after 30 minutes).
const idleRestart = 25 * time.Minute

// maxLiteral is the largest string the server may send outside Fetch (a
// header field). A server that announces a larger one is cut off before
// anything is allocated for it.
const maxLiteral = 1 << 20

// maxLine is the longest line the server may send, literals aside (a
// UID SEARCH answer for a million messages is about 8 MB).
const maxLine = 64 << 20

// ErrIMAPConfig is wrapped by the errors of DialIMAP (and of later
// reconnections) that the configuration must fix, not time: a malformed
// URL, plain text to another machine, no user, a refused user or
// password, a missing mailbox, a server that wants TLS or offers no
// STARTTLS. Other errors (unreachable, a TLS failure, a timeout) may go
// away by themselves.
var ErrIMAPConfig = errors.New("IMAP configuration")

// imapConfigError is an error that matches ErrIMAPConfig, with the text
// of the error it holds.
type imapConfigError struct{ error }

func (e imapConfigError) Unwrap() error        { return e.error }
func (e imapConfigError) Is(target error) bool { return target == ErrIMAPConfig }

// IMAPConfig says how to reach an IMAP mailbox. URL and User are
// required; the other fields have defaults.
type IMAPConfig struct {
	// URL names the server and the mailbox:
	//
	//	imaps://host[:993]/MAILBOX           TLS
	//	imap://host[:143]/MAILBOX            STARTTLS; refused when the server does not offer it,
	//	                                     but for a server on a loopback address: plain text
	//	imap+insecure://host[:143]/MAILBOX   plain text: only to a loopback address
	//
	// MAILBOX defaults to INBOX. The URL holds no user or password.
	URL string
	// User and Password log in (IMAP LOGIN). The password is never logged
	// nor put in an error.
	User, Password string
	// TLS configures TLS (its RootCAs, for a private CA); nil means the
	// system's roots. Its ServerName defaults to the URL's host.
	TLS *tls.Config
	// Logger gets connections, reconnections and UIDVALIDITY changes;
	// nil discards them.
	Logger *slog.Logger
	// Timeout bounds every network step (connecting, TLS, each
	// command): how long the server may stay silent in one; zero means
	// DefaultIMAPTimeout.
	Timeout time.Duration
}

// IMAPBox is a Mailbox on an IMAP server (go-imap v1): a read-only
// session on one mailbox (EXAMINE; messages are read with BODY.PEEK, so
// nothing is marked \Seen, and nothing is ever deleted or moved). Keys
// are "<uidvalidity>/<uid>".
//
// A dropped connection (the server restarted, a network failure, a
// timeout, a cancelled context mid-command) is dialled again by the next
// call; when the mailbox's UIDVALIDITY is unchanged New goes on after
// the last UID it returned, and when it changed New starts over and
// returns every message again.
//
// Errors callers branch on: Fetch's ErrTooLarge (wrapped), and, when ctx
// ended a call, an error wrapping ctx's error. Every other error is a
// failure to reach or read the mailbox, which says what to check; the
// caller logs it and tries again after a pause.
//
// The zero IMAPBox is not usable: DialIMAP makes one. An IMAPBox is used
// by one goroutine at a time (as Mailbox says).
type IMAPBox struct {
	target  imapTarget
	user    string
	pass    string
	tls     *tls.Config
	log     *slog.Logger
	timeout time.Duration

	sess        *imapSession // nil when not connected
	uidValidity uint32       // of the mailbox New's UIDs belong to; 0 before the first session
	lastUID     uint32       // the highest UID New returned
	closed      bool

	stats imapStats
}

// imapStats counts what went over the network, for the tests.
type imapStats struct {
	bytesIn, bytesOut atomic.Int64 // on the wire (TLS included)
	lines             atomic.Int64 // command lines sent
	dials             atomic.Int64
	// plus gets a signal (when empty) each time the server sends a
	// continuation line ("+ idling" when IDLE starts).
	plus chan struct{}
}

// imapTarget is a parsed IMAPConfig.URL.
type imapTarget struct {
	scheme  string // imaps, imap or imap+insecure
	host    string // without brackets
	addr    string // host:port
	mailbox string
}

func (t imapTarget) String() string {
	return t.scheme + "://" + t.addr + "/" + t.mailbox
}

// parseIMAPURL parses and checks an IMAPConfig.URL.
func parseIMAPURL(s string) (imapTarget, error) {
	u, err := url.Parse(s)
	if err != nil {
		return imapTarget{}, fmt.Errorf("IMAP URL: %v", err)
	}
	var t imapTarget
	t.scheme = strings.ToLower(u.Scheme)
	var port string
	switch t.scheme {
	case "imaps":
		port = "993"
	case "imap", "imap+insecure":
		port = "143"
	default:
		return imapTarget{}, fmt.Errorf("IMAP URL %q: the scheme must be imaps:// (TLS), imap:// (STARTTLS) or imap+insecure:// (plain text, loopback only)", s)
	}
	if u.User != nil {
		return imapTarget{}, fmt.Errorf("IMAP URL: it must not hold a user or password; give them as user and password_file")
	}
	if u.Opaque != "" || u.Host == "" {
		return imapTarget{}, fmt.Errorf("IMAP URL %q: no host; write %s://HOST/MAILBOX", s, t.scheme)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return imapTarget{}, fmt.Errorf("IMAP URL %q: a query or fragment means nothing here; write %s://HOST/MAILBOX", s, t.scheme)
	}
	t.host = u.Hostname()
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return imapTarget{}, fmt.Errorf("IMAP URL %q: bad port %q", s, p)
		}
		port = p
	}
	t.addr = net.JoinHostPort(t.host, port)
	t.mailbox = strings.TrimSuffix(strings.TrimPrefix(u.Path, "/"), "/")
	if t.mailbox == "" {
		t.mailbox = "INBOX"
	}
	if strings.ContainsFunc(t.mailbox, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return imapTarget{}, fmt.Errorf("IMAP URL %q: the mailbox name holds a control character", s)
	}
	if t.scheme == "imap+insecure" && !isLoopbackHost(t.host) {
		return imapTarget{}, fmt.Errorf("IMAP URL %q: plain text is allowed only to a loopback address (127.0.0.1, ::1, localhost), not to %s; use imaps:// or imap:// (STARTTLS)", s, t.host)
	}
	return t, nil
}

// isLoopbackHost says whether host names this machine: localhost or a
// loopback IP address. Other names are not resolved to find out.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// DialIMAP checks cfg and connects to the mailbox. The errors say what to
// do: a malformed URL or plain text to another machine (refused before
// dialing), an unreachable server, a TLS failure (naming the host), a
// refused user or password, a missing mailbox. Dialling is bounded by ctx
// and cfg.Timeout.
func DialIMAP(ctx context.Context, cfg IMAPConfig) (*IMAPBox, error) {
	t, err := parseIMAPURL(cfg.URL)
	if err != nil {
		return nil, imapConfigError{err}
	}
	if cfg.User == "" {
		return nil, imapConfigError{fmt.Errorf("IMAP %s: no user given", t)}
	}
	b := &IMAPBox{target: t, user: cfg.User, pass: cfg.Password, tls: cfg.TLS, log: cfg.Logger, timeout: cfg.Timeout}
	b.stats.plus = make(chan struct{}, 1)
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.timeout <= 0 {
		b.timeout = DefaultIMAPTimeout
	}
	if _, err := b.session(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// New returns the messages whose UID is above the last one returned (the
// first call: all), in UID order, with three commands however many there
// are: NOOP (so that the server looks for new mail), UID SEARCH and, when
// there are any, one UID FETCH of their UID, size and Message-ID header.
func (b *IMAPBox) New(ctx context.Context) ([]Envelope, error) {
	var envs []Envelope
	err := b.do(ctx, func(s *imapSession) (err error) {
		envs, err = b.newMail(s)
		return err
	})
	return envs, err
}

func (b *IMAPBox) newMail(s *imapSession) ([]Envelope, error) {
	// Mail that arrives from here on is found by this search, or wakes
	// the next Wait.
	select {
	case <-s.wake:
	default:
	}
	// NOOP makes the server look for new mail: Dovecot's SEARCH and
	// FETCH work on the mailbox as it last looked at it.
	if err := s.c.Noop(); err != nil {
		return nil, b.failed(s, "NOOP", err)
	}
	crit := imap.NewSearchCriteria()
	crit.Uid = new(imap.SeqSet)
	crit.Uid.AddRange(b.lastUID+1, 0) // lastUID+1:*
	uids, err := s.c.UidSearch(crit)
	if err != nil {
		return nil, b.failed(s, "search", err)
	}
	// n:* always matches the highest UID, even below n.
	uids = slices.DeleteFunc(uids, func(u uint32) bool { return u <= b.lastUID })
	if len(uids) == 0 {
		return nil, nil
	}
	slices.Sort(uids)
	set := new(imap.SeqSet)
	set.AddNum(uids...)
	section := &imap.BodySectionName{
		BodyPartName: imap.BodyPartName{Specifier: imap.HeaderSpecifier, Fields: []string{"MESSAGE-ID"}},
		Peek:         true,
		// A hostile sender's huge header does not make the answer huge
		// (a Message-ID is far shorter).
		Partial: []int{0, 4096},
	}
	msgs, err := s.fetch(set, []imap.FetchItem{imap.FetchUid, imap.FetchRFC822Size, section.FetchItem()})
	if err != nil {
		return nil, b.failed(s, "fetch headers", err)
	}
	byUID := make(map[uint32]*imap.Message, len(msgs))
	for _, m := range msgs {
		byUID[m.Uid] = m
	}
	envs := make([]Envelope, 0, len(uids))
	for _, uid := range uids {
		m := byUID[uid]
		if m == nil {
			continue // expunged since the search
		}
		e := Envelope{Key: fmt.Sprintf("%d/%d", s.uidValidity, uid), Size: int64(m.Size)}
		if lit := m.GetBody(section); lit != nil {
			e.MessageID = headerMessageID(lit)
		}
		envs = append(envs, e)
	}
	b.lastUID = uids[len(uids)-1]
	return envs, nil
}

// do runs op on a live session within ctx and the timeout. When a
// session from an earlier call turns out to be dead (the server went
// away between calls), it dials again and runs op once more: op only
// reads, so running it twice is harmless.
func (b *IMAPBox) do(ctx context.Context, op func(*imapSession) error) error {
	for attempt := 0; ; attempt++ {
		reused := b.sess != nil && b.sess.alive()
		s, err := b.session(ctx)
		if err != nil {
			return err
		}
		end := s.begin(ctx, b.timeout)
		err = op(s)
		end()
		if err != nil && reused && attempt == 0 && b.sess == nil && ctx.Err() == nil && !errors.Is(err, ErrTooLarge) {
			b.log.Info("IMAP connection found dead; dialling again", "mailbox", b.target.String(), "error", err)
			continue
		}
		if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w: %v", ctx.Err(), err)
		}
		return err
	}
}

// headerMessageID reads the Message-ID out of a header block.
func headerMessageID(r io.Reader) string {
	h, err := textproto.NewReader(bufio.NewReader(io.MultiReader(r, strings.NewReader("\r\n\r\n")))).ReadMIMEHeader()
	if err != nil && len(h) == 0 {
		return ""
	}
	return firstID(h.Get("Message-Id"))
}

// Fetch returns the raw message of e. It refuses a message over max by
// e.Size without asking the server; otherwise it asks for at most max+1
// bytes (BODY.PEEK[]<0.max+1>) and refuses the message when more come,
// or when the server announces more than that (the connection is then
// cut, before anything is read into memory).
func (b *IMAPBox) Fetch(ctx context.Context, e Envelope, max int64) ([]byte, error) {
	if e.Size > max {
		return nil, fmt.Errorf("message %s is %d bytes, over the limit of %d: %w", e.Key, e.Size, max, ErrTooLarge)
	}
	uv, uid, err := parseKey(e.Key)
	if err != nil {
		return nil, err
	}
	var raw []byte
	err = b.do(ctx, func(s *imapSession) (err error) {
		raw, err = b.fetchMessage(s, e.Key, uv, uid, max)
		return err
	})
	return raw, err
}

func (b *IMAPBox) fetchMessage(s *imapSession, key string, uv, uid uint32, max int64) ([]byte, error) {
	if uv != s.uidValidity {
		return nil, fmt.Errorf("message %s: the mailbox %s was renumbered (UIDVALIDITY is now %d); call New again", key, b.target, s.uidValidity)
	}
	section := &imap.BodySectionName{Peek: true}
	limit := max + 1
	if limit < 1<<31 {
		section.Partial = []int{0, int(limit)}
	}
	s.guard.setLimit(limit)
	defer s.guard.setLimit(maxLiteral)
	set := new(imap.SeqSet)
	set.AddNum(uid)
	msgs, err := s.fetch(set, []imap.FetchItem{imap.FetchUid, imap.FetchRFC822Size, section.FetchItem()})
	if err != nil {
		if s.guard.tripped.Load() {
			b.drop("the server sent more than asked")
			return nil, fmt.Errorf("message %s: the server sent more than %d bytes: %w", key, max, ErrTooLarge)
		}
		return nil, b.failed(s, "fetch message "+key, err)
	}
	var m *imap.Message
	for _, x := range msgs {
		if x.Uid == uid {
			m = x
		}
	}
	if m == nil {
		return nil, fmt.Errorf("message %s is no longer in %s (deleted or moved)", key, b.target)
	}
	if int64(m.Size) > max {
		return nil, fmt.Errorf("message %s is %d bytes, over the limit of %d: %w", key, m.Size, max, ErrTooLarge)
	}
	lit := m.GetBody(section)
	if lit == nil {
		return nil, fmt.Errorf("message %s: the server sent no body", key)
	}
	raw, err := io.ReadAll(io.LimitReader(lit, limit))
	if err != nil {
		return nil, fmt.Errorf("message %s: %v", key, err)
	}
	if int64(len(raw)) > max {
		return nil, fmt.Errorf("message %s is over the limit of %d bytes: %w", key, max, ErrTooLarge)
	}
	return raw, nil
}

func parseKey(key string) (uidValidity, uid uint32, err error) {
	a, c, ok := strings.Cut(key, "/")
	v, err1 := strconv.ParseUint(a, 10, 32)
	u, err2 := strconv.ParseUint(c, 10, 32)
	if !ok || err1 != nil || err2 != nil || u == 0 {
		return 0, 0, fmt.Errorf("message key %q is not an IMAP key (<uidvalidity>/<uid>)", key)
	}
	return uint32(v), uint32(u), nil
}

// Wait issues IDLE and returns when the server announces a message
// (EXISTS), after d, or when ctx is done (with ctx's error); it ends IDLE
// (DONE) before returning. It returns at once when a message was
// announced since the last New. A connection lost while idling ends Wait
// without an error, after at most a second (the next New dials again
// and says what failed); an error from Wait means the mailbox could not
// be reached at all, and the caller backs off before trying again.
func (b *IMAPBox) Wait(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	s, err := b.session(ctx)
	if err != nil {
		return err
	}
	select {
	case <-s.wake:
		return nil
	default:
	}
	// No context cut here: a cancelled ctx ends IDLE cleanly instead.
	defer s.begin(context.Background(), min(d, idleRestart)+b.timeout)()
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- s.c.Idle(stop, &client.IdleOptions{LogoutTimeout: idleRestart}) }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	var result error
	select {
	case <-s.wake:
	case <-timer.C:
	case <-ctx.Done():
		result = ctx.Err()
	case err := <-done:
		// The server ended IDLE (it went away, or refuses IDLE): the
		// next call dials again, but not at once, so that a server
		// that ends every IDLE is not asked again and again.
		b.drop(fmt.Sprintf("IDLE ended: %v", err))
		pause := time.NewTimer(time.Second)
		defer pause.Stop()
		select {
		case <-pause.C:
		case <-timer.C:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	}
	close(stop)
	if err := <-done; err != nil {
		b.drop(fmt.Sprintf("ending IDLE: %v", err))
	}
	return result
}

// Close logs out and closes the connection. The IMAPBox is not used
// afterwards.
func (b *IMAPBox) Close() error {
	b.closed = true
	if b.sess == nil {
		return nil
	}
	s := b.sess
	b.sess = nil
	s.begin(context.Background(), 5*time.Second)
	err := s.c.Logout()
	s.close()
	if err != nil && !errors.Is(err, client.ErrAlreadyLoggedOut) {
		return fmt.Errorf("log out of %s: %v", b.target, err)
	}
	return nil
}

// failed turns an error of a command into the caller's, dropping the
// session when the connection is gone (the next call dials again).
func (b *IMAPBox) failed(s *imapSession, what string, err error) error {
	if !s.alive() {
		cause := s.wire.err()
		if cause == nil {
			cause = err
		}
		b.drop(fmt.Sprintf("%s: %v", what, cause))
		return fmt.Errorf("%s on %s: connection lost (%v); the next call reconnects", what, b.target, cause)
	}
	return fmt.Errorf("%s on %s: %v", what, b.target, err)
}

// drop ends the current session, for the next call to dial again.
func (b *IMAPBox) drop(why string) {
	if b.sess == nil {
		return
	}
	b.log.Warn("IMAP connection dropped", "mailbox", b.target.String(), "why", why)
	b.sess.close()
	b.sess = nil
}

// session returns the live session, dialling a new one when there is
// none or the last one died.
func (b *IMAPBox) session(ctx context.Context) (*imapSession, error) {
	if b.closed {
		return nil, fmt.Errorf("IMAP %s: the mailbox is closed", b.target)
	}
	if b.sess != nil {
		if b.sess.alive() {
			return b.sess, nil
		}
		b.drop(fmt.Sprintf("connection lost: %v", b.sess.wire.err()))
	}
	s, err := b.dial(ctx)
	if err != nil {
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w: %v", ctx.Err(), err)
		}
		return nil, err
	}
	switch {
	case b.uidValidity == 0:
	case b.uidValidity != s.uidValidity:
		b.log.Warn("IMAP mailbox renumbered (UIDVALIDITY changed): reading it from the start", "mailbox", b.target.String(), "was", b.uidValidity, "now", s.uidValidity)
		b.lastUID = 0
	default:
		b.log.Info("IMAP reconnected", "mailbox", b.target.String())
	}
	b.uidValidity = s.uidValidity
	b.sess = s
	return s, nil
}

// imapSession is one connection, logged in, with the mailbox examined.
type imapSession struct {
	c           *client.Client
	wire        *wire  // TCP: deadlines, byte counts, cutting
	guard       *guard // the IMAP stream (inside TLS): literal sizes
	wake        chan struct{}
	uidValidity uint32
}

func (s *imapSession) alive() bool {
	select {
	case <-s.c.LoggedOut():
		return false
	default:
	}
	return s.wire.err() == nil
}

// begin arms the inactivity timeout for one operation and cuts the
// connection when ctx is done; the returned function ends the operation.
func (s *imapSession) begin(ctx context.Context, timeout time.Duration) func() {
	s.wire.arm(timeout)
	stop := context.AfterFunc(ctx, func() { s.wire.cut(fmt.Errorf("cancelled: %w", context.Cause(ctx))) })
	return func() {
		stop()
		s.wire.disarm()
	}
}

// fetch runs one UID FETCH and collects its messages.
func (s *imapSession) fetch(set *imap.SeqSet, items []imap.FetchItem) ([]*imap.Message, error) {
	ch := make(chan *imap.Message, 64)
	var msgs []*imap.Message
	collected := make(chan struct{})
	go func() {
		for m := range ch {
			msgs = append(msgs, m)
		}
		close(collected)
	}()
	err := s.c.UidFetch(set, items, ch) // closes ch
	<-collected
	return msgs, err
}

func (s *imapSession) close() {
	s.wire.cut(errors.New("closed"))
	s.wire.Conn.Close()
}

// dial connects, secures, logs in and examines the mailbox.
func (b *IMAPBox) dial(ctx context.Context) (*imapSession, error) {
	t := b.target
	b.stats.dials.Add(1)
	d := net.Dialer{Timeout: b.timeout}
	raw, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %v (is the server up and the address right?)", t, err)
	}
	w := &wire{Conn: raw, stats: &b.stats}
	s := &imapSession{wire: w, wake: make(chan struct{}, 1)}
	ok := false
	defer func() {
		if !ok {
			s.close()
		}
	}()
	end := s.begin(ctx, b.timeout)
	defer end()
	if t.scheme == "imap+insecure" {
		if a, isTCP := raw.RemoteAddr().(*net.TCPAddr); !isTCP || !a.IP.IsLoopback() {
			return nil, fmt.Errorf("connect to %s: %s is not a loopback address: plain text is refused; use imaps:// or imap://", t, raw.RemoteAddr())
		}
	}
	var conn net.Conn = w
	var line string // the server's greeting
	var rest []byte // what came after it
	switch t.scheme {
	case "imaps":
		tc := tls.Client(w, b.tlsConfig())
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, b.tlsError(err)
		}
		conn = tc
	case "imap":
		tc, plain, after, err := b.startTLS(ctx, w)
		switch {
		case err != nil:
			return nil, err
		case tc == nil: // a loopback server without STARTTLS
			line, rest = plain, after
		default:
			conn = tc
			line = "* OK TLS started" // the real greeting came before TLS
		}
	}
	if line == "" {
		br := bufio.NewReaderSize(conn, 4096)
		var err error
		if line, err = readLine(br); err != nil {
			return nil, fmt.Errorf("connect to %s: no IMAP greeting: %v", t, errOr(w.err(), err))
		}
		rest, _ = br.Peek(br.Buffered())
		if slices.Contains(capabilities(line), "LOGINDISABLED") {
			return nil, imapConfigError{fmt.Errorf("connect to %s: the server refuses to log in here without TLS (LOGINDISABLED): use imaps:// or imap://", t)}
		}
	}
	// go-imap is handed a greeting with no capabilities of interest, so
	// that it sends no command of its own before it is set up below
	// (after logging in, it learns the real ones).
	greeting := "* OK [CAPABILITY IMAP4rev1] ready\r\n"
	switch {
	case strings.HasPrefix(line, "* OK"):
	case strings.HasPrefix(line, "* PREAUTH"):
		greeting = line + "\r\n"
	case strings.HasPrefix(line, "* BYE"):
		return nil, fmt.Errorf("connect to %s: the server refused the session: %s", t, strings.TrimPrefix(line, "* BYE "))
	default:
		return nil, fmt.Errorf("connect to %s: not an IMAP greeting: %.100q", t, line)
	}
	s.guard = &guard{Conn: conn, prefix: append([]byte(greeting), rest...), limit: maxLiteral, stats: &b.stats}
	c, err := client.New(s.guard)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %v", t, errOr(w.err(), err))
	}
	s.c = c
	// Set before any command, so before the reader can see an update.
	updates := make(chan client.Update, 16)
	c.Updates = updates
	c.ErrorLog = imapLog{b.log}
	go drainUpdates(c, updates, s.wake)
	if c.State() != imap.AuthenticatedState { // not PREAUTH
		if err := c.Login(b.user, b.pass); err != nil {
			if !s.alive() {
				return nil, fmt.Errorf("log in to %s: connection lost: %v", t, errOr(w.err(), err))
			}
			return nil, imapConfigError{fmt.Errorf("log in to %s as %q: the server refused the user or password (check user and password_file): %v", t, b.user, err)}
		}
	}
	st, err := c.Select(t.mailbox, true)
	if err != nil {
		if !s.alive() {
			return nil, fmt.Errorf("open mailbox %q on %s: connection lost: %v", t.mailbox, t, errOr(w.err(), err))
		}
		return nil, imapConfigError{fmt.Errorf("open mailbox %q on %s: %v (does the mailbox exist?)", t.mailbox, t, err)}
	}
	if st.UidValidity == 0 {
		return nil, fmt.Errorf("open mailbox %q on %s: the server sent no UIDVALIDITY", t.mailbox, t)
	}
	s.uidValidity = st.UidValidity
	ok = true
	b.log.Info("IMAP connected", "mailbox", t.String(), "user", b.user, "messages", st.Messages, "uidvalidity", st.UidValidity)
	return s, nil
}

func errOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// drainUpdates turns the server's mailbox updates (EXISTS, RECENT) into
// one pending wake-up, until the connection ends. go-imap blocks on
// Updates, so it is always drained.
func drainUpdates(c *client.Client, updates <-chan client.Update, wake chan<- struct{}) {
	for {
		select {
		case u := <-updates:
			if _, ok := u.(*client.MailboxUpdate); ok {
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		case <-c.LoggedOut():
			return // the reader has ended: nothing more is sent
		}
	}
}
