package gitproto

// Reading and deleting many refs and objects at once, each with one git
// process, for the readers that look at every run of a repository
// (refci gc): one `git cat-file --batch` for any number of objects, one
// `git update-ref --stdin` transaction for any number of deletions, one
// `git for-each-ref` for the commits branches and tags point at.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/go-git/go-git/v5/plumbing"
)

// MaxBatchObject is the largest object ReadObjects hands over: a bigger
// one (a hostile status.json, say) is skipped as if it were missing, so
// that one object cannot make the reader hold gigabytes.
const MaxBatchObject = 64 << 20

// ReadObjects reads the objects names name (an object id, or
// <commit>:<path> for a file of a commit's tree) through one `git
// cat-file --batch`, in order, and calls each with the index of the name
// and the object's content, or ok false when there is no such object (or
// it is larger than MaxBatchObject).
// The content is valid only during the call. It stops at each's first
// error and returns it. A name holding a newline is refused (no git run).
func (r *Repo) ReadObjects(ctx context.Context, names []string, each func(i int, data []byte, ok bool) error) error {
	if len(names) == 0 {
		return nil
	}
	for _, n := range names {
		if n == "" || strings.ContainsAny(n, "\n\x00") {
			return fmt.Errorf("cat-file: invalid object name %q", n)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, "git", "--git-dir="+r.commonDir, "cat-file", "--batch", "--buffer")
	cmd.Env = gitEnviron()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	stderr := &cappedBuffer{max: 16 << 10}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return &CLIError{Op: "cat-file", Err: err}
	}
	writeErr := make(chan error, 1)
	go func() {
		w := bufio.NewWriterSize(stdin, 64<<10)
		var err error
		for _, n := range names {
			if _, err = w.WriteString(n + "\n"); err != nil {
				break
			}
		}
		if err == nil {
			err = w.Flush()
		}
		stdin.Close()
		writeErr <- err
	}()
	readErr := readBatch(bufio.NewReaderSize(stdout, 256<<10), len(names), each)
	if readErr != nil {
		cancel() // each failed, or git's output could not be read: stop git
	}
	io.Copy(io.Discard, stdout)
	waitErr := cmd.Wait()
	<-writeErr
	switch {
	case readErr != nil && !errors.Is(readErr, errBatchOutput):
		return readErr
	case waitErr != nil:
		return &CLIError{Op: "cat-file", Stderr: strings.TrimSpace(stderr.String()), Err: waitErr}
	}
	return readErr
}

var errBatchOutput = errors.New("cannot read git cat-file --batch output")

// readBatch reads n answers of git cat-file --batch: "<id> <type>
// <size>\n<content>\n", or "<name> missing\n" (or "ambiguous").
func readBatch(br *bufio.Reader, n int, each func(i int, data []byte, ok bool) error) error {
	var buf []byte
	for i := 0; i < n; i++ {
		header, err := br.ReadString('\n')
		if err != nil {
			return fmt.Errorf("%w: object %d of %d: %v", errBatchOutput, i+1, n, err)
		}
		f := strings.Fields(header)
		if len(f) == 2 && (f[1] == "missing" || f[1] == "ambiguous") || len(f) != 3 {
			if len(f) != 2 {
				return fmt.Errorf("%w: header %q", errBatchOutput, header)
			}
			if err := each(i, nil, false); err != nil {
				return err
			}
			continue
		}
		size, err := strconv.Atoi(f[2])
		if err != nil || size < 0 {
			return fmt.Errorf("%w: header %q", errBatchOutput, header)
		}
		if size > MaxBatchObject {
			if _, err := io.CopyN(io.Discard, br, int64(size)+1); err != nil {
				return fmt.Errorf("%w: object %s: %v", errBatchOutput, f[0], err)
			}
			if err := each(i, nil, false); err != nil {
				return err
			}
			continue
		}
		if cap(buf) < size+1 {
			buf = make([]byte, size+1)
		}
		buf = buf[:size+1]
		if _, err := io.ReadFull(br, buf); err != nil {
			return fmt.Errorf("%w: object %s: %v", errBatchOutput, f[0], err)
		}
		if err := each(i, buf[:size], true); err != nil {
			return err
		}
	}
	return nil
}

