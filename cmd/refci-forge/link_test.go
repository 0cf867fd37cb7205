package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/cmd/internal/cli"
	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/forge/link"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// linkRun runs refci-forge link in this process on pipes, as a worker's
// child: it returns the worker's ends and the exit code once it ends.
func linkRun(t *testing.T, args ...string) (*link.Encoder, *link.Decoder, io.Closer, *fixtures.Buffer, chan int) {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	var log fixtures.Buffer
	done := make(chan int, 1)
	go func() {
		code := run(context.Background(), append([]string{link.Mode}, args...), inR, outW, &log)
		outW.Close()
		inR.Close()
		done <- code
	}()
	return link.NewEncoder(inW), link.NewDecoder(outR), inW, &log, done
}

// As a worker's child, refci-forge reads [[forge]] from the worker's
// configuration and the remotes from its start message, says ready,
// shows the remote's runs on the forge (a wake-up makes it look at
// once), and stops when its input ends.
func TestLinkMode(t *testing.T) {
	k := addFakeKind(t)
	dir := t.TempDir()
	t.Setenv("REFCI_HOME", filepath.Join(dir, "home"))
	tok := writeToken(t, dir, "token", "tok", 0o600)
	bare := fixtures.BareRepo(t, "app.git")
	cfg := filepath.Join(dir, "worker.toml")
	// The worker's own settings are the worker's: refci-forge leaves them.
	body := fmt.Sprintf("remotes = [%q]\nconcurrency = 2\n[retention]\nevery = \"24h\"\n[[forge]]\nkind = \"fake\"\nrepo = \"org/app\"\ntoken_file = %q\n", bare, tok)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	enc, dec, in, log, done := linkRun(t, "--config", cfg)
	// A poll of an hour: the wake-ups make the mirror look.
	if err := enc.Send(link.Message{Start: &link.Start{Version: link.Version, Remotes: []string{bare}, Cache: filepath.Join(dir, "cache"), Poll: link.Duration{Duration: time.Hour}}}); err != nil {
		t.Fatal(err)
	}
	m, err := dec.Next()
	if err != nil || m.Ready == nil || m.Ready.Mirrors != 1 || m.Ready.Mail {
		t.Fatalf("%+v, %v; want ready with one mirror; log:\n%s", m, err, log.String())
	}
	repo, err := gitproto.Open(bare)
	if err != nil {
		t.Fatal(err)
	}
	head := resultcommit.Commit(t, repo, map[string]string{"README": "x"}, "change", nil).String()
	st := &queue.Status{Format: queue.Format, State: queue.Success, Target: head, Request: "ci", Run: queue.NewRunID(time.Now()),
		Attempt: 1, Worker: strings.Repeat("ab", 20), Started: time.Now().UTC(), Jobs: []queue.Job{}, Artifacts: []queue.Artifact{}, ExitCode: queue.IntPtr(0)}
	resultcommit.Write(t, repo, st, gitproto.ZeroHash, nil, nil)
	fixtures.WaitFor(t, time.Minute, "the status, after a wake-up", func() bool {
		enc.Send(link.Message{Pushed: bare})
		s := k.forge("org/app").StatusesOf(head)
		return len(s) == 1 && s[0].State == queue.Success
	})
	in.Close()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d:\n%s", code, log.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("refci-forge link did not stop at the end of its input")
	}
}

