package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
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
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr fixtures.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"mirror", "--config", cfg}, strings.NewReader(""), &stdout, &stderr) }()

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
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("refci mirror exited %d:\n%s", code, stderr.String())
	}
	if strings.Contains(stderr.String(), "ghp-secret-token") || strings.Contains(stdout.String(), "ghp-secret-token") {
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
