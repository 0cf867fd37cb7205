package gitproto

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// Hash is a git object id (SHA-1). The zero value is ZeroHash, "no
// object". It is a plain value, compared with ==.
type Hash [20]byte

// ZeroHash is the all-zero object id, meaning "no object".
var ZeroHash Hash

// String returns the id as 40 lower-case hexadecimal digits.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// IsZero reports whether h is ZeroHash.
func (h Hash) IsZero() bool { return h == ZeroHash }

// NewHash parses a hexadecimal object id. What is not 40 hexadecimal
// digits gives ZeroHash or a partial id, as go-git's parser does;
// callers that take ids from users check them with IsHash first.
func NewHash(s string) Hash { return Hash(plumbing.NewHash(s)) }

// IsHash reports whether s is a full object id: 40 hexadecimal digits.
func IsHash(s string) bool { return plumbing.IsHash(s) }

// ph converts an id to go-git's type (the same bytes; no copy escapes).
func ph(h Hash) plumbing.Hash { return plumbing.Hash(h) }

// Signature is an author, committer or tagger identity.
type Signature struct {
	Name  string
	Email string
	When  time.Time
}

// NewSignature is a helper for commit identities.
func NewSignature(name, email string, when time.Time) Signature {
	return Signature{Name: name, Email: email, When: when}
}

func signatureOf(s object.Signature) Signature {
	return Signature{Name: s.Name, Email: s.Email, When: s.When}
}

func (s Signature) goGit() object.Signature {
	return object.Signature{Name: s.Name, Email: s.Email, When: s.When}
}

// Commit is a commit read from a repository (Repo.Commit). Its fields
// are the commit's and are not to be changed; it stays valid after the
// Repo changes and is safe for concurrent reads. A Commit made by hand
// has no signed payload.
type Commit struct {
	Hash      Hash
	Tree      Hash
	Parents   []Hash // first parent first; none for a root commit
	Author    Signature
	Committer Signature
	Message   string
	// Signature is the armored OpenPGP signature of its gpgsig header,
	// "" if it is unsigned.
	Signature string

	raw *object.Commit // for the signed payload, encoded on demand
}

func commitOf(c *object.Commit) *Commit {
	out := &Commit{
		Hash:      Hash(c.Hash),
		Tree:      Hash(c.TreeHash),
		Author:    signatureOf(c.Author),
		Committer: signatureOf(c.Committer),
		Message:   c.Message,
		Signature: c.PGPSignature,
		raw:       c,
	}
	if len(c.ParentHashes) > 0 {
		out.Parents = make([]Hash, len(c.ParentHashes))
		for i, p := range c.ParentHashes {
			out.Parents[i] = Hash(p)
		}
	}
	return out
}

// Tag is an annotated tag read from a repository (Repo.Tag), like
// Commit: read-only, safe for concurrent reads.
type Tag struct {
	Hash       Hash
	Name       string
	Target     Hash   // the object it names
	TargetType string // "commit", "tree", "blob" or "tag"
	Tagger     Signature
	Message    string
	// Signature is the armored OpenPGP signature at the end of its
	// message, "" if it is unsigned.
	Signature string

	raw *object.Tag
}

func tagOf(t *object.Tag) *Tag {
	return &Tag{
		Hash:       Hash(t.Hash),
		Name:       t.Name,
		Target:     Hash(t.Target),
		TargetType: t.TargetType.String(),
		Tagger:     signatureOf(t.Tagger),
		Message:    t.Message,
		Signature:  t.PGPSignature,
		raw:        t,
	}
}

// SignedPayload returns what a commit's signature covers (the commit
// without its gpgsig header) and the armored signature ("" if unsigned),
// as git verify-commit checks it.
func SignedPayload(c *Commit) ([]byte, string, error) {
	if c.raw == nil {
		return nil, "", errors.New("signed payload: not a commit read from a repository")
	}
	b, err := encodeBytes(c.raw.EncodeWithoutSignature)
	return b, c.Signature, err
}

// TagSignedPayload returns what an annotated tag's signature covers (the
// tag without its signature) and the armored signature ("" if unsigned),
// as `git verify-tag` checks it.
func TagSignedPayload(t *Tag) ([]byte, string, error) {
	if t.raw == nil {
		return nil, "", errors.New("signed payload: not a tag read from a repository")
	}
	b, err := encodeBytes(t.raw.EncodeWithoutSignature)
	return b, t.Signature, err
}

