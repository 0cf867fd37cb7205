package mail

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/fixtures/dovecot"
)

// BenchmarkIMAPWakeLatency measures, per delivery into an idle mailbox,
// the time from the delivery (the rename into new/) to Wait returning
// and New returning the message, on a real Dovecot over imaps. It
// reports the median and the 90th percentile over b.N deliveries (make
// bench runs 30).
func BenchmarkIMAPWakeLatency(b *testing.B) {
	s := dovecot.Start(b)
	box := dialBox(b, "imaps://"+s.TLSAddr, s)
	newMail(b, box)
	var lat []time.Duration
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("wake-%d@example.invalid", i)
		waited := waitIdling(b, box, ctx, 10*time.Minute)
		start := time.Now()
		s.Deliver(b, s.User, imapMessage(id, "x"))
		if err := <-waited; err != nil {
			b.Fatal(err)
		}
		envs := newMail(b, box)
		lat = append(lat, time.Since(start))
		if !slices.Equal(envelopeIDs(envs), []string{id}) {
			b.Fatalf("New after delivery %d: %v", i, envs)
		}
	}
	slices.Sort(lat)
	p50, p90 := lat[len(lat)/2], lat[len(lat)*9/10]
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p90.Microseconds())/1000, "p90-ms")
	b.ReportMetric(0, "ns/op")
	b.Logf("delivery to Wait and New returning it, %d deliveries: p50 %s, p90 %s, max %s",
		len(lat), p50.Round(10*time.Microsecond), p90.Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
}

// BenchmarkIMAPIdleCost measures the CPU time (user+system, getrusage
// RUSAGE_SELF) of this process while an IMAPBox watches an empty mailbox
// the way the bridge does (New, then Wait(RecheckInterval), again and
// again) for REFCI_IDLE_COST_SECONDS (default 60), extrapolated to an
// hour, beside the same process only sleeping as long (the baseline),
// and the CPU time of Dovecot's imap process serving the session. It
// measures once, whatever b.N (make bench runs it with -benchtime 1x).
func BenchmarkIMAPIdleCost(b *testing.B) {
	dur := 60 * time.Second
	if v := os.Getenv("REFCI_IDLE_COST_SECONDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("REFCI_IDLE_COST_SECONDS=%q", v)
		}
		dur = time.Duration(n) * time.Second
	}
	s := dovecot.Start(b)
	box := dialBox(b, "imaps://"+s.TLSAddr, s)
	newMail(b, box)
	perHour := func(d time.Duration) float64 {
		return float64(d.Microseconds()) / 1000 * float64(time.Hour) / float64(dur)
	}

	runtime.GC() // neither phase pays for the setup's garbage
	before := cpuTime(b)
	time.Sleep(dur)
	baseline := cpuTime(b) - before

	server := imapProcess(b, s)
	serverBefore := procCPU(b, server)
	runtime.GC()
	before = cpuTime(b)
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	rounds := 0
	for ctx.Err() == nil {
		if _, err := box.New(ctx); err != nil && ctx.Err() == nil {
			b.Fatal(err)
		}
		if err := box.Wait(ctx, RecheckInterval); err != nil && ctx.Err() == nil {
			b.Fatal(err)
		}
		rounds++
	}
	watching := cpuTime(b) - before
	serverCPU := procCPU(b, server) - serverBefore

	b.ReportMetric(perHour(watching), "cpu-ms/h")
	b.ReportMetric(perHour(baseline), "sleep-cpu-ms/h")
	b.ReportMetric(perHour(serverCPU), "dovecot-cpu-ms/h")
	b.ReportMetric(0, "ns/op")
	b.Logf("over %s (%d rounds of New and Wait(%s)): watching %s CPU, only sleeping %s, Dovecot's imap process %s; per hour %.0f ms, %.0f ms, %.0f ms",
		dur, rounds, RecheckInterval, watching, baseline, serverCPU, perHour(watching), perHour(baseline), perHour(serverCPU))
}

// cpuTime is this process's user+system CPU time so far.
func cpuTime(t testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// imapProcess finds the pid of the imap process of the newest session in
// s's log ("mpid=<pid>").
func imapProcess(t testing.TB, s *dovecot.Server) int {
	m := regexp.MustCompile(`mpid=(\d+)`).FindAllStringSubmatch(s.Log(), -1)
	if len(m) == 0 {
		t.Fatal("no session in Dovecot's log")
	}
	pid, _ := strconv.Atoi(m[len(m)-1][1])
	return pid
}

// procCPU is process pid's user+system CPU time, from /proc (in clock
// ticks of 10 ms).
func procCPU(t testing.TB, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	// After the command: state is field 3, utime 14 and stime 15.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}
