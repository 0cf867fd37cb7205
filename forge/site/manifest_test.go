package site

import (
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/queue"
	"refci.dev/refci/render"
)

// fillAll sets every settable field of v (recursively, strings, numbers,
// bools, times and string slices) to a value that is not its zero value.
func fillAll(t *testing.T, v reflect.Value, seed *int) {
	t.Helper()
	*seed++
	switch {
	case v.Type() == reflect.TypeOf(time.Time{}):
		v.Set(reflect.ValueOf(time.Unix(1700000000+int64(*seed), 123456789).UTC()))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString("v" + string(rune('a'+*seed%26)) + "\t\n\x00é")
	case reflect.Int, reflect.Int64:
		v.SetInt(int64(*seed) * 1000003)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.String {
			t.Fatalf("a field of type %s: teach the runs file about it", v.Type())
		}
		v.Set(reflect.ValueOf([]string{"a", "", "b c"}))
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			fillAll(t, v.Field(i), seed)
		}
	default:
		t.Fatalf("a field of kind %s: teach the runs file about it", v.Kind())
	}
}

// The runs file keeps every field of a run's summary (but NotLatest,
// which each build decides) and every commit, and refuses a damaged or
// truncated file rather than reading part of it.
func TestRunsFileKeepsEveryField(t *testing.T) {
	var s render.RunSummary
	seed := 0
	fillAll(t, reflect.ValueOf(&s).Elem(), &seed)
	s.NotLatest = false
	zero := render.RunSummary{Ref: "refs/ci/runs/x/y"}
	man := manifest{Runs: map[string]render.RunSummary{s.Ref: s, zero.Ref: zero},
		Commits: map[string]render.CommitInfo{"c1": {Subject: "s", Author: "a", Date: time.Unix(5, 6).UTC()}, "c2": {}}}
	raw := encodeRuns(&man)
	var got manifest
	if err := decodeRuns(raw, &got); err != nil {
		t.Fatal(err)
	}
	// A run's hash is the same whether read or set.
	set := manifest{Runs: map[string]render.RunSummary{}}
	set.init()
	set.setRun(s.Ref, s)
	if len(got.hashes) != 2 || got.hashes[s.Ref] == got.hashes[zero.Ref] || got.hashes[s.Ref] != set.hashes[s.Ref] {
		t.Errorf("hashes: %v, set: %v", got.hashes, set.hashes)
	}
	if !reflect.DeepEqual(got.Runs, man.Runs) || !reflect.DeepEqual(got.Commits, man.Commits) {
		t.Errorf("round trip:\n%+v\n%+v\nwant\n%+v\n%+v", got.Runs, got.Commits, man.Runs, man.Commits)
	}
	for i := 0; i < len(raw); i++ {
		if err := decodeRuns(raw[:i], &got); err == nil {
			t.Fatalf("a file cut at %d of %d bytes was read", i, len(raw))
		}
	}
	if err := decodeRuns(append(append([]byte{}, raw...), 0), &got); err == nil {
		t.Error("a file with trailing bytes was read")
	}
}

// snapshot is what a manifest holds, to compare.
type snapshot struct {
	Runs    map[string]render.RunSummary
	Commits map[string]render.CommitInfo
	Hashes  map[string]uint64
}

func snap(m *manifest) snapshot {
	return snapshot{Runs: maps.Clone(m.Runs), Commits: maps.Clone(m.Commits), Hashes: maps.Clone(m.hashes)}
}

