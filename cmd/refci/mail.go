package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	netmail "net/mail"
	"os"
	"path/filepath"
	"strings"

	"refci.dev/refci/forge/mail"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"time"
)

// mailConfig is the [mail] table of worker.toml and of refci mail's
// configuration: one mailbox whose patch series are tested on one
// remote, and the server the replies go through.
type mailConfig struct {
	IMAP         string `toml:"imap"`          // imaps://host/MAILBOX, imap:// (STARTTLS), imap+insecure:// (loopback)
	SMTP         string `toml:"smtp"`          // smtps://host, smtp://host:587 (STARTTLS), smtp+insecure:// (loopback)
	User         string `toml:"user"`          // the login of both servers
	PasswordFile string `toml:"password_file"` // its password, in a file only its owner reads
	From         string `toml:"from"`          // the replies' sender
	Remote       string `toml:"remote"`        // where requests go and results are read; optional with one worker remote
	BaseBranch   string `toml:"base_branch"`   // a series without base-commit: is applied on it (default main)
	// CAFile is a PEM file of CAs trusted besides the system's, by both
	// servers (a self-hosted mail server's private CA).
	CAFile string `toml:"ca_file"`
	// CcList copies the replies to the list (the root mail's other To
	// and Cc addresses); false answers the author only. Default true.
	CcList        *bool    `toml:"cc_list"`
	FetchURL      string   `toml:"fetch_url"`      // the remote as replies tell readers to fetch it (default remote)
	RunsURL       string   `toml:"runs_url"`       // where run pages are served; "" links none
	SeriesTimeout duration `toml:"series_timeout"` // how long an incomplete series is waited for (default 30m)
	Name          string   `toml:"name"`           // the ledger's name (default mail); bridges of one mailbox share it
	// Sign signs every reply (PGP/MIME) with refci's key: the worker's,
	// or for refci mail the key of --key or $REFCI_HOME.
	Sign bool `toml:"sign"`
	// LedgerDays is how long the ledger keeps its records (default 180;
	// -1: for ever); mail dated longer ago is not tested.
	LedgerDays int `toml:"ledger_days"`
}

// mailSettings names the settings of [mail], for errors.
const mailSettings = "imap, smtp, user, password_file, from, remote, base_branch, ca_file, cc_list, fetch_url, runs_url, series_timeout, name, sign, ledger_days"

// mailCommandConfig is the TOML configuration of `refci mail --config`.
type mailCommandConfig struct {
	State string     `toml:"state"` // the bridge's directory (default $REFCI_HOME/mail)
	Mail  mailConfig `toml:"mail"`
}

const mailHelp = `The configuration holds a [mail] table, the same as in worker.toml
(where 'refci worker' runs the bridge beside its worker):

  state = "/var/lib/refci-mail"     # default $REFCI_HOME/mail

  [mail]
  imap = "imaps://mail.example.org/INBOX"
  smtp = "smtps://mail.example.org"
  user = "ci@example.org"           # the login of both servers
  password_file = "/etc/refci/mail-password"   # readable by its owner only
  from = "refci <ci@example.org>"
  remote = "git@git.example.org:org/app.git"   # where requests go, results are read
  base_branch = "main"              # used when a series names no base
  # ca_file = "/etc/refci/mail-ca.pem"  # a private CA of the mail server
  # cc_list = false                 # reply to the author only (default: the list in Cc)
  # fetch_url = "https://git.example.org/org/app.git"  # as replies tell readers to fetch
  # runs_url = "https://ci.example.org/app"            # where run pages are served
  # series_timeout = "30m"          # then an incomplete series is answered
  # name = "mail"                   # the ledger: bridges of one mailbox share it
  # sign = true                     # sign replies (PGP/MIME) with refci's key
  # ledger_days = 180               # the ledger forgets older mail; mail dated before is not tested (-1: keep all)

The servers' URLs:
  imaps://HOST[:993]/MAILBOX   TLS          smtps://HOST[:465]          TLS
  imap://HOST[:143]/MAILBOX    STARTTLS     smtp://HOST[:587]           STARTTLS
  imap+insecure://127.0.0.1/MAILBOX         smtp+insecure://127.0.0.1[:587]
                               plain text, to a loopback address only
(imap:// and smtp:// also fall back on plain text when a server on a
loopback address offers no STARTTLS.) The mailbox is only read, never changed.

A contributor sends a series with git send-email (git format-patch
--base=... --cover-letter --thread); refci applies it on its base, pushes
the request patches/<series>/v<N> (untrusted: no secrets) and replies
once in the thread with the result. What was handled is kept in
refs/ci/mail/ledger/<name> on the remote, so a restart or a re-delivered
mail never tests or replies twice. On refci serve the bridge's key needs
the roles trigger,worker, and never trusted.
`

