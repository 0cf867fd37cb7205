package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/worker"
)

// A pipeline run by `refci worker` can neither read the worker's key
// (its $REFCI_HOME is hidden) nor get at the worker's memory, environment
// or files through /proc (the worker is not dumpable); the result is
// still signed and verifies.
func TestWorkerHidesItsKeyAndMemory(t *testing.T) {
	if err := worker.CheckIsolation(refciBin); err != nil {
		t.Skipf("no user namespaces here: %v", err)
	}
	f := newFleet(t, "true\n")
	w := f.startWorker("a")
	home := filepath.Join(f.root, "worker-a")
	f.waitFor("the worker's key", 30*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(home, "key.asc"))
		return err == nil
	})
	pid := w.Process.Pid
	f.pipeline(fmt.Sprintf(`
cat %[1]s/key.asc || echo "key hidden"
echo "home:[$(ls -A %[1]s)]"
(exec 3</proc/%[2]d/mem) 2>/dev/null && echo "MEM OPENED" || echo "mem refused"
cat /proc/%[2]d/environ 2>/dev/null | tr '\0' '\n' || echo "environ refused"
cat /proc/%[2]d/root%[1]s/key.asc 2>/dev/null || echo "root refused"
refci job check -- echo job-ran
`, home, pid))
	f.git("", "push", "-q", "origin", "main", "HEAD:refs/ci/requests/peek")
	f.waitFor("the result", time.Minute, func() bool { return len(f.finalResults()["peek"]) == 1 })
	st := f.finalResults()["peek"][0]
	ref := f.remoteRefs("refs/ci/runs/")[0]
	log := f.gitErr(f.bare, "show", ref+":log.txt")
	if st.State != "success" || st.Extra["isolation"] != nil {
		t.Errorf("state %s (%s), extra %v\n%s", st.State, st.Reason, st.Extra, log)
	}
	if strings.Contains(log, "PGP PRIVATE KEY") || strings.Contains(log, "leak-canary") || strings.Contains(log, "MEM OPENED") {
		t.Errorf("the pipeline got at the worker's secrets:\n%s", log)
	}
	for _, want := range []string{"key hidden", "home:[]", "mem refused", "root refused", "job-ran"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	keyFile := f.exportKey(home, "worker-a.asc")
	f.git("", "fetch", "-q", "origin", "+refs/ci/*:refs/ci/*")
	f.refci("verify", "--keyring", keyFile, ref).want(t, 0)
}

// refci run --isolate hides $REFCI_HOME from its pipeline too.
func TestRunHidesTheKey(t *testing.T) {
	if err := worker.CheckIsolation(refciBin); err != nil {
		t.Skipf("no user namespaces here: %v", err)
	}
	s := newSandbox(t)
	s.refci("keys", "show").want(t, 0) // creates the key
	s.pipeline(fmt.Sprintf("cat %s/key.asc || echo 'key hidden'\n", s.home))
	r := s.refci("run", "--isolate")
	if r.code != 0 || strings.Contains(r.stdout, "PGP PRIVATE KEY") || !strings.Contains(r.stdout, "key hidden") {
		t.Fatalf("refci run: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
}
