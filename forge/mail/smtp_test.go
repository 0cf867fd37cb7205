package mail

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// testCA is a throwaway CA and a server certificate it signed for
// 127.0.0.1, ::1 and ips.
type testCA struct {
	roots *x509.CertPool
	cert  tls.Certificate
}

func newTestCA(t testing.TB, ips ...net.IP) *testCA {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey, srvKey := key(), key()
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "refci test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srv := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "smtp test server"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, ips...), DNSNames: []string{"localhost"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	return &testCA{roots: roots, cert: tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}}
}

// got is one message the sink took.
type got struct {
	from     string
	rcpt     []string
	data     string
	tls      bool
	authUser string
}

// sink is a go-smtp backend that records what it is given; refuse maps
// a recipient to the error RCPT gives it; dataErr is DATA's answer;
// block, when not nil, holds DATA until it is closed.
type sink struct {
	user, password string
	refuse         map[string]error // by recipient, or by sender for MAIL FROM
	needLogin      bool
	dataErr        error
	block          chan struct{}

	mu   sync.Mutex
	mail []got
}

func (s *sink) got() []got {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]got(nil), s.mail...)
}

func (s *sink) NewSession(c *smtp.Conn) (smtp.Session, error) {
	_, isTLS := c.TLSConnectionState()
	return &session{sink: s, cur: got{tls: isTLS}}, nil
}

type session struct {
	sink *sink
	cur  got
}

func (s *session) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *session) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, user, password string) error {
		if user != s.sink.user || password != s.sink.password {
			return smtp.ErrAuthFailed
		}
		s.cur.authUser = user
		return nil
	}), nil
}

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	if s.sink.needLogin && s.cur.authUser == "" {
		return smtp.ErrAuthRequired
	}
	if err := s.sink.refuse[from]; err != nil {
		return err
	}
	s.cur.from = from
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if err := s.sink.refuse[to]; err != nil {
		return err
	}
	s.cur.rcpt = append(s.cur.rcpt, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if s.sink.block != nil {
		<-s.sink.block
	}
	if s.sink.dataErr != nil {
		return s.sink.dataErr
	}
	s.cur.data = string(b)
	s.sink.mu.Lock()
	s.sink.mail = append(s.sink.mail, s.cur)
	s.sink.mu.Unlock()
	return nil
}

func (s *session) Reset()        { s.cur = got{tls: s.cur.tls, authUser: s.cur.authUser} }
func (s *session) Logout() error { return nil }

type serverMode int

const (
	plainServer    serverMode = iota // no TLS at all
	startTLSServer                   // offers STARTTLS
	implicitServer                   // TLS from the first byte
)

// serve starts go-smtp's server for be on host:0 and returns its address.
func serve(t *testing.T, be smtp.Backend, host string, mode serverMode, ca *testCA, opts ...func(*smtp.Server)) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := smtp.NewServer(be)
	srv.Domain = "sink.test"
	srv.ErrorLog = log.New(io.Discard, "", 0)
	srv.ReadTimeout, srv.WriteTimeout = time.Minute, time.Minute
	srv.AllowInsecureAuth = mode == plainServer
	if mode != plainServer {
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{ca.cert}}
	}
	for _, o := range opts {
		o(srv)
	}
	if mode == implicitServer {
		l = tls.NewListener(l, srv.TLSConfig)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// nonLoopbackIP is an address of this machine that is not a loopback
// one, or nil.
func nonLoopbackIP() net.IP {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP
		}
	}
	return nil
}