// DeleteRefs deletes each of refs (name to the value it must still have),
// each a compare-and-swap: a ref that no longer has its value (moved,
// deleted, or being updated by another writer right now) is not deleted
// and is returned in changed, sorted; the others are deleted. The error is
// git's or the file system's, when a deletion failed for another reason
// (refs already deleted stay deleted), or an invalid name or a zero value
// (nothing done).
//
// It works as git's files backend does, in one pass for all refs rather
// than git update-ref's work per ref (minutes for 100,000): each loose ref
// is locked (<ref>.lock, created exclusively) and checked under its lock;
// then one rewrite of packed-refs under git's packed-refs.lock drops
// them, and the refs only in packed-refs that still have their value
// there, are not shadowed by a loose ref and are not locked by a writer
// (a writer that updates one meanwhile makes a loose ref, which git reads
// first, so its value survives); then the loose files, their empty
// directories and the reflogs go, and the locks are released. A ref
// whose lock cannot be made for another reason than a writer holding it
// goes through `git update-ref --stdin`, which says what is wrong.
func (r *Repo) DeleteRefs(ctx context.Context, refs map[string]Hash) (changed []string, err error) {
	for n, h := range refs {
		if err := plumbing.ReferenceName(n).Validate(); err != nil || !strings.HasPrefix(n, "refs/") || strings.ContainsAny(n, " \n") {
			return nil, fmt.Errorf("delete: invalid ref name %q", n)
		}
		if h.IsZero() {
			return nil, fmt.Errorf("delete %s: its current value is needed (a compare-and-swap)", n)
		}
	}
	if len(refs) == 0 {
		return nil, nil
	}
	root := r.commonDir
	pathOf := func(n string) string { return filepath.Join(root, filepath.FromSlash(n)) }
	shadowed := func(n string) bool { return exists(pathOf(n)) || exists(pathOf(n)+".lock") }
	// Loose refs are locked first (<ref>.lock, as git locks them) and
	// checked under their lock; then one rewrite of packed-refs drops
	// them and the packed-only ones; then the loose files go.
	viaGit, packedOnly := map[string]Hash{}, map[string]Hash{}
	lockedPacked, lockedLoose := map[string]Hash{}, map[string]bool{}
	var locks []string
	defer func() {
		for _, l := range locks {
			os.Remove(l)
		}
	}()
	for n, h := range refs {
		p := pathOf(n)
		if !shadowed(n) {
			packedOnly[n] = h
			continue
		}
		f, err := os.OpenFile(p+".lock", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
		if errors.Is(err, os.ErrExist) {
			changed = append(changed, n) // a writer is updating it
			continue
		}
		if err != nil {
			viaGit[n] = h // let git say what is wrong
			continue
		}
		f.Close()
		locks = append(locks, p+".lock")
		cur, err := readLooseRef(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			lockedPacked[n] = h // packed since: checked in packed-refs
		case err != nil || cur != h:
			changed = append(changed, n)
		default:
			lockedLoose[n] = true
		}
	}
	var deleted []string
	if len(packedOnly)+len(lockedPacked)+len(lockedLoose) > 0 {
		err = rewritePackedRefs(root, func(cur map[string]Hash) {
			for n, h := range packedOnly {
				switch {
				case shadowed(n): // again, under packed-refs.lock
					viaGit[n] = h
				case cur[n] != h:
					changed = append(changed, n)
				default:
					delete(cur, n)
					deleted = append(deleted, n)
				}
			}
			for n, h := range lockedPacked {
				if cur[n] != h {
					changed = append(changed, n)
					continue
				}
				delete(cur, n)
				deleted = append(deleted, n)
			}
			for n := range lockedLoose {
				delete(cur, n) // an older packed value under the loose one
			}
		})
		if err != nil {
			return nil, fmt.Errorf("delete: %w", err)
		}
		for n := range lockedLoose {
			p := pathOf(n)
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("delete %s: %w", n, err)
			}
			os.Remove(p + ".lock")
			deleted = append(deleted, n)
			// Empty directories go, as git removes them, up to refs/<x>/.
			for dir := filepath.Dir(p); len(dir) > len(filepath.Join(root, "refs")) && filepath.Dir(dir) != filepath.Join(root, "refs"); dir = filepath.Dir(dir) {
				if os.Remove(dir) != nil {
					break
				}
			}
		}
		// Their reflogs go too, as git's own deletion removes them (there
		// are any only with core.logAllRefUpdates=always).
		if exists(filepath.Join(root, "logs", "refs")) {
			for _, n := range deleted {
				os.Remove(filepath.Join(root, "logs", filepath.FromSlash(n)))
			}
		}
	}
	more, err := r.deleteWithGit(ctx, viaGit)
	changed = append(changed, more...)
	sort.Strings(changed)
	return changed, err
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// deleteWithGit deletes refs in one git update-ref --stdin transaction,
// and again without those that changed when git refused it.
func (r *Repo) deleteWithGit(ctx context.Context, refs map[string]Hash) (changed []string, err error) {
	pending := maps.Clone(refs)
	for len(pending) > 0 {
		var in strings.Builder
		in.WriteString("start\n")
		for n, h := range pending {
			fmt.Fprintf(&in, "delete %s %s\n", n, h)
		}
		in.WriteString("prepare\ncommit\n")
		cmd := exec.CommandContext(ctx, "git", "--git-dir="+r.commonDir, "update-ref", "--stdin")
		cmd.Env = gitEnviron()
		cmd.Stdin = strings.NewReader(in.String())
		var stdout bytes.Buffer
		stderr := &cappedBuffer{max: 16 << 10}
		cmd.Stdout, cmd.Stderr = &stdout, stderr
		runErr := cmd.Run()
		if runErr == nil && strings.Contains(stdout.String(), "commit: ok") {
			break
		}
		if ctx.Err() != nil {
			return changed, ctx.Err()
		}
		// Refused as a whole: some ref changed since it was read (git
		// names it), or git failed. Drop every ref whose value changed
		// and try again with the rest; when none changed, it is git's
		// failure.
		names := make([]string, 0, len(pending))
		for n := range pending {
			names = append(names, n)
		}
		cur, err := r.RefHashes(names)
		if err != nil {
			return changed, fmt.Errorf("delete: %w", err)
		}
		dropped := 0
		for n, h := range pending {
			if cur[n] != h {
				changed = append(changed, n)
				delete(pending, n)
				dropped++
			}
		}
		if dropped == 0 {
			// A lock held by another writer makes git name the ref too.
			said := stderr.String()
			for n := range pending {
				if strings.Contains(said, "'"+n+"'") && strings.Contains(said, "lock") {
					changed = append(changed, n)
					delete(pending, n)
					dropped++
				}
			}
		}
		if dropped == 0 {
			return changed, &CLIError{Op: "update-ref", Stderr: txMessage(stderr.String(), stdout.String()), Err: runErr}
		}
	}
	return changed, nil
}

func txMessage(stderr, stdout string) string {
	if s := strings.TrimSpace(stderr); s != "" {
		return s
	}
	return "the transaction was not committed: " + strings.TrimSpace(stdout)
}

// Tips returns the commit each ref under prefixes (say "refs/heads/",
// "refs/tags/") points at, annotated tags peeled to what they tag (a tag
// of something that is not a commit is left out), with one `git
// for-each-ref`.
func (r *Repo) Tips(ctx context.Context, prefixes ...string) (map[string]Hash, error) {
	for _, p := range prefixes {
		if !strings.HasPrefix(p, "refs/") || strings.ContainsAny(p, "*?[\\ \n") {
			return nil, fmt.Errorf("for-each-ref: invalid ref prefix %q", p)
		}
	}
	out, err := CLI{Dir: r.commonDir}.Run(ctx, "", append([]string{"--git-dir=" + r.commonDir, "for-each-ref",
		"--format=%(objectname) %(objecttype) %(*objectname) %(*objecttype) %(refname)", "--"}, prefixes...)...)
	if err != nil {
		return nil, err
	}
	tips := map[string]Hash{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.SplitN(line, " ", 5)
		if len(f) != 5 {
			continue
		}
		switch {
		case f[1] == "commit":
			tips[f[4]] = NewHash(f[0])
		case f[1] == "tag" && f[3] == "commit":
			tips[f[4]] = NewHash(f[2])
		}
	}
	return tips, nil
}

// ListTips returns the commit each of the remote's refs under prefixes
// points at, annotated tags peeled (as Repo.Tips), without fetching: one
// `git ls-remote`, whose advertisement carries the peeled values. A tag
// whose peeled value is not advertised is left out.
func (r *Remote) ListTips(ctx context.Context, prefixes ...string) (map[string]Hash, error) {
	var patterns []string
	for _, p := range prefixes {
		if !strings.HasPrefix(p, "refs/") || strings.ContainsAny(p, "*?[\\ \n") {
			return nil, fmt.Errorf("ls-remote: invalid ref prefix %q", p)
		}
		patterns = append(patterns, p+"*")
	}
	out, err := r.run(ctx, []string{"ls-remote", "--"}, patterns)
	if err != nil {
		return nil, err
	}
	// An annotated tag's line holds the tag object; the line after it,
	// <name>^{}, what it tags, which is what counts.
	tips, tagged := map[string]Hash{}, map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		id, name, ok := strings.Cut(line, "\t")
		if !ok || !IsHash(id) {
			continue
		}
		if base, peeled := strings.CutSuffix(name, "^{}"); peeled {
			tips[base] = NewHash(id)
			tagged[base] = true
			continue
		}
		if !tagged[name] {
			tips[name] = NewHash(id)
		}
	}
	return tips, nil
}
