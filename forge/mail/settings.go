package mail

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	netmail "net/mail"
	"os"
	"slices"
	"strings"
	"time"

	"refci.dev/refci/forge"
	"refci.dev/refci/forge/link"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// Settings is the [mail] table of worker.toml and of refci mail's
// configuration: one mailbox whose patch series are tested on one
// remote, and the server the replies go through. The zero value is a
// table Start refuses, saying what is missing.
type Settings struct {
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
	CcList        *bool          `toml:"cc_list"`
	FetchURL      string         `toml:"fetch_url"`      // the remote as replies tell readers to fetch it (default remote)
	RunsURL       string         `toml:"runs_url"`       // where run pages are served; "" links none
	SeriesTimeout forge.Duration `toml:"series_timeout"` // how long an incomplete series is waited for (default 30m)
	Name          string         `toml:"name"`           // the ledger's name (default mail); bridges of one mailbox share it
	// Sign signs every reply (PGP/MIME) with refci's key: the worker's,
	// or for refci mail the key of --key or $REFCI_HOME.
	Sign bool `toml:"sign"`
	// LedgerDays is how long the ledger keeps its records (default 180;
	// -1: for ever); mail dated longer ago is not tested.
	LedgerDays int `toml:"ledger_days"`
}

// SettingNames names the settings of [mail], for errors ("known: ...").
// The worker, which leaves [mail] to refci-forge, knows them from
// forge/link.
const SettingNames = link.MailSettings

// ErrSettings marks a [mail] setting the user must fix: Start's errors
// match it, ErrIMAPConfig or ErrSMTPAuth (see IsConfigError) when the
// configuration must change.
var ErrSettings = errors.New("mail configuration")

func settingsErr(format string, args ...any) error {
	return fmt.Errorf("%w: [mail]: "+format, append([]any{ErrSettings}, args...)...)
}

// IsConfigError reports whether Start's error asks for a change of the
// configuration (a setting, a password, a mailbox), rather than for a
// server to come back.
func IsConfigError(err error) bool {
	return errors.Is(err, ErrSettings) || errors.Is(err, ErrIMAPConfig) || errors.Is(err, ErrSMTPAuth)
}

// RemoteOf is the remote the bridge of s tests on, given the worker's
// remotes (nil outside a worker): s.Remote, or the only worker remote.
func (s Settings) RemoteOf(remotes []string) string {
	if s.Remote == "" && len(remotes) == 1 {
		return remotes[0]
	}
	return s.Remote
}

// StartOptions are what Start needs besides the settings.
type StartOptions struct {
	// Remotes are the worker's (nil for refci mail): the remote must be
	// one of them, and may be left out when there is one.
	Remotes []string
	Dir     string // the bridge's working directory
	Signer  Signer // signs the replies when Settings.Sign; nil signs none
	Asked   func() // called after each request the bridge pushes; nil: nothing
	Logger  *slog.Logger
}

// Running is a started bridge with its mailbox. Close the mailbox when
// Bridge.Run has returned.
type Running struct {
	Bridge *Bridge
	Box    *IMAPBox
	Remote string // the remote it tests on
}

// Close closes the mailbox.
func (r *Running) Close() { r.Box.Close() }

