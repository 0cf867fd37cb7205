package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"refci.dev/refci/cmd/internal/cli"
	"refci.dev/refci/fixtures"
)

// Mistakes in [mail] exit 2 with one line that says what to fix, before
// anything is dialled: unknown settings, missing ones, a password file
// that is missing, readable by others or not one line, a CA file that is
// not PEM, plain text to another machine (a remote the worker does not
// serve: see refci's TestMailConfigErrorsOfAWorker).
func TestMailConfigErrors(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("REFCI_HOME", filepath.Join(dir, "home"))
	pw := writeToken(t, dir, "pw", "hunter2 with spaces\n", 0o600)
	open := writeToken(t, dir, "open", "hunter2", 0o644)
	twoLines := writeToken(t, dir, "two", "hunter2\nmore\n", 0o600)
	notPEM := writeToken(t, dir, "ca.pem", "not a certificate", 0o644)
	remote := fixtures.BareRepo(t, "app.git")
	table := func(imap, smtp, password, extra string) string {
		return fmt.Sprintf("[mail]\nimap = %q\nsmtp = %q\nuser = \"ci@example.org\"\npassword_file = %q\nfrom = \"ci@example.org\"\nremote = %q\n%s",
			imap, smtp, password, remote, extra)
	}
	good := func(extra string) string {
		return table("imap+insecure://127.0.0.1:1/INBOX", "smtp+insecure://127.0.0.1:1", pw, extra)
	}
	for _, tc := range []struct{ name, config, want string }{
		{"unknown setting", good("colour = \"red\"\n"), `unknown setting "mail.colour"; known: state, and in [mail]: imap, smtp`},
		{"no table", "state = \"/tmp/x\"\n", "no [mail] table"},
		{"no imap", table("", "smtps://mail.example.org", pw, ""), "no imap: set it to the mailbox"},
		{"no smtp", table("imaps://mail.example.org", "", pw, ""), "no smtp: set it to the server"},
		{"no password file", strings.Replace(good(""), "password_file", "#", 1), "no password_file: write the mail password to a file"},
		{"missing password file", table("imaps://mail.example.org", "smtps://mail.example.org", filepath.Join(dir, "nope"), ""), "write the mail password there (chmod 600)"},
		{"readable password", table("imaps://mail.example.org", "smtps://mail.example.org", open, ""), "can be read by others (mode 0644): run chmod 600 " + open},
		{"two lines", table("imaps://mail.example.org", "smtps://mail.example.org", twoLines, ""), "must hold the password alone"},
		{"CA not PEM", good(fmt.Sprintf("ca_file = %q\n", notPEM)), "holds no PEM certificate"},
		{"plain IMAP away", table("imap+insecure://mail.example.org/INBOX", "smtps://mail.example.org", pw, ""), "plain text is allowed only to a loopback address"},
		{"plain SMTP away", table("imaps://mail.example.org/INBOX", "smtp+insecure://mail.example.org", pw, ""), "plain text is allowed only to a loopback address"},
		{"bad scheme", table("pop3://mail.example.org", "smtps://mail.example.org", pw, ""), "the scheme must be imaps://"},
		{"bad from", strings.Replace(good(""), "from = \"ci@example.org\"", "from = \"ci at example\"", 1), `from "ci at example" is not a mail address`},
		{"bad name", good("name = \"../x\"\n"), "name:"},
		{"negative timeout", good("series_timeout = \"-1m\"\n"), "series_timeout -1m0s: give a positive duration"},
		{"ledger_days of one", good("ledger_days = 1\n"), "ledger_days 1: give 2 days or more"},
	} {
		cfg := filepath.Join(dir, "c.toml")
		if err := os.WriteFile(cfg, []byte(tc.config), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, errs := runHelp("mail", "--config", cfg)
		if code != cli.ExitUsage || !strings.Contains(errs, tc.want) || strings.Count(errs, "\n") != 1 || strings.Contains(errs, "hunter2") {
			t.Errorf("%s: exit %d, stderr %q; want exit 2 and one line saying %q", tc.name, code, errs, tc.want)
		}
	}
}
