package gitproto

// Direct updates of a remote on this machine.
//
// `git push` to a file:// remote costs O(refs on the remote) per pushed
// ref: send-pack matches every refspec against every advertised ref (six
// printf-built names per pair), pack-objects marks every advertised tip
// uninteresting, and receive-pack's connectivity check walks from all
// refs. A remote holding 6,000 refs under refs/ci/ took about half a
// second of CPU to take 55 claims. A remote on this machine is a
// directory this process may write anyway (git push to it runs
// receive-pack as the same user), so Push updates it the way
// receive-pack itself does, at a cost that grows with the update only:
//
//  1. the objects go over as one pack, made from the new values minus
//     the old ones the remote has (in this process for a worker's own
//     small commits, ownpack.go; else by `git pack-objects --revs` in the
//     cache) and stored by
//     `git index-pack --stdin --keep` in the remote (the .keep stops a
//     concurrent repack from dropping the pack before a ref names it; it
//     is removed once the refs are updated);
//  2. the refs change in one `git update-ref --stdin` transaction, which
//     takes every ref's lock and checks every old value under it, the
//     same compare-and-swap receive-pack makes;
//  3. `git gc --auto`, as receive-pack runs after a push.
//
// Only a remote whose push would not behave otherwise is updated this
// way: one without receive hooks (pre-receive, update, post-receive,
// post-update, reference-transaction, proc-receive, push-to-checkout) and
// without receive.*, transfer.* or uploadpack.* settings (fsck, hidden
// refs, denied deletes, size limits...) or core.hooksPath in its
// configuration. Any other remote, and any remote when Remote.NoDirect is
// set, gets a real git push.
//
// Fetch takes the same way back for the mirroring refspecs a worker polls
// with ("+refs/ci/requests/*:refs/ci/requests/*"): the remote's refs are
// read from its files, what the cache lacks comes over as one pack
// (`git pack-objects` in the remote, `git index-pack` in the cache), and
// the cache's refs are set to the remote's in one rewrite of its
// packed-refs (packedrefs.go). git fetch spends most of a poll of a busy remote on what
// this skips: the advertisement and negotiation of every ref, and a
// connectivity walk from all of them.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// directRecheck is how long a remote's eligibility for direct updates is
// trusted before its hooks and configuration are looked at again.
const directRecheck = 5 * time.Second

// receiveHooks are the hooks a push may run on the receiving side.
var receiveHooks = []string{"pre-receive", "update", "post-receive", "post-update", "reference-transaction", "proc-receive", "push-to-checkout"}

// directGitDir returns the git directory of the remote when it may be
// updated directly, else "".
func (r *Remote) directGitDir(ctx context.Context) string {
	if r.NoDirect {
		return ""
	}
	dir := r.LocalDir()
	if dir == "" {
		return ""
	}
	r.directMu.Lock()
	defer r.directMu.Unlock()
	if !r.directAt.IsZero() && time.Since(r.directAt) < directRecheck {
		return r.directDir
	}
	r.directDir, r.directWhy = r.checkDirect(ctx, dir)
	r.directAt = time.Now()
	return r.directDir
}

// Direct reports whether Push updates this remote directly, and if not,
// why (for a local remote; "" for one reached over the network).
func (r *Remote) Direct(ctx context.Context) (bool, string) {
	if r.directGitDir(ctx) != "" {
		return true, ""
	}
	r.directMu.Lock()
	defer r.directMu.Unlock()
	switch {
	case r.NoDirect:
		return false, "NoDirect is set"
	case r.LocalDir() == "":
		return false, "not on this machine"
	}
	return false, r.directWhy
}

// DirectRepo opens the repository of a remote that Push updates
// directly (see Direct), for a caller on this machine that reads and
// writes it itself with the same rules: objects first, then refs with
// Repo.CreateRef or Repo.UpdateRef, git's own lock-file compare-and-swap.
// Any other remote is an error saying why not.
func (r *Remote) DirectRepo(ctx context.Context) (*Repo, error) {
	gitDir := r.directGitDir(ctx)
	if gitDir == "" {
		_, why := r.Direct(ctx)
		return nil, fmt.Errorf("%s is not updated directly: %s", RedactURL(r.URL), why)
	}
	return Open(gitDir)
}

