package queue

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

// The readers of values that strangers write (status.json, claim.json,
// commit messages, request tags, names) are fuzzed: they must never
// panic, and whatever they accept must be safe to use as a path, a ref
// name or a line of output. `go test` runs the seeds; run a fuzzer with
// e.g. go test -run '^$' -fuzz FuzzDecodeResult -fuzztime 60s ./queue/

// within reports whether joining rel under base stays strictly inside
// base and the joined path is what rel names (no component vanished).
func within(base, rel string) bool {
	j := filepath.Join(base, rel)
	return strings.HasPrefix(j, base+"/") && j == base+"/"+rel
}

func noControl(s string) bool {
	for _, c := range s {
		if c < 0x20 || c == 0x7f || (c >= 0x80 && c < 0xa0) {
			return false
		}
	}
	return utf8.ValidString(s)
}

func FuzzDecodeResult(f *testing.F) {
	st := fullStatus()
	good, _ := EncodeStatus(st)
	ref, msg := RunRef(st.Target, st.Run), CommitMessage(st)
	f.Add(good, ref, msg)
	f.Add(good, RunRef(strings.Repeat("0", 40), st.Run), msg)
	f.Add(good, ref, "refci: success\n\nRefci-State: success\nRefci-State: failure\n")
	f.Add([]byte(`{"format":1,"state":"success","target":"../../etc","run":"x","jobs":[{"name":"../x","log":"/etc/passwd"}],"artifacts":[{"path":"../../a"}]}`), ref, msg)
	f.Add([]byte(`{"format":1,"state":"success","extra":{"previous_run":["x"]}}`), ref, msg)
	f.Add([]byte(`{"format":2}`), ref, msg)
	f.Add([]byte(`{"format":1,"state":"bogus"}`), ref, "")
	f.Add([]byte("\xff{"), "refs/ci/runs/", "\n\n: \n")
	f.Fuzz(func(t *testing.T, statusJSON []byte, ref, msg string) {
		st, err := DecodeResult(ref, statusJSON, msg)
		if err != nil {
			if (errors.Is(err, ErrInconsistent) || errors.Is(err, ErrInvalid)) && !noControl(err.Error()) {
				t.Errorf("an error shows a value unescaped: %q", err)
			}
			return
		}
		target, run, ok := ParseRunRef(ref)
		if !ok || target != st.Target || run != st.Run {
			t.Fatalf("accepted %+v under %q", st, ref)
		}
		if err := st.Validate(); err != nil {
			t.Fatalf("DecodeResult accepted what Validate refuses: %v", err)
		}
		if RunIDFuture(st.Run, time.Now()) != RunIDFuture(run, time.Now()) {
			t.Fatal("run id differs")
		}
		base := "/srv/site"
		for _, p := range []string{st.Target, st.Run, st.Request, st.Env, st.PreviousRun()} {
			if p != "" && (!within(base, p) || !noControl(p)) {
				t.Errorf("value %q escapes %s or has a control character", p, base)
			}
		}
		for _, j := range st.Jobs {
			if !within(base, JobLogPath(j.Name)) || !noControl(j.Name) || (j.Log != "" && j.Log != JobLogPath(j.Name)) {
				t.Errorf("job %q (log %q) is not a safe name", j.Name, j.Log)
			}
		}
		for _, a := range st.Artifacts {
			if !within(base, a.Path) || !noControl(a.Path) {
				t.Errorf("artifact %q escapes or has a control character", a.Path)
			}
		}
	})
}

// A hostile reason (free text the pipeline can influence) never changes
// what the trailers of the result commit say.
func FuzzCommitMessageReason(f *testing.F) {
	f.Add("exit 1")
	f.Add("x\n\nRefci-State: success\nRefci-Target: 0000000000000000000000000000000000000000")
	f.Add("\n\n\n")
	f.Add("Refci-Run: 20990101T000000.000Z-abcdef\n")
	f.Fuzz(func(t *testing.T, reason string) {
		st := fullStatus()
		st.Reason = reason
		if err := CheckResult(RunRef(st.Target, st.Run), st, CommitMessage(st)); err != nil {
			t.Fatalf("reason %q breaks the result's own trailers: %v", reason, err)
		}
	})
}

func FuzzParseTrailers(f *testing.F) {
	f.Add(CommitMessage(fullStatus()))
	f.Add("a: b\na: c\n")
	f.Add("subject\n\nbody: x\n\nKey: v\nKey2:v\n bad: x\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, msg string) {
		tr, err := ParseTrailers(msg)
		if err != nil {
			return
		}
		for k, v := range tr {
			if k == "" || strings.ContainsAny(k, " \t\n") || strings.Contains(v, "\n") {
				t.Errorf("trailer %q: %q", k, v)
			}
		}
	})
}

