package queue

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// What a reader checks before it believes a result.
//
// A signature says who wrote a result commit, not where it belongs: a
// genuine result copied under another ref (another commit's runs, another
// run id) still carries a good signature. A result is therefore believed
// only when the content its worker signed (status.json and the commit
// message's trailers) names the target and run id of the ref it was found
// under, and the trailers agree with status.json on request, attempt and
// state (CheckResult). Every value of status.json that a reader may turn
// into a path, a file name or a URL has the shape the writer gives it
// (Status.Validate), so a hostile result cannot name a file outside its
// place. A run id dated in the future is not believed to be the latest
// (RunIDFuture).

// ErrInconsistent is returned (wrapped) by CheckResult for a result whose
// signed content does not agree with the ref it was found under.
var ErrInconsistent = errors.New("result does not agree with its ref")

// ErrInvalid is returned (wrapped) by Status.Validate for a status.json
// with a value that does not have the shape refci writes.
var ErrInvalid = errors.New("invalid value in status.json")

// ParseTrailers returns the "Key: value" lines of the last paragraph of a
// commit message, as git interpret-trailers reads them. A key given twice
// is an error: a reader must not have to choose one.
func ParseTrailers(msg string) (map[string]string, error) {
	msg = strings.TrimRight(msg, "\n")
	if i := strings.LastIndex(msg, "\n\n"); i >= 0 {
		msg = msg[i+2:]
	}
	out := map[string]string{}
	for _, line := range strings.Split(msg, "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			continue
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("the commit message has the trailer %s twice", k)
		}
		out[k] = v
	}
	return out, nil
}

// CheckResult checks that a result commit found under ref (a run ref)
// says what ref says: status.json (st) and the commit message's trailers
// (msg) name ref's target and run id, and agree with each other on
// request, attempt and state. It applies to every commit of a run's
// snapshot chain. The error wraps ErrInconsistent and says which value
// disagrees.
func CheckResult(ref string, st *Status, msg string) error {
	target, run, ok := ParseRunRef(ref)
	if !ok {
		return fmt.Errorf("%w: %q is not a run ref (refs/ci/runs/<commit>/<run-id>)", ErrInconsistent, ref)
	}
	if st.Target != target {
		return fmt.Errorf("%w: status.json is about commit %s but was found under %s: a result copied from another commit", ErrInconsistent, Printable(st.Target), ref)
	}
	if st.Run != run {
		return fmt.Errorf("%w: status.json is run %s but was found under %s: a result copied from another run", ErrInconsistent, Printable(st.Run), ref)
	}
	tr, err := ParseTrailers(msg)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInconsistent, err)
	}
	want := []struct{ key, val string }{
		{TrailerTarget, st.Target},
		{TrailerRequest, st.Request},
		{TrailerRun, st.Run},
		{TrailerAttempt, strconv.Itoa(st.Attempt)},
		{TrailerState, string(st.State)},
	}
	for _, w := range want {
		got, ok := tr[w.key]
		if !ok {
			return fmt.Errorf("%w: the commit message has no %s trailer", ErrInconsistent, w.key)
		}
		if got != w.val {
			return fmt.Errorf("%w: the commit message says %s: %s but status.json says %s", ErrInconsistent, w.key, Printable(got), Printable(w.val))
		}
	}
	return nil
}

// DecodeResult reads the result commit found under ref, given its
// status.json and its commit message, the way every reader does before it
// believes it: the status decodes (DecodeStatus), agrees with ref
// (CheckResult) and has valid values (Validate). The error wraps
// ErrFormat, ErrInconsistent or ErrInvalid, or says the JSON is broken.
func DecodeResult(ref string, statusJSON []byte, msg string) (*Status, error) {
	st, err := DecodeStatus(statusJSON)
	if err != nil {
		return nil, err
	}
	if err := CheckResult(ref, st, msg); err != nil {
		return nil, err
	}
	if err := st.Validate(); err != nil {
		return nil, err
	}
	return st, nil
}

// RunIDTime returns the start time a run id names (see NewRunID).
func RunIDTime(id string) (time.Time, bool) {
	if !ValidRunID(id) {
		return time.Time{}, false
	}
	ts, _, _ := strings.Cut(id, "Z-")
	t, err := time.Parse("20060102T150405.999999999", ts)
	if err != nil {
		return time.Time{}, false
	}
	return t.UTC(), true
}

// RunIDFuture reports whether a run id is dated after now by more than
// ClockSkew (or is not a run id at all). Such a run is not believed to be
// the latest of anything: a hostile or broken writer could otherwise pin
// "the latest run" for years.
func RunIDFuture(id string, now time.Time) bool {
	t, ok := RunIDTime(id)
	return !ok || t.After(now.Add(ClockSkew))
}

// FutureRunIDs is RunIDFuture with now fixed, for many ids: an id dated
// no later than now's second (within ClockSkew of now) is answered by
// comparing its first 15 bytes, without parsing its time.
func FutureRunIDs(now time.Time) func(id string) bool {
	sec := now.UTC().Format("20060102T150405")
	return func(id string) bool {
		if len(id) >= 15 && id[:15] <= sec && ValidRunID(id) {
			return false
		}
		return RunIDFuture(id, now)
	}
}

