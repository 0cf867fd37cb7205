package envstore

// An admin's change from end to end: load the version an environment is
// at, check the admin's key, apply one of Env's rules, commit the next
// version. What refci secrets init, set, recipients and policy do,
// without the command line.

import (
	"errors"
	"fmt"
	"maps"
	"strings"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
)

// Change is a version of an environment that an admin's change wrote.
type Change struct {
	Ref     string        // the environment's ref; pushing it is git's (git push origin Ref)
	Commit  gitproto.Hash // the version written
	Subject string        // what changed, as its commit message says ("set TOKEN")
	Signer  string        // the fingerprint of the admin key that signed it
	Env     *Env          // the content of the version written
}

// Edit is one admin's change to one environment: Store.Edit loads the
// version the environment is at, Authorize checks the admin's key, and
// each change method applies one of Env's rules to Env and commits the
// result, signed by the admin, as the next version; an Edit takes any
// number of changes, each its own commit. A change that fails (refused,
// or its commit failed) leaves Env and Base as they were; one called
// before Authorize returns an error. Not safe for concurrent use.
type Edit struct {
	Env   *Env              // the version loaded; the change methods change it in place
	Base  gitproto.Hash     // its commit: a commit moves the ref only from here
	Admin *secrets.Identity // the key that changes and signs; nil until Authorize

	store *Store
}

// Edit loads the version environment env is at, for a change. A missing
// environment or an invalid name is an ErrUsage error that says what to
// do.
func (s *Store) Edit(env string) (*Edit, error) {
	t, tip, err := s.load(env)
	if err != nil {
		return nil, err
	}
	return &Edit{Env: t, Base: tip, store: s}, nil
}

// Authorize checks that admin's key may change the environment (it is
// in admins.asc, or the environment names no admins; else an ErrUsage
// error naming the admins) and makes it the key that changes and signs.
func (ed *Edit) Authorize(admin *secrets.Identity) error {
	if err := ed.Env.checkAdmin(admin.Fingerprint()); err != nil {
		return err
	}
	ed.Admin = admin
	return nil
}

// errNoAdmin is a change method's error before Authorize: a mistake of
// the caller's, not the user's.
var errNoAdmin = errors.New("envstore: a change before Edit.Authorize")

// commit writes Env, signed by the admin, as the version after Base
// (compare-and-swap) and makes it the new Base.
func (ed *Edit) commit(subject string) (Change, error) {
	h, err := ed.store.Commit(ed.Env.Name, ed.Base, ed.Env, ed.Admin, subject)
	if err != nil {
		return Change{}, err
	}
	ed.Base = h
	// The Change keeps the version written: a copy, since later changes
	// of the Edit set Values in place.
	written := *ed.Env
	written.Values = maps.Clone(ed.Env.Values)
	return Change{Ref: queue.SecretsRef(ed.Env.Name), Commit: h, Subject: subject, Signer: ed.Admin.Fingerprint(), Env: &written}, nil
}

// apply runs one of Env's rules and commits what it changed; when
// either fails, it puts Env back as it was (the rules replace Env's
// keyrings; they set Values in place, which is why it keeps a copy).
func (ed *Edit) apply(rule func() (subject string, err error)) (Change, error) {
	if ed.Admin == nil {
		return Change{}, errNoAdmin
	}
	before := *ed.Env
	before.Values = maps.Clone(ed.Env.Values)
	subject, err := rule()
	var ch Change
	if err == nil {
		ch, err = ed.commit(subject)
	}
	if err != nil {
		*ed.Env = before
	}
	return ch, err
}

// Set seals value to the recipients as value name, signed by the
// admin, and commits the change. An invalid name or value (empty, too
// long) is an ErrUsage error.
func (ed *Edit) Set(name string, value []byte) (Change, error) {
	return ed.apply(func() (string, error) { return ed.Env.set(ed.Admin, name, value) })
}

// SetSealed stores sealed, a value sealed elsewhere (gpg --encrypt
// --sign), as value name once it passes what workers check (an admin
// signed it, the admin's key decrypts it), commits the change, and
// returns the value, which the caller clears when done. A message that
// does not pass, or an invalid name or value, is an ErrUsage error.
func (ed *Edit) SetSealed(name string, sealed []byte) (value []byte, ch Change, err error) {
	ch, err = ed.apply(func() (subject string, err error) {
		value, subject, err = ed.Env.setSealed(ed.Admin, name, sealed)
		return subject, err
	})
	return value, ch, err
}