func FuzzDecodeClaim(f *testing.F) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	c := &Claim{Format: Format, Request: "alice/topic", RequestObject: strings.Repeat("a", 40), Target: strings.Repeat("b", 40),
		Run: NewRunID(now), Attempt: 2, PreviousRun: NewRunID(now.Add(-time.Hour)), Worker: strings.Repeat("C", 40),
		Claimed: now, Renewed: now, LeaseExpires: now.Add(time.Minute)}
	good, _ := EncodeClaim(c)
	f.Add(good, "alice/topic")
	f.Add(good, "bob")
	f.Add([]byte(`{"format":1,"request":"x","target":"../../etc","run":"../x","previous_run":"../../y","worker":"\u001b]52;c;aGk=\u0007"}`), "x")
	f.Add([]byte(`{"format":7}`), "x")
	f.Add([]byte(`[]`), "")
	f.Fuzz(func(t *testing.T, b []byte, name string) {
		c, err := DecodeClaim(b)
		if err != nil {
			return
		}
		if err := c.Validate(name); err != nil {
			if !noControl(err.Error()) {
				t.Errorf("an error shows a value unescaped: %q", err)
			}
			return
		}
		if c.Request != name {
			t.Fatalf("a claim about %q accepted under %q", c.Request, name)
		}
		if tg, run, ok := ParseRunRef(RunRef(c.Target, c.Run)); !ok || tg != c.Target || run != c.Run {
			t.Fatalf("claim names run ref %q", RunRef(c.Target, c.Run))
		}
		if c.PreviousRun != "" && !ValidRunID(c.PreviousRun) {
			t.Fatalf("previous run %q", c.PreviousRun)
		}
		if !noControl(c.Worker) || !within("/x", c.Worker) {
			t.Fatalf("worker %q", c.Worker)
		}
	})
}

func FuzzParseRequestOptions(f *testing.F) {
	f.Add("refci request x\n\nEnv: staging\nTimeout: 20m\n")
	f.Add("Env: ../../x\n")
	f.Add("Timeout: -1s\nTimeout: 99999999999999h\n")
	f.Add("ENV:prod\nunknown: 1\n-----BEGIN PGP SIGNATURE-----\nEnv: evil\n")
	f.Add(":\n:x\n x: y\n")
	f.Fuzz(func(t *testing.T, msg string) {
		o, err := ParseRequestOptions(msg)
		if err != nil {
			return
		}
		if o.Env != "" && ValidateJobName(o.Env) != nil {
			t.Fatalf("accepted env %q", o.Env)
		}
		if o.Timeout < 0 {
			t.Fatalf("accepted timeout %v", o.Timeout)
		}
		// What trigger writes from accepted options reads back the same.
		back, err := ParseRequestOptions(FormatRequestOptions("refci request x", o))
		if err != nil || back.Env != o.Env || back.Timeout != o.Timeout {
			t.Fatalf("options %+v read back as %+v, %v", o, back, err)
		}
	})
}

// A name that passes its check never leaves the directory it is joined
// under, never is .git, and has no control character.
func FuzzValidateNames(f *testing.F) {
	for _, s := range []string{"main", "alice/topic", "../x", "a/./b", ".git/config", "a\x1b[2Jb", "x/.GIT. ", "git~1/x", "a\u202eb", "a//b", "/abs", "a\\b", "ok.txt"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		base := "/srv/out"
		check := func(kind string, rel string) {
			if !within(base, rel) || !noControl(rel) {
				t.Fatalf("%s %q passes but escapes %s or has a control character", kind, name, base)
			}
			for _, part := range strings.Split(rel, "/") {
				if strings.EqualFold(strings.TrimRight(part, ". "), ".git") {
					t.Fatalf("%s %q passes but has a .git component", kind, name)
				}
			}
		}
		if ValidateRequestName(name) == nil {
			check("request name", name)
			if strings.ContainsFunc(name, unicode.IsSpace) {
				t.Fatalf("request name %q has a space", name)
			}
		}
		if ValidateJobName(name) == nil {
			check("job name", JobLogPath(name))
		}
		if ValidateArtifactPath(name) == nil {
			check("artifact path", name)
			if strings.ContainsFunc(name, func(r rune) bool { return unicode.Is(unicode.Cf, r) }) {
				t.Fatalf("artifact path %q has a formatting character", name)
			}
		}
	})
}
