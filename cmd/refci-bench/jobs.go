package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"refci.dev/refci/worker/jobsock"
	"refci.dev/refci/worker/jobsock/jobclient"
)

// jobsPerPipeline is the length of the jobs bench's pipelines.
const jobsPerPipeline = 20

// benchJobs measures what one `refci job NAME -- CMD` costs inside a
// pipeline beside what the same shell pays to run CMD as a plain process.
//
// Per step: a pipeline, run by `refci run`, times with the shell's clock
// blocks of 20 steps each, one after the other in the same shell (in each
// order of rotation, n runs each), so that the noise of refci run itself
// is out:
//
//	plain   20 × /bin/true
//	jobs    20 × refci job jN -- true
//	client  20 × refci job 2>/dev/null || : (a usage error: the client's
//	        start alone, no socket)
//	floor   20 × a minimal Go program that fork/execs /bin/true and waits:
//	        what any job client written in Go costs at least
//	shell   20 × refci_job sN -- /bin/true: the in-shell job ($REFCI_SH),
//	        which costs no process of its own (/bin/true, not the shell's
//	        builtin true, so that its command is a process as plain's is)
//
// Whole runs: `refci run` of a pipeline of 20 jobs, with refci job and
// with refci_job, beside one of 20 plain steps, interleaved.
//
// Then, in this process, the parts of a job that are not the client's
// start: one job's conversation on a real job socket with no command
// (dial, start, run, end, done: the socket round trips and the server's
// work, its log included) and RunJobCommand running true (that, the
// client's spawn of CMD and its wait), beside exec of true from here.
func benchJobs(_ context.Context, bin string, n int) error {
	root, err := os.MkdirTemp("", "refci-bench-jobs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	repo := filepath.Join(root, "repo")
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + root, "REFCI_HOME=" + filepath.Join(root, "refci"), "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=bench", "GIT_AUTHOR_EMAIL=bench@example.invalid",
		"GIT_COMMITTER_NAME=bench", "GIT_COMMITTER_EMAIL=bench@example.invalid",
	}
	if _, err := sh(root, env, "", "git", "init", "-q", "-b", "main", repo); err != nil {
		return err
	}
	os.MkdirAll(filepath.Join(repo, ".refci"), 0o755)
	floor, err := buildFloor(root)
	if err != nil {
		return err
	}
	steps := func(f func(i int) string) string {
		var b strings.Builder
		for i := range jobsPerPipeline {
			b.WriteString(f(i) + "\n")
		}
		return b.String()
	}
	blocks := []struct{ name, steps string }{
		{"plain", steps(func(int) string { return "/bin/true" })},
		{"jobs", steps(func(i int) string { return fmt.Sprintf("refci job j%d -- true", i) })},
		{"client", steps(func(int) string { return "refci job 2>/dev/null || :" })},
		{"floor", steps(func(int) string { return floor + " /bin/true" })},
		{"shell", steps(func(i int) string { return fmt.Sprintf("refci_job s%d -- /bin/true", i) })},
	}
	// One timed pipeline per rotation of the blocks, so that no kind of
	// step always comes first (right after the start, refci run is still
	// busy beside the pipeline).
	timesFile := filepath.Join(root, "times")
	var pipelines []struct{ name, script string }
	for k := range blocks {
		var timed strings.Builder
		timed.WriteString("#!/bin/sh\nset -e\n. \"$REFCI_SH\"\n")
		for j := range blocks {
			b := blocks[(k+j)%len(blocks)]
			fmt.Fprintf(&timed, "t0=$(date +%%s%%N)\n%st1=$(date +%%s%%N)\necho %s $((t1-t0)) >> %s\n", b.steps, b.name, timesFile)
		}
		pipelines = append(pipelines, struct{ name, script string }{fmt.Sprintf("timed-%d", k), timed.String()})
	}
	nTimed := len(pipelines)
	pipelines = append(pipelines,
		struct{ name, script string }{"plain", "#!/bin/sh\nset -e\n" + blocks[0].steps},
		struct{ name, script string }{"jobs", "#!/bin/sh\nset -e\n" + blocks[1].steps},
		struct{ name, script string }{"shell", "#!/bin/sh\nset -e\n. \"$REFCI_SH\"\n" + blocks[4].steps})
	revs := make([]string, len(pipelines))
	for i, p := range pipelines {
		if err := os.WriteFile(filepath.Join(repo, ".refci", "run"), []byte(p.script), 0o755); err != nil {
			return err
		}
		if _, err := sh(repo, env, "", "git", "add", "-A"); err != nil {
			return err
		}
		if _, err := sh(repo, env, "", "git", "commit", "-q", "--allow-empty", "-m", p.name); err != nil {
			return err
		}
		if revs[i], err = sh(repo, env, "", "git", "rev-parse", "HEAD"); err != nil {
			return err
		}
	}
	// Warm: refci makes its key; check each pipeline succeeds.
	for _, rev := range revs {
		if _, err := sh(repo, env, "", bin, "run", "-q", rev); err != nil {
			return err
		}
	}
	os.Remove(timesFile)
	whole := make([][]time.Duration, len(pipelines))
	for range n {
		for i, rev := range revs {
			t0 := time.Now()
			if _, err := sh(repo, env, "", bin, "run", "-q", rev); err != nil {
				return err
			}
			whole[i] = append(whole[i], time.Since(t0))
		}
	}
	b, err := os.ReadFile(timesFile)
	if err != nil {
		return err
	}
	per := make([][]time.Duration, len(blocks))
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		name, v, _ := strings.Cut(line, " ")
		ns, err := strconv.ParseInt(v, 10, 64)
		i := slices.IndexFunc(blocks, func(b struct{ name, steps string }) bool { return b.name == name })
		if err != nil || i < 0 {
			return fmt.Errorf("times: %q", line)
		}
		per[i] = append(per[i], time.Duration(ns)/jobsPerPipeline)
	}
	st := make([]stats, len(blocks))
	for i := range per {
		st[i] = summarise(per[i])
	}
	plain, job, client, fl, shj := st[0].median, st[1].median, st[2].median, st[3].median, st[4].median
	w := []stats{summarise(whole[nTimed]), summarise(whole[nTimed+1]), summarise(whole[nTimed+2])}

	conv, spawnJob, spawnPlain, err := jobParts(root, n*jobsPerPipeline/4)
	if err != nil {
		return err
	}

	fmt.Printf("== jobs: blocks of %d sequential steps inside one pipeline, timed by its shell, per step (%d runs, block order rotated)\n", jobsPerPipeline, n*nTimed)
	fmt.Printf("  plain step: /bin/true                          %s\n", st[0])
	fmt.Printf("  refci job jN -- true                           %s\n", st[1])
	fmt.Printf("  refci job (usage error: the client's start)    %s\n", st[2])
	fmt.Printf("  floor: a Go program that only runs /bin/true   %s\n", st[3])
	fmt.Printf("  in-shell: refci_job sN -- /bin/true            %s\n", st[4])
	fmt.Printf("  ratio in-shell job / plain step (medians): %.2f  (target: <= 1.5)\n", float64(shj)/float64(plain))
	fmt.Printf("  ratio refci job / plain step (medians): %.2f\n", float64(job)/float64(plain))
	fmt.Printf("  ratio floor / plain step: %.2f (the least any job client in Go can cost: its own start, then CMD's)\n", float64(fl)/float64(plain))
	fmt.Printf("  whole refci run, 20 × /bin/true                %s\n", w[0])
	fmt.Printf("  whole refci run, 20 × refci job jN -- true     %s\n", w[1])
	fmt.Printf("  whole refci run, 20 × refci_job sN (in-shell)  %s\n", w[2])
	fmt.Printf("  ratio 20-job pipeline / 20 plain steps (whole refci run, medians): refci job %.2f, in-shell %.2f\n", float64(w[1].median)/float64(w[0].median), float64(w[2].median)/float64(w[0].median))
	fmt.Printf("  where a job's time goes (medians):\n")
	fmt.Printf("    the shell's fork+exec of the client, Go runtime start, exit  %s  (a usage error; /bin/true: %s)\n", ms(client), ms(plain))
	fmt.Printf("    socket conversation, no command (dial, start/run, end/done)  %s  (in process, real job socket and file log)\n", ms(conv.median))
	fmt.Printf("    RunJobCommand of true in process (conversation+spawn+wait)   %s  (exec of true from Go: %s)\n", ms(spawnJob.median), ms(spawnPlain.median))
	fmt.Printf("    left (signal set-up, the first use of the runtime's parts)    %s\n\n", ms(job-client-spawnJob.median))
	return nil
}

