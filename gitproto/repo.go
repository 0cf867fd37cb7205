// Package gitproto is refci's access to git: resolving revisions, reading
// and writing objects, creating and updating refs with compare-and-swap,
// and checking trees out. It knows nothing about CI.
//
// Objects are read and written in process with go-git, which is fast for
// the small objects refci makes. Refs are never written through go-git:
// its ref writer truncates the file in place and does not take git's lock
// file, so a full disk can leave an empty ref and a concurrent git process
// can interleave. Refs are written here with git's own lock-file protocol
// (write <ref>.lock with O_EXCL, then rename), which both tools respect.
//
// go-git stays inside: the API has its own Hash, Commit, Tag, Signature
// and Tree. The git program itself runs only for what go-git cannot do
// (fetch and push in Remote; tags, pushes and remotes of the user's
// repository in CLI), with the one environment CLI describes.
package gitproto

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// Errors callers branch on.
var (
	ErrNoCommits  = errors.New("the repository has no commits yet")
	ErrNotCommit  = errors.New("not a commit")
	ErrUnknownRev = errors.New("unknown revision")
	ErrRefExists  = errors.New("ref already exists")
	ErrRefChanged = errors.New("ref changed meanwhile") // a compare-and-swap lost
	ErrNotFound   = errors.New("not found")
	ErrNotRepo    = errors.New("not a git repository")
)

// Repo is one local git repository. It is not safe for concurrent use
// (go-git's Repository is not); open one per goroutine.
type Repo struct {
	st        objectStore
	gitDir    string // the repository's .git (or the bare repository)
	commonDir string // where refs and objects live (differs in linked worktrees)
	workTree  string // "" for a bare repository
}

// Open opens the repository containing dir (searching parent directories
// like git does); "" is the working directory.
func Open(dir string) (*Repo, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	r := &Repo{}
	if err := r.locate(abs); err != nil {
		return nil, fmt.Errorf("%w (run refci inside a git repository, or pass --repo DIR)", err)
	}
	// Open exactly what locate found, so that reads and writes go to the
	// same repository (a bare repository inside another's work tree).
	// Only the storage layer of go-git is used: its Repository type pulls
	// in every transport (HTTP, SSH), which costs each refci process
	// milliseconds of start-up for nothing.
	r.st = objectStore{
		Storage: filesystem.NewStorageWithOptions(listingFS{osfs.New(r.commonDir)}, cache.NewObjectLRUDefault(), filesystem.Options{}),
		packs:   &packWatch{objects: filepath.Join(r.commonDir, "objects"), indexed: time.Now()},
		reader:  &packReader{dir: filepath.Join(r.commonDir, "objects", "pack")},
	}
	// A Repo has no Close: its packs' mappings and files go with it.
	runtime.SetFinalizer(r.st.reader, (*packReader).reset)
	return r, nil
}

// listingFS is the repository's file system as go-git sees it. What lies
// under objects/ is opened, stat-ed and listed directly (see objectPath).
// Elsewhere go-billy's ReadDir is repaired: it fails as a whole, with "no
// such file", when an entry vanishes between the listing and its stat,
// and such an entry is left out of the listing instead; a directory that
// is itself missing still says so.
type listingFS struct{ billy.Filesystem }

// Directories under objects/ (objects/ itself, which go-git lists once
// per Repo to look for quarantined incoming objects, objects/pack, the
// fan-out directories) are listed directly, from their entries' names
// and types alone: a stat is made only when a caller asks for more, and
// an entry renamed or removed meanwhile cannot fail the listing.
func (f listingFS) ReadDir(dir string) ([]os.FileInfo, error) {
	if p, ok := f.objectPath(dir); ok {
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, err
		}
		infos := make([]os.FileInfo, len(entries))
		for i, e := range entries {
			infos[i] = &entryInfo{DirEntry: e}
		}
		return infos, nil
	}
	infos, err := f.Filesystem.ReadDir(dir)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return infos, err
	}
	entries, err := os.ReadDir(filepath.Join(f.Root(), dir))
	if err != nil {
		return nil, err
	}
	var kept []os.FileInfo
	for _, e := range entries {
		fi, err := e.Info()
		if errors.Is(err, os.ErrNotExist) {
			continue // gone since the listing
		}
		if err != nil {
			return nil, err
		}
		kept = append(kept, fi)
	}
	return kept, nil
}

