package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"mime/quotedprintable"
	"net"
	netmail "net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/dovecot"
	"refci.dev/refci/queue"
)

// The mail tests run the real binary against a real Dovecot (the
// mailbox: fixtures/dovecot, which skips without it or when not root,
// unless REFCI_REQUIRE_DOVECOT=1) and go-smtp's server on 127.0.0.1 as
// the outgoing sink, with a real worker running the mailed series.

// mailPipeline fails when the tested tree holds FAIL, saying so.
const mailPipeline = "echo testing\nif [ -e FAIL ]; then echo 'FAIL is there' >&2; exit 3; fi\necho fine\n"

// smtpSink is go-smtp's server on 127.0.0.1 that takes mail from the
// mail user and records it.
type smtpSink struct {
	addr string
	mu   sync.Mutex
	mail []sunk
}

type sunk struct {
	from string
	rcpt []string
	data []byte
}

func startSMTPSink(t testing.TB) *smtpSink {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &smtpSink{addr: l.Addr().String()}
	srv := smtp.NewServer(s)
	srv.Domain = "sink.test"
	srv.AllowInsecureAuth = true // plain text on loopback, as smtp+insecure:// says
	srv.ErrorLog = log.New(io.Discard, "", 0)
	srv.ReadTimeout, srv.WriteTimeout = time.Minute, time.Minute
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *smtpSink) got() []sunk {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sunk(nil), s.mail...)
}

func (s *smtpSink) NewSession(*smtp.Conn) (smtp.Session, error) { return &sinkSession{sink: s}, nil }

type sinkSession struct {
	sink   *smtpSink
	authed bool
	cur    sunk
}

func (s *sinkSession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *sinkSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, password string) error {
		if user != dovecot.User || password != dovecot.Password {
			return smtp.ErrAuthFailed
		}
		s.authed = true
		return nil
	}), nil
}

func (s *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	if !s.authed {
		return smtp.ErrAuthRequired
	}
	s.cur.from = from
	return nil
}

func (s *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.cur.rcpt = append(s.cur.rcpt, to)
	return nil
}

func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.cur.data = b
	s.sink.mu.Lock()
	s.sink.mail = append(s.sink.mail, s.cur)
	s.sink.mu.Unlock()
	s.cur = sunk{}
	return nil
}

func (s *sinkSession) Reset()        { s.cur = sunk{} }
func (s *sinkSession) Logout() error { return nil }

// mailWorld is a remote with a pipeline, a contributor's clone of it, a
// Dovecot, an SMTP sink and the mail user's password file.
type mailWorld struct {
	t        testing.TB
	root     string
	bare     string
	work     string
	base     string
	dv       *dovecot.Server
	sink     *smtpSink
	password string // the password file
	env      []string
}

func newMailWorld(t testing.TB) *mailWorld {
	t.Helper()
	w := &mailWorld{t: t, root: t.TempDir(), dv: dovecot.Start(t), sink: startSMTPSink(t)}
	p := fixtures.NewPipelineRepo(t, mailPipeline)
	w.bare, w.work, w.base = p.Bare, p.Dir, p.Commit
	fixtures.Git(t, w.work, "branch", "-M", "main")
	fixtures.Git(t, w.work, "push", "-q", "origin", "main")
	w.password = filepath.Join(w.root, "mail-password")
	if err := os.WriteFile(w.password, []byte(dovecot.Password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + w.root, "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=Test User", "GIT_AUTHOR_EMAIL=test@example.invalid",
		"GIT_COMMITTER_NAME=Test User", "GIT_COMMITTER_EMAIL=test@example.invalid"}
	return w
}

// mailTable is a [mail] table for the world's servers; imap is the
// URL's scheme and address part ("imaps://"+TLSAddr).
func (w *mailWorld) mailTable(imap string, extra string) string {
	return fmt.Sprintf("[mail]\nimap = %q\nca_file = %q\nsmtp = %q\nuser = %q\npassword_file = %q\nfrom = \"refci <ci@example.org>\"\nbase_branch = \"main\"\n%s",
		imap+"/INBOX", w.dv.CAFile, "smtp+insecure://"+w.sink.addr, dovecot.User, w.password, extra)
}

// series commits changes on a new branch off main and formats them as
// git send-email would send them: the raw messages, the cover letter (if
// any) first.
func (w *mailWorld) series(branch string, args []string, commits ...map[string]string) [][]byte {
	w.t.Helper()
	fixtures.Git(w.t, w.work, "checkout", "-q", "-b", branch, "main")
	for i, files := range commits {
		names := make([]string, 0, len(files))
		for n := range files {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fixtures.WriteFile(w.t, w.work, n, files[n], 0o644)
		}
		fixtures.CommitAll(w.t, w.work, fmt.Sprintf("%s: change %d", branch, i+1))
	}
	fixtures.Git(w.t, w.work, "checkout", "-q", "main")
	out := filepath.Join(w.t.TempDir(), "patches")
	fixtures.Git(w.t, w.work, append([]string{"format-patch", "-q", "-o", out, "--to=ci@example.org", "--cc=list@example.org", "--base=main"},
		append(args, "main.."+branch)...)...)
	files, _ := filepath.Glob(filepath.Join(out, "*.patch"))
	sort.Strings(files)
	var raws [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			w.t.Fatal(err)
		}
		// Dated when sent, as git send-email does (the bridge does not
		// test mail dated outside its ledger's retention).
		date := time.Now().Add(time.Duration(len(raws)) * time.Second).Format(time.RFC1123Z)
		b = regexp.MustCompile(`(?m)^Date: .*$`).ReplaceAll(b, []byte("Date: "+date))
		raws = append(raws, b)
	}
	return raws
}

