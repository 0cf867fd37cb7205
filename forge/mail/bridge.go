package mail

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	netmail "net/mail"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
	"refci.dev/refci/requests"
	"refci.dev/refci/results"
)

// Config configures a Bridge. Mailbox, Sender, Remote, Dir and From are
// required; the other zero values are the defaults.
type Config struct {
	// Mailbox is where patch mail arrives; the bridge only reads it.
	Mailbox Mailbox
	// Sender delivers the replies.
	Sender Sender
	// Remote is where requests are pushed, results read and the ledger
	// kept: a URL or a path, as git takes it.
	Remote string
	// Env is extra environment for git talking to Remote (e.g.
	// GIT_SSH_COMMAND); may be nil.
	Env []string
	// Dir is the bridge's own directory: its cache of the remote and
	// its scratch clones (made if missing). One bridge per Dir.
	Dir string
	// Name names the ledger, refs/ci/mail/ledger/<Name> (default
	// "mail"): bridges sharing one mailbox and remote share a Name.
	Name string
	// Bridge is this bridge in the ledger (default: the host name and
	// Dir), so a restarted bridge finds its own unfinished work; two
	// bridges running at once must differ.
	Bridge string
	// From is the replies' sender, e.g. "refci <ci@example.org>". Mail
	// from this address is never taken in (a loop).
	From string
	// BaseBranch is the branch a series without a base-commit: trailer
	// is applied on (default "main").
	BaseBranch string
	// NoCc sends replies to the author only; by default the root's other
	// To and Cc addresses (the list), ours left out, are in Cc.
	NoCc bool
	// FetchURL is the remote's URL as replies tell readers to fetch it
	// (default Remote, credentials removed).
	FetchURL string
	// RunsURL is where run pages are served (refci serve --http, or a
	// static copy of refci view's site), e.g.
	// "https://ci.example.org/app.git"; "" links none.
	RunsURL string
	// SeriesTimeout is how long an incomplete series is waited for
	// before a reply says what is missing (default 30 minutes).
	SeriesTimeout time.Duration
	// MaxMessage is the largest message fetched (default
	// MaxMessageSize).
	MaxMessage int64
	// MailWait is the longest wait for new mail between passes (default
	// one minute); RunsPoll how often the remote's runs are looked at
	// (default 30 s; a remote on this machine is watched as it changes).
	MailWait, RunsPoll time.Duration
	// MinBackoff and MaxBackoff bound the wait before a reply that could
	// not be sent is tried again (defaults 5 s and 5 minutes); it
	// doubles per failure in a row.
	MinBackoff, MaxBackoff time.Duration
	// Asked, when not nil, is called after each request the bridge
	// pushes to Remote: a worker beside it that serves Remote polls at
	// once instead of at its next poll. It is called from the bridge's
	// goroutine and must not block.
	Asked func()
	// Signer, when set, signs every reply: a PGP/MIME multipart/signed
	// message (RFC 3156) with a detached signature, which gpg and mail
	// clients verify against the worker's public key. Use the worker's
	// key (*secrets.Identity); nil sends replies unsigned.
	Signer Signer
	// Retention is how long the ledger keeps what it recorded (default
	// 180 days; at least 2 days). Once a day a compaction drops the
	// records of messages, of waiting patches, of concluded series and
	// of replies sent or refused that were last written longer ago than
	// Retention and a day (by the ledger's own times, never a mail's
	// Date). So that mail whose record was dropped is never tested
	// again, mail dated more than Retention ago, more than a day ahead,
	// or not dated, is not tested: it is logged and recorded as ignored.
	// Negative keeps every record and tests mail of any date.
	Retention time.Duration
	// Logger gets the bridge's log lines; nil discards them.
	Logger *slog.Logger
	// Now is the clock of series timeouts and records (default
	// time.Now).
	Now func() time.Time
}

// DefaultRetention is how long the ledger keeps its records by default.
const DefaultRetention = 180 * 24 * time.Hour

// dateSkew is how far ahead of the bridge's clock a mail's Date may be:
// a record is dropped Retention+dateSkew after it was written, when the
// mail it stands for is dated more than Retention ago.
const dateSkew = 24 * time.Hour

// compactEvery is how often a bridge compacts the ledger.
const compactEvery = 24 * time.Hour

// Bridge tests mailed patch series: it reads mail from a Mailbox, groups
// patches into series, applies each complete series on its base in a
// scratch clone, asks for a run of it (the request patches/<id>/v<N>,
// untrusted: its tag is never signed), and replies once in the thread
// with the result; a series that does not apply, or stays incomplete
// past SeriesTimeout, gets a reply saying so. What it handled, claimed
// and owes is kept in its ledger on the remote, so a restart, a second
// bridge or a re-delivered message never tests or replies twice, and a
// reply that could not be sent is sent later.
//
// Lifecycle: New checks the configuration and opens the cache; Run works
// until its context ends. A Bridge runs once.
type Bridge struct {
	cfg     Config
	log     *slog.Logger
	from    *netmail.Address
	remote  *gitproto.Remote
	ledger  *ledger
	poke    chan struct{} // the outbox has a reply to send
	changes *results.Changes

	// Used by the mail goroutine only:
	pending   map[string]*Message  // patches and cover letters waiting for their series
	firstSeen map[string]time.Time // by Message-ID
	waiting   []waitRecord         // first seen, not yet recorded in the ledger
	retry     []Envelope           // fetches that failed, tried again next pass

	told   sync.Map     // problems logged and not solved yet
	passes atomic.Int64 // mail passes done, for tests
	looks  atomic.Int64 // looks at the runs done, for tests
}

