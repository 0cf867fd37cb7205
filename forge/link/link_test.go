package link

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
)

// The test binary is also the child of these tests: with LINK_TEST_CHILD
// set it plays refci-forge link in the way the variable names.
func TestMain(m *testing.M) {
	if how := os.Getenv("LINK_TEST_CHILD"); how != "" {
		os.Exit(fakeChild(how))
	}
	os.Exit(m.Run())
}

// fakeChild is a child that, by how: "echo" says ready and answers each
// pushed with an asked of the same URL (after logging it); "fail" refuses
// its configuration; "crash" exits before a word; "mute" is ready and
// ignores the end of its input.
func fakeChild(how string) int {
	p, err := Accept(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	switch how {
	case "fail":
		p.Fail(2, "config x.toml: [[forge]] 1 (gitea org/app): no token_file")
		return 2
	case "crash":
		return 7
	case "fail0":
		p.Fail(0, "all is well, stop")
		return 0
	case "mute":
		p.Ready(Ready{})
		select {}
	}
	fmt.Fprintf(os.Stderr, "level=INFO msg=\"child started\" remotes=%d cache=%s poll=%s\n", len(p.Start.Remotes), p.Start.Cache, p.Start.Poll.Duration)
	p.Ready(Ready{Mirrors: 1})
	err = p.Listen(func(u string) {
		fmt.Fprintf(os.Stderr, "level=INFO msg=pushed url=%s\n", u)
		p.Asked(u)
	})
	fmt.Fprintf(os.Stderr, "level=INFO msg=\"child stopped\" err=%v\n", err)
	return 0
}

func childConfig(t *testing.T, how string, log io.Writer, asked func(string)) Config {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Config{Path: self, Env: append(os.Environ(), "LINK_TEST_CHILD="+how), Log: log, Asked: asked,
		Start:   Start{Remotes: []string{"https://user:secret@git.example.invalid/app.git"}, Cache: "/cache", Poll: Duration{10 * time.Second}},
		Backoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, StopGrace: 5 * time.Second}
}

// The wire: each message is one line of JSON, decoded as sent; lines
// that are not one message are said and skipped.
func TestWire(t *testing.T) {
	var b bytes.Buffer
	enc := NewEncoder(&b)
	msgs := []Message{
		{Start: &Start{Version: 1, Remotes: []string{"file:///a b\n.git"}, Cache: "/c", Poll: Duration{90 * time.Second}}},
		{Pushed: "file:///a.git"}, {Ready: &Ready{Mirrors: 2, Mail: true}}, {Fail: &Fail{Exit: 2, Error: "config: x\ny"}}, {Asked: "ssh://h/r"},
	}
	for _, m := range msgs {
		if err := enc.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(b.String(), "\n"); n != len(msgs) {
		t.Fatalf("%d lines for %d messages:\n%s", n, len(msgs), b.String())
	}
	if !strings.Contains(b.String(), `{"start":{"v":1,"remotes":["file:///a b\n.git"],"cache":"/c","poll":"1m30s"}}`) {
		t.Errorf("the start message is not as documented:\n%s", b.String())
	}
	b.WriteString("not json\n{}\n{\"pushed\":\"u\",\"asked\":\"u\"}\n{\"asked\":\"last\"}\n")
	dec := NewDecoder(&b)
	for i, want := range msgs {
		got, err := dec.Next()
		if err != nil || fmt.Sprint(got.Start, got.Pushed, got.Ready, got.Fail, got.Asked) == "" {
			t.Fatalf("message %d: %v", i, err)
		}
		if want.Start != nil && (got.Start.Remotes[0] != want.Start.Remotes[0] || got.Start.Poll != want.Start.Poll) ||
			want.Fail != nil && *got.Fail != *want.Fail || want.Ready != nil && *got.Ready != *want.Ready ||
			got.Pushed != want.Pushed || got.Asked != want.Asked {
			t.Errorf("message %d: got %+v, want %+v", i, got, want)
		}
	}
	for i := 0; i < 3; i++ {
		var bad *LineError
		if _, err := dec.Next(); !errors.As(err, &bad) {
			t.Errorf("bad line %d: %v, want a LineError", i, err)
		}
	}
	if m, err := dec.Next(); err != nil || m.Asked != "last" {
		t.Errorf("after the bad lines: %+v, %v", m, err)
	}
	if _, err := dec.Next(); err != io.EOF {
		t.Errorf("at the end: %v", err)
	}
}

// Accept wants a start message of its version first.
func TestAcceptRefuses(t *testing.T) {
	for in, want := range map[string]string{
		"":                         "started by refci worker",
		`{"pushed":"x"}` + "\n":    "not the start message",
		`{"start":{"v":9}}` + "\n": "version 9 of the wire",
	} {
		if _, err := Accept(strings.NewReader(in), io.Discard); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
}

// A real child process: ready, its log reaches the worker's, a pushed
// wake-up comes back as asked, and closing stops it.
func TestChildRoundTrip(t *testing.T) {
	var log fixtures.Buffer
	asked := make(chan string, 10)
	c, err := Open(context.Background(), childConfig(t, "echo", &log, func(u string) { asked <- u }))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Supervise(ctx) }()
	c.Pushed("file:///r.git")
	select {
	case u := <-asked:
		if u != "file:///r.git" {
			t.Errorf("asked %q", u)
		}
	case <-time.After(time.Minute):
		t.Fatalf("no asked back; log:\n%s", log.String())
	}
	cancel()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Supervise did not return")
	}
	out := log.String()
	for _, want := range []string{"msg=\"child started\" remotes=1 cache=/cache poll=10s\n", "msg=pushed url=file:///r.git\n", "msg=\"child stopped\" err=<nil>\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("the child's log lacks %q:\n%s", want, out)
		}
	}
	if c.Starts() != 1 {
		t.Errorf("%d starts", c.Starts())
	}
}

