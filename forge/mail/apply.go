package mail

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"refci.dev/refci/gitproto"
)

// MaxOutput caps the git am output an ApplyError carries.
const MaxOutput = 4 << 10

// ApplyError says a series did not apply: which patch, on which base, and
// what git am printed. The am was aborted. Callers use errors.As to reply
// with it.
type ApplyError struct {
	Base    string // the commit the series was applied on
	Patch   int    // 1-based number of the failing patch; 0 when unknown
	Subject string // that patch's subject
	Output  string // git am's output, capped at MaxOutput
	Err     error
}

func (e *ApplyError) Error() string {
	if e.Patch > 0 {
		return fmt.Sprintf("patch %d (%s) does not apply on %s: %s", e.Patch, e.Subject, e.Base, e.Output)
	}
	return fmt.Sprintf("series does not apply on %s: %s", e.Base, e.Output)
}

func (e *ApplyError) Unwrap() error { return e.Err }

// ErrUnsafePath is wrapped by Apply's error for a patch that touches a
// path in .git or outside the tree (a ".." component, an absolute path).
var ErrUnsafePath = errors.New("patch touches a path outside the work tree or inside .git")

// ErrIncomplete is returned by Apply for a series with missing patches.
var ErrIncomplete = errors.New("series is incomplete")

// Apply checks out base (detached) in dir, a scratch clone that holds it,
// and applies the series with git am --3way; it returns the new HEAD. The
// committer is refci; authors come from the mail. A failing am is aborted
// and reported as *ApplyError.
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
	commit, err := git.Run(ctx, "", "rev-parse", "--verify", "--quiet", "--end-of-options", base+"^{commit}")
	if err != nil {
		return "", fmt.Errorf("base %s is not a commit in the scratch clone; fetch it first: %w", base, err)
	}
	if _, err := git.Run(ctx, "", "checkout", "-q", "--detach", commit); err != nil {
		return "", fmt.Errorf("check out base %s: %w", base, err)
	}
	if _, err := git.Run(ctx, string(s.Mbox()), "-c", "core.hooksPath=/dev/null", "am", "-q", "--3way", "--patch-format=mboxrd", "--no-gpg-sign"); err != nil {
		ae := &ApplyError{Base: base, Err: err}
		var ce *gitproto.CLIError
		if errors.As(err, &ce) {
			ae.Output = capText(ce.Stderr, MaxOutput)
		}
		if next, err := git.Run(ctx, "", "rev-parse", "--git-path", "rebase-apply/next"); err == nil {
			if n, err := readInt(dir, next); err == nil && n >= 1 && n <= len(s.Patches) {
				ae.Patch, ae.Subject = n, s.Patches[n-1].Subject
			}
		}
		// git am prints the three-way merge's findings to its standard
		// output, which CLI drops on failure: name the conflicts instead.
		if u, err := git.Run(ctx, "", "diff", "--name-only", "--diff-filter=U"); err == nil && u != "" {
			ae.Output = capText(ae.Output+"\nconflicts in: "+strings.Join(strings.Fields(u), ", "), MaxOutput)
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
