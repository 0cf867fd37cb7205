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

func newLedger(t *testing.T, bare, me string) *ledger {
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
	var files map[string][]byte
	if err := a.view(ctx, func(tx *ledgerTx) { files = tx.files }); err != nil {
		t.Fatal(err)
	}
	msgs, series := 0, 0
	for p := range files {
		switch {
		case strings.HasPrefix(p, "messages/"):
			msgs++
		case strings.HasPrefix(p, "series/"):
			series++
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
