package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"refci.dev/refci/queue"
)

// benchServe: refci serve on loopback, driven by stock git over ssh.
//   - push-to-job-start latency: from the start of `git push` of a
//     request until the pipeline's first action (it writes a timestamp),
//     and from the end of the push; beside the same server whose worker
//     polls when a push wakes it (--direct-claims=false), pushed to in
//     turn;
//   - a clone of a 10 MB repository over ssh beside the same clone over
//     file://, interleaved;
//   - 50 concurrent fetches: total time and failures.
func benchServe(_ context.Context, bin string, n int) error {
	n = min(n, 50)
	w, err := newWorld("exit 0\n")
	if err != nil {
		return err
	}
	defer w.close()
	stamp, err := w.stampPipeline("")
	if err != nil {
		return err
	}
	key := filepath.Join(w.root, "admin")
	if _, err := sh(w.root, w.env, "", "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key); err != nil {
		return err
	}
	// Two servers side by side, pushed to in turn: refci serve as it is,
	// whose embedded worker claims a pushed request from the push's own
	// hook (worker.Dispatch), and the same with --direct-claims=false,
	// whose worker's loop is woken by the push and polls.
	data := filepath.Join(w.root, "serve")
	addr, known, stop, err := startServe(bin, w, key, data)
	if err != nil {
		return err
	}
	defer stop()
	baseAddr, baseKnown, baseStop, err := startServe(bin, w, key, filepath.Join(w.root, "serve-poll"), "--direct-claims=false")
	if err != nil {
		return err
	}
	defer baseStop()
	sshCmd := func(known string, mux bool) string {
		c := "GIT_SSH_COMMAND=ssh -i " + key + " -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile=" + known
		if mux {
			c += " -o ControlMaster=auto -o ControlPersist=60 -o ControlPath=" + filepath.Join(w.root, "mux-%C")
		}
		return c
	}
	env := append(append([]string{}, w.env...), sshCmd(known, false))
	url := "ssh://git@" + addr + "/app.git"
	type server struct {
		name     string
		url      string
		env, mux []string
	}
	servers := []server{
		{"refci serve", url, env, append(append([]string{}, w.env...), sshCmd(known, true))},
		{"refci serve --direct-claims=false (the loop, woken by the push)", "ssh://git@" + baseAddr + "/app.git",
			append(append([]string{}, w.env...), sshCmd(baseKnown, false)), append(append([]string{}, w.env...), sshCmd(baseKnown, true))},
	}
	for _, sv := range servers {
		if _, err := sh(w.clone, sv.env, "", "git", "push", "-q", sv.url, "main"); err != nil {
			return err
		}
	}
	muxEnv := servers[0].mux

	// Push-to-job-start latency, with a new ssh connection per push and
	// with one kept open (ControlMaster), as a busy client would; and
	// with one kept open, a new commit in each push (the worker's cache
	// lacks its objects).
	fmt.Printf("== refci serve: push-to-job-start on loopback, %d requests each, stock git over ssh; two servers pushed to in turn\n", n)
	type measures struct{ fromStart, fromEnd, pushes []time.Duration }
	for si, series := range []struct {
		name     string
		mux, new bool
	}{{"new ssh connection per push", false, false}, {"ssh connection kept open (ControlMaster)", true, false}, {"kept open, a new commit in each push", true, true}} {
		got := make([]measures, len(servers))
		for i := 0; i < n; i++ {
			if series.new {
				if _, err := sh(w.clone, w.env, "", "git", "commit", "-q", "--allow-empty", "-m", fmt.Sprintf("change %d", i)); err != nil {
					return err
				}
			}
			for k, sv := range servers {
				name := fmt.Sprintf("s%d-%d-%d", si, k, i)
				env := sv.env
				if series.mux {
					env = sv.mux
				}
				t0 := time.Now()
				if _, err := sh(w.clone, env, "", "git", "push", "-q", sv.url, "HEAD:"+queue.RequestRef(name)); err != nil {
					return err
				}
				t1 := time.Now()
				started, err := waitStarted(stamp, name, t0)
				if err != nil {
					return err
				}
				m := &got[k]
				m.pushes = append(m.pushes, t1.Sub(t0))
				m.fromStart = append(m.fromStart, started.Sub(t0))
				m.fromEnd = append(m.fromEnd, started.Sub(t1))
				time.Sleep(100 * time.Millisecond) // let the run publish before the next push
			}
		}
		fmt.Printf("  %s:\n", series.name)
		for k, sv := range servers {
			m := got[k]
			push, start := summarise(m.pushes), summarise(m.fromStart)
			end := summarise(m.fromEnd)
			fmt.Printf("    %s:\n", sv.name)
			fmt.Printf("      end of git push -> job start:  p50 %s  p90 %s  (goal: p50 <= 5 ms)\n", ms(end.median), ms(end.p90))
			fmt.Printf("      start of git push -> job start: p50 %s  p90 %s\n", ms(start.median), ms(start.p90))
			fmt.Printf("      the git push itself:           %s\n", push)
			fmt.Printf("      push-to-start / the push:      %.2f  (p50s; goal with a kept-open connection: <= 1.15)\n", float64(start.median)/float64(push.median))
		}
	}
	sh(w.clone, muxEnv, "", "ssh", "-o", "ControlPath="+filepath.Join(w.root, "mux-%C"), "-O", "exit", "-p", strings.Split(addr, ":")[1], "git@127.0.0.1")
	// The baseline: a new ssh connection that does nothing but start
	// upload-pack and hang up.
	var bare []time.Duration
	for i := 0; i < 15; i++ {
		t0 := time.Now()
		sh(w.clone, env, "", "git", "ls-remote", url, "refs/nothing")
		bare = append(bare, time.Since(t0))
	}
	fmt.Printf("  baseline: git ls-remote over a new ssh connection: %s\n", summarise(bare))

	// A 10 MB repository: clone over ssh beside file://.
	big := filepath.Join(w.root, "big")
	if _, err := sh(w.root, w.env, "", "git", "init", "-q", "-b", "main", big); err != nil {
		return err
	}
	for i := 0; i < 10; i++ {
		b := make([]byte, 1<<20)
		rand.Read(b)
		os.WriteFile(filepath.Join(big, fmt.Sprintf("blob%d", i)), b, 0o644)
	}
	for _, a := range [][]string{{"add", "-A"}, {"commit", "-q", "-m", "10 MB"}, {"push", "-q", "ssh://git@" + addr + "/big.git", "main"}} {
		if _, err := sh(big, env, "", "git", a...); err != nil {
			return err
		}
	}
	var overSSH, overFile []time.Duration
	for i := 0; i < 5; i++ {
		for _, u := range []string{"ssh://git@" + addr + "/big.git", "file://" + filepath.Join(data, "repos", "big.git")} {
			dst := filepath.Join(w.root, fmt.Sprintf("clone-%d", i))
			os.RemoveAll(dst)
			t0 := time.Now()
			if _, err := sh(w.root, env, "", "git", "clone", "-q", "--no-checkout", u, dst); err != nil {
				return err
			}
			if strings.HasPrefix(u, "ssh") {
				overSSH = append(overSSH, time.Since(t0))
			} else {
				overFile = append(overFile, time.Since(t0))
			}
			os.RemoveAll(dst)
		}
	}
	fmt.Println("== clone of a 10 MB repository (incompressible), median of 5, interleaved")
	fmt.Printf("  over ssh (refci serve):  %s\n", summarise(overSSH))
	fmt.Printf("  over file://:            %s  (ratio %.2f)\n", summarise(overFile), float64(summarise(overSSH).median)/float64(summarise(overFile).median))

	// 50 concurrent fetches of app.git into fresh repositories.
	const conc = 50
	dirs := make([]string, conc)
	for i := range dirs {
		dirs[i] = filepath.Join(w.root, fmt.Sprintf("f%d", i))
	}
	fetchAll := func(u string) (time.Duration, []time.Duration, int, error) {
		for _, d := range dirs {
			os.RemoveAll(d)
			if _, err := sh(w.root, w.env, "", "git", "init", "-q", "--bare", d); err != nil {
				return 0, nil, 0, err
			}
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		failures := 0
		var firstErr error
		var each []time.Duration
		t0 := time.Now()
		for i := 0; i < conc; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := time.Now()
				_, err := sh(dirs[i], env, "", "git", "fetch", "-q", u, "+refs/heads/*:refs/heads/*", "+"+queue.Namespace+"*:"+queue.Namespace+"*")
				mu.Lock()
				defer mu.Unlock()
				each = append(each, time.Since(s))
				if err != nil {
					failures++
					if firstErr == nil {
						firstErr = err
					}
				}
			}()
		}
		wg.Wait()
		return time.Since(t0), each, failures, firstErr
	}
	fmt.Printf("== %d concurrent fetches of app.git (%d refs), beside the same over file://\n", conc, countRefs(filepath.Join(data, "repos", "app.git"), w.env))
	for _, u := range []string{url, "file://" + filepath.Join(data, "repos", "app.git")} {
		total, each, failures, firstErr := fetchAll(u)
		if firstErr != nil && failures == conc {
			return firstErr
		}
		kind := "ssh:    "
		if strings.HasPrefix(u, "file") {
			kind = "file://:"
		}
		fmt.Printf("  %s all done in %s, %d failed; each: %s\n", kind, ms(total), failures, summarise(each))
		if firstErr != nil {
			fmt.Printf("  first failure: %v\n", firstErr)
		}
	}
	fmt.Println()
	return nil
}

