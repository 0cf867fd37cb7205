//go:build linux

package jobwire

// The wire protocol of $REFCI_SOCKET, version 1 (ProtocolVersion)
//
// The socket is a Unix stream socket. Every message, in both directions, is
// one JSON object on one line terminated by '\n', at most 1 MiB long. Every
// message has an "op" field naming what it is. Fields a message does not use
// are omitted; unknown fields are ignored, so later versions can add fields
// without breaking older peers. Byte strings are base64 (encoding/json's
// encoding of []byte).
//
// One connection carries at most one job, from its start to its end:
//
//	client → server  {"op":"start","name":"test","needs":["build","lint"]}
//	server → client  one of:
//	                 {"op":"run"}
//	                     every need succeeded and the job log is open:
//	                     run CMD now.
//	                 {"op":"skipped","reason":"needs build, which failed"}
//	                     a need did not succeed (or never started within
//	                     the grace period, or the needs form a cycle):
//	                     don't run CMD. The job is recorded as skipped and
//	                     the server closes the connection.
//	                 {"op":"error","error":"..."}
//	                     the start is refused (invalid or duplicate name,
//	                     the pipeline has ended, the log could not be
//	                     opened). Nothing more happens on this connection.
//	                 The reply to "start" may take arbitrarily long: the
//	                 server answers only once every need has finished, and
//	                 it waits up to the grace period
//	                 (Config.NeedsGrace) for a need that has not started yet.
//	client → server  {"op":"output","data":"aGVsbG8K"}
//	                     zero or more: CMD's raw output (stdout and stderr
//	                     through one pipe), in order. No reply. The server
//	                     appends it verbatim to the job log.
//	client → server  {"op":"end","exit_code":143,"signal":"SIGTERM","reason":"..."}
//	                     CMD is over. exit_code (0..255) is required: the
//	                     exit status, or 128+n when killed by signal n, in
//	                     which case "signal" names it. "reason" optionally
//	                     explains a failure ("command not found: foo").
//	server → client  {"op":"done"}
//	                     the end is recorded and the job log is closed; the
//	                     server closes the connection. The client exits
//	                     only after this, so when the pipeline has waited
//	                     for its jobs, their records are complete.
//
// Errors: a line that is not a JSON object, has no or an unknown "op", is
// too long, or is not valid at this point of the conversation is answered
// with {"op":"error","error":"..."} and otherwise ignored; the connection
// stays usable. After "run" the client reads such replies asynchronously
// (it prints them). Server replies are written with a deadline, so a
// client that does not read cannot stall the server.
//
// Disconnects: if the connection closes while the job waits for its needs
// or after "run" but before "end" (the `refci job` process was killed, for
// example by the pipeline's timeout), the job is recorded as cancelled.
// When the server is closed (the pipeline is over), jobs still waiting or
// running are recorded as cancelled, "the pipeline ended before the job
// finished".
//
// Secrets: `refci secret NAME` asks on its own connection (or before a
// "start" on the same one):
//
//	client → server  {"op":"secret","name":"NETLIFY_TOKEN"}
//	server → client  {"op":"secret","data":"<base64 of the value>"}
//	                 or {"op":"error","error":"why it is withheld"}
//
// The value is decrypted when asked and exists only in memory; before the
// reply is sent it is added to the run's masks (Run.Secret does both).
//
// Security: the socket is chmod'ed to 0600 right after it is created. There
// is a short window between bind and chmod during which its mode derives
// from the umask, so the caller must put SocketPath in a directory only the
// worker's user can enter (0700; worker.Run uses <run dir>/sock). The
// server validates every job name with queue.ValidateJobName before it
// calls Run.OpenLog, so a client can only ever reach its own jobs/NAME/log.txt.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// ProtocolVersion is the version of the wire protocol described at the
// top of this file (wire.go).
// A change that an older peer would misread (a new required field, an op
// whose meaning changes) increments it; new optional fields and ops do
// not (unknown fields are ignored, unknown ops answered with "error").
const ProtocolVersion = 1

