package worker

import (
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/queue"
	"refci.dev/refci/worker/jobsock"
)

// freshRunDir makes a run directory as a run would.
func freshRunDir(t *testing.T, parent string) string {
	t.Helper()
	dir, err := os.MkdirTemp(parent, "run-")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range runSubdirs {
		if err := os.Mkdir(filepath.Join(dir, s), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestRunDirsReuseOnlyWhatIsClean(t *testing.T) {
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mess   func(t *testing.T, dir string)
		reused bool
	}{
		{"untouched", func(*testing.T, string) {}, true},
		{"files everywhere", func(t *testing.T, dir string) {
			for _, p := range []string{"home/.netrc", "tmp/x/y/z", "src/.refci/run", "artifacts/a.txt", "logs/main", "top-level-file"} {
				full := filepath.Join(dir, p)
				os.MkdirAll(filepath.Dir(full), 0o755)
				if err := os.WriteFile(full, []byte("left over"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			// A read-only tree, as Go's module cache leaves.
			os.MkdirAll(filepath.Join(dir, "home/go/pkg/mod/x"), 0o755)
			os.WriteFile(filepath.Join(dir, "home/go/pkg/mod/x/f"), nil, 0o444)
			os.Chmod(filepath.Join(dir, "home/go/pkg/mod/x"), 0o555)
			// A link out: removing it must not touch its target.
			os.Symlink(outside, filepath.Join(dir, "tmp", "out"))
		}, true},
		{"a subdirectory replaced by a link", func(t *testing.T, dir string) {
			os.RemoveAll(filepath.Join(dir, "home"))
			os.Symlink(outside, filepath.Join(dir, "home"))
		}, false},
		{"a subdirectory made readable to others", func(t *testing.T, dir string) {
			os.Chmod(filepath.Join(dir, "artifacts"), 0o755)
		}, false},
		{"a subdirectory gone", func(t *testing.T, dir string) {
			os.RemoveAll(filepath.Join(dir, "sock"))
		}, false},
		{"a subdirectory replaced by a file", func(t *testing.T, dir string) {
			os.RemoveAll(filepath.Join(dir, "bin"))
			os.WriteFile(filepath.Join(dir, "bin"), nil, 0o700)
		}, false},
		{"the run directory made readable to others", func(t *testing.T, dir string) {
			os.Chmod(dir, 0o755)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			pool := NewRunDirs(2)
			dir := freshRunDir(t, parent)
			tc.mess(t, dir)
			pool.put(dir, nil)
			got := pool.get()
			if tc.reused {
				if got != dir {
					t.Fatalf("not reused: got %q", got)
				}
				ents, _ := os.ReadDir(dir)
				if len(ents) != len(runSubdirs) {
					t.Errorf("the reused directory holds %d entries", len(ents))
				}
				for _, s := range runSubdirs {
					inner, err := os.ReadDir(filepath.Join(dir, s))
					if err != nil || len(inner) != 0 || !privateDir(filepath.Join(dir, s)) {
						t.Errorf("%s: %d entries, %v, private %v", s, len(inner), err, privateDir(filepath.Join(dir, s)))
					}
				}
			} else {
				if got != "" {
					t.Fatalf("reused a directory it should have removed: %q", got)
				}
				if _, err := os.Lstat(dir); !os.IsNotExist(err) {
					t.Errorf("the refused directory is still there: %v", err)
				}
			}
			if b, err := os.ReadFile(victim); err != nil || string(b) != "keep me" {
				t.Errorf("a file outside the run directory was touched: %q %v", b, err)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 1 {
				t.Errorf("the directory outside holds %d entries, want 1", len(ents))
			}
		})
	}
}

func TestRunDirsKeepsAtMostMaxAndCloseRemoves(t *testing.T) {
	parent := t.TempDir()
	pool := NewRunDirs(2)
	var dirs []string
	for i := 0; i < 3; i++ {
		dirs = append(dirs, freshRunDir(t, parent))
	}
	for _, d := range dirs {
		pool.put(d, nil)
	}
	if _, err := os.Stat(dirs[2]); !os.IsNotExist(err) {
		t.Errorf("a third directory was kept beyond max 2: %v", err)
	}
	pool.Close()
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Errorf("Close left %d directories", len(ents))
	}
	if pool.get() != "" {
		t.Error("get after Close returned a directory")
	}
	var none *RunDirs
	d := freshRunDir(t, parent)
	none.put(d, nil) // nil: removes
	if _, err := os.Stat(d); !os.IsNotExist(err) {
		t.Error("a nil RunDirs kept a directory")
	}
}

// Two runs in a row through one RunDirs: the second gets the first's
// directory, and nothing the first left in it.
func TestRunReusesAnEmptiedDirectory(t *testing.T) {
	lw := newLoopWorld(t, `echo "dir=${HOME%/home}"
ls -A "$HOME" "$TMPDIR" "$REFCI_ARTIFACTS" .. | sed 's/^/saw: /'
echo secret > "$HOME/.token"; mkdir -p "$TMPDIR/cache"; echo x > "$TMPDIR/cache/y"
echo art > "$REFCI_ARTIFACTS/out.txt"; echo stray > ../stray; echo built > build.out
`)
	repo, head := lw.head(t)
	pool := NewRunDirs(1)
	defer pool.Close()
	temp := t.TempDir()
	var dirs []string
	for i := 0; i < 2; i++ {
		out, err := Run(t.Context(), RunSpec{Repo: repo, Target: head, Request: "local", TempDir: temp, Dirs: pool}, fixtures.OpenPGPIdentity(t, "Test Worker"))
		if err != nil || out.Status.State != queue.Success {
			t.Fatalf("run %d: %+v %v", i, out, err)
		}
		log := fixtures.Git(t, lw.clone, "show", out.Ref+":"+queue.LogFile)
		m := regexp.MustCompile(`dir=(\S+)`).FindStringSubmatch(log)
		if m == nil {
			t.Fatalf("run %d log: %q", i, log)
		}
		dirs = append(dirs, m[1])
		for _, leftover := range []string{".token", "cache", "out.txt", "stray"} {
			if strings.Contains(log, "saw: "+leftover) {
				t.Errorf("run %d saw %s, left by an earlier run:\n%s", i, leftover, log)
			}
		}
		if !strings.Contains(log, "saw: src") {
			t.Errorf("run %d: the listing did not run:\n%s", i, log)
		}
	}
	if dirs[0] != dirs[1] {
		t.Errorf("the second run got %s, not the first's emptied %s", dirs[1], dirs[0])
	}
}

// The refci on a run's PATH is a symbolic link to the worker's
// executable (as given, itself perhaps a symbolic link), never a hard
// link: the run directory is writable by the pipeline, and a hard link
// there would be a writable handle on the binary every later run
// executes.
func TestLinkRefci(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "refci")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\necho linked refci\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("refci", filepath.Join(dir, "via")); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{exe, filepath.Join(dir, "via")} {
		bin := t.TempDir()
		p := filepath.Join(bin, "refci")
		if err := linkRefci(src, p); err != nil {
			t.Fatal(err)
		}
		a, _ := os.Lstat(p)
		if target, err := os.Readlink(p); a == nil || a.Mode()&os.ModeSymlink == 0 || err != nil || target != src {
			t.Errorf("linkRefci(%s): %v to %q is not a symbolic link to it", src, a.Mode(), target)
		}
		if out, err := exec.Command(p).Output(); err != nil || string(out) != "linked refci\n" {
			t.Errorf("running the link: %q, %v", out, err)
		}
		// Writing through it is writing the executable: the link's
		// target is where isolated pipelines cannot write, and the
		// link itself holds no handle on the file.
		if fi, _ := os.Stat(p); fi == nil || !os.SameFile(fi, mustStat(t, exe)) {
			t.Errorf("linkRefci(%s) does not lead to %s", src, exe)
		}
	}
}

func mustStat(t *testing.T, p string) os.FileInfo {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

// A reused run directory keeps its link to refci, but only while it is
// still that link: a pipeline that put another program there, or a
// symbolic link, does not hand it to the next run.
func TestLinkRefciInReusedRunDir(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "refci")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\necho the real refci\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	pool := NewRunDirs(1)
	run := freshRunDir(t, t.TempDir())
	p := filepath.Join(run, "bin", "refci")
	if err := linkRefci(exe, p); err != nil {
		t.Fatal(err)
	}
	first, _ := os.Lstat(p)
	pool.put(run, nil)
	if got := pool.get(); got != run {
		t.Fatalf("the run directory was not reused (got %q)", got)
	}
	if err := linkRefci(exe, p); err != nil {
		t.Fatal(err)
	}
	again, err := os.Lstat(p)
	if err != nil || !os.SameFile(first, again) {
		t.Errorf("the kept link was replaced (%v)", err)
	}
	for name, plant := range map[string]func() error{
		"another program": func() error {
			os.Remove(p)
			return os.WriteFile(p, []byte("#!/bin/sh\necho planted\n"), 0o755)
		},
		"a symbolic link elsewhere": func() error {
			os.Remove(p)
			return os.Symlink("/bin/true", p)
		},
	} {
		if err := plant(); err != nil {
			t.Fatal(err)
		}
		pool.put(run, nil)
		if got := pool.get(); got != run {
			t.Fatalf("%s: the run directory was not reused", name)
		}
		if err := linkRefci(exe, p); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(p).Output()
		if err != nil || string(out) != "the real refci\n" {
			t.Errorf("%s: the next run's refci says %q, %v", name, out, err)
		}
	}
}

// A reused run directory keeps its job socket listening, so the next run
// binds no new one: the next server drops what the last run left queued
// and serves the same socket; a socket put in its place, or opened to
// others, is not handed on.
func TestRunSocketKeptWithRunDir(t *testing.T) {
	dir := freshRunDir(t, shortTempDir(t))
	path := runSocketPath(dir)
	rs, err := jobsock.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	run := secretsOnly{&runSecrets{masks: &MaskSet{}}}
	srv, err := jobsock.NewServer(jobsock.Config{SocketPath: path, Socket: rs, Run: run})
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	// A connection of the finished run, queued and never accepted.
	stale, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the kept socket stopped listening: %v", err)
	}
	defer stale.Close()
	pool := NewRunDirs(1)
	pool.put(dir, rs)
	if pool.get() != dir {
		t.Fatal("the run directory was not reused")
	}
	again := pool.socket(dir)
	if again != rs {
		t.Fatal("the job socket was not kept with the run directory")
	}
	srv, err = jobsock.NewServer(jobsock.Config{SocketPath: path, Socket: again, Run: run})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := stale.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the stale connection was not dropped: read %d, %v", n, err)
	}
	srv.Close()

	for name, tamper := range map[string]func(){
		"another socket in its place": func() {
			os.Remove(path)
			ln, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			ln.(*net.UnixListener).SetUnlinkOnClose(false)
			ln.Close()
		},
		"opened to others": func() { os.Chmod(path, 0o666) },
	} {
		if !rs.Intact() {
			t.Fatalf("%s: the socket is not intact before tampering", name)
		}
		tamper()
		pool.put(dir, rs)
		if pool.get() != dir {
			t.Fatalf("%s: the run directory was not reused", name)
		}
		if pool.socket(dir) != nil {
			t.Errorf("%s: the socket was handed on", name)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: the socket file is still there (%v)", name, err)
		}
		if rs, err = jobsock.Listen(path); err != nil {
			t.Fatal(err)
		}
	}
	rs.Close()
	pool.Close()
}

// shortTempDir is a temporary directory with a path short enough for a
// Unix socket inside (t.TempDir's can pass 108 bytes).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
