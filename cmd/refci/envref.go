package main

// The git side of secrets environments: reading and writing the tree of
// refs/ci/secrets/<env>, and, for workers, verifying it before anything
// in it is believed.

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"sync"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
	"refci.dev/refci/worker"
)

// Files of an environment's tree.
const (
	envRecipientsFile = "recipients.asc"
	envAdminsFile     = "admins.asc"
	envPolicyFile     = "policy.toml"
	envValuesDir      = "values"
	secretsRefPrefix  = "refs/ci/secrets/"
	seenSecretsPrefix = "refs/refci/seen-secrets/"
	fetchedSecretsRef = "refs/refci/fetched-secrets/"
)

// envRef is the ref of environment env.
func envRef(env string) string { return secretsRefPrefix + env }

// validateEnvName checks an environment name: letters, digits, '.', '_'
// and '-', as for job names.
func validateEnvName(env string) error {
	if err := queue.ValidateJobName(env); err != nil {
		return fmt.Errorf("environment name %q: use letters, digits, '.', '_' or '-', starting with a letter or digit", env)
	}
	return nil
}

// envTree is the content of one environment commit.
type envTree struct {
	recipients secrets.Keyring
	admins     secrets.Keyring // informational: who administers it
	adminsRaw  []byte
	policy     secrets.Policy
	values     map[string][]byte // name → armored message
}

// readEnvTree reads the environment stored in commit.
func readEnvTree(repo *gitproto.Repo, commit gitproto.Hash) (*envTree, error) {
	tree, err := repo.TreeOf(commit)
	if err != nil {
		return nil, err
	}
	t := &envTree{values: map[string][]byte{}}
	rb, err := repo.ReadFile(commit, envRecipientsFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", envRecipientsFile, err)
	}
	if t.recipients, err = secrets.ReadKeyring(strings.NewReader(string(rb))); err != nil {
		return nil, fmt.Errorf("%s: %w", envRecipientsFile, err)
	}
	if ab, err := repo.ReadFile(commit, envAdminsFile); err == nil {
		t.adminsRaw = ab
		t.admins, _ = secrets.ReadKeyring(strings.NewReader(string(ab)))
	}
	if pb, err := repo.ReadFile(commit, envPolicyFile); err == nil {
		if t.policy, err = secrets.ParsePolicy(pb); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, gitproto.ErrNotFound) {
		return nil, fmt.Errorf("%s: %w", envPolicyFile, err)
	}
	entries, err := tree.List(envValuesDir)
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
		b, err := tree.ReadFile(envValuesDir + "/" + v)
		if err != nil {
			return nil, err
		}
		t.values[name] = b
	}
	return t, nil
}

