package mail

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"refci.dev/refci/gitproto"
)

// The ledger is the bridge's memory, kept on the remote in
// queue.MailLedgerRef(name): a chain of commits whose tree holds one
// small JSON file per message handled, per series claimed and per reply
// owed or sent (PROTOCOL.md, "The mail bridge"). Every change is a new
// commit on the last one seen, pushed with a compare-and-swap; a bridge
// that loses the race fetches the new value and applies its change again
// on top of it, so what several bridges write adds up (the union) and a
// decision ("this series is mine", "this reply is owed") is taken once.
type ledger struct {
	remote *gitproto.Remote
	ref    string
	me     string // this bridge, as recorded in By fields and commits
	now    func() time.Time

	mu    sync.Mutex
	head  gitproto.Hash
	files map[string][]byte
}

// ledgerFormat is the "v" of every record; a record of another format is
// kept as it is and otherwise ignored.
const ledgerFormat = 1

// maxLedgerFile caps what is read of one ledger file.
const maxLedgerFile = 1 << 20

// lease is how long a claimed series or an owed reply belongs to the
// bridge that took it: past it (the bridge died), another takes it over.
// A bridge restarted under the same name takes its own over at once.
const lease = 15 * time.Minute

// Record states.
const (
	msgSeries  = "series"  // part of a series, recorded when the series was handled
	msgIgnored = "ignored" // looked at and left: see Why

	seriesClaimed    = "claimed"     // a bridge is applying and requesting it
	seriesRequested  = "requested"   // applied and asked for: a run follows
	seriesNotApplied = "not-applied" // it did not apply (or no base): replied
	seriesIncomplete = "incomplete"  // parts missing past the timeout: replied

	replyPending = "pending" // owed: By sends it until it goes
	replySent    = "sent"
	replyFailed  = "failed" // refused for good by the mail server
)

// msgRecord is messages/<xx>/<rest>: one message looked at.
type msgRecord struct {
	V       int       `json:"v"`
	ID      string    `json:"message_id,omitempty"` // informational; the path is its hash
	Outcome string    `json:"outcome"`
	Why     string    `json:"why,omitempty"`
	Series  string    `json:"series,omitempty"` // <id>/v<N>
	By      string    `json:"by"`
	At      time.Time `json:"at"`
}

// seriesRecord is series/<id>/v<N>: one version of a series, with what a
// reply to its thread needs, so a restarted bridge can reply without the
// mail.
type seriesRecord struct {
	V       int       `json:"v"`
	State   string    `json:"state"`
	By      string    `json:"by"`
	Claimed time.Time `json:"claimed"`
	Updated time.Time `json:"updated"`

	thread

	Messages      []string `json:"messages"` // Message-IDs of its cover letter and patches
	Head          string   `json:"head,omitempty"`
	Request       string   `json:"request,omitempty"`
	RequestObject string   `json:"request_object,omitempty"`
	SupersededBy  int      `json:"superseded_by,omitempty"`
	Reply         string   `json:"reply,omitempty"` // the Message-ID of the reply owed or sent; "-" when none is due
}

// replyRecord is replies/<xx>/<rest>: one reply, pending until sent.
type replyRecord struct {
	V         int       `json:"v"`
	MessageID string    `json:"message_id"`
	State     string    `json:"state"`
	Series    string    `json:"series"`
	Kind      string    `json:"x_refci_state"`
	Run       string    `json:"run,omitempty"`
	From      string    `json:"from"`
	Rcpt      []string  `json:"rcpt"`
	Raw       string    `json:"raw"` // the whole message: a retry sends the same bytes
	By        string    `json:"by"`
	Created   time.Time `json:"created"`
	Updated   time.Time `json:"updated"`
	Attempts  int       `json:"attempts"`
	Error     string    `json:"error,omitempty"`
}

