package mail

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// DefaultSMTPTimeout is SMTPConfig.Timeout's zero value.
const DefaultSMTPTimeout = time.Minute

// ErrSMTPAuth is wrapped by SMTPSender.Send's error when the server refused
// the login (a 535 "authentication failed", or no AUTH PLAIN on offer). It
// is not a *PermanentError: the message is fine and the configuration is
// not, so the reply should stay pending until the user fixes user or
// password_file and the bridge tries again.
var ErrSMTPAuth = errors.New("SMTP login needed or refused")

// SMTPConfig says how an SMTPSender reaches its server.
type SMTPConfig struct {
	// URL is smtps://host[:465] (TLS from the first byte),
	// smtp://host[:587] (STARTTLS, refused when the server does not
	// offer it) or smtp+insecure://host[:587] (plain text, only to a
	// loopback address, as imap+insecure:// on the IMAP side). An
	// smtp:// server that offers no STARTTLS is also talked to in plain
	// text when its address is a loopback one: the connection never
	// leaves the machine. No user, password, path or query: User and
	// Password say who logs in.
	URL string
	// User, when not "", logs in with AUTH PLAIN, which is only ever
	// sent over TLS or to a loopback address. Password is never logged
	// nor put in an error.
	User, Password string
	// TLS verifies the server; nil means the system's roots and the
	// URL's host as the server name. A ServerName of "" is filled in
	// with the URL's host.
	TLS *tls.Config
	// Timeout bounds each step: connecting, the TLS handshake, each
	// command's reply, and sending the message. Zero means
	// DefaultSMTPTimeout.
	Timeout time.Duration
}

// SMTPSender is a Sender that submits mail to an SMTP server, one
// connection per Send (replies are few: one per series version, so a
// connection kept open would mostly idle and then be dropped by the
// server). It is safe for concurrent use; the zero value is not usable:
// make one with NewSMTPSender.
//
// Send's errors: a 5xx reply to RCPT or DATA is a *PermanentError;
// a message the server took for some recipients and refused for others is
// delivered to those it took and also reported as a *PermanentError that
// names the others, since sending it again would reach the first ones
// twice. A refused login, or a server that wants one (530 to MAIL),
// wraps ErrSMTPAuth. A refused sender (5xx to MAIL FROM) is not permanent
// either: it is refci's from, wrong for every reply until fixed. Anything
// else (the server down or silent past the timeout, a 4xx reply, a
// certificate that does not verify, no STARTTLS) is worth a retry later.
type SMTPSender struct {
	cfg      SMTPConfig
	ep       smtpEndpoint
	hostname string
}

// NewSMTPSender checks cfg and returns a sender; it does not connect. Its
// error says what is wrong with the URL (never showing a password).
func NewSMTPSender(cfg SMTPConfig) (*SMTPSender, error) {
	ep, err := parseSMTPURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultSMTPTimeout
	}
	if cfg.Password != "" && cfg.User == "" {
		return nil, errors.New("smtp: a password without a user: set user in [mail]")
	}
	name, err := os.Hostname()
	if err != nil || name == "" || strings.ContainsAny(name, "\r\n ") {
		name = "localhost"
	}
	return &SMTPSender{cfg: cfg, ep: ep, hostname: name}, nil
}

// smtpEndpoint is an SMTP URL taken apart.
//
// The IMAP side (imap://, imaps://) has its own twin of this; a shared
// helper can come once both are merged.
type smtpEndpoint struct {
	implicitTLS bool
	plain       bool // smtp+insecure://: no STARTTLS, loopback only
	host, port  string
}

func (e smtpEndpoint) addr() string { return net.JoinHostPort(e.host, e.port) }

func (e smtpEndpoint) String() string {
	switch {
	case e.implicitTLS:
		return "smtps://" + e.addr()
	case e.plain:
		return "smtp+insecure://" + e.addr()
	}
	return "smtp://" + e.addr()
}

