package queue

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCheckResult(t *testing.T) {
	st := fullStatus()
	ref := RunRef(st.Target, st.Run)
	msg := CommitMessage(st)
	if err := CheckResult(ref, st, msg); err != nil {
		t.Fatalf("a result under its own ref: %v", err)
	}
	other := "0123456789abcdef0123456789abcdef01234567"
	cases := []struct {
		name, ref, msg, want string
	}{
		{"another commit", RunRef(other, st.Run), msg, "copied from another commit"},
		{"another run id", RunRef(st.Target, "20261122T093001.000Z-aaaaaa"), msg, "copied from another run"},
		{"not a run ref", "refs/heads/main", msg, "not a run ref"},
		{"no trailers", ref, "refci: failure\n", "no Refci-Target trailer"},
		{"trailer target differs", ref, strings.Replace(msg, "Refci-Target: "+st.Target, "Refci-Target: "+other, 1), "Refci-Target"},
		{"trailer request differs", ref, strings.Replace(msg, "Refci-Request: alice/topic", "Refci-Request: main", 1), "Refci-Request"},
		{"trailer attempt differs", ref, strings.Replace(msg, "Refci-Attempt: 2", "Refci-Attempt: 1", 1), "Refci-Attempt"},
		{"trailer state differs", ref, strings.Replace(msg, "Refci-State: failure", "Refci-State: success", 1), "Refci-State"},
		{"trailer run differs", ref, strings.Replace(msg, "Refci-Run: "+st.Run, "Refci-Run: 20261122T093001.000Z-aaaaaa", 1), "Refci-Run"},
		{"trailer twice", ref, msg + "Refci-State: success\n", "twice"},
		{"trailers only in the body", ref, msg + "\nsigned-off-by: x\n", "no Refci-Target trailer"},
	}
	for _, c := range cases {
		err := CheckResult(c.ref, st, c.msg)
		if !errors.Is(err, ErrInconsistent) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want ErrInconsistent saying %q", c.name, err, c.want)
		}
	}
}

func TestRunIDFuture(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	for id, want := range map[string]bool{
		NewRunID(now): false,
		NewRunID(now.Add(ClockSkew - time.Second)): false,
		NewRunID(now.Add(ClockSkew + time.Second)): true,
		"20990101T000000.000Z-abcdef":              true,
		"20200101T000000Z-abcdef":                  false,
		"not-a-run":                                true,
	} {
		if got := RunIDFuture(id, now); got != want {
			t.Errorf("RunIDFuture(%q) = %v, want %v", id, got, want)
		}
	}
	if got, ok := RunIDTime("20261122T093000.123Z-3f9a1c"); !ok || !got.Equal(time.Date(2026, 11, 22, 9, 30, 0, 123e6, time.UTC)) {
		t.Errorf("RunIDTime = %v, %v", got, ok)
	}
}

func TestStatusValidate(t *testing.T) {
	if err := fullStatus().Validate(); err != nil {
		t.Fatalf("a status refci writes: %v", err)
	}
	cases := map[string]func(s *Status){
		"target with a slash":  func(s *Status) { s.Target = "../../etc" },
		"short target":         func(s *Status) { s.Target = "3f9a1c" },
		"run with a path":      func(s *Status) { s.Run = "../x" },
		"request with ..":      func(s *Status) { s.Request = "a/../../b" },
		"request absolute":     func(s *Status) { s.Request = "/etc/passwd" },
		"attempt 0":            func(s *Status) { s.Attempt = 0 },
		"previous run":         func(s *Status) { s.Extra = map[string]any{"previous_run": "../../x"} },
		"worker not hex":       func(s *Status) { s.Worker = "<script>" },
		"env with slash":       func(s *Status) { s.Env = "a/b" },
		"secrets commit":       func(s *Status) { s.SecretsCommit = "../../x" },
		"request object":       func(s *Status) { s.RequestObject = "HEAD" },
		"job name with slash":  func(s *Status) { s.Jobs[0].Name = "../../x" },
		"job name twice":       func(s *Status) { s.Jobs[1].Name = s.Jobs[0].Name },
		"job log elsewhere":    func(s *Status) { s.Jobs[0].Log = "../../../etc/passwd" },
		"job need with slash":  func(s *Status) { s.Jobs[1].Needs = []string{"a/b"} },
		"job state":            func(s *Status) { s.Jobs[0].State = "pwned" },
		"artifact absolute":    func(s *Status) { s.Artifacts[0].Path = "/etc/passwd" },
		"artifact dotdot":      func(s *Status) { s.Artifacts[0].Path = "a/../../b" },
		"artifact .git":        func(s *Status) { s.Artifacts[0].Path = "x/.GIT/config" },
		"artifact .git. ":      func(s *Status) { s.Artifacts[0].Path = ".git. /hooks" },
		"artifact newline":     func(s *Status) { s.Artifacts[0].Path = "a\nb" },
		"artifact backslash":   func(s *Status) { s.Artifacts[0].Path = `..\..\x` },
		"artifact bad utf8":    func(s *Status) { s.Artifacts[0].Path = "a\xffb" },
		"artifact empty part":  func(s *Status) { s.Artifacts[0].Path = "a//b" },
		"artifact sha not hex": func(s *Status) { s.Artifacts[0].SHA256 = strings.Repeat("z", 64) },
		"artifact size":        func(s *Status) { s.Artifacts[0].Size = -1 },
	}
	for name, mutate := range cases {
		s := fullStatus()
		if len(s.Artifacts) == 0 {
			t.Fatal("fullStatus has no artifact")
		}
		mutate(s)
		err := s.Validate()
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate = %v, want ErrInvalid", name, err)
		} else if strings.ContainsAny(err.Error(), "\n\xff") {
			t.Errorf("%s: the error shows the value unescaped: %q", name, err)
		}
	}
}