// A refused configuration is a FailError with the child's exit status
// and line; a child that dies without a word is an error too.
func TestOpenFails(t *testing.T) {
	_, err := Open(context.Background(), childConfig(t, "fail", io.Discard, nil))
	var f *FailError
	if !errors.As(err, &f) || f.Exit != 2 || f.Error() != "config x.toml: [[forge]] 1 (gitea org/app): no token_file" {
		t.Errorf("%v, want the child's refusal", err)
	}
	if _, err := Open(context.Background(), childConfig(t, "fail0", io.Discard, nil)); !errors.As(err, &f) || f.Exit != 3 {
		t.Errorf("a refusal asking for exit 0: %v, want exit 3", err)
	}
	if _, err := Open(context.Background(), childConfig(t, "crash", io.Discard, nil)); err == nil || errors.As(err, &f) || !strings.Contains(err.Error(), "exited before it was ready (exit status 7)") {
		t.Errorf("%v", err)
	}
}

// A child killed with SIGKILL is said in the log and started again, and
// wake-ups reach the new one.
func TestChildRestartedAfterKill(t *testing.T) {
	var log, sup fixtures.Buffer
	var mu sync.Mutex
	var got []string
	cfg := childConfig(t, "echo", &log, func(u string) { mu.Lock(); got = append(got, u); mu.Unlock() })
	cfg.Logger = slogTo(&sup)
	c, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Supervise(ctx)
	for round := 1; round <= 2; round++ {
		pid := c.Pid()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		fixtures.WaitFor(t, time.Minute, "the child started again", func() bool { return c.Starts() == round+1 && c.Pid() != 0 && c.Pid() != pid })
		want := fmt.Sprintf("file:///round%d.git", round)
		fixtures.WaitFor(t, time.Minute, "a wake-up through the new child", func() bool {
			c.Pushed(want)
			mu.Lock()
			defer mu.Unlock()
			return len(got) > 0 && got[len(got)-1] == want
		})
	}
	if s := sup.String(); strings.Count(s, "exited; starting it again") != 2 || !strings.Contains(s, "signal: killed") || strings.Count(s, "started again") < 2 {
		t.Errorf("the supervisor's log:\n%s", s)
	}
}

