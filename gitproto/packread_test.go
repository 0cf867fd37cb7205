package gitproto

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5/plumbing"

	"refci.dev/refci/fixtures"
)

// Every object of a repacked repository (deltas on offsets and on object
// ids, chains of them, every type) reads through the pack reader as git
// reads it; a lookup of another type is "not found", of a missing object
// goes to go-git, and an object left loose is still found.
func TestPackReaderReadsWhatGitReads(t *testing.T) {
	t.Parallel()
	for _, offsets := range []bool{true, false} {
		t.Run(fmt.Sprintf("offsets=%v", offsets), func(t *testing.T) {
			dir := fixtures.NewRepo(t)
			var script strings.Builder
			for i := 0; i < 60; i++ {
				fmt.Fprintf(&script, "commit refs/heads/main\ncommitter T <t@example.invalid> %d +0000\ndata 6\nc %03d\n", 1700000000+i, i)
				var body strings.Builder
				for k := 0; k < 200; k++ {
					if k == i {
						fmt.Fprintf(&body, "line %d changed in commit %d\n", k, i)
					} else {
						fmt.Fprintf(&body, "line %d of a file that changes a line a commit\n", k)
					}
				}
				fmt.Fprintf(&script, "M 100644 inline f.txt\ndata %d\n%s\nM 100644 inline d/g.txt\ndata 4\n%03d\n\n", body.Len(), body.String(), i)
			}
			fixtures.Git(t, dir, "config", "repack.useDeltaBaseOffset", strconv.FormatBool(offsets))
			cmd := exec.Command("git", "fast-import", "--quiet")
			cmd.Dir, cmd.Stdin = dir, strings.NewReader(script.String())
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("fast-import: %v %s", err, out)
			}
			fixtures.Git(t, dir, "tag", "-a", "-m", "a tag", "v1", "main")
			fixtures.Git(t, dir, "repack", "-a", "-d", "-f", "-q", "--depth=50", "--window=50")
			loose := fixtures.Git(t, dir, "hash-object", "-w", "--stdin") // stdin is empty: the empty blob, loose

			all := exec.Command("git", "cat-file", "--batch-all-objects", "--batch")
			all.Dir = dir
			out, err := all.Output()
			if err != nil {
				t.Fatal(err)
			}
			r := openRepo(t, dir)
			br := bufio.NewReader(bytes.NewReader(out))
			count, deltas := 0, 0
			verify := exec.Command("git", "verify-pack", "-v", filepath.Join(dir, ".git", "objects", "pack", packName(t, dir)))
			verify.Dir = dir
			if v, err := verify.Output(); err == nil {
				for _, l := range strings.Split(string(v), "\n") {
					if len(strings.Fields(l)) == 7 {
						deltas++
					}
				}
			}
			for {
				head, err := br.ReadString('\n')
				if err == io.EOF {
					break
				}
				f := strings.Fields(head)
				size, _ := strconv.Atoi(f[2])
				want := make([]byte, size+1)
				if _, err := io.ReadFull(br, want); err != nil {
					t.Fatal(err)
				}
				want = want[:size]
				h := plumbing.NewHash(f[0])
				typ, _ := plumbing.ParseObjectType(f[1])
				if f[0] == loose {
					continue // checked below
				}
				obj, err := r.st.reader.object(plumbing.AnyObject, h)
				if err != nil {
					t.Fatalf("%s %s: %v", f[1], f[0], err)
				}
				rc, _ := obj.Reader()
				got, _ := io.ReadAll(rc)
				if obj.Type() != typ || !bytes.Equal(got, want) {
					t.Fatalf("%s %s reads as %s %q", f[1], f[0], obj.Type(), got)
				}
				other := plumbing.BlobObject
				if typ == plumbing.BlobObject {
					other = plumbing.TreeObject
				}
				if _, err := r.st.EncodedObject(other, h); !errors.Is(err, plumbing.ErrObjectNotFound) {
					t.Errorf("%s %s as a %s: %v", f[1], f[0], other, err)
				}
				count++
			}
			if count < 200 || deltas < 50 {
				t.Fatalf("fixture: %d objects, %d deltas", count, deltas)
			}
			// Missing from the packs: go-git answers (not found; a loose one found).
			if _, err := r.st.reader.object(plumbing.AnyObject, plumbing.NewHash(strings.Repeat("ab", 20))); !errors.Is(err, errNotInPacks) {
				t.Errorf("missing: %v", err)
			}
			if _, err := r.st.EncodedObject(plumbing.AnyObject, plumbing.NewHash(strings.Repeat("ab", 20))); !errors.Is(err, plumbing.ErrObjectNotFound) {
				t.Errorf("missing through the store: %v", err)
			}
			if _, err := r.st.EncodedObject(plumbing.BlobObject, plumbing.NewHash(loose)); err != nil {
				t.Errorf("loose: %v", err)
			}
		})
	}
}

func packName(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, ".git", "objects", "pack"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".idx") {
			return e.Name()
		}
	}
	t.Fatal("no pack")
	return ""
}