// A mistake in [[forge]] or [mail] is a fail message with exit 2, the
// line the worker prints; refci-forge then exits 2.
func TestLinkModeRefusesMistakes(t *testing.T) {
	addFakeKind(t)
	dir := t.TempDir()
	t.Setenv("REFCI_HOME", filepath.Join(dir, "home"))
	open := writeToken(t, dir, "open", "tok", 0o644)
	pw := writeToken(t, dir, "pw", "pw", 0o600)
	bare := fixtures.BareRepo(t, "app.git")
	for _, tc := range []struct{ name, body, want string }{
		{"readable token", fmt.Sprintf("[[forge]]\nkind = \"fake\"\nrepo = \"org/app\"\ntoken_file = %q\n", open), "can be read by others (mode 0644): run chmod 600 " + open},
		{"another remote", "[[forge]]\nkind = \"fake\"\nrepo = \"org/app\"\nremote = \"file:///elsewhere.git\"\n", "is not one of the worker's remotes"},
		{"mail remote", fmt.Sprintf("[mail]\nimap = \"imaps://mail.example.org\"\nsmtp = \"smtps://mail.example.org\"\nuser = \"ci\"\npassword_file = %q\nfrom = \"ci@example.org\"\nremote = \"file:///elsewhere.git\"\n", pw), "[mail]: remote file:///elsewhere.git is not one of the worker's remotes"},
		{"a bad type", "[[forge]]\nkind = \"fake\"\napp_id = \"one\"\n", "app_id"},
	} {
		cfg := filepath.Join(dir, "worker.toml")
		if err := os.WriteFile(cfg, []byte(tc.body), 0o644); err != nil {
			t.Fatal(err)
		}
		enc, dec, in, log, done := linkRun(t, "--config", cfg)
		enc.Send(link.Message{Start: &link.Start{Version: link.Version, Remotes: []string{bare}, Cache: filepath.Join(dir, "cache")}})
		m, err := dec.Next()
		if err != nil || m.Fail == nil || m.Fail.Exit != cli.ExitUsage || !strings.HasPrefix(m.Fail.Error, "config "+cfg+": ") || !strings.Contains(m.Fail.Error, tc.want) {
			t.Errorf("%s: %+v, %v; want a fail with exit 2 saying %q; log:\n%s", tc.name, m.Fail, err, tc.want, log.String())
		}
		in.Close()
		if code := <-done; code != cli.ExitUsage {
			t.Errorf("%s: exit %d", tc.name, code)
		}
	}
}

// Built, refci-forge says what it is run as, and its link mode refuses
// to run by hand.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds refci-forge")
	}
	exe := fixtures.BuildBinary(t, ".", "refci-forge")
	out, err := exec.Command(exe).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "refci mirror --config FILE") {
		t.Errorf("no arguments: %q, %v", out, err)
	}
	cmd := exec.Command(exe, "link", "--config", "/nonexistent.toml")
	cmd.Stdin = strings.NewReader("")
	out, err = cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "started by refci worker, not by hand") {
		t.Errorf("link by hand: %q, %v", out, err)
	}
	if out, err := exec.Command(exe, "--version").Output(); err != nil || !strings.HasPrefix(string(out), "refci-forge ") {
		t.Errorf("--version: %q, %v", out, err)
	}

	// It holds the forges' and the mail's secrets beside pipelines of
	// its user: it is not dumpable, so its /proc/PID/mem (and root, and
	// environ) belong to root, not to that user. Seen by running it as
	// nobody, which needs root and setpriv.
	setpriv, err := exec.LookPath("setpriv")
	if os.Geteuid() != 0 || err != nil {
		t.Log("not root, or no setpriv: the dumpable check is skipped")
		return
	}
	dir, err := os.MkdirTemp("", "refci-forge-dump-") // nobody must reach it
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "refci-forge")
	if b, err := os.ReadFile(exe); err != nil || os.WriteFile(bin, b, 0o755) != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "empty.toml")
	os.WriteFile(cfg, nil, 0o644)
	child := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", bin, "link", "--config", cfg)
	in, err := child.StdinPipe() // it waits for the start message
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { in.Close(); child.Process.Kill(); child.Wait() }()
	mem := fmt.Sprintf("/proc/%d/mem", child.Process.Pid)
	var owner uint32
	fixtures.WaitFor(t, time.Minute, "refci-forge running as nobody", func() bool {
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", child.Process.Pid)); exe != bin {
			return false // setpriv has not exec'd it yet
		}
		fi, err := os.Stat(mem)
		if err != nil {
			return false
		}
		owner = fi.Sys().(*syscall.Stat_t).Uid
		return true
	})
	if owner != 0 {
		t.Errorf("%s belongs to uid %d: refci-forge is dumpable", mem, owner)
	}
}