func (w *mailWorld) deliver(raws ...[]byte) {
	w.t.Helper()
	for _, r := range raws {
		w.dv.Deliver(w.t, dovecot.User, r)
	}
}

// refs lists the remote's refs under prefix.
func (w *mailWorld) refs(prefix string) []string {
	out, _ := fixtures.RunGit(w.bare, nil, nil, "for-each-ref", "--format=%(refname)", prefix)
	return strings.Fields(string(out))
}

// ledgerHas says whether the ledger records the message id as seen.
func (w *mailWorld) ledgerHas(id string) bool {
	sum := sha256.Sum256([]byte("id:" + id))
	h := hex.EncodeToString(sum[:])
	_, err := fixtures.RunGit(w.bare, nil, nil, "cat-file", "-e", queue.MailLedgerRef("mail")+":messages/"+h[:2]+"/"+h[2:])
	return err == nil
}

// ledgerSeries lists the series versions the ledger records.
func (w *mailWorld) ledgerSeries() []string {
	out, _ := fixtures.RunGit(w.bare, nil, nil, "ls-tree", "-r", "--name-only", queue.MailLedgerRef("mail"), "series/")
	return strings.Fields(string(out))
}

// sentinel delivers a mail that holds no patch and waits until the
// ledger records it as looked at: the bridge has made a pass over
// everything delivered before it. Two in a row make sure the pass that
// read the earlier mail has also handled its series.
func (w *mailWorld) sentinel(name string) {
	w.t.Helper()
	id := fmt.Sprintf("sentinel-%s-%d@example.org", name, time.Now().UnixNano())
	w.deliver([]byte(fmt.Sprintf("From: Bob <bob@example.org>\r\nTo: ci@example.org\r\nSubject: lunch?\r\nMessage-ID: <%s>\r\nDate: %s\r\n\r\nNo patch here.\r\n", id, time.Now().Format(time.RFC1123Z))))
	fixtures.WaitFor(w.t, 2*time.Minute, "the bridge to record "+id, func() bool { return w.ledgerHas(id) })
}

// messageID is the Message-ID of a raw message, without brackets.
func messageID(t testing.TB, raw []byte) string {
	t.Helper()
	m, err := netmail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Trim(m.Header.Get("Message-Id"), "<>")
}

// author is the address a raw message is from.
func author(t testing.TB, raw []byte) string {
	t.Helper()
	m, err := netmail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	a, err := m.Header.AddressList("From")
	if err != nil || len(a) != 1 {
		t.Fatalf("From %q: %v", m.Header.Get("From"), err)
	}
	return a[0].Address
}