func cmdMail(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "mail")
	configFile := fs.String("config", "", "a TOML file with a [mail] table (see README)")
	keyFile := fs.String("key", "", "the key replies are signed with when sign = true (default: refci's key in $REFCI_HOME)")
	if _, code, ok := parse(e, fs, args, 0); !ok {
		return code
	}
	if *configFile == "" {
		e.errorf("mail: no configuration; pass --config FILE with a [mail] table")
		return exitUsage
	}
	var cfg mailCommandConfig
	md, ok := readConfig(e, *configFile, &cfg, "state, and in [mail]: "+mailSettings)
	if !ok {
		return exitUsage
	}
	if !md.IsDefined("mail") {
		e.errorf("config %s: no [mail] table; add one with imap, smtp, user, password_file, from and remote", *configFile)
		return exitUsage
	}
	if cfg.State == "" {
		h, err := e.home()
		if err != nil {
			e.errorf("%v", err)
			return exitUsage
		}
		cfg.State = filepath.Join(h, "mail")
	}
	logger := slog.New(slog.NewTextHandler(e.stderr, nil))
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	// Signals stop the startup checks too.
	stopSignals := onStopSignals(context.WithoutCancel(ctx), func(s os.Signal) {
		stop()
		logger.Info("signal: stopping the mail bridge", "signal", s.String())
	}, func(os.Signal) {})
	defer stopSignals()
	var signer mail.Signer
	if cfg.Mail.Sign {
		id, err := e.identity(*keyFile)
		if err != nil {
			e.errorf("sign: %v", err)
			return exitUsage
		}
		signer = id
	}
	mb, err := newMailBridge(ctx, cfg.Mail, nil, cfg.State, signer, nil, logger)
	if err != nil && ctx.Err() != nil {
		logger.Info("mail bridge stopped before it started")
		return exitOK
	}
	if err != nil {
		e.errorf("config %s: %v", *configFile, err)
		return mailExit(err)
	}
	defer mb.close()
	logger.Info("mail bridge started", "imap", cfg.Mail.IMAP, "smtp", cfg.Mail.SMTP, "remote", gitproto.RedactURL(mb.remote), "state", cfg.State)
	mb.bridge.Run(ctx)
	logger.Info("mail bridge stopped")
	return exitOK
}

// errMailConfig marks a [mail] setting the user must fix (exit 2).
var errMailConfig = errors.New("mail configuration")

func mailErr(format string, args ...any) error {
	return fmt.Errorf("%w: [mail]: "+format, append([]any{errMailConfig}, args...)...)
}

// mailExit is the exit code of newMailBridge's error: the user's
// mistakes 2, the rest (a server down, TLS, git) 3.
func mailExit(err error) int {
	if errors.Is(err, errMailConfig) || errors.Is(err, mail.ErrIMAPConfig) || errors.Is(err, mail.ErrSMTPAuth) {
		return exitUsage
	}
	return exitInfra
}

// mailBridge is a configured bridge with its mailbox.
type mailBridge struct {
	bridge *mail.Bridge
	box    *mail.IMAPBox
	remote string
}

func (m *mailBridge) close() { m.box.Close() }

// newMailBridge checks c, logs in to both servers (so that a wrong
// password or an unreachable server is said at once) and makes the
// bridge, working in dir; asked is called after each request it pushes
// (nil: nothing). remotes are the worker's (nil for refci mail):
// c.Remote must be one of them, and may be left out when there is one.
// Its errors match errMailConfig, mail.ErrIMAPConfig or mail.ErrSMTPAuth
// when the configuration must change.
func newMailBridge(ctx context.Context, c mailConfig, remotes []string, dir string, signer mail.Signer, asked func(), logger *slog.Logger) (*mailBridge, error) {
	if c.Remote == "" && len(remotes) == 1 {
		c.Remote = remotes[0]
	}
	switch {
	case c.IMAP == "":
		return nil, mailErr("no imap: set it to the mailbox patches arrive in, e.g. imaps://mail.example.org/INBOX")
	case c.SMTP == "":
		return nil, mailErr("no smtp: set it to the server replies go through, e.g. smtps://mail.example.org")
	case c.User == "":
		return nil, mailErr("no user: set it to the login of the mail servers")
	case c.From == "":
		return nil, mailErr("no from: set it to the replies' sender, e.g. \"refci <ci@example.org>\"")
	case c.Remote == "" && remotes == nil:
		return nil, mailErr("no remote: set it to the git remote requests are pushed to and results read from")
	case c.Remote == "":
		return nil, mailErr("no remote: set it to the one of the worker's remotes (%s) mailed series are tested on", redactAll(remotes))
	case remotes != nil && !contains(remotes, c.Remote):
		return nil, mailErr("remote %s is not one of the worker's remotes (%s)", gitproto.RedactURL(c.Remote), redactAll(remotes))
	case c.LedgerDays < -1 || c.LedgerDays == 1:
		return nil, mailErr("ledger_days %d: give 2 days or more (default 180), or -1 to keep every record", c.LedgerDays)
	case c.SeriesTimeout.Duration < 0:
		return nil, mailErr("series_timeout %s: give a positive duration (default 30m)", c.SeriesTimeout.Duration)
	}
	if _, err := netmail.ParseAddress(c.From); err != nil {
		return nil, mailErr("from %q is not a mail address: write e.g. \"refci <ci@example.org>\"", c.From)
	}
	if c.Name != "" {
		if err := queue.ValidateEnvName(c.Name); err != nil {
			return nil, mailErr("name: %v", err)
		}
	}
	password, err := readPassword(c.PasswordFile)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := caConfig(c.CAFile)
	if err != nil {
		return nil, err
	}
	smtpCfg := mail.SMTPConfig{URL: c.SMTP, User: c.User, Password: password}
	imapCfg := mail.IMAPConfig{URL: c.IMAP, User: c.User, Password: password, Logger: logger}
	if tlsCfg != nil {
		smtpCfg.TLS, imapCfg.TLS = tlsCfg.Clone(), tlsCfg.Clone()
	}
	sender, err := mail.NewSMTPSender(smtpCfg)
	if err != nil {
		return nil, mailErr("%v", err)
	}
	// A certificate that does not verify is most often a private CA's.
	hint := func(err error) error {
		if c.CAFile == "" && strings.Contains(err.Error(), "TLS") {
			return fmt.Errorf("%w; if the server's certificate is from a private CA, name the CA's PEM file in ca_file", err)
		}
		return err
	}
	box, err := mail.DialIMAP(ctx, imapCfg)
	if err != nil {
		return nil, hint(fmt.Errorf("[mail]: IMAP: %w", err))
	}
	if err := sender.Check(ctx); err != nil {
		box.Close()
		return nil, hint(fmt.Errorf("[mail]: %w", err))
	}
	cc := c.CcList == nil || *c.CcList
	b, err := mail.New(mail.Config{Mailbox: box, Sender: sender, Remote: c.Remote, Dir: dir, Name: c.Name, From: c.From,
		BaseBranch: c.BaseBranch, NoCc: !cc, FetchURL: c.FetchURL, RunsURL: c.RunsURL, SeriesTimeout: c.SeriesTimeout.Duration, Asked: asked, Logger: logger,
		Signer: signer, Retention: time.Duration(c.LedgerDays) * 24 * time.Hour})
	if err != nil {
		box.Close()
		return nil, err
	}
	return &mailBridge{bridge: b, box: box, remote: c.Remote}, nil
}

