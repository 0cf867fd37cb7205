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
	"strconv"
	"strings"
	"time"

	"refci.dev/refci/queue"
)

// benchRuns100k measures reading results in a repository of 100,000 runs
// (100 on each of 1,000 commits), each beside its baseline in the same
// run: refci status (against git rev-parse HEAD and against refci status
// in a repository of 100 runs), fetching one commit's runs from a remote
// of 100,000 runs (against the same from a remote of 100), refci runs
// --all's first page, and refci view after one new run.
//
// The runs are made with git fast-import (unsigned result commits, each
// with its own status.json and a log) and their refs written packed, as
// git gc leaves them.
func benchRuns100k(_ context.Context, bin string, n int) error {
	const (
		targets   = 1000
		perTarget = 100
	)
	root, err := os.MkdirTemp("", "refci-bench-runs100k-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + root, "GIT_CONFIG_NOSYSTEM=1", "REFCI_HOME=" + filepath.Join(root, "refci-home"),
		"GIT_AUTHOR_NAME=bench", "GIT_AUTHOR_EMAIL=bench@example.invalid", "GIT_COMMITTER_NAME=bench", "GIT_COMMITTER_EMAIL=bench@example.invalid"}
	big := filepath.Join(root, "big.git")
	small := filepath.Join(root, "small.git")
	t0 := time.Now()
	commits, err := makeRuns(env, big, targets, perTarget)
	if err != nil {
		return err
	}
	head := commits[len(commits)-1]
	// The small repository: the same commits, and only the head commit's
	// 100 runs.
	if _, err := sh(root, env, "", "git", "init", "-q", "--bare", "-b", "main", small); err != nil {
		return err
	}
	if _, err := sh(small, env, "", "git", "fetch", "-q", big, "main:main", "+refs/ci/runs/"+head+"/*:refs/ci/runs/"+head+"/*"); err != nil {
		return err
	}
	if _, err := sh(small, env, "", "git", "pack-refs", "--all"); err != nil {
		return err
	}
	fmt.Printf("== reading results at %d runs (%d commits × %d runs; made in %s with git fast-import, refs packed)\n",
		targets*perTarget, targets, perTarget, time.Since(t0).Round(time.Millisecond))

	timeCmd := func(dir string, name string, args ...string) (time.Duration, error) {
		t := time.Now()
		_, err := sh(dir, env, "", name, args...)
		return time.Since(t), err
	}
	// Interleaved: each round measures every variant once.
	type variant struct {
		label string
		run   func(i int) (time.Duration, error)
	}
	measure := func(title string, rounds int, vs []variant) error {
		fmt.Printf("  %s (%d rounds, interleaved)\n", title, rounds)
		got := make([][]time.Duration, len(vs))
		for i := 0; i < rounds; i++ {
			for k, v := range vs {
				d, err := v.run(i)
				if err != nil {
					return fmt.Errorf("%s: %w", v.label, err)
				}
				got[k] = append(got[k], d)
			}
		}
		base := summarise(got[len(vs)-1]).median
		for k, v := range vs {
			s := summarise(got[k])
			fmt.Printf("    %-44s %s   %.2f× the last\n", v.label, s, float64(s.median)/float64(base))
		}
		return nil
	}
	rounds := n
	if rounds > 30 {
		rounds = 30
	}
	if rounds < 5 {
		rounds = 5
	}

	if err := measure("refci status (HEAD has 100 runs)", rounds, []variant{
		{"refci status, 100,000 runs here", func(int) (time.Duration, error) { return timeCmd(big, bin, "status") }},
		{"refci status, 100 runs here", func(int) (time.Duration, error) { return timeCmd(small, bin, "status") }},
		{"git rev-parse HEAD", func(int) (time.Duration, error) { return timeCmd(big, "git", "rev-parse", "HEAD") }},
	}); err != nil {
		return err
	}

	// Fetching one commit's 100 runs into an empty repository.
	fresh := func(i int, what string) (string, error) {
		dir := filepath.Join(root, fmt.Sprintf("reader-%s-%d", what, i))
		_, err := sh(root, env, "", "git", "init", "-q", "--bare", dir)
		return dir, err
	}
	fetchFrom := func(remote, what string) func(int) (time.Duration, error) {
		return func(i int) (time.Duration, error) {
			dir, err := fresh(i, what)
			if err != nil {
				return 0, err
			}
			defer os.RemoveAll(dir)
			return timeCmd(dir, bin, "fetch", "--remote", "file://"+remote, head)
		}
	}
	if err := measure("refci fetch COMMIT: its 100 runs, into an empty repository", rounds, []variant{
		{"from a remote of 100,000 runs", fetchFrom(big, "big")},
		{"from a remote of 100 runs", fetchFrom(small, "small")},
	}); err != nil {
		return err
	}
	if err := measure("for comparison: git fetch '+refs/ci/*:refs/ci/*' of every run ref, once", 1, []variant{
		{"from a remote of 100,000 runs", func(i int) (time.Duration, error) {
			dir, err := fresh(i, "all")
			if err != nil {
				return 0, err
			}
			defer os.RemoveAll(dir)
			return timeCmd(dir, "git", "fetch", "-q", "file://"+big, "+refs/ci/*:refs/ci/*")
		}},
	}); err != nil {
		return err
	}

	if err := measure("refci runs --all: the first page (the newest 100)", rounds, []variant{
		{"refci runs --all, 100,000 runs here", func(int) (time.Duration, error) { return timeCmd(big, bin, "runs", "--all") }},
		{"refci runs --all, 100 runs here", func(int) (time.Duration, error) { return timeCmd(small, bin, "runs", "--all") }},
	}); err != nil {
		return err
	}

	// refci view: the full build once, then after one new run each time.
	site := filepath.Join(root, "site")
	view := func(label string) (time.Duration, error) {
		t := time.Now()
		out, err := sh(big, env, "", bin, "view", "-o", site)
		d := time.Since(t)
		if err != nil {
			return 0, err
		}
		if label != "" {
			first, _, _ := strings.Cut(out, "\n")
			fmt.Printf("    %-44s %9s   (%s)\n", label, ms(d), first)
		}
		return d, nil
	}
	fmt.Printf("  refci view\n")
	if _, err := view("full build (unsigned runs: all unverified)"); err != nil {
		return err
	}
	if _, err := view("rebuild, nothing changed"); err != nil {
		return err
	}
	if fi, err := os.Stat(filepath.Join(site, "manifest.json")); err == nil {
		fmt.Printf("    manifest.json: %d bytes\n", fi.Size())
	}
	when := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(targets * perTarget * time.Minute) // after the others, in the past
	var incr []time.Duration
	for i := 0; i < rounds; i++ {
		if err := addRun(env, big, head, when.Add(time.Duration(i)*time.Minute)); err != nil {
			return err
		}
		d, err := view("")
		if err != nil {
			return err
		}
		incr = append(incr, d)
	}
	fmt.Printf("    %-44s %s\n", "incremental, after one new run", summarise(incr))
	fmt.Println()
	return nil
}

