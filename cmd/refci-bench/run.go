package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// benchRun measures the per-job cost of `refci run` on a trivial pipeline
// (whole process: checkout, execute, store, sign, ref) beside the git CLI
// storing the same kind of result: two blobs, mktree, commit-tree -S with
// a gpg ed25519 key, update-ref. The two are interleaved run by run.
func benchRun(_ context.Context, bin string, n int) error {
	root, err := os.MkdirTemp("", "refci-bench-run-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	repo := filepath.Join(root, "repo")
	gnupg := filepath.Join(root, "gnupg")
	os.Mkdir(gnupg, 0o700)
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + root, "REFCI_HOME=" + filepath.Join(root, "refci"),
		"GNUPGHOME=" + gnupg, "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=bench", "GIT_AUTHOR_EMAIL=bench@example.invalid",
		"GIT_COMMITTER_NAME=bench", "GIT_COMMITTER_EMAIL=bench@example.invalid",
	}
	steps := [][]string{
		{"git", "init", "-q", "-b", "main", repo},
	}
	for _, s := range steps {
		if _, err := sh(root, env, "", s[0], s[1:]...); err != nil {
			return err
		}
	}
	os.MkdirAll(filepath.Join(repo, ".refci"), 0o755)
	if err := os.WriteFile(filepath.Join(repo, ".refci", "run"), []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		return err
	}
	os.WriteFile(filepath.Join(repo, "README"), []byte("bench\n"), 0o644)
	for _, s := range [][]string{{"add", "-A"}, {"commit", "-q", "-m", "bench"}} {
		if _, err := sh(repo, env, "", "git", s...); err != nil {
			return err
		}
	}
	// The baseline's signing key: gpg ed25519, no passphrase.
	if _, err := sh(root, env, "", "gpg", "--batch", "--no-tty", "--passphrase", "", "--pinentry-mode", "loopback",
		"--quick-gen-key", "Bench <bench@example.invalid>", "ed25519", "sign", "never"); err != nil {
		return err
	}
	fpr, err := sh(root, env, "", "sh", "-c", "gpg --batch --with-colons --list-secret-keys | awk -F: '/^fpr/{print $10; exit}'")
	if err != nil {
		return err
	}
	// Warm both: refci creates its key, gpg-agent starts.
	if _, err := sh(repo, env, "", bin, "run", "-q"); err != nil {
		return err
	}
	logText := strings.Repeat("build output line\n", 4)
	baseline := func(i int) error {
		status := fmt.Sprintf(`{"format":1,"state":"success","run":"%d"}`, i)
		b1, err := sh(repo, env, status, "git", "hash-object", "-w", "--stdin")
		if err != nil {
			return err
		}
		b2, err := sh(repo, env, logText, "git", "hash-object", "-w", "--stdin")
		if err != nil {
			return err
		}
		tree, err := sh(repo, env, fmt.Sprintf("100644 blob %s\tstatus.json\n100644 blob %s\tlog.txt\n", b1, b2), "git", "mktree")
		if err != nil {
			return err
		}
		c, err := sh(repo, env, "", "git", "commit-tree", "-S"+fpr, "-m", "result", tree)
		if err != nil {
			return err
		}
		_, err = sh(repo, env, "", "git", "update-ref", fmt.Sprintf("refs/baseline/%d", i), c)
		return err
	}
	var refciT, baseT []time.Duration
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if _, err := sh(repo, env, "", bin, "run", "-q"); err != nil {
			return err
		}
		refciT = append(refciT, time.Since(t0))
		t0 = time.Now()
		if err := baseline(i); err != nil {
			return err
		}
		baseT = append(baseT, time.Since(t0))
	}
	r, b := summarise(refciT), summarise(baseT)
	fmt.Println("== refci run: per-job cost of a trivial pipeline (exit 0), whole process, sequential")
	fmt.Printf("  refci run (checkout, execute, signed result)   %s\n", r)
	fmt.Printf("  baseline: git CLI 2 blobs+mktree+commit-tree -S(gpg ed25519)+update-ref\n")
	fmt.Printf("                                                 %s\n", b)
	fmt.Printf("  ratio refci/baseline (medians): %.2f  (target: < 1)\n", float64(r.median)/float64(b.median))
	fmt.Printf("  reference, not measured here: Jaypore CI v2 `git jci run` ~18.1 ms per trivial job, unsigned result\n\n")
	return nil
}