// readPassword reads the mail password from path, which only its owner
// may read: its first line, without the line end (a password may hold
// spaces). It is never logged nor passed in argv or the environment.
func readPassword(path string) (string, error) {
	if path == "" {
		return "", mailErr("no password_file: write the mail password to a file only refci's user reads (chmod 600) and name it in password_file")
	}
	if err := checkOwnerOnly("password_file", path, "the mail password"); err != nil {
		return "", mailErr("%v", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", mailErr("password_file %s: %v", path, err)
	}
	pw, rest, _ := strings.Cut(string(b), "\n")
	pw = strings.TrimSuffix(pw, "\r")
	if pw == "" || strings.TrimSpace(rest) != "" {
		return "", mailErr("password_file %s must hold the password alone, on its first line", path)
	}
	return pw, nil
}

// caConfig is TLS trusting the system's roots and the CAs of the PEM
// file path; nil when path is "".
func caConfig(path string) (*tls.Config, error) {
	if path == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, mailErr("ca_file %s: %v", path, errors.Unwrap(err))
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, mailErr("ca_file %s holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// wakeMail returns the worker's Pushed hook for the bridge that bridge
// returns (nil: none yet) on remote: after a push of run refs to it (one
// of rems, opened from the URLs urls), the bridge looks at the runs at
// once. nil when there is no [mail].
func wakeMail(rems []*gitproto.Remote, urls []string, remote string, bridge func() *mailBridge) func(string) {
	if remote == "" {
		return nil
	}
	var url string
	for i, r := range rems {
		if urls[i] == remote {
			url = r.URL
		}
	}
	return func(u string) {
		if mb := bridge(); mb != nil && u == url {
			mb.bridge.Wake()
		}
	}
}

// mailRetryMax is the longest wait between two tries at starting a mail
// bridge whose servers did not answer.
const mailRetryMax = time.Minute

// retryMail tries start until it works (a second, doubling up to
// mailRetryMax, between tries) or ctx ends (nil). Each new kind of
// failure is logged once.
func retryMail(ctx context.Context, start func(context.Context) (*mailBridge, error), logger *slog.Logger) *mailBridge {
	wait, last := time.Second, ""
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		mb, err := start(ctx)
		if err == nil {
			return mb
		}
		if msg := err.Error(); msg != last && ctx.Err() == nil {
			logger.Warn("the mail bridge still cannot start; trying again", "err", err)
			last = msg
		}
		wait = min(2*wait, mailRetryMax)
	}
}

// wakeAll is a Pushed hook that calls each of hooks (nil ones left
// out); nil when there are none.
func wakeAll(hooks ...func(string)) func(string) {
	var hs []func(string)
	for _, h := range hooks {
		if h != nil {
			hs = append(hs, h)
		}
	}
	if len(hs) == 0 {
		return nil
	}
	return func(u string) {
		for _, h := range hs {
			h(u)
		}
	}
}
