package gitproto

// Remote access: fetch, compare-and-swap push and ref listing against a
// git remote, through the git CLI (never go-git: go-git must never talk to
// the remote's server side, and the CLI brings the user's transports, ssh
// configuration, credential helpers and url.insteadOf rewriting for free).
//
// Facts this file relies on (git 2.39, checked by remote_test.go):
//
//   - `git fetch <url> <refspec>...` speaks protocol v2 and sends a
//     `ref-prefix` for each refspec source, so the server advertises only
//     the refs under those prefixes: a poll costs the same with 10 or
//     100,000 unrelated refs (refs/pull/*) on the remote.
//   - `git ls-remote <url> <pattern>` does NOT send ref-prefix (its patterns
//     are matched against the end of ref names, on the client), so ListRemote downloads
//     the whole ref advertisement. It is for occasional checks, not polls.
//   - `git push` has no protocol v2: the receive-pack advertisement always
//     lists every ref of the remote, so a push costs O(refs on the remote).
//   - `--force-with-lease=<ref>:<expect>` with an explicit expected value is
//     a compare-and-swap: git checks the lease against the advertised value
//     and then sends that value as the old id of the update command, and
//     the server (receive-pack) re-checks it under the ref's lock. Among
//     racing pushers exactly one wins. A lease also permits a
//     non-fast-forward update, so no `+` is needed.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
)

// Remote is one git remote as a worker sees it: its URL and the local bare
// cache repository that mirrors what the worker needs from it.
//
// Remote is safe for concurrent use by multiple goroutines. Every call runs
// its own git process. Fetches into the same cache (same Cache path, even
// through different Remote values) are serialized within this process,
// because two fetches updating and pruning the same local refs would fail
// on each other's ref locks; Push and ListRemote never wait. Other
// processes must not fetch into the same cache at the same time (one
// worker process per cache).
//
// git runs with the caller's environment minus the variables that would
// point it at another repository (GIT_DIR, GIT_OBJECT_DIRECTORY,
// GIT_CONFIG_PARAMETERS ... as listed by `git rev-parse --local-env-vars`),
// plus GIT_TERMINAL_PROMPT=0, GCM_INTERACTIVE=never and LC_ALL=C (git's
// messages are classified by their English text), plus Env. git runs in a
// session of its own (no controlling terminal, so neither git nor ssh can
// block on a prompt); a cancelled context sends SIGTERM to its whole
// process group (git cleans up its lock files on SIGTERM, and ssh or
// upload-pack children go with it), then SIGKILL after 5 s.
//
// Credentials: ssh uses the user's ssh configuration and agent; https uses
// git credential helpers. A password embedded in the URL
// (https://user:token@host/...) never reaches git's argv: the URL is passed
// without it and the password is handed to git through the environment
// and an inline credential helper that replaces the configured ones.
type Remote struct {
	URL   string
	Cache string   // path of the bare cache repository
	Env   []string // extra environment for git, e.g. GIT_SSH_COMMAND; may be nil
	// NoDirect makes Push always run git push, also to a remote on this
	// machine that it would otherwise update directly (see direct.go).
	NoDirect bool

	directMu  sync.Mutex
	directAt  time.Time // when the remote's eligibility was last checked
	directDir string    // its git dir when it may be updated directly
	directWhy string    // else why not
	// beforeUpdate, in tests, runs between a direct update's reads of the
	// remote's refs and its transaction.
	beforeUpdate func()
	// noOwnPack, in tests, makes every direct push pack with git
	// pack-objects (ownpack.go).
	noOwnPack bool
}

// cacheConfig is written into a new cache and also passed with -c to every
// git run, so that a cache made by hand or by an older refci behaves the
// same.
var cacheConfig = [][2]string{
	{"protocol.version", "2"},
	{"gc.auto", "0"},
	{"maintenance.auto", "false"},
	{"core.logAllRefUpdates", "false"},
	{"core.hooksPath", "/dev/null"}, // no hook (reference-transaction, pre-push) ever runs in the cache
	{"core.fsmonitor", "false"},     // nor a file system monitor
	{"fetch.writeCommitGraph", "false"},
	{"fetch.showForcedUpdates", "false"}, // skips a merge-base walk per updated ref
	{"fetch.recurseSubmodules", "false"},
	{"fetch.pruneTags", "false"},
	{"submodule.recurse", "false"},
	{"push.followTags", "false"},
	{"push.recurseSubmodules", "no"},
	{"push.gpgSign", "false"},
	{"push.useForceIfIncludes", "false"},
	{"push.negotiate", "false"},
	{"advice.fetchShowForcedUpdates", "false"},
}