// entryInfo is a directory entry as an os.FileInfo: its name and type
// come from the listing, the rest from a stat made on first use.
type entryInfo struct {
	fs.DirEntry
	once sync.Once
	info os.FileInfo
}

func (e *entryInfo) stat() os.FileInfo {
	e.once.Do(func() {
		if fi, err := e.DirEntry.Info(); err == nil {
			e.info = fi
		}
	})
	return e.info
}

func (e *entryInfo) Size() int64 {
	if fi := e.stat(); fi != nil {
		return fi.Size()
	}
	return 0
}

func (e *entryInfo) Mode() os.FileMode {
	if fi := e.stat(); fi != nil {
		return fi.Mode()
	}
	return e.Type()
}

func (e *entryInfo) ModTime() time.Time {
	if fi := e.stat(); fi != nil {
		return fi.ModTime()
	}
	return time.Time{}
}

func (e *entryInfo) Sys() any {
	if fi := e.stat(); fi != nil {
		return fi.Sys()
	}
	return nil
}

// objectPath is where name is on disk when it is objects/ or names
// something under it (a loose object, a pack or its index: names go-git
// builds itself, never from a repository's contents). A cleaned path that
// starts so cannot climb out of objects/.
func (f listingFS) objectPath(name string) (string, bool) {
	clean := filepath.Clean(name)
	if clean != "objects" && !strings.HasPrefix(clean, "objects/") {
		return "", false
	}
	return filepath.Join(f.Root(), clean), true
}

// osFile is a file opened directly, under the name go-git asked for.
type osFile struct {
	*os.File
	name string
}

func (o *osFile) Name() string  { return o.name }
func (o *osFile) Lock() error   { return syscall.Flock(int(o.Fd()), syscall.LOCK_EX) }
func (o *osFile) Unlock() error { return syscall.Flock(int(o.Fd()), syscall.LOCK_UN) }

// Stat of a path under objects/ is a plain stat (see Open).
func (f listingFS) Stat(name string) (os.FileInfo, error) {
	if p, ok := f.objectPath(name); ok {
		return os.Stat(p)
	}
	return f.Filesystem.Stat(name)
}

// Open opens what lies under objects/ directly: go-billy's rooted file
// system resolves every component of every path with a stat of its own,
// to keep symbolic links inside the root, which is most of what looking a
// loose object up costs; objects/ is followed as git follows it. It also
// gives a pack's index (objects/pack/*.idx) a read buffer: go-git decodes
// one as a stream of four-byte reads, each a system call on a plain file,
// and reads every index of the repository whenever a Repo first looks an
// object up in a pack.
func (f listingFS) Open(name string) (billy.File, error) {
	var file billy.File
	var err error
	if p, ok := f.objectPath(name); ok {
		var of *os.File
		if of, err = os.Open(p); err == nil {
			file = &osFile{File: of, name: name}
		}
	} else {
		file, err = f.Filesystem.Open(name)
	}
	if err != nil || !strings.HasSuffix(name, ".idx") {
		return file, err
	}
	st, ok := file.(interface{ Stat() (os.FileInfo, error) })
	if !ok {
		return file, nil
	}
	return &bufferedIdx{File: file, stat: st, r: bufio.NewReaderSize(file, 16<<10)}, nil
}

// bufferedIdx is an index file read through a buffer, front to back (the
// only way go-git's decoder reads one).
type bufferedIdx struct {
	billy.File
	stat interface{ Stat() (os.FileInfo, error) }
	r    *bufio.Reader
}

func (b *bufferedIdx) Read(p []byte) (int, error)     { return b.r.Read(p) }
func (b *bufferedIdx) Stat() (os.FileInfo, error)     { return b.stat.Stat() }
func (b *bufferedIdx) Seek(int64, int) (int64, error) { return 0, errors.ErrUnsupported }
func (b *bufferedIdx) ReadAt([]byte, int64) (int, error) {
	return 0, errors.ErrUnsupported
}

