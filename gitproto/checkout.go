package gitproto

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// CheckoutStats counts what Checkout wrote.
type CheckoutStats struct {
	Files      int
	Symlinks   int
	Submodules int // gitlinks: left as empty directories
	Bytes      int64
}

// Checkout writes the tree of commit into dir, which must exist and be
// empty. It touches neither the repository's index nor its work tree.
// Entry names that could escape dir (.., /, .git) are refused, files are
// created with O_EXCL|O_NOFOLLOW so a symlink in the tree can never
// redirect a write, and symlinks are recreated verbatim (the caller
// decides whether to follow them).
func (r *Repo) Checkout(commit Hash, dir string) (CheckoutStats, error) {
	var st CheckoutStats
	tree, err := r.TreeOf(commit)
	if err != nil {
		return st, err
	}
	buf := make([]byte, 64*1024)
	if err := r.checkoutTree(tree.t, dir, "", &st, buf); err != nil {
		return st, fmt.Errorf("checkout %s: %w", commit.String()[:12], describeIOError(err))
	}
	return st, nil
}

func (r *Repo) checkoutTree(t *object.Tree, dir, rel string, st *CheckoutStats, buf []byte) error {
	for _, e := range t.Entries {
		if e.Name == "" || e.Name == "." || e.Name == ".." || strings.ContainsAny(e.Name, "/\x00") || IsDotGitName(e.Name) {
			return fmt.Errorf("tree entry %q in %q is not a safe file name", e.Name, rel)
		}
		p := filepath.Join(dir, e.Name)
		relp := rel + e.Name
		switch e.Mode {
		case filemode.Dir:
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
			sub, err := object.GetTree(r.st, e.Hash)
			if err != nil {
				return fmt.Errorf("%s: %w", relp, err)
			}
			if err := r.checkoutTree(sub, p, relp+"/", st, buf); err != nil {
				return err
			}
		case filemode.Submodule:
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
			st.Submodules++
		case filemode.Symlink:
			target, err := r.blobBytes(e)
			if err != nil {
				return fmt.Errorf("%s: %w", relp, err)
			}
			if err := os.Symlink(string(target), p); err != nil {
				return err
			}
			st.Symlinks++
		case filemode.Regular, filemode.Executable, filemode.Deprecated:
			perm := os.FileMode(0o644)
			if e.Mode == filemode.Executable {
				perm = 0o755
			}
			n, err := r.writeBlobTo(e, p, perm, buf)
			if err != nil {
				return fmt.Errorf("%s: %w", relp, err)
			}
			st.Files++
			st.Bytes += n
		default:
			return fmt.Errorf("%s: unsupported file mode %o", relp, uint32(e.Mode))
		}
	}
	return nil
}

func (r *Repo) blobBytes(e object.TreeEntry) ([]byte, error) {
	b, err := object.GetBlob(r.st, e.Hash)
	if err != nil {
		return nil, err
	}
	rd, err := b.Reader()
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	return io.ReadAll(io.LimitReader(rd, 4096))
}

func (r *Repo) writeBlobTo(e object.TreeEntry, p string, perm os.FileMode, buf []byte) (int64, error) {
	b, err := object.GetBlob(r.st, e.Hash)
	if err != nil {
		return 0, err
	}
	rd, err := b.Reader()
	if err != nil {
		return 0, err
	}
	defer rd.Close()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, perm)
	if err != nil {
		return 0, err
	}
	n, err := io.CopyBuffer(f, rd, buf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return n, err
}
