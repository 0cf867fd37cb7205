package gitproto

import (
	"bytes"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/format/objfile"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// WriteBlob stores data as a blob.
func (r *Repo) WriteBlob(data []byte) (Hash, error) {
	return r.writeStream(plumbing.BlobObject, int64(len(data)), bytes.NewReader(data))
}

// WriteBlobFile stores the file at p as a blob, streaming it (memory use
// does not grow with the file). It returns the blob id and size.
func (r *Repo) WriteBlobFile(p string) (Hash, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return ZeroHash, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ZeroHash, 0, err
	}
	h, err := r.writeStream(plumbing.BlobObject, fi.Size(), f)
	return h, fi.Size(), err
}

// smallObject is the size up to which an object is hashed in memory
// before anything is written: one already stored (the empty log of a
// trivial run, the same status page) then costs a stat, not a temporary
// file created and deleted again.
const smallObject = 256 << 10

// zlibWriters are reused: a deflate compressor is over half a megabyte to
// allocate and set up, more than compressing a small object costs.
var zlibWriters = sync.Pool{New: func() any {
	w, _ := zlib.NewWriterLevel(io.Discard, zlib.BestSpeed) // git's core.looseCompression default
	return w
}}

// writeStream writes one loose object: a temporary file in the objects
// directory, renamed into place once complete. Small objects are hashed
// first and not written again when already stored; larger ones stream
// (memory use does not grow with them). On any error the temporary file
// is removed, so a full disk is not made fuller.
func (r *Repo) writeStream(t plumbing.ObjectType, size int64, src io.Reader) (Hash, error) {
	objects := filepath.Join(r.commonDir, "objects")
	if size <= smallObject {
		data := make([]byte, size)
		if _, err := io.ReadFull(src, data); err != nil {
			return ZeroHash, fmt.Errorf("write object: short read of %d bytes (the file changed while being stored): %w", size, err)
		}
		hasher := plumbing.NewHasher(t, size)
		hasher.Write(data)
		h := Hash(hasher.Sum())
		hex := h.String()
		final := filepath.Join(objects, hex[:2], hex[2:])
		if _, err := os.Stat(final); err == nil {
			return h, nil // already stored: objects are content-addressed
		}
		return h, installObject(objects, func(f *os.File) (string, error) {
			zw := zlibWriters.Get().(*zlib.Writer)
			defer zlibWriters.Put(zw)
			zw.Reset(f)
			if _, err := fmt.Fprintf(zw, "%s %d\x00", t, size); err != nil {
				return "", err
			}
			if _, err := zw.Write(data); err != nil {
				return "", err
			}
			return final, zw.Close()
		})
	}
	var h Hash
	err := installObject(objects, func(f *os.File) (string, error) {
		w := objfile.NewWriter(f)
		if err := w.WriteHeader(t, size); err != nil {
			return "", err
		}
		n, err := io.Copy(w, io.LimitReader(src, size))
		if err == nil && n != size {
			err = fmt.Errorf("short read: %d of %d bytes (the file changed while being stored)", n, size)
		}
		if err == nil {
			err = w.Close()
		}
		h = Hash(w.Hash())
		hex := h.String()
		return filepath.Join(objects, hex[:2], hex[2:]), err
	})
	return h, err
}

// installObject writes a loose object through fill into a temporary file
// in objects and renames it to the path fill returns, unless an object is
// there already.
func installObject(objects string, fill func(*os.File) (string, error)) error {
	f, err := os.CreateTemp(objects, "tmp_obj_refci_")
	if err != nil {
		return fmt.Errorf("write object: %w", describeIOError(err))
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	final, err := fill(f)
	if err == nil {
		err = f.Close()
	}
	if err != nil {
		return fmt.Errorf("write object: %w", describeIOError(err))
	}
	if _, err := os.Stat(final); err == nil {
		os.Remove(tmp) // stored meanwhile: objects are content-addressed
		ok = true
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return fmt.Errorf("write object: %w", describeIOError(err))
	}
	os.Chmod(tmp, 0o444)
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("write object: %w", err)
	}
	ok = true
	return nil
}

// writeObject writes an encoded object (tree, commit) built in memory.
func (r *Repo) writeObject(o plumbing.EncodedObject) (Hash, error) {
	rd, err := o.Reader()
	if err != nil {
		return ZeroHash, err
	}
	defer rd.Close()
	return r.writeStream(o.Type(), o.Size(), rd)
}