func TestValidateArtifactPathInvisible(t *testing.T) {
	for _, p := range []string{"a\u202etxt.exe", ".git\u200c/config", "x/git~1/hooks", "GIT~1", "a\u2028b", "a\ufeffb"} {
		if err := ValidateArtifactPath(p); err == nil {
			t.Errorf("ValidateArtifactPath(%q) passed", p)
		} else if strings.ContainsAny(err.Error(), "\u202e\u200c\u2028\ufeff") {
			t.Errorf("the error shows the value unescaped: %q", err)
		}
	}
	for _, p := range []string{"reports/junit.xml", "ünïcode/файл.txt", "git~2", "a b/c-d_e.f"} {
		if err := ValidateArtifactPath(p); err != nil {
			t.Errorf("ValidateArtifactPath(%q): %v", p, err)
		}
	}
}

func TestDecodeResult(t *testing.T) {
	st := fullStatus()
	b, _ := EncodeStatus(st)
	ref := RunRef(st.Target, st.Run)
	if got, err := DecodeResult(ref, b, CommitMessage(st)); err != nil || got.Run != st.Run {
		t.Fatalf("DecodeResult of a good result: %v", err)
	}
	other := RunRef(st.Target, "20261122T093001.000Z-aaaaaa")
	if _, err := DecodeResult(other, b, CommitMessage(st)); !errors.Is(err, ErrInconsistent) {
		t.Errorf("under another run: %v", err)
	}
	bad := fullStatus()
	bad.Jobs[0].Name = "../../x"
	b2, _ := EncodeStatus(bad)
	if _, err := DecodeResult(ref, b2, CommitMessage(bad)); !errors.Is(err, ErrInvalid) {
		t.Errorf("a hostile job name: %v", err)
	}
	if _, err := DecodeResult(ref, []byte(`{"format":9}`), ""); !errors.Is(err, ErrFormat) {
		t.Errorf("a future format: %v", err)
	}
}

func TestClaimValidate(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	good := func() *Claim {
		return &Claim{Format: Format, Request: "alice/topic", RequestObject: strings.Repeat("a", 40), Target: strings.Repeat("b", 40),
			Run: NewRunID(now), Attempt: 2, PreviousRun: NewRunID(now.Add(-time.Hour)), Worker: strings.Repeat("C", 40)}
	}
	if err := good().Validate("alice/topic"); err != nil {
		t.Fatalf("a claim a worker writes: %v", err)
	}
	if err := good().Validate("bob"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "copied from another request") {
		t.Errorf("a claim under another request's ref: %v", err)
	}
	cases := map[string]func(c *Claim){
		"run with a path":      func(c *Claim) { c.Run = "../../heads/main" },
		"previous run path":    func(c *Claim) { c.PreviousRun = "x/../../y" },
		"previous run is own":  func(c *Claim) { c.PreviousRun = c.Run },
		"target not hex":       func(c *Claim) { c.Target = "HEAD" },
		"request object":       func(c *Claim) { c.RequestObject = "" },
		"worker escape":        func(c *Claim) { c.Worker = "\x1b]52;c;aGk=\x07" },
		"attempt 0":            func(c *Claim) { c.Attempt = 0 },
		"request name with ..": func(c *Claim) { c.Request = "../x" },
	}
	for name, mutate := range cases {
		c := good()
		mutate(c)
		err := c.Validate(c.Request)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate = %v, want ErrInvalid", name, err)
		} else if strings.ContainsAny(err.Error(), "\x1b\x07") {
			t.Errorf("%s: the error shows the value unescaped: %q", name, err)
		}
	}
}

// FutureRunIDs answers as RunIDFuture does, for ids before, at and after
// now's second, within and beyond the clock skew, and invalid ones.
func TestFutureRunIDsAgreesWithRunIDFuture(t *testing.T) {
	now := time.Date(2026, 11, 22, 9, 30, 0, 500_000_000, time.UTC)
	future := FutureRunIDs(now)
	ids := []string{"not-a-run-id", "20261122T093000Z", "20261122T0930000.1Z-abcdef"}
	for _, d := range []time.Duration{-time.Hour, -time.Second, -time.Millisecond, 0, 400 * time.Millisecond, time.Second, ClockSkew - time.Millisecond, ClockSkew, ClockSkew + 600*time.Millisecond, ClockSkew + 2*time.Second, 24 * time.Hour} {
		ids = append(ids, NewRunID(now.Add(d)))
	}
	for _, id := range ids {
		if got, want := future(id), RunIDFuture(id, now); got != want {
			t.Errorf("%s: FutureRunIDs says %v, RunIDFuture %v", id, got, want)
		}
	}
}
