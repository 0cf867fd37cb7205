package main

// `refci secrets ...` (admins, on the local refs/ci/secrets/<env>) and
// `refci secret NAME` (inside a pipeline).

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"refci.dev/refci/cmd/internal/cli"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
	"refci.dev/refci/secrets/envstore"
	"refci.dev/refci/worker"
	"refci.dev/refci/worker/jobsock/jobclient"
)

func cmdSecret(ctx context.Context, e *env, args []string) int {
	return jobclient.RunSecretCommand(ctx, args, e.getenv, e.stdout, e.stderr)
}

// secretsHelp is the details of 'refci secrets -h'.
const secretsHelp = `Manage the secrets environment ENV, stored at refs/ci/secrets/ENV in the
local repository (push it with: git push origin refs/ci/secrets/ENV).
Every change is a new commit signed with your refci key (--key FILE).

  init ENV [--admin FILE]... --recipient FILE... [--request PATTERN]... [--export NAME]... [--allow-untrusted]
        create ENV; admins (default: your own key) may change it and are
        recipients too; recipients are the workers that may decrypt
  set ENV NAME [--sealed]  store a new version of NAME, read from stdin (never argv);
                        --sealed: stdin is a message gpg encrypted to the recipients and an admin signed
  get ENV NAME          print NAME's value (you must be a recipient)
  list ENV              names, who set them and when, recipients, policy; never values
  history ENV           every version of ENV, newest first
  recipients add ENV FILE              add a recipient; re-encrypts every value
  recipients remove ENV FILE|FINGERPRINT  remove one; re-encrypts every value
  policy ENV [--request PATTERN]... [--export NAME]... [--allow-untrusted]
        replace which requests may use ENV

Common flags: --repo DIR (default .), --key FILE (default $REFCI_HOME/key.asc).
`

func cmdSecrets(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 {
		e.errorf("secrets: missing command: init, set, get, list, history, recipients or policy (see 'refci help secrets')")
		return exitUsage
	}
	name, rest := args[0], args[1:]
	switch {
	case name == "help" || cli.IsHelp(name):
		return table(e).Help(ctx, e.cli(), []string{"secrets"})
	case name == "recipients" && (len(rest) == 0 || (rest[0] != "add" && rest[0] != "remove")):
		e.errorf("secrets recipients: want 'add' or 'remove' (see 'refci secrets -h')")
		return exitUsage
	case name == "recipients":
		name, rest = name+" "+rest[0], rest[1:]
	}
	for _, sub := range secretsSubs(e) {
		if sub.name == "secrets "+name {
			return runSecrets(e, rest, sub)
		}
	}
	e.errorf("secrets: unknown command %q (see 'refci secrets -h')", name)
	return exitUsage
}

// secretsSub is a subcommand of refci secrets whose first positional
// argument is the environment.
type secretsSub struct {
	name, usage string
	nPos        int                 // positional arguments, ENV first
	flags       func(*flag.FlagSet) // registers its own flags; nil: none
	load        bool                // load the environment, which must exist, before run
	admin       bool                // and authorize the user's key to change it
	run         func(c *secretsCmd, pos []string) error
}

// secretsCmd is one run of a subcommand.
type secretsCmd struct {
	e       *env
	store   *envstore.Store
	env     string
	keyFile string
	ed      *envstore.Edit // the environment loaded, with secretsSub.load
}

// runSecrets parses the arguments of sub (--repo, --key, its own flags,
// exactly sub.nPos positional arguments), opens the environment, and runs
// sub; it prints the error and returns the exit code: the user's
// mistakes are exitUsage.
func runSecrets(e *env, args []string, sub secretsSub) int {
	fs := cli.NewFlags(cli.Command{Program: programName, Name: sub.name, Synopsis: sub.usage})
	repoDir := fs.String("repo", ".", "the repository")
	keyFile := fs.String("key", "", "use this private key instead of $REFCI_HOME/key.asc")
	if sub.flags != nil {
		sub.flags(fs)
	}
	pos, code, ok := parse(e, fs, args, sub.nPos)
	if !ok {
		return code
	}
	if len(pos) != sub.nPos {
		want, _, _ := strings.Cut(sub.usage, " [")
		want, _, _ = strings.Cut(want, " <")
		e.errorf("%s: want %s (see 'refci %s -h')", sub.name, want, sub.name)
		return exitUsage
	}
	c := &secretsCmd{e: e, env: pos[0], keyFile: *keyFile, store: &envstore.Store{}}
	err := cli.AsUsage(queue.ValidateEnvName(c.env))
	if err == nil {
		c.store.Repo, err = openRepo(*repoDir)
	}
	if err == nil && sub.load {
		c.ed, err = c.store.Edit(c.env)
	}
	if err == nil && sub.admin {
		err = c.authorize()
	}
	if err == nil {
		err = sub.run(c, pos)
	}
	if err == nil {
		return exitOK
	}
	e.errorf("%v", err)
	if errors.Is(err, envstore.ErrUsage) {
		return exitUsage
	}
	return exitFor(err)
}