// runStatus is the status.json and message of run i of a bench repository.
func runStatus(rng *rand.Rand, target string, i int, when time.Time) (*queue.Status, []byte, error) {
	st := &queue.Status{Format: 1, State: queue.Success, Target: target, TargetRef: "main",
		Request: fmt.Sprintf("pr/%d", i%50), Run: queue.NewRunID(when), Attempt: 1, Worker: strings.Repeat("AB", 20),
		Started: when, Finished: when.Add(42 * time.Second), DurationMS: 42000, ExitCode: queue.IntPtr(0),
		Artifacts: []queue.Artifact{}, LogBytes: 36}
	switch p := rng.IntN(100); {
	case p < 15:
		st.State, st.Reason = queue.Failure, "job test failed (.refci/run exited 0)"
	case p < 20:
		st.State, st.Reason, st.ExitCode = queue.Error, "no executable .refci/run in this commit", nil
	}
	st.Jobs = []queue.Job{{Name: "test", State: st.State, DurationMS: 40000, ExitCode: queue.IntPtr(0), Log: "jobs/test/log.txt", LogBytes: 36}}
	if st.State == queue.Error {
		st.Jobs = nil
	}
	raw, err := queue.EncodeStatus(st)
	return st, raw, err
}

// makeRuns makes the bare repository dir with a chain of targets commits
// on main and perTarget runs on each, one a minute, and returns the
// commits, oldest first.
func makeRuns(env []string, dir string, targets, perTarget int) ([]string, error) {
	if _, err := sh(filepath.Dir(dir), env, "", "git", "init", "-q", "--bare", "-b", "main", dir); err != nil {
		return nil, err
	}
	// Pass 1: the commits under test.
	var b strings.Builder
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < targets; i++ {
		msg := fmt.Sprintf("change %d\n", i)
		content := fmt.Sprintf("version %d\n", i)
		fmt.Fprintf(&b, "commit refs/heads/main\nmark :%d\ncommitter bench <bench@example.invalid> %d +0000\ndata %d\n%sM 100644 inline file.txt\ndata %d\n%s\n",
			i+1, base.Add(time.Duration(i)*time.Hour).Unix(), len(msg), msg, len(content), content)
	}
	marks := filepath.Join(dir, "bench-marks")
	if _, err := sh(dir, env, b.String(), "git", "fast-import", "--quiet", "--export-marks="+marks); err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(marks)
	if err != nil {
		return nil, err
	}
	commits := make([]string, targets)
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		m, h, _ := strings.Cut(l, " ")
		k, err := strconv.Atoi(strings.TrimPrefix(m, ":"))
		if err != nil || k < 1 || k > targets {
			return nil, fmt.Errorf("marks line %q", l)
		}
		commits[k-1] = h
	}
	// Pass 2: the runs, each a parentless commit (reset before each).
	cmd := exec.Command("git", "fast-import", "--quiet", "--export-marks="+marks)
	cmd.Dir, cmd.Env = dir, env
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	w := bufio.NewWriterSize(stdin, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	refOf := make([]string, 0, targets*perTarget)
	log := "[test] === RUN   TestThing\n[test] ok\n"
	fmt.Fprintf(w, "blob\nmark :1\ndata %d\n%s\n", len(log), log)
	for i := 0; i < targets*perTarget; i++ {
		target := commits[i%targets]
		when := base.Add(time.Duration(i) * time.Minute)
		st, sj, err := runStatus(rng, target, i, when)
		if err != nil {
			return nil, err
		}
		msg := queue.CommitMessage(st)
		fmt.Fprintf(w, "reset refs/bench/tmp\ncommit refs/bench/tmp\nmark :%d\ncommitter bench <bench@example.invalid> %d +0000\ndata %d\n%s\nM 100644 :1 log.txt\nM 100644 :1 jobs/test/log.txt\nM 100644 inline status.json\ndata %d\n%s\n\n",
			i+2, when.Unix(), len(msg), msg, len(sj), sj)
		refOf = append(refOf, queue.RunRef(target, st.Run))
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("git fast-import: %v: %s", err, stderr.String())
	}
	raw, err = os.ReadFile(marks)
	if err != nil {
		return nil, err
	}
	lines := make([]string, 0, len(refOf))
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		m, h, _ := strings.Cut(l, " ")
		k, err := strconv.Atoi(strings.TrimPrefix(m, ":"))
		if err != nil {
			return nil, fmt.Errorf("marks line %q", l)
		}
		if k >= 2 {
			lines = append(lines, h+" "+refOf[k-2])
		}
	}
	if len(lines) != len(refOf) {
		return nil, fmt.Errorf("fast-import marked %d runs of %d", len(lines), len(refOf))
	}
	if _, err := sh(dir, env, "", "git", "update-ref", "-d", "refs/bench/tmp"); err != nil {
		return nil, err
	}
	// The run refs, packed (sorted by name, as git writes the file), beside main.
	if _, err := sh(dir, env, "", "git", "pack-refs", "--all"); err != nil {
		return nil, err
	}
	old, err := os.ReadFile(filepath.Join(dir, "packed-refs"))
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(string(old), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	sort.Slice(lines, func(i, j int) bool { return lines[i][41:] < lines[j][41:] })
	packed := "# pack-refs with: peeled fully-peeled sorted \n" + strings.Join(lines, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(dir, "packed-refs"), []byte(packed), 0o644); err != nil {
		return nil, err
	}
	os.Remove(marks)
	return commits, nil
}

// addRun adds one run of target to the repository dir (a new result
// commit and its ref), as a fetch of one new run would.
func addRun(env []string, dir, target string, when time.Time) error {
	rng := rand.New(rand.NewPCG(uint64(when.Unix()), 3))
	st, sj, err := runStatus(rng, target, 0, when)
	if err != nil {
		return err
	}
	msg := queue.CommitMessage(st)
	stream := fmt.Sprintf("commit %s\ncommitter bench <bench@example.invalid> %d +0000\ndata %d\n%s\nM 100644 inline status.json\ndata %d\n%s\n\n",
		queue.RunRef(target, st.Run), when.Unix(), len(msg), msg, len(sj), sj)
	_, err = sh(dir, env, stream, "git", "fast-import", "--quiet")
	return err
}
