package gitproto

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// The pack of a direct push, made in this process.
//
// What a worker pushes is small and known: claim commits, result commits
// and their trees, whose parents are the refs' old values (a renewed
// claim's previous claim, a run's previous snapshot) or nothing. For
// those, walking the new values here and encoding their objects with
// go-git's pack encoder costs a fraction of a `git pack-objects`
// process, which mostly pays for its own start and for reading every
// loose object through mmap. Anything larger or odder than that (more
// than ownPackMaxObjects objects or ownPackMaxBytes of them, an object
// the cache cannot read, a tag, a submodule) goes to git pack-objects
// as before, so its rules and its error messages apply.
var (
	ownPackMaxObjects       = 4096
	ownPackMaxBytes   int64 = 8 << 20
)

// ownPacksSent counts the packs sendOwnPack stored (for tests).
var ownPacksSent atomic.Int64

// errNotOwnPack: the objects are not for packing here.
var errNotOwnPack = errors.New("not a pack for this process")

// ownPackObjects lists the objects reachable from wants, not walking
// into the commits in haves (the remote's current values of the refs
// being updated, which it holds with everything they reach). Trees and
// blobs are listed even where an old value's tree shares them: a
// duplicate in a pack is harmless, a missing object is not. It returns
// errNotOwnPack when the walk is not one for this process.
func ownPackObjects(r *Repo, wants, haves []Hash) ([]plumbing.Hash, error) {
	have := make(map[plumbing.Hash]bool, len(haves))
	for _, h := range haves {
		have[ph(h)] = true
	}
	seen := map[plumbing.Hash]bool{}
	var out []plumbing.Hash
	var bytes int64
	add := func(h plumbing.Hash) (bool, error) {
		if seen[h] {
			return false, nil
		}
		seen[h] = true
		if len(out) >= ownPackMaxObjects {
			return false, errNotOwnPack
		}
		size, err := r.st.EncodedObjectSize(h)
		if err != nil {
			return false, errNotOwnPack
		}
		if bytes += size; bytes > ownPackMaxBytes {
			return false, errNotOwnPack
		}
		out = append(out, h)
		return true, nil
	}
	var walkTree func(h plumbing.Hash) error
	walkTree = func(h plumbing.Hash) error {
		if fresh, err := add(h); !fresh || err != nil {
			return err
		}
		t, err := object.GetTree(r.st, h)
		if err != nil {
			return errNotOwnPack
		}
		for _, e := range t.Entries {
			switch e.Mode {
			case filemode.Dir:
				if err := walkTree(e.Hash); err != nil {
					return err
				}
			case filemode.Regular, filemode.Executable, filemode.Symlink, filemode.Deprecated:
				if _, err := add(e.Hash); err != nil {
					return err
				}
			default: // a submodule, or a mode git would not write
				return errNotOwnPack
			}
		}
		return nil
	}
	stack := make([]plumbing.Hash, 0, len(wants))
	for _, h := range wants {
		stack = append(stack, ph(h))
	}
	for len(stack) > 0 {
		h := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if have[h] || seen[h] {
			continue
		}
		c, err := object.GetCommit(r.st, h)
		if err != nil {
			return nil, errNotOwnPack // a tag, a tree or a blob as a value; or unreadable
		}
		if _, err := add(h); err != nil {
			return nil, err
		}
		if err := walkTree(c.TreeHash); err != nil {
			return nil, err
		}
		stack = append(stack, c.ParentHashes...)
	}
	return out, nil
}

// sendOwnPack stores in the remote at gitDir, as one pack through git
// index-pack (which checks every object of it), the objects that
// ownPackObjects lists; like copyObjects with keep, it returns the
// pack's .keep file. It returns errNotOwnPack, having stored nothing,
// when the objects are not for packing here.
func (r *Remote) sendOwnPack(ctx context.Context, cache *Repo, gitDir string, wants, haves []Hash) (string, error) {
	hashes, err := ownPackObjects(cache, wants, haves)
	if err != nil {
		return "", err
	}
	if len(hashes) == 0 {
		return "", nil
	}
	pr, pw := io.Pipe()
	encoded := make(chan error, 1)
	go func() {
		_, err := packfile.NewEncoder(pw, cache.st, false).Encode(hashes, 0)
		pw.CloseWithError(err)
		encoded <- err
	}()
	stdout, stderr, err := r.gitAt(ctx, gitDir, pr, "index-pack", "--stdin", "--keep=refci direct update")
	pr.CloseWithError(io.ErrClosedPipe) // the encoder stops if index-pack did not read it all
	encErr := <-encoded
	var keepPath string
	if err == nil {
		// "keep\t<pack hash>"
		if _, h, ok := strings.Cut(strings.TrimSpace(string(stdout)), "\t"); ok {
			keepPath = filepath.Join(gitDir, "objects", "pack", "pack-"+h+".keep")
		}
		ownPacksSent.Add(1)
	}
	switch {
	case encErr != nil && !errors.Is(encErr, io.ErrClosedPipe):
		return keepPath, &RemoteError{Kind: KindOther, URL: r.URL, Op: "push", Err: fmt.Errorf("packing the objects of the push from the cache: %w", encErr)}
	case err != nil:
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return keepPath, &RemoteError{Kind: classify(stderr), URL: r.URL, Op: "push", Stderr: r.redact(stderr),
			Err: fmt.Errorf("git index-pack in the remote: %w", err)}
	}
	return keepPath, nil
}
