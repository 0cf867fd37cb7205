// Command refci-bench prints refci's performance figures beside baselines
// measured in the same run, interleaved so that machine noise hits both
// alike. It prints medians and ratios; it asserts nothing (targets are
// judged by people reading the figures, not by a timed test).
//
//	go run ./cmd/refci-bench -refci bin/refci [-n 100] [-only run|jobs|...]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

func main() {
	refci := flag.String("refci", "bin/refci", "the refci binary to measure")
	n := flag.Int("n", 100, "sequential runs per measurement")
	only := flag.String("only", "", "run only the named benchmark")
	rest := flag.Duration("rest", 65*time.Second, "before each benchmark, sync and wait this long (0: not at all); see restFS")
	flag.Parse()
	bin, err := filepath.Abs(*refci)
	if err != nil {
		fatal(err)
	}
	benches := []struct {
		name string
		run  func(ctx context.Context, bin string, n int) error
	}{
		{"run", benchRun},
		{"jobs", benchJobs},
		{"throughput", benchThroughput},
		{"dispatch", benchDispatch},
		{"pollcost", benchPollCost},
		{"concurrent", benchConcurrent},
		{"view", benchView},
		{"serve", benchServe},
		{"runs100k", benchRuns100k},
		{"gc", benchGC},
	}
	fmt.Printf("refci-bench: %s, %d runs each, machine: %s\n", bin, *n, machine())
	if *rest > 0 {
		fmt.Printf("each benchmark starts after a sync and %s of rest (-rest), so that none pays for the file deletions of the one before\n", *rest)
	}
	fmt.Println()
	for _, b := range benches {
		if *only != "" && *only != b.name {
			continue
		}
		restFS(*rest)
		if err := b.run(context.Background(), bin, *n); err != nil {
			fatal(fmt.Errorf("%s: %w", b.name, err))
		}
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "refci-bench:", err)
	os.Exit(1)
}

// restFS writes out what is dirty and waits, so that a benchmark does not
// pay for the file deletions of what ran before it (an earlier benchmark,
// or the cleanup of an earlier refci-bench): ext4 without a journal, as on
// this project's machines, skips every inode freed in the last minute (the
// last six while its inode table block is unwritten) one by one before it
// hands out a new one, so each file made after tens of thousands of
// deletions costs up to a millisecond more. What a benchmark deletes
// itself is still charged to it (the throughput bench's later rounds pay
// for the earlier ones'), as a busy worker pays for its own.
func restFS(d time.Duration) {
	if d <= 0 {
		return
	}
	exec.Command("sync").Run()
	time.Sleep(d)
}

func machine() string {
	out, _ := exec.Command("nproc").Output()
	return strings.TrimSpace(string(out)) + " CPUs"
}

// sh runs a command with env in dir and returns its trimmed stdout.
func sh(dir string, env []string, stdin string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = env
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return "", fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, ee.Stderr)
		}
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// stats summarises durations.
type stats struct {
	median, p10, p90, mean time.Duration
}

func summarise(d []time.Duration) stats {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	var sum time.Duration
	for _, v := range s {
		sum += v
	}
	at := func(q float64) time.Duration { return s[int(q*float64(len(s)-1))] }
	return stats{median: at(0.5), p10: at(0.1), p90: at(0.9), mean: sum / time.Duration(len(s))}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

func (s stats) String() string {
	return fmt.Sprintf("median %9s  p10 %9s  p90 %9s  mean %9s", ms(s.median), ms(s.p10), ms(s.p90), ms(s.mean))
}
