package worker

import (
	"errors"
	"os"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/secrets"
)

// RunLocal runs the user's own commit as a trusted local request, or
// decides trust on its signature when given keys; with Isolate but no
// refci executable it refuses before running anything (ErrLocalSetup,
// its text the cause's).
func TestRunLocal(t *testing.T) {
	dir := fixtures.NewRepo(t)
	fixtures.WriteFile(t, dir, ".refci/run", "#!/bin/sh\necho local run\n", 0o755)
	fixtures.CommitAll(t, dir, "pipeline")
	repo, err := gitproto.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	head, err := repo.ResolveCommit("HEAD")
	if err != nil {
		t.Fatal(err)
	}
	id := fixtures.OpenPGPIdentity(t, "Test Worker")
	spec := RunSpec{Repo: repo, Target: head, TargetRef: "main"}
	out, err := RunLocal(t.Context(), Local{Spec: spec, Getenv: os.Getenv}, id)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if st := out.Status; st.State != queue.Success || st.Request != LocalRequest || !st.Trusted || !strings.Contains(st.TrustNote, "local run") || st.Host != host || st.TargetRef != "main" {
		t.Errorf("a local run: %s, request %q, trusted %v (%s), host %q", st.State, st.Request, st.Trusted, st.TrustNote, st.Host)
	}
	if got, err := repo.ReadFile(out.Commit, queue.LogFile); err != nil || !strings.Contains(string(got), "local run") {
		t.Errorf("its log: %q, %v", got, err)
	}

	// Keys given, the unsigned commit is not trusted.
	out, err = RunLocal(t.Context(), Local{Spec: spec, Getenv: os.Getenv, TrustedKeys: &secrets.Keyring{}}, id)
	if err != nil {
		t.Fatal(err)
	}
	if st := out.Status; st.Trusted {
		t.Errorf("with an empty trusted keyring the run is trusted: %s", st.TrustNote)
	}

	_, err = RunLocal(t.Context(), Local{Spec: spec, Getenv: os.Getenv, Isolate: true}, id)
	if !errors.Is(err, ErrLocalSetup) || err.Error() != "--isolate: cannot find the refci executable to supervise the pipeline" {
		t.Errorf("isolated without refci: %v; want ErrLocalSetup", err)
	}
}