// TreeFile is one file of a tree to write.
type TreeFile struct {
	Path       string // slash-separated, relative
	Hash       Hash
	Executable bool
}

// WriteTree writes the nested trees holding files and returns the root.
func (r *Repo) WriteTree(files []TreeFile) (Hash, error) {
	type dir struct {
		files map[string]TreeFile
		dirs  map[string]*dir
	}
	newDir := func() *dir { return &dir{files: map[string]TreeFile{}, dirs: map[string]*dir{}} }
	root := newDir()
	for _, f := range files {
		p := path.Clean(f.Path)
		if p == "." || strings.HasPrefix(p, "../") || p == ".." || strings.HasPrefix(p, "/") {
			return ZeroHash, fmt.Errorf("tree path %q is not relative", f.Path)
		}
		parts := strings.Split(p, "/")
		for _, part := range parts {
			if IsDotGitName(part) {
				return ZeroHash, fmt.Errorf("tree path %q: a component named like .git is refused (git fsck and forges reject it)", f.Path)
			}
		}
		d := root
		for _, part := range parts[:len(parts)-1] {
			if _, clash := d.files[part]; clash {
				return ZeroHash, fmt.Errorf("tree path %q: %s is a file", f.Path, part)
			}
			sub, ok := d.dirs[part]
			if !ok {
				sub = newDir()
				d.dirs[part] = sub
			}
			d = sub
		}
		base := parts[len(parts)-1]
		if _, clash := d.dirs[base]; clash {
			return ZeroHash, fmt.Errorf("tree path %q is also a directory", f.Path)
		}
		d.files[base] = f
	}
	var write func(d *dir) (Hash, error)
	write = func(d *dir) (Hash, error) {
		t := &object.Tree{}
		for name, f := range d.files {
			mode := filemode.Regular
			if f.Executable {
				mode = filemode.Executable
			}
			t.Entries = append(t.Entries, object.TreeEntry{Name: name, Mode: mode, Hash: ph(f.Hash)})
		}
		for name, sub := range d.dirs {
			h, err := write(sub)
			if err != nil {
				return ZeroHash, err
			}
			t.Entries = append(t.Entries, object.TreeEntry{Name: name, Mode: filemode.Dir, Hash: ph(h)})
		}
		sort.Sort(object.TreeEntrySorter(t.Entries)) // git's order: directories sort as name + "/"
		obj := r.st.NewEncodedObject()
		if err := t.Encode(obj); err != nil {
			return ZeroHash, err
		}
		return r.writeObject(obj)
	}
	h, err := write(root)
	if err != nil {
		return ZeroHash, fmt.Errorf("write tree: %w", err)
	}
	return h, nil
}

// CommitSpec describes a commit to write.
type CommitSpec struct {
	Tree    Hash
	Parents []Hash
	Author  Signature // also the committer
	Message string
}

// SignFunc returns an armored detached OpenPGP signature of message.
type SignFunc func(message []byte) (string, error)

// WriteCommit writes a commit, signed when sign is not nil. The signature
// covers the commit exactly as git verify-commit checks it.
func (r *Repo) WriteCommit(spec CommitSpec, sign SignFunc) (Hash, error) {
	parents := make([]plumbing.Hash, len(spec.Parents))
	for i, p := range spec.Parents {
		parents[i] = ph(p)
	}
	c := &object.Commit{
		Author:       spec.Author.goGit(),
		Committer:    spec.Author.goGit(),
		Message:      spec.Message,
		TreeHash:     ph(spec.Tree),
		ParentHashes: parents,
	}
	if sign != nil {
		unsigned := r.st.NewEncodedObject()
		if err := c.EncodeWithoutSignature(unsigned); err != nil {
			return ZeroHash, err
		}
		rd, err := unsigned.Reader()
		if err != nil {
			return ZeroHash, err
		}
		msg, err := io.ReadAll(rd)
		rd.Close()
		if err != nil {
			return ZeroHash, err
		}
		sig, err := sign(msg)
		if err != nil {
			return ZeroHash, fmt.Errorf("sign commit: %w", err)
		}
		c.PGPSignature = sig
	}
	obj := r.st.NewEncodedObject()
	if err := c.Encode(obj); err != nil {
		return ZeroHash, err
	}
	h, err := r.writeObject(obj)
	if err != nil {
		return ZeroHash, fmt.Errorf("write commit: %w", err)
	}
	return h, nil
}

