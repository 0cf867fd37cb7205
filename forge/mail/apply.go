package mail

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"

	"refci.dev/refci/gitproto"
)

// MaxOutput caps the git am output an ApplyError carries.
const MaxOutput = 4 << 10

// ApplyError says a series did not apply: which patch, on which base, and
// what git am printed. The am was aborted. Callers use errors.As to reply
// with it.
type ApplyError struct {
	Base    string // the base as Apply was given it: a commit id or a branch name
	Commit  string // the commit Base named
	Patch   int    // 1-based number of the failing patch; 0 when unknown
	Subject string // that patch's subject
	// Output is what git am printed: its standard output (the patches
	// applied, "Patch failed at 0002 ...", the three-way merge's
	// conflicts), then its standard error, without git's advice on
	// going on in the scratch clone (git am --continue...), each cut to
	// its last MaxOutput/2 bytes; then the conflicted paths.
	Output string
	Err    error
}

func (e *ApplyError) Error() string {
	on := e.Base
	if e.Commit != "" && e.Commit != e.Base {
		on += " (" + e.Commit + ")"
	}
	if e.Patch > 0 {
		return fmt.Sprintf("patch %d (%s) does not apply on %s: %s", e.Patch, e.Subject, on, e.Output)
	}
	return fmt.Sprintf("series does not apply on %s: %s", on, e.Output)
}

func (e *ApplyError) Unwrap() error { return e.Err }

// ErrUnsafePath is wrapped by Apply's error for a patch that touches a
// path in .git or outside the tree (a ".." component, an absolute path).
var ErrUnsafePath = errors.New("patch touches a path outside the work tree or inside .git")

// ErrIncomplete is returned by Apply for a series with missing patches.
var ErrIncomplete = errors.New("series is incomplete")

// Apply checks out base (detached) in dir, a scratch clone that holds it,
// and applies the series with git am --3way; it returns the new HEAD. base
// is resolved by ResolveBase: a commit id (the series' Base) or a branch
// name (the configured base_branch). The committer is refci; authors come
// from the mail. A failing am is aborted and reported as *ApplyError; a
// base that does not resolve is an error that says what to fetch.
func Apply(ctx context.Context, dir, base string, s *Series) (string, error) {
	if !s.Complete() {
		return "", fmt.Errorf("%w: missing %v", ErrIncomplete, s.Missing())
	}
	for i, p := range s.Patches {
		// Body is what the checks and people read; applied, when it
		// differs (a charset converted), is what git am applies.
		bad := UnsafePaths(p.Body)
		if p.applied != "" {
			bad = append(bad, UnsafePaths(p.applied)...)
		}
		if len(bad) > 0 {
			return "", fmt.Errorf("patch %d (%s): %w: %q", i+1, p.Subject, ErrUnsafePath, bad)
		}
	}
	git := gitproto.CLI{Dir: dir, Env: []string{
		"GIT_COMMITTER_NAME=refci", "GIT_COMMITTER_EMAIL=refci@localhost",
	}}
	commit, err := ResolveBase(ctx, dir, base)
	if err != nil {
		return "", err
	}
	if _, err := git.Run(ctx, "", "checkout", "-q", "--detach", commit); err != nil {
		return "", fmt.Errorf("check out base %s: %w", base, err)
	}
	// Not -q: git am names each patch it applies and the conflicts on
	// its standard output, which the ApplyError carries.
	if _, err := git.Run(ctx, string(s.Mbox()), "-c", "core.hooksPath=/dev/null", "am", "--3way", "--patch-format=mboxrd", "--no-gpg-sign"); err != nil {
		ae := &ApplyError{Base: base, Commit: commit, Err: err}
		var ce *gitproto.CLIError
		if errors.As(err, &ce) {
			ae.Output = strings.TrimSpace(capTail(amAdvice(ce.Stdout), MaxOutput/2) + "\n" + capTail(amAdvice(ce.Stderr), MaxOutput/2))
		}
		if next, err := git.Run(ctx, "", "rev-parse", "--git-path", "rebase-apply/next"); err == nil {
			if n, err := readInt(dir, next); err == nil && n >= 1 && n <= len(s.Patches) {
				ae.Patch, ae.Subject = n, s.Patches[n-1].Subject
			}
		}
		if u, err := git.Run(ctx, "", "diff", "--name-only", "--diff-filter=U"); err == nil && u != "" {
			ae.Output += "\nconflicts in: " + capText(strings.Join(strings.Fields(u), ", "), 512)
		}
		if _, err := git.Run(ctx, "", "am", "--abort"); err != nil {
			return "", errors.Join(ae, fmt.Errorf("git am --abort: %w", err))
		}
		return "", ae
	}
	head, err := git.Run(ctx, "", "rev-parse", "HEAD")
	if err != nil {
		return "", err
	}
	return head, nil
}

