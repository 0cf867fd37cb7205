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

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
	"refci.dev/refci/secrets/envstore"
	"refci.dev/refci/worker"
	"refci.dev/refci/worker/jobsock"
)

// secretsOpener is the worker.SecretsFunc of refci worker, serve and run:
// envstore opens the environment; remotes is nil for a local run.
func secretsOpener(admins secrets.Keyring, key secrets.Factotum, remotes func(url string) *gitproto.Remote) worker.SecretsFunc {
	o := &envstore.Opener{Admins: admins, Key: key, Remotes: remotes}
	return func(ctx context.Context, q worker.SecretsQuery) (worker.SecretSource, error) {
		src, err := o.Open(ctx, envstore.Query{Remote: q.Remote, Repo: q.Repo, Env: q.Env, Request: q.Request, Trusted: q.Trusted, TrustReason: q.TrustReason})
		if err != nil {
			return nil, err
		}
		return workerSecrets{src}, nil
	}
}

// workerSecrets is an envstore.Source as the worker wants it.
type workerSecrets struct{ src *envstore.Source }

func (s workerSecrets) Info() worker.SecretsInfo {
	return worker.SecretsInfo{Commit: s.src.Commit().String(), Exported: s.src.Exported()}
}

func (s workerSecrets) Secret(name string) ([]byte, error) {
	v, err := s.src.Secret(name)
	if errors.Is(err, envstore.ErrNoSecret) {
		err = noSecret{err}
	}
	return v, err
}

// noSecret is envstore's missing-name error, which the worker knows as
// worker.ErrSecretNotFound.
type noSecret struct{ error }

func (n noSecret) Unwrap() error        { return n.error }
func (n noSecret) Is(target error) bool { return target == worker.ErrSecretNotFound }

func cmdSecret(ctx context.Context, e *env, args []string) int {
	return jobsock.RunSecretCommand(ctx, args, e.getenv, e.stdout, e.stderr)
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
	sub, rest := args[0], args[1:]
	switch sub {
	case "-h", "--help", "-help", "help":
		c, _ := lookup("secrets")
		c.help(e.stdout, nil)
		return exitOK
	case "init":
		return secretsInit(e, rest)
	case "set":
		return secretsSet(e, rest)
	case "get":
		return secretsGet(e, rest)
	case "list":
		return secretsList(e, rest)
	case "history":
		return secretsHistory(e, rest)
	case "recipients":
		if len(rest) == 0 || (rest[0] != "add" && rest[0] != "remove") {
			e.errorf("secrets recipients: want 'add' or 'remove' (see 'refci secrets -h')")
			return exitUsage
		}
		return secretsRecipients(e, rest[0], rest[1:])
	case "policy":
		return secretsPolicy(e, rest)
	}
	e.errorf("secrets: unknown command %q (see 'refci secrets -h')", sub)
	return exitUsage
}

// secretsCmd is what every subcommand shares.
type secretsCmd struct {
	e       *env
	store   *envstore.Store
	env     string
	ref     string
	tip     gitproto.Hash // the version loaded; zero before load
	keyFile string
}

// openEnv opens the repository.
func openEnv(e *env, repoDir, envName, keyFile string) (*secretsCmd, error) {
	if err := queue.ValidateEnvName(envName); err != nil {
		return nil, usageErr{err}
	}
	repo, err := openRepo(repoDir)
	if err != nil {
		return nil, err
	}
	return &secretsCmd{e: e, store: &envstore.Store{Repo: repo}, env: envName, ref: queue.SecretsRef(envName), keyFile: keyFile}, nil
}

// usageErr marks an error as the user's to fix (exit 2).
type usageErr struct{ err error }

func (u usageErr) Error() string { return u.err.Error() }
func (u usageErr) Unwrap() error { return u.err }

func (c *secretsCmd) fail(err error) int {
	c.e.errorf("%v", err)
	var u usageErr
	if errors.As(err, &u) || errors.Is(err, envstore.ErrUsage) {
		return exitUsage
	}
	return exitFor(err)
}

// load reads the environment, which must exist.
func (c *secretsCmd) load() (t *envstore.Env, err error) {
	t, c.tip, err = c.store.Load(c.env)
	return t, err
}

