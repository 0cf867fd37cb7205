package worker

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
)

// The starter pipeline, written into a real work tree and committed, runs
// as a real run: one job, success. A second InitPipeline refuses, and
// force replaces what is there.
func TestStarterPipelineRuns(t *testing.T) {
	dir := fixtures.NewRepo(t)
	fixtures.WriteFile(t, dir, "README", "x\n", 0o644)
	p, err := InitPipeline(dir, false)
	if err != nil || p != filepath.Join(dir, ".refci", "run") {
		t.Fatalf("InitPipeline = %q, %v", p, err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("the pipeline: %v, %v; want mode 0755", fi, err)
	}
	fixtures.CommitAll(t, dir, "add the starter pipeline")
	repo, err := gitproto.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	head, err := repo.ResolveCommit("HEAD")
	if err != nil {
		t.Fatal(err)
	}
	var live fixtures.Buffer
	out, err := Run(t.Context(), RunSpec{Repo: repo, Target: head, Request: "local", RefciPath: fixtures.Executable(t), TempDir: t.TempDir(), Output: &live},
		fixtures.OpenPGPIdentity(t, "Test Worker"))
	if err != nil {
		t.Fatal(err)
	}
	if st := out.Status; st.State != queue.Success || len(st.Jobs) != 1 || st.Jobs[0].Name != "check" || st.Jobs[0].State != queue.Success {
		t.Errorf("the starter's run: %s (%s), jobs %+v\n%s", st.State, st.Reason, st.Jobs, live.String())
	}
	if out.Status.IsConfigError() {
		t.Errorf("a successful run is taken for a configuration error: %+v", out.Status.Extra)
	}
	if !strings.Contains(live.String(), "testing "+head.String()) {
		t.Errorf("the starter's log does not say what it tests:\n%s", live.String())
	}

	if _, err := InitPipeline(dir, false); !errors.Is(err, ErrPipelineExists) {
		t.Errorf("a second InitPipeline = %v; want ErrPipelineExists", err)
	}
	if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 1\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := InitPipeline(dir, true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != StarterPipeline {
		t.Errorf("force did not replace the pipeline:\n%s", b)
	}
}

// A hostile repository's symlinks do not make InitPipeline write outside
// the work tree: a symlink at .refci/run is replaced, not followed, and a
// .refci that leads out is refused.
func TestInitPipelineStaysInTheWorkTree(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(outside, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := fixtures.NewRepo(t)
	if err := os.Mkdir(filepath.Join(dir, ".refci"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, ".refci", "run")); err != nil {
		t.Fatal(err)
	}
	if _, err := InitPipeline(dir, false); !errors.Is(err, ErrPipelineExists) {
		t.Errorf("InitPipeline over a symlink = %v; want ErrPipelineExists", err)
	}
	p, err := InitPipeline(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() {
		t.Errorf(".refci/run after force: %v, %v; want a regular file", fi, err)
	}
	if b, _ := os.ReadFile(outside); string(b) != "precious\n" {
		t.Errorf("the symlink's target was written: %q", b)
	}

	dir = fixtures.NewRepo(t)
	if err := os.Symlink(filepath.Dir(outside), filepath.Join(dir, ".refci")); err != nil {
		t.Fatal(err)
	}
	if _, err := InitPipeline(dir, true); err == nil {
		t.Error("InitPipeline wrote through a .refci that leads out of the work tree")
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(outside), "run")); err == nil {
		t.Error("a run file appeared outside the work tree")
	}
}

// A commit without a pipeline ends in state error marked as the
// repository's configuration.
func TestIsConfigError(t *testing.T) {
	dir := fixtures.NewRepo(t)
	fixtures.WriteFile(t, dir, "README", "x\n", 0o644)
	fixtures.CommitAll(t, dir, "no pipeline")
	repo, err := gitproto.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	head, err := repo.ResolveCommit("HEAD")
	if err != nil {
		t.Fatal(err)
	}
	out, err := Run(t.Context(), RunSpec{Repo: repo, Target: head, Request: LocalRequest, TempDir: t.TempDir()}, fixtures.OpenPGPIdentity(t, "Test Worker"))
	if err != nil {
		t.Fatal(err)
	}
	if st := out.Status; st.State != queue.Error || !st.IsConfigError() || !strings.Contains(st.Reason, "refci init") {
		t.Errorf("a commit without .refci/run: %s (%s), extra %v; want a configuration error", st.State, st.Reason, st.Extra)
	}
}