// readReply parses a reply: its header and its decoded text.
func readReply(t testing.TB, raw []byte) (netmail.Header, string) {
	t.Helper()
	m, err := netmail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	var body io.Reader = m.Body
	if strings.EqualFold(m.Header.Get("Content-Transfer-Encoding"), "quoted-printable") {
		body = quotedprintable.NewReader(body)
	}
	b, err := io.ReadAll(body)
	if err != nil {
		t.Fatal(err)
	}
	return m.Header, string(b)
}

// bgRefci is a refci process started in the background.
type bgRefci struct {
	cmd  *exec.Cmd
	out  *fixtures.Buffer
	done chan struct{}
}

// startProc starts refci with env; it is stopped (SIGTERM) when t ends,
// and its output logged if t failed. refci mirror and refci mail are
// refci-forge (refci execs it), so their processes are too.
func startProc(t testing.TB, env []string, args ...string) *bgRefci {
	t.Helper()
	p := &bgRefci{cmd: exec.Command(refciBin, args...), out: &fixtures.Buffer{}, done: make(chan struct{})}
	p.cmd.Env, p.cmd.Stdout, p.cmd.Stderr = env, p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("refci %s:\n%s", strings.Join(args, " "), tail(p.out.String()))
		}
	})
	return p
}

// exit stops the process and returns its exit status.
func (p *bgRefci) exit(t testing.TB) int {
	p.stop(t)
	return p.cmd.ProcessState.ExitCode()
}

// stop sends SIGTERM and waits for the process to end (SIGKILL after a
// generous guard).
func (p *bgRefci) stop(t testing.TB) {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		t.Errorf("refci did not stop within 30s of SIGTERM")
	}
}

// The "done when": a contributor's 3-patch series with a cover
// letter, delivered to the mailbox of a real `refci worker` with
// [mail], is run once and answered once in its thread; re-delivering the
// same mail and restarting the worker produce no second run and no
// second reply.
func TestMailWorkerEndToEnd(t *testing.T) {
	w := newMailWorld(t)
	cfg := filepath.Join(w.root, "worker.toml")
	body := fmt.Sprintf("remotes = [%q]\npoll = \"200ms\"\nlease = \"3s\"\ngrace = \"5s\"\n", "file://"+w.bare) + w.mailTable("imaps://"+w.dv.TLSAddr, "")
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	env := append(append([]string{}, w.env...), "REFCI_HOME="+filepath.Join(w.root, "home"))
	wk := startProc(t, env, "worker", "--config", cfg)

	mails := w.series("greet", []string{"--cover-letter", "--thread"},
		map[string]string{"a.txt": "one\n"}, map[string]string{"b.txt": "two\n"}, map[string]string{"a.txt": "one, again\n"})
	if len(mails) != 4 {
		t.Fatalf("format-patch made %d messages, want a cover letter and 3 patches", len(mails))
	}
	cover := messageID(t, mails[0])
	coverMsg, _ := netmail.ReadMessage(bytes.NewReader(mails[0]))
	coverSubject := coverMsg.Header.Get("Subject")
	if !strings.HasPrefix(coverSubject, "[PATCH 0/3]") {
		t.Fatalf("the cover letter's subject is %q", coverSubject)
	}
	w.deliver(mails...)
	start := time.Now()
	fixtures.WaitForShowing(t, 3*time.Minute, "a reply", func() bool { return len(w.sink.got()) >= 1 }, func() string { return wk.out.String() })
	t.Logf("delivery to reply: %v", time.Since(start))

	got := w.sink.got()[0]
	hdr, text := readReply(t, got.data)
	if hdr.Get("In-Reply-To") != "<"+cover+">" || !strings.Contains(hdr.Get("References"), "<"+cover+">") {
		t.Errorf("In-Reply-To %q, References %q; want the cover letter <%s>", hdr.Get("In-Reply-To"), hdr.Get("References"), cover)
	}
	if hdr.Get("Subject") != "Re: "+coverSubject {
		t.Errorf("subject %q, want %q", hdr.Get("Subject"), "Re: "+coverSubject)
	}
	if hdr.Get("X-Refci-State") != "success" || hdr.Get("Auto-Submitted") != "auto-replied" {
		t.Errorf("X-Refci-State %q, Auto-Submitted %q:\n%s", hdr.Get("X-Refci-State"), hdr.Get("Auto-Submitted"), text)
	}
	runRef := hdr.Get("X-Refci-Run")
	for _, want := range []string{"it passed", "git fetch file://" + w.bare + " " + runRef, "Mailed patches run untrusted"} {
		if !strings.Contains(strings.ReplaceAll(text, "\n    ", " "), want) {
			t.Errorf("the reply lacks %q:\n%s", want, text)
		}
	}
	if got.from != "ci@example.org" || strings.Join(got.rcpt, ",") != author(t, mails[0])+",list@example.org" {
		t.Errorf("envelope from %q to %v; want the author with the list", got.from, got.rcpt)
	}
	runs := w.refs(queue.RunsPrefix)
	if len(runs) != 1 || runs[0] != runRef {
		t.Fatalf("runs %v; want the one the reply names, %s", runs, runRef)
	}

	// The same mail again, then a restart: nothing new.
	w.deliver(mails...)
	w.sentinel("after-redelivery")
	w.sentinel("after-redelivery-2")
	wk.stop(t)
	wk = startProc(t, env, "worker", "--config", cfg)
	w.sentinel("after-restart")
	w.sentinel("after-restart-2")
	if n := len(w.sink.got()); n != 1 {
		t.Errorf("%d replies, want 1", n)
	}
	if runs := w.refs(queue.RunsPrefix); len(runs) != 1 {
		t.Errorf("runs %v, want 1", runs)
	}
	if series := w.ledgerSeries(); len(series) != 1 {
		t.Errorf("the ledger records the series %v; want one", series)
	}
}