// CreateRef creates ref name pointing at h. It fails with ErrRefExists if
// the ref exists (loose or packed) and never leaves a partial ref behind:
// the value is written to name.lock and renamed into place, as git does.
func (r *Repo) CreateRef(name string, h Hash) error {
	return r.UpdateRef(name, h, ZeroHash)
}

// UpdateRef sets ref name to h if it currently points at old (ZeroHash:
// must not exist). A mismatch wraps ErrRefChanged (ErrRefExists when old
// is zero); h == ZeroHash deletes the ref, from packed-refs too (under the
// ref's lock, as git does).
func (r *Repo) UpdateRef(name string, h, old Hash) error {
	if err := plumbing.ReferenceName(name).Validate(); err != nil || !strings.HasPrefix(name, "refs/") {
		return fmt.Errorf("invalid ref name %q", name)
	}
	p := filepath.Join(r.commonDir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o777); err != nil {
		return fmt.Errorf("update %s: %w", name, err)
	}
	lock := p + ".lock"
	f, err := os.OpenFile(lock, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("update %s: %w: another process holds %s", name, ErrRefChanged, lock)
		}
		return fmt.Errorf("update %s: %w", name, err)
	}
	committed := false
	defer func() {
		if !committed {
			f.Close()
			os.Remove(lock)
		}
	}()
	cur, err := r.RefHash(name)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("update %s: %w", name, err)
	}
	if old == ZeroHash && h != ZeroHash {
		if err := r.checkNameConflict(name); err != nil {
			return fmt.Errorf("create %s: %w", name, err)
		}
	}
	if cur != old {
		if old == ZeroHash {
			return fmt.Errorf("update %s: %w (it points at %s)", name, ErrRefExists, cur)
		}
		return fmt.Errorf("update %s: %w: expected %s, found %s", name, ErrRefChanged, old, cur)
	}
	if h == ZeroHash {
		packed := map[string]Hash{}
		if err := readPackedRefs(filepath.Join(r.commonDir, "packed-refs"), name, packed); err != nil {
			return fmt.Errorf("delete %s: %w", name, err)
		}
		if _, ok := packed[name]; ok {
			// Out of packed-refs first, then the loose file: never a
			// moment where an older packed value shows through.
			if err := rewritePackedRefs(r.commonDir, func(m map[string]Hash) { delete(m, name) }); err != nil {
				return fmt.Errorf("delete %s: %w", name, err)
			}
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("delete %s: %w", name, err)
		}
		return nil
	}
	if _, err := f.WriteString(h.String() + "\n"); err != nil {
		return fmt.Errorf("update %s: %w", name, describeIOError(err))
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("update %s: %w", name, describeIOError(err))
	}
	committed = true
	if err := os.Rename(lock, p); err != nil {
		os.Remove(lock)
		return fmt.Errorf("update %s: %w", name, err)
	}
	return nil
}

// describeIOError adds advice to the errors a user can act on.
func describeIOError(err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("%w: free some disk space and run again", err)
	}
	return err
}

func sortRefs(refs []Ref) {
	sort.Slice(refs, func(i, j int) bool { return refs[i].Name < refs[j].Name })
}

// encodeBytes returns what an object encoder writes.
func encodeBytes(encode func(plumbing.EncodedObject) error) ([]byte, error) {
	o := &plumbing.MemoryObject{}
	if err := encode(o); err != nil {
		return nil, err
	}
	rd, err := o.Reader()
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	return io.ReadAll(rd)
}

// IsDotGitName reports whether a path component would be taken for .git
// by git or by a case-insensitive or NTFS/HFS file system (".git",
// ".GIT", "git~1", ".git.", ".git " ...). git fsck refuses such trees.
func IsDotGitName(name string) bool {
	n := strings.ToLower(strings.TrimRight(name, ". "))
	// HFS+ ignores some zero-width code points.
	for _, zw := range []string{"\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u206a", "\u206b", "\u206c", "\u206d", "\u206e", "\u206f", "\ufeff"} {
		n = strings.ReplaceAll(n, zw, "")
	}
	return n == ".git" || n == "git~1"
}

// checkNameConflict refuses a new ref "a/b" next to an existing "a", or
// "a" next to "a/b", as git does (a name cannot be a file and a directory).
func (r *Repo) checkNameConflict(name string) error {
	data, err := readPackedRefsFile(r.commonDir)
	if err != nil {
		return err
	}
	if other := packedRefConflict(data, name); other != "" {
		return fmt.Errorf("%w: it would clash with %s", ErrRefExists, other)
	}
	return nil
}
