package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fullStatus sets every field, so a round trip that drops one shows.
func fullStatus() *Status {
	started := time.Date(2026, 11, 22, 9, 30, 0, 123000000, time.UTC)
	return &Status{
		Format:        Format,
		State:         Failure,
		Reason:        "job test ended failure although .refci/run exited 0",
		Target:        "3f9a1c0b2d4e5f60718293a4b5c6d7e8f9a0b1c2",
		TargetRef:     "main",
		Request:       "alice/topic",
		RequestObject: "7c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5",
		Run:           "20261122T093000.123Z-3f9a1c",
		Attempt:       2,
		Worker:        "6A1F0C2B3D4E5F60718293A4B5C6D7E8F9A0B1C2",
		Host:          "build-1",
		Env:           "staging",
		Trusted:       true,
		Started:       started,
		Finished:      started.Add(4444 * time.Millisecond),
		DurationMS:    4444,
		ExitCode:      IntPtr(137),
		Signal:        "KILL",
		TimedOut:      true,
		Jobs: []Job{
			{Name: "build", State: Success, Started: started, Finished: started.Add(1200 * time.Millisecond),
				DurationMS: 1200, ExitCode: IntPtr(0), Log: "jobs/build/log.txt", LogBytes: 812},
			{Name: "test", Needs: []string{"build", "lint"}, State: Failure, Reason: "exit 1",
				Started: started.Add(time.Second), Finished: started.Add(4 * time.Second),
				DurationMS: 3000, ExitCode: IntPtr(1), Log: "jobs/test/log.txt", LogBytes: 4410, Truncated: true},
			{Name: "deploy", Needs: []string{"test"}, State: Skipped, Reason: "test did not succeed"},
		},
		Artifacts:        []Artifact{{Path: "reports/junit.xml", Size: 5120, SHA256: strings.Repeat("ab", 32)}},
		ArtifactsSkipped: []SkippedArtifact{{Path: "passwd", Reason: "symlink (to /etc/passwd); artifacts must be regular files"}},
		LogBytes:         5222,
		LogTruncated:     true,
		Leftovers:        3,
		Version:          "v0.1.0",
		Extra:            map[string]any{"note": "x", "n": 1.5, "list": []any{"a", true}},
	}
}

func TestStatusRoundTrip(t *testing.T) {
	t.Parallel()
	for name, s := range map[string]*Status{
		"full": fullStatus(),
		"running": {
			Format: Format, State: Running, Target: strings.Repeat("0", 40), Request: "local",
			Run: "20261122T093000.123Z-3f9a1c", Attempt: 1, Started: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
			Jobs: []Job{}, Artifacts: []Artifact{},
		},
		"never-ran": {Format: Format, State: Error, Reason: "no .refci/run", ExitCode: nil},
	} {
		b, err := EncodeStatus(s)
		if err != nil {
			t.Fatalf("%s: EncodeStatus: %v", name, err)
		}
		if !bytes.HasSuffix(b, []byte("}\n")) || !json.Valid(b) {
			t.Errorf("%s: EncodeStatus output is not JSON with a trailing newline: %q", name, b)
		}
		got, err := DecodeStatus(b)
		if err != nil {
			t.Fatalf("%s: DecodeStatus(EncodeStatus(s)): %v\n%s", name, err, b)
		}
		if !reflect.DeepEqual(got, s) {
			t.Errorf("%s: round trip changed the status\n got: %+v\nwant: %+v", name, got, s)
		}
		b2, _ := EncodeStatus(got)
		if !bytes.Equal(b, b2) {
			t.Errorf("%s: encoding is not stable:\n%s\n%s", name, b, b2)
		}
	}
}

// TestStatusFieldNames pins the JSON names PROTOCOL.md documents: renaming
// one is a format change.
func TestStatusFieldNames(t *testing.T) {
	t.Parallel()
	b, err := EncodeStatus(fullStatus())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{
		"format", "state", "reason", "target", "target_ref", "request", "run", "attempt", "worker", "host", "env",
		"trusted", "started", "finished", "duration_ms", "exit_code", "signal", "timed_out", "jobs", "artifacts",
		"artifacts_skipped", "log_bytes", "log_truncated", "leftover_processes", "refci_version",
	} {
		if _, ok := m[k]; !ok {
			t.Errorf("status.json has no %q field:\n%s", k, b)
		}
	}
	if string(m["format"]) != "1" {
		t.Errorf("format = %s, want 1", m["format"])
	}
	if string(m["started"]) != `"2026-11-22T09:30:00.123Z"` {
		t.Errorf("started = %s, want RFC 3339 UTC", m["started"])
	}
	var jobs []map[string]json.RawMessage
	json.Unmarshal(m["jobs"], &jobs)
	for _, k := range []string{"name", "needs", "state", "reason", "started", "finished", "duration_ms", "exit_code", "log", "log_bytes"} {
		if _, ok := jobs[1][k]; !ok {
			t.Errorf("job has no %q field: %s", k, m["jobs"])
		}
	}

	// While running, finished is absent; a pipeline that never ran has exit_code null.
	s := fullStatus()
	s.State, s.Finished, s.ExitCode = Running, time.Time{}, nil
	b, _ = EncodeStatus(s)
	m = nil
	json.Unmarshal(b, &m)
	if _, ok := m["finished"]; ok {
		t.Errorf("a running status has a finished field: %s", m["finished"])
	}
	if v, ok := m["exit_code"]; !ok || string(v) != "null" {
		t.Errorf("exit_code of a pipeline that never ran = %s (present: %v), want null", v, ok)
	}
}

