//go:build linux

package mail

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/worker"
	"refci.dev/refci/worker/proc"
)

// Run as a run's shim, the test binary is one, as the refci binary is.
func init() {
	if len(os.Args) > 1 && os.Args[1] == proc.ShimArg {
		syscall.Exit(proc.ShimMain(os.Args[2:]))
	}
}

// The whole path with a real worker on the remote: the series' own
// .refci/run runs, and its failure reaches the thread with its log.
func TestBridgeRealWorker(t *testing.T) {
	w := newWorld(t)
	w.running.Store(false) // the stand-in worker stays idle
	// A project with a pipeline, and a series that breaks it.
	w.work = fixtures.NewRepo(t)
	fixtures.WriteFile(t, w.work, ".refci/run", "#!/bin/sh\necho testing\nif [ -e FAIL ]; then echo 'FAIL is there' >&2; exit 3; fi\necho fine\n", 0o755)
	fixtures.WriteFile(t, w.work, "a.txt", "one\n", 0o644)
	w.base = fixtures.CommitAll(t, w.work, "base")
	fixtures.Git(t, w.work, "branch", "-M", "main")
	fixtures.Git(t, w.work, "push", "-q", "--force", w.bare, "main")
	fixtures.Git(t, w.work, "checkout", "-q", "-b", "topic")
	fixtures.WriteFile(t, w.work, "a.txt", "two\n", 0o644)
	fixtures.CommitAll(t, w.work, "a: two")
	fixtures.WriteFile(t, w.work, "FAIL", "yes\n", 0o644)
	fixtures.CommitAll(t, w.work, "add FAIL")

	wk := worker.New(worker.Config{Poll: 100 * time.Millisecond, Lease: time.Minute, Grace: 5 * time.Second,
		Signer: fixtures.OpenPGPIdentity(t, "Test Worker"), RefciPath: fixtures.Executable(t), TempDir: t.TempDir()})
	rem, err := gitproto.OpenRemote(w.bare, filepath.Join(t.TempDir(), "cache.git"), nil)
	if err != nil {
		t.Fatal(err)
	}
	wk.AddRemote(rem)
	stop, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- wk.Run(stop, stop) }()
	t.Cleanup(func() { cancel(); <-done })

	w.mail.deliver(w.series("--base="+w.base, "--cover-letter", "--thread", "main..topic")...)
	snd := &recSender{}
	b, _ := w.bridge("one", "", snd, nil)
	got := waitMails(t, snd, 1)
	hdr, body := parseMail(t, got[0].raw)
	if s := hdr.Header.Get("X-Refci-State"); s != "failure" {
		t.Errorf("state %q:\n%s", s, body)
	}
	for _, want := range []string{"it FAILED: .refci/run exited with code 3.", "FAIL is there", "Mailed patches run untrusted"} {
		if !strings.Contains(body, want) {
			t.Errorf("the reply lacks %q:\n%s", want, body)
		}
	}
	settle(t, b)
	if n := len(snd.mails()); n != 1 || len(w.runs()) != 1 {
		t.Errorf("%d replies, runs %v", n, w.runs())
	}
}
