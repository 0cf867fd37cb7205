package envstore

// The rules of an admin's changes (refci secrets init, set, recipients,
// policy): who may change an environment, who its values are sealed to,
// and what each change is called in its commit.

import (
	"errors"
	"fmt"
	"strings"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
)

// ErrUsage is what errors.Is finds in an error that is the user's to fix
// (a change the rules refuse, a missing environment), as opposed to an
// outage (git, the disk). Its text never shows: the errors that wrap it
// say what is wrong and what to do.
var ErrUsage = errors.New("refused by the environment's rules")

// usageError is a message that Is ErrUsage, and whatever it wraps.
type usageError struct{ error }

func (u usageError) Is(target error) bool { return target == ErrUsage }
func (u usageError) Unwrap() error        { return errors.Unwrap(u.error) }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// load reads the version environment env is at. A missing environment
// is an ErrUsage error that says how to create or fetch it.
func (s *Store) load(env string) (*Env, gitproto.Hash, error) {
	tip, err := s.Tip(env)
	if err != nil {
		return nil, tip, usageError{err}
	}
	if tip == gitproto.ZeroHash {
		ref := queue.SecretsRef(env)
		return nil, tip, usagef("there is no %s in this repository; create it with 'refci secrets init %s --recipient WORKER.asc', or fetch it: git fetch origin %s:%s", ref, env, ref, ref)
	}
	t, err := s.Read(tip)
	if err != nil {
		return nil, tip, err
	}
	t.Name = env
	return t, tip, nil
}

// CheckNew returns an ErrUsage error when environment env already
// exists.
func (s *Store) CheckNew(env string) error {
	tip, err := s.Tip(env)
	if err != nil {
		return usageError{err}
	}
	if tip != gitproto.ZeroHash {
		return usagef("%s already exists (commit %.12s); change it with 'refci secrets set|recipients|policy'", queue.SecretsRef(env), tip)
	}
	return nil
}

// newEnv is the first version of environment name, administered by
// admins, or by signer alone when admins is empty; signer, who writes
// it, must be among them (else an ErrUsage error). The admins are its
// only recipients until setRecipients; it has no values and the zero
// policy (trusted requests of any name).
func newEnv(name string, signer *secrets.Identity, admins secrets.Keyring) (*Env, error) {
	if admins.Len() == 0 {
		admins.Add(signer)
	} else if !admins.Has(signer.Fingerprint()) {
		return nil, usagef("your key %s is not among the --admin keys, so you could not sign this environment; add your own public key ('refci keys export > me.asc', then --admin me.asc) or sign with an admin's key (--key FILE)", signer.Fingerprint())
	}
	raw, err := admins.Armored()
	if err != nil {
		return nil, err
	}
	return &Env{Name: name, Recipients: admins, Admins: admins, AdminsRaw: raw, Values: map[string][]byte{}}, nil
}

// writeFirst writes t, a newEnv, as the first version of its environment,
// signed by signer, and returns the commit and the subject of the change.
// An environment that exists already is an ErrUsage error.
func (s *Store) writeFirst(t *Env, signer secrets.Factotum) (commit gitproto.Hash, subject string, err error) {
	if err := s.CheckNew(t.Name); err != nil {
		return gitproto.ZeroHash, "", err
	}
	subject = "init " + t.Name
	commit, err = s.Commit(t.Name, gitproto.ZeroHash, t, signer, subject)
	return commit, subject, err
}

// checkRecipients refuses (ErrUsage) a keyring with a key that has no
// encryption subkey, to which no value could be sealed.
func checkRecipients(k secrets.Keyring) error {
	for _, ki := range k.Keys() {
		if !ki.CanEncrypt {
			return usagef("--recipient: key %s (%s) has no encryption subkey; export a refci key with 'refci keys export'", ki.Fingerprint, ki.UserID)
		}
	}
	return nil
}

// setRecipients makes k and t's admins (who must be able to re-encrypt)
// t's recipients; a key of k without an encryption subkey is an ErrUsage
// error. It does not reseal t's values: it is for a newEnv.
func (t *Env) setRecipients(k secrets.Keyring) error {
	if err := checkRecipients(k); err != nil {
		return err
	}
	t.Recipients = k.Union(t.Admins)
	return nil
}

// checkAdmin returns an ErrUsage error unless the key fingerprint fpr
// may change t (see isAdmin).
func (t *Env) checkAdmin(fpr string) error {
	if !t.isAdmin(fpr) {
		return usagef("your key %s is not an admin of %s (its admins.asc lists %s); workers would refuse your change. Use an admin's key with --key FILE", fpr, t.Name, fingerprints(t.Admins))
	}
	return nil
}

// fingerprints lists k's fingerprints, comma-separated.
func fingerprints(k secrets.Keyring) string {
	var out []string
	for _, ki := range k.Keys() {
		out = append(out, ki.Fingerprint)
	}
	return strings.Join(out, ", ")
}

