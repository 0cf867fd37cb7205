package mail

import (
	"context"
	"time"
)

// A Mailbox is where patch mail arrives: an IMAP folder (IMAPBox), or an
// in-memory one in tests. The bridge reads it only; it never deletes or
// moves mail (what was handled is recorded in the ledger ref, so any
// number of bridges can read one mailbox). A Mailbox is used by one
// goroutine at a time.
type Mailbox interface {
	// New returns the messages that arrived since the previous call, in
	// arrival order; the first call returns every message in the
	// mailbox. A message may be returned again (after a reconnect that
	// changed the mailbox's UIDVALIDITY, or a re-delivery): the bridge
	// tells them apart by Envelope.MessageID and the ledger.
	New(ctx context.Context) ([]Envelope, error)
	// Fetch returns the whole raw message of e. A message larger than
	// max bytes is not downloaded: Fetch returns ErrTooLarge.
	Fetch(ctx context.Context, e Envelope, max int64) ([]byte, error)
	// Wait returns when the mailbox may have new mail (IMAP IDLE said
	// so), after at most d (IDLE notifications can be lost, so the caller
	// looks again anyway), or when ctx is done (with ctx's error).
	Wait(ctx context.Context, d time.Duration) error
	// Close ends the session.
	Close() error
}

// Envelope is what New says about one message, without its body.
type Envelope struct {
	// Key names the message within its mailbox for Fetch; for IMAP
	// "<uidvalidity>/<uid>".
	Key string
	// MessageID is the Message-ID header without angle brackets; "" when
	// the message has none.
	MessageID string
	// Size is the message's size in bytes as the server reports it.
	Size int64
}
