package server

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/fixtures/resultcommit"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/results"
)

// newTestServer is a server in a temporary directory with one admin key,
// logging to log.
func newTestServer(t *testing.T, log *fixtures.Buffer) *Server {
	t.Helper()
	dir := t.TempDir()
	admin := fixtures.SSHKeyFiles(t, dir, "admin")
	srv, err := New(Config{DataDir: filepath.Join(dir, "data"), AdminKeyFiles: []string{admin.Path + ".pub"},
		Logger: slog.New(slog.NewTextHandler(log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// Retention collects in every repository the server holds, in the
// repository itself: here one pass keeps the newest run of a request.
func TestRetentionCollectsInEveryRepository(t *testing.T) {
	var log fixtures.Buffer
	srv := newTestServer(t, &log)
	w := fixtures.OpenPGPIdentity(t, "Test Worker")
	target := strings.Repeat("ab", 20) // a commit no branch points at
	var dirs []string
	for _, name := range []string{"app.git", "org/lib.git"} {
		dir := filepath.Join(srv.Paths().Repos, filepath.FromSlash(name))
		fixtures.Git(t, "", "init", "-q", "--bare", dir)
		repo, err := gitproto.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		for i := 3; i > 0; i-- {
			started := time.Now().Add(-time.Duration(i) * 48 * time.Hour).UTC().Truncate(time.Second)
			st := &queue.Status{Format: queue.Format, State: queue.Success, Target: target, Request: "main", Run: queue.NewRunID(started),
				Attempt: 1, Worker: w.Fingerprint(), Started: started, Jobs: []queue.Job{}, Artifacts: []queue.Artifact{}}
			resultcommit.Write(t, repo, st, gitproto.ZeroHash, w, nil)
		}
		dirs = append(dirs, dir)
	}
	srv.Retention(results.Retention{KeepLast: 1, KeepDays: 0}, 0).Run(context.Background())
	for _, dir := range dirs {
		repo, err := gitproto.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		if refs, err := repo.Refs(queue.RunsPrefix); err != nil || len(refs) != 1 {
			t.Errorf("%s: %d run refs left (%v), want the newest one\nlog:\n%s", dir, len(refs), err, log.String())
		}
	}
}

// Run serves until serving ends, then closes the site and waits for
// retention's pass and the worker (none here) before it returns; an SSH
// server that cannot serve is an error, logged, and the drain still
// happens.
func TestRunDrainsAndSaysWhatFailed(t *testing.T) {
	var log fixtures.Buffer
	srv := newTestServer(t, &log)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	site, err := ListenSite("0")
	if err != nil {
		t.Fatal(err)
	}
	go site.Serve(http.NotFoundHandler())
	gc := srv.Retention(results.DefaultRetention, time.Hour)
	serving, drain := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(serving, context.Background(), context.Background(), ln, nil, site, gc) }()
	fixtures.WaitForShowing(t, time.Minute, "the SSH server accepting", func() bool {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			c.Close()
		}
		return err == nil
	}, log.String)
	drain()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(ShutdownGrace + time.Minute):
		t.Fatal("Run did not return once serving ended")
	}
	if resp, err := http.Get(site.URL()); err == nil {
		resp.Body.Close()
		t.Error("the site still serves after Run returned")
	}

	srv2 := newTestServer(t, &log)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	err = srv2.Run(context.Background(), context.Background(), context.Background(), closed, nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "the SSH server: ") || !strings.Contains(log.String(), "the SSH server stopped") {
		t.Errorf("a listener that is closed: %v\nlog:\n%s", err, log.String())
	}
}