// names lists the value names, sorted.
func (t *envTree) names() []string {
	var out []string
	for n := range t.values {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// write stores t as a new commit on parent (zero: none) signed by signer.
func (t *envTree) write(repo *gitproto.Repo, parent gitproto.Hash, signer secrets.Factotum, message string) (gitproto.Hash, error) {
	rec, err := t.recipients.Armored()
	if err != nil {
		return gitproto.ZeroHash, err
	}
	files := map[string][]byte{envRecipientsFile: rec, envPolicyFile: t.policy.Encode()}
	if len(t.adminsRaw) > 0 {
		files[envAdminsFile] = t.adminsRaw
	}
	for n, v := range t.values {
		files[envValuesDir+"/"+n+".asc"] = v
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
		Author:  gitproto.NewSignature(name, strings.TrimSuffix(email, ">"), nowFunc()),
		Message: message,
	}, signer.SignDetached)
}

// verifyEnvCommit checks that commit is signed by a key of admins and
// returns the signer.
func verifyEnvCommit(repo *gitproto.Repo, env string, commit gitproto.Hash, admins secrets.Keyring) (secrets.Signer, error) {
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

// isAncestor reports whether a is b or an ancestor of b.
func isAncestor(repo *gitproto.Repo, a, b gitproto.Hash) (bool, error) {
	return repo.IsAncestor(a, b)
}

// envOpener is the worker.SecretsFunc of refci worker and refci run.
type envOpener struct {
	admins  secrets.Keyring
	key     secrets.Factotum
	remotes func(url string) *gitproto.Remote // nil for a local run
	mu      sync.Mutex                        // serialises fetch + seen-ref updates
}

func (o *envOpener) open(ctx context.Context, q worker.SecretsQuery) (worker.SecretSource, error) {
	if err := validateEnvName(q.Env); err != nil {
		return nil, err
	}
	if o.admins.Len() == 0 {
		return nil, errors.New("this worker trusts no admin key, so it believes no secrets environment; configure one with --admin FILE (or admins = [...] in the worker config)")
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	repo := q.Repo
	tip, err := repo.RefHash(envRef(q.Env))
	if q.Remote != "" && o.remotes != nil {
		rem := o.remotes(q.Remote)
		if rem == nil {
			return nil, fmt.Errorf("unknown remote %s", gitproto.RedactURL(q.Remote))
		}
		fetched := fetchedSecretsRef + q.Env
		if ferr := rem.Fetch(ctx, "+"+envRef(q.Env)+":"+fetched); ferr != nil {
			var re *gitproto.RemoteError
			if errors.As(ferr, &re) && re.Kind == gitproto.KindNotFound {
				return nil, fmt.Errorf("the remote has no %s; an admin creates it with `refci secrets init %s` and pushes it", envRef(q.Env), q.Env)
			}
			return nil, fmt.Errorf("fetch %s: %v", envRef(q.Env), ferr)
		}
		// A fresh handle sees the objects the fetch just added.
		if repo, err = gitproto.Open(rem.Cache); err != nil {
			return nil, err
		}
		tip, err = repo.RefHash(fetched)
	}
	if err != nil {
		return nil, fmt.Errorf("there is no %s here; an admin creates it with `refci secrets init %s` (and pushes it)", envRef(q.Env), q.Env)
	}
	if _, err := verifyEnvCommit(repo, q.Env, tip, o.admins); err != nil {
		return nil, err
	}
	seenRef := seenSecretsPrefix + q.Env
	seen, err := repo.RefHash(seenRef)
	if err != nil {
		seen = gitproto.ZeroHash
	}
	if seen != gitproto.ZeroHash {
		ok, err := isAncestor(repo, seen, tip)
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
	t, err := readEnvTree(repo, tip)
	if err != nil {
		return nil, fmt.Errorf("environment %s: %w", q.Env, err)
	}
	if ok, why := t.policy.Allows(q.Request, q.Trusted); !ok {
		return nil, fmt.Errorf("%s (%s)", why, q.TrustReason)
	}
	var exported []string
	for _, n := range t.policy.Environment {
		if _, ok := t.values[n]; ok {
			exported = append(exported, n)
		}
	}
	return &envSource{env: q.Env, commit: tip, tree: t, key: o.key, admins: o.admins, exported: exported}, nil
}

// envSource decrypts one verified environment's values on demand.
type envSource struct {
	env      string
	commit   gitproto.Hash
	tree     *envTree
	key      secrets.Factotum
	admins   secrets.Keyring
	exported []string
}

func (s *envSource) Info() worker.SecretsInfo {
	return worker.SecretsInfo{Commit: s.commit.String(), Exported: s.exported}
}

func (s *envSource) Secret(name string) ([]byte, error) {
	sealed, ok := s.tree.values[name]
	if !ok {
		return nil, fmt.Errorf("%w %s; it has: %s", worker.ErrSecretNotFound, name, strings.Join(s.tree.names(), ", "))
	}
	v, who, err := s.key.Open(sealed, s.admins)
	switch {
	case errors.Is(err, secrets.ErrNotRecipient):
		return nil, fmt.Errorf("this worker's key %s is not a recipient of %s; an admin adds it with: refci secrets recipients add %s WORKER.asc", s.key.Fingerprint(), path.Join(envValuesDir, name+".asc"), s.env)
	case errors.Is(err, secrets.ErrWriterNotAllowed):
		return nil, fmt.Errorf("secret %s refused: %v", name, err)
	case err != nil:
		return nil, fmt.Errorf("secret %s: %v", name, err)
	}
	_ = who // a writer outside the admins was refused by Open
	return v, nil
}
