// Package forgecmd describes the commands refci-forge runs for refci
// (refci mirror, refci mail): their synopsis, summary and help, the one
// source of both binaries' help. It is only text: refci lists the
// commands without linking them.
package forgecmd

import "refci.dev/refci/cmd/internal/cli"

// Binary is the name of the binary that runs the commands, beside refci.
const Binary = "refci-forge"

// Package is the import path of its main package (for its build check).
const Package = "refci.dev/refci/cmd/refci-forge"

// Mirror is refci mirror.
var Mirror = cli.Command{Program: "refci", Name: "mirror", Synopsis: "--config FILE",
	Summary: "show the runs of remotes on forges: commit statuses and one comment per pull request", Detail: mirrorHelp}

// Mail is refci mail.
var Mail = cli.Command{Program: "refci", Name: "mail", Synopsis: "--config FILE [--key FILE]",
	Summary: "test patch series mailed to a mailbox and reply in their threads", Detail: mailHelp}

// Commands are the commands refci-forge runs for refci, in refci's order.
func Commands() []cli.Command { return []cli.Command{Mirror, Mail} }

const mirrorHelp = `The configuration holds one [[forge]] entry per forge repository:

  state = "/var/lib/refci-mirror"   # default $REFCI_HOME/mirror
  poll = "10s"

  [[forge]]
  kind = "gitea"                    # github, gitea (also Forgejo) or gitlab
  repo = "org/app"                  # owner/name; for GitLab the project path
  remote = "https://git.example.org/org/app.git"
  token_file = "/etc/refci/gitea-token"   # readable by its owner only
  base_url = "https://git.example.org"    # a self-hosted forge; "" for the public one
  runs_url = ""                     # where the run pages are public, if anywhere

A GitHub App shows check runs instead of statuses: in place of token_file,
  app_id = 123
  installation_id = 456
  private_key_file = "/etc/refci/app.pem"  # readable by its owner only

Each run appears as the commit status refci/<request>, and each open pull
request whose head is the run's commit gets one comment, edited in place.
It only reads results: no key, no worker. What each forge shows is
recorded under state, so a restart resends nothing.
`

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
