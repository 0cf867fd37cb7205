package sshd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// maxDepth is how many path segments a repository name may have
// (org/team/app.git).
const maxDepth = 3

// ErrBadRepoName is wrapped by every refusal of a repository name.
var ErrBadRepoName = errors.New("bad repository name")

// CleanRepoName checks a repository name as a client sends it (the path
// of ssh://host/org/app.git, or app of host:app) and returns it in its
// normal form: segments of letters, digits, '.', '_' and '-', none
// starting with a dot, separated by single slashes, ending in ".git" (added
// when missing). One leading slash is dropped (URLs always carry it); no
// other absolute path, no "..", no empty segment is accepted.
func CleanRepoName(raw string) (string, error) {
	name := strings.TrimPrefix(raw, "/")
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("%w %q: %s; use names like app.git or org/app.git", ErrBadRepoName, raw, why)
	}
	if name == "" {
		return bad("empty")
	}
	if len(name) > 200 {
		return bad("longer than 200 bytes")
	}
	if strings.HasPrefix(name, "/") || strings.HasPrefix(name, "~") {
		return bad("absolute paths and home directories are not served")
	}
	name = strings.TrimSuffix(name, "/")
	segs := strings.Split(name, "/")
	if len(segs) > maxDepth {
		return bad(fmt.Sprintf("more than %d path segments", maxDepth))
	}
	for i, s := range segs {
		if s == "" {
			return bad("empty path segment")
		}
		if s[0] == '.' {
			return bad("a path segment starts with a dot (no '..', no hidden names)")
		}
		for _, c := range s {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
				return bad(fmt.Sprintf("%q is not allowed (letters, digits, '.', '_', '-')", c))
			}
		}
		if i < len(segs)-1 && strings.HasSuffix(s, ".git") {
			return bad("a repository cannot be nested in another")
		}
	}
	if !strings.HasSuffix(name, ".git") {
		name += ".git"
	}
	if name == ".git" {
		return bad("empty")
	}
	return name, nil
}

// repoPath maps a clean name to its directory under root and checks that
// no component on the way is a symlink, so nothing can lead outside the
// root. It reports whether the repository exists.
func repoPath(root, name string) (string, bool, error) {
	p := root
	for _, s := range strings.Split(name, "/") {
		p = filepath.Join(p, s)
		fi, err := os.Lstat(p)
		if errors.Is(err, os.ErrNotExist) {
			return filepath.Join(root, filepath.FromSlash(name)), false, nil
		}
		if err != nil {
			return "", false, fmt.Errorf("repository %s: %w", name, err)
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return "", false, fmt.Errorf("%w %q: it leads through a symlink, which is never served", ErrBadRepoName, name)
		}
		if !fi.IsDir() {
			return "", false, fmt.Errorf("%w %q: not a directory on the server", ErrBadRepoName, name)
		}
	}
	if _, err := os.Stat(filepath.Join(p, "HEAD")); err != nil {
		return "", false, fmt.Errorf("%w %q: the directory exists but is not a bare repository", ErrBadRepoName, name)
	}
	return p, true, nil
}

// ListRepos returns the clean names of the bare repositories under root
// (at most maxDepth deep), skipping symlinks and hidden entries.
func ListRepos(root string) ([]string, error) {
	var out []string
	var walk func(dir, prefix string, depth int) error
	walk = func(dir, prefix string, depth int) error {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
				continue
			}
			name := prefix + e.Name()
			if strings.HasSuffix(e.Name(), ".git") {
				if _, err := CleanRepoName(name); err == nil {
					out = append(out, name)
				}
				continue
			}
			if depth+1 < maxDepth {
				if err := walk(filepath.Join(dir, e.Name()), name+"/", depth+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(root, "", 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list repositories in %s: %w", root, err)
	}
	return out, nil
}