// Chmod and Capabilities pass through what go-git asks the file system
// for by type assertion.
func (f listingFS) Chmod(name string, mode os.FileMode) error {
	if c, ok := f.Filesystem.(billy.Chmod); ok {
		return c.Chmod(name, mode)
	}
	return billy.ErrNotSupported
}

func (f listingFS) Capabilities() billy.Capability { return billy.Capabilities(f.Filesystem) }

// objectStore is go-git's storage of a repository, made safe to read
// while another process installs a pack (git fetch or index-pack into the
// cache, git gc): go-git lists a repository's packs by their .pack files
// and fails outright when one has no .idx yet, which is how git installs
// a pack (the .idx is renamed into place last), leaving its index of packs
// half read. A lookup that fails so drops that index and tries again a
// few times over about a second. A plain "not found" is answered at once.
type objectStore struct {
	*filesystem.Storage
	packs *packWatch
	// reader reads objects of packs first (packread.go); what it cannot
	// read, go-git does.
	reader *packReader
}

// packWatch is when a Repo's packs were last read.
type packWatch struct {
	objects string    // the objects directory
	indexed time.Time // when go-git's index of packs was last dropped
	seen    time.Time // the time stamp of objects/pack last looked again for
}

// packRetries bounds the retries of a lookup that met a pack being
// installed (5 ms, 10 ms ... : about a second in all).
const packRetries = 20

func (s objectStore) EncodedObject(t plumbing.ObjectType, h plumbing.Hash) (obj plumbing.EncodedObject, err error) {
	if obj, err := s.reader.object(t, h); err == nil || errors.Is(err, plumbing.ErrObjectNotFound) {
		return obj, err
	}
	s.retry(func() error { obj, err = s.Storage.EncodedObject(t, h); return err })
	return obj, err
}

func (s objectStore) HasEncodedObject(h plumbing.Hash) (err error) {
	if _, _, ok := s.reader.find(h); ok {
		return nil
	}
	s.retry(func() error { err = s.Storage.HasEncodedObject(h); return err })
	return err
}

func (s objectStore) EncodedObjectSize(h plumbing.Hash) (n int64, err error) {
	s.retry(func() error { n, err = s.Storage.EncodedObjectSize(h); return err })
	return n, err
}

// retry runs lookup, and again after dropping go-git's index of packs,
// while it fails otherwise than "not found", up to packRetries times. A
// "not found" is tried once more with the packs read again when a pack
// may have been installed since they were read (a fetch, a merge of
// packs): once per change of objects/pack, so that a run of lookups of
// objects that are not there costs one reread at most.
func (s objectStore) retry(lookup func() error) {
	err := lookup()
	for i := 0; err != nil && !errors.Is(err, plumbing.ErrObjectNotFound) && i < packRetries; i++ {
		s.reindex()
		time.Sleep(time.Duration(i+1) * 5 * time.Millisecond)
		err = lookup()
	}
	if errors.Is(err, plumbing.ErrObjectNotFound) && s.packsMayHaveChanged() {
		s.reindex()
		lookup()
	}
}

// reindex drops go-git's index of packs (read again when next needed).
func (s objectStore) reindex() {
	s.Storage.Reindex()
	s.reader.reset()
	s.packs.indexed = time.Now()
}

// packsMayHaveChanged says whether objects/pack changed after the packs
// were read (go-git reads them at the first lookup after Open or
// reindex), allowing for the coarse clock of directory time stamps, and
// not since this was last asked.
func (s objectStore) packsMayHaveChanged() bool {
	fi, err := os.Stat(filepath.Join(s.packs.objects, "pack"))
	if err != nil {
		return false
	}
	m := fi.ModTime()
	if m.Before(s.packs.indexed.Add(-50*time.Millisecond)) || m.Equal(s.packs.seen) {
		return false
	}
	s.packs.seen = m
	return true
}

