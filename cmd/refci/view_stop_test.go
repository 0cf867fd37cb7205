package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// siteFiles is every file of a site but its manifest's, with its content.
func siteFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "manifest.json" || strings.HasPrefix(rel, "manifest-runs-") {
			return nil
		}
		raw, err := os.ReadFile(p)
		files[rel] = string(raw)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// refci view killed (SIGKILL) in the middle of a build, the full one or
// an incremental one, leaves a site that the next refci view takes up:
// it then holds the same files as a site built at once.
func TestViewKilledMidBuild(t *testing.T) {
	s := newSandbox(t)
	target := s.pipeline("true\n")
	repo, err := gitproto.Open(filepath.Join(s.repo, ".git"))
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now().UTC().Add(-24 * time.Hour).Truncate(time.Second)
	var refs []string
	add := func(from, to int) {
		for i := from; i < to; i++ {
			st := finished(target, fmt.Sprintf("r%d", i%3), strings.Repeat("AB", 20), []queue.State{queue.Success, queue.Failure}[i%5/4], base.Add(time.Duration(i)*time.Minute))
			c := resultcommit.Result(t, repo, st, gitproto.ZeroHash, nil, map[string]string{queue.LogFile: "output\n"})
			ref := queue.RunRef(st.Target, st.Run)
			if err := repo.UpdateRef(ref, c, gitproto.ZeroHash); err != nil {
				t.Fatal(err)
			}
			refs = append(refs, ref)
		}
	}
	out := filepath.Join(s.root, "site")
	runDirs := func() int {
		ents, _ := os.ReadDir(filepath.Join(out, "runs", target))
		return len(ents)
	}
	killed := 0
	// killAt starts refci view and kills it once the site has at least
	// n run directories (or it has ended), then builds again.
	killAt := func(n int) {
		t.Helper()
		bg := startRefci(t, s.repo, s.env, "view", "-o", out)
		fixtures.WaitFor(t, 2*time.Minute, fmt.Sprintf("%d run directories", n), func() bool {
			select {
			case <-bg.done:
				return true
			default:
				return runDirs() >= n
			}
		})
		if bg.cmd.Process.Kill() == nil {
			killed++
		}
		<-bg.done
	}
	same := func(what string) {
		t.Helper()
		s.refci("view", "-o", out).want(t, 0)
		fresh := filepath.Join(s.root, "fresh")
		os.RemoveAll(fresh)
		s.refci("view", "-o", fresh).want(t, 0)
		want, got := siteFiles(t, fresh), siteFiles(t, out)
		for name, w := range want {
			if got[name] != w {
				t.Errorf("%s: %s differs from the site built at once", what, name)
			}
		}
		for name := range got {
			if _, ok := want[name]; !ok {
				t.Errorf("%s: %s is left", what, name)
			}
		}
	}
	add(0, 300)
	killAt(20)
	killAt(150)
	same("the full build killed")
	// Incremental: new runs, one gone.
	add(300, 400)
	if err := repo.UpdateRef(refs[0], gitproto.ZeroHash, mustHash(t, repo, refs[0])); err != nil {
		t.Fatal(err)
	}
	killAt(360)
	same("an incremental build killed")
	t.Logf("%d of 3 refci view killed before they ended", killed)
}

func mustHash(t *testing.T, repo *gitproto.Repo, ref string) gitproto.Hash {
	t.Helper()
	h, err := repo.RefHash(ref)
	if err != nil {
		t.Fatal(err)
	}
	return h
}