// hashPath is dir/<2 hex>/<62 hex> of sha256(key): never the key's text.
func hashPath(dir, key string) string {
	sum := sha256.Sum256([]byte(key))
	h := hex.EncodeToString(sum[:])
	return dir + "/" + h[:2] + "/" + h[2:]
}

// msgKey is what a message is recorded under: its Message-ID, or a hash
// of its bytes when it has none.
func msgKey(id string, raw []byte) string {
	if id != "" {
		return "id:" + id
	}
	sum := sha256.Sum256(raw)
	return "raw:" + hex.EncodeToString(sum[:])
}

func msgPath(key string) string { return hashPath("messages", key) }

func replyPath(msgID string) string { return hashPath("replies", msgID) }

// seriesKey is <id>/v<N>; id is Group's 16 hex digits.
func seriesKey(id string, version int) string { return id + "/v" + strconv.Itoa(version) }

func seriesPath(key string) string { return "series/" + key }

// refresh reads the remote's ledger when it moved. Called with mu held.
func (l *ledger) refresh(ctx context.Context) error {
	vals, err := l.remote.RefValues(ctx, []string{l.ref})
	if err != nil {
		return fmt.Errorf("read the ledger %s: %w", l.ref, err)
	}
	h := vals[l.ref]
	if h == l.head && l.files != nil {
		return nil
	}
	if h == gitproto.ZeroHash {
		l.head, l.files = h, map[string][]byte{}
		return nil
	}
	if err := l.remote.Fetch(ctx, "+"+l.ref+":"+l.ref); err != nil {
		return fmt.Errorf("fetch the ledger %s: %w", l.ref, err)
	}
	repo, err := gitproto.Open(l.remote.Cache)
	if err != nil {
		return err
	}
	if h, err = repo.RefHash(l.ref); err != nil {
		return fmt.Errorf("read the ledger %s: %w", l.ref, err)
	}
	t, err := repo.TreeOf(h)
	if err != nil {
		return fmt.Errorf("read the ledger %s: %w", l.ref, err)
	}
	files := map[string][]byte{}
	err = t.Files("", func(f *gitproto.File) error {
		if !f.Regular || f.Size > maxLedgerFile {
			return nil
		}
		rc, err := f.Open()
		if err != nil {
			return err
		}
		defer rc.Close()
		b, err := io.ReadAll(io.LimitReader(rc, maxLedgerFile))
		if err != nil {
			return err
		}
		files[f.Name] = b
		return nil
	})
	if err != nil {
		return fmt.Errorf("read the ledger %s at %s: %w", l.ref, h, err)
	}
	l.head, l.files = h, files
	return nil
}

// view calls fn with the remote's current ledger, read-only.
func (l *ledger) view(ctx context.Context, fn func(tx *ledgerTx)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.refresh(ctx); err != nil {
		return err
	}
	fn(&ledgerTx{files: l.files, readOnly: true})
	return nil
}

// cached calls fn with the ledger as last read, without looking at the
// remote.
func (l *ledger) cached(fn func(tx *ledgerTx)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	files := l.files
	if files == nil {
		files = map[string][]byte{}
	}
	fn(&ledgerTx{files: files, readOnly: true})
}

// update applies fn to the remote's current ledger and pushes the result
// with a compare-and-swap; on a lost race it reads the new value and
// applies fn again, so fn must decide from tx alone (and reset whatever
// it reports to its caller on each call). Nothing is written when fn
// changes nothing. what names the change in the commit message.
func (l *ledger) update(ctx context.Context, what string, fn func(tx *ledgerTx)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for try := 0; ; try++ {
		if err := l.refresh(ctx); err != nil {
			return err
		}
		tx := &ledgerTx{files: maps.Clone(l.files)}
		fn(tx)
		if !tx.changed {
			return nil
		}
		h, err := l.write(tx.files, what)
		if err != nil {
			return fmt.Errorf("write the ledger: %w", err)
		}
		res, err := l.remote.Push(ctx, []gitproto.RefUpdate{{Name: l.ref, New: h, Old: l.head}}, false)
		if err != nil {
			return fmt.Errorf("push the ledger %s: %w", l.ref, err)
		}
		if res[0].OK {
			l.head, l.files = h, tx.files
			return nil
		}
		if !res[0].Stale || try >= 100 {
			return fmt.Errorf("push the ledger %s: refused: %s %s", l.ref, res[0].Message, res[0].Detail)
		}
	}
}

