// Package hookclient is the client side of refci serve's hook channel
// (see package sshd) and its wire: receive-pack's hooks under refci
// serve exec a hook client, which sends what git gave the hook, with the
// session's token, as one JSON Request over the server's Unix socket,
// reads one JSON Response, prints its message to the pusher and exits
// with the hook's verdict.
//
// Every push runs the hook client once per updated ref and once more at
// its end, so its start-up is on every push's path: this package imports
// nothing but the standard library's basics, and cmd/refci-hook, which is
// this package and a main, starts in a fraction of the full refci's
// time. The full refci runs the same code (refci __hook).
package hookclient

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// The environment of receive-pack under refci serve, which its hooks
// inherit.
const (
	EnvSocket = "REFCI_HOOK_SOCKET" // the server's hook socket
	EnvToken  = "REFCI_HOOK_TOKEN"  // this receive-pack's random token
	EnvCreate = "REFCI_HOOK_CREATE" // set when the push creates the repository
)

// MaxIO bounds a hook's standard input and the server's answer. A
// push whose list of refs passes it is refused at pre-receive, said in so
// many words; post-receive, which cannot refuse, sends the whole lines
// that fit and says that the rest waits for the workers' next poll.
const MaxIO = 32 << 20

// MaxRequest bounds a Request as the server reads it: MaxIO of standard
// input, which JSON may escape to twice its size, and room for the rest.
const MaxRequest = 2*MaxIO + 1<<20

// MaxPushOptions is how many of a push's options a Request carries at
// most; git's own limit is lower.
const MaxPushOptions = 100

// Timeout bounds one hook's exchange with the server.
const Timeout = 2 * time.Minute

// Request is what a hook sends: the hook's name ("pre-receive",
// "update" or "post-receive"), git's arguments to it, its standard input
// (pre- and post-receive), the push options and the quarantine.
type Request struct {
	Token   string   `json:"token"`
	Hook    string   `json:"hook"`
	Args    []string `json:"args,omitempty"`
	Stdin   string   `json:"stdin,omitempty"`
	Options []string `json:"options,omitempty"`
	// Quarantine is receive-pack's GIT_QUARANTINE_PATH: where the pushed
	// objects wait until every hook said yes.
	Quarantine string `json:"quarantine,omitempty"`
}

// Response is the server's answer: OK is the hook's verdict (false
// refuses the ref, or the push), Message what the pusher sees.
type Response struct {
	OK      bool   `json:"ok"`
	Message string `json:"message,omitempty"`
}

// Main is the hook client: args are the hook's name and git's arguments
// to it, getenv and stdin the hook's environment and input, stderr where
// the server's message goes (git relays it to the pusher as
// "remote: ..."). It returns the hook's exit code: 0 when the server
// said yes, 1 otherwise, and 1 when the server cannot be asked.
func Main(args []string, getenv func(string) string, stdin io.Reader, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "refci: internal hook called without a name")
		return 1
	}
	sock, token := getenv(EnvSocket), getenv(EnvToken)
	if sock == "" || token == "" {
		fmt.Fprintln(stderr, "refci: this hook runs only under refci serve")
		return 1
	}
	req := Request{Token: token, Hook: args[0], Args: args[1:], Quarantine: getenv("GIT_QUARANTINE_PATH")}
	if req.Hook == "pre-receive" || req.Hook == "post-receive" {
		b, err := io.ReadAll(io.LimitReader(stdin, MaxIO+1))
		if err != nil {
			fmt.Fprintf(stderr, "refci: hook: %v\n", err)
			return 1
		}
		if len(b) > MaxIO {
			if req.Hook == "pre-receive" {
				fmt.Fprintf(stderr, "refci: push refused: the list of refs it updates passes %d MiB; push fewer refs at once\n", MaxIO>>20)
				return 1
			}
			b = b[:bytes.LastIndexByte(b[:MaxIO], '\n')+1]
			io.Copy(io.Discard, stdin) // git waits for its hook to read all
			fmt.Fprintf(stderr, "refci: note: this push updated more refs than one hook call carries (%d MiB of them): the first %d are dispatched now, the rest at the workers' next poll\n", MaxIO>>20, bytes.Count(b, []byte("\n")))
		}
		req.Stdin = string(b)
	}
	if n, err := strconv.Atoi(getenv("GIT_PUSH_OPTION_COUNT")); err == nil {
		for i := 0; i < n && i < MaxPushOptions; i++ {
			req.Options = append(req.Options, getenv("GIT_PUSH_OPTION_"+strconv.Itoa(i)))
		}
	}
	resp, err := Ask(sock, &req)
	if err != nil {
		fmt.Fprintf(stderr, "refci: %v\n", err)
		return 1
	}
	if resp.Message != "" {
		fmt.Fprint(stderr, strings.TrimRight(resp.Message, "\n")+"\n")
	}
	if !resp.OK {
		return 1
	}
	return 0
}

// Ask sends req to the hook socket at sock and returns the answer.
func Ask(sock string, req *Request) (*Response, error) {
	conn, err := net.DialTimeout("unix", sock, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("the server's hook socket is not answering: %w", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(Timeout))
	// Without HTML escaping, JSON at most doubles the input (ref names
	// hold no control characters or backslashes; a quote is two bytes),
	// which MaxRequest allows for.
	enc := json.NewEncoder(conn)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(req); err != nil {
		return nil, fmt.Errorf("hook: sending to the server: %w", err)
	}
	var resp Response
	if err := json.NewDecoder(io.LimitReader(conn, MaxIO)).Decode(&resp); err != nil {
		return nil, fmt.Errorf("hook: no answer from the server: %w", err)
	}
	return &resp, nil
}
