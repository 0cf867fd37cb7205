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
	"syscall"
	"time"

	"refci.dev/refci/queue"
)

// world is a bare remote, a clone with a pipeline, and an environment.
type world struct {
	root, bare, clone string
	env               []string
}

func newWorld(pipeline string) (*world, error) {
	root, err := os.MkdirTemp("", "refci-bench-worker-")
	if err != nil {
		return nil, err
	}
	w := &world{root: root, bare: filepath.Join(root, "remote.git"), clone: filepath.Join(root, "app")}
	w.env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + root, "REFCI_HOME=" + filepath.Join(root, "refci"), "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=bench", "GIT_AUTHOR_EMAIL=bench@example.invalid",
		"GIT_COMMITTER_NAME=bench", "GIT_COMMITTER_EMAIL=bench@example.invalid",
	}
	for _, a := range [][]string{{"init", "-q", "--bare", "-b", "main", w.bare}, {"init", "-q", "-b", "main", w.clone}} {
		if _, err := sh(root, w.env, "", "git", a...); err != nil {
			return nil, err
		}
	}
	os.MkdirAll(filepath.Join(w.clone, ".refci"), 0o755)
	if err := os.WriteFile(filepath.Join(w.clone, ".refci", "run"), []byte("#!/bin/sh\n"+pipeline), 0o755); err != nil {
		return nil, err
	}
	for _, a := range [][]string{{"add", "-A"}, {"commit", "-q", "-m", "bench"}, {"remote", "add", "origin", w.bare}, {"push", "-q", "origin", "main"}} {
		if _, err := sh(w.clone, w.env, "", "git", a...); err != nil {
			return nil, err
		}
	}
	return w, nil
}

func (w *world) close() {
	os.RemoveAll(w.root)
	os.RemoveAll(w.root + "-stamps")
}

// stampPipeline commits a pipeline that first writes its start time (ns)
// to stamps/<request>, then runs rest. It returns the stamps directory:
// beside the world, not in it, as the world is the workers' home, which
// isolated pipelines cannot write.
func (w *world) stampPipeline(rest string) (string, error) {
	stamps := w.root + "-stamps"
	if err := os.Mkdir(stamps, 0o777); err != nil {
		return "", err
	}
	script := "#!/bin/sh\ndate +%s%N > " + stamps + "/\"$REFCI_REQUEST\"\n" + rest
	if err := os.WriteFile(filepath.Join(w.clone, ".refci", "run"), []byte(script), 0o755); err != nil {
		return "", err
	}
	_, err := sh(w.clone, w.env, "", "git", "commit", "-qam", "stamp")
	return stamps, err
}

