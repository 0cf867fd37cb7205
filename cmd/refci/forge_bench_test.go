package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	giteafix "refci.dev/refci/fixtures/gitea"
	"refci.dev/refci/fixtures/githubapi"
	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// BenchmarkResultToGiteaStatus measures, with refci mirror's default
// settings, the time from a result landing on the remote (its run ref
// set) to its status being visible on a real Gitea (read back with the
// API every 10 ms), one result after the other. make bench runs it.
func BenchmarkResultToGiteaStatus(b *testing.B) {
	srv := giteafix.Shared(b)
	r := srv.NewRepo(b)
	bare := fixtures.BareRepo(b, "app.git")
	repo, err := gitproto.Open(bare)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	b.Setenv("REFCI_HOME", filepath.Join(dir, "home"))
	tok := writeToken(b, dir, "token", r.Token, 0o600)
	cfg := filepath.Join(dir, "mirror.toml")
	body := fmt.Sprintf("[[forge]]\nkind = \"gitea\"\nrepo = %q\nremote = %q\ntoken_file = %q\nbase_url = %q\n", r.FullName(), bare, tok, srv.URL)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		b.Fatal(err)
	}
	mirror := startProc(b, os.Environ(), "mirror", "--config", cfg)
	out := mirror.out
	head := r.Push(b, "main", "base")
	// The commit must be in the remote for nothing: statuses name any
	// commit Gitea has; results are written straight into the remote.
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req := fmt.Sprintf("bench-%d", i)
		st := &queue.Status{Format: queue.Format, State: queue.Success, Target: head, Request: req, Run: queue.NewRunID(time.Now()),
			Attempt: 1, Worker: strings.Repeat("ef", 20), Started: time.Now().UTC(), Jobs: []queue.Job{}, Artifacts: []queue.Artifact{}}
		t0 := time.Now()
		resultcommit.Write(b, repo, st, gitproto.ZeroHash, nil, nil)
		for r.Latest(b, head)["refci/"+req].State != "success" {
			if time.Since(t0) > time.Minute {
				b.Fatalf("no status after a minute:\n%s", out.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "p99-ms")
	mirror.exit(b)
}

// BenchmarkAPICallsPerRun counts what refci mirror sends a forge (GitHub's
// API stood in for) per run of a request on a pull request's head: each
// run shows running, then its end. Goals: at most 2 status calls per
// context per run, 1 comment call per change.
func BenchmarkAPICallsPerRun(b *testing.B) {
	gh := githubapi.New(b, "org", "app", "tok")
	bare := fixtures.BareRepo(b, "app.git")
	repo, err := gitproto.Open(bare)
	if err != nil {
		b.Fatal(err)
	}
	head := resultcommit.Commit(b, repo, map[string]string{"f": "x"}, "change", nil).String()
	gh.AddPull(githubapi.Pull{Number: 1, Head: head, Open: true})
	dir := b.TempDir()
	b.Setenv("REFCI_HOME", filepath.Join(dir, "home"))
	tok := writeToken(b, dir, "token", "tok", 0o600)
	cfg := filepath.Join(dir, "mirror.toml")
	body := fmt.Sprintf("[[forge]]\nkind = \"github\"\nrepo = \"org/app\"\nremote = %q\ntoken_file = %q\nbase_url = %q\n", bare, tok, gh.URL)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		b.Fatal(err)
	}
	mirror := startProc(b, os.Environ(), "mirror", "--config", cfg)
	out := mirror.out
	wait := func(state string) {
		t0 := time.Now()
		for {
			s := gh.Statuses(head)
			if len(s) > 0 && s[len(s)-1].State == state && len(gh.Comments(1)) == 1 {
				return
			}
			if time.Since(t0) > time.Minute {
				b.Fatalf("no %s status after a minute:\n%s", state, out.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	count := func(method, part string) int {
		n := 0
		for _, c := range gh.Calls() {
			if strings.HasPrefix(c, method+" ") && strings.Contains(c, part) {
				n++
			}
		}
		return n
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		st := &queue.Status{Format: queue.Format, State: queue.Running, Target: head, Request: "ci", Run: queue.NewRunID(time.Now()),
			Attempt: 1, Worker: strings.Repeat("ef", 20), Started: time.Now().UTC(), Jobs: []queue.Job{}, Artifacts: []queue.Artifact{}}
		h := resultcommit.Write(b, repo, st, gitproto.ZeroHash, nil, nil)
		wait("pending")
		fin := *st
		fin.State = queue.Success
		resultcommit.Write(b, repo, &fin, h, nil, nil)
		wait("success")
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(count("POST", "/statuses/"))/n, "status-calls/run")
	b.ReportMetric(float64(count("POST", "/comments")+count("PATCH", "/comments/"))/n, "comment-writes/run")
	b.ReportMetric(float64(count("GET", "/"))/n, "reads/run")
	mirror.exit(b)
}