// authorize loads the user's key and makes it the admin of c.ed.
func (c *secretsCmd) authorize() error {
	id, err := c.e.identity(c.keyFile)
	if err != nil {
		return err
	}
	return c.ed.Authorize(id)
}

// committed says what change ch made.
func (c *secretsCmd) committed(ch envstore.Change) {
	fmt.Fprintf(c.e.stdout, "%s: %s (commit %.12s, signed by %s)\n", ch.Ref, ch.Subject, ch.Commit, ch.Signer)
}

// pushHint says how to publish ch.
func (c *secretsCmd) pushHint(ch envstore.Change) {
	fmt.Fprintf(c.e.stdout, "next: git push origin %s\n", ch.Ref)
}

// printKeys writes title, then k's keys, one line each.
func printKeys(w io.Writer, title string, k secrets.Keyring) {
	fmt.Fprintln(w, title)
	for _, ki := range k.Keys() {
		fmt.Fprintf(w, "  %s  %s\n", ki.Fingerprint, ki.UserID)
	}
}

func policyFlags(fs *flag.FlagSet) (*multiFlag, *multiFlag, *bool) {
	var reqs, exports multiFlag
	fs.Var(&reqs, "request", "only requests whose name matches this pattern may use the environment (repeatable; e.g. main, release/*)")
	fs.Var(&exports, "export", "also put value NAME in the pipeline's environment (repeatable; otherwise only `refci secret NAME` reads it)")
	untrusted := fs.Bool("allow-untrusted", false, "let untrusted requests use the environment too (dangerous: anyone who can push a request reads every value)")
	return &reqs, &exports, untrusted
}