// parseSMTPURL reads smtps://host[:port], smtp://host[:port] or
// smtp+insecure://host[:port] (a loopback host only); its errors never
// quote a password the URL may hold.
func parseSMTPURL(s string) (smtpEndpoint, error) {
	const want = "want smtps://host[:465], smtp://host[:587] or smtp+insecure://127.0.0.1[:587]"
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil || u.Opaque != "" {
		return smtpEndpoint{}, fmt.Errorf("smtp URL: not a URL (%s)", want)
	}
	var ep smtpEndpoint
	switch strings.ToLower(u.Scheme) {
	case "smtps":
		ep.implicitTLS, ep.port = true, "465"
	case "smtp":
		ep.port = "587"
	case "smtp+insecure":
		ep.plain, ep.port = true, "587"
	default:
		return smtpEndpoint{}, fmt.Errorf("smtp URL %s: scheme %q (%s)", u.Redacted(), u.Scheme, want)
	}
	if u.User != nil {
		return smtpEndpoint{}, fmt.Errorf("smtp URL %s: holds a user: put it in user and the password in password_file", u.Redacted())
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return smtpEndpoint{}, fmt.Errorf("smtp URL %s: has a path, query or fragment (%s)", u.Redacted(), want)
	}
	ep.host = u.Hostname()
	if ep.host == "" {
		return smtpEndpoint{}, fmt.Errorf("smtp URL %s: no host (%s)", u.Redacted(), want)
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return smtpEndpoint{}, fmt.Errorf("smtp URL %s: bad port %q", u.Redacted(), p)
		}
		ep.port = p
	}
	if ep.plain && !isLoopbackHost(ep.host) {
		return smtpEndpoint{}, fmt.Errorf("smtp URL %s: plain text is allowed only to a loopback address (127.0.0.1, ::1, localhost), not to %s; use smtps:// or smtp:// (STARTTLS)", u.Redacted(), ep.host)
	}
	return ep, nil
}

// Send delivers raw from from to rcpt: see SMTPSender for its errors.
// from may be "" (the null sender); bare LF line ends in raw are sent
// as CRLF.
func (s *SMTPSender) Send(ctx context.Context, from string, rcpt []string, raw []byte) error {
	if err := checkAddrs(from, rcpt); err != nil {
		return err
	}
	c, done, err := s.open(ctx)
	if err != nil {
		return err
	}
	defer done()
	return s.send(ctx, c, from, rcpt, raw)
}

// Check connects, greets, starts TLS and logs in as Send does, then
// quits without sending anything: a command checks at startup that the
// server, its certificate and the login work. Its errors are Send's
// (a refused login wraps ErrSMTPAuth).
func (s *SMTPSender) Check(ctx context.Context) error {
	c, done, err := s.open(ctx)
	if err != nil {
		return err
	}
	defer done()
	if err := c.Quit(); err != nil {
		return fmt.Errorf("smtp: %s at QUIT: %w", s.ep, s.timeoutErr(ctx, err))
	}
	return nil
}

