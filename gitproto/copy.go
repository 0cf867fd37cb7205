package gitproto

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// CopyOptions bound and steer CopyObjects.
type CopyOptions struct {
	MaxObjects int   // more objects to copy than this: ErrTooMuchToCopy
	MaxBytes   int64 // more content than this: ErrTooMuchToCopy
	// Fresh says that src has just made every object the walk reaches (a
	// new commit without parents, its new tree and blob), so that r
	// cannot hold them and is not asked. Asking costs little, but the
	// first object a repository lacks has go-git read the index of every
	// pack it has: milliseconds, on a repository that many pushes left
	// many packs in.
	Fresh bool
}

// ErrTooMuchToCopy is what CopyObjects returns when more than its limits
// would have to be copied; nothing was copied then.
var ErrTooMuchToCopy = errors.New("more objects to copy than the limit")

// CopyObjects copies into r, as loose objects, every object reachable from
// tips (commits with their trees and parents, annotated tags with what
// they point at) that r lacks, reading them from src, another repository
// on this machine. It does in this process, for a handful of objects,
// what a fetch from src does with two git processes.
//
// The walk stops at every object r has: r is taken to hold everything an
// object it holds reaches, as git does. Objects are written children
// first (a blob before its tree, a tree before its commit, a parent
// before its child), so that this stays true whenever the copy stops.
// Submodule entries (another repository's commits) are not followed.
//
// It returns how many objects it copied. When more than the options allow
// would have to be copied, it copies none and returns ErrTooMuchToCopy
// (copy them with git then). An object that src lacks is an error.
// Neither repository is shared with another goroutine meanwhile (see
// Repo).
func (r *Repo) CopyObjects(src *Repo, tips []Hash, opt CopyOptions) (int, error) {
	type pending struct {
		h    plumbing.Hash
		typ  plumbing.ObjectType
		data []byte
	}
	type frame struct {
		h        plumbing.Hash
		expanded *pending // read and its children pushed: write it when it comes up again
	}
	visited := map[plumbing.Hash]bool{}
	var toWrite []pending
	var total int64
	count := 0
	stack := make([]frame, 0, len(tips))
	for i := len(tips) - 1; i >= 0; i-- {
		stack = append(stack, frame{h: ph(tips[i])})
	}
	for len(stack) > 0 {
		top := &stack[len(stack)-1]
		if top.expanded != nil {
			toWrite = append(toWrite, *top.expanded)
			stack = stack[:len(stack)-1]
			continue
		}
		h := top.h
		if visited[h] || !opt.Fresh && r.st.HasEncodedObject(h) == nil {
			visited[h] = true
			stack = stack[:len(stack)-1]
			continue
		}
		visited[h] = true
		if count++; count > opt.MaxObjects {
			return 0, ErrTooMuchToCopy
		}
		// The size first: go-git reads a loose object whole.
		size, err := src.st.EncodedObjectSize(h)
		if err != nil {
			return 0, fmt.Errorf("copy object %s: %w", h, err)
		}
		if total += size; total > opt.MaxBytes {
			return 0, ErrTooMuchToCopy
		}
		obj, err := src.st.EncodedObject(plumbing.AnyObject, h)
		if err != nil {
			return 0, fmt.Errorf("copy object %s: %w", h, err)
		}
		rd, err := obj.Reader()
		if err != nil {
			return 0, fmt.Errorf("copy object %s: %w", h, err)
		}
		data, err := io.ReadAll(rd)
		rd.Close()
		if err != nil {
			return 0, fmt.Errorf("copy object %s: %w", h, err)
		}
		p := &pending{h: h, typ: obj.Type(), data: data}
		top.expanded = p // top stays valid: nothing was pushed since it was taken
		mo := &plumbing.MemoryObject{}
		mo.SetType(obj.Type())
		mo.Write(data)
		children, err := objectChildren(mo)
		if err != nil {
			return 0, fmt.Errorf("copy object %s: %w", h, err)
		}
		for i := len(children) - 1; i >= 0; i-- {
			if !visited[children[i]] {
				stack = append(stack, frame{h: children[i]})
			}
		}
	}
	for _, p := range toWrite {
		got, err := r.writeStream(p.typ, int64(len(p.data)), bytes.NewReader(p.data))
		if err != nil {
			return 0, err
		}
		if ph(got) != p.h {
			return 0, fmt.Errorf("copy object %s: it hashes to %s here", p.h, got)
		}
	}
	return len(toWrite), nil
}

// objectChildren lists the objects obj names: a commit's tree and
// parents, a tag's target, a tree's entries but submodules.
func objectChildren(obj plumbing.EncodedObject) ([]plumbing.Hash, error) {
	switch obj.Type() {
	case plumbing.CommitObject:
		var c object.Commit
		if err := c.Decode(obj); err != nil {
			return nil, err
		}
		return append([]plumbing.Hash{c.TreeHash}, c.ParentHashes...), nil
	case plumbing.TagObject:
		var t object.Tag
		if err := t.Decode(obj); err != nil {
			return nil, err
		}
		return []plumbing.Hash{t.Target}, nil
	case plumbing.TreeObject:
		var t object.Tree
		if err := t.Decode(obj); err != nil {
			return nil, err
		}
		out := make([]plumbing.Hash, 0, len(t.Entries))
		for _, e := range t.Entries {
			if e.Mode != filemode.Submodule {
				out = append(out, e.Hash)
			}
		}
		return out, nil
	}
	return nil, nil
}