// ResolveBase returns the commit base names in dir: base is a full
// commit id (40 or 64 hex digits, as a base-commit: trailer gives it) or
// a branch name, looked up as refs/heads/<base>, else as the one
// refs/remotes/<remote>/<base> (a scratch clone's origin/<base>). Nothing
// else is taken (no tags, no HEAD~1, no abbreviated ids): base comes from
// mail or configuration. Its error says what to fetch.
func ResolveBase(ctx context.Context, dir, base string) (string, error) {
	git := gitproto.CLI{Dir: dir}
	verify := func(rev string) (string, bool) {
		c, err := git.Run(ctx, "", "rev-parse", "--verify", "--quiet", "--end-of-options", rev+"^{commit}")
		return c, err == nil
	}
	if baseLine().MatchString("base-commit: " + base) {
		if c, ok := verify(base); ok {
			return c, nil
		}
		return "", fmt.Errorf("base %s is not a commit in the scratch clone: fetch it first (is it pushed?)", base)
	}
	if _, err := git.Run(ctx, "", "check-ref-format", "--branch", base); err != nil || strings.HasPrefix(base, "-") {
		return "", fmt.Errorf("base %q is neither a full commit id nor a branch name", base)
	}
	if c, ok := verify("refs/heads/" + base); ok {
		return c, nil
	}
	refs, err := git.Run(ctx, "", "for-each-ref", "--format=%(refname)", "refs/remotes/")
	if err != nil {
		return "", err
	}
	var found []string
	for _, r := range strings.Fields(refs) {
		if _, name, ok := strings.Cut(strings.TrimPrefix(r, "refs/remotes/"), "/"); ok && name == base {
			found = append(found, r)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("base branch %s is not in the scratch clone: fetch it first", base)
	case 1:
		if c, ok := verify(found[0]); ok {
			return c, nil
		}
		return "", fmt.Errorf("base branch %s (%s) is not a commit", base, found[0])
	}
	return "", fmt.Errorf("base branch %s is ambiguous in the scratch clone: %s", base, strings.Join(found, ", "))
}

// amAdvice drops git am's advice on going on in the scratch clone
// ("run git am --continue", "--skip", "--abort", "--show-current-patch"),
// which means nothing to the patch's author.
func amAdvice(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.Contains(l, "git am --") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// capTail keeps the last n bytes of s (where git puts what failed).
func capTail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := len(s) - n
	for i < len(s) && !utf8.RuneStart(s[i]) {
		i++
	}
	return "[... output cut]\n" + s[i:]
}

func capText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "\n[... output cut]"
}

// UnsafePaths lists the paths a patch body names (diff --git, ---/+++
// headers, rename and copy lines) that are absolute, hold a ".."
// component, or a ".git" component in any case. Hunk lines are skipped by
// their counts, so a removed line "-- x" is not taken for a header.
func UnsafePaths(body string) []string {
	var bad []string
	oldN, newN := 0, 0
	for _, line := range strings.Split(body, "\n") {
		if oldN > 0 || newN > 0 {
			switch {
			case strings.HasPrefix(line, "\\"):
			case strings.HasPrefix(line, "-"):
				oldN--
			case strings.HasPrefix(line, "+"):
				newN--
			default:
				oldN--
				newN--
			}
			continue
		}
		if strings.HasPrefix(line, "@@ ") {
			oldN, newN = hunkCounts(line)
			continue
		}
		var paths []string
		switch {
		case strings.HasPrefix(line, "diff --git "):
			paths = []string{strings.TrimPrefix(line, "diff --git ")}
		case strings.HasPrefix(line, "--- "), strings.HasPrefix(line, "+++ "):
			p, _, _ := strings.Cut(line[4:], "\t")
			if p == "/dev/null" {
				continue
			}
			paths = []string{p}
		default:
			for _, pre := range []string{"rename from ", "rename to ", "copy from ", "copy to ", "Index: "} {
				if strings.HasPrefix(line, pre) {
					paths = []string{"x/" + strings.TrimPrefix(line, pre)}
				}
			}
		}
		for _, p := range paths {
			if unsafePath(p) {
				bad = append(bad, p)
			}
		}
	}
	return bad
}

// unsafePath is conservative: it splits on '/', white space and quotes
// (git quotes odd names C-style), so it may refuse an odd but harmless
// name; it never lets .git or .. through.
func unsafePath(p string) bool {
	if uq, err := strconv.Unquote(p); err == nil {
		p = uq
	}
	t := strings.TrimSpace(p)
	if strings.HasPrefix(t, "/") || strings.HasPrefix(t, "\"/") {
		return true
	}
	for _, c := range strings.FieldsFunc(p, func(r rune) bool {
		return r == '/' || r == '\\' || r == '"' || r == ' ' || r == '\t'
	}) {
		c = strings.ToLower(strings.TrimRight(c, ". "))
		if c == "" || c == ".git" || strings.HasPrefix(c, "git~") {
			return true
		}
	}
	return false
}

func hunkCounts(line string) (int, int) {
	f := strings.Fields(line)
	if len(f) < 3 {
		return 0, 0
	}
	count := func(s string) int {
		_, n, ok := strings.Cut(s[1:], ",")
		if !ok {
			return 1
		}
		v, err := strconv.Atoi(n)
		if err != nil || v < 0 {
			return 0
		}
		return v
	}
	return count(f[1]), count(f[2])
}

// readInt reads a number from a file git names (relative to dir).
func readInt(dir, path string) (int, error) {
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
