package worker

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestHidePaths(t *testing.T) {
	got := CleanPaths("", "/a/b", "/a/b/", "/c")
	if len(got) != 2 || got[0] != "/a/b" || got[1] != "/c" {
		t.Fatalf("CleanPaths = %q", got)
	}
}

// The runs root is made private, taken again as it is, and refused when
// it is not a private directory of this user: a symbolic link (to a place
// the attacker reads), a directory others may enter, a file.
func TestRunsRoot(t *testing.T) {
	tmp := t.TempDir()
	root, err := runsRoot(tmp)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(root, &st); err != nil || st.Mode&0o7777 != 0o700 || filepath.Base(root) != fmt.Sprintf("refci-%d", os.Getuid()) {
		t.Fatalf("runs root %s: mode %o, %v", root, st.Mode, err)
	}
	if again, err := runsRoot(tmp); err != nil || again != root {
		t.Fatalf("again: %s, %v", again, err)
	}
	elsewhere := t.TempDir()
	for name, bad := range map[string]func(){
		"symlink":  func() { os.Symlink(elsewhere, root) },
		"shared":   func() { os.Mkdir(root, 0o700); os.Chmod(root, 0o755) },
		"file":     func() { os.WriteFile(root, nil, 0o600) },
		"writable": func() { os.Mkdir(root, 0o700); os.Chmod(root, 0o1777) },
		"another user's": func() {
			os.Mkdir(root, 0o700)
			if os.Getuid() == 0 {
				os.Chown(root, 4242, 4242)
			} else {
				os.Chmod(root, 0o750) // cannot give it away: at least not private
			}
		},
	} {
		os.RemoveAll(root)
		bad()
		if _, err := runsRoot(tmp); err == nil || !strings.Contains(err.Error(), "not a private directory of this user") || !strings.Contains(err.Error(), "remove it") {
			t.Errorf("%s: %v", name, err)
		}
	}
}