// New checks cfg and opens (or makes) the bridge's cache of the remote.
func New(cfg Config) (*Bridge, error) {
	if cfg.Mailbox == nil || cfg.Sender == nil {
		return nil, errors.New("mail bridge: no mailbox or no sender")
	}
	if cfg.Remote == "" || cfg.Dir == "" {
		return nil, errors.New("mail bridge: no remote or no directory")
	}
	from, err := netmail.ParseAddress(cfg.From)
	if err != nil {
		return nil, fmt.Errorf("mail bridge: from %q is not a mail address: %w", cfg.From, err)
	}
	from.Address = strings.ToLower(from.Address)
	if cfg.Name == "" {
		cfg.Name = "mail"
	}
	if err := queue.ValidateEnvName(cfg.Name); err != nil {
		return nil, fmt.Errorf("mail bridge: name: %w", err)
	}
	abs, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	cfg.Dir = abs
	if cfg.Bridge == "" {
		host, _ := os.Hostname()
		cfg.Bridge = host + ":" + abs
	}
	if cfg.BaseBranch == "" {
		cfg.BaseBranch = "main"
	}
	if cfg.FetchURL == "" {
		cfg.FetchURL = gitproto.RedactURL(cfg.Remote)
	}
	cfg.RunsURL = strings.TrimRight(cfg.RunsURL, "/")
	if cfg.SeriesTimeout <= 0 {
		cfg.SeriesTimeout = 30 * time.Minute
	}
	if cfg.MaxMessage <= 0 || cfg.MaxMessage > MaxMessageSize {
		cfg.MaxMessage = MaxMessageSize
	}
	if cfg.MailWait <= 0 {
		cfg.MailWait = time.Minute
	}
	if cfg.RunsPoll <= 0 {
		cfg.RunsPoll = 30 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 5 * time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(5*time.Minute, cfg.MinBackoff)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.Retention > 0 && cfg.Retention < 48*time.Hour {
		return nil, fmt.Errorf("mail bridge: retention %s is too short: keep the ledger's records at least 2 days (or a negative retention: forever)", cfg.Retention)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Join(abs, "scratch"), 0o700); err != nil {
		return nil, fmt.Errorf("mail bridge: %w", err)
	}
	remote, err := gitproto.OpenRemote(cfg.Remote, filepath.Join(abs, "cache.git"), cfg.Env)
	if err != nil {
		return nil, fmt.Errorf("mail bridge: %w", err)
	}
	b := &Bridge{cfg: cfg, log: log, from: from, remote: remote, poke: make(chan struct{}, 1),
		pending: map[string]*Message{}, firstSeen: map[string]time.Time{}}
	b.changes = b.runsSource().WatchRuns(cfg.RunsPoll)
	b.ledger = &ledger{remote: remote, ref: queue.MailLedgerRef(cfg.Name), me: cfg.Bridge, now: func() time.Time { return cfg.Now().UTC() }}
	return b, nil
}

// Wake has the bridge look at the remote's runs at once: a worker beside
// it that has just pushed a result says so. Safe for concurrent use,
// never blocks.
func (b *Bridge) Wake() { b.changes.Wake() }

// Run reads mail, asks for runs, watches their results and sends replies
// until ctx ends, then returns nil. Failures (the mailbox, the remote,
// the mail server) are logged once each and tried again; bad mail is
// logged and recorded, never stops it. Run does not close the Mailbox.
func (b *Bridge) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); b.watchRuns(ctx) }()
	go func() { defer wg.Done(); b.outbox(ctx) }()
	defer wg.Wait()
	var compacted time.Time
	for ctx.Err() == nil {
		if now := b.cfg.Now(); b.cfg.Retention > 0 && (compacted.IsZero() || now.Sub(compacted) >= compactEvery) {
			if err := b.compact(ctx); err != nil {
				if ctx.Err() == nil {
					b.problem("compact", "mail bridge: cannot compact the ledger; trying again at the next pass", err)
				}
			} else {
				b.solved("compact", "mail bridge: the ledger was compacted after all")
				compacted = now
			}
		}
		b.pass(ctx)
		b.passes.Add(1)
		if err := b.cfg.Mailbox.Wait(ctx, b.cfg.MailWait); err != nil && ctx.Err() == nil {
			b.problem("wait", "mail bridge: waiting for mail failed; looking again in a minute", err)
			t := time.NewTimer(b.cfg.MailWait)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}
	return nil
}

// problem logs a problem once until solved(key).
func (b *Bridge) problem(key, msg string, err error, args ...any) {
	if _, told := b.told.LoadOrStore(key, true); !told {
		b.log.Warn(msg, append([]any{"err", err}, args...)...)
	}
}

func (b *Bridge) solved(key, msg string) {
	if _, told := b.told.LoadAndDelete(key); told {
		b.log.Info(msg)
	}
}

// pass reads the new mail and handles every series it completes.
func (b *Bridge) pass(ctx context.Context) {
	envs, err := b.cfg.Mailbox.New(ctx)
	if err != nil {
		if ctx.Err() == nil {
			b.problem("mailbox", "mail bridge: cannot read the mailbox; trying again", err)
		}
		return
	}
	b.solved("mailbox", "mail bridge: the mailbox answers again")
	envs = append(b.retry, envs...)
	b.retry = nil
	var known map[string]bool
	if err := b.ledger.view(ctx, func(tx *ledgerTx) {
		known = map[string]bool{}
		for _, e := range envs {
			if e.MessageID != "" && tx.hasMessage(msgKey(e.MessageID, nil)) {
				known[e.MessageID] = true
			}
		}
	}); err != nil {
		b.problem("ledger", "mail bridge: cannot read the ledger on the remote; trying again", err)
		b.retry = envs
		return
	}
	b.solved("ledger", "mail bridge: the remote answers again")
	var ignored []ignore
	var noPatch []*Message
	for _, e := range envs {
		if ctx.Err() != nil {
			b.retry = append(b.retry, e)
			continue
		}
		if known[e.MessageID] || (e.MessageID != "" && b.pending[e.MessageID] != nil) {
			continue
		}
		ig, m, np := b.take(ctx, e)
		if ig != nil {
			ignored = append(ignored, *ig)
		}
		if np {
			noPatch = append(noPatch, m)
		}
	}
	if len(ignored) > 0 || len(b.waiting) > 0 {
		if err := b.recordIgnored(ctx, ignored); err != nil {
			b.problem("ledger", "mail bridge: cannot record ignored mail on the remote; it is looked at again", err)
		}
	}
	for _, m := range noPatch {
		b.replyNoPatch(ctx, m)
	}
	b.handleSeries(ctx)
}

// ignore is a message looked at and left.
type ignore struct {
	key, id, why string
}

