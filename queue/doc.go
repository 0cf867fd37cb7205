// Package queue is refci's domain: requests, claims, runs and their
// states, and the one place where the ref layout and the stored formats
// are defined.
//
// In plain words: a user asks for a run by pushing a commit (or an
// annotated tag on it) to refs/ci/requests/<name>. A worker claims the
// request by creating refs/ci/claims/<name> with a compare-and-swap push,
// runs the commit's own .refci/run, and records the result as an
// OpenPGP-signed commit at refs/ci/runs/<target>/<run-id> whose tree holds
// status.json, log.txt, jobs/<job>/log.txt and artifacts/. The git remote
// is the only coordinator. docs/PROTOCOL.md is the full description.
package queue