// admin loads the user's key and checks that it administers t.
func (c *secretsCmd) admin(t *envstore.Env) (*secrets.Identity, error) {
	id, err := c.e.identity(c.keyFile)
	if err != nil {
		return nil, err
	}
	return id, t.CheckAdmin(id.Fingerprint())
}

// commit writes t as the next version and moves the ref (compare-and-swap
// on the version read).
func (c *secretsCmd) commit(t *envstore.Env, id secrets.Factotum, subject string) (gitproto.Hash, error) {
	h, err := c.store.Commit(c.env, c.tip, t, id, subject)
	if err != nil {
		return h, err
	}
	c.committed(h, id, subject)
	return h, nil
}

// committed says that commit h, signed by id, made the change subject.
func (c *secretsCmd) committed(h gitproto.Hash, id secrets.Factotum, subject string) {
	fmt.Fprintf(c.e.stdout, "%s: %s (commit %.12s, signed by %s)\n", c.ref, subject, h, id.Fingerprint())
}

func (c *secretsCmd) pushHint() {
	fmt.Fprintf(c.e.stdout, "next: git push origin %s\n", c.ref)
}

func readKeyFiles(paths []string, what string) (secrets.Keyring, error) {
	k, err := secrets.ReadKeyringFiles(paths...)
	if err != nil {
		return k, usageErr{fmt.Errorf("%s: %w", what, err)}
	}
	return k, nil
}

func policyFlags(fs *flag.FlagSet) (*multiFlag, *multiFlag, *bool) {
	var reqs, exports multiFlag
	fs.Var(&reqs, "request", "only requests whose name matches this pattern may use the environment (repeatable; e.g. main, release/*)")
	fs.Var(&exports, "export", "also put value NAME in the pipeline's environment (repeatable; otherwise only `refci secret NAME` reads it)")
	untrusted := fs.Bool("allow-untrusted", false, "let untrusted requests use the environment too (dangerous: anyone who can push a request reads every value)")
	return &reqs, &exports, untrusted
}

func secretsInit(e *env, args []string) int {
	var adminFiles, recFiles multiFlag
	var reqs, exports *multiFlag
	var untrusted *bool
	c, _, code, ok := envArgs(e, "secrets init", "ENV [--admin FILE]... --recipient FILE... [flags]", args, 1, func(fs *flag.FlagSet) {
		fs.Var(&adminFiles, "admin", "public key of an admin (repeatable; default: your own key)")
		fs.Var(&recFiles, "recipient", "public key of a worker that may decrypt (repeatable)")
		reqs, exports, untrusted = policyFlags(fs)
	})
	if !ok {
		return code
	}
	if err := c.store.CheckNew(c.env); err != nil {
		return c.fail(err)
	}
	if len(recFiles) == 0 {
		return c.fail(usageErr{errors.New("secrets init: no --recipient; give the public key of each worker that may decrypt (on the worker: refci keys export > worker.asc)")})
	}
	id, err := c.e.identity(c.keyFile)
	if err != nil {
		return c.fail(err)
	}
	var admins secrets.Keyring
	if len(adminFiles) > 0 {
		if admins, err = readKeyFiles(adminFiles, "--admin"); err != nil {
			return c.fail(err)
		}
	}
	t, err := envstore.NewEnv(c.env, id, admins)
	if err != nil {
		return c.fail(err)
	}
	recipients, err := readKeyFiles(recFiles, "--recipient")
	if err != nil {
		return c.fail(err)
	}
	if err := t.SetRecipients(recipients); err != nil {
		return c.fail(err)
	}
	if t.Policy, err = envstore.NewPolicy(*reqs, *exports, *untrusted); err != nil {
		return c.fail(err)
	}
	h, err := c.store.Init(t, id)
	if err != nil {
		return c.fail(err)
	}
	c.committed(h, id, "init "+c.env)
	fmt.Fprintf(e.stdout, "admins:\n")
	printKeys(e.stdout, t.Admins)
	fmt.Fprintf(e.stdout, "recipients (admins are recipients too, so they can re-encrypt):\n")
	printKeys(e.stdout, t.Recipients)
	fmt.Fprintf(e.stdout, "policy: %s\n", envstore.DescribePolicy(t.Policy))
	fmt.Fprintf(e.stdout, "next: printf %%s \"$VALUE\" | refci secrets set %s NAME\n", c.env)
	return exitOK
}

