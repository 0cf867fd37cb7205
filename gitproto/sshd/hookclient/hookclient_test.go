package hookclient

import (
	"encoding/json"
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