func sender(t *testing.T, cfg SMTPConfig) *SMTPSender {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second // a failure guard on a loaded machine
	}
	s, err := NewSMTPSender(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const reply = "From: ci@example.org\nTo: ann@example.org\nSubject: Re: [PATCH] x\nAuto-Submitted: auto-replied\n\npassed\n.\n..dots\n"

// replyWire is the reply as it travels: CRLF, and as the server's DATA reader
// gives it back (dot-stuffing undone).
var replyWire = strings.ReplaceAll(reply, "\n", "\r\n")

func TestSMTPPlainLoopback(t *testing.T) {
	be := &sink{user: "ci", password: "hunter2"}
	addr := serve(t, be, "127.0.0.1", plainServer, nil)
	for _, user := range []string{"", "ci"} {
		s := sender(t, SMTPConfig{URL: "smtp://" + addr, User: user, Password: map[string]string{"ci": "hunter2"}[user]})
		if err := s.Send(context.Background(), "ci@example.org", []string{"ann@example.org", "list@example.org"}, []byte(reply)); err != nil {
			t.Fatalf("user %q: %v", user, err)
		}
	}
	g := be.got()
	if len(g) != 2 {
		t.Fatalf("%d messages, want 2", len(g))
	}
	if g[0].from != "ci@example.org" || strings.Join(g[0].rcpt, ",") != "ann@example.org,list@example.org" || g[0].data != replyWire || g[0].tls || g[0].authUser != "" {
		t.Errorf("got %+v", g[0])
	}
	if g[1].authUser != "ci" {
		t.Errorf("login: %+v", g[1])
	}
}

// smtp+insecure:// talks plain text to a loopback server, even one that
// offers STARTTLS, as imap+insecure:// does; Check logs in and sends
// nothing.
func TestSMTPInsecureLoopback(t *testing.T) {
	ca := newTestCA(t)
	be := &sink{user: "ci", password: "hunter2"}
	for _, mode := range []serverMode{plainServer, startTLSServer} {
		addr := serve(t, be, "127.0.0.1", mode, ca, func(s *smtp.Server) { s.AllowInsecureAuth = true })
		s := sender(t, SMTPConfig{URL: "smtp+insecure://" + addr, User: "ci", Password: "hunter2"})
		if err := s.Check(context.Background()); err != nil {
			t.Fatalf("check: %v", err)
		}
		if err := s.Send(context.Background(), "ci@example.org", []string{"ann@example.org"}, []byte(reply)); err != nil {
			t.Fatal(err)
		}
		bad := sender(t, SMTPConfig{URL: "smtp+insecure://" + addr, User: "ci", Password: "wrong battery"})
		if err := bad.Check(context.Background()); !errors.Is(err, ErrSMTPAuth) || strings.Contains(err.Error(), "wrong battery") {
			t.Errorf("check with a wrong password: %v", err)
		}
	}
	g := be.got()
	if len(g) != 2 || g[0].tls || g[1].tls || g[0].authUser != "ci" || g[0].data != replyWire {
		t.Fatalf("got %+v", g)
	}
	// Check against a server that is down says so.
	s := sender(t, SMTPConfig{URL: "smtp+insecure://127.0.0.1:1"})
	if err := s.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "connect to") {
		t.Errorf("check of a closed port: %v", err)
	}
}

func TestSMTPStartTLS(t *testing.T) {
	ca := newTestCA(t)
	be := &sink{user: "ci", password: "hunter2"}
	addr := serve(t, be, "127.0.0.1", startTLSServer, ca)
	s := sender(t, SMTPConfig{URL: "smtp://" + addr, User: "ci", Password: "hunter2", TLS: &tls.Config{RootCAs: ca.roots}})
	if err := s.Send(context.Background(), "ci@example.org", []string{"ann@example.org"}, []byte(reply)); err != nil {
		t.Fatal(err)
	}
	if g := be.got(); len(g) != 1 || !g[0].tls || g[0].authUser != "ci" || g[0].data != replyWire {
		t.Fatalf("got %+v", g)
	}
	// The system's roots do not know the throwaway CA: refused, worth a
	// retry once the configuration is fixed, and nothing was sent.
	s = sender(t, SMTPConfig{URL: "smtp://" + addr, User: "ci", Password: "hunter2"})
	err := s.Send(context.Background(), "ci@example.org", []string{"ann@example.org"}, []byte(reply))
	var pe *PermanentError
	if err == nil || errors.As(err, &pe) || !strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("with the system roots: %v", err)
	}
	t.Log(err)
	if len(be.got()) != 1 {
		t.Errorf("sent without a verified server")
	}
}