// take fetches and reads one message: a patch or cover letter waits in
// pending for its series; anything else is returned to be recorded as
// ignored (np: a [PATCH] mail without a patch, which gets a reply).
func (b *Bridge) take(ctx context.Context, e Envelope) (ig *ignore, m *Message, np bool) {
	raw, err := b.cfg.Mailbox.Fetch(ctx, e, b.cfg.MaxMessage)
	if errors.Is(err, ErrTooLarge) {
		key := msgKey(e.MessageID, []byte("envelope:"+e.Key))
		b.log.Warn("mail bridge: ignoring a message over the size cap", "message_id", e.MessageID, "size", e.Size, "max", b.cfg.MaxMessage)
		return &ignore{key: key, id: e.MessageID, why: fmt.Sprintf("larger than %d bytes", b.cfg.MaxMessage)}, nil, false
	}
	if err != nil {
		if ctx.Err() == nil {
			b.problem("fetch", "mail bridge: cannot fetch a message; trying again", err, "message_id", e.MessageID)
		}
		b.retry = append(b.retry, e)
		return nil, nil, false
	}
	b.solved("fetch", "mail bridge: fetching mail works again")
	held := false
	if err := b.ledger.cached(func(tx *ledgerTx) { held = tx.hasMessage(msgKey(e.MessageID, raw)) }); err != nil {
		b.problem("ledger", "mail bridge: cannot read the ledger's copy in the cache; trying again", err)
		b.retry = append(b.retry, e)
		return nil, nil, false
	}
	if held { // a message without a Message-ID, recorded by its bytes
		return nil, nil, false
	}
	m, err = ParseMessage(bytes.NewReader(raw))
	if err != nil {
		key := msgKey(e.MessageID, raw)
		b.log.Warn("mail bridge: ignoring a message that cannot be read", "message_id", e.MessageID, "err", err)
		return &ignore{key: key, id: e.MessageID, why: "unreadable: " + err.Error()}, nil, false
	}
	if m.ID != "" && m.ID != e.MessageID {
		// The mailbox did not read its Message-ID as we do.
		if err := b.ledger.cached(func(tx *ledgerTx) { held = tx.hasMessage(msgKey(m.ID, nil)) }); err != nil {
			b.problem("ledger", "mail bridge: cannot read the ledger's copy in the cache; trying again", err)
			b.retry = append(b.retry, e)
			return nil, nil, false
		}
		if held || b.pending[m.ID] != nil {
			return nil, nil, false
		}
	}
	key := msgKey(m.ID, raw)
	leave := func(why string) (*ignore, *Message, bool) {
		b.log.Info("mail bridge: ignoring a message", "message_id", m.ID, "from", m.From, "subject", render.Safe(m.Subject), "why", why)
		return &ignore{key: key, id: m.ID, why: why}, m, false
	}
	h := headerOf(raw)
	now := b.cfg.Now()
	switch {
	case b.cfg.Retention > 0 && m.Date.IsZero():
		return leave("no Date header that can be read: mail is tested only when dated within the ledger's retention (" + b.cfg.Retention.String() + ")")
	case b.cfg.Retention > 0 && m.Date.Before(now.Add(-b.cfg.Retention)):
		return leave("dated " + m.Date.UTC().Format(time.RFC3339) + ", longer ago than the ledger's retention (" + b.cfg.Retention.String() + "): not tested, since its record may have been dropped")
	case b.cfg.Retention > 0 && m.Date.After(now.Add(dateSkew)):
		return leave("dated " + m.Date.UTC().Format(time.RFC3339) + ", more than a day ahead of this bridge's clock: not tested (fix the sender's clock and send it again)")
	case m.ID == "":
		return leave("no Message-ID: a reply could not be threaded")
	case !validMsgID(m.ID):
		return leave("a Message-ID with characters other than printable ASCII")
	case !strings.Contains(m.From, "@") || !validMsgID(m.From):
		return leave("no usable sender address")
	case m.From == b.from.Address || h.Get("X-Refci-State") != "" || h.Get("X-Refci-Run") != "":
		return leave("our own mail (a loop)")
	case m.Kind == KindAuto:
		return leave("auto-generated (RFC 3834)")
	case m.Kind == KindReply:
		return leave("a reply")
	case m.Kind == KindOther && m.Tag.Patch:
		ig, m, _ := leave("a [PATCH] subject without a plain-text patch")
		return ig, m, true
	case m.Kind == KindOther:
		return leave("holds no patch")
	}
	if m.Kind == KindPatch {
		if bad := UnsafePaths(m.Body); len(bad) > 0 {
			b.log.Warn("mail bridge: a patch touches paths outside the work tree or in .git; its series will not be applied", "message_id", m.ID, "from", m.From, "paths", fmt.Sprintf("%q", bad))
		}
	}
	b.pending[m.ID] = m
	if _, ok := b.firstSeen[m.ID]; !ok {
		// The series' timeout runs from when a bridge first saw it, as
		// the ledger says, so a restart does not start it again.
		at := b.cfg.Now()
		var w waitRecord
		found := false
		if err := b.ledger.cached(func(tx *ledgerTx) { found = tx.get(waitPath(m.ID), &w) }); err == nil && found {
			at = minTime(at, w.At)
		} else {
			b.waiting = append(b.waiting, waitRecord{V: ledgerFormat, ID: m.ID, By: b.cfg.Bridge, At: at.UTC()})
		}
		b.firstSeen[m.ID] = at
	}
	return nil, m, false
}

// validMsgID accepts a Message-ID of printable ASCII without <, > or
// white space, of a sane length: what a reply may quote in its headers.
func validMsgID(id string) bool {
	if len(id) == 0 || len(id) > 250 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c >= 0x7f || c == '<' || c == '>' {
			return false
		}
	}
	return true
}

// headerOf reads the header of a raw message; empty when it cannot.
func headerOf(raw []byte) netmail.Header {
	m, err := netmail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return netmail.Header{}
	}
	return m.Header
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// recordIgnored records the messages ig as ignored, and when the
// messages newly waiting for their series were first seen.
func (b *Bridge) recordIgnored(ctx context.Context, ig []ignore) error {
	now := b.cfg.Now().UTC()
	what := fmt.Sprintf("%d messages ignored", len(ig))
	if len(b.waiting) > 0 {
		what += fmt.Sprintf(", %d waiting for their series", len(b.waiting))
	}
	err := b.ledger.update(ctx, what, func(tx *ledgerTx) {
		for _, i := range ig {
			if !tx.hasMessage(i.key) {
				tx.putMessage(i.key, msgRecord{V: ledgerFormat, ID: i.id, Outcome: msgIgnored, Why: i.why, By: b.cfg.Bridge, At: now})
			}
		}
		for _, w := range b.waiting {
			if b.pending[w.ID] != nil && !tx.hasMessage(msgKey(w.ID, nil)) && !tx.has(waitPath(w.ID)) {
				tx.put(waitPath(w.ID), w)
			}
		}
	})
	if err == nil {
		b.waiting = nil
	}
	return err
}

// replyNoPatch answers a [PATCH] mail that holds no plain-text patch
// (HTML only, an attachment): once, as a series of its own.
func (b *Bridge) replyNoPatch(ctx context.Context, m *Message) {
	sum := sha256.Sum256([]byte(m.ID))
	th := b.thread(&Series{ID: hex.EncodeToString(sum[:8]), Version: m.Tag.Version, Total: max(m.Tag.Total, 1), Patches: []*Message{m}}, m)
	out := outcome{state: StateNotApplied, problem: "the message holds no patch that git am can apply. Send patches as plain text, one per message, with git send-email (not as HTML or as an attachment)."}
	if err := b.conclude(ctx, th, nil, out, seriesNotApplied); err != nil {
		b.problem("ledger", "mail bridge: cannot record a reply on the remote; trying again", err)
	}
}

// thread is what a reply to s, whose root is root, needs.
func (b *Bridge) thread(s *Series, root *Message) thread {
	th := thread{Series: seriesKey(s.ID, s.Version), Version: s.Version, Total: s.Total, Title: root.Tag.Title,
		Subject: root.Subject, Root: root.ID, Author: root.From, AuthorName: root.FromName}
	for _, r := range root.References {
		if validMsgID(r) && r != root.ID {
			th.References = append(th.References, r)
		}
	}
	if th.Title == "" || th.Title == placeholderTitle {
		if p := s.first(); p != nil && p != root {
			th.Title = p.Tag.Title
		}
	}
	h := headerOf(root.Raw)
	seen := map[string]bool{b.from.Address: true, root.From: true}
	for _, field := range []string{"To", "Cc"} {
		list, _ := h.AddressList(field)
		for _, a := range list {
			addr := strings.ToLower(a.Address)
			if !seen[addr] && validMsgID(addr) && strings.Contains(addr, "@") && len(th.Cc) < maxCc {
				seen[addr] = true
				th.Cc = append(th.Cc, addr)
			}
		}
	}
	return th
}