// write writes files as a commit on l.head into the cache.
func (l *ledger) write(files map[string][]byte, what string) (gitproto.Hash, error) {
	repo, err := gitproto.Open(l.remote.Cache)
	if err != nil {
		return gitproto.ZeroHash, err
	}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	tree := make([]gitproto.TreeFile, 0, len(paths))
	for _, p := range paths {
		h, err := repo.WriteBlob(files[p])
		if err != nil {
			return gitproto.ZeroHash, err
		}
		tree = append(tree, gitproto.TreeFile{Path: p, Hash: h})
	}
	th, err := repo.WriteTree(tree)
	if err != nil {
		return gitproto.ZeroHash, err
	}
	spec := gitproto.CommitSpec{Tree: th, Author: gitproto.NewSignature("refci mail bridge", "refci@localhost", l.now()),
		Message: "refci mail: " + strings.Join(strings.Fields(what), " ") + "\n\nRefci-Bridge: " + l.me + "\n"}
	if l.head != gitproto.ZeroHash {
		spec.Parents = []gitproto.Hash{l.head}
	}
	return repo.WriteCommit(spec, nil)
}

// ledgerTx is one reading (and, in update, one change) of the ledger.
type ledgerTx struct {
	files    map[string][]byte
	changed  bool
	readOnly bool
}

func (tx *ledgerTx) get(path string, v any) bool {
	b, ok := tx.files[path]
	if !ok {
		return false
	}
	var head struct {
		V int `json:"v"`
	}
	if json.Unmarshal(b, &head) != nil || head.V != ledgerFormat {
		return false
	}
	return json.Unmarshal(b, v) == nil
}

// has reports whether path holds anything, of any format.
func (tx *ledgerTx) has(path string) bool { _, ok := tx.files[path]; return ok }

func (tx *ledgerTx) put(path string, v any) {
	if tx.readOnly {
		panic("ledger: put in a read-only view")
	}
	b, err := json.MarshalIndent(v, "", "\t")
	if err != nil {
		panic(err) // records are plain structs
	}
	b = append(b, '\n')
	if old, ok := tx.files[path]; ok && string(old) == string(b) {
		return
	}
	tx.files[path] = b
	tx.changed = true
}

func (tx *ledgerTx) message(key string) (msgRecord, bool) {
	var r msgRecord
	ok := tx.get(msgPath(key), &r)
	return r, ok
}

// hasMessage reports whether the message was looked at already.
func (tx *ledgerTx) hasMessage(key string) bool { return tx.has(msgPath(key)) }

func (tx *ledgerTx) series(key string) (seriesRecord, bool) {
	var r seriesRecord
	ok := tx.get(seriesPath(key), &r)
	return r, ok
}

func (tx *ledgerTx) reply(msgID string) (replyRecord, bool) {
	var r replyRecord
	ok := tx.get(replyPath(msgID), &r)
	return r, ok
}

// allSeries lists the series records, by key.
func (tx *ledgerTx) allSeries() map[string]seriesRecord {
	out := map[string]seriesRecord{}
	for p := range tx.files {
		if key, ok := strings.CutPrefix(p, "series/"); ok {
			if r, ok := tx.series(key); ok {
				out[key] = r
			}
		}
	}
	return out
}

// pendingReplies lists the replies still owed.
func (tx *ledgerTx) pendingReplies() []replyRecord {
	var out []replyRecord
	for p := range tx.files {
		if !strings.HasPrefix(p, "replies/") {
			continue
		}
		var r replyRecord
		if tx.get(p, &r) && r.State == replyPending {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}