func TestSMTPImplicitTLS(t *testing.T) {
	ca := newTestCA(t)
	be := &sink{user: "ci", password: "hunter2"}
	addr := serve(t, be, "127.0.0.1", implicitServer, ca)
	s := sender(t, SMTPConfig{URL: "smtps://" + addr, User: "ci", Password: "hunter2", TLS: &tls.Config{RootCAs: ca.roots}})
	if err := s.Send(context.Background(), "ci@example.org", []string{"ann@example.org"}, []byte(reply)); err != nil {
		t.Fatal(err)
	}
	if g := be.got(); len(g) != 1 || !g[0].tls || g[0].authUser != "ci" {
		t.Fatalf("got %+v", g)
	}
	s = sender(t, SMTPConfig{URL: "smtps://" + addr, User: "ci", Password: "hunter2"})
	err := s.Send(context.Background(), "ci@example.org", []string{"ann@example.org"}, []byte(reply))
	if err == nil || !strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("with the system roots: %v", err)
	}
	if len(be.got()) != 1 {
		t.Errorf("sent without a verified server")
	}
}

// TestSMTPNoPlainTextAway: a server reached at an address that is not a
// loopback one and offers no STARTTLS gets nothing, no password least of
// all.
func TestSMTPNoPlainTextAway(t *testing.T) {
	ip := nonLoopbackIP()
	if ip == nil {
		t.Skip("this machine has no address but loopback ones")
	}
	be := &sink{user: "ci", password: "hunter2"}
	addr := serve(t, be, ip.String(), plainServer, nil)
	for _, user := range []string{"", "ci"} {
		s := sender(t, SMTPConfig{URL: "smtp://" + addr, User: user, Password: map[string]string{"ci": "hunter2"}[user]})
		err := s.Send(context.Background(), "ci@example.org", []string{"ann@example.org"}, []byte(reply))
		if err == nil || !strings.Contains(err.Error(), "STARTTLS") || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("user %q: %v", user, err)
		}
		t.Log(err)
	}
	if len(be.got()) != 0 {
		t.Errorf("sent in plain text to %s", addr)
	}
	// The same server with STARTTLS, at that address, is fine.
	ca := newTestCA(t, ip)
	addr = serve(t, be, ip.String(), startTLSServer, ca)
	s := sender(t, SMTPConfig{URL: "smtp://" + addr, User: "ci", Password: "hunter2", TLS: &tls.Config{RootCAs: ca.roots}})
	if err := s.Send(context.Background(), "ci@example.org", []string{"ann@example.org"}, []byte(reply)); err != nil {
		t.Fatal(err)
	}
	if g := be.got(); len(g) != 1 || !g[0].tls {
		t.Errorf("got %+v", g)
	}
}

