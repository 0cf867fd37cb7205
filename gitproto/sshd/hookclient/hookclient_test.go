package hookclient

import (
	"encoding/json"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// What Main sends and prints, against a stand-in server on a real Unix
// socket (gitproto/sshd's tests run it against the real server).
func TestMainSendsTheHookAndPrintsTheAnswer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "hook.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan Request, 1)
	answers := make(chan Response, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var req Request
			json.NewDecoder(c).Decode(&req)
			got <- req
			json.NewEncoder(c).Encode(<-answers)
			c.Close()
		}
	}()
	env := map[string]string{EnvSocket: sock, EnvToken: "tok", "GIT_QUARANTINE_PATH": "/q", "GIT_PUSH_OPTION_COUNT": "200"}
	for i := 0; i < 200; i++ {
		env["GIT_PUSH_OPTION_"+strconv.Itoa(i)] = "o" + strconv.Itoa(i)
	}
	line := strings.Repeat("0", 40) + " " + strings.Repeat("1", 40) + " refs/ci/requests/x\n"

	answers <- Response{OK: true, Message: "refci: request x queued\n\n"}
	var stderr strings.Builder
	if code := Main([]string{"post-receive"}, func(k string) string { return env[k] }, strings.NewReader(line), &stderr); code != 0 {
		t.Errorf("exit %d", code)
	}
	req := <-got
	if req.Token != "tok" || req.Hook != "post-receive" || req.Stdin != line || req.Quarantine != "/q" || len(req.Options) != MaxPushOptions || req.Options[99] != "o99" {
		t.Errorf("sent %+v", req)
	}
	if stderr.String() != "refci: request x queued\n" {
		t.Errorf("printed %q", stderr.String())
	}

	// update: the arguments, no standard input; a refusal exits 1.
	answers <- Response{Message: "refci: refused refs/heads/x: no"}
	stderr.Reset()
	if code := Main([]string{"update", "refs/heads/x", "a", "b"}, func(k string) string { return env[k] }, strings.NewReader("not read"), &stderr); code != 1 {
		t.Errorf("exit %d on a refusal", code)
	}
	req = <-got
	if req.Hook != "update" || strings.Join(req.Args, " ") != "refs/heads/x a b" || req.Stdin != "" {
		t.Errorf("sent %+v", req)
	}
	if stderr.String() != "refci: refused refs/heads/x: no\n" {
		t.Errorf("printed %q", stderr.String())
	}
}

// A push whose list of refs passes MaxIO: pre-receive refuses it in so
// many words and asks nothing; post-receive sends the whole lines that
// fit, which the server can read, and says that the rest waits.
func TestMainOverlongInput(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "hook.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan Request, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var req Request
			// As the server reads it (gitproto/sshd's hookServer).
			if err := json.NewDecoder(io.LimitReader(c, MaxRequest)).Decode(&req); err != nil {
				req.Hook = "undecodable: " + err.Error()
			}
			got <- req
			json.NewEncoder(c).Encode(Response{OK: true})
			c.Close()
		}
	}()
	env := map[string]string{EnvSocket: sock, EnvToken: "tok"}
	getenv := func(k string) string { return env[k] }
	// Quotes and ampersands, which JSON escapes, in a legal ref name.
	line := strings.Repeat("0", 40) + " " + strings.Repeat("1", 40) + ` refs/ci/requests/"&"&"&"&"&"&"&"&"&"&"&"&` + "\n"
	n := MaxIO/len(line) + 10
	input := strings.Repeat(line, n)

	var stderr strings.Builder
	if code := Main([]string{"pre-receive"}, getenv, strings.NewReader(input), &stderr); code != 1 {
		t.Errorf("pre-receive: exit %d, want 1", code)
	}
	if !strings.Contains(stderr.String(), "push refused") || !strings.Contains(stderr.String(), "push fewer refs at once") {
		t.Errorf("pre-receive printed %q", stderr.String())
	}
	select {
	case req := <-got:
		t.Errorf("pre-receive asked the server: %s", req.Hook)
	default:
	}

	stderr.Reset()
	if code := Main([]string{"post-receive"}, getenv, strings.NewReader(input), &stderr); code != 0 {
		t.Errorf("post-receive: exit %d, want 0 (%s)", code, stderr.String())
	}
	req := <-got
	if req.Hook != "post-receive" {
		t.Fatalf("the server read %q", req.Hook)
	}
	want := MaxIO / len(line)
	if len(req.Stdin) != want*len(line) || !strings.HasSuffix(req.Stdin, "\n") || req.Stdin != input[:len(req.Stdin)] {
		t.Errorf("sent %d bytes, want the first %d whole lines (%d bytes)", len(req.Stdin), want, want*len(line))
	}
	if !strings.Contains(stderr.String(), "the first "+strconv.Itoa(want)+" are dispatched now") {
		t.Errorf("post-receive printed %q", stderr.String())
	}
}
