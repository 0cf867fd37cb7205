package server

// The files New prepares: the host key and the admins of the roles file.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/renameio/v2"
	gossh "golang.org/x/crypto/ssh"

	"refci.dev/refci/queue"
)

// loadOrCreateHostKey reads the ed25519 host key, generating it (0600)
// the first time.
func loadOrCreateHostKey(path string) (gossh.Signer, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		fi, _ := os.Stat(path)
		if fi != nil && fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("%s is readable by others (mode %v); chmod 600 it", path, fi.Mode().Perm())
		}
		return gossh.ParsePrivateKey(b)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := gossh.MarshalPrivateKey(priv, "refci serve host key")
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(pem.EncodeToMemory(block)); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	os.WriteFile(path+".pub", gossh.MarshalAuthorizedKey(signer.PublicKey()), 0o644)
	return signer, nil
}

const rolesHeader = `# refci serve: who may do what. One key per line:  ROLES[@REPO]  KEY
#   ROLES  comma-separated: read (clone, fetch), trigger (also push
#          refs/ci/requests/*), trusted (trigger, and their requests are
#          trusted), worker (write refs/ci/claims/* and refs/ci/runs/*),
#          admin (everything: branches, refs/ci/secrets/*, new repositories),
#          none.
#   @REPO  the line applies in that repository only (app or app.git) and
#          replaces the key's other lines there.
#   KEY    an OpenSSH public key line, or its fingerprint SHA256:...
# This file is re-read when it changes; no restart is needed.
`

// ensureAdmins makes sure the roles file names an admin: the keys of
// --admin files (added when missing), else, for a file without an admin,
// the user's own ~/.ssh/*.pub. It returns what it took, for the banner.
func ensureAdmins(rolesPath string, adminFiles []string, home string) ([]string, error) {
	existing, err := os.ReadFile(rolesPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("roles file: %w", err)
	}
	cur, err := queue.ParseAccess(bytes.NewReader(existing), rolesPath)
	if err != nil {
		return nil, fmt.Errorf("%w; fix the file and start again", err)
	}
	type key struct{ line, fp, from string }
	var keys []key
	readKeys := func(file string) error {
		b, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("--admin %s: %w", file, err)
		}
		n := 0
		for _, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			pk, _, _, _, err := gossh.ParseAuthorizedKey([]byte(line))
			if err != nil {
				return fmt.Errorf("admin key %s: not an OpenSSH public key (give a KEY.pub file): %v", file, err)
			}
			keys = append(keys, key{line: line, fp: gossh.FingerprintSHA256(pk), from: file})
			n++
		}
		if n == 0 {
			return fmt.Errorf("admin key %s holds no key", file)
		}
		return nil
	}
	for _, f := range adminFiles {
		if err := readKeys(f); err != nil {
			return nil, err
		}
	}
	if len(adminFiles) == 0 && len(cur.Admins()) == 0 {
		if home == "" {
			home, _ = os.UserHomeDir()
		}
		pubs, _ := filepath.Glob(filepath.Join(home, ".ssh", "*.pub"))
		sort.Strings(pubs)
		for _, p := range pubs {
			if err := readKeys(p); err != nil {
				return nil, err
			}
		}
		if len(keys) == 0 {
			return nil, fmt.Errorf("no admin key: pass --admin KEY.pub, or make one with 'ssh-keygen -t ed25519' (refci takes ~/.ssh/*.pub)")
		}
	}
	var add strings.Builder
	var notes []string
	for _, k := range keys {
		if cur.Roles(k.fp, "")&queue.RoleAdmin == 0 {
			fmt.Fprintf(&add, "admin %s\n", k.line)
		}
		notes = append(notes, fmt.Sprintf("%s (from %s)", k.fp, k.from))
	}
	if len(keys) == 0 {
		for _, a := range cur.Admins() {
			notes = append(notes, fmt.Sprintf("%s %s (from %s)", a.Fingerprint, a.Label, rolesPath))
		}
	}
	if add.Len() > 0 {
		content := string(existing)
		if content == "" {
			content = rolesHeader
		} else if !strings.HasSuffix(content, "\n") {
			content += "\n"
		}
		if err := writeFileAtomic(rolesPath, []byte(content+add.String()), 0o600); err != nil {
			return nil, fmt.Errorf("roles file: %w", err)
		}
	}
	return notes, nil
}

// writeFileAtomic replaces path with b, with mode whatever the old file's
// was: readers see the old file or the new one, never a part, and the new
// one is on disk before it replaces the old (a roles file lost to a crash
// would lock every key out). The temporary file is made in path's
// directory, never in the shared one.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	f, err := renameio.NewPendingFile(path, renameio.WithTempDir(filepath.Dir(path)), renameio.WithStaticPermissions(mode))
	if err != nil {
		return err
	}
	defer f.Cleanup()
	if _, err := f.Write(b); err != nil {
		return err
	}
	return f.CloseAtomicallyReplace()
}