// set seals value to t's recipients as value name, signed by id, and
// returns the subject of the change. An invalid name or value is an
// ErrUsage error.
func (t *Env) set(id *secrets.Identity, name string, value []byte) (subject string, err error) {
	if err := checkValue(name, value); err != nil {
		return "", err
	}
	sealed, err := id.Seal(value, t.Recipients)
	if err != nil {
		return "", err
	}
	return t.put(name, sealed), nil
}

// setSealed stores sealed, a value sealed elsewhere (gpg --encrypt
// --sign), as value name once it passes what workers will check (see
// openSealed), and returns the value and the subject of the change. A
// message that does not pass, or an invalid name or value, is an
// ErrUsage error.
func (t *Env) setSealed(id *secrets.Identity, name string, sealed []byte) (value []byte, subject string, err error) {
	if value, err = t.openSealed(id, sealed); err != nil {
		return nil, "", usagef("%s: the --sealed message cannot be used: %w; encrypt it to every key of recipients.asc and sign it with an admin key (gpg --encrypt --sign -r ... -u ADMIN)", name, err)
	}
	if err := checkValue(name, value); err != nil {
		return value, "", err
	}
	return value, t.put(name, sealed), nil
}

func checkValue(name string, value []byte) error {
	if err := secrets.ValidateName(name); err != nil {
		return usageError{err}
	}
	if err := secrets.ValidateValue(value); err != nil {
		return usagef("%s: %w", name, err)
	}
	return nil
}

// put stores sealed as value name and says so.
func (t *Env) put(name string, sealed []byte) (subject string) {
	verb := "set"
	if _, ok := t.Values[name]; ok {
		verb = "set a new version of"
	}
	t.Values[name] = sealed
	return verb + " " + name
}

// addRecipients adds the keys of k, read from file (which the errors
// name), to t's recipients, reseals every value with id (see reseal),
// and returns the subject of the change. A key without an encryption
// subkey, keys that are all recipients already, and an id that cannot
// decrypt a value are ErrUsage errors.
func (t *Env) addRecipients(id *secrets.Identity, file string, k secrets.Keyring) (subject string, err error) {
	if err := checkRecipients(k); err != nil {
		return "", err
	}
	before := len(t.Recipients.Keys())
	t.Recipients = t.Recipients.Union(k)
	if len(t.Recipients.Keys()) == before {
		return "", usagef("%s: every key in it is already a recipient of %s", file, t.Name)
	}
	if err := t.reseal(id); err != nil {
		return "", err
	}
	return "add recipient " + fingerprints(k), nil
}

// removeRecipient removes the recipient key, a fingerprint or a file
// holding one public key, from t, reseals every value with id (see
// reseal), and returns the subject of the change. A key that is not a
// recipient, the last recipient, an unreadable key, and an id that cannot
// decrypt a value are ErrUsage errors. The removed key can still read the
// versions it was a recipient of.
func (t *Env) removeRecipient(id *secrets.Identity, key string) (subject string, err error) {
	fpr := key
	if !secrets.IsFingerprint(fpr) {
		k, err := secrets.ReadKeyringFiles(fpr)
		if err != nil {
			return "", usagef("%s is neither a 40-digit fingerprint nor a readable key file: %w", fpr, err)
		}
		if len(k.Keys()) != 1 {
			return "", usagef("%s holds %d keys; remove one fingerprint at a time", fpr, len(k.Keys()))
		}
		fpr = k.Keys()[0].Fingerprint
	}
	var found bool
	t.Recipients, found = t.Recipients.Without(fpr)
	if !found {
		return "", usagef("%s is not a recipient of %s; see 'refci secrets list %s'", fpr, t.Name, t.Name)
	}
	if len(t.Recipients.Keys()) == 0 {
		return "", usagef("%s is the last recipient of %s; add another first", fpr, t.Name)
	}
	if err := t.reseal(id); err != nil {
		return "", err
	}
	return "remove recipient " + strings.ToUpper(fpr), nil
}

// setPolicy replaces t's policy with p and returns the subject of the
// change.
func (t *Env) setPolicy(p secrets.Policy) (subject string) {
	t.Policy = p
	return "policy: " + DescribePolicy(p)
}

// DescribePolicy says in words which requests p lets use an environment
// and what it exports.
func DescribePolicy(p secrets.Policy) string {
	s := "trusted requests only"
	if p.AllowUntrusted {
		s = "any request, trusted or not"
	}
	if len(p.Requests) > 0 {
		s += "; request names matching " + strings.Join(p.Requests, ", ")
	} else {
		s += "; any request name"
	}
	if len(p.Environment) > 0 {
		s += "; exported as variables: " + strings.Join(p.Environment, ", ")
	}
	return s
}
