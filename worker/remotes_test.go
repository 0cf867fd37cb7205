package worker

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/results"
)

// The worker's remotes keep the URL as configured beside the one opened
// (a relative path made absolute), and every hook maps one to the other.
func TestOpenRemotesMapsConfiguredAndOpenedURLs(t *testing.T) {
	root := t.TempDir()
	bare := filepath.Join(root, "a.git")
	fixtures.Git(t, "", "init", "-q", "--bare", bare)
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(wd, bare)
	if err != nil {
		t.Fatal(err)
	}
	net := "https://ci:s3cret@example.invalid/b.git"
	cache := filepath.Join(root, "cache")
	rs, err := OpenRemotes([]string{rel, net}, cache)
	if err != nil {
		t.Fatal(err)
	}
	list := rs.List()
	if len(list) != 2 || list[0].URL != bare || list[1].URL != net {
		t.Fatalf("opened %v", list)
	}
	if got := rs.Opened(rel); !reflect.DeepEqual(got, []string{bare}) {
		t.Errorf("Opened(%q) = %q, want the absolute path", rel, got)
	}
	if got := rs.Configured(bare); !reflect.DeepEqual(got, []string{rel}) {
		t.Errorf("Configured(%q) = %q, want the path as configured", bare, got)
	}
	if rs.Lookup(net) != list[1] || rs.Lookup(rel) != nil || rs.Opened("elsewhere") != nil {
		t.Error("Lookup finds a remote by its URL as opened, and only so")
	}
	if got := rs.LocalDirs(); !reflect.DeepEqual(got, []string{bare, ""}) {
		t.Errorf("LocalDirs %q", got)
	}
	if s := rs.String(); strings.Contains(s, "s3cret") || s != bare+" https://ci:***@example.invalid/b.git" {
		t.Errorf("String %q", s)
	}
	var log fixtures.Buffer
	rs.LogLocal(context.Background(), slog.New(slog.NewTextHandler(&log, nil)))
	if n := strings.Count(log.String(), "a remote on this machine"); n != 1 || !strings.Contains(log.String(), bare) {
		t.Errorf("LogLocal: %d lines, want one for the local remote:\n%s", n, log.String())
	}
	file := filepath.Join(root, "a-file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenRemotes([]string{net}, file); err == nil || !strings.Contains(err.Error(), "remote https://ci:***@example.invalid/b.git: ") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("a cache directory that cannot be made: %v", err)
	}
}

// Retention reads each remote through a cache of its own, never the
// worker's, whose run refs are its outbox's; it collects on the remote.
func TestRetentionTargetsUseCachesOfTheirOwn(t *testing.T) {
	root := t.TempDir()
	bare := filepath.Join(root, "a.git")
	fixtures.Git(t, "", "init", "-q", "--bare", bare)
	cache := filepath.Join(root, "cache")
	rs, err := OpenRemotes([]string{"file://" + bare}, cache)
	if err != nil {
		t.Fatal(err)
	}
	var log fixtures.Buffer
	targets := rs.RetentionTargets(cache, slog.New(slog.NewTextHandler(&log, nil)))
	if len(targets) != 1 || targets[0].Name() != "file://"+bare {
		t.Fatalf("targets %v (log %s)", targets, log.String())
	}
	entries, _ := os.ReadDir(cache)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 2 || !strings.HasSuffix(names[0], "-gc.git") && !strings.HasSuffix(names[1], "-gc.git") {
		t.Errorf("caches %q: want the worker's and one ending in -gc.git", names)
	}
	out, err := results.Collect(context.Background(), targets[0], results.DefaultRetention, true)
	if err != nil || out == nil {
		t.Errorf("a dry run on the remote: %v", err)
	}
}