// localEnvVars are the variables that make git use another repository or
// configuration (git rev-parse --local-env-vars, git 2.39), and a few more
// that only make sense inside a git hook or server.
var localEnvVars = map[string]bool{
	"GIT_ALTERNATE_OBJECT_DIRECTORIES": true,
	"GIT_CONFIG":                       true,
	"GIT_CONFIG_PARAMETERS":            true,
	"GIT_CONFIG_COUNT":                 true,
	"GIT_OBJECT_DIRECTORY":             true,
	"GIT_DIR":                          true,
	"GIT_WORK_TREE":                    true,
	"GIT_IMPLICIT_WORK_TREE":           true,
	"GIT_GRAFT_FILE":                   true,
	"GIT_INDEX_FILE":                   true,
	"GIT_NO_REPLACE_OBJECTS":           true,
	"GIT_REPLACE_REF_BASE":             true,
	"GIT_PREFIX":                       true,
	"GIT_INTERNAL_SUPER_PREFIX":        true,
	"GIT_SHALLOW_FILE":                 true,
	"GIT_COMMON_DIR":                   true,
	"GIT_QUARANTINE_PATH":              true,
	"GIT_PROTOCOL":                     true,
	"GIT_NAMESPACE":                    true,
	"GIT_TERMINAL_PROMPT":              true, // set below
	"LC_ALL":                           true, // set below
}

// OpenRemote returns the Remote for url with its bare cache at cache,
// creating the cache if it does not exist (an empty directory counts as
// missing). A new cache is made in a temporary sibling directory and
// renamed into place, so concurrent OpenRemote calls (even from different
// processes) never see a half-configured cache. A relative local path as
// url is made absolute.
func OpenRemote(rawURL, cache string, env []string) (*Remote, error) {
	if rawURL == "" {
		return nil, errors.New("open remote: empty URL")
	}
	if strings.HasPrefix(rawURL, "-") {
		return nil, fmt.Errorf("open remote: URL %q starts with a dash", RedactURL(rawURL))
	}
	if isLocalPath(rawURL) {
		abs, err := filepath.Abs(rawURL)
		if err != nil {
			return nil, fmt.Errorf("open remote %s: %w", rawURL, err)
		}
		rawURL = abs
	}
	if _, _, err := splitCredentials(rawURL); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(cache)
	if err != nil {
		return nil, fmt.Errorf("open cache %s: %w", cache, err)
	}
	r := &Remote{URL: rawURL, Cache: abs, Env: env}
	if isBareDir(abs) {
		return r, nil
	}
	emptyDir := false
	if fi, err := os.Stat(abs); err == nil {
		ents, err := os.ReadDir(abs)
		if !fi.IsDir() || err != nil || len(ents) > 0 {
			return nil, fmt.Errorf("open cache %s: it exists and is not a bare git repository; remove it or choose another cache directory", abs)
		}
		emptyDir = true
	}
	parent := filepath.Dir(abs)
	if err := os.MkdirAll(parent, 0o777); err != nil {
		return nil, fmt.Errorf("create cache %s: %w", abs, describeIOError(err))
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(abs)+".init-")
	if err != nil {
		return nil, fmt.Errorf("create cache %s: %w", abs, describeIOError(err))
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	cmd := exec.Command("git", "-c", "init.defaultBranch=main", "init", "--bare", "-q", "--template=", tmp)
	cmd.Env = r.environ(nil)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("create cache %s: git init: %v: %s", abs, err, strings.TrimSpace(string(out)))
	}
	var cfg strings.Builder
	for _, kv := range cacheConfig {
		section, key, _ := strings.Cut(kv[0], ".")
		fmt.Fprintf(&cfg, "[%s]\n\t%s = %s\n", section, key, kv[1])
	}
	f, err := os.OpenFile(filepath.Join(tmp, "config"), os.O_WRONLY|os.O_APPEND, 0)
	if err == nil {
		_, err = f.WriteString(cfg.String())
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return nil, fmt.Errorf("create cache %s: %w", abs, describeIOError(err))
	}
	if emptyDir {
		os.Remove(abs) // os.Rename refuses to replace even an empty directory
	}
	if err := os.Rename(tmp, abs); err != nil {
		if isBareDir(abs) {
			return r, nil // another process made it first
		}
		return nil, fmt.Errorf("create cache %s: %w", abs, err)
	}
	return r, nil
}

// isLocalPath reports whether git takes u as a local path (not a URL and
// not scp-like host:path): no "://", and no ':' before the first '/'.
// LocalDir returns the directory of a remote on this machine (a path or
// a file:// URL), or "" for a remote reached over the network.
func (r *Remote) LocalDir() string {
	if isLocalPath(r.URL) {
		return r.URL
	}
	if u, err := url.Parse(r.URL); err == nil && u.Scheme == "file" && (u.Host == "" || u.Host == "localhost") && u.Path != "" {
		return u.Path
	}
	return ""
}

