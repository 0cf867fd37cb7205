// Package link is how the refci worker runs the forge adapters and the
// mail bridge without linking them: they live in the refci-forge
// binary, which a worker whose configuration has [[forge]] entries or a
// [mail] table starts as a child process and supervises. This package
// holds both sides of that link and its wire format, and imports nothing
// of the adapters, so that refci stays light (it starts on every run).
//
// The child is started as
//
//	refci-forge link --config FILE [--key FILE] [-v]
//
// FILE being the worker's configuration (the child reads [[forge]],
// mirror_state and [mail] from it) and the key the worker's (replies
// may be signed with it). No secret is ever in its arguments or
// environment: the remotes, whose URLs may hold credentials, come on its
// standard input.
//
// The wire (version 1) is JSON, one object a line. On the child's
// standard input, from the worker:
//
//	{"start":{"v":1,"remotes":[...],"cache":"DIR","poll":"10s"}}  first, once
//	{"pushed":"URL"}  run refs were pushed to the remote URL (as configured):
//	                  the mirrors and the bridge of that remote look now
//
// and the end of the input asks the child to stop. On the child's
// standard output, to the worker:
//
//	{"ready":{"mirrors":N,"mail":true}}  the configuration is good and the
//	                  adapters run (a mail server that does not answer yet
//	                  does not hold this back: the bridge starts once it does)
//	{"fail":{"exit":2,"error":"config FILE: ..."}}  instead of ready: the
//	                  configuration must change (exit 2) or the machine
//	                  failed (3); the child then exits with that status
//	{"asked":"URL"}   the bridge pushed a request to the remote URL: the
//	                  worker polls it now
//
// The child's standard error is its log (log/slog text lines), copied
// line by line into the worker's log.
package link

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// Version is the version of the wire format.
const Version = 1

// Mode is the first argument that starts refci-forge as a worker's child.
const Mode = "link"

// ForgeSettings names the settings of a [[forge]] entry. The worker
// leaves them to the child, which decodes and checks them
// (forge/forgeconf keeps its Entry in step with this list).
const ForgeSettings = "kind, repo, remote, token_file, base_url, runs_url, pull_requests, pull_request_poll, app_id, installation_id, private_key_file"

// MailSettings names the settings of [mail] (forge/mail keeps its
// Settings in step with this list).
const MailSettings = "imap, smtp, user, password_file, from, remote, base_branch, ca_file, cc_list, fetch_url, runs_url, series_timeout, name, sign, ledger_days"

// Start is what the child needs besides its configuration file.
type Start struct {
	Version int      `json:"v"`
	Remotes []string `json:"remotes"` // the worker's remotes, as configured
	Cache   string   `json:"cache"`   // the worker's cache directory (the bridge works under it)
	// Poll is how often the mirrors look at their remotes when no push
	// wakes them (the worker's poll).
	Poll Duration `json:"poll"`
}

// Duration is a time.Duration written as text ("10s"): on the wire, and
// in worker.toml (worker/workerconf), which the worker hands its child.
// The zero value is no duration.
type Duration struct{ time.Duration }

// MarshalText writes d as Go writes a duration ("1m30s").
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// UnmarshalText reads a duration as MarshalText writes it; its error
// says how to write one.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (write e.g. \"10s\", \"2m\")", b)
	}
	d.Duration = v
	return nil
}

// Ready says that the child's adapters run.
type Ready struct {
	Mirrors int  `json:"mirrors"` // mirrors and intakes
	Mail    bool `json:"mail"`    // a [mail] bridge (started, or waiting for its servers)
}

// Fail says why the child stops before it is ready.
type Fail struct {
	Exit  int    `json:"exit"`  // the exit status it asks the worker to end with: 2 configuration, 3 other
	Error string `json:"error"` // one line, for the worker to print as is
}

// Message is one line of the wire; exactly one field is set.
type Message struct {
	Start  *Start `json:"start,omitempty"`
	Pushed string `json:"pushed,omitempty"`
	Ready  *Ready `json:"ready,omitempty"`
	Fail   *Fail  `json:"fail,omitempty"`
	Asked  string `json:"asked,omitempty"`
}

// maxLine bounds a line of the wire or of the child's log.
const maxLine = 1 << 20

// Encoder writes messages, one a line. It is safe for concurrent use.
type Encoder struct {
	mu sync.Mutex
	w  io.Writer
}

// NewEncoder writes to w.
func NewEncoder(w io.Writer) *Encoder { return &Encoder{w: w} }

// Send writes m as one line.
func (e *Encoder) Send(m Message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	_, err = e.w.Write(append(b, '\n'))
	return err
}

// Decoder reads messages, one a line. It is not safe for concurrent use.
type Decoder struct{ s *bufio.Scanner }

// NewDecoder reads from r.
func NewDecoder(r io.Reader) *Decoder {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 4096), maxLine)
	return &Decoder{s: s}
}

// LineError is a line of the wire that is not one message (not JSON, no
// field or several set); the decoder reads on after it.
type LineError struct{ Line, Why string }

func (e *LineError) Error() string { return fmt.Sprintf("link: %s: %.100q", e.Why, e.Line) }

// Next reads the next message; io.EOF at the end of the input. A line
// that is not one message is a *LineError, and the next call reads on;
// any other error (a line longer than a MiB, a read error) ends the
// input.
func (d *Decoder) Next() (Message, error) {
	if !d.s.Scan() {
		if err := d.s.Err(); err != nil {
			return Message{}, err
		}
		return Message{}, io.EOF
	}
	var m Message
	if err := json.Unmarshal(d.s.Bytes(), &m); err != nil {
		return Message{}, &LineError{Line: d.s.Text(), Why: "not a message"}
	}
	n := 0
	for _, set := range []bool{m.Start != nil, m.Pushed != "", m.Ready != nil, m.Fail != nil, m.Asked != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return Message{}, &LineError{Line: d.s.Text(), Why: fmt.Sprintf("a message with %d fields set, want 1", n)}
	}
	return m, nil
}