// checkDirect decides whether the remote at dir may be updated directly,
// and says why not.
func (r *Remote) checkDirect(ctx context.Context, dir string) (string, string) {
	repo, err := openLocalRemote(dir)
	if err != nil {
		return "", "not a repository here: " + err.Error()
	}
	gitDir := repo.GitDir()
	// Exit status 1 is "no such key": the usual answer.
	out, stderr, err := r.gitAt(ctx, gitDir, nil, "config", "--get-regexp", `^(receive|transfer|uploadpack)\.|^core\.hookspath$`)
	var ee *exec.ExitError
	switch {
	case err == nil && len(bytes.TrimSpace(out)) > 0:
		key, _, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
		return "", "it sets " + key
	case err == nil, errors.As(err, &ee) && ee.ExitCode() == 1 && stderr == "":
	default:
		return "", "git config: " + strings.TrimSpace(stderr)
	}
	for _, h := range receiveHooks {
		if fi, err := os.Stat(filepath.Join(gitDir, "hooks", h)); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return "", "it has a " + h + " hook"
		}
	}
	return gitDir, ""
}

// openLocalRemote opens the repository at exactly dir (bare, or with a
// .git in it), as git itself opens a remote given as a path; never one of
// its parent directories, as Open would for a directory inside a work
// tree. Other spellings git accepts (a missing ".git" suffix) are left to
// git.
func openLocalRemote(dir string) (*Repo, error) {
	if !isBareDir(dir) {
		if _, err := os.Stat(filepath.Join(dir, ".git")); err != nil {
			return nil, fmt.Errorf("%s: %w", dir, ErrNotRepo)
		}
	}
	return Open(dir)
}

// gitAt runs git in the repository at gitDir (not the cache), with the
// Remote's environment, in a session of its own like every git here.
func (r *Remote) gitAt(ctx context.Context, gitDir string, stdin io.Reader, args ...string) ([]byte, string, error) {
	cmd := r.gitCommand(ctx, nil, append([]string{"--git-dir=" + gitDir}, args...)...)
	cmd.Stdin = stdin
	var stdout bytes.Buffer
	stderr := &cappedBuffer{max: 64 << 10}
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	err := cmd.Run()
	return stdout.Bytes(), strings.TrimSpace(stderr.String()), err
}

// pushDirect applies updates to the remote at gitDir; the results and
// errors are those Push documents.
func (r *Remote) pushDirect(ctx context.Context, gitDir string, updates []RefUpdate, atomic bool) ([]PushResult, error) {
	fail := func(op string, err error) *RemoteError {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return &RemoteError{Kind: KindOther, URL: r.URL, Op: "push", Err: fmt.Errorf("%s: %w", op, err)}
	}
	cache, err := Open(r.Cache)
	if err != nil {
		return nil, fail("open the cache", err)
	}
	target, err := Open(gitDir)
	if err != nil {
		re := fail("open the remote", err)
		if _, serr := os.Stat(gitDir); errors.Is(serr, os.ErrNotExist) {
			re.Kind = KindNotFound // gone since it was found eligible, as git push would say
		}
		return nil, re
	}
	names := make([]string, len(updates))
	for i, u := range updates {
		names[i] = u.Name
	}
	current, err := target.RefHashes(names)
	if err != nil {
		return nil, fail("read the remote's refs", err)
	}
	results := make([]PushResult, len(updates))
	var pending []int
	for i, u := range updates {
		res := &results[i]
		res.Name = u.Name
		cur := current[u.Name]
		switch {
		case u.New != ZeroHash && cur == u.New:
			res.OK, res.Message = true, "up to date"
		case cur != u.Old:
			res.Stale, res.Message = true, "stale info"
			res.Detail = fmt.Sprintf("%s is at %s on the remote, not at %s", u.Name, orNone(cur), orNone(u.Old))
		case u.New != ZeroHash && cache.st.HasEncodedObject(ph(u.New)) != nil:
			res.Message = "missing object"
			res.Detail = fmt.Sprintf("object %s is not in the cache %s", u.New, r.Cache)
		default:
			pending = append(pending, i)
			continue
		}
		if atomic && !res.OK {
			return atomicFailed(results, updates, i), nil
		}
	}
	if len(pending) == 0 {
		return results, nil
	}
	if r.beforeUpdate != nil {
		r.beforeUpdate()
	}
	if !atomic && onlyDeletions(updates, pending) {
		// Many deletions at once (refci gc): refs only in packed-refs
		// go in one rewrite of it (Repo.DeleteRefs), each with the same
		// compare-and-swap, where git update-ref would lock each with
		// a file of its own.
		dels := make(map[string]Hash, len(pending))
		for _, i := range pending {
			dels[updates[i].Name] = updates[i].Old
		}
		changed, err := target.DeleteRefs(ctx, dels)
		lost := map[string]bool{}
		for _, n := range changed {
			lost[n] = true
		}
		for _, i := range pending {
			if lost[updates[i].Name] {
				results[i] = PushResult{Name: updates[i].Name, Stale: true, Message: "stale info",
					Detail: updates[i].Name + " changed on the remote while it was being deleted"}
			} else {
				results[i] = applied(updates[i])
			}
		}
		if err != nil {
			return nil, fail("delete refs", err) // which were deleted is unknown: re-read the remote
		}
		return results, nil
	}
	keep, err := r.sendObjects(ctx, cache, gitDir, updates, pending)
	if keep != "" {
		defer os.Remove(keep)
	}
	if err != nil {
		return nil, err
	}
	if err := r.updateRefs(ctx, gitDir, updates, pending); err != nil {
		var txErr *transactionError
		if !errors.As(err, &txErr) {
			return nil, err
		}
		switch {
		case atomic:
			failed := txErr.failedIndex(updates, pending)
			results[failed] = txErr.result(updates[failed].Name)
			return atomicFailed(results, updates, failed), nil
		case len(pending) == 1:
			results[pending[0]] = txErr.result(updates[pending[0]].Name)
		default:
			// Someone else changed a ref between the reads above and
			// the transaction: each update on its own, as a non-atomic
			// push does.
			for _, i := range pending {
				if err := r.updateRefs(ctx, gitDir, updates, []int{i}); err != nil {
					if !errors.As(err, &txErr) {
						return nil, err
					}
					results[i] = txErr.result(updates[i].Name)
					continue
				}
				results[i] = applied(updates[i])
			}
		}
	} else {
		for _, i := range pending {
			results[i] = applied(updates[i])
		}
	}
	if keep != "" {
		// receive-pack's housekeeping after a push (it daemonizes when
		// there is work to do); a failure here loses nothing.
		r.gitAt(context.WithoutCancel(ctx), gitDir, nil, "gc", "--auto", "--quiet")
	}
	return results, nil
}

