package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/gitlabapi"
	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// refci mirror with kind = "gitlab" shows a real result ref on the GitLab
// stand-in (answering with GitLab's recorded payloads): the commit
// status refci/<request> in GitLab's words, and one note on the open
// merge request whose head is the run's commit, edited in place at the
// next run; a system note quoting nothing of refci's and the token file's
// secret stay where they are.
func TestMirrorToGitLab(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("REFCI_HOME", filepath.Join(dir, "home"))
	const secret = "glpat-3f9a1c0b2d4e-secret"
	gl := gitlabapi.New(t, "group/sub/app", secret)
	tok := writeToken(t, dir, "token", secret, 0o600)
	bare := fixtures.BareRepo(t, "app.git")
	repo, err := gitproto.Open(bare)
	if err != nil {
		t.Fatal(err)
	}
	head := resultcommit.Commit(t, repo, map[string]string{"README": "x"}, "change", nil).String()
	gl.AddMergeRequest(gitlabapi.MergeRequest{IID: 4, SHA: head, Open: true, Title: "Draft: change"})
	gl.AddNote(4, "added 1 commit", true)
	run1 := &queue.Status{Format: queue.Format, State: queue.Failure, Target: head, Request: "ci", Run: queue.NewRunID(time.Now().Add(-time.Minute)),
		Attempt: 1, Worker: strings.Repeat("ab", 20), Started: time.Now().Add(-time.Minute).UTC(), Reason: "the pipeline exited 2",
		Jobs: []queue.Job{}, Artifacts: []queue.Artifact{}, ExitCode: queue.IntPtr(2)}
	resultcommit.Write(t, repo, run1, gitproto.ZeroHash, nil, map[string]string{queue.LogFile: "step 1\nit broke\n"})

	cfg := filepath.Join(dir, "mirror.toml")
	body := fmt.Sprintf("poll = \"50ms\"\n[[forge]]\nkind = \"gitlab\"\nrepo = \"group/sub/app\"\nremote = %q\ntoken_file = %q\nbase_url = %q\n", bare, tok, gl.URL)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	mirror := startProc(t, os.Environ(), "mirror", "--config", cfg)
	out := mirror.out

	ours := func() []gitlabapi.Note {
		var n []gitlabapi.Note
		for _, x := range gl.Notes(4) {
			if !x.System {
				n = append(n, x)
			}
		}
		return n
	}
	fixtures.WaitFor(t, time.Minute, "the failed status and the note on GitLab", func() bool {
		sts := gl.Statuses(head)
		n := ours()
		return len(sts) > 0 && sts[len(sts)-1].Name == "refci/ci" && sts[len(sts)-1].State == "failed" &&
			len(n) == 1 && strings.Contains(n[0].Body, "it broke")
	})
	// A second run: the same note, edited.
	run2 := &queue.Status{Format: queue.Format, State: queue.Success, Target: head, Request: "lint", Run: queue.NewRunID(time.Now().Add(-time.Second)),
		Attempt: 1, Worker: strings.Repeat("ab", 20), Started: time.Now().Add(-time.Second).UTC(), Jobs: []queue.Job{}, Artifacts: []queue.Artifact{}, ExitCode: queue.IntPtr(0)}
	resultcommit.Write(t, repo, run2, gitproto.ZeroHash, nil, nil)
	fixtures.WaitFor(t, time.Minute, "refci/lint and the edited note", func() bool {
		var lint bool
		for _, s := range gl.Statuses(head) {
			lint = lint || s.Name == "refci/lint" && s.State == "success"
		}
		n := ours()
		return lint && len(n) == 1 && strings.Contains(n[0].Body, "`lint`") && strings.Contains(n[0].Body, "it broke")
	})
	if n := gl.Notes(4); len(n) != 2 || !n[0].System || n[0].Body != "added 1 commit" {
		t.Errorf("notes %+v; want the system note untouched and refci's one", n)
	}
	for _, c := range gl.Calls() {
		if !strings.HasPrefix(strings.SplitN(c, " ", 2)[1], "/api/v4/projects/group%2Fsub%2Fapp/") {
			t.Errorf("a call outside the project's URL-encoded path: %s", c)
		}
	}
	if code := mirror.exit(t); code != 0 {
		t.Errorf("exit %d:\n%s", code, out.String())
	}
	if strings.Contains(out.String(), secret) {
		t.Errorf("the token was printed:\n%s", out.String())
	}
}