// locate finds the git dir, common dir and work tree the way git does.
func (r *Repo) locate(start string) error {
	for dir := start; ; {
		dotgit := filepath.Join(dir, ".git")
		if fi, err := os.Stat(dotgit); err == nil {
			r.workTree = dir
			if fi.IsDir() {
				r.gitDir = dotgit
			} else {
				b, err := os.ReadFile(dotgit)
				if err != nil {
					return err
				}
				p := strings.TrimSpace(strings.TrimPrefix(string(b), "gitdir:"))
				if !filepath.IsAbs(p) {
					p = filepath.Join(dir, p)
				}
				r.gitDir = p
			}
			break
		}
		if isBareDir(dir) {
			r.gitDir = dir
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return fmt.Errorf("%s: %w", start, ErrNotRepo)
		}
		dir = parent
	}
	r.commonDir = r.gitDir
	if b, err := os.ReadFile(filepath.Join(r.gitDir, "commondir")); err == nil {
		p := strings.TrimSpace(string(b))
		if !filepath.IsAbs(p) {
			p = filepath.Join(r.gitDir, p)
		}
		r.commonDir = filepath.Clean(p)
	}
	return nil
}

func isBareDir(dir string) bool {
	for _, f := range []string{"HEAD", "objects", "refs"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return false
		}
	}
	return true
}

// GitDir is the repository's git directory (where refs live).
func (r *Repo) GitDir() string { return r.commonDir }

// WorkTree is the checked-out directory, or "" for a bare repository.
func (r *Repo) WorkTree() string { return r.workTree }

// Dir is the directory git commands on the repository run in (CLI.Dir):
// its work tree, or its git directory when it is bare.
func (r *Repo) Dir() string {
	if r.workTree != "" {
		return r.workTree
	}
	return r.commonDir
}

// Tag reads the annotated tag object h.
func (r *Repo) Tag(h Hash) (*Tag, error) {
	t, err := object.GetTag(r.st, ph(h))
	if err != nil {
		return nil, err
	}
	return tagOf(t), nil
}

// ResolveCommit resolves rev (HEAD, a branch, a tag, an annotated tag or a
// tag of a tag, a full or abbreviated object id, or an expression such as
// HEAD~2) to a commit. Errors wrap ErrNoCommits, ErrUnknownRev or
// ErrNotCommit.
func (r *Repo) ResolveCommit(rev string) (Hash, error) {
	h, err := r.resolveObject(rev)
	if err != nil {
		return ZeroHash, err
	}
	return r.peelToCommit(rev, h)
}

func (r *Repo) resolveObject(rev string) (Hash, error) {
	if rev == "" {
		rev = "HEAD"
	}
	// A full object id means that object, even if a ref has the same
	// name (git does the same and warns).
	if IsHash(rev) {
		h := NewHash(rev)
		if _, err := r.st.EncodedObject(plumbing.AnyObject, ph(h)); err == nil {
			return h, nil
		}
	}
	candidates := []string{rev}
	if !strings.HasPrefix(rev, "refs/") && rev != "HEAD" {
		candidates = append(candidates, "refs/"+rev, "refs/tags/"+rev, "refs/heads/"+rev, "refs/remotes/"+rev, "refs/remotes/"+rev+"/HEAD")
	}
	for _, name := range candidates {
		h, unborn, err := r.resolveRef(name)
		if err == nil {
			return h, nil
		}
		if name == "HEAD" && unborn != "" {
			return ZeroHash, fmt.Errorf("HEAD points at %s, which has no commits: %w; commit something first", strings.TrimPrefix(unborn, "refs/heads/"), ErrNoCommits)
		}
	}
	if IsHash(rev) {
		h := NewHash(rev)
		if _, err := r.st.EncodedObject(plumbing.AnyObject, ph(h)); err == nil {
			return h, nil
		}
		return ZeroHash, fmt.Errorf("%s: %w: no such object in this repository", rev, ErrUnknownRev)
	}
	if base, steps, ok := splitAncestry(rev); ok {
		h, err := r.ResolveCommit(base)
		if err != nil {
			return ZeroHash, err
		}
		for _, st := range steps {
			c, err := r.Commit(h)
			if err != nil {
				return ZeroHash, err
			}
			if st.parent {
				if st.n == 0 {
					continue
				}
				if st.n > len(c.Parents) {
					return ZeroHash, fmt.Errorf("%s: %w: %s has no parent %d", rev, ErrUnknownRev, h.String()[:12], st.n)
				}
				h = c.Parents[st.n-1]
				continue
			}
			for i := 0; i < st.n; i++ {
				if len(c.Parents) == 0 {
					return ZeroHash, fmt.Errorf("%s: %w: the history is shorter than that", rev, ErrUnknownRev)
				}
				h = c.Parents[0]
				if c, err = r.Commit(h); err != nil {
					return ZeroHash, err
				}
			}
		}
		return h, nil
	}
	if isHexPrefix(rev) {
		// An abbreviated id: let git expand it (go-git only expands commits).
		out, err := CLI{}.Run(context.Background(), "", "--git-dir", r.commonDir, "rev-parse", "--verify", "--quiet", rev)
		if err == nil && IsHash(out) {
			return NewHash(out), nil
		}
	}
	return ZeroHash, fmt.Errorf("%s: %w (give a branch, tag or commit id)", rev, ErrUnknownRev)
}