// onlyDeletions reports whether every pending update deletes its ref.
func onlyDeletions(updates []RefUpdate, pending []int) bool {
	for _, i := range pending {
		if updates[i].New != ZeroHash {
			return false
		}
	}
	return true
}

func orNone(h Hash) string {
	if h == ZeroHash {
		return "nothing"
	}
	return h.String()
}

func applied(u RefUpdate) PushResult {
	res := PushResult{Name: u.Name, OK: true, Message: "updated"}
	switch {
	case u.Old == ZeroHash:
		res.Message = "new reference"
	case u.New == ZeroHash:
		res.Message = "deleted"
	}
	return res
}

// atomicFailed marks every update but the failed one as not applied.
func atomicFailed(results []PushResult, updates []RefUpdate, failed int) []PushResult {
	for i := range results {
		if i != failed {
			results[i] = PushResult{Name: updates[i].Name, Message: "atomic push failed",
				Detail: "not applied: " + updates[failed].Name + " failed in the same atomic push"}
		}
	}
	return results
}

// sendObjects copies into the remote what the new values need and it may
// lack, as one kept pack, and returns the pack's .keep file ("" when
// nothing had to go).
func (r *Remote) sendObjects(ctx context.Context, cache *Repo, gitDir string, updates []RefUpdate, pending []int) (string, error) {
	var revs strings.Builder
	sending := false
	for _, i := range pending {
		if u := updates[i]; u.New != ZeroHash {
			fmt.Fprintf(&revs, "%s\n", u.New)
			sending = true
		}
	}
	if !sending {
		return "", nil
	}
	var wants, haves []Hash
	for _, i := range pending {
		// The remote holds everything reachable from the old values (they
		// are its refs' values right now); those the cache has bound the
		// walk.
		u := updates[i]
		if u.New != ZeroHash {
			wants = append(wants, u.New)
		}
		if u.Old != ZeroHash && cache.st.HasEncodedObject(ph(u.Old)) == nil {
			fmt.Fprintf(&revs, "^%s\n", u.Old)
			haves = append(haves, u.Old)
		}
	}
	if !r.noOwnPack {
		keep, err := r.sendOwnPack(ctx, cache, gitDir, wants, haves)
		if !errors.Is(err, errNotOwnPack) {
			return keep, err
		}
	}
	return r.copyObjects(ctx, "push", r.Cache, gitDir, revs.String(), true)
}

