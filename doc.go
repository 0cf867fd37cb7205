// Package refci is a CI system that lives in git refs.
//
// A run is asked for by pushing a ref (refs/ci/requests/<name>), or started
// locally with `refci run`. A worker checks the commit out into a private
// directory, runs the repository's own executable .refci/run, and records
// the outcome as an OpenPGP-signed commit at refs/ci/runs/<target>/<run-id>
// whose tree holds status.json, the log, per-job logs and artifacts.
// Everything is visible with git alone; docs/PROTOCOL.md is the contract.
//
// The packages, from the centre outwards:
//
//	queue     the domain: states, status.json, the ref layout, the format version
//	gitproto  git and nothing about CI: objects, refs with compare-and-swap, checkout;
//	          the only package that imports go-git or runs the git program (CLI)
//	secrets   OpenPGP and nothing about git: identities, signing, verifying, sealing environments
//	secrets/envstore  the secrets environments in git (refs/ci/secrets/<env>): read, write, verify
//	results   reading and watching results and claims: list, find, read, verify, follow
//	requests  asking for runs: making a request and pushing it to a remote
//	worker    running one pipeline and publishing its result; the loop, claims, the outbox; isolation
//	  worker/proc     process supervision: start, wait, kill with grace, reap; the shim choice
//	  worker/jobsock  the job socket: its server, the refci job/secret clients, the versioned wire protocol
//	  worker/shim     the per-run shim (cmd/refci-shim): hides paths, reaps the pipeline
//	render    pure functions from a result to what people read
//	forge     views outward (forges, mail); forge/site: the static site
//	          of results, built by refci view and served by refci serve --http
//	server    refci serve: the SSH git server, its roles, the owner and trust records
//	cmd       wiring only
//	fixtures  helpers shared by the tests (git with a private HOME, keys, sample repositories); never imported by other code
//
// Arrows point inward; imports_test.go enforces it.
package refci
