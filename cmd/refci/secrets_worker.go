package main

// The secrets of refci worker, serve and run: envstore's Opener as the
// worker wants it.

import (
	"context"
	"errors"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/secrets"
	"refci.dev/refci/secrets/envstore"
	"refci.dev/refci/worker"
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