// maxCc caps the addresses a reply copies from the mail it answers.
const maxCc = 10

// handleSeries groups the pending messages and handles every series
// that is complete, or incomplete past the timeout.
func (b *Bridge) handleSeries(ctx context.Context) {
	if len(b.pending) == 0 {
		return
	}
	msgs := make([]*Message, 0, len(b.pending))
	for _, m := range b.pending {
		msgs = append(msgs, m)
	}
	sort.Slice(msgs, func(i, j int) bool { return msgs[i].ID < msgs[j].ID })
	all := Group(msgs)
	var known map[string]seriesRecord
	var byMessage map[string]string
	if err := b.ledger.view(ctx, func(tx *ledgerTx) {
		known = tx.allSeries()
		byMessage = map[string]string{}
		for key, r := range known {
			for _, id := range r.Messages {
				byMessage[id] = key
			}
		}
	}); err != nil {
		b.problem("ledger", "mail bridge: cannot read the ledger on the remote; trying again", err)
		return
	}
	var left []ignore // recorded, so that a restart does not take them up again
	defer func() {
		if len(left) > 0 {
			if err := b.recordIgnored(ctx, left); err != nil && ctx.Err() == nil {
				b.problem("ledger", "mail bridge: cannot record ignored mail on the remote; it is looked at again", err)
			}
		}
	}()
	for _, s := range all {
		if ctx.Err() != nil {
			return
		}
		b.lineage(s, known, byMessage)
		key := seriesKey(s.ID, s.Version)
		if r, ok := known[key]; ok && !b.mayTake(r) {
			if r.State != seriesClaimed {
				b.log.Info("mail bridge: ignoring mail of a series handled already", "series", key, "state", r.State, "messages", strings.Join(messageIDs(s), " "))
				left = append(left, leftSeries(s, "of series "+key+", handled already ("+r.State+")")...)
				b.drop(s)
			} // else kept: another bridge is on it, or its lease runs out
			continue
		}
		if s.SupersededBy != 0 {
			b.log.Info("mail bridge: a newer version arrived before this one was tested; skipping it", "series", key, "newer", s.SupersededBy)
			left = append(left, leftSeries(s, fmt.Sprintf("of series %s, superseded by v%d before it was tested", key, s.SupersededBy))...)
			b.drop(s)
			continue
		}
		if !s.Complete() {
			first := b.cfg.Now()
			for _, m := range append([]*Message{s.Cover}, s.Patches...) {
				if m != nil && b.firstSeen[m.ID].Before(first) {
					first = b.firstSeen[m.ID]
				}
			}
			if b.cfg.Now().Sub(first) >= b.cfg.SeriesTimeout {
				b.incomplete(ctx, s)
			}
			continue
		}
		b.apply(ctx, s, known)
	}
}

// mayTake reports whether this bridge may (re)take a series record: a
// claim of its own (it restarted) or one whose lease ran out.
func (b *Bridge) mayTake(r seriesRecord) bool {
	return r.State == seriesClaimed && (r.By == b.cfg.Bridge || b.cfg.Now().Sub(r.Updated) > lease)
}

// lineage gives s the ID of an older version the ledger knows when the
// mail of that version is no longer pending (handled before a restart):
// by threading, or by the same sender and title, as Group does. A part
// threaded to a concluded series of the same version and count gets its
// ID too, and so is left as handled.
func (b *Bridge) lineage(s *Series, known map[string]seriesRecord, byMessage map[string]string) {
	root := s.Root()
	for _, id := range append([]string{root.InReplyTo}, root.References...) {
		if key, ok := byMessage[id]; ok {
			// An older version; or this very version, concluded before
			// this part arrived (a patch resent alone, too late).
			if r := known[key]; r.Version < s.Version || r.Version == s.Version && r.Total == s.Total {
				s.ID, _, _ = strings.Cut(key, "/")
				return
			}
		}
	}
	if root.Tag.Title == "" || root.Tag.Title == placeholderTitle {
		return
	}
	best := 0
	for key, r := range known {
		if r.Version < s.Version && r.Version > best && r.Author == root.From && r.Title == root.Tag.Title {
			s.ID, _, _ = strings.Cut(key, "/")
			best = r.Version
		}
	}
}

// leftSeries is s's messages, left for why.
func leftSeries(s *Series, why string) []ignore {
	var out []ignore
	for _, id := range messageIDs(s) {
		out = append(out, ignore{key: msgKey(id, nil), id: id, why: why})
	}
	return out
}

// drop forgets s's messages.
func (b *Bridge) drop(s *Series) {
	for _, m := range append([]*Message{s.Cover}, s.Patches...) {
		if m != nil {
			delete(b.pending, m.ID)
			delete(b.firstSeen, m.ID)
		}
	}
}

func messageIDs(s *Series) []string {
	var ids []string
	for _, m := range append([]*Message{s.Cover}, s.Patches...) {
		if m != nil {
			ids = append(ids, m.ID)
		}
	}
	return ids
}

// incomplete replies once that s is missing patches.
func (b *Bridge) incomplete(ctx context.Context, s *Series) {
	th := b.thread(s, s.Root())
	out := outcome{state: StateIncomplete, missing: s.Missing(), timeout: b.cfg.SeriesTimeout}
	b.log.Info("mail bridge: a series timed out incomplete", "series", th.Series, "missing", fmt.Sprint(s.Missing()), "from", th.Author)
	if err := b.conclude(ctx, th, s, out, seriesIncomplete); err != nil {
		b.problem("ledger", "mail bridge: cannot record a reply on the remote; trying again", err)
		return
	}
	b.drop(s)
}

// conclude records s's final state with the reply it gets, unless
// another bridge concluded it first, and wakes the outbox.
func (b *Bridge) conclude(ctx context.Context, th thread, s *Series, out outcome, state string) error {
	id, rcpt, raw, err := compose(b.replyOptions(), th, out)
	if err != nil {
		return fmt.Errorf("compose the reply: %w", err)
	}
	now := b.cfg.Now().UTC()
	ids := []string{th.Root}
	if s != nil {
		ids = messageIDs(s)
	}
	err = b.ledger.update(ctx, "series "+th.Series+" "+state, func(tx *ledgerTx) {
		if r, ok := tx.series(th.Series); ok && !b.mayTake(r) {
			return // another bridge concluded it
		}
		tx.put(seriesPath(th.Series), seriesRecord{V: ledgerFormat, State: state, By: b.cfg.Bridge, Claimed: now, Updated: now,
			thread: th, Messages: ids, Reply: id})
		b.recordMessages(tx, ids, th.Series, now)
		if !tx.has(replyPath(id)) {
			tx.put(replyPath(id), replyRecord{V: ledgerFormat, MessageID: id, State: replyPending, Series: th.Series, Kind: out.state,
				From: b.from.Address, Rcpt: rcpt, Raw: string(raw), By: b.cfg.Bridge, Created: now, Updated: now})
		}
	})
	if err == nil {
		b.wakeOutbox()
	}
	return err
}