// listLocal reads the refs of a remote on this machine straight from its
// files, as git's own ref reader does, without starting git. ok is false
// when the remote is not local or not a repository that can be read that
// way (then git ls-remote gives the real error).
func (r *Remote) listLocal(prefixes []string) (map[string]Hash, bool) {
	dir := r.LocalDir()
	if dir == "" {
		return nil, false
	}
	repo, err := openLocalRemote(dir)
	if err != nil {
		return nil, false
	}
	if len(prefixes) == 0 {
		prefixes = []string{"refs/"}
	}
	out := map[string]Hash{}
	for _, p := range prefixes {
		refs, err := repo.Refs(p)
		if err != nil {
			return nil, false
		}
		for _, ref := range refs {
			out[ref.Name] = ref.Hash
		}
	}
	return out, true
}

func isLocalPath(u string) bool {
	if strings.Contains(u, "://") {
		return false
	}
	colon := strings.IndexByte(u, ':')
	if colon < 0 {
		return true
	}
	slash := strings.IndexByte(u, '/')
	return slash >= 0 && slash < colon
}

// Fetch runs `git fetch --prune --no-tags <url> <refspecs...>` in the
// cache, e.g. with "+refs/ci/requests/*:refs/ci/requests/*": local refs
// under the destination are made equal to the remote's (including deleting
// those gone from the remote) and the objects they need are downloaded.
// Only the refs named by the refspecs are advertised (protocol v2
// ref-prefix), so the cost does not grow with unrelated remote refs. A
// refspec naming one ref without a wildcard fails if the remote lacks that
// ref (Kind "not-found").
//
// CollectGarbage runs git's own housekeeping on the cache when it is due
// (`git gc --auto`): once more than looseLimit loose objects have piled up
// (0: git's default, 6,700) or more than 50 packs, everything is packed
// again; unreachable objects (results and claims already pushed) go into
// a cruft pack and are pruned two weeks after they were last written, so
// objects still in use are never removed. With full, the repacking is
// done whatever the counts (the worker does so daily: CompactPacks keeps
// the number of packs below what gc --auto waits for, so that the
// unreachable objects would otherwise never go). Safe beside fetches and
// pushes into the same cache.
func (r *Remote) CollectGarbage(ctx context.Context, looseLimit int, full bool) error {
	if looseLimit <= 0 {
		looseLimit = 6700
	}
	args := []string{"--git-dir=" + r.Cache}
	for _, kv := range cacheConfig {
		args = append(args, "-c", kv[0]+"="+kv[1])
	}
	args = append(args, "-c", "gc.auto="+strconv.Itoa(looseLimit), "-c", "gc.autoDetach=false", "-c", "gc.cruftPacks=true")
	if full {
		args = append(args, "-c", "gc.autoPackLimit=1")
	}
	args = append(args, "gc", "--auto", "--quiet")
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Env = r.environ(nil)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("git gc --auto in %s: %w: %s", r.Cache, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// CompactPacks merges the cache's smaller packs (`git repack -d
// --geometric=2`) once it holds more than limit packs, and reports
// whether it did. Every fetch that brings objects brings a pack, while
// every reader of the cache reads every pack's index and looks objects up
// pack by pack: merging keeps
// that number near the logarithm of the objects' count. It keeps every
// object, reachable or not (CollectGarbage prunes), and is safe beside
// fetches, pushes and readers of the cache.
func (r *Remote) CompactPacks(ctx context.Context, limit int) (bool, error) {
	ents, err := os.ReadDir(filepath.Join(r.Cache, "objects", "pack"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	n := 0
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".pack") {
			n++
		}
	}
	if n <= limit {
		return false, nil
	}
	if _, stderr, err := r.gitAt(ctx, r.Cache, nil, "repack", "-d", "-q", "--geometric=2", "--no-write-bitmap-index"); err != nil {
		return false, fmt.Errorf("git repack --geometric in %s: %w: %s", r.Cache, err, stderr)
	}
	return true, nil
}

// Fetches into one cache are serialized (see Remote). A go-git Repo opened
// on the cache before a Fetch may not see objects that arrived in a new
// pack; reopen it (go-git caches the list of packs).
func (r *Remote) Fetch(ctx context.Context, refspecs ...string) error {
	if len(refspecs) == 0 {
		return errors.New("fetch: no refspecs")
	}
	for _, s := range refspecs {
		if s == "" || strings.HasPrefix(s, "-") {
			return fmt.Errorf("fetch: invalid refspec %q", s)
		}
	}
	unlock, err := lockCache(ctx, r.Cache)
	if err != nil {
		return &RemoteError{Kind: KindOther, URL: r.URL, Op: "fetch", Err: err}
	}
	defer unlock()
	if prefixes := mirrorPrefixes(refspecs); prefixes != nil {
		// A remote on this machine: its refs are read from its files, and
		// when the cache mirrors them already no git runs at all (an idle
		// local remote, every repository of refci serve, costs nothing).
		if there, have, ok := r.readMirror(prefixes); ok {
			if sameRefs(there, have) {
				return nil
			}
			if gitDir := r.directGitDir(ctx); gitDir != "" {
				if done, err := r.fetchDirect(ctx, gitDir, there, have); done {
					return err
				}
			}
		}
	}
	args := []string{"fetch", "--prune", "--no-tags", "--no-write-fetch-head", "--quiet",
		"--no-auto-gc", "--no-recurse-submodules", "--no-write-commit-graph", "--no-show-forced-updates", "--"}
	_, err = r.run(ctx, args, refspecs)
	return err
}

var (
	cacheLocksMu sync.Mutex
	cacheLocks   = map[string]chan struct{}{}
)

// lockCache takes the in-process fetch lock of a cache, giving up when ctx
// is done.
func lockCache(ctx context.Context, cache string) (func(), error) {
	cacheLocksMu.Lock()
	ch, ok := cacheLocks[cache]
	if !ok {
		ch = make(chan struct{}, 1)
		cacheLocks[cache] = ch
	}
	cacheLocksMu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// RefUpdate is one compare-and-swap update of a remote ref: set Name to
// New if it currently is Old. Old == ZeroHash means "must not exist";
// New == ZeroHash means delete. Deleting with Old == ZeroHash is refused:
// git's server would delete the ref unconditionally.
type RefUpdate struct {
	Name     string
	New, Old Hash
}

// PushResult is the outcome of one RefUpdate.
//
//	OK     the remote now has New: it was updated, or it already was New
//	       (git reports "up to date" whatever Old was; refci's commits are
//	       unique per writer, so this makes a retried push idempotent)
//	Stale  the compare-and-swap lost: the remote value was not Old (it
//	       existed when Old was zero, or was missing when Old was not)
//	neither: refused for another reason (a server hook or policy, a missing
//	       object, "atomic push failed" for the innocent refs of an atomic
//	       push whose other ref lost); re-read the remote before relying on
//	       its value.
type PushResult struct {
	Name    string
	OK      bool
	Stale   bool
	Message string // git's reason or summary: "stale info", "new reference", "forced update", "up to date", "atomic push failed" ...
	Detail  string // for failures: what git and the remote said about this ref on stderr (redacted)
}

// Push sends all updates in one `git push --porcelain` with a
// --force-with-lease=<name>:<old> per update. The objects for New must be
// in the cache. Without atomic each update succeeds or fails on its own;
// with atomic (which the server must support, else a *RemoteError of Kind
// "rejected") either all are applied or none. A remote on this machine
// without receive hooks or receive settings is updated directly instead,
// with the same compare-and-swap and all-or-nothing guarantees, at a cost
// that does not grow with its refs (direct.go).
//
// The results are in the order of updates. A lost compare-and-swap is a
// result with Stale set, not an error. A deletion of a ref that is already
// gone is Stale (the remote was not Old). The error is a *RemoteError when
// git could not talk to the remote or its output could not be parsed (then
// results is nil and the outcome is unknown: re-read the remote; repeating
// the same push is safe), or a plain error for invalid updates (no git run).
func (r *Remote) Push(ctx context.Context, updates []RefUpdate, atomic bool) ([]PushResult, error) {
	if len(updates) == 0 {
		return nil, nil
	}
	args := []string{"push", "--porcelain", "--no-verify", "--no-signed", "--no-follow-tags",
		"--no-recurse-submodules", "--no-progress"}
	if atomic {
		args = append(args, "--atomic")
	}
	var specs []string
	seen := map[string]bool{}
	for _, u := range updates {
		if err := plumbing.ReferenceName(u.Name).Validate(); err != nil || !strings.HasPrefix(u.Name, "refs/") {
			return nil, fmt.Errorf("push: invalid ref name %q", u.Name)
		}
		if seen[u.Name] {
			return nil, fmt.Errorf("push: %s is updated twice", u.Name)
		}
		seen[u.Name] = true
		old := ""
		if u.Old != ZeroHash {
			old = u.Old.String()
		}
		args = append(args, "--force-with-lease="+u.Name+":"+old)
		switch {
		case u.New != ZeroHash:
			specs = append(specs, u.New.String()+":"+u.Name)
		case u.Old == ZeroHash:
			return nil, fmt.Errorf("push: deleting %s requires its current value (git's server would delete it unconditionally)", u.Name)
		default:
			specs = append(specs, ":"+u.Name)
		}
	}
	if gitDir := r.directGitDir(ctx); gitDir != "" {
		return r.pushDirect(ctx, gitDir, updates, atomic)
	}
	args = append(args, "--")
	stdout, stderr, err := r.runRaw(ctx, args, specs)
	results, perr := parsePorcelain(stdout, stderr, updates)
	if perr == nil {
		return results, nil // git's exit status is 1 whenever a ref failed
	}
	if err == nil {
		err = &RemoteError{Kind: KindOther, URL: r.URL, Op: "push", Stderr: r.redact(stderr + "\n" + string(stdout)),
			Err: fmt.Errorf("cannot parse git push --porcelain output: %w", perr)}
	}
	if re := (*RemoteError)(nil); errors.As(err, &re) && re.Kind == KindOther && atomic && strings.Contains(strings.ToLower(stderr), "atomic") {
		re.Kind = KindRejected
	}
	return nil, err
}

// parsePorcelain reads git push --porcelain output:
//
//	To <url>
//	<flag>\t<from>:<to>\t<summary>[ (<reason>)]
//	Done
//
// with flag ' ' (fast-forward), '+' (forced), '-' (deleted), '*' (new),
// '=' (up to date) or '!' (rejected or failed). Lines are grouped by
// status, not in the order of the refspecs, so they are matched by <to>.
// <from> is the object id, "(delete)" or empty.
func parsePorcelain(stdout []byte, stderr string, updates []RefUpdate) ([]PushResult, error) {
	byName := map[string]*PushResult{}
	for _, line := range strings.Split(string(stdout), "\n") {
		if len(line) < 3 || line[1] != '\t' || !strings.ContainsRune("+-*=! ", rune(line[0])) {
			continue // "To <url>", "Done", anything else
		}
		refs, summary, ok := strings.Cut(line[2:], "\t")
		if !ok {
			continue
		}
		_, to, ok := strings.Cut(refs, ":")
		if !ok {
			continue
		}
		res := &PushResult{Name: to, OK: line[0] != '!'}
		msg, reason := summary, ""
		if strings.HasSuffix(summary, ")") {
			if i := strings.LastIndex(summary, " ("); i >= 0 {
				msg, reason = summary[:i], summary[i+2:len(summary)-1]
			}
		}
		res.Message = reason
		if reason == "" {
			res.Message = strings.TrimSuffix(strings.TrimPrefix(msg, "["), "]")
		}
		if !res.OK {
			lines := stderrAbout(stderr, to)
			res.Detail = strings.Join(lines, "; ")
			res.Stale = isStale(strings.TrimPrefix(strings.TrimSuffix(msg, "]"), "["), reason, lines)
		}
		byName[to] = res
	}
	out := make([]PushResult, len(updates))
	var missing []string
	for i, u := range updates {
		res, ok := byName[u.Name]
		if !ok {
			missing = append(missing, u.Name)
			continue
		}
		out[i] = *res
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("no status for %s", strings.Join(missing, ", "))
	}
	for i := range out {
		if !out[i].OK && !out[i].Stale && out[i].Detail == "" {
			out[i].Detail = summarizeStderr(stderr)
		}
	}
	return out, nil
}

// casFailures are the phrases with which git (files backend), JGit and
// forges report that a ref was not at the expected value, or was locked
// by a concurrent update, when the server checked it.
var casFailures = []string{
	"reference already exists",
	"but expected",              // "is at X but expected Y", "reference is missing but expected Y"
	"file exists",               // "Unable to create '.../<ref>.lock': File exists." (a concurrent update holds the lock)
	"failed to lock",            // JGit
	"lock error",                // JGit
	"incorrect old value",       // forges
	"stale info", "fetch first", // the client's own check
	"unable to resolve reference", // git update-ref: a delete or update of a ref that is gone
}

// isStale decides whether a rejected ref lost its compare-and-swap. The
// client rejects with "[rejected] (stale info)" when the advertised value
// is not the lease; the server, having re-checked under the ref lock,
// rejects with "[remote rejected] (failed to update ref)" and explains on
// stderr ("cannot lock ref 'X': reference already exists").
func isStale(status, reason string, about []string) bool {
	texts := append([]string{reason}, about...)
	if status == "remote rejected" || status == "rejected" {
		for _, t := range texts {
			lt := strings.ToLower(t)
			for _, p := range casFailures {
				if strings.Contains(lt, p) {
					return true
				}
			}
		}
	}
	return false
}

// stderrAbout returns the stderr lines that name ref, without "remote: "
// prefixes and padding: git's own ('<ref>', " <ref> ") and a server
// hook's that say why ("refused <ref>: why", as refci serve's).
func stderrAbout(stderr, ref string) []string {
	var out []string
	for _, l := range stderrLines(stderr) {
		if strings.Contains(l, "'"+ref+"'") || strings.Contains(l, " "+ref+" ") || strings.Contains(l, " "+ref+": ") || strings.HasSuffix(l, " "+ref) || strings.Contains(l, "/"+ref+".lock") {
			out = append(out, l)
		}
	}
	return out
}

func stderrLines(stderr string) []string {
	var out []string
	for _, l := range strings.Split(stderr, "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "remote:"))
		if l == "" || strings.HasPrefix(l, "error: failed to push some refs") || strings.HasPrefix(l, "hint:") ||
			l == "Please make sure you have the correct access rights" || l == "and the repository exists." {
			continue
		}
		out = append(out, l)
	}
	return out
}

func summarizeStderr(stderr string) string {
	s := strings.Join(stderrLines(stderr), "; ")
	if len(s) > 1000 {
		s = s[:1000] + "..."
	}
	return s
}

// ListRemote returns the remote's refs whose names start with one of the
// prefixes (all refs when none is given), with their values, without
// fetching objects. It runs `git ls-remote --refs`, which in git 2.39
// sends no ref-prefix: the remote advertises all its refs and the filter
// is applied locally, so the cost grows with the number of refs on the
// remote. Use it for occasional checks (one run ref, a claim before a
// takeover); poll with Fetch. A missing ref is simply absent from the map.
func (r *Remote) ListRemote(ctx context.Context, prefixes ...string) (map[string]Hash, error) {
	var patterns []string
	for _, p := range prefixes {
		if p == "" || strings.HasPrefix(p, "-") || strings.ContainsAny(p, "*?[\\") {
			return nil, fmt.Errorf("ls-remote: invalid ref prefix %q", p)
		}
		patterns = append(patterns, p+"*")
	}
	if refs, ok := r.listLocal(prefixes); ok {
		return refs, nil
	}
	out, err := r.run(ctx, []string{"ls-remote", "--refs", "--"}, patterns)
	if err != nil {
		return nil, err
	}
	refs := map[string]Hash{}
	for _, line := range strings.Split(string(out), "\n") {
		if line == "" {
			continue
		}
		id, name, ok := strings.Cut(line, "\t")
		if !ok || !IsHash(id) {
			return nil, &RemoteError{Kind: KindOther, URL: r.URL, Op: "ls-remote", Err: fmt.Errorf("cannot parse git ls-remote output line %q", line)}
		}
		match := len(prefixes) == 0
		for _, p := range prefixes {
			if strings.HasPrefix(name, p) {
				match = true
				break
			}
		}
		if match {
			refs[name] = NewHash(id)
		}
	}
	return refs, nil
}

// RefValues returns the remote's values of those of names that exist. For
// a remote on this machine it reads just those refs (ListRemote of a
// namespace reads every ref in it); otherwise it lists them with git
// ls-remote.
func (r *Remote) RefValues(ctx context.Context, names []string) (map[string]Hash, error) {
	for _, n := range names {
		if err := plumbing.ReferenceName(n).Validate(); err != nil || !strings.HasPrefix(n, "refs/") {
			return nil, fmt.Errorf("ls-remote: invalid ref name %q", n)
		}
	}
	if dir := r.LocalDir(); dir != "" {
		if repo, err := openLocalRemote(dir); err == nil {
			if vals, err := repo.RefHashes(names); err == nil {
				return vals, nil
			}
		}
	}
	all, err := r.ListRemote(ctx, names...)
	if err != nil {
		return nil, err
	}
	out := map[string]Hash{}
	for _, n := range names {
		if h, ok := all[n]; ok {
			out[n] = h
		}
	}
	return out, nil
}

// Kinds of RemoteError.
const (
	KindUnreachable = "unreachable" // network, DNS, TLS, a hung or vanished connection, a timeout: retry with backoff
	KindAuth        = "auth"        // credentials missing or refused: a person must act
	KindNotFound    = "not-found"   // no repository (or no access, which hosts often report the same way), or a named ref is missing
	KindRejected    = "rejected"    // the remote refused the push as a whole (e.g. --atomic unsupported)
	KindOther       = "other"
)

// RemoteError is a failure to talk to the remote: unreachable host,
// missing repository, authentication, a push rejected as a whole. Kind
// classifies it for retry and backoff decisions; Error() is one line with
// git's stderr (credentials in URLs redacted) and what to do.
// errors.Is(err, ErrNotFound) holds for Kind "not-found", and Err is the
// underlying cause (the exit status, or the context's error when the
// context ended the run).
type RemoteError struct {
	Kind   string
	URL    string // as given (Error redacts it)
	Op     string // "fetch", "push", "ls-remote"
	Stderr string // git's stderr, trimmed and redacted
	Err    error
}

func (e *RemoteError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "git %s %s: %s", e.Op, RedactURL(e.URL), e.Kind)
	detail := strings.Join(stderrLines(e.Stderr), "; ")
	if detail == "" && e.Err != nil {
		detail = e.Err.Error()
	} else if e.Err != nil && !isExitError(e.Err) {
		detail = e.Err.Error() + ": " + detail
	}
	if len(detail) > 1000 {
		detail = detail[:1000] + "..."
	}
	if detail != "" {
		b.WriteString(": ")
		b.WriteString(redactText(detail))
	}
	b.WriteString(" (")
	b.WriteString(advice(e.Kind))
	b.WriteString(")")
	return b.String()
}

func (e *RemoteError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrNotFound) true for Kind "not-found".
func (e *RemoteError) Is(target error) bool {
	return target == ErrNotFound && e.Kind == KindNotFound
}

func isExitError(err error) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee)
}

