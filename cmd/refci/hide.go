package main

import (
	"log/slog"
	"path/filepath"

	"golang.org/x/sys/unix"

	"refci.dev/refci/worker"
)

// noDump makes this process non-dumpable (PR_SET_DUMPABLE 0): pipelines
// run as its user, and without it one could attach to it with ptrace or
// read /proc/PID/mem, /proc/PID/environ or, through /proc/PID/root, the
// files hidden from it. Commands that run pipelines call it first.
func noDump() {
	unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
}

// hidePaths makes paths absolute and drops empty ones and repeats, for
// worker.Config.Hide.
func hidePaths(paths ...string) []string {
	var out []string
	seen := map[string]bool{}
	for _, p := range paths {
		if p == "" {
			continue
		}
		a, err := filepath.Abs(p)
		if err != nil || seen[a] {
			continue
		}
		seen[a] = true
		out = append(out, a)
	}
	return out
}

// checkIsolation logs, once at start, when pipelines will not be isolated
// from the worker's files.
func checkIsolation(log *slog.Logger, self string, require bool) {
	err := worker.CheckIsolation(self)
	switch {
	case err == nil:
	case require:
		log.Warn("pipelines cannot be isolated from the worker's files, and --require-isolation is set: every run will end in state error", "err", err)
	default:
		log.Warn("pipelines cannot be isolated from the worker's files: they can read its signing key and caches (status.json records isolation none); allow unprivileged user namespaces, or pass --require-isolation to refuse such runs", "err", err)
	}
}