func (b *Bridge) recordMessages(tx *ledgerTx, ids []string, series string, now time.Time) {
	for _, id := range ids {
		if !tx.hasMessage(msgKey(id, nil)) {
			tx.putMessage(msgKey(id, nil), msgRecord{V: ledgerFormat, ID: id, Outcome: msgSeries, Series: series, By: b.cfg.Bridge, At: now})
		}
	}
}

func (b *Bridge) replyOptions() replyOptions {
	return replyOptions{from: b.from, fetchURL: b.cfg.FetchURL, noCc: b.cfg.NoCc, now: b.cfg.Now(), signer: b.cfg.Signer}
}

// apply claims a complete series, applies it on its base, keeps its head
// on the remote, asks for its run and supersedes its older versions.
func (b *Bridge) apply(ctx context.Context, s *Series, known map[string]seriesRecord) {
	th := b.thread(s, s.Root())
	key := th.Series
	now := b.cfg.Now().UTC()
	// Claim it first, so that no other bridge tests it too.
	taken, live := false, false
	err := b.ledger.update(ctx, "claim series "+key, func(tx *ledgerTx) {
		taken, live = false, false
		if r, ok := tx.series(key); ok && !b.mayTake(r) {
			taken, live = true, r.State == seriesClaimed
			return
		}
		tx.put(seriesPath(key), seriesRecord{V: ledgerFormat, State: seriesClaimed, By: b.cfg.Bridge, Claimed: now, Updated: now,
			thread: th, Messages: messageIDs(s)})
	})
	if err != nil {
		b.problem("ledger", "mail bridge: cannot claim a series in the ledger on the remote; trying again", err, "series", key)
		return
	}
	if taken {
		if !live {
			b.drop(s)
		}
		return
	}
	base, baseFrom, err := b.fetchBase(ctx, s)
	th.Base, th.BaseFrom = base, baseFrom
	if err != nil {
		var nf *baseMissing
		if errors.As(err, &nf) {
			b.log.Info("mail bridge: a series' base is not on the remote", "series", key, "base", nf.what)
			if err := b.conclude(ctx, th, s, outcome{state: StateNotApplied, problem: nf.Error()}, seriesNotApplied); err == nil {
				b.drop(s)
			}
			return
		}
		b.problem("base", "mail bridge: cannot fetch a series' base from the remote; trying again", err, "series", key)
		return
	}
	scratch, err := b.scratch(ctx)
	if err != nil {
		b.problem("scratch", "mail bridge: cannot make a scratch clone; trying again", err)
		return
	}
	defer os.RemoveAll(scratch)
	head, err := Apply(ctx, scratch, base, s)
	var ae *ApplyError
	switch {
	case errors.As(err, &ae):
		b.log.Info("mail bridge: a series does not apply", "series", key, "patch", ae.Patch, "base", base)
		if err := b.conclude(ctx, th, s, outcome{state: StateNotApplied, applyErr: ae}, seriesNotApplied); err == nil {
			b.drop(s)
		}
		return
	case errors.Is(err, ErrUnsafePath):
		b.log.Warn("mail bridge: refusing a series that touches paths outside the work tree or in .git", "series", key, "from", th.Author, "err", err)
		out := outcome{state: StateNotApplied, problem: "a patch touches a path outside the work tree or inside .git, which refci never applies: " + err.Error()}
		if err := b.conclude(ctx, th, s, out, seriesNotApplied); err == nil {
			b.drop(s)
		}
		return
	case err != nil:
		b.problem("apply", "mail bridge: git am failed to run; trying again", err, "series", key)
		return
	}
	// Keep the head on the remote and ask for its run, in one atomic
	// push. A head kept before a restart (this bridge, or one whose claim
	// ran out, stopped between that push and recording it) was asked for
	// then: that request, or its run, stands.
	git := gitproto.CLI{Dir: scratch, Env: b.cfg.Env}
	keep, reqRef := queue.MailSeriesRef(s.RequestName()), queue.RequestRef(s.RequestName())
	vals, err := b.remote.RefValues(ctx, []string{keep, reqRef})
	if err != nil {
		b.problem("push", "mail bridge: cannot read the remote; trying again", err, "series", key)
		return
	}
	var obj gitproto.Hash
	if kept := vals[keep]; kept != gitproto.ZeroHash {
		head = kept.String()
		obj, err = b.askedBefore(ctx, git, s.RequestName(), head, vals[reqRef])
	}
	if err == nil && obj == gitproto.ZeroHash {
		args := []string{"push", "--quiet", "--no-verify", "--atomic"}
		var specs []string
		if vals[keep] == gitproto.ZeroHash {
			args = append(args, "--force-with-lease="+keep+":")
			specs = append(specs, head+":"+keep)
		}
		// The request tag is never signed, whatever git's configuration
		// says: mailed patches run untrusted.
		obj, err = requests.Client{Dir: scratch, Unsigned: true, Env: b.cfg.Env}.Make(ctx, requests.Request{Name: s.RequestName(), Target: gitproto.NewHash(head)})
		if err == nil {
			specs = append(specs, "+"+obj.String()+":"+reqRef)
			_, err = git.Run(ctx, "", append(append(args, "--", b.cfg.Remote), specs...)...)
		}
	}
	if err != nil {
		b.problem("push", "mail bridge: cannot push the request to the remote; trying again", err, "series", key)
		return
	}
	b.solved("push", "mail bridge: pushing to the remote works again")
	b.log.Info("mail bridge: series asked for", "series", key, "request", s.RequestName(), "head", head, "base", base, "from", th.Author)
	if b.cfg.Asked != nil {
		b.cfg.Asked()
	}
	// Older versions are superseded: their requests go (a worker running
	// one cancels it).
	for okey, r := range known {
		oid, _, _ := strings.Cut(okey, "/")
		if oid != s.ID || r.Version >= s.Version || r.State != seriesRequested || r.SupersededBy != 0 || r.RequestObject == "" {
			continue
		}
		res, err := b.remote.Push(ctx, []gitproto.RefUpdate{{Name: queue.RequestRef(r.Request), Old: gitproto.NewHash(r.RequestObject)}}, false)
		if err == nil && res[0].OK {
			b.log.Info("mail bridge: superseded request deleted", "request", r.Request, "by", s.RequestName())
		}
	}
	err = b.ledger.update(ctx, "series "+key+" requested", func(tx *ledgerTx) {
		r, _ := tx.series(key)
		r.V, r.State, r.By, r.Updated = ledgerFormat, seriesRequested, b.cfg.Bridge, b.cfg.Now().UTC()
		if r.Claimed.IsZero() {
			r.Claimed = now
		}
		r.thread, r.Messages = th, messageIDs(s)
		r.Head, r.Request, r.RequestObject = head, s.RequestName(), obj.String()
		tx.put(seriesPath(key), r)
		b.recordMessages(tx, r.Messages, key, now)
		for okey, o := range tx.allSeries() {
			oid, _, _ := strings.Cut(okey, "/")
			if oid == s.ID && o.Version < s.Version && o.SupersededBy < s.Version {
				o.SupersededBy = s.Version
				tx.put(seriesPath(okey), o)
			}
		}
	})
	if err != nil {
		b.problem("ledger", "mail bridge: cannot record a requested series on the remote; trying again", err, "series", key)
		return
	}
	b.changes.Wake() // its run may have ended already
	b.drop(s)
}