// Validate checks every value of s that a reader may turn into a path, a
// file name, a URL or a ref: target, run, request, previous run, worker,
// env, secrets commit, job names, their needs and log paths, artifact
// paths and hashes.
// Free text (reasons, host, skipped artifacts' paths) is not checked:
// readers show it escaped and never use it as a path. The error wraps
// ErrInvalid and shows the offending value escaped.
func (s *Status) Validate() error {
	bad := func(field, v, why string) error {
		return fmt.Errorf("%w: %s %s %s", ErrInvalid, field, Printable(v), why)
	}
	if !isHexID(s.Target) {
		return bad("target", s.Target, "is not a full hex object id")
	}
	if !ValidRunID(s.Run) {
		return bad("run", s.Run, "is not a run id")
	}
	if err := ValidateRequestName(s.Request); err != nil {
		return bad("request", s.Request, "is not a request name")
	}
	if s.RequestObject != "" && !isHexID(s.RequestObject) {
		return bad("request_object", s.RequestObject, "is not a full hex object id")
	}
	if s.Attempt < 1 {
		return bad("attempt", strconv.Itoa(s.Attempt), "is not 1 or more")
	}
	if p := s.PreviousRun(); p != "" && !ValidRunID(p) {
		return bad("extra.previous_run", p, "is not a run id")
	}
	if !isFingerprint(s.Worker) {
		return bad("worker", s.Worker, "is not a hex key fingerprint")
	}
	if s.Env != "" && ValidateJobName(s.Env) != nil {
		return bad("env", s.Env, "is not an environment name")
	}
	if s.SecretsCommit != "" && !isHexID(s.SecretsCommit) {
		return bad("secrets_commit", s.SecretsCommit, "is not a full hex object id")
	}
	seen := map[string]bool{}
	for _, j := range s.Jobs {
		if ValidateJobName(j.Name) != nil {
			return bad("job name", j.Name, "is not a job name")
		}
		if seen[j.Name] {
			return bad("job name", j.Name, "is given twice")
		}
		seen[j.Name] = true
		if !j.State.Valid() {
			return bad("state of job "+j.Name, string(j.State), "is not a state")
		}
		if j.Log != "" && j.Log != JobLogPath(j.Name) {
			return bad("log of job "+j.Name, j.Log, "is not "+JobLogPath(j.Name))
		}
		for _, n := range j.Needs {
			if ValidateJobName(n) != nil {
				return bad("need of job "+j.Name, n, "is not a job name")
			}
		}
	}
	for _, a := range s.Artifacts {
		if err := ValidateArtifactPath(a.Path); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		if len(a.SHA256) != 64 || !isLowerHex(a.SHA256) {
			return bad("sha256 of artifact", a.SHA256, "is not 64 hex digits")
		}
		if a.Size < 0 {
			return bad("size of artifact", strconv.FormatInt(a.Size, 10), "is negative")
		}
	}
	return nil
}

// ValidateArtifactPath checks the path of an artifact, relative to
// artifacts/ in the result tree: slash-separated, valid UTF-8, at most
// 1,024 bytes, no empty, "." or ".." component, no component git would
// take for .git (on any file system), no control character, backslash or
// invisible formatting character (bidi overrides, zero-width characters). Workers store only
// such paths (others are left out, with the reason); readers refuse
// results that name others.
func ValidateArtifactPath(p string) error {
	bad := func(why string) error { return fmt.Errorf("artifact path %s %s", Printable(p), why) }
	switch {
	case p == "":
		return bad("is empty")
	case len(p) > 1024:
		return bad("is longer than 1024 bytes")
	case !utf8.ValidString(p):
		return bad("is not valid UTF-8")
	}
	for _, c := range p {
		if c < 0x20 || c == 0x7f || c == '\\' || (c >= 0x80 && c < 0xa0) {
			return bad("has a control character or a backslash")
		}
		if unicode.Is(unicode.Cf, c) || c == '\u2028' || c == '\u2029' {
			// Invisible: bidi overrides, zero-width characters (which
			// HFS+ ignores, so ".git\u200c" is .git there), line separators.
			return bad("has an invisible or formatting character")
		}
	}
	for _, part := range strings.Split(p, "/") {
		switch {
		case part == "" || part == "." || part == "..":
			return bad("has an empty, \".\" or \"..\" component")
		case strings.EqualFold(strings.TrimRight(part, ". "), ".git"),
			strings.EqualFold(strings.TrimRight(part, ". "), "git~1"): // .git's NTFS short name
			return bad("has a component git would take for .git")
		}
	}
	return nil
}

// Printable returns s quoted, with control characters and invalid UTF-8
// escaped, for error messages about values read from results.
func Printable(s string) string {
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return strconv.QuoteToASCII(s)
}

func isFingerprint(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

func isLowerHex(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
