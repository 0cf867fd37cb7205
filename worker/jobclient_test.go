package worker

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"refci.dev/refci/fixtures"
)

// A refci-job beside refci is the pipelines' refci only when it is an
// executable built from cmd/refci-job of this build; otherwise refci
// itself, with a note saying why one that is there was refused.
func TestChooseJobClient(t *testing.T) {
	light := fixtures.BuildBinary(t, "refci.dev/refci/cmd/refci-job", JobClientName)
	other := fixtures.BuildBinary(t, "refci.dev/refci/cmd/refci-shim", "refci-shim")
	cases := []struct {
		name  string
		place func(dir string) error // puts dir/refci-job
		want  bool
		note  string
	}{
		{"none", func(string) error { return nil }, false, ""},
		{"this build", func(dir string) error { return os.Link(light, filepath.Join(dir, JobClientName)) }, true, ""},
		{"another program", func(dir string) error { return os.Link(other, filepath.Join(dir, JobClientName)) }, false, "not refci.dev/refci/cmd/refci-job"},
		{"not executable", func(dir string) error {
			b, err := os.ReadFile(light)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, JobClientName), b, 0o644)
		}, false, "not an executable file"},
		{"a link to one elsewhere", func(dir string) error {
			return os.Symlink(light, filepath.Join(dir, JobClientName))
		}, false, "the refci beside that is not"},
		{"a script", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, JobClientName), []byte("#!/bin/sh\nexit 0\n"), 0o755)
		}, false, "cannot read its build"},
	}
	for _, c := range cases {
		dir := t.TempDir()
		refci := filepath.Join(dir, "refci")
		if err := os.WriteFile(refci, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := c.place(dir); err != nil {
			t.Fatal(err)
		}
		path, note := ChooseJobClient(refci)
		if got := path != ""; got != c.want || c.want && path != filepath.Join(dir, JobClientName) || !strings.Contains(note, c.note) || c.note == "" && note != "" {
			t.Errorf("%s: ChooseJobClient = %q, note %q; want chosen %v, note with %q", c.name, path, note, c.want, c.note)
		}
	}
	if path, note := ChooseJobClient("refci"); path != "" || note != "" {
		t.Errorf("a relative refci path: %q, %q", path, note)
	}
}

// With a refci-job of this build beside refci, a run's bin holds a
// symbolic link to it as refci (never a hard link: the pipeline could
// write the installed file through it); refci-job runs the refci beside
// its file for every other command. A reused run directory keeps the
// link while it is still that; whatever a pipeline put in its place is
// replaced.
func TestLinkRefciBinWithJobClient(t *testing.T) {
	dir := t.TempDir()
	refci := filepath.Join(dir, "refci")
	if err := os.WriteFile(refci, []byte("#!/bin/sh\necho full refci \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	light := filepath.Join(dir, JobClientName)
	if err := os.Link(fixtures.BuildBinary(t, "refci.dev/refci/cmd/refci-job", JobClientName), light); err != nil {
		t.Fatal(err)
	}
	r := &run{spec: RunSpec{RefciPath: refci}}
	pool := NewRunDirs(1)
	rd := freshRunDir(t, t.TempDir())
	bin := filepath.Join(rd, "bin")
	check := func(when string) {
		t.Helper()
		if err := r.linkRefciBin(bin); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if target, err := os.Readlink(filepath.Join(bin, "refci")); err != nil || target != light {
			t.Errorf("%s: bin/refci links to %q (%v), want %s", when, target, err, light)
		}
		// refci-job hands other commands to the refci beside it.
		out, err := exec.Command(filepath.Join(bin, "refci"), "status", "--json").Output()
		if err != nil || string(out) != "full refci status --json\n" {
			t.Errorf("%s: refci status through refci-job: %q, %v", when, out, err)
		}
	}
	check("first run")
	first, _ := os.Lstat(filepath.Join(bin, "refci"))
	pool.put(rd, nil)
	if got := pool.get(); got != rd {
		t.Fatalf("the run directory was not reused (got %q)", got)
	}
	check("reused")
	if again, _ := os.Lstat(filepath.Join(bin, "refci")); !os.SameFile(first, again) {
		t.Error("the kept symbolic link was replaced")
	}
	for name, plant := range map[string]func() error{
		"a symbolic link elsewhere": func() error {
			os.Remove(filepath.Join(bin, "refci"))
			return os.Symlink("/bin/true", filepath.Join(bin, "refci"))
		},
		"another program": func() error {
			os.Remove(filepath.Join(bin, "refci"))
			return os.WriteFile(filepath.Join(bin, "refci"), []byte("#!/bin/sh\necho planted\n"), 0o755)
		},
	} {
		if err := plant(); err != nil {
			t.Fatal(err)
		}
		pool.put(rd, nil)
		if got := pool.get(); got != rd {
			t.Fatalf("%s: the run directory was not reused", name)
		}
		check(name)
	}

	// Without the light client, bin holds refci alone.
	os.Remove(light)
	jobClients.Delete(refci)
	defer jobClients.Delete(refci)
	if err := r.linkRefciBin(bin); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(filepath.Join(bin, "refci")); err != nil || target != refci {
		t.Errorf("without refci-job, bin/refci is not a symbolic link to refci: %q, %v", target, err)
	}
}