// benchJobRun is a jobsock.Run with file logs, as the worker's.
type benchJobRun struct{ dir string }

func (r benchJobRun) OpenLog(name string) (jobsock.Log, error) {
	return os.OpenFile(filepath.Join(r.dir, name+".log"), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
}
func (benchJobRun) Secret(string) ([]byte, error) { return nil, fmt.Errorf("no secrets here") }
func (benchJobRun) HoldsSecret(string) bool       { return false }

// jobParts times, in this process against a real job socket, a job's
// conversation with no command, RunJobCommand of true, and exec of true.
func jobParts(root string, n int) (conv, spawnJob, spawnPlain stats, err error) {
	dir := filepath.Join(root, "parts")
	if err = os.Mkdir(dir, 0o700); err != nil {
		return
	}
	sock := filepath.Join(dir, "sock")
	srv, err := jobsock.NewServer(jobsock.Config{SocketPath: sock, Run: benchJobRun{dir}})
	if err != nil {
		return
	}
	defer srv.Close()
	getenv := func(k string) string {
		if k == "REFCI_SOCKET" {
			return sock
		}
		return ""
	}
	truePath, err := exec.LookPath("true")
	if err != nil {
		return
	}
	var convT, jobT, plainT []time.Duration
	for i := range n {
		t0 := time.Now()
		if err = converse(sock, fmt.Sprintf("c%d", i)); err != nil {
			return
		}
		convT = append(convT, time.Since(t0))
		t0 = time.Now()
		if code := jobclient.RunJobCommand(context.Background(), []string{fmt.Sprintf("r%d", i), "--", truePath}, getenv, io.Discard, io.Discard); code != 0 {
			err = fmt.Errorf("refci job r%d -- true: exit %d", i, code)
			return
		}
		jobT = append(jobT, time.Since(t0))
		t0 = time.Now()
		var out bytes.Buffer
		c := exec.Command(truePath)
		c.Stdout, c.Stderr = &out, &out
		if err = c.Run(); err != nil {
			return
		}
		plainT = append(plainT, time.Since(t0))
	}
	return summarise(convT), summarise(jobT), summarise(plainT), nil
}

// converse runs one job's conversation with no command on the socket:
// start, run, end (exit 0), done.
func converse(sock, name string) error {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	for _, x := range [][2]string{
		{`{"op":"start","name":"` + name + `"}`, `{"op":"run"}`},
		{`{"op":"end","exit_code":0}`, `{"op":"done"}`},
	} {
		if _, err := io.WriteString(c, x[0]+"\n"); err != nil {
			return err
		}
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		if strings.TrimSpace(line) != x[1] {
			return fmt.Errorf("job socket: sent %s, got %s, want %s", x[0], line, x[1])
		}
	}
	return nil
}

// floorProgram is the floor pipeline's step: the least a job client in
// Go does, start and run CMD, without talking to anyone.
const floorProgram = `package main

import (
	"os"
	"syscall"
)

func main() {
	pid, err := syscall.ForkExec(os.Args[1], os.Args[1:], &syscall.ProcAttr{Env: os.Environ(), Files: []uintptr{0, 1, 2}})
	if err != nil {
		os.Exit(127)
	}
	var ws syscall.WaitStatus
	syscall.Wait4(pid, &ws, 0, nil)
	os.Exit(ws.ExitStatus())
}
`

// buildFloor builds floorProgram (static, stripped, as refci-job is).
func buildFloor(root string) (string, error) {
	dir := filepath.Join(root, "floor")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", err
	}
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module floor\n\ngo 1.22\n"), 0o644)
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(floorProgram), 0o644); err != nil {
		return "", err
	}
	exe := filepath.Join(dir, "floor")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", exe, ".")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the floor program: %v\n%s", err, out)
	}
	return exe, nil
}
