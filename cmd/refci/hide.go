package main

import (
	"fmt"
	"log/slog"
	"os"
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

// chooseShim picks, once at start, the executable that runs as every
// run's shim (worker.Config.Shim): refci-shim beside self when it is of
// this build (see worker.ChooseShim), else self. It logs which, and why a
// refci-shim that is there was not taken.
func chooseShim(log *slog.Logger, self string) string {
	shim, note := worker.ChooseShim(self)
	if note != "" {
		log.Warn("not using the refci-shim beside refci: runs use refci itself as their shim, which costs more per run; reinstall refci-shim from the same build as refci, or remove it", "shim", shim, "reason", note)
	} else {
		log.Info("shim for runs", "shim", shim)
	}
	return shim
}

// checkIsolation logs, once at start, when pipelines will not be isolated
// from the worker's files. shim is the runs' shim (chooseShim), which
// does the hiding.
func checkIsolation(log *slog.Logger, shim string, require bool) {
	err := worker.CheckIsolation(shim)
	switch {
	case err == nil:
	case require:
		log.Warn("pipelines cannot be isolated from the worker's files, and --require-isolation is set: every run will end in state error", "err", err)
	default:
		log.Warn("pipelines cannot be isolated from the worker's files: they can read its signing key and caches (status.json records isolation none); allow unprivileged user namespaces, or pass --require-isolation to refuse such runs", "err", err)
	}
}

// runsDir makes the private directory (0700, under $TMPDIR) in which a
// worker makes its runs' directories. It is hidden from every pipeline
// but for the pipeline's own run directory, so that concurrent runs,
// trusted or not, cannot read each other's checkouts, files or sockets.
// done removes it once the worker has stopped.
func runsDir() (dir string, done func(), err error) {
	dir, err = os.MkdirTemp("", "refci-") // short: socket paths are limited to 108 bytes
	if err != nil {
		return "", nil, fmt.Errorf("create the directory for run directories: %w", err)
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}
