package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	giteafix "refci.dev/refci/fixtures/gitea"
	"refci.dev/refci/fixtures/githubapi"
	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/forge"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// refci mirror with a [[forge]] of kind github (GitHub's API stood in for,
// as published) and pull_requests = true: an open pull request becomes
// the request pr/<N> at its head on the remote, unsigned; once a worker
// has run it, the forge shows its status and one comment on the pull
// request; a closed pull request's request is deleted.
func TestMirrorOnGitHubTakesPullRequestsIn(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("REFCI_HOME", filepath.Join(dir, "home"))
	gh := githubapi.New(t, "org", "app", "ghp-secret-token")
	tok := writeToken(t, dir, "token", "ghp-secret-token", 0o600)

	// The forge's repository as GitHub keeps it: main, and the pull
	// request's head under refs/pull/7/head.
	bare := fixtures.BareRepo(t, "app.git")
	work := fixtures.NewRepo(t)
	fixtures.CommitAll(t, work, "base")
	fixtures.Git(t, work, "push", "-q", bare, "HEAD:refs/heads/main")
	fixtures.WriteFile(t, work, "f", "change", 0o644)
	head := fixtures.CommitAll(t, work, "the change")
	fixtures.Git(t, work, "push", "-q", bare, "HEAD:"+forge.GitHubHeadRef(7))
	gh.AddPull(githubapi.Pull{Number: 7, Head: head, Open: true, Title: "the change", HeadRepo: "someone/app"})

	cfg := filepath.Join(dir, "mirror.toml")
	body := fmt.Sprintf(`poll = "50ms"
[[forge]]
kind = "github"
repo = "org/app"
remote = %q
token_file = %q
base_url = %q
pull_requests = true
pull_request_poll = "100ms"
`, bare, tok, gh.URL)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	mirror := startProc(t, os.Environ(), "mirror", "--config", cfg)

	requestOf := func(name string) string {
		out, err := fixtures.RunGit(bare, nil, nil, "rev-parse", "--verify", "--quiet", queue.RequestRef(name)+"^{commit}")
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(out))
	}
	fixtures.WaitFor(t, time.Minute, "the pull request to be taken in", func() bool { return requestOf("pr/7") == head })
	if tag := fixtures.Git(t, bare, "cat-file", "tag", queue.RequestRef("pr/7")); strings.Contains(tag, "PGP SIGNATURE") {
		t.Errorf("the request of a fork's pull request is signed:\n%s", tag)
	}

	// A worker ran it (its result, as a worker pushes it) and failed.
	repo, err := gitproto.Open(bare)
	if err != nil {
		t.Fatal(err)
	}
	st := &queue.Status{Format: queue.Format, State: queue.Failure, Target: head, Request: "pr/7", Run: queue.NewRunID(time.Now()),
		Attempt: 1, Worker: strings.Repeat("cd", 20), Started: time.Now().UTC(), Reason: "the pipeline exited 1",
		Jobs: []queue.Job{}, Artifacts: []queue.Artifact{}, ExitCode: queue.IntPtr(1)}
	resultcommit.Write(t, repo, st, gitproto.ZeroHash, nil, map[string]string{queue.LogFile: "go test ./...\nFAIL: TestThing\n"})
	fixtures.Git(t, bare, "update-ref", "-d", queue.RequestRef("pr/7"))

	fixtures.WaitFor(t, time.Minute, "the status and the comment", func() bool {
		sts := gh.Statuses(head)
		return len(sts) > 0 && sts[len(sts)-1].State == "failure" && len(gh.Comments(7)) == 1
	})
	sts := gh.Statuses(head)
	if last := sts[len(sts)-1]; last.Context != "refci/pr/7" {
		t.Errorf("status context %q, want refci/pr/7", last.Context)
	}
	c := gh.Comments(7)[0].Body
	for _, want := range []string{forge.CommentMarker, "FAIL: TestThing", "git fetch"} {
		if !strings.Contains(c, want) {
			t.Errorf("the comment lacks %q:\n%s", want, c)
		}
	}
	if requestOf("pr/7") != "" {
		t.Error("a pull request that ran was asked for again")
	}

	// Another pull request, closed before it ran: its request is deleted
	// (a worker running it cancels the run).
	fixtures.WriteFile(t, work, "f", "again", 0o644)
	head2 := fixtures.CommitAll(t, work, "again")
	fixtures.Git(t, work, "push", "-q", "-f", bare, "HEAD:"+forge.GitHubHeadRef(8))
	gh.AddPull(githubapi.Pull{Number: 8, Head: head2, Open: true})
	fixtures.WaitFor(t, time.Minute, "pull request 8 to be taken in", func() bool { return requestOf("pr/8") == head2 })
	gh.ClosePull(8)
	fixtures.WaitFor(t, time.Minute, "the closed pull request's request to be deleted", func() bool { return requestOf("pr/8") == "" })
	if code := mirror.exit(t); code != 0 {
		t.Errorf("refci mirror exited %d:\n%s", code, mirror.out.String())
	}
	if strings.Contains(mirror.out.String(), "ghp-secret-token") {
		t.Error("the token was printed")
	}
}