// The ops: the "op" field of each message (see the protocol above).
const (
	OpStart   = "start"
	OpOutput  = "output"
	OpEnd     = "end"
	OpRun     = "run"
	OpSkipped = "skipped"
	OpError   = "error"
	OpDone    = "done"
	OpSecret  = "secret"
)

const (
	// MaxMsg is the longest message line, both ways.
	MaxMsg = 1 << 20
	// Chunk is the most output bytes a client puts in one "output"
	// message.
	Chunk = 32 << 10

	readBuf = 64 << 10 // per-connection read buffer; longer lines are assembled up to MaxMsg
)

// Msg is every message of the protocol, both ways. Fields an op does not
// use are empty.
type Msg struct {
	Op       string   `json:"op"`
	Name     string   `json:"name,omitempty"`      // start
	Needs    []string `json:"needs,omitempty"`     // start
	Data     []byte   `json:"data,omitempty"`      // output
	ExitCode *int     `json:"exit_code,omitempty"` // end
	Signal   string   `json:"signal,omitempty"`    // end
	Reason   string   `json:"reason,omitempty"`    // end, skipped
	Error    string   `json:"error,omitempty"`     // error
}

// In is one received line: a message, or (Err) why it is not one.
type In struct {
	Msg Msg
	Err error
}

// readLine reads one '\n'-terminated line of at most max bytes. A longer
// line is consumed and reported with tooLong. err is the read error, if
// any, after the line (a final line without '\n' comes with io.EOF).
func readLine(br *bufio.Reader, max int) (line []byte, tooLong bool, err error) {
	frag, err := br.ReadSlice('\n')
	if !errors.Is(err, bufio.ErrBufferFull) {
		if len(frag) > max {
			return nil, true, err
		}
		return frag, false, err
	}
	buf := append([]byte(nil), frag...)
	for errors.Is(err, bufio.ErrBufferFull) {
		frag, err = br.ReadSlice('\n')
		if !tooLong {
			if len(buf)+len(frag) > max {
				tooLong, buf = true, nil
			} else {
				buf = append(buf, frag...)
			}
		}
	}
	if tooLong {
		return nil, true, err
	}
	return buf, false, err
}

// Parse decodes one line (without its newline) into a message, or says
// in In.Err why it is not one.
func Parse(b []byte) In {
	var m Msg
	if err := json.Unmarshal(b, &m); err != nil {
		return In{Err: fmt.Errorf("malformed message (want one JSON object per line): %v", err)}
	}
	if m.Op == "" {
		return In{Err: errors.New(`malformed message: no "op"`)}
	}
	return In{Msg: m}
}

// ReadMsgs sends every message read from r to out until r fails, then
// closes out. It stops early when quit is closed.
func ReadMsgs(r io.Reader, out chan<- In, quit <-chan struct{}) {
	defer close(out)
	br := bufio.NewReaderSize(r, readBuf)
	for {
		line, tooLong, err := readLine(br, MaxMsg)
		var in In
		send := false
		if tooLong {
			in, send = In{Err: fmt.Errorf("message longer than %d bytes", MaxMsg)}, true
		} else if t := bytes.TrimSpace(line); len(t) > 0 {
			in, send = Parse(t), true
		}
		if send {
			select {
			case out <- in:
			case <-quit:
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Encode is m as one line of the protocol, newline included.
func Encode(m Msg) []byte {
	b, err := json.Marshal(m)
	if err != nil {
		panic(err) // Msg always marshals
	}
	return append(b, '\n')
}

// ReadReplies sends the server's messages to out until the connection
// fails, then closes out. Malformed lines are dropped.
func ReadReplies(r io.Reader, out chan<- Msg, quit <-chan struct{}) {
	in := make(chan In)
	go ReadMsgs(r, in, quit)
	defer close(out)
	for m := range in {
		if m.Err != nil {
			continue
		}
		select {
		case out <- m.Msg:
		case <-quit:
			return
		}
	}
}