// Start checks s, logs in to both servers (so that a wrong password or
// an unreachable server is said at once) and makes the bridge. Its
// errors satisfy IsConfigError when the configuration must change; any
// other (a server down, TLS, git) may go away by itself.
func Start(ctx context.Context, s Settings, o StartOptions) (*Running, error) {
	c := s
	remotes := o.Remotes
	c.Remote = s.RemoteOf(remotes)
	switch {
	case c.IMAP == "":
		return nil, settingsErr("no imap: set it to the mailbox patches arrive in, e.g. imaps://mail.example.org/INBOX")
	case c.SMTP == "":
		return nil, settingsErr("no smtp: set it to the server replies go through, e.g. smtps://mail.example.org")
	case c.User == "":
		return nil, settingsErr("no user: set it to the login of the mail servers")
	case c.From == "":
		return nil, settingsErr("no from: set it to the replies' sender, e.g. \"refci <ci@example.org>\"")
	case c.Remote == "" && remotes == nil:
		return nil, settingsErr("no remote: set it to the git remote requests are pushed to and results read from")
	case c.Remote == "":
		return nil, settingsErr("no remote: set it to the one of the worker's remotes (%s) mailed series are tested on", forge.RedactAll(remotes))
	case remotes != nil && !slices.Contains(remotes, c.Remote):
		return nil, settingsErr("remote %s is not one of the worker's remotes (%s)", gitproto.RedactURL(c.Remote), forge.RedactAll(remotes))
	case c.LedgerDays < -1 || c.LedgerDays == 1:
		return nil, settingsErr("ledger_days %d: give 2 days or more (default 180), or -1 to keep every record", c.LedgerDays)
	case c.SeriesTimeout.Duration < 0:
		return nil, settingsErr("series_timeout %s: give a positive duration (default 30m)", c.SeriesTimeout.Duration)
	}
	if _, err := netmail.ParseAddress(c.From); err != nil {
		return nil, settingsErr("from %q is not a mail address: write e.g. \"refci <ci@example.org>\"", c.From)
	}
	if c.Name != "" {
		if err := queue.ValidateEnvName(c.Name); err != nil {
			return nil, settingsErr("name: %v", err)
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
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	smtpCfg := SMTPConfig{URL: c.SMTP, User: c.User, Password: password}
	imapCfg := IMAPConfig{URL: c.IMAP, User: c.User, Password: password, Logger: logger}
	if tlsCfg != nil {
		smtpCfg.TLS, imapCfg.TLS = tlsCfg.Clone(), tlsCfg.Clone()
	}
	sender, err := NewSMTPSender(smtpCfg)
	if err != nil {
		return nil, settingsErr("%v", err)
	}
	// A certificate that does not verify is most often a private CA's.
	hint := func(err error) error {
		if c.CAFile == "" && strings.Contains(err.Error(), "TLS") {
			return fmt.Errorf("%w; if the server's certificate is from a private CA, name the CA's PEM file in ca_file", err)
		}
		return err
	}
	box, err := DialIMAP(ctx, imapCfg)
	if err != nil {
		return nil, hint(fmt.Errorf("[mail]: IMAP: %w", err))
	}
	if err := sender.Check(ctx); err != nil {
		box.Close()
		return nil, hint(fmt.Errorf("[mail]: %w", err))
	}
	var signer Signer
	if c.Sign {
		signer = o.Signer
	}
	cc := c.CcList == nil || *c.CcList
	b, err := New(Config{Mailbox: box, Sender: sender, Remote: c.Remote, Dir: o.Dir, Name: c.Name, From: c.From,
		BaseBranch: c.BaseBranch, NoCc: !cc, FetchURL: c.FetchURL, RunsURL: c.RunsURL, SeriesTimeout: c.SeriesTimeout.Duration, Asked: o.Asked, Logger: logger,
		Signer: signer, Retention: time.Duration(c.LedgerDays) * 24 * time.Hour})
	if err != nil {
		box.Close()
		return nil, err
	}
	return &Running{Bridge: b, Box: box, Remote: c.Remote}, nil
}

// readPassword reads the mail password from path, which only its owner
// may read: its first line, without the line end (a password may hold
// spaces). It is never logged nor passed in argv or the environment.
func readPassword(path string) (string, error) {
	if path == "" {
		return "", settingsErr("no password_file: write the mail password to a file only refci's user reads (chmod 600) and name it in password_file")
	}
	if err := forge.CheckOwnerOnly("password_file", path, "the mail password"); err != nil {
		return "", settingsErr("%v", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", settingsErr("password_file %s: %v", path, err)
	}
	pw, rest, _ := strings.Cut(string(b), "\n")
	pw = strings.TrimSuffix(pw, "\r")
	if pw == "" || strings.TrimSpace(rest) != "" {
		return "", settingsErr("password_file %s must hold the password alone, on its first line", path)
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
		return nil, settingsErr("ca_file %s: %v", path, errors.Unwrap(err))
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, settingsErr("ca_file %s holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// RetryMax is the longest wait between two tries at starting a bridge
// whose servers did not answer.
const RetryMax = time.Minute

// Retry calls start until it works (a second, doubling up to RetryMax,
// between tries) or ctx ends (nil). Each new kind of failure is logged
// once.
func Retry(ctx context.Context, start func(context.Context) (*Running, error), logger *slog.Logger) *Running {
	wait, last := time.Second, ""
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		r, err := start(ctx)
		if err == nil {
			return r
		}
		if msg := err.Error(); msg != last && ctx.Err() == nil {
			logger.Warn("the mail bridge still cannot start; trying again", "err", err)
			last = msg
		}
		wait = min(2*wait, RetryMax)
	}
}