func printKeys(w io.Writer, k secrets.Keyring) {
	for _, ki := range k.Keys() {
		fmt.Fprintf(w, "  %s  %s\n", ki.Fingerprint, ki.UserID)
	}
}

// envArgs parses the arguments of a subcommand whose first positional
// argument is the environment: --repo, --key, the flags more registers
// (nil: none), and exactly nPos positional arguments; then it opens the
// environment. With ok false, code is the exit code (the error is
// printed).
func envArgs(e *env, name, usage string, args []string, nPos int, more func(*flag.FlagSet)) (c *secretsCmd, pos []string, code int, ok bool) {
	fs := newCommandFlags(e, command{name: name, synopsis: usage})
	repoDir := fs.String("repo", ".", "the repository")
	keyFile := fs.String("key", "", "use this private key instead of $REFCI_HOME/key.asc")
	if more != nil {
		more(fs)
	}
	pos, code, ok = parse(e, fs, args, nPos)
	if !ok {
		return nil, nil, code, false
	}
	if len(pos) != nPos {
		want, _, _ := strings.Cut(usage, " [")
		want, _, _ = strings.Cut(want, " <")
		e.errorf("%s: want %s (see 'refci %s -h')", name, want, name)
		return nil, nil, exitUsage, false
	}
	c, err := openEnv(e, *repoDir, pos[0], *keyFile)
	if err != nil {
		return nil, nil, (&secretsCmd{e: e}).fail(err), false
	}
	return c, pos, 0, true
}

// loadEnvArgs is envArgs, for a subcommand without flags of its own, that
// also loads the environment's tree.
func loadEnvArgs(e *env, name, usage string, args []string, nPos int) (c *secretsCmd, t *envstore.Env, pos []string, code int, ok bool) {
	c, pos, code, ok = envArgs(e, name, usage, args, nPos, nil)
	if !ok {
		return nil, nil, nil, code, false
	}
	t, err := c.load()
	if err != nil {
		return nil, nil, nil, c.fail(err), false
	}
	return c, t, pos, 0, true
}

func secretsSet(e *env, args []string) int {
	var sealedIn *bool
	c, pos, code, ok := envArgs(e, "secrets set", "ENV NAME [--sealed] < VALUE", args, 2, func(fs *flag.FlagSet) {
		sealedIn = fs.Bool("sealed", false, "stdin is an OpenPGP message already encrypted to the recipients and signed by an admin (e.g. by gpg); stored as is after checking it")
	})
	if !ok {
		return code
	}
	name := pos[1]
	if err := secrets.ValidateName(name); err != nil {
		return c.fail(usageErr{err})
	}
	if isTerminal(e.stdin) {
		return c.fail(usageErr{fmt.Errorf("secrets set reads the value from stdin, which is a terminal; pipe it in so it is never echoed or kept in your shell history: printf %%s \"$VALUE\" | refci secrets set %s %s", c.env, name)})
	}
	value, err := io.ReadAll(io.LimitReader(e.stdin, secrets.MaxValueLen+1))
	if err != nil {
		return c.fail(fmt.Errorf("read the value from stdin: %w", err))
	}
	t, err := c.load()
	if err != nil {
		return c.fail(err)
	}
	id, err := c.admin(t)
	if err != nil {
		return c.fail(err)
	}
	var subject string
	if *sealedIn {
		value, subject, err = t.SetSealed(id, name, value)
	} else {
		subject, err = t.Set(id, name, value)
	}
	if err != nil {
		return c.fail(err)
	}
	if _, err := c.commit(t, id, subject); err != nil {
		return c.fail(err)
	}
	note := ""
	if bytes.HasSuffix(value, []byte("\n")) {
		note = ", ending in a newline (use printf %s rather than echo if that is not meant)"
	}
	if *sealedIn {
		fmt.Fprintf(e.stdout, "%s: %d bytes%s, stored as sealed by its writer\n", name, len(value), note)
	} else {
		fmt.Fprintf(e.stdout, "%s: %d bytes%s, encrypted to %d recipients\n", name, len(value), note, len(t.Recipients.Keys()))
	}
	clear(value)
	c.pushHint()
	return exitOK
}

