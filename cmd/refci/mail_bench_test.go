package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
)

// BenchmarkMailDeliveryToReply measures, with a real `refci worker`
// running [mail] beside its worker on a real Dovecot (IMAP IDLE over
// TLS) and go-smtp's server as the sink, the time from a one-patch mail
// landing in the mailbox to its reply reaching the sink, for a trivial
// pipeline; one mail after the other. make bench runs it:
//
//	go test -run '^$' -bench MailDeliveryToReply -benchtime 5x ./cmd/refci
func BenchmarkMailDeliveryToReply(b *testing.B) {
	w := newMailWorld(b)
	cfg := filepath.Join(w.root, "worker.toml")
	body := fmt.Sprintf("remotes = [%q]\n", "file://"+w.bare) + w.mailTable("imaps://"+w.dv.TLSAddr, "")
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		b.Fatal(err)
	}
	env := append(append([]string{}, w.env...), "REFCI_HOME="+filepath.Join(w.root, "home"))
	wk := startProc(b, env, "worker", "--config", cfg)
	fixtures.WaitFor(b, time.Minute, "the worker's mail bridge to start", func() bool { return strings.Contains(wk.out.String(), "mail bridge started") })
	patch := w.series("bench", nil, map[string]string{"bench.txt": "benchmarked\n"})[0]
	subjRe := regexp.MustCompile(`(?m)^Subject: \[PATCH\] .*$`)
	var took []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Each mail is a series of its own: its own Message-ID and title.
		raw := subjRe.ReplaceAll(patch, []byte(fmt.Sprintf("Message-ID: <bench-%d-%d@example.invalid>\nSubject: [PATCH] bench: change number %d", i, time.Now().UnixNano(), i)))
		if bytes.Equal(raw, patch) {
			b.Fatal("the patch's subject was not found")
		}
		start := time.Now()
		w.deliver(raw)
		fixtures.WaitForShowing(b, 2*time.Minute, "the reply", func() bool { return len(w.sink.got()) > i }, func() string { return wk.out.String() })
		took = append(took, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "max-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkMailIdleCost measures the CPU a `refci mail` costs while it
// watches an empty mailbox (a real Dovecot, IMAP IDLE over TLS) for a
// remote no worker serves, over a window of a minute (one IDLE restart
// and re-search, two looks at the runs), extrapolated to an hour; beside
// it, as the baseline, an idle `refci worker` polling the same remote
// at its default interval, measured over the same window. The CPU is
// the process's threads' (schedstat, in ns) and its children's (git),
// make bench runs it once:
//
//	go test -run '^$' -bench MailIdleCost -benchtime 1x ./cmd/refci
func BenchmarkMailIdleCost(b *testing.B) {
	w := newMailWorld(b)
	cfgFile := filepath.Join(w.root, "mail.toml")
	body := fmt.Sprintf("state = %q\n", filepath.Join(w.root, "state")) + w.mailTable("imaps://"+w.dv.TLSAddr, fmt.Sprintf("remote = %q\n", "file://"+w.bare))
	if err := os.WriteFile(cfgFile, []byte(body), 0o644); err != nil {
		b.Fatal(err)
	}
	env := append(append([]string{}, w.env...), "REFCI_HOME="+filepath.Join(w.root, "home"))
	bridge := startProc(b, env, "mail", "--config", cfgFile)
	worker := startProc(b, append(append([]string{}, w.env...), "REFCI_HOME="+filepath.Join(w.root, "worker-home")), "worker", "--remote", "file://"+w.bare)
	fixtures.WaitFor(b, time.Minute, "both to start", func() bool {
		return strings.Contains(bridge.out.String(), "mail bridge started") && strings.Contains(worker.out.String(), "worker started")
	})
	const window = time.Minute
	b.ResetTimer()
	var mailCPU, workerCPU time.Duration
	for i := 0; i < b.N; i++ {
		m0, w0 := cpuOf(b, bridge.cmd.Process.Pid), cpuOf(b, worker.cmd.Process.Pid)
		time.Sleep(window) // the measurement itself: the window watched
		mailCPU += cpuOf(b, bridge.cmd.Process.Pid) - m0
		workerCPU += cpuOf(b, worker.cmd.Process.Pid) - w0
	}
	b.StopTimer()
	perHour := func(d time.Duration) float64 {
		return (d / time.Duration(b.N)).Seconds() * float64(time.Hour/window)
	}
	b.ReportMetric(perHour(mailCPU), "mail-cpu-s/h")
	b.ReportMetric(perHour(workerCPU), "idle-worker-cpu-s/h")
	b.ReportMetric(0, "ns/op")
	if n := len(w.sink.got()); n != 0 {
		b.Errorf("%d replies to an empty mailbox", n)
	}
}

// cpuOf is the CPU time used so far by the process pid's threads
// (their schedstat run time, in ns) and by its children waited for
// (cutime and cstime, in clock ticks of 10 ms).
func cpuOf(t testing.TB, pid int) time.Duration {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no threads of %d: %v", pid, err)
	}
	var total time.Duration
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // a thread that ended
		}
		ns, _ := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64)
		total += time.Duration(ns)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command's name, which is in parentheses:
	// cutime and cstime are fields 16 and 17 of the whole line.
	rest := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	cu, _ := strconv.ParseInt(rest[13], 10, 64)
	cs, _ := strconv.ParseInt(rest[14], 10, 64)
	return total + time.Duration(cu+cs)*10*time.Millisecond
}