func TestDecodeStatusFormat(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, json string
		format     string // must appear in the message; "" when there is none
		upgrade    bool   // the message tells the user to upgrade
	}{
		{"missing", `{"state":"success"}`, "", false},
		{"null", `{"format":null,"state":"success"}`, "", false},
		{"two", `{"format":2,"state":"success"}`, "2", true},
		{"ninety-nine", `{"format":99}`, "99", true},
		{"zero", `{"format":0,"state":"success"}`, "0", false},
		{"negative", `{"format":-1,"state":"success"}`, "-1", false},
		// The format is checked before anything else: a newer layout whose
		// other fields do not fit this version's types is still a format error.
		{"two-new-layout", `{"format":2,"state":{"name":"success"},"jobs":"see jobs/","attempt":"first"}`, "2", true},
		{"two-unknown-state", `{"format":2,"state":"exploded"}`, "2", true},
	} {
		s, err := DecodeStatus([]byte(tc.json))
		if !errors.Is(err, ErrFormat) {
			t.Errorf("%s: DecodeStatus(%s) = %+v, %v; want ErrFormat", tc.name, tc.json, s, err)
			continue
		}
		if s != nil {
			t.Errorf("%s: a status was returned with the error", tc.name)
		}
		msg := err.Error()
		if tc.format != "" && !strings.Contains(msg, "format "+tc.format) {
			t.Errorf("%s: error %q does not name format %s", tc.name, msg, tc.format)
		}
		if tc.upgrade && !strings.Contains(strings.ToLower(msg), "upgrade") {
			t.Errorf("%s: error %q does not say to upgrade", tc.name, msg)
		}
	}
}

func TestDecodeStatusInvalid(t *testing.T) {
	t.Parallel()
	for name, in := range map[string]string{
		"empty":         "",
		"truncated":     `{"format":1,"state":"succ`,
		"not-object":    `[1,2]`,
		"garbage":       "status: ok\n",
		"unknown-state": `{"format":1,"state":"exploded"}`,
		"empty-state":   `{"format":1,"state":""}`,
		"no-state":      `{"format":1}`,
		"bad-type":      `{"format":1,"state":"success","attempt":"one"}`,
		"bad-time":      `{"format":1,"state":"success","started":"yesterday"}`,
	} {
		s, err := DecodeStatus([]byte(in))
		if err == nil {
			t.Errorf("%s: DecodeStatus(%q) = %+v, want an error", name, in, s)
			continue
		}
		if errors.Is(err, ErrFormat) {
			t.Errorf("%s: DecodeStatus(%q) = %v; a format-1 or non-JSON document is not a format error", name, in, err)
		}
		if s != nil {
			t.Errorf("%s: a status was returned with the error", name)
		}
	}
}

func TestDecodeStatusIgnoresUnknownFields(t *testing.T) {
	t.Parallel()
	in := `{
	  "format": 1,
	  "state": "success",
	  "added_in_1_1": {"nested": [1, 2, {"x": null}]},
	  "target": "3f9a1c0b2d4e5f60718293a4b5c6d7e8f9a0b1c2",
	  "request": "local",
	  "run": "20261122T093000.123Z-3f9a1c",
	  "attempt": 1,
	  "started": "2026-11-22T09:30:00.123Z",
	  "exit_code": 0,
	  "jobs": [{"name": "build", "state": "success", "gpu_seconds": 12.5}],
	  "artifacts": [{"path": "a", "size": 1, "sha256": "00", "mime": "text/plain"}],
	  "also_new": true
	}`
	s, err := DecodeStatus([]byte(in))
	if err != nil {
		t.Fatalf("DecodeStatus with unknown fields: %v", err)
	}
	if s.State != Success || s.Request != "local" || len(s.Jobs) != 1 || s.Jobs[0].Name != "build" ||
		len(s.Artifacts) != 1 || s.Artifacts[0].Size != 1 || s.ExitCode == nil || *s.ExitCode != 0 ||
		!s.Started.Equal(time.Date(2026, 11, 22, 9, 30, 0, 123000000, time.UTC)) {
		t.Errorf("decoded status = %+v", s)
	}
}

