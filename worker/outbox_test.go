package worker

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

func testEntry(i int) *outboxEntry {
	return &outboxEntry{
		RunRef:     fmt.Sprintf("refs/ci/runs/%040d/run-%d", i, i),
		Commit:     fmt.Sprintf("%040x", i+1),
		RequestRef: fmt.Sprintf("refs/ci/requests/r%d", i),
		ClaimRef:   fmt.Sprintf("refs/ci/claims/r%d", i),
		ClaimValue: fmt.Sprintf("%040x", i+1000),
	}
}

// holdFile opens p and keeps it open until the test ends, and returns what
// it is. sameFile then tells whether p is still that file: with the file
// held open its inode cannot be freed, so no file made since can have its
// inode number (comparing bare inode numbers failed when a rewrite got the
// number of the file it replaced).
func holdFile(t *testing.T, p string) os.FileInfo {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

func sameFile(t *testing.T, held os.FileInfo, p string) bool {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return os.SameFile(held, fi)
}

// The outbox is one journal: entries are appended to the same file, a
// later state of a run replaces its earlier one, done runs drop out, and
// once nothing is pending the file is emptied in place.
func TestOutboxJournal(t *testing.T) {
	rem := &gitproto.Remote{URL: "file:///nowhere", Cache: t.TempDir()}
	if m, err := readOutbox(rem); err != nil || len(m) != 0 {
		t.Fatalf("a new outbox holds %v, %v", m, err)
	}
	for i := 0; i < 5; i++ {
		if err := writeOutbox(rem, fmt.Sprintf("run-%d", i), testEntry(i)); err != nil {
			t.Fatal(err)
		}
	}
	held := holdFile(t, outboxJournal(rem))
	later := testEntry(2)
	later.Pushed = later.Commit
	if err := writeOutbox(rem, "run-2", later); err != nil {
		t.Fatal(err)
	}
	m, err := readOutbox(rem)
	if err != nil || len(m) != 5 {
		t.Fatalf("outbox holds %d entries (%v), want 5", len(m), err)
	}
	if m["run-2"].Pushed != later.Commit || m["run-1"].Commit != testEntry(1).Commit {
		t.Errorf("entries read back wrong: %+v, %+v", m["run-2"], m["run-1"])
	}
	if _, err := outboxDone(rem, []string{"run-0", "run-2"}); err != nil {
		t.Fatal(err)
	}
	if m, _ := readOutbox(rem); len(m) != 3 || m["run-0"] != nil || m["run-2"] != nil || m["run-3"] == nil {
		t.Errorf("after two are done the outbox holds %v", m)
	}
	if _, err := outboxDone(rem, []string{"run-1", "run-3", "run-4"}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(outboxJournal(rem))
	if err != nil || fi.Size() != 0 {
		t.Errorf("with nothing pending the journal is %v bytes (%v), want emptied", fi.Size(), err)
	}
	if !sameFile(t, held, outboxJournal(rem)) {
		t.Error("the journal was replaced by a new file, not appended to and emptied")
	}
	if ents, _ := os.ReadDir(outboxDir(rem)); len(ents) != 1 {
		t.Errorf("the outbox directory holds %d files, want the journal only", len(ents))
	}
}

// A line cut short by a crash is skipped and does not spoil the next
// one; a journal that grows while results wait is written anew with only
// what is pending.
func TestOutboxJournalTornLineAndCompaction(t *testing.T) {
	rem := &gitproto.Remote{URL: "file:///nowhere", Cache: t.TempDir()}
	if err := writeOutbox(rem, "kept", testEntry(1)); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(outboxJournal(rem), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"run":"torn","entry":{"run_ref":"refs/ci/ru`)
	f.Close()
	if err := writeOutbox(rem, "after", testEntry(2)); err != nil {
		t.Fatal(err)
	}
	m, err := readOutbox(rem)
	if err != nil || len(m) != 2 || m["kept"] == nil || m["after"] == nil {
		t.Fatalf("after a torn line the outbox holds %v, %v; want kept and after", m, err)
	}

	// Many results come and go while one waits (a remote refusing it).
	// The rewrites make their temporary files beside the journal, not in
	// the shared temporary directory, and leave none behind; the journal
	// stays readable by its owner only, whatever its mode was.
	tmpdir := t.TempDir()
	t.Setenv("TMPDIR", tmpdir)
	old := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := os.Chtimes(tmpdir, old, old); err != nil { // any file made or removed there moves it
		t.Fatal(err)
	}
	if err := os.Chmod(outboxJournal(rem), 0o644); err != nil {
		t.Fatal(err)
	}
	held := holdFile(t, outboxJournal(rem))
	for i := 0; ; i++ {
		run := fmt.Sprintf("busy-%d", i)
		if err := writeOutbox(rem, run, testEntry(i)); err != nil {
			t.Fatal(err)
		}
		if _, err := outboxDone(rem, []string{run}); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(outboxJournal(rem))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > outboxCompactBytes+4096 {
			t.Fatalf("the journal grew to %d bytes", fi.Size())
		}
		if i > 3*outboxCompactBytes/300 {
			break
		}
	}
	m, err = readOutbox(rem)
	if err != nil || len(m) != 2 || m["kept"].Commit != testEntry(1).Commit || m["after"] == nil {
		t.Errorf("after compactions the outbox holds %v, %v", m, err)
	}
	if sameFile(t, held, outboxJournal(rem)) {
		t.Error("the journal was never rewritten")
	}
	if fi, err := os.Stat(outboxJournal(rem)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the rewritten journal has mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	if ents, _ := os.ReadDir(outboxDir(rem)); len(ents) != 1 {
		t.Errorf("the outbox directory holds %d files, want the journal only", len(ents))
	}
	if fi, err := os.Stat(tmpdir); err != nil || !fi.ModTime().Equal(old) {
		t.Errorf("rewriting the journal made files in TMPDIR (its mtime is %v, %v)", fi.ModTime(), err)
	}
}

// An outbox of an earlier version, a file per run, is read, and its files
// are removed once done.
func TestOutboxReadsEarlierFiles(t *testing.T) {
	rem := &gitproto.Remote{URL: "file:///nowhere", Cache: t.TempDir()}
	os.MkdirAll(outboxDir(rem), 0o700)
	old := filepath.Join(outboxDir(rem), "old-run.json")
	if err := os.WriteFile(old, []byte(`{"run_ref":"refs/ci/runs/x/old-run","commit":"`+testEntry(7).Commit+`","pushed":""}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeOutbox(rem, "new-run", testEntry(8)); err != nil {
		t.Fatal(err)
	}
	m, err := readOutbox(rem)
	if err != nil || len(m) != 2 || m["old-run"] == nil || m["old-run"].Commit != testEntry(7).Commit {
		t.Fatalf("outbox holds %v, %v", m, err)
	}
	if _, err := outboxDone(rem, []string{"old-run"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("the earlier version's file is still there (%v)", err)
	}
	if m, _ := readOutbox(rem); len(m) != 1 || m["new-run"] == nil {
		t.Errorf("outbox holds %v, want new-run only", m)
	}
}

// cacheWithResult makes a bare cache holding one unreferenced result
// commit (status.json in its tree).
func cacheWithResult(t *testing.T) (string, *gitproto.Repo, gitproto.Hash) {
	t.Helper()
	cache := fixtures.BareRepo(t, "cache.git")
	repo, err := gitproto.Open(cache)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := repo.WriteBlob([]byte(`{"state":"success"}`))
	if err != nil {
		t.Fatal(err)
	}
	tree, err := repo.WriteTree([]gitproto.TreeFile{{Path: "status.json", Hash: blob}})
	if err != nil {
		t.Fatal(err)
	}
	commit, err := repo.WriteCommit(gitproto.CommitSpec{Tree: tree, Author: gitproto.NewSignature("w", "w@example.invalid", time.Now()), Message: "result"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cache, repo, commit
}

// A result waiting in the outbox without a ref in the cache gets one
// before the cache is garbage collected, so that even a gc that prunes
// everything unreachable keeps it; once it is pushed the ref goes again.
func TestProtectPendingKeepsResultsThroughGC(t *testing.T) {
	cache, _, commit := cacheWithResult(t)
	rem := &gitproto.Remote{URL: "file:///nowhere", Cache: cache}
	ref := "refs/ci/runs/" + commit.String() + "/run-1"
	if err := writeOutbox(rem, "run-1", &outboxEntry{RunRef: ref, Commit: commit.String(), NoCacheRef: true}); err != nil {
		t.Fatal(err)
	}
	if err := protectPending(rem); err != nil {
		t.Fatal(err)
	}
	if err := protectPending(rem); err != nil { // again: nothing more to do
		t.Fatal(err)
	}
	fixtures.Git(t, cache, "-c", "gc.reflogExpire=now", "gc", "-q", "--prune=now")
	if _, err := fixtures.RunGit(cache, nil, nil, "cat-file", "-e", commit.String()+":status.json"); err != nil {
		t.Fatalf("the waiting result did not survive gc: %v", err)
	}
	last, err := outboxDone(rem, []string{"run-1"})
	if err != nil {
		t.Fatal(err)
	}
	if last["run-1"] == nil || last["run-1"].NoCacheRef {
		t.Fatalf("outboxDone gave %+v; want the entry with its ref noted", last["run-1"])
	}
	forgetPublished(rem, []string{"run-1"}, last)
	if out, err := fixtures.RunGit(cache, nil, nil, "for-each-ref", "refs/ci/runs/"); err != nil || len(out) != 0 {
		t.Errorf("after publishing the cache still has %q (%v)", out, err)
	}
}

// A result that cannot be recorded in the outbox (its directory cannot be
// made) is kept in the cache under its run ref instead, as the log says.
func TestQueueResultKeepsResultWhenOutboxFails(t *testing.T) {
	cache, repo, commit := cacheWithResult(t)
	rem := &gitproto.Remote{URL: "file:///nowhere", Cache: cache}
	if err := os.WriteFile(outboxDir(rem), []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	w := &Worker{log: slog.New(slog.NewTextHandler(&logs, nil))}
	ref := "refs/ci/runs/" + commit.String() + "/run-9"
	a := &activeRun{remote: rem, claim: queue.Claim{Run: "run-9", Request: "r9"}, claimRef: "refs/ci/claims/r9", runRef: ref}
	w.queueResult(a, commit, false)
	if got, err := repo.RefHash(ref); err != nil || got != commit {
		t.Errorf("the run ref is %v, %v; want %s kept in the cache", got, err, commit)
	}
	if !strings.Contains(logs.String(), "stays in the cache repository") {
		t.Errorf("the log says %q", logs.String())
	}
}
