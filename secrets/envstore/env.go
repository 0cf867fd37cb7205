// Package envstore keeps secrets environments in git. An environment
// named ENV is a straight line of commits at refs/ci/secrets/ENV (see
// queue.SecretsRef), each signed by an admin, whose tree holds:
//
//	recipients.asc   the public keys values are sealed to (workers, admins)
//	admins.asc       who may change it (informational: workers trust only
//	                 the admin keys they are configured with)
//	policy.toml      which requests may use it, what is exported
//	values/NAME.asc  one sealed value per name
//
// Admins read and change environments through a Store: Create writes
// the first version, Edit loads the one an environment is at, and the
// Edit's change methods (Set, SetSealed, AddRecipients, RemoveRecipient,
// SetPolicy) apply the rules of Env's changes and commit the next
// version, signed, with compare-and-swap. Refusals are ErrUsage errors
// that say what to do. Workers open the version a run asked for through
// an Opener, which believes a commit only when one of the worker's admin
// keys signed it and it descends from the version verified before. The
// OpenPGP side (sealing, signatures, policies) is package secrets, which
// knows nothing about git.
package envstore

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
)

// Files of an environment's tree.
const (
	RecipientsFile = "recipients.asc"
	AdminsFile     = "admins.asc"
	PolicyFile     = "policy.toml"
	ValuesDir      = "values"
)

// Env is the content of one version of an environment. The zero value
// is not usable; Read one, load one with Store.Edit, or fill Values
// with a non-nil map. Not safe for concurrent use.
type Env struct {
	Name       string // the environment's name; "" when read with Read
	Recipients secrets.Keyring
	Admins     secrets.Keyring // who administers it, as admins.asc says
	AdminsRaw  []byte          // admins.asc as stored; nil: none
	Policy     secrets.Policy
	Values     map[string][]byte // name → armored sealed message
}

// Read reads the environment stored in commit. A missing recipients.asc
// wraps gitproto.ErrNotFound.
func Read(repo *gitproto.Repo, commit gitproto.Hash) (*Env, error) {
	tree, err := repo.TreeOf(commit)
	if err != nil {
		return nil, err
	}
	t := &Env{Values: map[string][]byte{}}
	rb, err := tree.ReadFile(RecipientsFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", RecipientsFile, err)
	}
	if t.Recipients, err = secrets.ReadKeyring(strings.NewReader(string(rb))); err != nil {
		return nil, fmt.Errorf("%s: %w", RecipientsFile, err)
	}
	if ab, err := tree.ReadFile(AdminsFile); err == nil {
		t.AdminsRaw = ab
		t.Admins, _ = secrets.ReadKeyring(strings.NewReader(string(ab)))
	}
	if pb, err := tree.ReadFile(PolicyFile); err == nil {
		if t.Policy, err = secrets.ParsePolicy(pb); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, gitproto.ErrNotFound) {
		return nil, fmt.Errorf("%s: %w", PolicyFile, err)
	}
	entries, err := tree.List(ValuesDir)
	if errors.Is(err, gitproto.ErrNotFound) {
		return t, nil
	}
	if err != nil {
		return nil, err
	}
	for _, v := range entries {
		name, ok := strings.CutSuffix(v, ".asc")
		if !ok || secrets.ValidateName(name) != nil {
			continue
		}
		b, err := tree.ReadFile(ValuesDir + "/" + v)
		if err != nil {
			return nil, err
		}
		t.Values[name] = b
	}
	return t, nil
}

