package site

import (
	"reflect"
	"testing"
	"time"

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
	raw, hashes := encodeRuns(&man)
	if len(hashes) != 2 || hashes[s.Ref] == hashes[zero.Ref] {
		t.Errorf("hashes: %v", hashes)
	}
	var got manifest
	if err := decodeRuns(raw, &got); err != nil {
		t.Fatal(err)
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
