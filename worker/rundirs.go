package worker

import (
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"refci.dev/refci/worker/jobsock"
)

// runSubdirs are the directories every run directory holds.
var runSubdirs = []string{"src", "home", "tmp", "artifacts", "bin", "logs", "sock", "jobs"}

// RunDirs keeps emptied run directories for the next runs of a worker.
//
// Making a run directory is ten new inodes (the directory, its eight
// subdirectories, a checkout); removing it frees them again. Where inodes
// are dear to allocate (ext4 without a journal scans past every inode
// freed in the last minutes before it takes one: on this project's test
// machines that made mkdir and file creation nearly half of a busy
// worker's CPU), a worker that empties a finished run's directory and
// hands the same directories to the next run saves most of it.
//
// A directory is only reused when, after emptying, it is exactly what a
// fresh one would be: the run directory and its eight subdirectories,
// real directories (not symbolic links) owned by this user, mode 0700,
// with nothing else in them. Anything else (a pipeline that replaced home
// with a link, left a file it made unremovable, or chmod-ed a directory
// it cannot be given back in) and the directory is removed instead, as
// without reuse. Nothing of one run is left for the next: the pipeline's
// processes are all gone before a run's directory is emptied (the shim
// kills what is left of its tree).
//
// The zero value is not usable; NewRunDirs makes one. A nil *RunDirs
// reuses nothing.
type RunDirs struct {
	mu    sync.Mutex
	free  []string
	socks map[string]*jobsock.Socket // the job sockets of free directories, kept listening
	max   int
}

// runSocketPath is where a run directory's job socket lives.
func runSocketPath(dir string) string { return filepath.Join(dir, "sock", "refci.sock") }

// NewRunDirs keeps up to max emptied run directories.
func NewRunDirs(max int) *RunDirs {
	return &RunDirs{max: max}
}

// get returns an emptied run directory, or "" when none is kept.
func (p *RunDirs) get() string {
	if p == nil {
		return ""
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		d := p.free[n-1]
		p.free = p.free[:n-1]
		return d
	}
	return ""
}

// socket takes the job socket kept listening for dir (got from get), or
// returns nil when there is none.
func (p *RunDirs) socket(dir string) *jobsock.Socket {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	rs := p.socks[dir]
	delete(p.socks, dir)
	return rs
}

// put empties dir and keeps it for a later run, or removes it. rs, when
// not nil, is the run's job socket: it is kept with the directory while
// it is intact, else closed.
func (p *RunDirs) put(dir string, rs *jobsock.Socket) {
	if p == nil || !emptyRunDir(dir) {
		if rs != nil {
			rs.Close()
		}
		removeAll(dir)
		return
	}
	if rs != nil && !rs.Intact() {
		rs.Close()
		rs = nil
	}
	if rs == nil {
		os.Remove(runSocketPath(dir)) // one emptyRunDir kept, not the run's
	}
	p.mu.Lock()
	if len(p.free) < p.max {
		p.free = append(p.free, dir)
		if rs != nil {
			if p.socks == nil {
				p.socks = map[string]*jobsock.Socket{}
			}
			p.socks[dir] = rs
			rs = nil
		}
		dir = ""
	}
	p.mu.Unlock()
	if rs != nil {
		rs.Close()
	}
	if dir != "" {
		removeAll(dir)
	}
}

// Close removes the directories kept.
func (p *RunDirs) Close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	free, socks := p.free, p.socks
	p.free, p.socks = nil, nil
	p.mu.Unlock()
	for _, rs := range socks {
		rs.Close()
	}
	for _, d := range free {
		removeAll(d)
	}
}

// emptyRunDir removes everything a run left in dir but its eight
// subdirectories (and bin/refci: the next run keeps it only if it is
// still the symbolic link to refci or refci-job that it needs, see
// linkRefciBin; the job socket, which put keeps only if it is still the
// one the run listened on; and the in-shell job library and FIFO, which
// the next run checks before it uses them), and reports whether dir is
// now as a new run directory would be.
func emptyRunDir(dir string) bool {
	if !privateDir(dir) {
		return false
	}
	want := map[string]bool{}
	for _, s := range runSubdirs {
		want[s] = true
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	seen := 0
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if !want[e.Name()] {
			removeAll(p) // left beside the subdirectories
			continue
		}
		if !privateDir(p) {
			return false
		}
		seen++
		inner, err := os.ReadDir(p)
		if err != nil {
			return false
		}
		kept := 0
		for _, f := range inner {
			if e.Name() == "bin" && f.Name() == "refci" && f.Type()&os.ModeSymlink != 0 {
				// The symbolic link to refci or refci-job:
				// linkRefciBin checks it is still that.
				kept = 1
				continue
			}
			if e.Name() == "sock" && f.Name() == "refci.sock" && f.Type()&os.ModeSocket != 0 {
				kept = 1 // the job socket: put checks it is still the run's
				continue
			}
			if e.Name() == "jobs" && (f.Name() == shellLibraryName && f.Type().IsRegular() || f.Name() == shellCtlName && f.Type()&os.ModeNamedPipe != 0) {
				// The in-shell job library, which writeShellLibrary
				// checks, and its FIFO, which ServeShell checks.
				kept++
				continue
			}
			removeAll(filepath.Join(p, f.Name()))
		}
		if left, err := os.ReadDir(p); err != nil || len(left) > kept {
			return false
		}
	}
	if seen != len(runSubdirs) {
		return false
	}
	if left, err := os.ReadDir(dir); err != nil || len(left) != len(runSubdirs) {
		return false
	}
	return true
}

// privateDir reports whether p is a directory (not a link to one) of this
// user with mode 0700.
func privateDir(p string) bool {
	fi, err := os.Lstat(p)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 || fi.Mode()&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky) != 0 {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Getuid()
}