type ancestryStep struct {
	parent bool // ^N (N-th parent) rather than ~N (N-th first-parent ancestor)
	n      int
}

// splitAncestry splits "base~2^2" into its base and steps.
func splitAncestry(rev string) (string, []ancestryStep, bool) {
	i := strings.IndexAny(rev, "~^")
	if i <= 0 {
		return "", nil, false
	}
	base, rest := rev[:i], rev[i:]
	var steps []ancestryStep
	for rest != "" {
		st := ancestryStep{parent: rest[0] == '^'}
		rest = rest[1:]
		j := 0
		for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
			j++
		}
		if j == 0 {
			st.n = 1
		} else {
			n, err := strconv.Atoi(rest[:j])
			if err != nil || n > 1<<20 {
				return "", nil, false
			}
			st.n = n
		}
		rest = rest[j:]
		if rest != "" && rest[0] != '~' && rest[0] != '^' {
			return "", nil, false
		}
		steps = append(steps, st)
	}
	return base, steps, true
}

func isHexPrefix(s string) bool {
	if len(s) < 4 || len(s) >= 40 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

func (r *Repo) peelToCommit(rev string, h Hash) (Hash, error) {
	for depth := 0; depth < 10; depth++ {
		obj, err := r.st.EncodedObject(plumbing.AnyObject, ph(h))
		if err != nil {
			return ZeroHash, fmt.Errorf("%s: %w: object %s is missing", rev, ErrUnknownRev, h)
		}
		switch obj.Type() {
		case plumbing.CommitObject:
			return h, nil
		case plumbing.TagObject:
			tag, err := object.DecodeTag(r.st, obj)
			if err != nil {
				return ZeroHash, fmt.Errorf("%s: read tag %s: %w", rev, h, err)
			}
			h = Hash(tag.Target)
		default:
			return ZeroHash, fmt.Errorf("%s is a %s, %w; give a branch, tag or commit", rev, obj.Type(), ErrNotCommit)
		}
	}
	return ZeroHash, fmt.Errorf("%s: tags nested more than 10 deep", rev)
}

// ObjectType returns the type of object h ("commit", "tree", "blob", "tag").
func (r *Repo) ObjectType(h Hash) (string, error) {
	obj, err := r.st.EncodedObject(plumbing.AnyObject, ph(h))
	if err != nil {
		if errors.Is(err, plumbing.ErrObjectNotFound) {
			return "", fmt.Errorf("object %s: %w", h, ErrNotFound)
		}
		return "", fmt.Errorf("object %s: %w: %v", h, ErrNotFound, err)
	}
	return obj.Type().String(), nil
}

// Commit reads commit h.
func (r *Repo) Commit(h Hash) (*Commit, error) {
	c, err := object.GetCommit(r.st, ph(h))
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", h, err)
	}
	return commitOf(c), nil
}