// copyObjects sends the objects that revs (rev-list arguments, one per
// line, "^" for what the receiver has) select from the repository at from
// to the one at to, as one pack made by git pack-objects and stored by
// git index-pack. With keep the pack gets a .keep file, whose path it
// returns (the caller removes it once refs name the objects). Nothing is
// stored when no object is selected. op names the Remote operation in
// errors.
func (r *Remote) copyObjects(ctx context.Context, op, from, to, revs string, keep bool) (string, error) {
	where := map[string]string{r.Cache: "the cache"}
	args := []string{"--git-dir=" + from}
	if from == r.Cache {
		for _, kv := range cacheConfig {
			args = append(args, "-c", kv[0]+"="+kv[1])
		}
	}
	pack := r.gitCommand(ctx, nil, append(args, "pack-objects", "--revs", "--stdout", "-q", "--delta-base-offset")...)
	pack.Stdin = strings.NewReader(revs)
	packErr := &cappedBuffer{max: 16 << 10}
	pack.Stderr = packErr
	out, err := pack.StdoutPipe()
	if err != nil {
		return "", &RemoteError{Kind: KindOther, URL: r.URL, Op: op, Err: err}
	}
	if err := pack.Start(); err != nil {
		return "", &RemoteError{Kind: KindOther, URL: r.URL, Op: op, Err: fmt.Errorf("git pack-objects: %w", err)}
	}
	br := bufio.NewReaderSize(out, 64<<10)
	header, herr := br.Peek(12)
	empty := herr == nil && string(header[:4]) == "PACK" && binary.BigEndian.Uint32(header[8:12]) == 0
	var keepPath, idxErr string
	var indexErr error
	if herr == nil && !empty {
		index := []string{"index-pack", "--stdin"}
		if keep {
			index = append(index, "--keep=refci direct update")
		}
		stdout, stderr, err := r.gitAt(ctx, to, br, index...)
		indexErr, idxErr = err, stderr
		if err == nil && keep {
			// "keep\t<pack hash>"
			if _, h, ok := strings.Cut(strings.TrimSpace(string(stdout)), "\t"); ok {
				keepPath = filepath.Join(to, "objects", "pack", "pack-"+h+".keep")
			}
		}
	}
	io.Copy(io.Discard, br)
	waitErr := pack.Wait()
	name := func(dir string) string {
		if n, ok := where[dir]; ok {
			return n
		}
		return "the remote"
	}
	switch {
	case waitErr != nil || herr != nil:
		if waitErr == nil {
			waitErr = herr
		}
		if ctx.Err() != nil {
			waitErr = ctx.Err()
		}
		return keepPath, &RemoteError{Kind: KindOther, URL: r.URL, Op: op, Stderr: r.redact(strings.TrimSpace(packErr.String())),
			Err: fmt.Errorf("git pack-objects in %s: %w", name(from), waitErr)}
	case indexErr != nil:
		if ctx.Err() != nil {
			indexErr = ctx.Err()
		}
		return keepPath, &RemoteError{Kind: classify(idxErr), URL: r.URL, Op: op, Stderr: r.redact(idxErr),
			Err: fmt.Errorf("git index-pack in %s: %w", name(to), indexErr)}
	}
	return keepPath, nil
}

// transactionError is a ref transaction that git refused as a whole.
type transactionError struct {
	stderr string
}

func (e *transactionError) Error() string { return "git update-ref: " + e.stderr }

// failedIndex finds the update git names in its refusal (the first
// pending one when it names none).
func (e *transactionError) failedIndex(updates []RefUpdate, pending []int) int {
	for _, i := range pending {
		if strings.Contains(e.stderr, "'"+updates[i].Name+"'") {
			return i
		}
	}
	return pending[0]
}

// result is the PushResult of the named ref refused in this transaction.
func (e *transactionError) result(name string) PushResult {
	lines := stderrLines(strings.ReplaceAll(e.stderr, "fatal: ", ""))
	res := PushResult{Name: name, Message: "failed to update ref", Detail: strings.Join(lines, "; ")}
	res.Stale = isStale("remote rejected", "", lines)
	return res
}