func advice(kind string) string {
	switch kind {
	case KindUnreachable:
		return "check the network and the remote URL; the worker retries later"
	case KindAuth:
		return "check the credentials: for ssh the key in your agent or ssh config, for https a git credential helper (git config credential.helper)"
	case KindNotFound:
		return "check the remote URL and that the repository (and ref) exists and this account may read it"
	case KindRejected:
		return "the remote refused the push as a whole; see its message"
	default:
		return "run the same git command by hand to see more"
	}
}

// classify maps git's (English) stderr to a Kind.
func classify(stderr string) string {
	s := strings.ToLower(stderr)
	has := func(ps ...string) bool {
		for _, p := range ps {
			if strings.Contains(s, p) {
				return true
			}
		}
		return false
	}
	switch {
	case has("does not appear to be a git repository", "repository not found", "couldn't find remote ref",
		"no such repository", "error: 404", "returned error: 404") ||
		(strings.Contains(s, "repository '") && strings.Contains(s, "' not found")):
		return KindNotFound
	case has("authentication failed", "permission denied", "could not read username", "could not read password",
		"terminal prompts disabled", "returned error: 401", "returned error: 403", "access denied",
		"host key verification failed", "invalid username or password", "unauthorized"):
		return KindAuth
	case has("does not support --atomic", "atomic push failed", "pre-receive hook declined", "[remote rejected]"):
		return KindRejected
	case has("could not resolve host", "could not resolve hostname", "name resolution", "connection refused",
		"timed out", "network is unreachable", "no route to host", "connection reset", "connection closed",
		"remote end hung up", "early eof", "rpc failed", "unable to access", "ssl", "tls", "proxy",
		"could not read from remote repository", "broken pipe", "failed to connect", "couldn't connect"):
		return KindUnreachable
	}
	return KindOther
}