// waitStarted waits for the pipeline of request name to write its stamp
// and returns when it started; it gives up a minute after since.
func waitStarted(stamps, name string, since time.Time) (time.Time, error) {
	for {
		if b, err := os.ReadFile(filepath.Join(stamps, name)); err == nil && len(b) > 0 {
			ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			return time.Unix(0, ns), err
		}
		if time.Since(since) > time.Minute {
			return time.Time{}, fmt.Errorf("request %s never started", name)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// pushRequests pushes n requests in batches of 500 refspecs.
func (w *world) pushRequests(prefix string, n int) error {
	for i := 0; i < n; i += 500 {
		args := []string{"push", "-q", "origin"}
		for j := i; j < min(i+500, n); j++ {
			args = append(args, "HEAD:"+queue.RequestRef(fmt.Sprintf("%s-%d", prefix, j)))
		}
		if _, err := sh(w.clone, w.env, "", "git", args...); err != nil {
			return err
		}
	}
	return nil
}

func (w *world) count(prefix string) int {
	out, _ := sh(w.bare, w.env, "", "git", "for-each-ref", "--format=x", prefix)
	if out == "" {
		return 0
	}
	return strings.Count(out, "\n") + 1
}

// startWorker starts a refci worker on the world's remote.
func (w *world) startWorker(bin string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(bin, append([]string{"worker", "--remote", "file://" + w.bare}, args...)...)
	cmd.Env = w.env
	logf, err := os.Create(filepath.Join(w.root, "worker.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	return cmd, cmd.Start()
}

func stopWorker(cmd *exec.Cmd) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// peakRSS reads the high-water mark of a process's resident memory.
func peakRSS(pid int) string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "VmHWM:") {
			return strings.TrimSpace(strings.TrimPrefix(sc.Text(), "VmHWM:"))
		}
	}
	return "?"
}

// benchThroughput: 2,000 trivial requests, one worker, until every signed
// result is on the remote; three rounds, each on a new remote with a new
// worker, and their medians (one round on this machine can be 25% off the
// next).
func benchThroughput(_ context.Context, bin string, _ int) error {
	const rounds = 3
	fmt.Println("== worker throughput: 2,000 trivial requests on a local bare remote, one worker process")
	var rates, cpus []float64
	var pushes []time.Duration
	for i := 0; i < rounds; i++ {
		r, w, err := throughputRound(bin)
		if w != nil {
			// Removed once every round is done: a round's tens of
			// thousands of files deleted right before the next would
			// be charged to it (see restFS); the next benchmark rests.
			defer w.close()
		}
		if err != nil {
			return err
		}
		pushes = append(pushes, r.pushes...)
		rate := float64(r.results) / r.elapsed.Seconds()
		rates = append(rates, rate)
		fmt.Printf("  round %d: %d results in %.1f s: %.1f jobs/s; worker peak RSS %s", i+1, r.results, r.elapsed.Seconds(), rate, r.rss)
		if r.results > 0 && r.cpu > 0 {
			per := float64(r.cpu/time.Microsecond) / 1000 / float64(r.results)
			cpus = append(cpus, per)
			fmt.Printf("; CPU per job %.1f ms (user %.1f, system %.1f)", per,
				float64(r.user/time.Microsecond)/1000/float64(r.results), float64((r.cpu-r.user)/time.Microsecond)/1000/float64(r.results))
		}
		fmt.Println()
	}
	fmt.Printf("  median of %d rounds: %.1f jobs/s (goal: >= 100)", rounds, median(rates))
	if len(cpus) > 0 {
		// CPU is steadier than jobs/s on a noisy machine: the worker's
		// own and that of every process it started and reaped (git,
		// shims, pipelines).
		fmt.Printf("; CPU per job, worker and everything it ran: %.1f ms", median(cpus))
	}
	fmt.Println()
	fmt.Printf("  baseline: one git push over file://  %s\n\n", summarise(pushes))
	return nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

type roundResult struct {
	results   int
	elapsed   time.Duration
	cpu, user time.Duration
	rss       string
	pushes    []time.Duration
}

// throughputRound runs one round on a world of its own, which the caller
// removes.
func throughputRound(bin string) (roundResult, *world, error) {
	const n = 2000
	var res roundResult
	w, err := newWorld("exit 0\n")
	if err != nil {
		return res, nil, err
	}
	if err := w.pushRequests("t", n); err != nil {
		return res, w, err
	}
	// The baseline: one git push of a new ref over file://.
	for i := 0; i < 5; i++ {
		t0 := time.Now()
		if _, err := sh(w.clone, w.env, "", "git", "push", "-q", "origin", fmt.Sprintf("HEAD:refs/bench/p%d", i)); err != nil {
			return res, w, err
		}
		res.pushes = append(res.pushes, time.Since(t0))
	}
	t0 := time.Now()
	cmd, err := w.startWorker(bin, "--poll", "200ms")
	if err != nil {
		return res, w, err
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		left := w.count(queue.RequestsPrefix) + w.count(queue.ClaimsPrefix)
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			fmt.Println("  (stopped after 3 minutes; the figure below is for the results done by then)")
			break
		}
		// Each look is a git for-each-ref over thousands of refs, CPU
		// the worker under test would lose: once a second while many
		// are left, often only near the end, where it sets the time.
		if left > 300 {
			time.Sleep(time.Second)
		} else {
			time.Sleep(50 * time.Millisecond)
		}
	}
	res.elapsed = time.Since(t0)
	res.rss = peakRSS(cmd.Process.Pid)
	stopWorker(cmd)
	res.results = w.count(queue.RunsPrefix)
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		res.user = time.Duration(ru.Utime.Nano())
		res.cpu = res.user + time.Duration(ru.Stime.Nano())
	}
	return res, w, nil
}

// benchDispatch: push a request, measure until the pipeline starts, in
// poll mode.
func benchDispatch(_ context.Context, bin string, n int) error {
	n = min(n, 30)
	w, err := newWorld("exit 0\n")
	if err != nil {
		return err
	}
	defer w.close()
	// The pipeline writes its start time where the bench can read it.
	stamp, err := w.stampPipeline("")
	if err != nil {
		return err
	}
	const poll = time.Second
	cmd, err := w.startWorker(bin, "--poll", poll.String())
	if err != nil {
		return err
	}
	defer stopWorker(cmd)
	var lat []time.Duration
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("d%d", i)
		// Push at a random phase of the poll cycle: right after a job
		// started is right after a poll, which would measure a full
		// interval every time.
		time.Sleep(time.Duration(rand.Int64N(int64(poll))))
		t0 := time.Now()
		if _, err := sh(w.clone, w.env, "", "git", "push", "-q", "origin", "HEAD:"+queue.RequestRef(name)); err != nil {
			return err
		}
		started, err := waitStarted(stamp, name, t0)
		if err != nil {
			return fmt.Errorf("dispatch: %w", err)
		}
		lat = append(lat, started.Sub(t0))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	fmt.Printf("== dispatch latency in poll mode (push until the pipeline starts), %d requests\n", n)
	fmt.Printf("  p50 %s  p99 %s  (poll interval %s; expected about half of it)\n\n", ms(lat[len(lat)/2]), ms(lat[len(lat)*99/100]), poll)
	return nil
}

// benchPollCost: what one poll costs with 0 and 10,000 unrelated refs.
func benchPollCost(_ context.Context, _ string, _ int) error {
	w, err := newWorld("exit 0\n")
	if err != nil {
		return err
	}
	defer w.close()
	cache := filepath.Join(w.root, "cache.git")
	sh(w.root, w.env, "", "git", "init", "-q", "--bare", cache)
	measure := func() (time.Duration, int64, error) {
		var ts []time.Duration
		var bytes int64
		for i := 0; i < 15; i++ {
			trace := filepath.Join(w.root, "trace")
			os.Remove(trace)
			env := append(append([]string{}, w.env...), "GIT_TRACE_PACKET="+trace)
			t0 := time.Now()
			_, err := sh(cache, env, "", "git", "-c", "protocol.version=2", "fetch", "--quiet", "--prune", "--no-tags", "file://"+w.bare,
				"+"+queue.RequestsPrefix+"*:"+queue.RequestsPrefix+"*", "+"+queue.ClaimsPrefix+"*:"+queue.ClaimsPrefix+"*")
			if err != nil {
				return 0, 0, err
			}
			ts = append(ts, time.Since(t0))
			if fi, err := os.Stat(trace); err == nil {
				bytes = fi.Size()
			}
		}
		return summarise(ts).median, bytes, nil
	}
	w.pushRequests("p", 3)
	t0, b0, err := measure()
	if err != nil {
		return err
	}
	var in strings.Builder
	head, _ := sh(w.clone, w.env, "", "git", "rev-parse", "HEAD")
	for i := 0; i < 10000; i++ {
		fmt.Fprintf(&in, "create refs/pull/%d/head %s\n", i, head)
	}
	if _, err := sh(w.bare, w.env, in.String(), "git", "update-ref", "--stdin"); err != nil {
		return err
	}
	sh(w.bare, w.env, "", "git", "pack-refs", "--all")
	t1, b1, err := measure()
	if err != nil {
		return err
	}
	fmt.Println("== poll cost (git fetch of requests and claims, protocol v2 ref-prefix), median of 15")
	fmt.Printf("  no other refs:            %s, %d bytes of protocol trace\n", ms(t0), b0)
	fmt.Printf("  10,000 refs/pull/* refs:  %s, %d bytes of protocol trace (ratio %.2f)\n\n", ms(t1), b1, float64(t1)/float64(t0))
	return nil
}

// benchConcurrent: 200 concurrent `sleep 20` jobs on one worker.
func benchConcurrent(_ context.Context, bin string, _ int) error {
	const n = 200
	w, err := newWorld("")
	if err != nil {
		return err
	}
	defer w.close()
	stamp, err := w.stampPipeline("sleep 20\n")
	if err != nil {
		return err
	}
	if err := w.pushRequests("c", n); err != nil {
		return err
	}
	t0 := time.Now()
	cmd, err := w.startWorker(bin, "--poll", "500ms", "--concurrency", strconv.Itoa(n))
	if err != nil {
		return err
	}
	for {
		ents, _ := os.ReadDir(stamp)
		if len(ents) >= n {
			break
		}
		if time.Since(t0) > 5*time.Minute {
			stopWorker(cmd)
			return fmt.Errorf("concurrent: only %d of %d started", len(ents), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	started := time.Since(t0)
	for w.count(queue.RequestsPrefix) > 0 && time.Since(t0) < 5*time.Minute {
		time.Sleep(200 * time.Millisecond)
	}
	rss := peakRSS(cmd.Process.Pid)
	stopWorker(cmd)
	fmt.Printf("== %d concurrent `sleep 20` jobs on one worker\n", n)
	fmt.Printf("  all started after %.2f s (from worker start); all finished after %.1f s; worker peak RSS %s\n\n", started.Seconds(), time.Since(t0).Seconds(), rss)
	return nil
}
