package server

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// trustStore records which request values were pushed over SSH by keys
// with the trusted (or admin) role: one file per repository under dir,
// one "<object id> <key fingerprint>" line per push, appended; when the
// file holds twice maxTrustRecords lines it is rewritten with the newest
// maxTrustRecords. A restart keeps it. Safe for concurrent use.
type trustStore struct {
	dir string
	mu  sync.Mutex
}

const maxTrustRecords = 2000

func (t *trustStore) file(repo string) string { return filepath.Join(t.dir, repoFileName(repo)) }

// repoFileName is a file name for a repository's records: its name with
// '/' as '_', and a short hash so that a/b and a_b differ.
func repoFileName(repo string) string {
	sum := sha256.Sum256([]byte(repo))
	return strings.ReplaceAll(repo, "/", "_") + "-" + hex.EncodeToString(sum[:4])
}

// record notes that key fp pushed object as a request in repo.
func (t *trustStore) record(repo, object, fp string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	f, err := os.OpenFile(t.file(repo), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(object + " " + fp + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if lines := t.read(repo); len(lines) >= 2*maxTrustRecords {
		lines = lines[len(lines)-maxTrustRecords:]
		return writeFileAtomic(t.file(repo), []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	}
	return nil
}

// lookup returns the fingerprint of the trusted key that pushed object
// as a request in repo, or "".
func (t *trustStore) lookup(repo, object string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := t.read(repo)
	for i := len(lines) - 1; i >= 0; i-- {
		if obj, fp, ok := strings.Cut(lines[i], " "); ok && obj == object {
			return fp
		}
	}
	return ""
}

func (t *trustStore) read(repo string) []string {
	f, err := os.Open(t.file(repo))
	if err != nil {
		return nil
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// pushedByTrustedKey says whether a request is trusted because its value
// was pushed over SSH by a key with the trusted or admin role. remote is
// the repository's directory, object the request ref's value.
func (t *trustStore) pushedByTrustedKey(reposDir, remote, object string) (bool, string) {
	rel, err := filepath.Rel(reposDir, remote)
	if err != nil || strings.HasPrefix(rel, "..") {
		return false, "not pushed through this refci serve"
	}
	if fp := t.lookup(filepath.ToSlash(rel), object); fp != "" {
		return true, fmt.Sprintf("pushed over SSH by trusted key %s", fp)
	}
	return false, "not pushed over SSH by a key with the trusted role"
}
