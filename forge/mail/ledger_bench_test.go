package mail

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/queue"
)

// ledgerBenchEntries is the size of the large ledger of the benchmarks:
// REFCI_LEDGER_ENTRIES, default 100,000 (a list gathering 50 patches a
// day for five and a half years, or ten years of 27 a day).
func ledgerBenchEntries() int {
	if n, err := strconv.Atoi(os.Getenv("REFCI_LEDGER_ENTRIES")); err == nil && n >= 0 {
		return n
	}
	return 100_000
}

// objectBytes is the size on disk of a repository's objects.
func objectBytes(tb testing.TB, gitDir string) int64 {
	var n int64
	err := filepath.WalkDir(filepath.Join(gitDir, "objects"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err == nil {
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// benchLedger makes a remote whose ledger holds n message records, as
// one bridge wrote them (packed, as git gc leaves a long-lived ledger),
// and two bridges' ledgers on it.
func benchLedger(b *testing.B, n int) (bare string, a, c *ledger) {
	bare = fixtures.BareRepo(b, "remote.git")
	a, c = newLedger(b, bare, "a"), newLedger(b, bare, "c")
	ctx := context.Background()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if n > 0 {
		if err := a.update(ctx, "fill", func(tx *ledgerTx) {
			for i := 0; i < n; i++ {
				id := fmt.Sprintf("<%d-patch-%d@mail.example.org>", i, i*7919)
				tx.put(msgPath(msgKey(id, nil)), msgRecord{V: ledgerFormat, ID: id, Outcome: msgSeries,
					Series: fmt.Sprintf("%016x/v1", i/5), By: "a", At: at.Add(time.Duration(i) * time.Minute)})
			}
		}); err != nil {
			b.Fatal(err)
		}
		fixtures.Git(b, bare, "repack", "-adq")
		fixtures.Git(b, a.remote.Cache, "repack", "-adq")
	}
	// c reads it once, as a bridge running for a while has.
	if err := c.view(ctx, func(*ledgerTx) {}); err != nil {
		b.Fatal(err)
	}
	return bare, a, c
}

// BenchmarkLedgerUpdate measures one change of the ledger (a message
// recorded, as the bridge records an ignored mail) on an empty ledger and
// on one of ledgerBenchEntries entries: the time of the update (write,
// compare-and-swap push) and the bytes it adds to the bridge's cache and
// to the remote. "reread" is the other bridge reading the ledger after
// that change.
func BenchmarkLedgerUpdate(b *testing.B) {
	for _, n := range []int{0, ledgerBenchEntries()} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			bare, a, c := benchLedger(b, n)
			ctx := context.Background()
			var written int64
			var reread time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				before := objectBytes(b, a.remote.Cache) + objectBytes(b, bare)
				b.StartTimer()
				id := fmt.Sprintf("<bench-%d@example.org>", i)
				if err := a.update(ctx, "bench", func(tx *ledgerTx) {
					tx.put(msgPath(msgKey(id, nil)), msgRecord{V: ledgerFormat, ID: id, Outcome: msgIgnored, Why: "a reply", By: "a", At: time.Now().UTC()})
				}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				written += objectBytes(b, a.remote.Cache) + objectBytes(b, bare) - before
				start := time.Now()
				held := false
				if err := c.view(ctx, func(tx *ledgerTx) { held = tx.hasMessage(msgKey(id, nil)) }); err != nil {
					b.Fatal(err)
				}
				reread += time.Since(start)
				if !held {
					b.Fatalf("the other bridge does not see %s", id)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(written)/float64(b.N), "bytes-written/op")
			b.ReportMetric(float64(reread.Microseconds())/1000/float64(b.N), "reread-ms/op")
			_ = queue.MailLedgerRef
		})
	}
}

// BenchmarkLedgerCompaction measures a compaction (which a bridge runs
// at start and once a day) of a ledger of ledgerBenchEntries message
// records: "keep" drops none (all within the horizon), "drop" drops a
// tenth, the oldest.
func BenchmarkLedgerCompaction(b *testing.B) {
	n := ledgerBenchEntries()
	for _, name := range []string{"keep", "drop"} {
		b.Run(fmt.Sprintf("%s/entries=%d", name, n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				bare, _, _ := benchLedger(b, n)
				// The records are a minute apart from 2026-01-01.
				now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(DefaultRetention + dateSkew)
				if name == "drop" {
					now = now.Add(time.Duration(n/10) * time.Minute)
				}
				br, err := New(Config{Mailbox: newStore().box(), Sender: &recSender{}, Remote: bare, Dir: b.TempDir(), Bridge: "bench",
					From: "ci@example.org", Now: func() time.Time { return now }})
				if err != nil {
					b.Fatal(err)
				}
				if err := br.ledger.view(context.Background(), func(*ledgerTx) {}); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if err := br.compact(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
