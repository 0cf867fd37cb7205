package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/queue"
)

// The commands `refci serve` prints under "Use it", followed literally in
// a repository made by plain `git init` under a HOME without git
// configuration (its branch is master), and in one made on main. The
// first push says it created the repository; a request pushed to a
// mistyped repository name is refused and creates nothing.
func TestServePrintedQuickStartWorksOnAnyBranch(t *testing.T) {
	for _, branch := range []string{"master", "main"} {
		t.Run(branch, func(t *testing.T) {
			sv := startServe(t)
			sv.env = append(sv.env, "PATH="+filepath.Dir(refciBin)+":"+os.Getenv("PATH"))
			dir := filepath.Join(sv.root, "fresh")
			if branch == "main" {
				sv.git("", "init", "-q", "-b", "main", dir)
			} else {
				sv.git("", "init", "-q", dir) // git's default, whatever this git calls it
			}
			if got := sv.git(dir, "symbolic-ref", "--short", "HEAD"); got != branch {
				t.Fatalf("git init made branch %q, want %q (is there git configuration in the test's HOME?)", got, branch)
			}
			_, use, ok := strings.Cut(sv.out.String(), "\nUse it")
			use, _, _ = strings.Cut(use, "\nOther workers")
			if !ok {
				t.Fatalf("no 'Use it' section:\n%s", sv.out.String())
			}
			var cmds []string
			for _, l := range strings.Split(use, "\n")[1:] {
				l, _, _ = strings.Cut(l, "   #")
				if l = strings.TrimSpace(l); l != "" {
					cmds = append(cmds, strings.ReplaceAll(l, "NAME", "first"))
				}
			}
			if len(cmds) != 5 {
				t.Fatalf("want 5 commands, got %q", cmds)
			}
			for i, c := range cmds {
				cmd := exec.Command("sh", "-c", c)
				cmd.Dir, cmd.Env = dir, sv.env
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("%s: %v\n%s", c, err, out)
				}
				if i == 2 && !strings.Contains(string(out), "refci: created repository app.git") {
					t.Errorf("the first push does not say it created the repository:\n%s", out)
				}
				if i == 3 { // the request: wait for its result before fetching
					if st := sv.waitFinal("app.git", "first", 60*time.Second); st.State != queue.Success {
						t.Fatalf("the starter pipeline: %+v", st)
					}
				}
				if i == 4 && !strings.Contains(string(out), "SUCCESS") {
					t.Errorf("refci status after the quick start:\n%s", out)
				}
			}
			// A request pushed to a mistyped name is refused, and no
			// repository is made for it.
			out := sv.gitErr(dir, "push", sv.url("ap.git"), "HEAD:refs/ci/requests/typo")
			for _, want := range []string{"repository ap.git does not exist (repositories you may read here: app.git)", "git push REMOTE HEAD"} {
				if !strings.Contains(out, want) {
					t.Errorf("the refusal lacks %q:\n%s", want, out)
				}
			}
			if _, err := os.Stat(sv.bare("ap.git")); err == nil {
				t.Errorf("a request created ap.git")
			}
			if b := sv.git(sv.bare("app.git"), "for-each-ref", "--format=%(refname)", "refs/heads/"); b != "refs/heads/"+branch {
				t.Errorf("the served repository's branches: %q, want refs/heads/%s", b, branch)
			}
		})
	}
}