// A worker with a [[forge]] entry shows its own runs on the forge (here
// GitHub's API stood in for): a running status, then the failure, and one
// comment on the pull request whose head the run's commit is.
func TestWorkerShowsItsRunsOnGitHub(t *testing.T) {
	f := newFleet(t, "echo compiling\necho 'main.go:3: it broke' >&2\nexit 1\n")
	head := f.git(f.repo, "rev-parse", "HEAD")
	gh := githubapi.New(t, "org", "app", "ghp-worker-token")
	gh.AddPull(githubapi.Pull{Number: 3, Head: head, Open: true})
	dir := t.TempDir()
	tok := writeToken(t, dir, "token", "ghp-worker-token", 0o600)
	cfg := filepath.Join(dir, "worker.toml")
	body := fmt.Sprintf("remotes = [%q]\n[[forge]]\nkind = \"github\"\nrepo = \"org/app\"\ntoken_file = %q\nbase_url = %q\n", "file://"+f.bare, tok, gh.URL)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	w := f.startWorker("a", "--config", cfg)
	f.git(f.repo, "push", "-q", "origin", "HEAD:refs/ci/requests/ci")
	fixtures.WaitFor(t, 2*time.Minute, "the failure on the forge and the comment", func() bool {
		s := gh.Statuses(head)
		c := gh.Comments(3)
		return len(s) > 0 && s[len(s)-1].State == "failure" && len(c) == 1 && strings.Contains(c[0].Body, "it broke")
	})
	if s := gh.Statuses(head); s[0].Context != "refci/ci" || len(s) > 2 {
		t.Errorf("statuses %+v; want at most pending and failure of refci/ci", s)
	}
	f.stopAll()
	w.Wait()
	f.mu.Lock()
	log := f.logs[0].String()
	f.mu.Unlock()
	if strings.Contains(log, "ghp-worker-token") {
		t.Error("the worker logged the token")
	}
}

// A worker whose remote is a real Gitea, with a [[forge]] entry for it and
// pull_requests = true: the pull request becomes a request, runs, and
// shows on Gitea as a pending status; Gitea is stopped in the middle of
// the run, so the result can be neither pushed nor shown; once Gitea is
// back, the result lands and Gitea shows the failure and one comment
// with its log. Nothing is lost, nothing is posted twice.
func TestWorkerOnRealGiteaSurvivesARestart(t *testing.T) {
	srv := giteafix.Start(t) // its own: it is restarted
	r := srv.NewRepo(t)
	url := r.PushURL()
	side := t.TempDir()
	work := fixtures.NewRepo(t)
	fixtures.WriteFile(t, work, ".refci/run", fmt.Sprintf(`#!/bin/sh
touch %[1]s/started
while [ ! -e %[1]s/go ]; do sleep 0.1; done
echo "FAIL: TestCheckout (0.01s)"
touch %[1]s/ended
exit 1
`, side), 0o755)
	fixtures.CommitAll(t, work, "the pipeline")
	fixtures.Git(t, work, "push", "-q", url, "HEAD:refs/heads/main")
	fixtures.WriteFile(t, work, "f", "change", 0o644)
	head := fixtures.CommitAll(t, work, "the change")
	fixtures.Git(t, work, "push", "-q", url, "HEAD:refs/heads/topic")
	pr := r.OpenPullRequest(t, "topic", "main", "the change")

	s := newSandbox(t)
	dir := t.TempDir()
	tok := writeToken(t, dir, "token", r.Token, 0o600)
	cfg := filepath.Join(dir, "worker.toml")
	body := fmt.Sprintf(`remotes = [%q]
poll = "200ms"
[[forge]]
kind = "gitea"
repo = %q
token_file = %q
base_url = %q
pull_requests = true
pull_request_poll = "200ms"
`, url, r.FullName(), tok, srv.URL)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	var log fixtures.Buffer
	w := exec.Command(refciBin, "worker", "--config", cfg, "--lease", "5s")
	w.Env = append(append([]string{}, s.env...), "REFCI_HOME="+filepath.Join(s.root, "worker"))
	w.Stdout, w.Stderr = &log, &log
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			w.Process.Signal(syscall.SIGTERM)
			w.Wait()
		}
		if t.Failed() {
			t.Logf("worker log:\n%s", log.String())
		}
	})
	exists := func(name string) func() bool {
		return func() bool { _, err := os.Stat(filepath.Join(side, name)); return err == nil }
	}
	statusCtx := fmt.Sprintf("refci/pr/%d", pr)
	fixtures.WaitFor(t, 2*time.Minute, "the pull request's run to start", exists("started"))
	fixtures.WaitFor(t, time.Minute, "Gitea to show the run as pending", func() bool { return r.Latest(t, head)[statusCtx].State == "pending" })

	srv.Stop(t)
	os.WriteFile(filepath.Join(side, "go"), nil, 0o644)
	fixtures.WaitFor(t, time.Minute, "the pipeline to end while Gitea is down", exists("ended"))
	srv.Restart(t)

	fixtures.WaitFor(t, 2*time.Minute, "Gitea to show the failure and the comment", func() bool {
		c := r.Comments(t, pr)
		return r.Latest(t, head)[statusCtx].State == "failure" && len(c) == 1 && strings.Contains(c[0].Body, "FAIL: TestCheckout")
	})
	n := 0
	for _, st := range r.Statuses(t, head) {
		if st.Context == statusCtx {
			n++
		}
	}
	if n > 2 {
		t.Errorf("%d statuses of %s, want pending then failure, each once", n, statusCtx)
	}
	w.Process.Signal(syscall.SIGTERM)
	w.Wait()
	stopped = true
	if strings.Contains(log.String(), r.Token) {
		t.Error("the worker logged the token")
	}
	if c := r.Comments(t, pr); len(c) != 1 {
		t.Errorf("%d comments on the pull request, want 1", len(c))
	}
}