// ReadFile reads the file at path in commit h's tree. A missing file
// wraps ErrNotFound.
func (r *Repo) ReadFile(commit Hash, path string) ([]byte, error) {
	rc, err := r.OpenFile(commit, path)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// OpenFile opens the file at path in commit h's tree for streaming.
func (r *Repo) OpenFile(commit Hash, path string) (io.ReadCloser, error) {
	t, err := r.TreeOf(commit)
	if err != nil {
		return nil, err
	}
	return t.Open(path)
}

// Ref is one reference and the object it points to.
type Ref struct {
	Name string
	Hash Hash
}

// Refs lists the refs whose names start with prefix, loose and packed,
// sorted by name.
func (r *Repo) Refs(prefix string) ([]Ref, error) {
	// Loose refs first, then packed-refs: git packs refs by writing the
	// new packed-refs before deleting the loose files, so a ref being
	// packed meanwhile is seen in one or the other, never in neither.
	seen := map[string]Hash{}
	root := filepath.Join(r.commonDir, filepath.FromSlash(prefix))
	// prefix may end mid-component (refs/ci/runs/abc): walk its directory.
	walkRoot := root
	if !strings.HasSuffix(prefix, "/") {
		walkRoot = filepath.Dir(root)
	}
	if !strings.HasPrefix(prefix, "refs/") {
		walkRoot = filepath.Join(r.commonDir, "refs")
	}
	err := filepath.WalkDir(walkRoot, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() || strings.HasSuffix(p, ".lock") {
			return nil
		}
		rel, err := filepath.Rel(r.commonDir, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if !strings.HasPrefix(name, prefix) {
			return nil
		}
		h, err := readLooseRef(p)
		if err != nil || h == ZeroHash {
			return nil // a symbolic or unreadable ref is not ours
		}
		seen[name] = h
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list refs %s: %w", prefix, err)
	}
	// The packed refs come in the file's order, sorted by name (git
	// writes it so), and stay a slice: at 100,000 refs a map and a sort
	// of them cost more than reading them.
	var out []Ref
	err = eachPackedRef(filepath.Join(r.commonDir, "packed-refs"), prefix, func(n string, h Hash) {
		if lh, ok := seen[n]; ok { // a loose ref overrides its packed value
			h = lh
			delete(seen, n)
		}
		out = append(out, Ref{Name: n, Hash: h})
	})
	if err != nil {
		return nil, err
	}
	// A repository moved or deleted meanwhile reads as one without refs:
	// say it is gone instead (a caller mirroring a remote must not take
	// that for every request deleted). Every repository has refs/.
	if _, err := os.Stat(filepath.Join(r.commonDir, "refs")); err != nil {
		return nil, fmt.Errorf("list refs %s: the repository %s: %w", prefix, r.commonDir, err)
	}
	sorted := len(seen) == 0
	for n, h := range seen {
		out = append(out, Ref{Name: n, Hash: h})
	}
	if !sorted || !sort.SliceIsSorted(out, func(i, j int) bool { return out[i].Name < out[j].Name }) {
		sortRefs(out)
	}
	if out == nil {
		out = []Ref{}
	}
	return out, nil
}

// RefHash returns the object ref name points to, or ErrNotFound.
func (r *Repo) RefHash(name string) (Hash, error) {
	m, err := r.RefHashes([]string{name})
	if err != nil {
		return ZeroHash, err
	}
	if h, ok := m[name]; ok {
		return h, nil
	}
	return ZeroHash, fmt.Errorf("ref %s: %w", name, ErrNotFound)
}

// RefHashes returns the values of those of names that exist, reading
// packed-refs at most once (a loose ref wins over a packed one, as in
// git).
func (r *Repo) RefHashes(names []string) (map[string]Hash, error) {
	out := make(map[string]Hash, len(names))
	var packed map[string]Hash
	for _, name := range names {
		if h, err := readLooseRef(filepath.Join(r.commonDir, filepath.FromSlash(name))); err == nil && h != ZeroHash {
			out[name] = h
			continue
		}
		if len(names) == 1 {
			// One name: binary-searched in a sorted file, else found in
			// the file's bytes, without parsing every line (a worker's
			// cache holds thousands of packed refs, a reader's 100,000
			// runs).
			one := map[string]Hash{}
			if err := readPackedRefs(filepath.Join(r.commonDir, "packed-refs"), name, one); err != nil {
				return nil, err
			}
			if h, ok := one[name]; ok {
				out[name] = h
			}
			continue
		}
		if packed == nil {
			packed = map[string]Hash{}
			if err := readPackedRefs(filepath.Join(r.commonDir, "packed-refs"), "", packed); err != nil {
				return nil, err
			}
		}
		if h, ok := packed[name]; ok {
			out[name] = h
		}
	}
	return out, nil
}

// readPackedRefsFile returns the bytes of gitDir's packed-refs (none when
// there is no such file).
func readPackedRefsFile(gitDir string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(gitDir, "packed-refs"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		data = append(data, '\n') // every line ends in one below
	}
	return data, err
}

// packedRefLookup finds ref name's line ("<hex id> <name>") in the bytes
// of a packed-refs file.
func packedRefLookup(data []byte, name string) (Hash, bool) {
	needle := []byte(" " + name + "\n")
	for off := 0; ; {
		i := bytes.Index(data[off:], needle)
		if i < 0 {
			return ZeroHash, false
		}
		i += off
		if start := i - 40; start >= 0 && (start == 0 || data[start-1] == '\n') && IsHash(string(data[start:i])) {
			return NewHash(string(data[start:i])), true
		}
		off = i + 1
	}
}

// packedRefConflict returns a ref of a packed-refs file that name cannot
// sit beside (git keeps refs as files: refs/a and refs/a/b cannot both
// exist), or "".
func packedRefConflict(data []byte, name string) string {
	// A ref below name: a line whose name starts with name + "/".
	if i := bytes.Index(data, []byte(" "+name+"/")); i >= 0 {
		end := bytes.IndexByte(data[i:], '\n')
		if end < 0 {
			end = len(data) - i
		}
		if i >= 40 && (i == 40 || data[i-41] == '\n') {
			return string(data[i+1 : i+end])
		}
	}
	// A ref above it: one of name's leading components, as a whole name.
	for j := strings.IndexByte(name, '/'); j >= 0; {
		if _, ok := packedRefLookup(data, name[:j]); ok {
			return name[:j]
		}
		k := strings.IndexByte(name[j+1:], '/')
		if k < 0 {
			break
		}
		j += 1 + k
	}
	return ""
}

func readLooseRef(p string) (Hash, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return ZeroHash, err
	}
	s := strings.TrimSpace(string(b))
	if !IsHash(s) {
		return ZeroHash, nil
	}
	return NewHash(s), nil
}

// readPackedRefs adds the refs of the packed-refs file at path whose names
// start with prefix to into. A file that says it is sorted (git's
// "sorted" trait, which git and refci always write) is mapped and
// binary-searched for the first such ref, so that reading one commit's
// runs among 100,000 packed refs touches a few pages, not the file; any
// other file is read line by line.
func readPackedRefs(path, prefix string, into map[string]Hash) error {
	return eachPackedRef(path, prefix, func(name string, h Hash) { into[name] = h })
}

// eachPackedRef calls fn with each ref of the packed-refs file at path
// whose name starts with prefix, in the file's order (see readPackedRefs).
func eachPackedRef(path, prefix string, fn func(name string, h Hash)) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	defer f.Close()
	if prefix != "" {
		if fi, err := f.Stat(); err == nil && fi.Size() > 0 && fi.Size() < 1<<40 {
			if data, err := syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_SHARED); err == nil {
				ok := packedSorted(data)
				if ok {
					scanPackedPrefix(data, prefix, fn)
				}
				syscall.Munmap(data)
				if ok {
					return nil
				}
			}
		}
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || line[0] == '^' {
			continue
		}
		hexID, name, ok := strings.Cut(line, " ")
		if ok && strings.HasPrefix(name, prefix) && IsHash(hexID) {
			fn(name, NewHash(hexID))
		}
	}
	return sc.Err()
}