// askedBefore finds the request of a head kept before: the request ref
// (value req), when it is still a request of head, or the request object
// a run of name on head ran. ZeroHash when there is neither.
func (b *Bridge) askedBefore(ctx context.Context, git gitproto.CLI, name, head string, req gitproto.Hash) (gitproto.Hash, error) {
	if _, err := git.Run(ctx, "", "fetch", "--quiet", "--no-write-fetch-head", b.cfg.Remote, queue.MailSeriesRef(name)); err != nil {
		return gitproto.ZeroHash, err
	}
	if req != gitproto.ZeroHash {
		if _, err := git.Run(ctx, "", "fetch", "--quiet", "--no-write-fetch-head", b.cfg.Remote, queue.RequestRef(name)); err == nil {
			if c, err := git.Run(ctx, "", "rev-parse", "--verify", "--quiet", req.String()+"^{commit}"); err == nil && c == head {
				return req, nil
			}
		}
	}
	src := b.runsSource()
	if err := src.FetchRuns(ctx, head); err != nil {
		return gitproto.ZeroHash, err
	}
	repo, err := src.Open()
	if err != nil {
		return gitproto.ZeroHash, err
	}
	runs, err := results.List(repo, head)
	if err != nil {
		return gitproto.ZeroHash, err
	}
	for _, r := range runs {
		if st, err := r.Read(repo); err == nil && st.Request == name && gitproto.IsHash(st.RequestObject) {
			return gitproto.NewHash(st.RequestObject), nil
		}
	}
	return gitproto.ZeroHash, nil
}

// baseMissing is a base the remote does not have.
type baseMissing struct{ what, remote string }

func (e *baseMissing) Error() string {
	return fmt.Sprintf("its base, %s, is not on %s.", e.what, e.remote)
}

// fetchBase fetches the series' base into the cache: its base-commit:
// trailer, else BaseBranch.
func (b *Bridge) fetchBase(ctx context.Context, s *Series) (commit, from string, err error) {
	if base := s.Base(); base != "" {
		if err := b.remote.Fetch(ctx, base); err != nil {
			var re *gitproto.RemoteError
			if errors.As(err, &re) && re.Kind != gitproto.KindUnreachable && re.Kind != gitproto.KindAuth {
				return base, "base-commit: of the series", &baseMissing{what: "commit " + base + " (the series' base-commit:)", remote: b.cfg.FetchURL}
			}
			return base, "", err
		}
		return base, "the series' base-commit:", nil
	}
	branch := "refs/heads/" + b.cfg.BaseBranch
	local := "refs/refci-mail/base"
	if err := b.remote.Fetch(ctx, "+"+branch+":"+local); err != nil {
		var re *gitproto.RemoteError
		if errors.As(err, &re) && re.Kind != gitproto.KindUnreachable && re.Kind != gitproto.KindAuth {
			return "", "", &baseMissing{what: "branch " + b.cfg.BaseBranch + " (the series names no base-commit:)", remote: b.cfg.FetchURL}
		}
		return "", "", err
	}
	repo, err := gitproto.Open(b.remote.Cache)
	if err != nil {
		return "", "", err
	}
	h, err := repo.RefHash(local)
	if err != nil {
		return "", "", err
	}
	return h.String(), "branch " + b.cfg.BaseBranch + ", as the series names no base-commit:", nil
}