// open connects to the server, greets it, starts TLS and logs in; done
// closes the connection.
func (s *SMTPSender) open(ctx context.Context) (_ *smtp.Client, done func(), err error) {
	var closers []func() error
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	defer func() {
		if err != nil {
			closeAll()
		}
	}()
	to := s.ep.String()
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if s.cfg.TLS != nil {
		tlsCfg = s.cfg.TLS.Clone()
	}
	if tlsCfg.ServerName == "" {
		tlsCfg.ServerName = s.ep.host
	}
	conn, loopback, err := s.dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	closers = append(closers, conn.Close)

	var c *smtp.Client
	secure := true
	switch {
	case s.ep.plain:
		if !loopback { // a name that leads elsewhere
			return nil, nil, errNoPlainText(to)
		}
		c, secure = smtp.NewClient(conn), false
	case s.ep.implicitTLS:
		tc := tls.Client(conn, tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, nil, fmt.Errorf("smtp: TLS with %s: %w (with a private CA, give its certificate)", to, s.timeoutErr(ctx, err))
		}
		c = smtp.NewClient(tc)
	default:
		c, err = smtp.NewClientStartTLS(conn, tlsCfg)
		if err != nil && noSTARTTLS(err) && loopback {
			// Plain text to a loopback address: connect again (go-smtp
			// closed the first connection).
			conn.Close()
			if conn, loopback, err = s.dial(ctx); err != nil {
				return nil, nil, err
			}
			closers = append(closers, conn.Close)
			if !loopback { // the name now leads elsewhere
				return nil, nil, errNoPlainText(to)
			}
			c, secure = smtp.NewClient(conn), false
		} else if err != nil && noSTARTTLS(err) {
			return nil, nil, errNoPlainText(to)
		} else if err != nil {
			return nil, nil, fmt.Errorf("smtp: greeting and STARTTLS with %s: %w", to, s.timeoutErr(ctx, err))
		}
	}
	closers = append(closers, c.Close)
	c.CommandTimeout, c.SubmissionTimeout = s.cfg.Timeout, s.cfg.Timeout
	// After STARTTLS the handshake happens here, with this EHLO.
	if err := c.Hello(s.hostname); err != nil {
		if secure {
			return nil, nil, fmt.Errorf("smtp: TLS with %s: %w (with a private CA, give its certificate)", to, s.timeoutErr(ctx, err))
		}
		return nil, nil, fmt.Errorf("smtp: greeting from %s: %w", to, s.timeoutErr(ctx, err))
	}

	if s.cfg.User != "" {
		if !secure && !loopback { // unreachable by the rules above: the last guard
			return nil, nil, fmt.Errorf("smtp: %s: no login over plain text", to)
		}
		if !c.SupportsAuth("PLAIN") {
			return nil, nil, fmt.Errorf("smtp: %w: %s offers no AUTH PLAIN (user %q)", ErrSMTPAuth, to, s.cfg.User)
		}
		if err := c.Auth(sasl.NewPlainClient("", s.cfg.User, s.cfg.Password)); err != nil {
			var se *smtp.SMTPError
			if errors.As(err, &se) {
				return nil, nil, fmt.Errorf("smtp: %w: %s answered %d %s for user %q: check user and password_file in [mail]; replies wait until the login works",
					ErrSMTPAuth, to, se.Code, se.Message, s.cfg.User)
			}
			return nil, nil, fmt.Errorf("smtp: log in to %s: %w", to, s.timeoutErr(ctx, err))
		}
	}
	return c, closeAll, nil
}

// send submits raw on the open connection c.
func (s *SMTPSender) send(ctx context.Context, c *smtp.Client, from string, rcpt []string, raw []byte) error {
	to := s.ep.String()
	var opts *smtp.MailOptions
	if !ascii(append([]string{from}, rcpt...)...) {
		if ok, _ := c.Extension("SMTPUTF8"); !ok {
			return &PermanentError{Msg: fmt.Sprintf("%s does not take addresses that are not ASCII (no SMTPUTF8)", to)}
		}
		opts = &smtp.MailOptions{UTF8: true}
	}
	if err := c.Mail(from, opts); err != nil {
		// A refused sender is refci's configuration, not this
		// message: not permanent, so the reply waits for the fix.
		var se *smtp.SMTPError
		switch {
		case errors.As(err, &se) && (se.Code == 530 || (se.Code >= 500 && se.EnhancedCode[0] == 5 && se.EnhancedCode[1] == 7 && s.cfg.User == "")):
			return fmt.Errorf("smtp: %w: %s answered %d %s to MAIL FROM:<%s>: it wants a login: set user and password_file in [mail]",
				ErrSMTPAuth, to, se.Code, se.Message, from)
		case errors.As(err, &se) && se.Code >= 500:
			return fmt.Errorf("smtp: %s refused the sender <%s>: %d %s: check from (and user) in [mail]; replies wait until it is taken",
				to, from, se.Code, se.Message)
		}
		return s.replyErr(ctx, "MAIL FROM:<"+from+">", err)
	}
	var took, refused []string
	var first *smtp.SMTPError
	for _, r := range rcpt {
		if err := c.Rcpt(r, nil); err != nil {
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				return s.replyErr(ctx, "RCPT TO:<"+r+">", err)
			}
			if first == nil || (first.Code >= 500 && se.Code < 500) {
				first = se // a temporary refusal, if any, makes the whole one temporary
			}
			refused = append(refused, fmt.Sprintf("<%s> (%d %s)", r, se.Code, se.Message))
			continue
		}
		took = append(took, r)
	}
	if len(took) == 0 {
		c.Reset()
		c.Quit()
		return s.replyErr(ctx, "RCPT TO", fmt.Errorf("every recipient refused: %s: %w", strings.Join(refused, ", "), first))
	}
	w, err := c.Data()
	if err != nil {
		return s.replyErr(ctx, "DATA", err)
	}
	if _, err := w.Write(raw); err != nil {
		return s.replyErr(ctx, "DATA", err)
	}
	if err := w.Close(); err != nil {
		return s.replyErr(ctx, "end of DATA", err)
	}
	c.Quit()
	if len(refused) > 0 {
		return &PermanentError{Code: first.Code, Msg: fmt.Sprintf("%s delivered the message to <%s> and refused %s",
			to, strings.Join(took, ">, <"), strings.Join(refused, ", "))}
	}
	return nil
}