// run runs git in the cache with the remote's URL appended to args,
// followed by tail, and returns stdout, or a *RemoteError.
func (r *Remote) run(ctx context.Context, args, tail []string) ([]byte, error) {
	stdout, _, err := r.runRaw(ctx, args, tail)
	if err != nil {
		return nil, err
	}
	return stdout, nil
}

// runRaw is run that also returns stderr (redacted) and the *RemoteError
// for a non-zero exit; stdout is returned in every case.
func (r *Remote) runRaw(ctx context.Context, args, tail []string) ([]byte, string, error) {
	op := args[0]
	argURL, secret, err := splitCredentials(r.URL)
	if err != nil {
		return nil, "", err
	}
	full := []string{"--git-dir=" + r.Cache}
	for _, kv := range cacheConfig {
		full = append(full, "-c", kv[0]+"="+kv[1])
	}
	full = append(full, args...)
	full = append(full, argURL)
	full = append(full, tail...)
	cmd := r.gitCommand(ctx, secret, full...)
	var stdout bytes.Buffer
	stderr := &cappedBuffer{max: 64 << 10}
	cmd.Stdout = &stdout
	cmd.Stderr = stderr
	runErr := cmd.Run()
	if runErr != nil && ctx.Err() != nil && cmd.Process != nil {
		// Whatever of the cancelled session is still alive (it ignored
		// SIGTERM, or outlived git) must not go on writing into the cache.
		// A process group id is not reused while any member lives.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	errText := r.redact(strings.TrimSpace(stderr.String()))
	if runErr == nil {
		return stdout.Bytes(), errText, nil
	}
	re := &RemoteError{Kind: classify(errText), URL: r.URL, Op: op, Stderr: errText, Err: runErr}
	if cerr := ctx.Err(); cerr != nil {
		re.Err = cerr
		re.Kind = KindOther
		if errors.Is(cerr, context.DeadlineExceeded) {
			re.Kind = KindUnreachable // the remote did not answer in time
		}
	} else if !isExitError(runErr) {
		re.Kind = KindOther // git could not be started
	}
	return stdout.Bytes(), errText, re
}

// gitCommand is every git this Remote runs: its environment, in a session
// of its own; a cancelled ctx sends SIGTERM to the whole session (git, its
// transport helper, ssh, upload-pack), SIGKILL 5 s later.
func (r *Remote) gitCommand(ctx context.Context, secret *string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Env = r.environ(secret)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// environ is the environment of every git this Remote runs: the
// package's (see CLI), its Env and the credential helper of secret.
func (r *Remote) environ(secret *string) []string {
	env := gitEnviron()
	count := 0
	for _, kv := range r.Env {
		k, v, _ := strings.Cut(kv, "=")
		if k == "GIT_CONFIG_COUNT" {
			count, _ = strconv.Atoi(v)
			continue
		}
		env = append(env, kv)
	}
	if secret != nil {
		// Replace the configured helpers (an empty value resets the list)
		// with one that answers the password from the environment; the
		// password is never in argv, in a file, or in the helper's text.
		env = append(env,
			fmt.Sprintf("GIT_CONFIG_KEY_%d=credential.helper", count), fmt.Sprintf("GIT_CONFIG_VALUE_%d=", count),
			fmt.Sprintf("GIT_CONFIG_KEY_%d=credential.helper", count+1),
			fmt.Sprintf("GIT_CONFIG_VALUE_%d=%s", count+1, `!f() { if test "$1" = get; then printf 'password=%s\n' "$REFCI_GIT_PASSWORD"; fi; }; f`),
			"REFCI_GIT_PASSWORD="+*secret,
		)
		count += 2
	}
	if count > 0 {
		env = append(env, "GIT_CONFIG_COUNT="+strconv.Itoa(count))
	}
	return env
}

// splitCredentials removes the password from a URL's user info. It returns
// the URL to give git and the password (nil when there is none).
func splitCredentials(u string) (string, *string, error) {
	i := strings.Index(u, "://")
	if i < 0 {
		return u, nil, nil
	}
	start := i + 3
	end := len(u)
	if j := strings.IndexAny(u[start:], "/?#"); j >= 0 {
		end = start + j
	}
	at := strings.LastIndexByte(u[start:end], '@')
	if at < 0 {
		return u, nil, nil
	}
	user, pass, ok := strings.Cut(u[start:start+at], ":")
	if !ok {
		return u, nil, nil
	}
	if p, err := url.PathUnescape(pass); err == nil {
		pass = p // git decodes %XX in URL credentials too
	}
	if strings.ContainsAny(pass, "\n\x00") {
		return "", nil, fmt.Errorf("remote %s: the password in the URL contains a newline or NUL", RedactURL(u))
	}
	return u[:start] + user + "@" + u[start+at+1:], &pass, nil
}

// redact removes credentials from text git printed: URLs with passwords,
// and the URL's password wherever it appears.
func (r *Remote) redact(s string) string {
	s = redactText(s)
	if _, secret, _ := splitCredentials(r.URL); secret != nil && len(*secret) >= 4 {
		s = strings.ReplaceAll(s, *secret, "***")
	}
	return s
}

// RedactURL hides the password of a URL's user info:
// https://user:pass@host/x becomes https://user:***@host/x. Other URLs,
// scp-like addresses and paths are returned unchanged.
func RedactURL(u string) string {
	return redactText(u)
}

// redactText applies RedactURL to every URL in s.
func redactText(s string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, "://")
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		start := i + 3
		b.WriteString(s[:start])
		s = s[start:]
		end := strings.IndexFunc(s, func(c rune) bool {
			return c == '/' || c == '?' || c == '#' || c == '\'' || c == '"' || c == '<' || c == '>' || c == ' ' || c == '\t' || c == '\n' || c == '\r'
		})
		if end < 0 {
			end = len(s)
		}
		auth := s[:end]
		if at := strings.LastIndexByte(auth, '@'); at >= 0 {
			if user, _, ok := strings.Cut(auth[:at], ":"); ok {
				b.WriteString(user + ":***")
				b.WriteString(auth[at:])
				s = s[end:]
				continue
			}
		}
		b.WriteString(auth)
		s = s[end:]
	}
}

// cappedBuffer keeps the first max bytes written to it.
type cappedBuffer struct {
	buf bytes.Buffer
	max int
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); room > 0 {
		if len(p) > room {
			c.buf.Write(p[:room])
		} else {
			c.buf.Write(p)
		}
	}
	return len(p), nil
}

func (c *cappedBuffer) String() string { return c.buf.String() }
