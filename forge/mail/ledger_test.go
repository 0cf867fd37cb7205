package mail

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

func newLedger(t testing.TB, bare, me string) *ledger {
	t.Helper()
	rem, err := gitproto.OpenRemote(bare, filepath.Join(t.TempDir(), "cache.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return &ledger{remote: rem, ref: queue.MailLedgerRef("mail"), me: me, now: time.Now}
}

// Two bridges writing at once: every change of both lands (the union),
// the chain stays linear, and a decision is taken once.
func TestLedgerUnion(t *testing.T) {
	bare := fixtures.BareRepo(t, "remote.git")
	a, b := newLedger(t, bare, "a"), newLedger(t, bare, "b")
	ctx := context.Background()
	const n = 15
	var wg sync.WaitGroup
	won := make([]int, 2)
	for i, l := range []*ledger{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < n; k++ {
				key := fmt.Sprintf("id:%s-%d", l.me, k)
				claim := fmt.Sprintf("%016x/v1", k)
				mine := false
				err := l.update(ctx, "test", func(tx *ledgerTx) {
					mine = false
					tx.put(msgPath(key), msgRecord{V: ledgerFormat, ID: key, Outcome: msgIgnored, By: l.me})
					if _, ok := tx.series(claim); !ok {
						tx.put(seriesPath(claim), seriesRecord{V: ledgerFormat, State: seriesClaimed, By: l.me})
						mine = true
					}
				})
				if err != nil {
					t.Error(err)
					return
				}
				if mine {
					won[i]++
				}
			}
		}()
	}
	wg.Wait()
	if won[0]+won[1] != n {
		t.Errorf("claims won %v, want %d in all", won, n)
	}
	msgs, series := 0, 0
	for _, p := range strings.Fields(fixtures.Git(t, bare, "ls-tree", "-r", "--name-only", queue.MailLedgerRef("mail"))) {
		switch {
		case strings.HasPrefix(p, "messages/"):
			msgs++
		case strings.HasPrefix(p, "series/"):
			series++
		}
	}
	for _, l := range []*ledger{a, b} {
		if err := l.view(ctx, func(tx *ledgerTx) {
			if got := len(tx.allSeries()); got != n {
				t.Errorf("bridge %s lists %d series, want %d", l.me, got, n)
			}
			for k := 0; k < n; k++ {
				for _, who := range []string{"a", "b"} {
					if !tx.hasMessage(fmt.Sprintf("id:%s-%d", who, k)) {
						t.Errorf("bridge %s does not find message %s-%d", l.me, who, k)
					}
				}
			}
		}); err != nil {
			t.Fatal(err)
		}
	}
	if msgs != 2*n || series != n {
		t.Errorf("%d messages and %d series recorded, want %d and %d", msgs, series, 2*n, n)
	}
	// Linear: every commit has at most one parent, and there is one
	// commit per change that wrote something.
	if merges := fixtures.Git(t, bare, "rev-list", "--min-parents=2", queue.MailLedgerRef("mail")); merges != "" {
		t.Errorf("merge commits %s", merges)
	}
	if c := fixtures.Git(t, bare, "rev-list", "--count", queue.MailLedgerRef("mail")); c != fmt.Sprint(2*n) {
		t.Errorf("%s commits, want %d", c, 2*n)
	}
	// Nothing changed: nothing written.
	before := fixtures.Git(t, bare, "rev-parse", queue.MailLedgerRef("mail"))
	if err := b.update(ctx, "nothing", func(tx *ledgerTx) {
		tx.put(msgPath("id:a-0"), msgRecord{V: ledgerFormat, ID: "id:a-0", Outcome: msgIgnored, By: "a"})
	}); err != nil {
		t.Fatal(err)
	}
	if after := fixtures.Git(t, bare, "rev-parse", queue.MailLedgerRef("mail")); after != before {
		t.Errorf("an update that changed nothing wrote %s", after)
	}
}

// looseObjects counts the loose objects of a repository.
func looseObjects(t testing.TB, gitDir string) int {
	t.Helper()
	n := 0
	dirs, _ := filepath.Glob(filepath.Join(gitDir, "objects", "[0-9a-f][0-9a-f]"))
	for _, d := range dirs {
		files, _ := filepath.Glob(filepath.Join(d, "*"))
		n += len(files)
	}
	return n
}

// An update costs what it changes: a bridge whose copy of a large ledger
// is packed (as fetched, or after git gc) writes the changed record, the
// trees on its path and a commit, not every record again; and a bridge
// reading another's change reads the records that changed, not all.
func TestLedgerUpdateCostsTheChange(t *testing.T) {
	bare := fixtures.BareRepo(t, "remote.git")
	a, c := newLedger(t, bare, "a"), newLedger(t, bare, "c")
	ctx := context.Background()
	const n = 3000
	if err := a.update(ctx, "fill", func(tx *ledgerTx) {
		for i := 0; i < n; i++ {
			key := fmt.Sprintf("id:m-%d", i)
			tx.put(msgPath(key), msgRecord{V: ledgerFormat, ID: key, Outcome: msgIgnored, By: "a"})
			if i%10 == 0 {
				tx.put(seriesPath(fmt.Sprintf("%016x/v1", i)), seriesRecord{V: ledgerFormat, State: seriesRequested, By: "a"})
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.view(ctx, func(*ledgerTx) {}); err != nil { // c's copy: fetched, packed
		t.Fatal(err)
	}
	if c.blobsRead != n/10 {
		t.Errorf("the first reading read %d records, want the %d series", c.blobsRead, n/10)
	}
	before := looseObjects(t, c.remote.Cache)
	if err := c.update(ctx, "one", func(tx *ledgerTx) {
		tx.put(msgPath("id:new"), msgRecord{V: ledgerFormat, ID: "id:new", Outcome: msgIgnored, By: "c"})
	}); err != nil {
		t.Fatal(err)
	}
	// A blob, the root, messages/ and messages/<xx>/, a commit.
	if w := looseObjects(t, c.remote.Cache) - before; w > 5 {
		t.Errorf("one update of a ledger of %d records wrote %d objects, want at most 5", n, w)
	}
	// a reads c's change: one record, and only the series it lists.
	a.blobsRead = 0
	if err := a.update(ctx, "series", func(tx *ledgerTx) {
		if !tx.hasMessage("id:new") || !tx.hasMessage("id:m-7") || tx.hasMessage("id:none") {
			t.Error("a does not see the messages recorded")
		}
		tx.put(seriesPath("00000000000000ff/v2"), seriesRecord{V: ledgerFormat, State: seriesClaimed, By: "a"})
		tx.remove(seriesPath(fmt.Sprintf("%016x/v1", 10)))
	}); err != nil {
		t.Fatal(err)
	}
	if a.blobsRead != 0 {
		t.Errorf("a read %d records after a change of a message, want none (messages are read by path)", a.blobsRead)
	}
	c.blobsRead = 0
	if err := c.view(ctx, func(tx *ledgerTx) {
		s := tx.allSeries()
		if _, ok := s["00000000000000ff/v2"]; !ok || len(s) != n/10 {
			t.Errorf("c lists %d series (the new one: %v), want %d", len(s), ok, n/10)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if c.blobsRead != 1 {
		t.Errorf("c read %d records after another bridge changed one series and removed one, want 1", c.blobsRead)
	}
	if out, err := fixtures.RunGit(bare, nil, nil, "fsck", "--strict", "--no-progress", "--no-dangling"); err != nil {
		t.Errorf("git fsck: %v\n%s", err, out)
	}
}

// A bridge whose cache lost the value it read before (a gc pruned it)
// reads the ledger whole again instead of failing for ever.
func TestLedgerRereadsWhenItsOldValueIsGone(t *testing.T) {
	bare := fixtures.BareRepo(t, "remote.git")
	a, c := newLedger(t, bare, "a"), newLedger(t, bare, "c")
	ctx := context.Background()
	put := func(l *ledger, key string) {
		t.Helper()
		if err := l.update(ctx, "put", func(tx *ledgerTx) {
			tx.put(seriesPath(key), seriesRecord{V: ledgerFormat, State: seriesClaimed, By: l.me})
		}); err != nil {
			t.Fatal(err)
		}
	}
	put(a, "0000000000000001/v1")
	if err := c.view(ctx, func(*ledgerTx) {}); err != nil {
		t.Fatal(err)
	}
	c.tree = gitproto.NewHash("0123456789abcdef0123456789abcdef01234567") // not in its cache
	put(a, "0000000000000002/v1")
	if err := c.view(ctx, func(tx *ledgerTx) {
		if n := len(tx.allSeries()); n != 2 {
			t.Errorf("%d series after reading again, want 2", n)
		}
	}); err != nil {
		t.Fatal(err)
	}
}
