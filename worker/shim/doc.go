// Package shim is the shim side of running a pipeline: the per-run
// supervisor between the worker and each pipeline (Main, shim_linux.go)
// and the middle step that hides paths from the pipeline in new user and
// mount namespaces (hide_linux.go). Package worker starts it and reads
// its reports.
//
// It runs in a process of its own, twice per job, so its binary's start
// is on every job's path: it imports nothing but the standard library and
// golang.org/x/sys/unix, so that cmd/refci-shim, which holds it and
// little else, starts cheaply.
package shim
