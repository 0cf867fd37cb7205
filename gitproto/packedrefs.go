package gitproto

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
)

// Writing packed-refs.
//
// A loose ref is a file, and each update of one is a new file (git's
// <ref>.lock, renamed over the ref), each deletion two removed. A worker's
// cache mirrors every request and claim of its remote, thousands at a
// time, changing with every pass; and every read of them opens one file
// per ref. setPackedRefs puts a whole batch of such changes into the
// packed-refs file in one rewrite instead, under git's lock for it
// (packed-refs.lock, created exclusively, renamed into place), which git
// itself honours: git reads a ref from its loose file first, else from
// packed-refs. A loose file of a ref changed here is removed under that
// ref's own lock, as git pack-refs does, so that it cannot hide the new
// value. Peeled values are not recorded (git peels tags itself when the
// header does not promise them).

// packedRefsTimeout is how long a writer waits for packed-refs.lock (git's
// core.packedRefsTimeout default).
const packedRefsTimeout = time.Second

// lockFile creates path exclusively, waiting up to timeout while another
// holds it.
func lockFile(path string, timeout time.Duration) (*os.File, error) {
	deadline := time.Now().Add(timeout)
	delay := time.Millisecond
	for {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
		if err == nil || !errors.Is(err, os.ErrExist) || time.Now().After(deadline) {
			if errors.Is(err, os.ErrExist) {
				err = fmt.Errorf("%w: another process holds %s (if none does, one died: remove the file)", ErrRefChanged, path)
			}
			return f, err
		}
		time.Sleep(delay)
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// setPackedRefs sets each ref of refs in gitDir's packed-refs to its value
// (ZeroHash: deletes it), in one rewrite; see above.
func setPackedRefs(gitDir string, refs map[string]Hash) error {
	if len(refs) == 0 {
		return nil
	}
	for name := range refs {
		if err := plumbing.ReferenceName(name).Validate(); err != nil || !strings.HasPrefix(name, "refs/") {
			return fmt.Errorf("invalid ref name %q", name)
		}
	}
	if err := rewritePackedRefs(gitDir, func(cur map[string]Hash) {
		for name, h := range refs {
			if h == ZeroHash {
				delete(cur, name)
			} else {
				cur[name] = h
			}
		}
	}); err != nil {
		return err
	}
	for name := range refs {
		if err := removeLooseRef(gitDir, name); err != nil {
			return err
		}
	}
	return nil
}

// rewritePackedRefs rewrites gitDir's packed-refs with change applied to
// its refs, under packed-refs.lock.
func rewritePackedRefs(gitDir string, change func(map[string]Hash)) error {
	path := filepath.Join(gitDir, "packed-refs")
	lock, err := lockFile(path+".lock", packedRefsTimeout)
	if err != nil {
		return fmt.Errorf("update packed-refs: %w", err)
	}
	done := false
	defer func() {
		if !done {
			lock.Close()
			os.Remove(lock.Name())
		}
	}()
	cur := map[string]Hash{}
	if err := readPackedRefs(path, "", cur); err != nil {
		return fmt.Errorf("update packed-refs: %w", err)
	}
	change(cur)
	names := make([]string, 0, len(cur))
	for name := range cur {
		names = append(names, name)
	}
	sort.Strings(names) // git's order: byte-wise
	var b bytes.Buffer
	b.Grow(len(names) * 80)
	b.WriteString("# pack-refs with: sorted \n")
	for _, name := range names {
		b.WriteString(cur[name].String())
		b.WriteByte(' ')
		b.WriteString(name)
		b.WriteByte('\n')
	}
	w := bufio.NewWriter(lock)
	if _, err := w.Write(b.Bytes()); err != nil {
		return fmt.Errorf("update packed-refs: %w", describeIOError(err))
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("update packed-refs: %w", describeIOError(err))
	}
	if err := lock.Close(); err != nil {
		return fmt.Errorf("update packed-refs: %w", describeIOError(err))
	}
	done = true
	if err := os.Rename(lock.Name(), path); err != nil {
		os.Remove(lock.Name())
		return fmt.Errorf("update packed-refs: %w", err)
	}
	return nil
}

// removeLooseRef removes the loose file of ref name, if there is one,
// under its lock.
func removeLooseRef(gitDir, name string) error {
	p := filepath.Join(gitDir, filepath.FromSlash(name))
	if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	lock, err := lockFile(p+".lock", packedRefsTimeout)
	if err != nil {
		return fmt.Errorf("remove the loose %s: %w", name, err)
	}
	defer os.Remove(lock.Name())
	defer lock.Close()
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the loose %s: %w", name, err)
	}
	return nil
}