// refci mail alone, beside a worker (another process): a series that
// breaks the pipeline gets a failure reply quoting the failing output,
// to its author only (cc_list = false), threaded on its first patch (no
// cover letter), over IMAP with STARTTLS. Before that, the mistakes a
// user makes at startup: a wrong password exits 2 saying what to check,
// a mail server that is down exits 3.
func TestMailCommandBesideAWorker(t *testing.T) {
	w := newMailWorld(t)
	env := append(append([]string{}, w.env...), "REFCI_HOME="+filepath.Join(w.root, "home"))
	write := func(name, body string) string {
		p := filepath.Join(w.root, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	extra := fmt.Sprintf("remote = %q\ncc_list = false\n", "file://"+w.bare)

	wrong := filepath.Join(w.root, "wrong-password")
	if err := os.WriteFile(wrong, []byte("not-the-password-4711\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := write("bad.toml", strings.Replace(w.mailTable("imap://"+w.dv.Addr, extra), w.password, wrong, 1))
	r := runRefciEnv(t, env, "mail", "--config", bad)
	if r.code != exitUsage || !strings.Contains(r.stderr, "check user and password_file") || strings.Contains(r.stderr, "4711") {
		t.Errorf("wrong password: exit %d, stderr %q", r.code, r.stderr)
	}
	noCA := write("noca.toml", strings.Replace(w.mailTable("imaps://"+w.dv.TLSAddr, extra), fmt.Sprintf("ca_file = %q\n", w.dv.CAFile), "", 1))
	r = runRefciEnv(t, env, "mail", "--config", noCA)
	if r.code != exitInfra || !strings.Contains(r.stderr, "TLS with 127.0.0.1") || !strings.Contains(r.stderr, "name the CA's PEM file in ca_file") {
		t.Errorf("a private CA not given: exit %d, stderr %q", r.code, r.stderr)
	}
	down := write("down.toml", strings.Replace(w.mailTable("imap://"+w.dv.Addr, extra), w.sink.addr, "127.0.0.1:1", 1))
	r = runRefciEnv(t, env, "mail", "--config", down)
	if r.code != exitInfra || !strings.Contains(r.stderr, "connect to smtp+insecure://127.0.0.1:1") {
		t.Errorf("SMTP down: exit %d, stderr %q", r.code, r.stderr)
	}

	cfg := write("mail.toml", fmt.Sprintf("state = %q\n", filepath.Join(w.root, "mail-state"))+w.mailTable("imap://"+w.dv.Addr, extra))
	bridge := startProc(t, env, "mail", "--config", cfg)
	worker := startProc(t, append(append([]string{}, w.env...), "REFCI_HOME="+filepath.Join(w.root, "worker-home")),
		"worker", "--remote", "file://"+w.bare, "--poll", "200ms", "--lease", "3s", "--grace", "5s")
	mails := w.series("broken", []string{"--thread"}, map[string]string{"a.txt": "one\n"}, map[string]string{"FAIL": "yes\n"})
	if len(mails) != 2 {
		t.Fatalf("%d messages, want 2", len(mails))
	}
	first := messageID(t, mails[0])
	w.deliver(mails...)
	fixtures.WaitForShowing(t, 3*time.Minute, "a failure reply", func() bool { return len(w.sink.got()) >= 1 },
		func() string { return bridge.out.String() + worker.out.String() })
	got := w.sink.got()[0]
	hdr, text := readReply(t, got.data)
	if hdr.Get("X-Refci-State") != "failure" || hdr.Get("In-Reply-To") != "<"+first+">" || !strings.HasPrefix(hdr.Get("Subject"), "Re: [PATCH 1/2]") {
		t.Errorf("state %q, In-Reply-To %q (want <%s>), subject %q", hdr.Get("X-Refci-State"), hdr.Get("In-Reply-To"), first, hdr.Get("Subject"))
	}
	for _, want := range []string{"it FAILED: .refci/run exited with code 3.", "FAIL is there"} {
		if !strings.Contains(text, want) {
			t.Errorf("the reply lacks %q:\n%s", want, text)
		}
	}
	if strings.Join(got.rcpt, ",") != author(t, mails[0]) {
		t.Errorf("sent to %v; want the author only", got.rcpt)
	}
	// The first signal stops it, exit 0.
	bridge.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-bridge.done:
	case <-time.After(30 * time.Second):
		t.Fatal("refci mail did not stop on SIGTERM")
	}
	if code := bridge.cmd.ProcessState.ExitCode(); code != 0 || !strings.Contains(bridge.out.String(), "mail bridge stopped") {
		t.Errorf("refci mail exited %d:\n%s", code, bridge.out.String())
	}
	if strings.Contains(bridge.out.String(), dovecot.Password) {
		t.Errorf("the password was logged")
	}
}

// runRefciEnv runs refci with env to its end.
func runRefciEnv(t testing.TB, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(refciBin, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("refci %v: %v", args, err)
	}
	return r
}

// A worker with [mail] whose mail server is down when it starts still
// runs CI, and its bridge starts once the server answers: a mail outage
// never stops a worker.
func TestMailWorkerStartsWhileMailIsDown(t *testing.T) {
	w := newMailWorld(t)
	w.dv.Stop(t)
	cfg := filepath.Join(w.root, "worker.toml")
	body := fmt.Sprintf("remotes = [%q]\npoll = \"200ms\"\n", "file://"+w.bare) + w.mailTable("imaps://"+w.dv.TLSAddr, "")
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	env := append(append([]string{}, w.env...), "REFCI_HOME="+filepath.Join(w.root, "home"))
	wk := startProc(t, env, "worker", "--config", cfg)
	fixtures.WaitForShowing(t, time.Minute, "the worker to say the bridge cannot start", func() bool {
		return strings.Contains(wk.out.String(), "the mail bridge cannot start")
	}, func() string { return wk.out.String() })
	// CI goes on meanwhile.
	fixtures.Git(t, w.work, "push", "-q", "origin", "main:refs/ci/requests/while-mail-is-down")
	fixtures.WaitForShowing(t, 2*time.Minute, "the request's run", func() bool {
		return len(w.refs(queue.RunsPrefix)) == 1 && len(w.refs(queue.RequestsPrefix)) == 0
	}, func() string { return wk.out.String() })

	w.dv.Restart(t)
	w.deliver(w.series("late", []string{"--thread"}, map[string]string{"late.txt": "late\n"})...)
	fixtures.WaitForShowing(t, 3*time.Minute, "a reply once the mail server is back", func() bool { return len(w.sink.got()) == 1 },
		func() string { return wk.out.String() })
	if hdr, text := readReply(t, w.sink.got()[0].data); hdr.Get("X-Refci-State") != "success" {
		t.Errorf("X-Refci-State %q:\n%s", hdr.Get("X-Refci-State"), text)
	}
	if !strings.Contains(wk.out.String(), "mail bridge started") {
		t.Errorf("the worker never said the bridge started:\n%s", wk.out.String())
	}
}