// Before a restart Check is asked: while it refuses (refci-forge replaced
// by another build), no child starts and the log says why; once it
// agrees, the child starts again and wake-ups reach it.
func TestRestartWaitsForCheck(t *testing.T) {
	var sup fixtures.Buffer
	var mu sync.Mutex
	var got []string
	var refuse atomic.Bool
	var checks atomic.Int32
	cfg := childConfig(t, "echo", io.Discard, func(u string) { mu.Lock(); got = append(got, u); mu.Unlock() })
	cfg.Logger = slogTo(&sup)
	cfg.Check = func() error {
		checks.Add(1)
		if refuse.Load() {
			return errors.New("refci-forge is of another build")
		}
		return nil
	}
	c, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if checks.Load() != 0 {
		t.Errorf("Open asked Check %d times", checks.Load())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Supervise(ctx)
	refuse.Store(true)
	pid := c.Pid()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	fixtures.WaitFor(t, time.Minute, "three refused restarts", func() bool { return checks.Load() >= 3 })
	if c.Starts() != 1 || c.Pid() != 0 {
		t.Fatalf("a child started although Check refused: starts %d, pid %d", c.Starts(), c.Pid())
	}
	if s := sup.String(); !strings.Contains(s, "is not started again: restart the worker") || !strings.Contains(s, "of another build") {
		t.Errorf("the supervisor's log:\n%s", s)
	}
	refuse.Store(false)
	fixtures.WaitFor(t, time.Minute, "the child started again", func() bool { return c.Starts() == 2 && c.Pid() != 0 })
	fixtures.WaitFor(t, time.Minute, "a wake-up through the new child", func() bool {
		c.Pushed("file:///after.git")
		mu.Lock()
		defer mu.Unlock()
		return len(got) > 0 && got[len(got)-1] == "file:///after.git"
	})
}

// A child that ignores the end of its input is killed after StopGrace.
func TestStopKillsAMuteChild(t *testing.T) {
	cfg := childConfig(t, "mute", io.Discard, nil)
	cfg.StopGrace = 100 * time.Millisecond
	c, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Supervise(ctx) }()
	// The mute child never exits by itself: Supervise returns only once
	// it killed it, after StopGrace.
	cancel()
	began := time.Now()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Supervise did not return: the mute child was not killed")
	}
	if took := time.Since(began); took < cfg.StopGrace {
		t.Errorf("Supervise returned after %s, before StopGrace (%s)", took, cfg.StopGrace)
	}
}

func slogTo(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// What a worker reads of the child's settings: whether there are any,
// the files to hide, and which keys to leave to the child.
func TestWorkerSettings(t *testing.T) {
	var s WorkerSettings
	if s.Wanted() || len(s.Private("/home")) != 0 {
		t.Errorf("the zero value wants a child or hides %v", s.Private("/home"))
	}
	s.Forges = append(s.Forges, struct {
		TokenFile      string `toml:"token_file"`
		PrivateKeyFile string `toml:"private_key_file"`
	}{TokenFile: "/etc/tok"}, struct {
		TokenFile      string `toml:"token_file"`
		PrivateKeyFile string `toml:"private_key_file"`
	}{PrivateKeyFile: "/etc/app.pem"})
	if got := strings.Join(s.Private("/home"), " "); !s.Wanted() || got != "/home/mirror /etc/tok /etc/app.pem" {
		t.Errorf("hides %q", got)
	}
	s = WorkerSettings{MirrorState: "/var/mirror", Mail: &struct {
		PasswordFile string `toml:"password_file"`
	}{"/etc/pw"}}
	if got := strings.Join(s.Private("/home"), " "); !s.Wanted() || got != "/etc/pw" {
		t.Errorf("mail only: hides %q", got)
	}
	for key, want := range map[string]bool{"forge.kind": true, "forge.private_key_file": true, "mail.ledger_days": true, "mail.kind": false,
		"forge.surprise": false, "forge": false, "poll": false, "retention.every": false, "forge.kind.x": false} {
		if got := IsChildSetting(strings.Split(key, ".")); got != want {
			t.Errorf("%s: %v", key, got)
		}
	}
	if got := strings.Join(WorkerArgs("/w.toml", "", true), " "); got != "--config /w.toml -v" {
		t.Errorf("args %q", got)
	}
}

// Wake-ups sent while the child dies and is started again are dropped or
// delivered, never a crash of the worker.
func TestPushedWhileTheChildDies(t *testing.T) {
	cfg := childConfig(t, "echo", io.Discard, nil)
	c, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Supervise(ctx) }()
	stop := make(chan struct{})
	pushing := make(chan struct{})
	go func() {
		defer close(pushing)
		for {
			select {
			case <-stop:
				return
			default:
				c.Pushed("file:///r.git")
			}
		}
	}()
	for round := 1; round <= 3; round++ {
		fixtures.WaitFor(t, time.Minute, "a child", func() bool { return c.Pid() != 0 && c.Starts() == round })
		syscall.Kill(c.Pid(), syscall.SIGKILL)
	}
	fixtures.WaitFor(t, time.Minute, "the last child", func() bool { return c.Starts() == 4 && c.Pid() != 0 })
	close(stop)
	<-pushing
	cancel()
	<-done
}