// secretsSubs are the subcommands of refci secrets, run with e; each
// call makes them anew, their flags bound to variables of the call.
func secretsSubs(e *env) []secretsSub {
	var adminFiles, recFiles multiFlag
	var reqs, exports *multiFlag
	var untrusted, sealedIn *bool
	return []secretsSub{{name: "secrets init", usage: "ENV [--admin FILE]... --recipient FILE... [flags]", nPos: 1, flags: func(fs *flag.FlagSet) {
		fs.Var(&adminFiles, "admin", "public key of an admin (repeatable; default: your own key)")
		fs.Var(&recFiles, "recipient", "public key of a worker that may decrypt (repeatable)")
		reqs, exports, untrusted = policyFlags(fs)
	}, run: func(c *secretsCmd, _ []string) error {
		if err := c.store.CheckNew(c.env); err != nil {
			return err
		}
		if len(recFiles) == 0 {
			return cli.AsUsage(errors.New("secrets init: no --recipient; give the public key of each worker that may decrypt (on the worker: refci keys export > worker.asc)"))
		}
		id, err := c.e.identity(c.keyFile)
		if err != nil {
			return err
		}
		spec := envstore.NewSpec{AdminFiles: adminFiles, RecipientFiles: recFiles}
		if spec.Policy, err = envstore.NewPolicy(*reqs, *exports, *untrusted); err != nil {
			return err
		}
		ch, err := c.store.Create(c.env, id, spec)
		if err != nil {
			return err
		}
		c.committed(ch)
		printKeys(e.stdout, "admins:", ch.Env.Admins)
		printKeys(e.stdout, "recipients (admins are recipients too, so they can re-encrypt):", ch.Env.Recipients)
		fmt.Fprintf(e.stdout, "policy: %s\n", envstore.DescribePolicy(ch.Env.Policy))
		fmt.Fprintf(e.stdout, "next: printf %%s \"$VALUE\" | refci secrets set %s NAME\n", c.env)
		return nil
	}}, {name: "secrets set", usage: "ENV NAME [--sealed] < VALUE", nPos: 2, flags: func(fs *flag.FlagSet) {
		sealedIn = fs.Bool("sealed", false, "stdin is an OpenPGP message already encrypted to the recipients and signed by an admin (e.g. by gpg); stored as is after checking it")
	}, run: func(c *secretsCmd, pos []string) (err error) {
		name := pos[1]
		if err := secrets.ValidateName(name); err != nil {
			return cli.AsUsage(err)
		}
		if cli.IsTerminal(e.stdin) {
			return cli.AsUsage(fmt.Errorf("secrets set reads the value from stdin, which is a terminal; pipe it in so it is never echoed or kept in your shell history: printf %%s \"$VALUE\" | refci secrets set %s %s", c.env, name))
		}
		value, err := io.ReadAll(io.LimitReader(e.stdin, secrets.MaxValueLen+1))
		if err != nil {
			return fmt.Errorf("read the value from stdin: %w", err)
		}
		defer func() { clear(value) }()
		if c.ed, err = c.store.Edit(c.env); err != nil {
			return err
		}
		if err := c.authorize(); err != nil {
			return err
		}
		var ch envstore.Change
		stored := "stored as sealed by its writer"
		if *sealedIn {
			value, ch, err = c.ed.SetSealed(name, value)
		} else if ch, err = c.ed.Set(name, value); err == nil {
			stored = fmt.Sprintf("encrypted to %d recipients", len(ch.Env.Recipients.Keys()))
		}
		if err != nil {
			return err
		}
		c.committed(ch)
		note := ""
		if bytes.HasSuffix(value, []byte("\n")) {
			note = ", ending in a newline (use printf %s rather than echo if that is not meant)"
		}
		fmt.Fprintf(e.stdout, "%s: %d bytes%s, %s\n", name, len(value), note, stored)
		c.pushHint(ch)
		return nil
	}}, {name: "secrets get", usage: "ENV NAME", nPos: 2, load: true, run: func(c *secretsCmd, pos []string) error {
		if _, err := c.ed.Env.Sealed(pos[1]); err != nil {
			return err
		}
		id, err := c.e.identity(c.keyFile)
		if err != nil {
			return err
		}
		v, err := c.ed.Env.Value(id, pos[1])
		if err != nil {
			return err
		}
		e.stdout.Write(v)
		clear(v)
		return nil
	}}, {name: "secrets list", usage: "ENV", nPos: 1, load: true, run: func(c *secretsCmd, _ []string) error {
		changes, err := c.store.LastChanges(c.ed.Base)
		if err != nil {
			return err
		}
		w, t := e.stdout, c.ed.Env
		fmt.Fprintf(w, "environment %s (%s at %.12s)\n", c.env, queue.SecretsRef(c.env), c.ed.Base)
		fmt.Fprintf(w, "policy: %s\n", envstore.DescribePolicy(t.Policy))
		printKeys(w, "admins:", t.Admins)
		printKeys(w, "recipients:", t.Recipients)
		names := t.Names()
		if len(names) == 0 {
			fmt.Fprintf(w, "values: none yet (printf %%s \"$VALUE\" | refci secrets set %s NAME)\n", c.env)
			return nil
		}
		width := 0
		for _, n := range names {
			width = max(width, len(n))
		}
		fmt.Fprintf(w, "values:\n")
		for _, n := range names {
			v := changes[n]
			fmt.Fprintf(w, "  %-*s  set by %s <%s> at %s\n", width, n, v.Author.Name, v.Author.Email, v.Author.When.UTC().Format("2006-01-02 15:04:05 UTC"))
		}
		return nil
	}}, {name: "secrets history", usage: "ENV", nPos: 1, load: true, run: func(c *secretsCmd, _ []string) error {
		return c.store.History(c.ed.Base, func(v envstore.Version) error {
			fmt.Fprintf(e.stdout, "%.12s  %s  %s <%s>  %s\n", v.Commit, v.Author.When.UTC().Format("2006-01-02 15:04:05 UTC"), v.Author.Name, v.Author.Email, v.Subject)
			return nil
		})
	}}, recipientsSub("add"), recipientsSub("remove"), {name: "secrets policy", usage: "ENV [--request PATTERN]... [--export NAME]... [--allow-untrusted]", nPos: 1, flags: func(fs *flag.FlagSet) {
		reqs, exports, untrusted = policyFlags(fs)
	}, load: true, admin: true, run: func(c *secretsCmd, _ []string) error {
		p, err := envstore.NewPolicy(*reqs, *exports, *untrusted)
		if err != nil {
			return err
		}
		ch, err := c.ed.SetPolicy(p)
		if err != nil {
			return err
		}
		c.committed(ch)
		c.pushHint(ch)
		return nil
	}}}
}

// recipientsSub is refci secrets recipients add or remove (op).
func recipientsSub(op string) secretsSub {
	return secretsSub{name: "secrets recipients " + op, usage: "ENV FILE|FINGERPRINT", nPos: 2, load: true, admin: true, run: func(c *secretsCmd, pos []string) error {
		change := c.ed.AddRecipients
		if op == "remove" {
			change = c.ed.RemoveRecipient
		}
		ch, err := change(pos[1])
		if err != nil {
			return err
		}
		c.committed(ch)
		w := c.e.stdout
		printKeys(w, fmt.Sprintf("re-encrypted %d values to %d recipients:", len(ch.Env.Values), len(ch.Env.Recipients.Keys())), ch.Env.Recipients)
		if op == "remove" {
			fmt.Fprintf(w, "note: the removed key can still read the versions it was a recipient of; rotate each value (refci secrets set) to make its copy useless\n")
		}
		c.pushHint(ch)
		return nil
	}}
}

// secretsOpener is the worker.SecretsFunc of refci worker, serve and run:
// environments verified with admins and opened with key; remotes is nil
// for a local run.
func secretsOpener(admins secrets.Keyring, key secrets.Factotum, remotes func(url string) *gitproto.Remote) worker.SecretsFunc {
	return worker.EnvSecrets(&envstore.Opener{Admins: admins, Key: key, Remotes: remotes})
}
