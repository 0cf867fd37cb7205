package worker

import (
	"context"
	"errors"
	"os"

	"refci.dev/refci/secrets"
)

// Local is a run on the user's own machine, as refci run starts one. A
// local run is the user's own code on the user's own machine: it can
// read everything else of theirs anyway, so it is trusted (unless
// TrustedKeys says otherwise) and, without Isolate, not isolated. Every
// run directory of this user's refci processes lies under one root,
// hidden from isolated pipelines (MakeRunsDir).
type Local struct {
	// Spec is the run as Run takes it: Repo, Target, TargetRef, Env,
	// Secrets, Limits, Output, Hard, CancelReason, Version and Page are
	// the caller's. RunLocal sets Request (LocalRequest), Trusted and
	// TrustReason, RefciPath (Self), Shim, Isolation, TempDir, and Host
	// when it is "".
	Spec RunSpec
	// Self is refci's executable, put on the pipeline's PATH and, with
	// Isolate, its supervisor; "" when it cannot be found.
	Self string
	// Isolate runs the pipeline as workers do: under the shim, in
	// namespaces of its own, with Private, every user's credentials and
	// other runs hidden and the file system read-only but for its run
	// directory and /tmp. It needs Self, and fails rather than run
	// unisolated (RequireIsolation).
	Isolate bool
	Private []string            // with Isolate: the user's own files to hide ($REFCI_HOME, the key)
	Getenv  func(string) string // the process environment
	// TrustedKeys, when not nil, decides trust as a worker does
	// (SignatureTrust) on the target commit's signature; nil: the run
	// is trusted.
	TrustedKeys *secrets.Keyring
}

// ErrLocalSetup is matched by RunLocal's error when the run could not be
// set up (no refci executable to isolate with, no runs directory):
// nothing ran and no Outcome is returned. The error's text is the cause's.
var ErrLocalSetup = errors.New("cannot set up the run")

type setupError struct{ error }

func (e setupError) Unwrap() []error { return []error{e.error, ErrLocalSetup} }

// RunLocal prepares the run's sandbox (NewSandbox), decides its trust
// (LocalTrust) and runs it (Run), its result signed by signer. Its
// Outcome and error are Run's, or an error matching ErrLocalSetup.
func RunLocal(ctx context.Context, l Local, signer Signer) (*Outcome, error) {
	if l.Isolate && l.Self == "" {
		return nil, setupError{errors.New("--isolate: cannot find the refci executable to supervise the pipeline")}
	}
	// The repository gets the result: its configuration and hooks, like
	// everything refci's own git reads, stay read-only.
	sb, err := NewSandbox(SandboxSpec{Isolate: l.Isolate, Getenv: l.Getenv, Self: l.Self, Require: l.Isolate,
		Private: l.Private, ReadOnly: []string{l.Spec.Repo.GitDir()}})
	if err != nil {
		return nil, setupError{err}
	}
	defer sb.Close()
	spec := l.Spec
	spec.Request = LocalRequest
	spec.Trusted, spec.TrustReason = LocalTrust(spec.Repo, spec.Target, l.TrustedKeys)
	spec.RefciPath, spec.Shim, spec.Isolation, spec.TempDir = l.Self, sb.Shim, sb.Isolation, sb.RunsDir
	if spec.Host == "" {
		spec.Host, _ = os.Hostname()
	}
	return Run(ctx, spec, signer)
}