// Names lists the value names, sorted.
func (t *Env) Names() []string {
	var out []string
	for n := range t.Values {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// write stores t as a new commit on parent (zero: none) signed by signer.
func (t *Env) write(repo *gitproto.Repo, parent gitproto.Hash, signer secrets.Factotum, message string, when time.Time) (gitproto.Hash, error) {
	rec, err := t.Recipients.Armored()
	if err != nil {
		return gitproto.ZeroHash, err
	}
	files := map[string][]byte{RecipientsFile: rec, PolicyFile: t.Policy.Encode()}
	if len(t.AdminsRaw) > 0 {
		files[AdminsFile] = t.AdminsRaw
	}
	for n, v := range t.Values {
		files[ValuesDir+"/"+n+".asc"] = v
	}
	var entries []gitproto.TreeFile
	for p, data := range files {
		h, err := repo.WriteBlob(data)
		if err != nil {
			return gitproto.ZeroHash, err
		}
		entries = append(entries, gitproto.TreeFile{Path: p, Hash: h})
	}
	tree, err := repo.WriteTree(entries)
	if err != nil {
		return gitproto.ZeroHash, err
	}
	var parents []gitproto.Hash
	if parent != gitproto.ZeroHash {
		parents = []gitproto.Hash{parent}
	}
	name, email, _ := strings.Cut(signer.UserID(), " <")
	return repo.WriteCommit(gitproto.CommitSpec{
		Tree: tree, Parents: parents,
		Author:  gitproto.NewSignature(name, strings.TrimSuffix(email, ">"), when),
		Message: message,
	}, signer.SignDetached)
}

// Verify checks that commit of environment env is signed by a key of
// admins and is no merge, and returns the signer. Its errors say what to
// do.
func Verify(repo *gitproto.Repo, env string, commit gitproto.Hash, admins secrets.Keyring) (secrets.Signer, error) {
	c, err := repo.Commit(commit)
	if err != nil {
		return secrets.Signer{}, fmt.Errorf("environment %s: %w", env, err)
	}
	if len(c.Parents) > 1 {
		return secrets.Signer{}, fmt.Errorf("environment %s: commit %.12s is a merge; refci writes environments as a straight line of admin-signed commits", env, commit)
	}
	payload, sig, err := gitproto.SignedPayload(c)
	if err != nil {
		return secrets.Signer{}, err
	}
	who, err := admins.VerifyDetached(payload, sig)
	switch {
	case errors.Is(err, secrets.ErrNoSignature):
		return who, fmt.Errorf("environment %s refused: commit %.12s is not signed; only commits signed by an admin key are believed (refci secrets signs them)", env, commit)
	case errors.Is(err, secrets.ErrUnknownKey):
		return who, fmt.Errorf("environment %s refused: commit %.12s is signed by a key that is not an admin key of this worker (%v); if that key is a new admin, add it with --admin FILE", env, commit, err)
	case err != nil:
		return who, fmt.Errorf("environment %s refused: commit %.12s: %v", env, commit, err)
	}
	return who, nil
}

// Query is what a worker asks Opener.Open for: one run's environment.
type Query struct {
	Remote      string         // the remote's URL; "" for a local run
	Repo        *gitproto.Repo // the repository the run's objects are in
	Env         string         // the environment asked for
	Request     string         // the request name, matched against the policy
	Trusted     bool           // the verdict of the worker's trust policy
	TrustReason string         // why, quoted when the policy refuses
}

// Opener opens environments for a worker's runs. Its fields are set
// before the first Open and not changed after; Open is safe for
// concurrent use (fetches and seen-ref updates are serialised).
type Opener struct {
	Admins  secrets.Keyring                   // the only keys whose commits are believed
	Key     secrets.Factotum                  // the worker's key, a recipient
	Remotes func(url string) *gitproto.Remote // the worker's remotes by URL; nil for a local run
	mu      sync.Mutex
}

// Open verifies the environment q asks for and checks that q's request
// may use it. With a Remote, the environment's ref is fetched from it
// first. An error says what was refused and what to do, and never holds a
// value.
func (o *Opener) Open(ctx context.Context, q Query) (*Source, error) {
	if err := queue.ValidateEnvName(q.Env); err != nil {
		return nil, err
	}
	if o.Admins.Len() == 0 {
		return nil, errors.New("this worker trusts no admin key, so it believes no secrets environment; configure one with --admin FILE (or admins = [...] in the worker config)")
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	repo := q.Repo
	ref := queue.SecretsRef(q.Env)
	tip, err := repo.RefHash(ref)
	if q.Remote != "" && o.Remotes != nil {
		rem := o.Remotes(q.Remote)
		if rem == nil {
			return nil, fmt.Errorf("unknown remote %s", gitproto.RedactURL(q.Remote))
		}
		fetched := queue.FetchedSecretsRef(q.Env)
		if ferr := rem.Fetch(ctx, "+"+ref+":"+fetched); ferr != nil {
			var re *gitproto.RemoteError
			if errors.As(ferr, &re) && re.Kind == gitproto.KindNotFound {
				return nil, fmt.Errorf("the remote has no %s; an admin creates it with `refci secrets init %s` and pushes it", ref, q.Env)
			}
			return nil, fmt.Errorf("fetch %s: %v", ref, ferr)
		}
		// A fresh handle sees the objects the fetch just added.
		if repo, err = gitproto.Open(rem.Cache); err != nil {
			return nil, err
		}
		tip, err = repo.RefHash(fetched)
	}
	if err != nil {
		return nil, fmt.Errorf("there is no %s here; an admin creates it with `refci secrets init %s` (and pushes it)", ref, q.Env)
	}
	if _, err := Verify(repo, q.Env, tip, o.Admins); err != nil {
		return nil, err
	}
	seenRef := queue.SeenSecretsRef(q.Env)
	seen, err := repo.RefHash(seenRef)
	if err != nil {
		seen = gitproto.ZeroHash
	}
	if seen != gitproto.ZeroHash {
		ok, err := repo.IsAncestor(seen, tip)
		if err != nil || !ok {
			return nil, fmt.Errorf("environment %s refused: %.12s is not a fast-forward of %.12s, the version verified here last, so it may be an old version replayed or history rewritten; "+
				"if an admin rewrote it on purpose, forget the old version with: git --git-dir %s update-ref -d %s", q.Env, tip, seen, repo.GitDir(), seenRef)
		}
	}
	if seen != tip {
		if err := repo.UpdateRef(seenRef, tip, seen); err != nil {
			return nil, fmt.Errorf("remember the verified environment: %w", err)
		}
	}
	t, err := Read(repo, tip)
	if err != nil {
		return nil, fmt.Errorf("environment %s: %w", q.Env, err)
	}
	if ok, why := t.Policy.Allows(q.Request, q.Trusted); !ok {
		return nil, fmt.Errorf("%s (%s)", why, q.TrustReason)
	}
	var exported []string
	for _, n := range t.Policy.Environment {
		if _, ok := t.Values[n]; ok {
			exported = append(exported, n)
		}
	}
	return &Source{env: q.Env, commit: tip, tree: t, key: o.Key, admins: o.Admins, exported: exported}, nil
}

// ErrNoSecret is what Source.Secret returns (wrapped) for a name the
// environment does not have.
var ErrNoSecret = errors.New("no such secret")

// Source decrypts one verified environment's values on demand, for one
// run. It is safe for concurrent use.
type Source struct {
	env      string
	commit   gitproto.Hash
	tree     *Env
	key      secrets.Factotum
	admins   secrets.Keyring
	exported []string
}

// Commit is the verified environment commit.
func (s *Source) Commit() gitproto.Hash { return s.commit }

// Exported names the values the environment's policy puts in the
// pipeline's environment as variables of the same name.
func (s *Source) Exported() []string { return s.exported }

// Secret decrypts value name. A name the environment does not have wraps
// ErrNoSecret; a value sealed by a key outside the admins is refused.
func (s *Source) Secret(name string) ([]byte, error) {
	sealed, ok := s.tree.Values[name]
	if !ok {
		return nil, fmt.Errorf("%w %s; it has: %s", ErrNoSecret, name, strings.Join(s.tree.Names(), ", "))
	}
	v, _, err := s.key.Open(sealed, s.admins)
	switch {
	case errors.Is(err, secrets.ErrNotRecipient):
		return nil, fmt.Errorf("this worker's key %s is not a recipient of %s; an admin adds it with: refci secrets recipients add %s WORKER.asc", s.key.Fingerprint(), path.Join(ValuesDir, name+".asc"), s.env)
	case errors.Is(err, secrets.ErrWriterNotAllowed):
		return nil, fmt.Errorf("secret %s refused: %v", name, err)
	case err != nil:
		return nil, fmt.Errorf("secret %s: %v", name, err)
	}
	return v, nil
}