// packedSorted reports whether the bytes of a packed-refs file say, in
// their header line, that the refs are sorted by name.
func packedSorted(data []byte) bool {
	if !bytes.HasPrefix(data, []byte("# pack-refs with:")) {
		return false
	}
	end := bytes.IndexByte(data, '\n')
	if end < 0 {
		return false
	}
	for _, trait := range strings.Fields(string(data[len("# pack-refs with:"):end])) {
		if trait == "sorted" {
			return true
		}
	}
	return false
}

// scanPackedPrefix adds the refs whose names start with prefix from the
// bytes of a sorted packed-refs file: a binary search for the first line
// whose name is not below prefix, then the lines from there while they
// match. Peeled lines ("^<id>", after an annotated tag's line) are
// skipped.
func scanPackedPrefix(data []byte, prefix string, fn func(name string, h Hash)) {
	lineEnd := func(at int) int { // the index of the line's '\n', or len(data)
		if i := bytes.IndexByte(data[at:], '\n'); i >= 0 {
			return at + i
		}
		return len(data)
	}
	nameOf := func(line []byte) []byte {
		if i := bytes.IndexByte(line, ' '); i >= 0 {
			return line[i+1:]
		}
		return nil
	}
	// lo and hi are always the starts of ref lines (or len(data)): every
	// ref before lo is below prefix, every ref from hi on is not.
	skipPeeled := func(at int) int {
		for at < len(data) && data[at] == '^' {
			at = lineEnd(at) + 1
		}
		return min(at, len(data))
	}
	lo, hi := skipPeeled(lineEnd(0)+1), len(data) // past the header
	for lo < hi {
		mid := lo + (hi-lo)/2
		rec := bytes.LastIndexByte(data[:mid+1], '\n') + 1 // the start of mid's line
		if rec < lo {
			rec = lo
		}
		if data[rec] == '^' { // a peeled line belongs to the ref line before it
			if prev := bytes.LastIndexByte(data[:rec-1], '\n') + 1; prev >= lo {
				rec = prev
			} else {
				rec = lo
			}
		}
		end := lineEnd(rec)
		if string(nameOf(data[rec:end])) < prefix {
			lo = min(skipPeeled(end+1), hi)
		} else {
			hi = rec
		}
	}
	for at := lo; at < len(data); {
		end := lineEnd(at)
		line := data[at:end]
		at = end + 1
		if len(line) == 0 || line[0] == '^' || line[0] == '#' {
			continue
		}
		name := nameOf(line)
		if !bytes.HasPrefix(name, []byte(prefix)) {
			if string(name) > prefix {
				break
			}
			continue
		}
		if id := string(line[:len(line)-len(name)-1]); IsHash(id) {
			fn(string(name), NewHash(id))
		}
	}
}