// dial connects to the server within the step timeout; the connection
// bounds every later step and is closed when ctx is done. loopback says
// whether the address reached is a loopback one.
func (s *SMTPSender) dial(ctx context.Context) (*stepConn, bool, error) {
	dctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	raw, err := (&net.Dialer{}).DialContext(dctx, "tcp", s.ep.addr())
	cancel()
	if err != nil {
		return nil, false, fmt.Errorf("smtp: connect to %s: %w", s.ep, s.timeoutErr(ctx, err))
	}
	loopback := false
	if a, ok := raw.RemoteAddr().(*net.TCPAddr); ok {
		loopback = a.IP.IsLoopback()
	}
	c := &stepConn{Conn: raw, step: s.cfg.Timeout}
	c.stop = context.AfterFunc(ctx, func() { raw.Close() })
	c.SetDeadline(time.Time{}) // the first step starts now
	return c, loopback, nil
}

func errNoPlainText(to string) error {
	return fmt.Errorf("smtp: %s does not offer STARTTLS: refci sends mail in plain text only to a loopback address; use smtps:// or a server with STARTTLS", to)
}

// noSTARTTLS tells go-smtp's "server doesn't support STARTTLS" (an error
// of its own, not a server's reply) from other failures.
func noSTARTTLS(err error) bool {
	var se *smtp.SMTPError
	var ne net.Error
	return !errors.As(err, &se) && !errors.As(err, &ne) && strings.Contains(err.Error(), "STARTTLS")
}

// replyErr classifies an error of the MAIL, RCPT or DATA step: a 5xx
// reply is a *PermanentError.
func (s *SMTPSender) replyErr(ctx context.Context, step string, err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code >= 500 && se.Code <= 599 {
		return &PermanentError{Code: se.Code, Msg: fmt.Sprintf("%s at %s: %v", s.ep, step, err)}
	}
	return fmt.Errorf("smtp: %s at %s: %w", s.ep, step, s.timeoutErr(ctx, err))
}

// timeoutErr says which of ctx or the step timeout ended a step.
func (s *SMTPSender) timeoutErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	var ne net.Error
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("no answer within %v: %w", s.cfg.Timeout, err)
	}
	return err
}

func ascii(ss ...string) bool {
	for _, s := range ss {
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				return false
			}
		}
	}
	return true
}

// checkAddrs refuses addresses that cannot go into an SMTP command.
func checkAddrs(from string, rcpt []string) error {
	if len(rcpt) == 0 {
		return &PermanentError{Msg: "no recipients"}
	}
	for i, a := range append([]string{from}, rcpt...) {
		if strings.ContainsAny(a, "\r\n<>\x00 \t") || (i > 0 && !strings.Contains(a, "@")) || (i == 0 && a != "" && !strings.Contains(a, "@")) {
			return &PermanentError{Msg: fmt.Sprintf("%q is not an address an SMTP server takes", a)}
		}
	}
	return nil
}

// stepConn bounds every step on a connection: a deadline go-smtp clears
// between commands, or sets further than step ahead, becomes step from
// now. So the greeting, each reply and the message's transfer each get
// at most step. Close also ends the watch on Send's context.
type stepConn struct {
	net.Conn
	step time.Duration
	stop func() bool
}

func (c *stepConn) cap(t time.Time) time.Time {
	if limit := time.Now().Add(c.step); t.IsZero() || t.After(limit) {
		return limit
	}
	return t
}

func (c *stepConn) SetDeadline(t time.Time) error      { return c.Conn.SetDeadline(c.cap(t)) }
func (c *stepConn) SetReadDeadline(t time.Time) error  { return c.Conn.SetReadDeadline(c.cap(t)) }
func (c *stepConn) SetWriteDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(c.cap(t)) }

func (c *stepConn) Close() error {
	c.stop()
	return c.Conn.Close()
}
