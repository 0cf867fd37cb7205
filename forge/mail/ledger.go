package mail

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
//
// An update costs what it changes, not what the ledger holds: the new
// tree is the old one with the changed files' trees on their paths
// rewritten (gitproto.EditTree), and a bridge reading another's change
// reads only the files that differ (gitproto.DiffTrees). Only the
// records a bridge lists (series/ and replies/, which compaction keeps
// to the horizon and what is still owed) are held in memory; a message
// record is looked up by its path, which its Message-ID names.
type ledger struct {
	remote *gitproto.Remote
	ref    string
	me     string // this bridge, as recorded in By fields and commits
	now    func() time.Time

	mu    sync.Mutex
	read  bool              // head was read (or the ledger found missing)
	head  gitproto.Hash     // the commit last read or written; ZeroHash: no ledger yet
	tree  gitproto.Hash     // head's tree
	files map[string][]byte // the listed records (listed), by path, as of head

	blobsRead int // record files read by refresh, for tests
}

// listedDirs are the ledger's directories held in memory.
var listedDirs = []string{"series", "replies"}

// listed reports whether path is under one of listedDirs.
func listed(path string) bool {
	for _, d := range listedDirs {
		if strings.HasPrefix(path, d+"/") {
			return true
		}
	}
	return false
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

// waitRecord is waiting/<xx>/<rest>, the SHA-256 of "id:<Message-ID>":
// a patch or cover letter waiting for the rest of its series, first seen
// at At. The series' timeout runs from its messages' earliest At, so a
// restart does not start it again. Removed when the message is recorded.
type waitRecord struct {
	V  int       `json:"v"`
	ID string    `json:"message_id"`
	By string    `json:"by"`
	At time.Time `json:"first_seen"`
}

func waitPath(id string) string { return hashPath("waiting", "id:"+id) }

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

// refresh reads the remote's ledger when it moved: only the listed files
// that differ from the value read before. Called with mu held.
func (l *ledger) refresh(ctx context.Context) error {
	vals, err := l.remote.RefValues(ctx, []string{l.ref})
	if err != nil {
		return fmt.Errorf("read the ledger %s: %w", l.ref, err)
	}
	h := vals[l.ref]
	if h == l.head && l.read {
		return nil
	}
	if h == gitproto.ZeroHash {
		l.head, l.tree, l.files, l.read = h, gitproto.ZeroHash, map[string][]byte{}, true
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
	tree, err := repo.TreeHashOf(h)
	if err != nil {
		return fmt.Errorf("read the ledger %s: %w", l.ref, err)
	}
	oldTree, files := l.tree, l.files
	if !l.read || files == nil {
		oldTree, files = gitproto.ZeroHash, map[string][]byte{}
	}
	changed, err := l.diffListed(repo, oldTree, tree)
	if err != nil && oldTree != gitproto.ZeroHash {
		// The value read before is not in the cache any more (a gc
		// pruned it): read everything again.
		oldTree, files = gitproto.ZeroHash, map[string][]byte{}
		changed, err = l.diffListed(repo, oldTree, tree)
	}
	if err != nil {
		return fmt.Errorf("read the ledger %s at %s: %w", l.ref, h, err)
	}
	for p, data := range changed {
		if data == nil {
			delete(files, p)
		} else {
			files[p] = data
		}
	}
	l.head, l.tree, l.files, l.read = h, tree, files, true
	return nil
}

// diffListed reads the listed files that differ between trees from and
// to: their content in to, nil for those removed.
func (l *ledger) diffListed(repo *gitproto.Repo, from, to gitproto.Hash) (map[string][]byte, error) {
	changed := map[string][]byte{}
	for _, dir := range listedDirs {
		a, err := subtree(repo, from, dir)
		if err != nil {
			return nil, err
		}
		b, err := subtree(repo, to, dir)
		if err != nil {
			return nil, err
		}
		err = repo.DiffTrees(a, b, func(c gitproto.TreeChange) error {
			p := dir + "/" + c.Path
			if c.Hash == gitproto.ZeroHash {
				changed[p] = nil
				return nil
			}
			l.blobsRead++
			data, err := repo.ReadBlob(c.Hash, maxLedgerFile)
			if errors.Is(err, gitproto.ErrBlobTooLarge) {
				data, err = []byte{}, nil // no record of ours: kept, of no known format
			}
			changed[p] = data
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return changed, nil
}

// subtree is the id of directory dir of tree; ZeroHash when missing.
func subtree(repo *gitproto.Repo, tree gitproto.Hash, dir string) (gitproto.Hash, error) {
	if tree == gitproto.ZeroHash {
		return gitproto.ZeroHash, nil
	}
	h, isDir, err := repo.TreeEntryAt(tree, dir)
	if errors.Is(err, gitproto.ErrNotFound) || (err == nil && !isDir) {
		return gitproto.ZeroHash, nil
	}
	return h, err
}

// tx starts a reading of the ledger as of head. Called with mu held.
func (l *ledger) tx(readOnly bool) (*ledgerTx, error) {
	files := l.files
	if files == nil {
		files = map[string][]byte{}
	}
	tx := &ledgerTx{tree: l.tree, files: files, writes: map[string][]byte{}, readOnly: readOnly}
	if l.tree != gitproto.ZeroHash {
		repo, err := gitproto.Open(l.remote.Cache)
		if err != nil {
			return nil, err
		}
		tx.repo = repo
	}
	return tx, nil
}

// view calls fn with the remote's current ledger, read-only. An error
// reading a record fn looked up is returned (fn's findings are then not
// to be trusted).
func (l *ledger) view(ctx context.Context, fn func(tx *ledgerTx)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.refresh(ctx); err != nil {
		return err
	}
	tx, err := l.tx(true)
	if err != nil {
		return err
	}
	fn(tx)
	return tx.err
}

// cached calls fn with the ledger as last read, without looking at the
// remote; errors as view's.
func (l *ledger) cached(fn func(tx *ledgerTx)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	tx, err := l.tx(true)
	if err != nil {
		return err
	}
	fn(tx)
	return tx.err
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
		tx, err := l.tx(false)
		if err != nil {
			return err
		}
		fn(tx)
		if tx.err != nil {
			return fmt.Errorf("read the ledger: %w", tx.err)
		}
		if !tx.changed {
			return nil
		}
		h, tree, err := l.write(tx.writes, what)
		if err != nil {
			return fmt.Errorf("write the ledger: %w", err)
		}
		res, err := l.remote.Push(ctx, []gitproto.RefUpdate{{Name: l.ref, New: h, Old: l.head}}, false)
		if err != nil {
			return fmt.Errorf("push the ledger %s: %w", l.ref, err)
		}
		if res[0].OK {
			if l.files == nil {
				l.files = map[string][]byte{}
			}
			for p, b := range tx.writes {
				if !listed(p) {
					continue
				}
				if b == nil {
					delete(l.files, p)
				} else {
					l.files[p] = b
				}
			}
			l.head, l.tree = h, tree
			return nil
		}
		if !res[0].Stale || try >= 100 {
			return fmt.Errorf("push the ledger %s: refused: %s %s", l.ref, res[0].Message, res[0].Detail)
		}
	}
}

// write writes the changes (nil: remove) on l.head as a commit into the
// cache, rewriting only the trees on their paths.
func (l *ledger) write(changes map[string][]byte, what string) (commit, tree gitproto.Hash, err error) {
	repo, err := gitproto.Open(l.remote.Cache)
	if err != nil {
		return gitproto.ZeroHash, gitproto.ZeroHash, err
	}
	paths := make([]string, 0, len(changes))
	for p := range changes {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	edits := make([]gitproto.TreeEdit, 0, len(paths))
	for _, p := range paths {
		e := gitproto.TreeEdit{Path: p}
		if b := changes[p]; b != nil {
			if e.Hash, err = repo.WriteBlob(b); err != nil {
				return gitproto.ZeroHash, gitproto.ZeroHash, err
			}
		}
		edits = append(edits, e)
	}
	if tree, err = repo.EditTree(l.tree, edits); err != nil {
		return gitproto.ZeroHash, gitproto.ZeroHash, err
	}
	if tree == gitproto.ZeroHash { // everything removed: the empty tree
		if tree, err = repo.WriteTree(nil); err != nil {
			return gitproto.ZeroHash, gitproto.ZeroHash, err
		}
	}
	spec := gitproto.CommitSpec{Tree: tree, Author: gitproto.NewSignature("refci mail bridge", "refci@localhost", l.now()),
		Message: "refci mail: " + strings.Join(strings.Fields(what), " ") + "\n\nRefci-Bridge: " + l.me + "\n"}
	if l.head != gitproto.ZeroHash {
		spec.Parents = []gitproto.Hash{l.head}
	}
	commit, err = repo.WriteCommit(spec, nil)
	return commit, tree, err
}

// ledgerTx is one reading (and, in update, one change) of the ledger.
// Listed records come from memory, others are read by path from tree;
// writes holds the change (nil: a file removed).
type ledgerTx struct {
	repo     *gitproto.Repo
	tree     gitproto.Hash
	files    map[string][]byte // the listed records as read: never changed
	writes   map[string][]byte
	changed  bool
	readOnly bool
	err      error // the first lookup that failed
}

// raw returns the bytes at path, as changed in tx.
func (tx *ledgerTx) raw(path string) ([]byte, bool) {
	if b, ok := tx.writes[path]; ok {
		return b, b != nil
	}
	if listed(path) {
		b, ok := tx.files[path]
		return b, ok
	}
	if tx.tree == gitproto.ZeroHash || tx.repo == nil {
		return nil, false
	}
	h, isDir, err := tx.repo.TreeEntryAt(tx.tree, path)
	if errors.Is(err, gitproto.ErrNotFound) {
		return nil, false
	}
	if err == nil && isDir {
		return nil, false
	}
	var b []byte
	if err == nil {
		b, err = tx.repo.ReadBlob(h, maxLedgerFile)
	}
	if err != nil {
		if tx.err == nil {
			tx.err = fmt.Errorf("%s: %w", path, err)
		}
		return nil, false
	}
	return b, true
}

func (tx *ledgerTx) get(path string, v any) bool {
	b, ok := tx.raw(path)
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
func (tx *ledgerTx) has(path string) bool { _, ok := tx.raw(path); return ok }

func (tx *ledgerTx) put(path string, v any) {
	if tx.readOnly {
		panic("ledger: put in a read-only view")
	}
	b, err := json.MarshalIndent(v, "", "\t")
	if err != nil {
		panic(err) // records are plain structs
	}
	b = append(b, '\n')
	if old, ok := tx.raw(path); ok && string(old) == string(b) {
		return
	}
	tx.writes[path] = b
	tx.changed = true
}

// remove removes the file at path, if any.
func (tx *ledgerTx) remove(path string) {
	if tx.readOnly {
		panic("ledger: remove in a read-only view")
	}
	if _, ok := tx.raw(path); !ok {
		return
	}
	tx.writes[path] = nil
	tx.changed = true
}

// drop removes the file at path, known to be there (walk found it).
func (tx *ledgerTx) drop(path string) {
	if tx.readOnly {
		panic("ledger: drop in a read-only view")
	}
	tx.writes[path] = nil
	tx.changed = true
}

// walk calls fn with every file under dir+"/" as read (changes made in
// tx not seen), in path order: a full reading of dir, for compaction. A
// failure to read is kept in tx.err.
func (tx *ledgerTx) walk(dir string, fn func(path string, data []byte)) {
	if tx.tree == gitproto.ZeroHash || tx.repo == nil || tx.err != nil {
		return
	}
	sub, err := subtree(tx.repo, tx.tree, dir)
	if err == nil && sub != gitproto.ZeroHash {
		err = tx.repo.DiffTrees(gitproto.ZeroHash, sub, func(c gitproto.TreeChange) error {
			data, err := tx.repo.ReadBlob(c.Hash, maxLedgerFile)
			if errors.Is(err, gitproto.ErrBlobTooLarge) {
				return nil // no record of ours: left as it is
			}
			if err != nil {
				return err
			}
			fn(dir+"/"+c.Path, data)
			return nil
		})
	}
	if err != nil {
		tx.err = fmt.Errorf("%s: %w", dir, err)
	}
}

// listedPaths lists the paths of the listed records under dir+"/", as
// changed in tx, sorted.
func (tx *ledgerTx) listedPaths(dir string) []string {
	var out []string
	for p := range tx.files {
		if strings.HasPrefix(p, dir+"/") {
			if b, ok := tx.writes[p]; !ok || b != nil {
				out = append(out, p)
			}
		}
	}
	for p, b := range tx.writes {
		if _, ok := tx.files[p]; !ok && b != nil && strings.HasPrefix(p, dir+"/") {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// putMessage records a message looked at, which no longer waits.
func (tx *ledgerTx) putMessage(key string, r msgRecord) {
	tx.put(msgPath(key), r)
	if id, ok := strings.CutPrefix(key, "id:"); ok {
		tx.remove(waitPath(id))
	}
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
	for _, p := range tx.listedPaths("series") {
		key := strings.TrimPrefix(p, "series/")
		if r, ok := tx.series(key); ok {
			out[key] = r
		}
	}
	return out
}

// pendingReplies lists the replies still owed.
func (tx *ledgerTx) pendingReplies() []replyRecord {
	var out []replyRecord
	for _, p := range tx.listedPaths("replies") {
		var r replyRecord
		if tx.get(p, &r) && r.State == replyPending {
			out = append(out, r)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}