// resolveRef follows a ref (HEAD, or a name under refs/) through symbolic
// refs to an object id. For a symbolic ref pointing at a ref that does not
// exist (an unborn branch) it returns that name as unborn.
func (r *Repo) resolveRef(name string) (h Hash, unborn string, err error) {
	for depth := 0; depth < 5; depth++ {
		dir := r.commonDir
		if name == "HEAD" {
			dir = r.gitDir // each worktree has its own HEAD
		}
		b, rerr := os.ReadFile(filepath.Join(dir, filepath.FromSlash(name)))
		if rerr != nil {
			if name == "HEAD" || !strings.HasPrefix(name, "refs/") {
				return ZeroHash, "", fmt.Errorf("ref %s: %w", name, ErrNotFound)
			}
			h, err := r.RefHash(name) // packed
			if err != nil && depth > 0 {
				return ZeroHash, name, err
			}
			return h, "", err
		}
		content := strings.TrimSpace(string(b))
		if target, ok := strings.CutPrefix(content, "ref: "); ok {
			name = target
			continue
		}
		if IsHash(content) {
			return NewHash(content), "", nil
		}
		return ZeroHash, "", fmt.Errorf("ref %s: unreadable content", name)
	}
	return ZeroHash, "", fmt.Errorf("ref %s: symbolic refs nested too deep", name)
}