func TestSMTPAuthRefused(t *testing.T) {
	be := &sink{user: "ci", password: "right horse"}
	addr := serve(t, be, "127.0.0.1", plainServer, nil)
	s := sender(t, SMTPConfig{URL: "smtp://" + addr, User: "ci", Password: "wrong battery"})
	err := s.Send(context.Background(), "ci@example.org", []string{"ann@example.org"}, []byte(reply))
	var pe *PermanentError
	if !errors.Is(err, ErrSMTPAuth) || errors.As(err, &pe) {
		t.Fatalf("err %v, want ErrSMTPAuth and no PermanentError", err)
	}
	if msg := err.Error(); strings.Contains(msg, "wrong battery") || !strings.Contains(msg, "535") || !strings.Contains(msg, "password_file") {
		t.Errorf("error %q: want the code and what to fix, never the password", msg)
	}
	if len(be.got()) != 0 {
		t.Errorf("sent without a login")
	}
	t.Log(err)

	// A server that wants a login from a sender configured without one;
	// a server that refuses the sender: both are refci's configuration,
	// to be fixed, not reasons to drop the reply.
	be.needLogin = true
	s = sender(t, SMTPConfig{URL: "smtp://" + addr})
	err = s.Send(context.Background(), "ci@example.org", []string{"ann@example.org"}, []byte(reply))
	if !errors.Is(err, ErrSMTPAuth) || errors.As(err, &pe) || !strings.Contains(err.Error(), "set user and password_file") {
		t.Errorf("login wanted: %v", err)
	}
	t.Log(err)
	be.refuse = map[string]error{"ci@example.org": &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "sender address not owned by user"}}
	s = sender(t, SMTPConfig{URL: "smtp://" + addr, User: "ci", Password: "right horse"})
	err = s.Send(context.Background(), "ci@example.org", []string{"ann@example.org"}, []byte(reply))
	if err == nil || errors.Is(err, ErrSMTPAuth) || errors.As(err, &pe) || !strings.Contains(err.Error(), "check from") {
		t.Errorf("sender refused: %v", err)
	}
	t.Log(err)
	be.refuse, be.needLogin = nil, false

	// The right password, over STARTTLS.
	ca := newTestCA(t)
	addr = serve(t, be, "127.0.0.1", startTLSServer, ca)
	srv := sender(t, SMTPConfig{URL: "smtp://" + addr, User: "ci", Password: "right horse", TLS: &tls.Config{RootCAs: ca.roots}})
	if err := srv.Send(context.Background(), "ci@example.org", []string{"ann@example.org"}, []byte(reply)); err != nil {
		t.Errorf("right password over STARTTLS: %v", err)
	}
}

func TestSMTPRefusals(t *testing.T) {
	be := &sink{refuse: map[string]error{
		"gone@example.org": &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"},
		"busy@example.org": &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"},
	}}
	addr := serve(t, be, "127.0.0.1", plainServer, nil)
	s := sender(t, SMTPConfig{URL: "smtp://" + addr})
	ctx := context.Background()

	// One recipient refused for good: the others get it, and the error
	// is permanent so the reply is not sent to them twice.
	err := s.Send(ctx, "ci@example.org", []string{"ann@example.org", "gone@example.org", "list@example.org"}, []byte(reply))
	var pe *PermanentError
	if !errors.As(err, &pe) || pe.Code != 550 || !strings.Contains(pe.Msg, "gone@example.org") || !strings.Contains(pe.Msg, "no such user") || !strings.Contains(pe.Msg, "delivered") {
		t.Fatalf("err %v, want a PermanentError 550 naming gone@", err)
	}
	t.Log(err)
	if g := be.got(); len(g) != 1 || strings.Join(g[0].rcpt, ",") != "ann@example.org,list@example.org" {
		t.Fatalf("got %+v", g)
	}
	// The only recipient refused for good: permanent, nothing sent.
	err = s.Send(ctx, "ci@example.org", []string{"gone@example.org"}, []byte(reply))
	if !errors.As(err, &pe) || pe.Code != 550 {
		t.Errorf("err %v, want PermanentError 550", err)
	}
	// The only recipient refused for now: a retry is worth it.
	err = s.Send(ctx, "ci@example.org", []string{"busy@example.org"}, []byte(reply))
	if err == nil || errors.As(err, &pe) || !strings.Contains(err.Error(), "451") {
		t.Errorf("err %v, want a temporary error with 451", err)
	}
	t.Log(err)
	// Every recipient refused, one of them for now: worth a retry.
	err = s.Send(ctx, "ci@example.org", []string{"gone@example.org", "busy@example.org"}, []byte(reply))
	if err == nil || errors.As(err, &pe) || !strings.Contains(err.Error(), "550") || !strings.Contains(err.Error(), "451") {
		t.Errorf("err %v, want a temporary error naming both", err)
	}
	// DATA refused for now, then for good.
	be.dataErr = &smtp.SMTPError{Code: 452, Message: "mailbox full"}
	err = s.Send(ctx, "ci@example.org", []string{"ann@example.org"}, []byte(reply))
	if err == nil || errors.As(err, &pe) || !strings.Contains(err.Error(), "452") {
		t.Errorf("err %v, want a temporary error with 452", err)
	}
	be.dataErr = &smtp.SMTPError{Code: 554, Message: "spam"}
	err = s.Send(ctx, "ci@example.org", []string{"ann@example.org"}, []byte(reply))
	if !errors.As(err, &pe) || pe.Code != 554 {
		t.Errorf("err %v, want PermanentError 554", err)
	}
	if len(be.got()) != 1 {
		t.Errorf("%d messages, want 1", len(be.got()))
	}
	// A server without SMTPUTF8 cannot take a non-ASCII address; one
	// with it can.
	if err := s.Send(ctx, "ci@example.org", []string{"rené@example.org"}, []byte(reply)); !errors.As(err, &pe) || !strings.Contains(err.Error(), "SMTPUTF8") {
		t.Errorf("non-ASCII address: %v", err)
	}
	utf8be := &sink{}
	addr8 := serve(t, utf8be, "127.0.0.1", plainServer, nil, func(srv *smtp.Server) { srv.EnableSMTPUTF8 = true })
	if err := sender(t, SMTPConfig{URL: "smtp://" + addr8}).Send(ctx, "ci@example.org", []string{"rené@example.org"}, []byte(reply)); err != nil {
		t.Errorf("non-ASCII address, SMTPUTF8: %v", err)
	}
	if g := utf8be.got(); len(g) != 1 || g[0].rcpt[0] != "rené@example.org" {
		t.Errorf("got %+v", g)
	}
	// Addresses that cannot go into a command are refused before any.
	for _, rcpt := range [][]string{nil, {"a@b>\r\nRCPT TO:<x@y"}, {"nobody"}} {
		if err := s.Send(ctx, "ci@example.org", rcpt, []byte(reply)); !errors.As(err, &pe) {
			t.Errorf("rcpt %q: %v", rcpt, err)
		}
	}
}

