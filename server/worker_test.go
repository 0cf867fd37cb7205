package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/gitproto/sshd"
	"refci.dev/refci/queue"
	"refci.dev/refci/results"
	"refci.dev/refci/worker"
)

// The embedded worker serves the repository a push creates, runs its
// request trusted (an admin key pushed it), and claims a request pushed
// later at once, from the push's own hook: its loop would not poll for
// an hour. Real refci (the hooks, the shim), real git over real ssh.
func TestEmbeddedWorkerRunsWhatIsPushed(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("no ssh client")
	}
	refci := fixtures.BuildBinary(t, "refci.dev/refci/cmd/refci", "refci")
	dir := t.TempDir()
	admin := fixtures.SSHKeyFiles(t, dir, "admin")
	var logs fixtures.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	defer func() {
		if t.Failed() {
			t.Logf("log:\n%s", logs.String())
		}
	}()
	srv, err := New(Config{DataDir: filepath.Join(dir, "data"), AdminKeyFiles: []string{admin.Path + ".pub"}, Logger: logger,
		HookCommand: []string{refci, sshd.HookArg}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cfg := WorkerConfig{
		Worker: worker.Config{Poll: time.Hour, Concurrency: 2, Signer: fixtures.OpenPGPIdentity(t, "Embedded Worker"), RefciPath: refci,
			Host: "test", Version: "test", Logger: logger.With("component", "worker")},
		Direct:  true,
		Private: []string{filepath.Join(dir, "refci-home")},
		Self:    refci,
	}
	ew, err := srv.NewWorker(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.NewWorker(cfg); !errors.Is(err, ErrHasWorker) {
		t.Fatalf("a second worker: %v", err)
	}
	for _, p := range []string{srv.Paths().Root, srv.Paths().Roles, filepath.Join(dir, "refci-home")} {
		if !slices.Contains(ew.sandbox.Isolation.Hide, p) {
			t.Errorf("pipelines see %s (hidden: %v)", p, ew.sandbox.Isolation.Hide)
		}
	}
	runsDir := ew.sandbox.RunsDir

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	ran := make(chan error, 1)
	go func() { ran <- ew.Run(ctx, context.Background()) }()

	p := fixtures.NewPipelineRepo(t, "echo hello from the pipeline\n")
	url := "ssh://git@" + ln.Addr().String() + "/app.git"
	sshEnv := "GIT_SSH_COMMAND=ssh -i " + admin.Path + " -o IdentitiesOnly=yes -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o BatchMode=yes -o LogLevel=ERROR"
	push := func(refspecs ...string) {
		t.Helper()
		if out, err := fixtures.RunGit(p.Dir, nil, []string{sshEnv}, append([]string{"push", "-q", url}, refspecs...)...); err != nil {
			t.Fatalf("push %v: %v\n%s", refspecs, err, out)
		}
	}
	repoDir := filepath.Join(srv.Paths().Repos, "app.git")
	final := func(request string) *queue.Status {
		repo, err := gitproto.Open(repoDir)
		if err != nil {
			return nil
		}
		runs, err := results.List(repo, p.Commit)
		if err != nil {
			return nil
		}
		for _, r := range runs {
			if st, err := r.Read(repo); err == nil && st.Request == request && st.State.Final() {
				return st
			}
		}
		return nil
	}
	// The push creates the repository: the worker serves it and runs
	// its request.
	push("main", "main:"+queue.RequestRef("first"))
	fixtures.WaitForShowing(t, 3*time.Minute, "the result of the first request", func() bool { return final("first") != nil }, logs.String)
	st := final("first")
	if st.State != queue.Success || !st.Trusted || !strings.Contains(st.TrustNote, admin.Fingerprint) {
		t.Errorf("first run: state %s, trusted %v (%s)", st.State, st.Trusted, st.TrustNote)
	}
	// A request pushed later is claimed from the push's hook.
	push("main:" + queue.RequestRef("second"))
	fixtures.WaitForShowing(t, 3*time.Minute, "the result of the second request", func() bool { return final("second") != nil }, logs.String)
	if st := final("second"); st.State != queue.Success {
		t.Errorf("second run: %s", st.State)
	}

	stop()
	for what, ch := range map[string]chan error{"Serve": served, "Run": ran} {
		select {
		case err := <-ch:
			if err != nil {
				t.Errorf("%s: %v", what, err)
			}
		case <-time.After(2 * time.Minute):
			t.Fatalf("%s did not return once its context ended", what)
		}
	}
	ew.Close()
	if _, err := os.Stat(runsDir); !os.IsNotExist(err) {
		t.Errorf("the runs directory is left after Close: %v", err)
	}
	if srv.worker.Load() != nil {
		t.Error("Close left the worker attached")
	}
}

// A nil Worker is a server without one: Run waits for stop, Close does
// nothing, and the server's hooks pass it by.
func TestNoWorker(t *testing.T) {
	var ew *Worker
	ew.addRepo("app.git")
	ew.pushed("/x", []string{"a"})
	ew.allowed("/x", "a", strings.Repeat("0", 40))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ew.Run(ctx, context.Background()) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Run of a nil worker did not return once stopped")
	}
	ew.Close()
}
