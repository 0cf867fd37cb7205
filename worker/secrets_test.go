//go:build linux

package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/worker/jobsock"
	"refci.dev/refci/worker/jobsock/jobclient"
)

type fakeSource map[string]string

func (f fakeSource) Secret(name string) ([]byte, error) {
	v, ok := f[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrSecretNotFound, name)
	}
	return []byte(v), nil
}

func (f fakeSource) Info() SecretsInfo { return SecretsInfo{Commit: "abc"} }

// secretsOnly serves a run's secrets and no jobs.
type secretsOnly struct{ *runSecrets }

func (secretsOnly) OpenLog(string) (jobsock.Log, error) { return nil, errors.New("no jobs") }

// askSecret runs the client against a server using rs.
func askSecret(t *testing.T, rs *runSecrets, name string) (string, string, int) {
	t.Helper()
	dir, err := os.MkdirTemp("", "sec")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	srv, err := jobsock.NewServer(jobsock.Config{SocketPath: sock, Run: secretsOnly{rs}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	code := jobclient.RunSecretCommand(ctx, []string{name}, func(k string) string {
		if k == "REFCI_SOCKET" {
			return sock
		}
		return ""
	}, &out, &errOut)
	return out.String(), errOut.String(), code
}

func TestSecretOpHandsOutAndMasks(t *testing.T) {
	var notes []string
	masks := &MaskSet{}
	rs := &runSecrets{env: "staging", masks: masks, source: fakeSource{"TOKEN": "tok-123456", "SHORT": "abc"},
		note: func(s string) { notes = append(notes, s) }}
	out, errOut, code := askSecret(t, rs, "TOKEN")
	if code != 0 || out != "tok-123456" {
		t.Fatalf("refci secret TOKEN: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	if got := maskAll(t, masks, []byte("x tok-123456 y"), nil); got != "x *** y" {
		t.Errorf("the handed-out value is not masked: %q", got)
	}
	if _, errOut, code := askSecret(t, rs, "SHORT"); code != 1 || !strings.Contains(errOut, "shorter than 6 bytes") || len(notes) != 1 {
		t.Errorf("short value: code %d, stderr %q, log notes %q", code, errOut, notes)
	}
	if _, errOut, code := askSecret(t, rs, "MISSING"); code != 1 || !strings.Contains(errOut, "no such secret") {
		t.Errorf("missing value: code %d, stderr %q", code, errOut)
	}
	if _, errOut, code := askSecret(t, rs, "bad-name"); code != 1 || !strings.Contains(errOut, "not a secret name") {
		t.Errorf("bad name: code %d, stderr %q", code, errOut)
	}
	if got := rs.usedNames(); len(got) != 1 || got[0] != "TOKEN" {
		t.Errorf("used = %q", got)
	}
}

func TestSecretOpWithheld(t *testing.T) {
	rs := &runSecrets{env: "staging", masks: &MaskSet{}, reason: "the request is not trusted", note: func(string) {}}
	out, errOut, code := askSecret(t, rs, "TOKEN")
	if code != 1 || out != "" || !strings.Contains(errOut, `refci secret: TOKEN: the secrets of environment "staging" were withheld from this run: the request is not trusted`) {
		t.Errorf("withheld: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	rs = &runSecrets{masks: &MaskSet{}, note: func(string) {}}
	if _, errOut, code := askSecret(t, rs, "TOKEN"); code != 1 || !strings.Contains(errOut, "no secrets environment") {
		t.Errorf("no env: code %d, stderr %q", code, errOut)
	}
	var out2, err2 bytes.Buffer
	if code := jobclient.RunSecretCommand(context.Background(), []string{"X"}, func(string) string { return "" }, &out2, &err2); code != 2 || !strings.Contains(err2.String(), "not inside a refci pipeline") {
		t.Errorf("outside a pipeline: %d %q", code, err2.String())
	}
}

func TestMaskArtifacts(t *testing.T) {
	dir := t.TempDir()
	masks := &MaskSet{}
	masks.Add([]byte("artifact-secret"))
	write := func(name string, data []byte) artifactFile {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o600)
		return artifactFile{src: p}
	}
	arts := []artifactFile{
		write("clean.txt", []byte("nothing here")),
		write("leak.txt", []byte("token=artifact-secret\n")),
		write("leak.bin", []byte("\x00\x01artifact-secret")),
	}
	arts[0].Path, arts[1].Path, arts[2].Path = "clean.txt", "leak.txt", "leak.bin"
	kept, skipped := maskArtifacts(masks, arts, nil, dir)
	if len(kept) != 2 || len(skipped) != 1 || skipped[0].Path != "leak.bin" || !strings.Contains(skipped[0].Reason, "binary file holding a secret") {
		t.Fatalf("kept %+v, skipped %+v", kept, skipped)
	}
	b, _ := os.ReadFile(kept[1].src)
	if string(b) != "token=***\n" || kept[1].Size != int64(len(b)) {
		t.Errorf("masked copy %q, size %d", b, kept[1].Size)
	}
}

// Every run's socket lives in a directory of the same Unix user: the
// server must refuse a process that is not part of its run, such as the
// pipeline of another run, and serve the run's own processes.
func TestSocketServesOnlyItsOwnRun(t *testing.T) {
	dir, err := os.MkdirTemp("", "sec")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	rs := &runSecrets{env: "staging", masks: &MaskSet{}, source: fakeSource{"TOKEN": "tok-123456"}, note: func(string) {}}
	srv, err := jobsock.NewServer(jobsock.Config{SocketPath: sock, Run: secretsOnly{rs}, OwnTree: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ask := func() (string, string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var out, errOut bytes.Buffer
		code := jobclient.RunSecretCommand(ctx, []string{"TOKEN"}, func(k string) string {
			if k == "REFCI_SOCKET" {
				return sock
			}
			return ""
		}, &out, &errOut)
		return out.String(), errOut.String(), code
	}
	// The run's process may connect before its starter calls Admit
	// (the process runs as soon as it starts): it is served once Admit
	// says who the run is, not refused.
	type answer struct {
		out, errOut string
		code        int
	}
	early := make(chan answer, 1)
	go func() { out, errOut, code := ask(); early <- answer{out, errOut, code} }()
	time.Sleep(200 * time.Millisecond) // most likely connected by now; served either way
	srv.Admit(os.Getpid())
	if a := <-early; a.code != 0 || a.out != "tok-123456" {
		t.Errorf("connected before Admit: code %d, stdout %q, stderr %q", a.code, a.out, a.errOut)
	}
	// The run is another process tree (a sleep standing in for it): this
	// test process is outside it.
	other := exec.Command("sleep", "30")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	srv.Admit(other.Process.Pid)
	if out, errOut, code := ask(); code == 0 || out != "" || !strings.Contains(errOut, "not part of this run") {
		t.Errorf("from another process tree: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	// The test process's parent is outside too; its own tree is inside.
	srv.Admit(os.Getppid())
	if out, _, code := ask(); code != 0 || out != "tok-123456" {
		t.Errorf("from a descendant of the run's root: code %d, stdout %q", code, out)
	}
	srv.Admit(os.Getpid())
	if out, _, code := ask(); code != 0 || out != "tok-123456" {
		t.Errorf("from the run's root itself: code %d, stdout %q", code, out)
	}
}

// A run socket that takes connections but never answers (a stuck worker)
// makes `refci secret` give up with a clear error and exit 3, instead of
// blocking the pipeline until its timeout. Both a listener that never
// accepts (the kernel queues the connection) and one that accepts and
// then reads nothing, or reads and never replies.
func TestSecretCommandTimesOutOnASilentSocket(t *testing.T) {
	for _, mode := range []string{"never accepts", "accepts, never reads", "reads, never answers"} {
		t.Run(mode, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "sec")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			sock := filepath.Join(dir, "s")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := make(chan []byte, 1)
			over := make(chan struct{})
			defer close(over)
			if mode != "never accepts" {
				go func() {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					defer c.Close()
					if mode == "reads, never answers" {
						b := make([]byte, 4096)
						n, _ := c.Read(b)
						got <- b[:n]
					}
					<-over // holds the connection open, silent, until the test ends
				}()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
			defer cancel()
			var out, errOut bytes.Buffer
			done := make(chan int, 1)
			go func() {
				done <- jobclient.RunSecretCommand(ctx, []string{"TOKEN"}, func(k string) string {
					if k == "REFCI_SOCKET" {
						return sock
					}
					return ""
				}, &out, &errOut)
			}()
			var code int
			select {
			case code = <-done:
			case <-time.After(60 * time.Second):
				t.Fatal("refci secret still waits after 60 s")
			}
			if code != 3 || out.Len() != 0 || !strings.Contains(errOut.String(), "refci did not answer on REFCI_SOCKET="+sock+" within") ||
				!strings.Contains(errOut.String(), "see its log") {
				t.Errorf("code %d, stdout %q, stderr %q; want 3 and a clear timeout error", code, out.String(), errOut.String())
			}
			if mode == "reads, never answers" {
				if b := <-got; !strings.Contains(string(b), `"op":"secret"`) {
					t.Errorf("the question sent was %q", b)
				}
			}
		})
	}
}