// TestSMTPSilentServer: a server that takes the connection and never
// greets, and one that never answers the end of DATA, cost one step
// timeout each, not go-smtp's five or twelve minutes.
func TestSMTPSilentServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, silent
		}
	}()
	const step = time.Second
	s := sender(t, SMTPConfig{URL: "smtp://" + l.Addr().String(), Timeout: step})
	start := time.Now()
	err = s.Send(context.Background(), "ci@example.org", []string{"ann@example.org"}, []byte(reply))
	var pe *PermanentError
	if err == nil || errors.As(err, &pe) || !strings.Contains(err.Error(), "no answer within") || !strings.Contains(err.Error(), "greeting") {
		t.Errorf("silent server: %v", err)
	}
	t.Log(err)
	if d := time.Since(start); d > 30*step {
		t.Errorf("took %v", d)
	}

	block := make(chan struct{})
	defer close(block)
	be := &sink{block: block}
	addr := serve(t, be, "127.0.0.1", plainServer, nil)
	s = sender(t, SMTPConfig{URL: "smtp://" + addr, Timeout: step})
	err = s.Send(context.Background(), "ci@example.org", []string{"ann@example.org"}, []byte(reply))
	if err == nil || errors.As(err, &pe) || !strings.Contains(err.Error(), "end of DATA") {
		t.Errorf("server silent after DATA: %v", err)
	}
	t.Log(err)

	// The caller's context ends a send too.
	ctx, cancel := context.WithCancel(context.Background())
	s = sender(t, SMTPConfig{URL: "smtp://" + l.Addr().String()})
	done := make(chan error, 1)
	go func() { done <- s.Send(ctx, "ci@example.org", []string{"ann@example.org"}, []byte(reply)) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Send ignores its context")
	}
}

func TestSMTPServerDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s := sender(t, SMTPConfig{URL: "smtp://" + addr})
	err = s.Send(context.Background(), "ci@example.org", []string{"ann@example.org"}, []byte(reply))
	var pe *PermanentError
	if err == nil || errors.As(err, &pe) || !strings.Contains(err.Error(), "connect to smtp://"+addr) {
		t.Errorf("server down: %v", err)
	}
	t.Log(err)
}

func TestParseSMTPURL(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "smtps://mail.example.org", want: "smtps://mail.example.org:465"},
		{in: "SMTPS://mail.example.org:2465/", want: "smtps://mail.example.org:2465"},
		{in: "smtp://mail.example.org", want: "smtp://mail.example.org:587"},
		{in: " smtp://127.0.0.1:2525 ", want: "smtp://127.0.0.1:2525"},
		{in: "smtp://[::1]:25", want: "smtp://[::1]:25"},
		{in: "smtp+insecure://127.0.0.1", want: "smtp+insecure://127.0.0.1:587"},
		{in: "smtp+insecure://localhost:25", want: "smtp+insecure://localhost:25"},
		{in: "smtp+insecure://[::1]:2525", want: "smtp+insecure://[::1]:2525"},
		{in: "smtp+insecure://mail.example.org", err: "only to a loopback address"},
		{in: "smtp+insecure://10.0.0.1:25", err: "only to a loopback address"},
		{in: "imap://mail.example.org", err: "scheme"},
		{in: "mail.example.org:587", err: "not a URL"},
		{in: "smtp:mail.example.org", err: "not a URL"},
		{in: "smtp://", err: "no host"},
		{in: "smtp://host:0", err: "bad port"},
		{in: "smtp://host:99999", err: "bad port"},
		{in: "smtp://host/INBOX", err: "path"},
		{in: "smtp://host?x=1", err: "path"},
		{in: "smtps://ci:s3cret@host", err: "password_file"},
		{in: "smtps://ci:s3cret@host:bad", err: "not a URL"},
		{in: "", err: "scheme"},
	} {
		ep, err := parseSMTPURL(tc.in)
		switch {
		case tc.err == "" && (err != nil || ep.String() != tc.want):
			t.Errorf("%q: %v %v, want %s", tc.in, ep, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: err %v, want one holding %q", tc.in, err, tc.err)
		case err != nil && strings.Contains(err.Error(), "s3cret"):
			t.Errorf("%q: the error shows the password: %v", tc.in, err)
		}
	}
	if _, err := NewSMTPSender(SMTPConfig{URL: "smtps://host", Password: "x"}); err == nil {
		t.Error("a password without a user")
	}
}

// BenchmarkSMTPSend is one Send to go-smtp's server on 127.0.0.1, a new
// connection each: go test -run '^$' -bench SMTPSend ./forge/mail
func BenchmarkSMTPSend(b *testing.B) {
	ca := newTestCA(b)
	for _, tc := range []struct {
		name   string
		scheme string
		mode   serverMode
	}{{"plain", "smtp", plainServer}, {"starttls", "smtp", startTLSServer}, {"tls", "smtps", implicitServer}} {
		b.Run(tc.name, func(b *testing.B) {
			be := &sink{user: "ci", password: "pw"}
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			srv := smtp.NewServer(be)
			srv.ErrorLog = log.New(io.Discard, "", 0)
			srv.AllowInsecureAuth = tc.mode == plainServer
			if tc.mode != plainServer {
				srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{ca.cert}}
			}
			if tc.mode == implicitServer {
				l = tls.NewListener(l, srv.TLSConfig)
			}
			go srv.Serve(l)
			defer srv.Close()
			s, err := NewSMTPSender(SMTPConfig{URL: tc.scheme + "://" + l.Addr().String(), User: "ci", Password: "pw", TLS: &tls.Config{RootCAs: ca.roots}})
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if err := s.Send(context.Background(), "ci@example.org", []string{"ann@example.org"}, []byte(reply)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
