// Package worker runs one pipeline and turns it into a result: it checks
// the target commit out into a private directory, runs .refci/run with a
// scrubbed environment in its own process group, captures and caps its
// output, serves the run's job socket ($REFCI_SOCKET), kills whatever the
// pipeline leaves behind, collects artifacts, and writes the signed result
// commit at refs/ci/runs/<target>/<run-id>.
//
// Process supervision is package worker/proc, the job socket package
// worker/jobsock, the per-run shim package worker/shim. Isolation
// (isolation.go) says which paths a pipeline must not see or write.
//
// It imports queue (the domain) and gitproto (git), never cmd, forge or
// render.
package worker