func secretsGet(e *env, args []string) int {
	c, t, pos, code, ok := loadEnvArgs(e, "secrets get", "ENV NAME", args, 2)
	if !ok {
		return code
	}
	sealed, ok := t.Values[pos[1]]
	if !ok {
		return c.fail(usageErr{fmt.Errorf("%s has no secret %s; it has: %s", c.env, pos[1], strings.Join(t.Names(), ", "))})
	}
	id, err := c.e.identity(c.keyFile)
	if err != nil {
		return c.fail(err)
	}
	v, _, err := id.Open(sealed, t.Admins)
	if err != nil {
		return c.fail(fmt.Errorf("%s: %w", pos[1], err))
	}
	e.stdout.Write(v)
	return exitOK
}

func secretsList(e *env, args []string) int {
	c, t, _, code, ok := loadEnvArgs(e, "secrets list", "ENV", args, 1)
	if !ok {
		return code
	}
	changes, err := c.store.LastChanges(c.tip)
	if err != nil {
		return c.fail(err)
	}
	w := e.stdout
	fmt.Fprintf(w, "environment %s (%s at %.12s)\n", c.env, c.ref, c.tip)
	fmt.Fprintf(w, "policy: %s\n", envstore.DescribePolicy(t.Policy))
	fmt.Fprintf(w, "admins:\n")
	printKeys(w, t.Admins)
	fmt.Fprintf(w, "recipients:\n")
	printKeys(w, t.Recipients)
	names := t.Names()
	if len(names) == 0 {
		fmt.Fprintf(w, "values: none yet (printf %%s \"$VALUE\" | refci secrets set %s NAME)\n", c.env)
		return exitOK
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
	return exitOK
}

func secretsHistory(e *env, args []string) int {
	c, _, _, code, ok := loadEnvArgs(e, "secrets history", "ENV", args, 1)
	if !ok {
		return code
	}
	err := c.store.History(c.tip, func(v envstore.Version) error {
		fmt.Fprintf(e.stdout, "%.12s  %s  %s <%s>  %s\n", v.Commit, v.Author.When.UTC().Format("2006-01-02 15:04:05 UTC"), v.Author.Name, v.Author.Email, v.Subject)
		return nil
	})
	if err != nil {
		return c.fail(err)
	}
	return exitOK
}

func secretsRecipients(e *env, op string, args []string) int {
	c, t, pos, code, ok := loadEnvArgs(e, "secrets recipients "+op, "ENV FILE|FINGERPRINT", args, 2)
	if !ok {
		return code
	}
	id, err := c.admin(t)
	if err != nil {
		return c.fail(err)
	}
	var subject string
	if op == "add" {
		k, err := readKeyFiles([]string{pos[1]}, "--recipient")
		if err != nil {
			return c.fail(err)
		}
		subject, err = t.AddRecipients(id, pos[1], k)
	} else {
		subject, err = t.RemoveRecipient(id, pos[1])
	}
	if err != nil {
		return c.fail(err)
	}
	if _, err := c.commit(t, id, subject); err != nil {
		return c.fail(err)
	}
	fmt.Fprintf(e.stdout, "re-encrypted %d values to %d recipients:\n", len(t.Values), len(t.Recipients.Keys()))
	printKeys(e.stdout, t.Recipients)
	if op == "remove" {
		fmt.Fprintf(e.stdout, "note: the removed key can still read the versions it was a recipient of; rotate each value (refci secrets set) to make its copy useless\n")
	}
	c.pushHint()
	return exitOK
}

func secretsPolicy(e *env, args []string) int {
	var reqs, exports *multiFlag
	var untrusted *bool
	c, _, code, ok := envArgs(e, "secrets policy", "ENV [--request PATTERN]... [--export NAME]... [--allow-untrusted]", args, 1, func(fs *flag.FlagSet) {
		reqs, exports, untrusted = policyFlags(fs)
	})
	if !ok {
		return code
	}
	t, err := c.load()
	if err != nil {
		return c.fail(err)
	}
	id, err := c.admin(t)
	if err != nil {
		return c.fail(err)
	}
	p, err := envstore.NewPolicy(*reqs, *exports, *untrusted)
	if err != nil {
		return c.fail(err)
	}
	if _, err := c.commit(t, id, t.SetPolicy(p)); err != nil {
		return c.fail(err)
	}
	c.pushHint()
	return exitOK
}