// Tree is the root tree of a commit, for reading several files of it
// with one commit and tree lookup. It holds the Repo it came from and,
// like it, is not safe for concurrent use.
type Tree struct {
	commit Hash
	t      *object.Tree
}

// TreeOf reads the root tree of commit h.
func (r *Repo) TreeOf(commit Hash) (*Tree, error) {
	c, err := object.GetCommit(r.st, ph(commit))
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", commit, err)
	}
	t, err := c.Tree()
	if err != nil {
		return nil, fmt.Errorf("tree of %s: %w", commit, err)
	}
	return &Tree{commit: commit, t: t}, nil
}

// Tree reads the root tree of commit c, read before from this Repo.
func (r *Repo) Tree(c *Commit) (*Tree, error) {
	if c.raw == nil {
		return r.TreeOf(c.Hash)
	}
	t, err := object.GetTree(r.st, c.raw.TreeHash)
	if err != nil {
		return nil, fmt.Errorf("tree of %s: %w", c.Hash, err)
	}
	return &Tree{commit: c.Hash, t: t}, nil
}

// Open opens the file at path (slash-separated) for streaming. A missing
// file wraps ErrNotFound.
func (t *Tree) Open(path string) (io.ReadCloser, error) {
	f, err := t.t.File(path)
	if err != nil {
		if errors.Is(err, object.ErrFileNotFound) || errors.Is(err, object.ErrDirectoryNotFound) {
			return nil, fmt.Errorf("%s in %s: %w", path, t.commit.String()[:12], ErrNotFound)
		}
		return nil, fmt.Errorf("%s in %s: %w", path, t.commit, err)
	}
	return f.Reader()
}

// ReadFile reads the file at path. A missing file wraps ErrNotFound.
func (t *Tree) ReadFile(path string) ([]byte, error) {
	rc, err := t.Open(path)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// File is one file of a directory listed by Tree.Files.
type File struct {
	Name string // slash-separated, relative to the directory listed
	Size int64
	// Regular is true for regular and executable files, false for
	// symbolic links (whose content is the link's target).
	Regular bool

	f *object.File
}

// Open opens the file's content for streaming.
func (f *File) Open() (io.ReadCloser, error) { return f.f.Reader() }

// Files calls fn for each file under directory dir (recursively; "" is
// the root), in git's order, and stops at fn's first error, which it
// returns. Submodules are not files and are left out. A missing dir
// wraps ErrNotFound.
func (t *Tree) Files(dir string, fn func(*File) error) error {
	sub := t.t
	if dir != "" {
		var err error
		sub, err = t.t.Tree(dir)
		if errors.Is(err, object.ErrDirectoryNotFound) || errors.Is(err, object.ErrFileNotFound) {
			return fmt.Errorf("%s in %s: %w", dir, t.commit.String()[:12], ErrNotFound)
		}
		if err != nil {
			return err
		}
	}
	return sub.Files().ForEach(func(f *object.File) error {
		return fn(&File{Name: f.Name, Size: f.Size, Regular: f.Mode == filemode.Regular || f.Mode == filemode.Executable, f: f})
	})
}

// List returns the names of the entries directly in directory dir ("" is
// the root), in git's order: files, directories, links and submodules
// alike. A missing dir wraps ErrNotFound; an entry dir that is not a
// directory is an error.
func (t *Tree) List(dir string) ([]string, error) {
	sub := t.t
	if dir != "" {
		e, err := t.t.FindEntry(dir)
		if err != nil {
			return nil, fmt.Errorf("%s in %s: %w", dir, t.commit.String()[:12], ErrNotFound)
		}
		if e.Mode != filemode.Dir {
			return nil, fmt.Errorf("%s in %s: not a directory", dir, t.commit.String()[:12])
		}
		if sub, err = t.t.Tree(dir); err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
	}
	names := make([]string, len(sub.Entries))
	for i, e := range sub.Entries {
		names[i] = e.Name
	}
	return names, nil
}

// IsAncestor reports whether commit a is b or an ancestor of b.
func (r *Repo) IsAncestor(a, b Hash) (bool, error) {
	if a == b {
		return true, nil
	}
	ca, err := object.GetCommit(r.st, ph(a))
	if err != nil {
		return false, fmt.Errorf("commit %s: %w", a, err)
	}
	cb, err := object.GetCommit(r.st, ph(b))
	if err != nil {
		return false, fmt.Errorf("commit %s: %w", b, err)
	}
	return ca.IsAncestor(cb)
}