// scratch makes a fresh work tree that borrows the cache's objects.
func (b *Bridge) scratch(ctx context.Context) (string, error) {
	dir, err := os.MkdirTemp(filepath.Join(b.cfg.Dir, "scratch"), "am-")
	if err != nil {
		return "", err
	}
	if _, err := (gitproto.CLI{Dir: dir}).Run(ctx, "", "init", "-q", "--template=", dir); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	alt := filepath.Join(dir, ".git", "objects", "info")
	if err := os.MkdirAll(alt, 0o700); err == nil {
		err = os.WriteFile(filepath.Join(alt, "alternates"), []byte(filepath.Join(b.remote.Cache, "objects")+"\n"), 0o600)
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// watchRuns replies to each final result of a requested series.
func (b *Bridge) watchRuns(ctx context.Context) {
	src := b.runsSource()
	// A run can end before its series is recorded as requested (the
	// worker is quick, or another bridge asked for it): such runs are
	// looked at again at each look until their series says, for a while.
	type early struct {
		l     results.Listed
		since time.Time
	}
	unmatched := map[string]early{}
	for {
		runs, err := b.changes.Next(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			b.problem("runs", "mail bridge: cannot fetch the runs; trying again at each poll", err)
			continue
		}
		b.solved("runs", "mail bridge: fetching the runs works again")
		if err := b.ledger.view(ctx, func(*ledgerTx) {}); err != nil && ctx.Err() == nil {
			b.problem("ledger", "mail bridge: cannot read the ledger on the remote; trying again", err)
		}
		for _, e := range unmatched {
			runs = append(runs, e.l)
		}
		for _, l := range runs {
			wait, err := b.result(ctx, src, l)
			if err != nil && ctx.Err() == nil {
				b.problem("ledger", "mail bridge: cannot record a reply on the remote; trying again", err)
				wait = true
			}
			if e, ok := unmatched[l.Ref]; wait && (!ok || time.Since(e.since) < lease) {
				if !ok {
					unmatched[l.Ref] = early{l, time.Now()}
				}
			} else {
				delete(unmatched, l.Ref)
			}
		}
		b.looks.Add(1)
	}
}

func (b *Bridge) runsSource() results.Source {
	return results.Source{Dir: b.remote.Cache, Remote: b.cfg.Remote, Env: b.cfg.Env}
}

// result handles one changed run: the final result of a requested
// series' run gets its reply. wait is true for the final run of a series
// not (yet) recorded as requested: it is looked at again later.
func (b *Bridge) result(ctx context.Context, src results.Source, l results.Listed) (wait bool, err error) {
	if l.Err != nil {
		b.log.Debug("mail bridge: a run that is not believed", "run", l.Ref, "problem", results.Problem(l.Err))
		return false, nil
	}
	if l.Future || l.TakenOverBy != nil {
		return false, nil
	}
	st := l.Shown()
	if !st.State.Final() || !strings.HasPrefix(st.Request, "patches/") {
		return false, nil
	}
	parts := strings.Split(st.Request, "/")
	if len(parts) != 3 {
		return false, nil
	}
	key := parts[1] + "/" + parts[2]
	var r seriesRecord
	var ok bool
	// Read at the start of this look; series records are held in memory,
	// so this cannot fail but for the cache's repository.
	if err := b.ledger.cached(func(tx *ledgerTx) { r, ok = tx.series(key) }); err != nil {
		return true, err
	}
	if !ok || r.State == seriesClaimed {
		return true, nil
	}
	if r.State != seriesRequested || r.Reply != "" || r.Head != st.Target ||
		(st.RequestObject != "" && r.RequestObject != "" && st.RequestObject != r.RequestObject) {
		return false, nil
	}
	if st.State == queue.Cancelled && r.SupersededBy != 0 {
		// The newer version's reply says what matters.
		return false, b.ledger.update(ctx, "series "+key+" superseded", func(tx *ledgerTx) {
			if cur, ok := tx.series(key); ok && cur.Reply == "" {
				cur.Reply = "-"
				tx.put(seriesPath(key), cur)
			}
		})
	}
	res := render.Result{Status: st, Ref: l.Ref, Commit: l.Commit.String(), JobLogs: map[string][]byte{}}
	if repo, err := src.Open(); err == nil {
		res.Log, _ = repo.ReadFile(l.Commit, queue.LogFile)
		for _, j := range st.Jobs {
			if j.State == queue.Failure {
				if log, err := repo.ReadFile(l.Commit, queue.JobLogPath(j.Name)); err == nil {
					res.JobLogs[j.Name] = log
				}
			}
		}
	}
	out := outcome{state: string(st.State), result: &res, request: r.Request, head: r.Head}
	if b.cfg.RunsURL != "" {
		out.runURL = b.cfg.RunsURL + "/runs/" + st.Target + "/" + st.Run + "/"
	}
	id, rcpt, raw, err := compose(b.replyOptions(), r.thread, out)
	if err != nil {
		return false, fmt.Errorf("compose the reply: %w", err)
	}
	now := b.cfg.Now().UTC()
	err = b.ledger.update(ctx, "reply to series "+key, func(tx *ledgerTx) {
		cur, ok := tx.series(key)
		if !ok || cur.Reply != "" {
			return
		}
		cur.Reply = id
		tx.put(seriesPath(key), cur)
		if !tx.has(replyPath(id)) {
			tx.put(replyPath(id), replyRecord{V: ledgerFormat, MessageID: id, State: replyPending, Series: key, Kind: out.state, Run: l.Ref,
				From: b.from.Address, Rcpt: rcpt, Raw: string(raw), By: b.cfg.Bridge, Created: now, Updated: now})
		}
	})
	if err == nil {
		b.log.Info("mail bridge: a series' run ended; replying", "series", key, "state", st.State, "run", l.Ref)
		b.wakeOutbox()
	}
	return err != nil, err
}

func (b *Bridge) wakeOutbox() {
	select {
	case b.poke <- struct{}{}:
	default:
	}
}

// outbox sends the replies the ledger says are owed and are this
// bridge's (or whose bridge's lease ran out), retrying with backoff.
//
// A reply sent (or refused for good) is written to the bridge's journal
// (Dir/sent) at once, before the ledger is told, and recorded in the
// ledger until that works: when the remote cannot be written, the bridge
// keeps trying, and a bridge restarted on the same Dir records it rather
// than sending it again. A reply is sent only with at least half a lease
// left on its record, renewed first if need be, so another bridge cannot
// take it over while its sender still has time to record it.
func (b *Bridge) outbox(ctx context.Context) {
	next := map[string]time.Time{} // by Message-ID: not before
	backoff := map[string]time.Duration{}
	sent := b.readJournal() // sent or refused for good, not yet recorded
	var recordWait time.Duration
	var timer *time.Timer
	defer func() {
		if len(sent) > 0 {
			// Stopping: one more try, so that the next bridge does not
			// send it again; the journal covers a restart on this Dir.
			grace, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			b.recordSent(grace, sent)
			cancel()
		}
	}()
	for {
		wait := b.cfg.MailWait
		if len(sent) > 0 {
			if b.recordSent(ctx, sent) {
				recordWait = 0
			} else {
				recordWait = min(max(2*recordWait, b.cfg.MinBackoff), b.cfg.MaxBackoff)
				wait = recordWait
			}
		}
		var owed []replyRecord
		if err := b.ledger.view(ctx, func(tx *ledgerTx) { owed = tx.pendingReplies() }); err != nil && ctx.Err() == nil {
			b.problem("ledger", "mail bridge: cannot read the ledger on the remote; trying again", err)
		}
		for _, r := range owed {
			if ctx.Err() != nil {
				return
			}
			if _, done := sent[r.MessageID]; done {
				continue // sent by this bridge: being recorded
			}
			if t, ok := next[r.MessageID]; ok && time.Until(t) > 0 {
				wait = min(wait, time.Until(t))
				continue
			}
			if r.By != b.cfg.Bridge && b.cfg.Now().Sub(r.Updated) <= lease {
				continue // another bridge's
			}
			if r.By != b.cfg.Bridge || b.cfg.Now().Sub(r.Updated) > lease/2 {
				// Take it over (its bridge is gone), or renew this
				// bridge's lease, first: one bridge sends it, and has
				// half a lease to record it.
				won := false
				err := b.ledger.update(ctx, "take reply "+r.Series, func(tx *ledgerTx) {
					won = false
					cur, ok := tx.reply(r.MessageID)
					if ok && cur.State == replyPending && (cur.By == b.cfg.Bridge || b.cfg.Now().Sub(cur.Updated) > lease) {
						cur.By, cur.Updated, won = b.cfg.Bridge, b.cfg.Now().UTC(), true
						tx.put(replyPath(r.MessageID), cur)
					}
				})
				if err != nil || !won {
					continue
				}
				if r.By != b.cfg.Bridge {
					b.log.Info("mail bridge: taking over a reply owed by a bridge that is gone", "series", r.Series, "from", r.By)
				}
			}
			err := b.cfg.Sender.Send(ctx, r.From, r.Rcpt, []byte(r.Raw))
			if ctx.Err() != nil && err != nil {
				return
			}
			var perm *PermanentError
			switch {
			case err == nil:
				delete(next, r.MessageID)
				delete(backoff, r.MessageID)
				b.solved("send:"+r.MessageID, "mail bridge: a reply went out after all")
				b.log.Info("mail bridge: reply sent", "series", r.Series, "state", r.Kind, "message_id", r.MessageID, "to", strings.Join(r.Rcpt, ", "))
			case errors.As(err, &perm):
				b.log.Error("mail bridge: the mail server refused a reply for good; it is not sent", "series", r.Series, "message_id", r.MessageID, "to", strings.Join(r.Rcpt, ", "), "err", err)
			default:
				d := backoff[r.MessageID]
				if d == 0 {
					d = b.cfg.MinBackoff
				} else {
					d = min(2*d, b.cfg.MaxBackoff)
				}
				backoff[r.MessageID] = d
				next[r.MessageID] = time.Now().Add(d)
				wait = min(wait, d)
				b.problem("send:"+r.MessageID, "mail bridge: a reply could not be sent; retrying with backoff", err, "series", r.Series, "message_id", r.MessageID)
				uerr := b.ledger.update(ctx, "reply "+r.Series+" attempt", func(tx *ledgerTx) {
					cur, ok := tx.reply(r.MessageID)
					if ok && cur.State == replyPending {
						cur.By, cur.Updated, cur.Attempts, cur.Error = b.cfg.Bridge, b.cfg.Now().UTC(), cur.Attempts+1, err.Error()
						tx.put(replyPath(r.MessageID), cur)
					}
				})
				if uerr != nil && ctx.Err() == nil {
					b.problem("ledger", "mail bridge: cannot record a reply's attempt on the remote; trying again", uerr)
				}
				continue
			}
			j := journalEntry{MessageID: r.MessageID, Series: r.Series}
			if err != nil {
				j.Error = err.Error()
			}
			if jerr := b.writeJournal(j); jerr != nil {
				b.log.Error("mail bridge: cannot write the journal of replies sent; a restart before the ledger records this reply may send it again", "message_id", r.MessageID, "err", jerr)
			}
			sent[r.MessageID] = j
			if b.recordSent(ctx, sent) {
				recordWait = 0
			} else {
				recordWait = max(recordWait, b.cfg.MinBackoff)
				wait = min(wait, recordWait)
			}
		}
		if ctx.Err() != nil {
			return
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-b.poke:
			timer.Stop()
		case <-timer.C:
		}
	}
}

// journalEntry is a reply sent (Error "") or refused for good, kept in
// Dir/sent until the ledger records it.
type journalEntry struct {
	MessageID string `json:"message_id"`
	Series    string `json:"series"`
	Error     string `json:"error,omitempty"`
}

func (b *Bridge) journalDir() string { return filepath.Join(b.cfg.Dir, "sent") }

func journalName(msgID string) string {
	sum := sha256.Sum256([]byte(msgID))
	return hex.EncodeToString(sum[:])
}

// writeJournal writes j durably (written, synced, renamed into place,
// the directory synced).
func (b *Bridge) writeJournal(j journalEntry) error {
	dir := b.journalDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	data, err := json.Marshal(j)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "tmp-")
	if err != nil {
		return err
	}
	_, err = f.Write(append(data, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(dir, journalName(j.MessageID)))
	}
	if err != nil {
		os.Remove(f.Name())
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// readJournal reads the replies sent and not yet recorded.
func (b *Bridge) readJournal() map[string]journalEntry {
	out := map[string]journalEntry{}
	tmps, _ := filepath.Glob(filepath.Join(b.journalDir(), "tmp-*"))
	for _, f := range tmps {
		os.Remove(f) // a journal write cut short by a crash
	}
	files, _ := filepath.Glob(filepath.Join(b.journalDir(), "[0-9a-f]*"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		var j journalEntry
		if err != nil || json.Unmarshal(data, &j) != nil || j.MessageID == "" || filepath.Base(f) != journalName(j.MessageID) {
			b.log.Warn("mail bridge: an unreadable entry in the journal of replies sent; left as it is", "file", f)
			continue
		}
		out[j.MessageID] = j
	}
	return out
}

// recordSent records the journal's replies in the ledger (sent, or
// failed) and forgets those recorded; it reports whether all were.
func (b *Bridge) recordSent(ctx context.Context, sent map[string]journalEntry) bool {
	ids := make([]string, 0, len(sent))
	for id := range sent {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	err := b.ledger.update(ctx, fmt.Sprintf("%d replies sent", len(ids)), func(tx *ledgerTx) {
		for _, id := range ids {
			j := sent[id]
			cur, ok := tx.reply(id)
			if !ok || cur.State != replyPending {
				continue
			}
			cur.By, cur.Updated, cur.Attempts = b.cfg.Bridge, b.cfg.Now().UTC(), cur.Attempts+1
			if j.Error == "" {
				cur.State, cur.Error = replySent, ""
			} else {
				cur.State, cur.Error = replyFailed, j.Error
			}
			tx.put(replyPath(id), cur)
		}
	})
	if err != nil {
		if ctx.Err() == nil {
			b.problem("record-sent", "mail bridge: cannot record a reply as sent on the remote; trying again (it is not sent again)", err)
		}
		return false
	}
	b.solved("record-sent", "mail bridge: the replies sent are recorded")
	for _, id := range ids {
		os.Remove(filepath.Join(b.journalDir(), journalName(id)))
		delete(sent, id)
	}
	return true
}

// compact drops the ledger's records last written before the retention
// horizon (PROTOCOL.md, "The mail bridge"): messages and waiting patches
// by the time a bridge recorded or first saw them, series concluded and
// answered (or needing no answer) by their last update, replies sent or
// refused by theirs. A claimed series, a requested series whose reply is
// not recorded yet and a reply still owed are kept, however old.
func (b *Bridge) compact(ctx context.Context) error {
	cutoff := b.cfg.Now().Add(-b.cfg.Retention - dateSkew)
	dropped := 0
	err := b.ledger.update(ctx, "compaction: records before "+cutoff.UTC().Format(time.RFC3339)+" dropped", func(tx *ledgerTx) {
		dropped = 0
		tx.walk("messages", func(p string, data []byte) {
			var r msgRecord
			if json.Unmarshal(data, &r) == nil && r.V == ledgerFormat && !r.At.IsZero() && r.At.Before(cutoff) {
				tx.drop(p)
				dropped++
			}
		})
		tx.walk("waiting", func(p string, data []byte) {
			var r waitRecord
			if json.Unmarshal(data, &r) == nil && r.V == ledgerFormat && !r.At.IsZero() && r.At.Before(cutoff) {
				tx.drop(p)
				dropped++
			}
		})
		for key, r := range tx.allSeries() {
			if r.State == seriesClaimed || r.Updated.IsZero() || !r.Updated.Before(cutoff) || r.Reply == "" {
				continue
			}
			if rep, ok := tx.reply(r.Reply); ok && rep.State == replyPending {
				continue
			}
			tx.remove(seriesPath(key))
			dropped++
		}
		for _, p := range tx.listedPaths("replies") {
			var r replyRecord
			if tx.get(p, &r) && r.State != replyPending && !r.Updated.IsZero() && r.Updated.Before(cutoff) {
				tx.remove(p)
				dropped++
			}
		}
	})
	if err == nil && dropped > 0 {
		b.log.Info("mail bridge: compacted the ledger", "dropped", dropped, "before", cutoff.UTC().Format(time.RFC3339))
	}
	return err
}