// Each build's changes are appended to the delta; reading the manifest
// applies them. A delta cut anywhere gives the state after its last whole
// record (and says the runs file is to be written anew); bytes past
// delta_len (a build stopped before it replaced manifest.json) are not
// read, and the next append writes over them. Past compactAt, a new runs
// file replaces the old and its delta.
func TestDeltaKeepsChanges(t *testing.T) {
	dir := t.TempDir()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	sum := func(i int, state string) render.RunSummary {
		return render.RunSummary{Target: "t", Request: "main", Run: strconv.Itoa(i), State: queue.State(state), Attempt: 1,
			Started: time.Unix(int64(i), 0).UTC(), FailedJobs: []string{"test"}, Verdict: render.Verdict{Kind: render.VerdictVerified}}
	}
	read := func() manifest {
		t.Helper()
		m := readManifest(root, "k")
		if m.RunsFile == "" {
			t.Fatal("the manifest was not read")
		}
		return m
	}
	write := func(m *manifest) {
		t.Helper()
		if err := writeManifest(root, m); err != nil {
			t.Fatal(err)
		}
	}
	m := readManifest(root, "k")
	m.setRun("a", sum(1, "success"))
	m.setRun("b", sum(2, "failure"))
	m.setCommit("c1", render.CommitInfo{Subject: "one", Author: "A", Date: time.Unix(9, 0).UTC()})
	write(&m)
	runsFile := m.RunsFile
	states := []snapshot{snap(&m)}
	var ends []int64 // where each record of the delta ends
	for round := 0; round < 3; round++ {
		m = read()
		switch round {
		case 0:
			m.setRun("c", sum(3, "success"))
			m.removeRun("a")
			m.setCommit("c2", render.CommitInfo{Subject: "two"})
			m.removeCommit("c1")
		case 1:
			m.setRun("b", sum(2, "success"))
		case 2:
			m.removeRun("c")
			m.setRun("d", sum(4, "error"))
		}
		write(&m)
		if m.RunsFile != runsFile {
			t.Fatalf("round %d wrote a new runs file", round)
		}
		ends = append(ends, m.DeltaLen)
		states = append(states, snap(&m))
	}
	if got := read(); !reflect.DeepEqual(snap(&got), states[3]) || got.rewrite {
		t.Fatalf("read back:\n%+v\nwant\n%+v", snap(&got), states[3])
	}
	deltaPath := filepath.Join(dir, deltaOf(runsFile))
	full, err := os.ReadFile(deltaPath)
	if err != nil || int64(len(full)) != ends[2] {
		t.Fatalf("delta: %d bytes, %v; want %d", len(full), err, ends[2])
	}
	for cut := 0; cut < len(full); cut++ {
		if err := os.WriteFile(deltaPath, full[:cut], 0o644); err != nil {
			t.Fatal(err)
		}
		want := 0
		for want < len(ends) && ends[want] <= int64(cut) {
			want++
		}
		got := read()
		if !reflect.DeepEqual(snap(&got), states[want]) || !got.rewrite {
			t.Fatalf("delta cut at %d of %d bytes: read\n%+v (rewrite %v)\nwant\n%+v", cut, len(full), snap(&got), got.rewrite, states[want])
		}
	}
	// A damaged byte: the records before it hold.
	bad := append([]byte{}, full...)
	bad[ends[0]+3] ^= 0x40
	os.WriteFile(deltaPath, bad, 0o644)
	if got := read(); !reflect.DeepEqual(snap(&got), states[1]) || !got.rewrite {
		t.Errorf("a damaged second record: read\n%+v\nwant\n%+v", snap(&got), states[1])
	}

	// A stopped build appended a record (and half another) but did not
	// replace manifest.json.
	os.WriteFile(deltaPath, full, 0o644)
	m = read()
	m.setRun("e", sum(5, "success"))
	stray := deltaRecord(&m)
	os.WriteFile(deltaPath, append(append(append([]byte{}, full...), stray...), stray[:7]...), 0o644)
	if got := read(); !reflect.DeepEqual(snap(&got), states[3]) || got.rewrite {
		t.Errorf("bytes past delta_len were read")
	}
	m = read()
	m.setRun("f", sum(6, "failure"))
	write(&m)
	want := snap(&m)
	if got := read(); !reflect.DeepEqual(snap(&got), want) || got.rewrite || got.Runs["e"].Run != "" {
		t.Errorf("after an append over a stopped build's bytes: read\n%+v\nwant\n%+v", snap(&got), want)
	}

	// The delta grows past compactAt: a new runs file, the old one and
	// its delta gone.
	for i := 0; m.RunsFile == runsFile; i++ {
		m = read()
		s := sum(100+i, "success")
		s.Reason = strings.Repeat("x", 2000)
		m.setRun("g"+strconv.Itoa(i), s)
		write(&m)
	}
	want = snap(&m)
	if got := read(); !reflect.DeepEqual(snap(&got), want) || got.DeltaLen != 0 {
		t.Errorf("after compaction: read\n%+v\nwant\n%+v", snap(&got), want)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "manifest-runs-*"))
	if len(left) != 1 || filepath.Base(left[0]) != m.RunsFile {
		t.Errorf("after compaction: %v", left)
	}
}
