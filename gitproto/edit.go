package gitproto

import (
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// TreeEdit is one change EditTree makes: the regular file at Path (slash
// separated, relative) set to the blob Hash, or removed when Hash is
// ZeroHash.
type TreeEdit struct {
	Path string
	Hash Hash
}

// EditTree writes the tree that is base (ZeroHash: the empty tree) with
// edits applied and returns its id. Only the trees on the edited paths
// are read and written: the cost grows with the number of edits times
// the depth of their paths, not with the size of the tree. A directory
// left empty by removals is removed; removing a missing file is no
// change. Paths are checked as WriteTree checks them; a path through a
// file, or onto a directory, is an error.
func (r *Repo) EditTree(base Hash, edits []TreeEdit) (Hash, error) {
	type node struct {
		files map[string]Hash // ZeroHash: remove
		dirs  map[string]*node
	}
	newNode := func() *node { return &node{files: map[string]Hash{}, dirs: map[string]*node{}} }
	root := newNode()
	for _, e := range edits {
		p := path.Clean(e.Path)
		if p == "." || p == ".." || strings.HasPrefix(p, "../") || strings.HasPrefix(p, "/") {
			return ZeroHash, fmt.Errorf("edit tree: path %q is not relative", e.Path)
		}
		parts := strings.Split(p, "/")
		n := root
		for i, part := range parts {
			if IsDotGitName(part) {
				return ZeroHash, fmt.Errorf("edit tree: path %q: a component named like .git is refused (git fsck and forges reject it)", e.Path)
			}
			if i == len(parts)-1 {
				if _, clash := n.dirs[part]; clash {
					return ZeroHash, fmt.Errorf("edit tree: path %q is also a directory", e.Path)
				}
				n.files[part] = e.Hash
				break
			}
			if _, clash := n.files[part]; clash {
				return ZeroHash, fmt.Errorf("edit tree: path %q: %s is a file", e.Path, part)
			}
			sub, ok := n.dirs[part]
			if !ok {
				sub = newNode()
				n.dirs[part] = sub
			}
			n = sub
		}
	}
	// apply returns the id of the tree at dir (old: its id before, ZeroHash
	// when missing) with n applied; ZeroHash when it ends up empty.
	var apply func(dir string, old Hash, n *node) (Hash, error)
	apply = func(dir string, old Hash, n *node) (Hash, error) {
		entries := map[string]object.TreeEntry{}
		if old != ZeroHash {
			t, err := r.readTree(old)
			if err != nil {
				return ZeroHash, fmt.Errorf("edit tree: %s: %w", dir, err)
			}
			for _, e := range t.Entries {
				entries[e.Name] = e
			}
		}
		for name, h := range n.files {
			if e, ok := entries[name]; ok && e.Mode == filemode.Dir {
				return ZeroHash, fmt.Errorf("edit tree: %s is a directory", path.Join(dir, name))
			}
			if h == ZeroHash {
				delete(entries, name)
				continue
			}
			entries[name] = object.TreeEntry{Name: name, Mode: filemode.Regular, Hash: ph(h)}
		}
		for name, sub := range n.dirs {
			var subOld Hash
			if e, ok := entries[name]; ok {
				if e.Mode != filemode.Dir {
					return ZeroHash, fmt.Errorf("edit tree: %s is a file", path.Join(dir, name))
				}
				subOld = Hash(e.Hash)
			}
			h, err := apply(path.Join(dir, name), subOld, sub)
			if err != nil {
				return ZeroHash, err
			}
			if h == ZeroHash {
				delete(entries, name)
			} else {
				entries[name] = object.TreeEntry{Name: name, Mode: filemode.Dir, Hash: ph(h)}
			}
		}
		if len(entries) == 0 && dir != "" {
			return ZeroHash, nil
		}
		t := &object.Tree{Entries: make([]object.TreeEntry, 0, len(entries))}
		for _, e := range entries {
			t.Entries = append(t.Entries, e)
		}
		sort.Sort(object.TreeEntrySorter(t.Entries))
		obj := r.st.NewEncodedObject()
		if err := t.Encode(obj); err != nil {
			return ZeroHash, err
		}
		return r.writeObject(obj)
	}
	h, err := apply("", base, root)
	if err != nil {
		return ZeroHash, err
	}
	return h, nil
}

func (r *Repo) readTree(h Hash) (*object.Tree, error) {
	var t *object.Tree
	var err error
	r.st.retry(func() error {
		t, err = object.GetTree(r.st, ph(h))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", h, err)
	}
	return t, nil
}

// TreeHashOf returns the id of commit h's root tree.
func (r *Repo) TreeHashOf(commit Hash) (Hash, error) {
	c, err := object.GetCommit(r.st, ph(commit))
	if err != nil {
		return ZeroHash, fmt.Errorf("commit %s: %w", commit, err)
	}
	return Hash(c.TreeHash), nil
}

// TreeEntryAt returns the id of what is at p (slash separated) in tree,
// and whether it is a directory. A missing entry wraps ErrNotFound. Only
// the trees on the path are read.
func (r *Repo) TreeEntryAt(tree Hash, p string) (Hash, bool, error) {
	cur := tree
	parts := strings.Split(path.Clean(p), "/")
	for i, part := range parts {
		t, err := r.readTree(cur)
		if err != nil {
			return ZeroHash, false, err
		}
		var found *object.TreeEntry
		for k := range t.Entries {
			if t.Entries[k].Name == part {
				found = &t.Entries[k]
				break
			}
		}
		if found == nil {
			return ZeroHash, false, fmt.Errorf("%s in tree %s: %w", p, tree.String()[:12], ErrNotFound)
		}
		isDir := found.Mode == filemode.Dir
		if i < len(parts)-1 && !isDir {
			return ZeroHash, false, fmt.Errorf("%s in tree %s: %w", p, tree.String()[:12], ErrNotFound)
		}
		cur = Hash(found.Hash)
		if i == len(parts)-1 {
			return cur, isDir, nil
		}
	}
	return ZeroHash, false, fmt.Errorf("%s in tree %s: %w", p, tree.String()[:12], ErrNotFound)
}

// ErrBlobTooLarge is wrapped by ReadBlob's error for a blob over its limit.
var ErrBlobTooLarge = errors.New("larger than the limit")

// ReadBlob reads blob h, refusing one larger than limit bytes (an error
// wrapping ErrBlobTooLarge).
func (r *Repo) ReadBlob(h Hash, limit int64) ([]byte, error) {
	var b *object.Blob
	var err error
	r.st.retry(func() error {
		b, err = object.GetBlob(r.st, ph(h))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", h, err)
	}
	if b.Size > limit {
		return nil, fmt.Errorf("blob %s: %d bytes: %w (%d)", h, b.Size, ErrBlobTooLarge, limit)
	}
	rc, err := b.Reader()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(io.LimitReader(rc, limit))
}

// TreeChange is a file that differs between two trees: its path and its
// blob in the newer tree (ZeroHash: removed).
type TreeChange struct {
	Path string
	Hash Hash
}

// DiffTrees calls fn for each regular file that differs between trees a
// and b (either may be ZeroHash, the empty tree), descending only into
// subtrees whose ids differ: the cost grows with what changed, not with
// the size of the trees. It stops at fn's first error, which it returns.
// Symbolic links and submodules are left out.
func (r *Repo) DiffTrees(a, b Hash, fn func(TreeChange) error) error {
	var walk func(dir string, a, b Hash) error
	entries := func(h Hash) (map[string]object.TreeEntry, error) {
		m := map[string]object.TreeEntry{}
		if h == ZeroHash {
			return m, nil
		}
		t, err := r.readTree(h)
		if err != nil {
			return nil, err
		}
		for _, e := range t.Entries {
			m[e.Name] = e
		}
		return m, nil
	}
	regular := func(e object.TreeEntry) bool { return e.Mode == filemode.Regular || e.Mode == filemode.Executable }
	walk = func(dir string, a, b Hash) error {
		if a == b {
			return nil
		}
		ea, err := entries(a)
		if err != nil {
			return err
		}
		eb, err := entries(b)
		if err != nil {
			return err
		}
		names := make([]string, 0, len(ea)+len(eb))
		for n := range ea {
			names = append(names, n)
		}
		for n := range eb {
			if _, ok := ea[n]; !ok {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		for _, n := range names {
			x, inA := ea[n]
			y, inB := eb[n]
			if inA && inB && x.Hash == y.Hash && x.Mode == y.Mode {
				continue
			}
			p := path.Join(dir, n)
			var subA, subB Hash
			if inA && x.Mode == filemode.Dir {
				subA = Hash(x.Hash)
			}
			if inB && y.Mode == filemode.Dir {
				subB = Hash(y.Hash)
			}
			if subA != ZeroHash || subB != ZeroHash {
				if err := walk(p, subA, subB); err != nil {
					return err
				}
			}
			fileA, fileB := inA && regular(x), inB && regular(y)
			switch {
			case fileB && (!fileA || x.Hash != y.Hash):
				if err := fn(TreeChange{Path: p, Hash: Hash(y.Hash)}); err != nil {
					return err
				}
			case fileA && !fileB:
				if err := fn(TreeChange{Path: p}); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk("", a, b); err != nil {
		if errors.Is(err, plumbing.ErrObjectNotFound) {
			return fmt.Errorf("diff trees: %w", err)
		}
		return err
	}
	return nil
}
