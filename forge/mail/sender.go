package mail

import (
	"context"
	"fmt"
)

// A Sender delivers the bridge's replies: SMTP (SMTPSender), or a
// recorder in tests. It is safe for use by one goroutine at a time.
type Sender interface {
	// Send delivers raw, a whole RFC 5322 message, from the envelope
	// sender from to each address of rcpt. A refusal of this message
	// that sending it again will not cure (a 5xx reply to a recipient or
	// to its data: an unknown address, a refused message) is a
	// *PermanentError. Anything else is worth a retry later: a 4xx
	// reply, a refused connection, a timeout, and also a refused login
	// or sender, which are the configuration's to fix, not the
	// message's.
	Send(ctx context.Context, from string, rcpt []string, raw []byte) error
}

// PermanentError is a refusal that retrying does not cure.
type PermanentError struct {
	Code int    // the SMTP reply code, e.g. 550; 0 when not from a server
	Msg  string // what the server said
}

func (e *PermanentError) Error() string {
	if e.Code == 0 {
		return "permanent failure: " + e.Msg
	}
	return fmt.Sprintf("permanent failure (%d): %s", e.Code, e.Msg)
}
