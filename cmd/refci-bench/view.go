package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
	"refci.dev/refci/secrets"
)

// benchView measures `refci view` over 10,000 runs: the full build, the
// incremental build after one new run, and an unchanged rebuild; then the
// weight of a run's index.html for a 1 MB log. The results are signed by
// a worker key the view trusts ($REFCI_HOME/trusted/), so that it measures
// the verifying path: every run is checked and verified.
func benchView(_ context.Context, bin string, _ int) error {
	const runs = 10000
	root, err := os.MkdirTemp("", "refci-bench-view-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	repoDir := filepath.Join(root, "repo")
	home := filepath.Join(root, "refci-home")
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + root, "GIT_CONFIG_NOSYSTEM=1", "REFCI_HOME=" + home}
	worker, err := secrets.Generate("bench worker", "worker@example.invalid", time.Now().Add(-time.Minute))
	if err != nil {
		return err
	}
	var trusted secrets.Keyring
	trusted.Add(worker)
	pub, err := trusted.Armored()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(home, "trusted"), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(home, "trusted", "worker.asc"), pub, 0o644); err != nil {
		return err
	}
	if _, err := sh(root, env, "", "git", "init", "-q", "--bare", repoDir); err != nil {
		return err
	}
	repo, err := gitproto.Open(repoDir)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(1, 2))
	t0 := time.Now()
	var refLines strings.Builder
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	targets := make([]string, runs/5)
	for i := range targets {
		targets[i] = fmt.Sprintf("%040x", rng.Uint64())
	}
	write := func(i int, when time.Time) (string, gitproto.Hash, error) {
		target := targets[i%len(targets)]
		st := &queue.Status{Format: 1, State: queue.Success, Target: target, TargetRef: fmt.Sprintf("branch-%d", i%10),
			Request: fmt.Sprintf("pr/%d", i%20), Run: queue.NewRunID(when), Attempt: 1, Worker: worker.Fingerprint(),
			Started: when, Finished: when.Add(42 * time.Second), DurationMS: 42000, ExitCode: queue.IntPtr(0),
			Artifacts: []queue.Artifact{}}
		switch p := rng.IntN(100); {
		case p < 15:
			st.State, st.Reason, st.ExitCode = queue.Failure, "job test failed (.refci/run exited 0)", queue.IntPtr(0)
		case p < 20:
			st.State, st.Reason, st.ExitCode = queue.Error, "no executable .refci/run in this commit", nil
		}
		var log bytes.Buffer
		for k := 0; k < 40; k++ {
			fmt.Fprintf(&log, "[test] === RUN   TestThing%d\n", k)
		}
		jobState := queue.Success
		if st.State == queue.Failure {
			jobState = queue.Failure
		}
		st.Jobs = []queue.Job{
			{Name: "build", State: queue.Success, DurationMS: 1000, ExitCode: queue.IntPtr(0), Log: "jobs/build/log.txt", LogBytes: 12},
			{Name: "test", Needs: []string{"build"}, State: jobState, DurationMS: 40000, ExitCode: queue.IntPtr(0), Log: "jobs/test/log.txt", LogBytes: int64(log.Len())},
		}
		st.LogBytes = int64(log.Len())
		sj, err := queue.EncodeStatus(st)
		if err != nil {
			return "", gitproto.ZeroHash, err
		}
		var files []gitproto.TreeFile
		for name, data := range map[string][]byte{queue.StatusFile: sj, queue.LogFile: log.Bytes(), "jobs/build/log.txt": []byte("go build ./\n"), "jobs/test/log.txt": log.Bytes()} {
			h, err := repo.WriteBlob(data)
			if err != nil {
				return "", gitproto.ZeroHash, err
			}
			files = append(files, gitproto.TreeFile{Path: name, Hash: h})
		}
		tree, err := repo.WriteTree(files)
		if err != nil {
			return "", gitproto.ZeroHash, err
		}
		c, err := repo.WriteCommit(gitproto.CommitSpec{Tree: tree, Author: gitproto.NewSignature("bench", "bench@example.invalid", when), Message: queue.CommitMessage(st)}, worker.SignDetached)
		return queue.RunRef(target, st.Run), c, err
	}
	for i := 0; i < runs; i++ {
		ref, c, err := write(i, base.Add(time.Duration(i)*time.Minute))
		if err != nil {
			return err
		}
		fmt.Fprintf(&refLines, "create %s %s\n", ref, c)
	}
	if _, err := sh(repoDir, env, refLines.String(), "git", "update-ref", "--stdin"); err != nil {
		return err
	}
	// Fetched results arrive packed.
	if _, err := sh(repoDir, env, "", "git", "repack", "-adq"); err != nil {
		return err
	}
	if _, err := sh(repoDir, env, "", "git", "pack-refs", "--all"); err != nil {
		return err
	}
	fmt.Printf("== refci view: static site over %d runs (generated in %s: result commits signed by a trusted key, 4 files each)\n", runs, time.Since(t0).Round(time.Millisecond))
	out := filepath.Join(root, "site")
	// refci view says on stderr how many runs are not verified when
	// some are not (its keyring is not empty here).
	var notVerified string
	timed := func(label string) error {
		cmd := exec.Command(bin, "view", "-o", out)
		cmd.Dir, cmd.Env = repoDir, env
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		t := time.Now()
		o, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("refci view: %v: %s", err, stderr.Bytes())
		}
		first, _, _ := strings.Cut(string(o), "\n")
		fmt.Printf("  %-38s %9s   (%s)\n", label, ms(time.Since(t)), first)
		notVerified = ""
		if m := regexp.MustCompile(`(\d+) of \d+ runs not verified`).FindSubmatch(stderr.Bytes()); m != nil {
			notVerified = string(m[1])
		}
		return nil
	}
	if err := timed("full build"); err != nil {
		return err
	}
	if notVerified == "" {
		fmt.Printf("  verdicts: all %d runs verified\n", runs)
	} else {
		fmt.Printf("  verdicts: %s of %d runs NOT verified\n", notVerified, runs)
	}
	if err := timed("rebuild, nothing changed"); err != nil {
		return err
	}
	ref, c, err := write(runs, base.Add(runs*time.Minute))
	if err != nil {
		return err
	}
	if _, err := sh(repoDir, env, "", "git", "update-ref", ref, c.String()); err != nil {
		return err
	}
	if err := timed("incremental, after one new run"); err != nil {
		return err
	}
	if fi, err := os.Stat(filepath.Join(out, "index.html")); err == nil {
		fmt.Printf("  site index.html (every run listed)      %d bytes\n", fi.Size())
	}

	// The weight of a run's page for a 1 MB log.
	var log bytes.Buffer
	for i := 0; log.Len() < 1<<20; i++ {
		fmt.Fprintf(&log, "=== RUN   TestSomething/case_%d\n    thing_test.go:%d: ok, value %d\n", i, i%300, i*7)
	}
	st := &queue.Status{Format: 1, State: queue.Success, Target: targets[0], Request: "local", Run: queue.NewRunID(base), Attempt: 1, Started: base}
	t := time.Now()
	page, err := render.HTML(render.Result{Status: st, Log: log.Bytes()}, render.HTMLOptions{})
	if err != nil {
		return err
	}
	took := time.Since(t)
	fmt.Printf("  index.html for a 1 MB log (%d bytes, %d lines, no jobs): %d bytes (%.2f× the log), rendered in %s\n\n",
		log.Len(), bytes.Count(log.Bytes(), []byte{'\n'}), len(page), float64(len(page))/float64(log.Len()), ms(took))
	return nil
}