func TestStates(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		s            State
		final, valid bool
	}{
		{Running, false, true},
		{Success, true, true},
		{Failure, true, true},
		{Error, true, true},
		{Cancelled, true, true},
		{Skipped, true, true},
		{"", false, false},
		{"SUCCESS", false, false},
		{"canceled", false, false},
		{"pending", false, false},
	} {
		if got := tc.s.Final(); got != tc.final {
			t.Errorf("State(%q).Final() = %v, want %v", tc.s, got, tc.final)
		}
		if got := tc.s.Valid(); got != tc.valid {
			t.Errorf("State(%q).Valid() = %v, want %v", tc.s, got, tc.valid)
		}
	}
	// The spellings are the protocol's.
	for s, want := range map[State]string{Running: "running", Success: "success", Failure: "failure", Error: "error", Cancelled: "cancelled", Skipped: "skipped"} {
		if string(s) != want {
			t.Errorf("state %q, want %q", s, want)
		}
	}
}

func TestTakenOver(t *testing.T) {
	const tgt = "1111111111111111111111111111111111111111"
	run := func(id string, attempt int, state State, prev string) *Status {
		s := &Status{Format: Format, Target: tgt, Request: "r", Run: id, Attempt: attempt, State: state}
		if prev != "" {
			s.Extra = map[string]any{ExtraPreviousRun: prev}
		}
		return s
	}
	a1 := run("a1", 1, Running, "")
	a2 := run("a2", 2, Running, "a1")
	a3 := run("a3", 3, Success, "a2")
	done := run("d1", 1, Success, "")
	late := run("d2", 2, Success, "d1") // names a run that ended: it was not lost
	other := run("o1", 1, Running, "")
	wrongReq := run("o2", 2, Success, "o1")
	wrongReq.Request = "another"
	elsewhere := run("e1", 1, Running, "")
	elsewhere.Target = "2222222222222222222222222222222222222222"
	wrongTarget := run("e2", 2, Success, "e1") // same id, other target
	backwards := run("b1", 2, Running, "")
	older := run("b0", 1, Success, "b1") // a lower attempt cannot have taken over

	got := TakenOver([]*Status{a3, a1, a2, done, late, other, wrongReq, elsewhere, wrongTarget, backwards, older})
	want := map[string]string{RunRef(tgt, "a1"): "a2", RunRef(tgt, "a2"): "a3"}
	if len(got) != len(want) {
		t.Errorf("taken over: %d runs, want %d (%v)", len(got), len(want), got)
	}
	for lost, by := range want {
		if got[lost] == nil || got[lost].Run != by {
			t.Errorf("run %s: taken over by %v, want %s", lost, got[lost], by)
		}
	}
	if a1.PreviousRun() != "" || a2.PreviousRun() != "a1" {
		t.Errorf("PreviousRun: %q, %q", a1.PreviousRun(), a2.PreviousRun())
	}

	a1.Jobs = []Job{{Name: "build", State: Success}, {Name: "test", State: Running}}
	l := Lost(a1, "a2", 2)
	if l.Jobs[0].State != Success || l.Jobs[1].State != Error || a1.Jobs[1].State != Running {
		t.Errorf("Lost: jobs %+v (from %+v)", l.Jobs, a1.Jobs)
	}
	if l.State != Error || !strings.Contains(l.Reason, "worker lost") || !strings.Contains(l.Reason, "a2 (attempt 2)") {
		t.Errorf("Lost: %s %q", l.State, l.Reason)
	}
	if a1.State != Running || a1.Reason != "" {
		t.Error("Lost changed the status it was given")
	}
}

func TestTargetRefFor(t *testing.T) {
	t.Parallel()
	target := "0123456789abcdef0123456789abcdef01234567"
	for _, tc := range []struct{ rev, want string }{
		{"main", "main"},
		{"HEAD~2", "HEAD~2"},
		{"v1.0", "v1.0"},
		{"0123", ""},
		{"0123456789ab", ""},
		{target, ""},
		{"012", "012"},                     // too short to be taken for an id
		{"0123456789abX", "0123456789abX"}, // not a prefix
		{"abcd", "abcd"},                   // a branch named like hex, not target's
	} {
		if got := TargetRefFor(tc.rev, target); got != tc.want {
			t.Errorf("TargetRefFor(%q) = %q, want %q", tc.rev, got, tc.want)
		}
	}
	if got := TargetRefFor("0123", "01"); got != "0123" {
		t.Errorf("a rev longer than the target: %q", got)
	}
}

func TestIsConfigError(t *testing.T) {
	t.Parallel()
	if (&Status{State: Error}).IsConfigError() || (&Status{State: Error, Extra: map[string]any{ExtraConfigError: "yes"}}).IsConfigError() {
		t.Error("a status without config_error true is a configuration error")
	}
	if !(&Status{State: Error, Extra: map[string]any{ExtraConfigError: true}}).IsConfigError() {
		t.Error("config_error true is not a configuration error")
	}
}