// updateRefs applies the pending updates in one ref transaction.
func (r *Remote) updateRefs(ctx context.Context, gitDir string, updates []RefUpdate, pending []int) error {
	var in strings.Builder
	in.WriteString("start\n")
	for _, i := range pending {
		u := updates[i]
		switch {
		case u.Old == ZeroHash:
			fmt.Fprintf(&in, "create %s %s\n", u.Name, u.New)
		case u.New == ZeroHash:
			fmt.Fprintf(&in, "delete %s %s\n", u.Name, u.Old)
		default:
			fmt.Fprintf(&in, "update %s %s %s\n", u.Name, u.New, u.Old)
		}
	}
	in.WriteString("prepare\ncommit\n")
	stdout, stderr, err := r.gitAt(ctx, gitDir, strings.NewReader(in.String()), "update-ref", "--stdin")
	if err == nil && strings.Contains(string(stdout), "commit: ok") {
		return nil
	}
	if ctx.Err() != nil {
		return &RemoteError{Kind: KindOther, URL: r.URL, Op: "push", Stderr: r.redact(stderr), Err: ctx.Err()}
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return &RemoteError{Kind: KindOther, URL: r.URL, Op: "push", Err: fmt.Errorf("git update-ref: %w", err)}
	}
	if stderr == "" {
		stderr = "the transaction was not committed: " + strings.TrimSpace(string(stdout))
	}
	return &transactionError{stderr: r.redact(stderr)}
}

// mirrorPrefixes returns the prefixes of refspecs that all mirror a
// namespace ("+P*:P*", P ending in "/"), or nil when one does not (it is
// fetched with git).
func mirrorPrefixes(refspecs []string) []string {
	var out []string
	for _, s := range refspecs {
		src, dst, ok := strings.Cut(strings.TrimPrefix(s, "+"), ":")
		if !ok || !strings.HasPrefix(s, "+") || src != dst || !strings.HasPrefix(src, "refs/") ||
			!strings.HasSuffix(src, "/*") || strings.Count(src, "*") != 1 {
			return nil
		}
		out = append(out, strings.TrimSuffix(src, "*"))
	}
	return out
}

// readMirror reads, for a remote on this machine, its refs under prefixes
// and the cache's (there and have); ok is false for any other remote, or
// when either cannot be read that way.
func (r *Remote) readMirror(prefixes []string) (there, have map[string]Hash, ok bool) {
	there, ok = r.listLocal(prefixes)
	if !ok {
		return nil, nil, false
	}
	cache, err := Open(r.Cache)
	if err != nil {
		return nil, nil, false
	}
	have = map[string]Hash{}
	for _, p := range prefixes {
		refs, err := cache.Refs(p)
		if err != nil {
			return nil, nil, false
		}
		for _, ref := range refs {
			have[ref.Name] = ref.Hash
		}
	}
	return there, have, true
}

func sameRefs(a, b map[string]Hash) bool {
	if len(a) != len(b) {
		return false
	}
	for name, h := range a {
		if b[name] != h {
			return false
		}
	}
	return true
}

// fetchDirect makes the cache's refs under the mirrored prefixes those of
// the remote (there, as read by readMirror; have is the cache's), see the
// top of this file. It reports false when it did nothing and git fetch
// should run instead (it then says why the remote cannot be read).
func (r *Remote) fetchDirect(ctx context.Context, gitDir string, there, have map[string]Hash) (bool, error) {
	target, err := Open(gitDir)
	if err != nil {
		return false, nil
	}
	cache, err := Open(r.Cache)
	if err != nil {
		return false, nil
	}
	changes := map[string]Hash{}
	var wants []Hash
	wanted := map[Hash]bool{}
	for name, h := range there {
		if have[name] == h {
			continue
		}
		changes[name] = h
		if !wanted[h] && cache.st.HasEncodedObject(ph(h)) != nil {
			wanted[h] = true
			wants = append(wants, h)
		}
	}
	for name := range have {
		if _, ok := there[name]; !ok {
			changes[name] = ZeroHash
		}
	}
	if len(changes) == 0 {
		return true, nil
	}
	if len(wants) > 0 {
		var revs strings.Builder
		for _, h := range wants {
			fmt.Fprintf(&revs, "%s\n", h)
		}
		// What the cache mirrors already bounds the walk (as the "have"s
		// of a fetch), where the remote still has it. Many requests share
		// a target: each value once.
		bound := map[Hash]bool{}
		for _, h := range have {
			if !wanted[h] && !bound[h] && target.st.HasEncodedObject(ph(h)) == nil {
				bound[h] = true
				fmt.Fprintf(&revs, "^%s\n", h)
			}
		}
		if _, err := r.copyObjects(ctx, "fetch", gitDir, r.Cache, revs.String(), false); err != nil {
			if ctx.Err() != nil {
				return true, err
			}
			return false, nil // git fetch says what is wrong
		}
	}
	// The mirror's refs change in one rewrite of the cache's packed-refs
	// (packedrefs.go): thousands of requests are one file, not one each.
	if err := setPackedRefs(r.Cache, changes); err != nil {
		return true, &RemoteError{Kind: KindOther, URL: r.URL, Op: "fetch", Err: fmt.Errorf("updating the cache's refs: %w", err)}
	}
	return true, nil
}
