package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"refci.dev/refci/queue"
)

// benchGC measures `refci gc` over 100,000 runs down to the default
// policy (per request the newest 10, every run of the last 90 days),
// beside git alone in the same repository: listing the run refs
// (`git for-each-ref refs/ci/runs/`), and deleting the very refs gc
// removed in one `git update-ref --stdin`. The runs are result commits as
// a worker writes them (status.json agreeing with the ref and the
// trailers, a log), unsigned (gc reads, it does not verify), made with
// one git fast-import, packed, refs packed: as fetched results are. Each
// trial starts from the same 100,000 refs (packed-refs restored).
func benchGC(_ context.Context, bin string, _ int) error {
	const runs, trials = 100000, 3
	root, err := os.MkdirTemp("", "refci-bench-gc-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	repoDir := filepath.Join(root, "repo.git")
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + root, "GIT_CONFIG_NOSYSTEM=1", "REFCI_HOME=" + filepath.Join(root, "refci-home")}
	if _, err := sh(root, env, "", "git", "init", "-q", "--bare", repoDir); err != nil {
		return err
	}
	t0 := time.Now()
	// Targets: 20,000 commits, 5 runs each; one is a real commit main
	// points at. Requests: main and 2,000 pull requests. Run times: one
	// every ~10 minutes over the last two years, so the 90 days keep
	// about an eighth.
	rng := rand.New(rand.NewPCG(3, 4))
	empty, err := sh(repoDir, env, "", "git", "mktree")
	if err != nil {
		return err
	}
	mainCommit, err := sh(repoDir, append(env, "GIT_AUTHOR_NAME=b", "GIT_AUTHOR_EMAIL=b@example.invalid", "GIT_COMMITTER_NAME=b", "GIT_COMMITTER_EMAIL=b@example.invalid"),
		"", "git", "commit-tree", "-m", "main", empty)
	if err != nil {
		return err
	}
	if _, err := sh(repoDir, env, "", "git", "update-ref", "refs/heads/main", mainCommit); err != nil {
		return err
	}
	targets := make([]string, runs/5)
	targets[0] = mainCommit
	for i := 1; i < len(targets); i++ {
		targets[i] = fmt.Sprintf("%016x%016x%08x", rng.Uint64(), rng.Uint64(), rng.Uint32())
	}
	now := time.Now().UTC()
	step := 2 * 365 * 24 * time.Hour / runs
	// fast-import writes the commits into one pack and their ids into a
	// marks file; the run refs go straight into packed-refs (git
	// fast-import would write 100,000 loose refs, one lock file each).
	marks := filepath.Join(root, "marks")
	fi := exec.Command("git", "fast-import", "--quiet", "--done", "--export-marks="+marks)
	fi.Dir, fi.Env = repoDir, env
	stdin, err := fi.StdinPipe()
	if err != nil {
		return err
	}
	var fiErr strings.Builder
	fi.Stderr = &fiErr
	if err := fi.Start(); err != nil {
		return err
	}
	w := bufio.NewWriterSize(stdin, 1<<20)
	logText := strings.Repeat("[test] === RUN   TestThing\n", 40)
	fmt.Fprintf(w, "blob\nmark :1\ndata %d\n%s\n", len(logText), logText)
	refs := make([]string, runs)
	for i := 0; i < runs; i++ {
		when := now.Add(-time.Duration(runs-i) * step).Truncate(time.Millisecond)
		target := targets[(i*7919)%len(targets)]
		request := fmt.Sprintf("pr/%d", 1+(i/50)%2000)
		if i%10 == 0 {
			request = "main"
		}
		st := &queue.Status{Format: 1, State: queue.Success, Target: target, Request: request, Run: queue.NewRunID(when), Attempt: 1,
			Worker: "6A1F0C2B3D4E5F60718293A4B5C6D7E8F9A0B1C2", Started: when, Finished: when.Add(42 * time.Second), DurationMS: 42000,
			ExitCode: queue.IntPtr(0), Jobs: []queue.Job{}, Artifacts: []queue.Artifact{}, LogBytes: int64(len(logText))}
		if rng.IntN(100) < 15 {
			st.State, st.Reason = queue.Failure, "job test failed"
		}
		sj, err := queue.EncodeStatus(st)
		if err != nil {
			return err
		}
		msg := queue.CommitMessage(st)
		refs[i] = queue.RunRef(target, st.Run)
		fmt.Fprintf(w, "reset refs/gen\ncommit refs/gen\nmark :%d\ncommitter refci worker <worker@example.invalid> %d +0000\ndata %d\n%s\nM 100644 :1 %s\nM 100644 inline %s\ndata %d\n%s\n",
			i+2, when.Unix(), len(msg), msg, queue.LogFile, queue.StatusFile, len(sj), sj)
	}
	fmt.Fprintf(w, "done\n")
	if err := w.Flush(); err != nil {
		return err
	}
	stdin.Close()
	if err := fi.Wait(); err != nil {
		return fmt.Errorf("git fast-import: %v: %s", err, fiErr.String())
	}
	markLines, err := os.ReadFile(marks)
	if err != nil {
		return err
	}
	lines := []string{"refs/heads/main " + mainCommit}
	for _, l := range strings.Split(strings.TrimSpace(string(markLines)), "\n") {
		var n int
		var id string
		if _, err := fmt.Sscanf(l, ":%d %s", &n, &id); err != nil || n < 2 || n-2 >= runs {
			continue
		}
		lines = append(lines, refs[n-2]+" "+id)
	}
	if len(lines) != runs+1 {
		return fmt.Errorf("fast-import marked %d runs, not %d", len(lines)-1, runs)
	}
	sort.Strings(lines)
	var pb strings.Builder
	pb.WriteString("# pack-refs with: peeled fully-peeled sorted \n")
	for _, l := range lines {
		name, id, _ := strings.Cut(l, " ")
		pb.WriteString(id + " " + name + "\n")
	}
	packed := []byte(pb.String())
	if _, err := sh(repoDir, env, "", "git", "update-ref", "-d", "refs/gen"); err != nil {
		return err
	}
	os.Remove(filepath.Join(repoDir, "refs", "heads", "main"))
	restore := func() error { return os.WriteFile(filepath.Join(repoDir, "packed-refs"), packed, 0o644) }
	fmt.Printf("== refci gc: %d runs down to the default policy (generated in %s: one git fast-import, refs packed)\n", runs, time.Since(t0).Round(time.Millisecond))

	// First: every run ref loose as well (as right after a git fetch of
	// them), which gc locks and removes one file each, as git would. It
	// goes first, before git update-ref below deletes tens of thousands
	// of lock files: on this machine's file system files made after
	// many deletions are slow (see restFS), which would be charged here.
	if err := restore(); err != nil {
		return err
	}
	for _, l := range lines {
		name, id, _ := strings.Cut(l, " ")
		if !strings.HasPrefix(name, queue.RunsPrefix) {
			continue
		}
		p := filepath.Join(repoDir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(id+"\n"), 0o644); err != nil {
			return err
		}
	}
	t1 := time.Now()
	if _, err := sh(repoDir, env, "", bin, "gc", "--repo", repoDir); err != nil {
		return err
	}
	looseTime := time.Since(t1)
	if err := os.RemoveAll(filepath.Join(repoDir, filepath.FromSlash(queue.RunsPrefix))); err != nil {
		return err
	}

	var gcTimes, listTimes, delTimes []time.Duration
	var summary string
	var removed []string
	for trial := 0; trial < trials; trial++ {
		if err := restore(); err != nil {
			return err
		}
		t := time.Now()
		out, err := sh(repoDir, env, "", "git", "for-each-ref", "--format=%(refname)", queue.RunsPrefix)
		if err != nil {
			return err
		}
		listTimes = append(listTimes, time.Since(t))
		if n := strings.Count(out, "\n") + 1; n != runs {
			return fmt.Errorf("%d run refs, not %d", n, runs)
		}

		t = time.Now()
		out, err = sh(repoDir, env, "", bin, "gc", "--repo", repoDir, "-v")
		if err != nil {
			return err
		}
		gcTimes = append(gcTimes, time.Since(t))
		removed = removed[:0]
		for _, line := range strings.Split(out, "\n") {
			if ref, ok := strings.CutPrefix(line, "removed "); ok {
				ref, _, _ = strings.Cut(ref, " ")
				removed = append(removed, ref)
			} else if strings.HasPrefix(line, "refci: removed ") {
				summary = line
			}
		}
		left, err := sh(repoDir, env, "", "git", "for-each-ref", "--format=x", queue.RunsPrefix)
		if err != nil {
			return err
		}
		if n := strings.Count(left, "\n") + 1; n+len(removed) != runs || len(removed) == 0 {
			return fmt.Errorf("gc left %d runs and removed %d, of %d", n, len(removed), runs)
		}

		if trial > 0 {
			continue // git update-ref takes minutes: once is enough
		}
		if err := restore(); err != nil {
			return err
		}
		var in strings.Builder
		in.WriteString("start\n")
		for _, ref := range removed {
			fmt.Fprintf(&in, "delete %s\n", ref)
		}
		in.WriteString("prepare\ncommit\n")
		t = time.Now()
		if _, err := sh(repoDir, env, in.String(), "git", "update-ref", "--stdin"); err != nil {
			return err
		}
		delTimes = append(delTimes, time.Since(t))
	}
	// The same on the repository as a remote (file://, updated directly):
	// the first gc fetches every run into its cache.
	if err := restore(); err != nil {
		return err
	}
	clone := filepath.Join(root, "clone.git")
	if _, err := sh(root, env, "", "git", "init", "-q", "--bare", clone); err != nil {
		return err
	}
	var remoteTimes []time.Duration
	for trial := 0; trial < 2; trial++ {
		if err := restore(); err != nil {
			return err
		}
		t := time.Now()
		if _, err := sh(clone, env, "", bin, "gc", "--repo", clone, "--remote", "file://"+repoDir); err != nil {
			return err
		}
		remoteTimes = append(remoteTimes, time.Since(t))
	}
	fmt.Printf("  %s\n", summary)
	fmt.Printf("  refci gc (read 100,000 results, decide, delete)  %s\n", summarise(gcTimes))
	fmt.Printf("  baseline: git for-each-ref refs/ci/runs/         %s\n", summarise(listTimes))
	fmt.Printf("  baseline: git update-ref --stdin, same %d deletions  %s (once)\n", len(removed), summarise(delTimes))
	fmt.Printf("  refci gc, every run ref loose too                     %s\n", ms(looseTime))
	fmt.Printf("  refci gc --remote file://, first (fetches every run)  %s\n", ms(remoteTimes[0]))
	fmt.Printf("  refci gc --remote file://, again (its cache warm)     %s\n", ms(remoteTimes[1]))
	fmt.Printf("  refci gc / (list + delete): %.2f   goal: refci gc <= 30 s\n\n",
		float64(summarise(gcTimes).median)/float64(summarise(listTimes).median+summarise(delTimes).median))
	return nil
}