// AddRecipients adds the public keys in file to the recipients,
// re-encrypts every value to them all, and commits the change. An
// unreadable file, a key without an encryption subkey, keys that are all
// recipients already, and an admin key that cannot decrypt a value (a
// *NotRecipientError) are ErrUsage errors.
func (ed *Edit) AddRecipients(file string) (Change, error) {
	return ed.apply(func() (string, error) {
		k, err := readKeys("--recipient", file)
		if err != nil {
			return "", err
		}
		return ed.Env.addRecipients(ed.Admin, file, k)
	})
}

// RemoveRecipient removes the recipient key, a fingerprint or a file
// holding one public key, re-encrypts every value to the others, and
// commits the change. A key that is not a recipient, the last recipient,
// an unreadable file, and an admin key that cannot decrypt a value are
// ErrUsage errors. The removed key can still read the versions it was a
// recipient of.
func (ed *Edit) RemoveRecipient(key string) (Change, error) {
	return ed.apply(func() (string, error) { return ed.Env.removeRecipient(ed.Admin, key) })
}

// SetPolicy replaces the policy with p (see NewPolicy) and commits the
// change.
func (ed *Edit) SetPolicy(p secrets.Policy) (Change, error) {
	return ed.apply(func() (string, error) { return ed.Env.setPolicy(p), nil })
}

// NewSpec is what a new environment starts with.
type NewSpec struct {
	// AdminFiles are files of armored public keys of the admins, who may
	// change the environment and are recipients too; none means the
	// admin who creates it alone.
	AdminFiles []string
	// RecipientFiles are files of armored public keys of the workers
	// that may decrypt; at least one.
	RecipientFiles []string
	// Policy says which requests may use it (see NewPolicy); the zero
	// policy lets trusted requests of any name.
	Policy secrets.Policy
}

// Create writes the first version of environment env, with no values,
// signed by admin, who must be among spec's admins. An environment that
// exists already, no recipients, an unreadable key file, a recipient
// key that cannot encrypt and an admin outside the admins are ErrUsage
// errors that say what to do.
func (s *Store) Create(env string, admin *secrets.Identity, spec NewSpec) (Change, error) {
	if err := s.CheckNew(env); err != nil {
		return Change{}, err
	}
	if len(spec.RecipientFiles) == 0 {
		return Change{}, usagef("%s: no recipients; give the public key of each worker that may decrypt (on the worker: refci keys export > worker.asc)", env)
	}
	var admins secrets.Keyring
	if len(spec.AdminFiles) > 0 {
		var err error
		if admins, err = readKeys("--admin", spec.AdminFiles...); err != nil {
			return Change{}, err
		}
	}
	t, err := newEnv(env, admin, admins)
	if err != nil {
		return Change{}, err
	}
	recipients, err := readKeys("--recipient", spec.RecipientFiles...)
	if err != nil {
		return Change{}, err
	}
	if err := t.setRecipients(recipients); err != nil {
		return Change{}, err
	}
	t.Policy = spec.Policy
	h, subject, err := s.writeFirst(t, admin)
	if err != nil {
		return Change{}, err
	}
	return Change{Ref: queue.SecretsRef(env), Commit: h, Subject: subject, Signer: admin.Fingerprint(), Env: t}, nil
}

// readKeys reads the armored public keys of files; an error is an
// ErrUsage error that names what the keys are for (a flag, say).
func readKeys(what string, files ...string) (secrets.Keyring, error) {
	k, err := secrets.ReadKeyringFiles(files...)
	if err != nil {
		return k, usagef("%s: %w", what, err)
	}
	return k, nil
}

// Sealed returns value name as stored, sealed. A name t does not have is
// an ErrUsage error that lists the names it has.
func (t *Env) Sealed(name string) ([]byte, error) {
	sealed, ok := t.Values[name]
	if !ok {
		return nil, usagef("%s has no secret %s; it has: %s", t.Name, name, strings.Join(t.Names(), ", "))
	}
	return sealed, nil
}

// Value decrypts value name with id, a recipient, believing only a seal
// by an admin of t. A name t does not have is an ErrUsage error (see
// Sealed); so is a key that is no recipient, which wraps
// secrets.ErrNotRecipient too.
func (t *Env) Value(id *secrets.Identity, name string) ([]byte, error) {
	sealed, err := t.Sealed(name)
	if err != nil {
		return nil, err
	}
	v, _, err := id.Open(sealed, t.Admins)
	if errors.Is(err, secrets.ErrNotRecipient) {
		return nil, usageError{fmt.Errorf("%s: %w; use --key with a recipient's key, or ask an admin to add yours (refci secrets recipients add)", name, err)}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return v, nil
}
