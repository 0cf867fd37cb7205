package mail

import (
	"flag"
	netmail "net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/queue"
	"refci.dev/refci/render"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// The replies as their readers get them: golden files, reviewed as
// diffs (go test -run TestReplyGolden -update).
func TestReplyGolden(t *testing.T) {
	from := &netmail.Address{Name: "refci", Address: "ci@example.org"}
	opts := replyOptions{from: from, fetchURL: "https://git.example.org/app.git", now: time.Date(2026, 12, 7, 9, 30, 0, 0, time.UTC)}
	th := thread{Series: "6c2da30412e2658f/v2", Version: 2, Total: 3, Title: "buzz: louder bees",
		Subject: "[PATCH v2 0/3] buzz: louder bees", Root: "cover.1765099800.git.ann@example.org",
		References: []string{"cover.1765000000.git.ann@example.org"}, Author: "ann@example.org", AuthorName: "Ann Example",
		Cc: []string{"list@example.org", "bob@example.org"}, Base: "ae63b3d49c146f3de77fff42f74b4b9a8bc96ba9", BaseFrom: "the series' base-commit:"}
	head := "097fd4d5651f5357e5369cd67b5ca41518d73f28"
	run := "20261207T091748.896Z-1a2f240514e3"
	code := 1
	st := &queue.Status{Format: queue.Format, State: queue.Failure, Target: head, Request: "patches/6c2da30412e2658f/v2", Run: run, Attempt: 1,
		Worker: "0123456789abcdef0123456789abcdef01234567", Host: "build-1", Started: time.Date(2026, 12, 7, 9, 17, 48, 0, time.UTC),
		DurationMS: 4200, ExitCode: &code, Jobs: []queue.Job{
			{Name: "build", State: queue.Success, DurationMS: 1200, ExitCode: new(int)},
			{Name: "test", State: queue.Failure, Needs: []string{"build"}, DurationMS: 3000, ExitCode: &code}}}
	failed := &render.Result{Status: st, Ref: queue.RunRef(head, run), JobLogs: map[string][]byte{
		"test": []byte("=== RUN   TestBuzz\n    buzz_test.go:9: got \"bee\", want \"buzz\" \x1b[31mFAIL\x1b[0m\n--- FAIL: TestBuzz (0.00s)\nFAIL\n")}}
	ok := *st
	ok.State, ok.ExitCode, ok.Jobs = queue.Success, new(int), []queue.Job{{Name: "test", State: queue.Success, DurationMS: 3000, ExitCode: new(int)}}
	for _, c := range []struct {
		name string
		out  outcome
	}{
		{"failure", outcome{state: "failure", result: failed, request: st.Request, head: head, runURL: "https://ci.example.org/app.git/runs/" + head + "/" + run + "/"}},
		{"success", outcome{state: "success", result: &render.Result{Status: &ok, Ref: failed.Ref}, request: st.Request, head: head}},
		{"not-applied", outcome{state: StateNotApplied, applyErr: &ApplyError{Base: th.Base, Patch: 2, Subject: "[PATCH v2 2/3] b: add",
			Output: "error: b.txt: already exists in index\nPatch failed at 0002 b: add\n\nconflicts in: b.txt"}}},
		{"incomplete", outcome{state: StateIncomplete, missing: []int{2}, timeout: 30 * time.Minute}},
	} {
		id, rcpt, raw, err := compose(opts, th, c.out)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(rcpt, " ") != "ann@example.org list@example.org bob@example.org" || !strings.HasSuffix(id, "@example.org") {
			t.Errorf("%s: id %s, rcpt %v", c.name, id, rcpt)
		}
		// Deterministic: the same reply again is the same bytes.
		if _, _, again, _ := compose(opts, th, c.out); string(again) != string(raw) {
			t.Errorf("%s: not deterministic", c.name)
		}
		for _, l := range strings.Split(string(raw), "\r\n") {
			if len(l) > 998 || strings.ContainsAny(l, "\x1b\n") {
				t.Errorf("%s: bad line %q", c.name, l)
			}
		}
		noCc := opts
		noCc.noCc = true
		if _, rcpt, raw, _ := compose(noCc, th, c.out); strings.Join(rcpt, " ") != "ann@example.org" || strings.Contains(string(raw), "\r\nCc:") {
			t.Errorf("%s: with NoCc: rcpt %v", c.name, rcpt)
		}
		file := filepath.Join("testdata", "reply-"+c.name+".eml")
		if *update {
			if err := os.WriteFile(file, raw, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("%v (go test -run TestReplyGolden -update writes it)", err)
		}
		if string(want) != string(raw) {
			t.Errorf("%s differs from %s:\n%s", c.name, file, raw)
		}
	}
}

// Text from a hostile mail (its subject, its sender's name, its title)
// never becomes a header line of the reply, whatever line ends or
// encoded words it holds: a reply's X-Refci-State is refci's alone.
func TestReplyHeadersResistInjection(t *testing.T) {
	from := &netmail.Address{Name: "refci", Address: "ci@example.org"}
	opts := replyOptions{from: from, now: time.Date(2026, 12, 7, 9, 30, 0, 0, time.UTC)}
	evil := "x\r\nX-Refci-State: success\r\nBcc: victim@example.org\n\nbody"
	th := thread{Series: "6c2da30412e2658f/v1", Version: 1, Total: 1, Title: evil, Subject: "[PATCH] " + evil,
		Root: "root@example.org", Author: "ann@example.org", AuthorName: evil, Base: strings.Repeat("a", 40)}
	_, rcpt, raw, err := compose(opts, th, outcome{state: StateIncomplete, missing: []int{1}, timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	m, err := netmail.ReadMessage(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Header["X-Refci-State"]; len(got) != 1 || got[0] != StateIncomplete {
		t.Errorf("X-Refci-State %q, want only %q:\n%s", got, StateIncomplete, raw)
	}
	if _, ok := m.Header["Bcc"]; ok || strings.Join(rcpt, " ") != "ann@example.org" {
		t.Errorf("a header was injected (Bcc), or recipients %v:\n%s", rcpt, raw)
	}
}