// startServe starts refci serve on a free loopback port with key as its
// admin and data as its data directory, and returns its address, a
// known_hosts file for it and how to stop it.
func startServe(bin string, w *world, key, data string, args ...string) (addr, known string, stop func(), err error) {
	cmd := exec.Command(bin, append([]string{"serve", "--listen", "127.0.0.1:0", "--admin", key + ".pub", "--data", data}, args...)...)
	cmd.Env = w.env
	logf, err := os.Create(data + ".log")
	if err != nil {
		return "", "", nil, err
	}
	cmd.Stderr = logf
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return "", "", nil, err
	}
	stop = func() { stopWorker(cmd); logf.Close() }
	dir, err := os.MkdirTemp(w.root, "known-")
	if err != nil {
		stop()
		return "", "", nil, err
	}
	if addr, known, err = readBanner(stdout, dir); err != nil {
		stop()
		return "", "", nil, fmt.Errorf("%w (see %s.log)", err, data)
	}
	go io.Copy(io.Discard, stdout)
	return addr, known, stop, nil
}

func countRefs(repo string, env []string) int {
	out, _ := sh(repo, env, "", "git", "for-each-ref", "--format=x")
	return strings.Count(out, "x")
}

var benchListenRe = regexp.MustCompile(`listening on ssh://(127\.0\.0\.1:\d+)`)

// readBanner reads refci serve's start-up output up to the known_hosts
// line and writes that line into a known_hosts file.
func readBanner(r io.Reader, dir string) (addr, known string, err error) {
	sc := bufio.NewScanner(r)
	wantKnown := false
	for sc.Scan() {
		line := sc.Text()
		if m := benchListenRe.FindStringSubmatch(line); m != nil {
			addr = m[1]
		}
		if wantKnown {
			known = filepath.Join(dir, "known_hosts")
			return addr, known, os.WriteFile(known, []byte(strings.TrimSpace(line)+"\n"), 0o600)
		}
		wantKnown = strings.Contains(line, "known_hosts line:")
	}
	return "", "", fmt.Errorf("refci serve did not print its address and host key (see serve.log)")
}
