package queue

import (
	"fmt"
	"math/rand"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"refci.dev/refci/fixtures"
)

func TestRefNames(t *testing.T) {
	t.Parallel()
	target := "3f9a1c0b2d4e5f60718293a4b5c6d7e8f9a0b1c2"
	for got, want := range map[string]string{
		RequestRef("pr/42"):                           "refs/ci/requests/pr/42",
		ClaimRef("alice/topic"):                       "refs/ci/claims/alice/topic",
		RunRef(target, "20261122T093000.123Z-3f9a1c"): "refs/ci/runs/" + target + "/20261122T093000.123Z-3f9a1c",
		SecretsRef("prod"):                            "refs/ci/secrets/prod",
		JobLogPath("build"):                           "jobs/build/log.txt",
		Namespace + "x":                               "refs/ci/x",
		StatusFile + LogFile + JobsDir + ArtifactsDir + IndexFile: "status.jsonlog.txtjobsartifactsindex.html",
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	for _, p := range []string{RequestsPrefix, ClaimsPrefix, RunsPrefix, SecretsPrefix} {
		if !strings.HasPrefix(p, Namespace) || !strings.HasSuffix(p, "/") {
			t.Errorf("prefix %q is not a directory under %s", p, Namespace)
		}
	}
}

func TestParseRunRef(t *testing.T) {
	t.Parallel()
	sha1 := "3f9a1c0b2d4e5f60718293a4b5c6d7e8f9a0b1c2"
	sha256 := strings.Repeat("0123456789abcdef", 4)
	id := "20261122T093000.123Z-3f9a1c"
	for _, tc := range []struct {
		ref         string
		target, run string
		ok          bool
	}{
		{RunRef(sha1, id), sha1, id, true},
		{RunRef(sha256, id), sha256, id, true},
		{RunRef(sha1, "20261122T093000Z-3f9a1c0b2d4e5f60"), sha1, "20261122T093000Z-3f9a1c0b2d4e5f60", true},
		{"refs/ci/runs/" + sha1, "", "", false},
		{"refs/ci/runs/" + sha1 + "/", "", "", false},
		{"refs/ci/runs/" + sha1 + "/" + id + "/extra", "", "", false},
		{"refs/ci/runs/" + strings.ToUpper(sha1) + "/" + id, "", "", false},
		{"refs/ci/runs/" + sha1[:39] + "/" + id, "", "", false},
		{"refs/ci/runs/" + sha1 + "0/" + id, "", "", false},
		{"refs/ci/runs/" + sha1[:39] + "g/" + id, "", "", false},
		{"refs/ci/runs/" + sha1 + "/latest", "", "", false},
		{"refs/ci/requests/" + sha1 + "/" + id, "", "", false},
		{"refs/ci/runs//" + id, "", "", false},
		{"refs/heads/main", "", "", false},
		{"", "", "", false},
	} {
		target, run, ok := ParseRunRef(tc.ref)
		if target != tc.target || run != tc.run || ok != tc.ok {
			t.Errorf("ParseRunRef(%q) = %q, %q, %v; want %q, %q, %v", tc.ref, target, run, ok, tc.target, tc.run, tc.ok)
		}
	}
	// Everything RunRef builds from a real target and NewRunID parses back.
	for i := 0; i < 100; i++ {
		now := time.Date(2026, 11, 22, 9, 30, 0, 0, time.UTC).Add(time.Duration(i) * 7919 * time.Millisecond)
		id := NewRunID(now)
		target, run, ok := ParseRunRef(RunRef(sha1, id))
		if !ok || target != sha1 || run != id {
			t.Fatalf("ParseRunRef(RunRef(%s, %s)) = %q, %q, %v", sha1, id, target, run, ok)
		}
	}
}

func TestValidRunID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"20261122T093000.123Z-3f9a1c", true},
		{"20261122T093000Z-3f9a1c", true},
		{"20261122T093000.123456789Z-3f9a1c", true},
		{"20261122T093000.123Z-0123456789abcdef", true},
		{"20261122T093000.123Z-3f9a1", false},             // 5 hex digits
		{"20261122T093000.123Z-0123456789abcdef0", false}, // 17
		{"20261122T093000.123Z-3F9A1C", false},
		{"20261122T093000.123Z-3f9a1g", false},
		{"20261122T093000.123-3f9a1c", false},
		{"20261122T093000.Z-3f9a1c", false},
		{"20261122T093000.1234567890Z-3f9a1c", false},
		{"2026-11-22T09:30:00.123Z-3f9a1c", false},
		{"20261122093000.123Z-3f9a1c", false},
		{"20261122T093000.123Z3f9a1c", false},
		{"20261122T093000.123Z-3f9a1c\n", false},
		{" 20261122T093000.123Z-3f9a1c", false},
		{"20261122T093000.123Z-3f9a1c/x", false},
		{"../../20261122T093000.123Z-3f9a1c", false},
		{"", false},
	} {
		if got := ValidRunID(tc.id); got != tc.ok {
			t.Errorf("ValidRunID(%q) = %v, want %v", tc.id, got, tc.ok)
		}
	}
}

func TestNewRunIDShape(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 22, 9, 30, 0, 123999999, time.UTC) // truncated, not rounded, to the millisecond
	for _, now := range []time.Time{at, at.In(time.FixedZone("", 14*3600)), at.In(time.FixedZone("", -(9*3600 + 30*60)))} {
		id := NewRunID(now)
		if !ValidRunID(id) {
			t.Errorf("NewRunID(%v) = %q is not a valid run id", now, id)
		}
		if !strings.HasPrefix(id, "20261122T093000.123Z-") {
			t.Errorf("NewRunID(%v) = %q, want the UTC time 20261122T093000.123Z first", now, id)
		}
		if _, random, _ := strings.Cut(id, "Z-"); strings.ToLower(random) != random {
			t.Errorf("NewRunID(%v) = %q: the random part is not lower-case hex", now, id)
		}
	}
}

// TestNewRunIDSortsByTime: for instants in increasing order (at least one
// millisecond apart, in any time zone, across second, day and year
// boundaries), the ids sort in the same order as strings.
func TestNewRunIDSortsByTime(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewSource(42))
	var instants []time.Time
	add := func(ts ...time.Time) { instants = append(instants, ts...) }
	base := time.Date(2026, 11, 22, 9, 30, 0, 0, time.UTC)
	add(
		base.Add(999*time.Millisecond+999999), base.Add(time.Second), // .999 then 1.000
		time.Date(2026, 12, 31, 23, 59, 59, 999000000, time.UTC),
		time.Date(2027, 1, 1, 0, 0, 0, 900000, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 1000000, time.UTC), // .0009 then .001
		time.Date(2027, 1, 1, 0, 0, 9, 999000000, time.UTC), time.Date(2027, 1, 1, 0, 0, 10, 0, time.UTC),
		time.Date(2027, 1, 1, 0, 9, 59, 999000000, time.UTC), time.Date(2027, 1, 1, 0, 10, 0, 0, time.UTC),
	)
	cur := time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 2000; i++ {
		steps := []time.Duration{time.Millisecond, time.Millisecond + time.Duration(rng.Intn(1000000)), time.Second, time.Hour, 24 * time.Hour, 9 * time.Millisecond}
		cur = cur.Add(steps[rng.Intn(len(steps))])
		add(cur)
	}
	var ids []string
	for i, ts := range instants {
		// Express every instant in some other time zone.
		zone := time.FixedZone("", (rng.Intn(27)-12)*3600+rng.Intn(4)*15*60)
		if i > 0 && ts.Truncate(time.Millisecond).Sub(instants[i-1].Truncate(time.Millisecond)) < time.Millisecond {
			t.Fatalf("fixture: %v and %v are in the same millisecond", instants[i-1], ts)
		}
		ids = append(ids, NewRunID(ts.In(zone)))
	}
	for i := 1; i < len(ids); i++ {
		if ids[i-1] >= ids[i] {
			t.Errorf("run ids out of order: %s (at %v) >= %s (at %v)", ids[i-1], instants[i-1].UTC(), ids[i], instants[i].UTC())
		}
	}
	shuffled := append([]string(nil), ids...)
	rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	sort.Strings(shuffled)
	for i := range ids {
		if ids[i] != shuffled[i] {
			t.Fatalf("sorting run ids as strings does not sort them by time (first difference at %d)", i)
		}
	}
}

// TestNewRunIDUniqueAtSameInstant: run ids must not collide without
// coordination, even when many runs start in the same millisecond.
func TestNewRunIDUniqueAtSameInstant(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 22, 9, 30, 0, 123000000, time.UTC)
	const n = 10000
	_, random, _ := strings.Cut(NewRunID(now), "Z-")
	if bits := 4 * len(random); bits < 48 {
		// With b random bits, n ids in one millisecond collide in about
		// n²/2^(b+1) pairs: 3 for 10,000 ids and 24 bits.
		expected := float64(n) * float64(n) / float64(uint64(2)<<bits)
		t.Errorf("the random part of a run id has %d bits: about %.2g collisions are expected among %d ids made in the same millisecond", bits, expected, n)
	}
	seen := make(map[string]bool, n)
	dups := 0
	for i := 0; i < n; i++ {
		id := NewRunID(now)
		if seen[id] {
			dups++
		}
		seen[id] = true
	}
	if dups > 0 {
		t.Errorf("%d duplicate run ids among %d made at the same instant", dups, n)
	}
}

func TestValidateRequestName(t *testing.T) {
	t.Parallel()
	good := []string{
		"x", "local", "alice/topic", "pr/42", "patches/series-1/v2", "a.b", "a./b", "x+y=z,w@v", "a_b", "-x",
		"UPPER/lower/123", "a@b", "v1.2.3", "a.lock.b", strings.Repeat("a", 200), strings.Repeat("ab/", 66) + "ab",
	}
	bad := []string{
		"@", "a/@", // go-git's ref name check (used when claiming) refuses a lone @ component
		"", "/x", "x/", "a//b", ".hidden", "a/.b", "x.lock", "a/x.lock/b", "a..b", "a/../b", "..", ".", "a/./b",
		"sp ace", "tab\t", "nl\n", "ctl\x01", "del\x7f", "nul\x00", "~", "a~1", "^", "a^", ":", "a:b", "?", "*", "[", "a[b]",
		"\\", "a\\b", "a@{1}", "{", "}", "ü", "x\xff", "\"", "'", "$", "!", "#", "%", "&", "|", ";", "<", ">",
		strings.Repeat("a", 201), strings.Repeat("ab/", 66) + "abc",
		// git refuses a ref name ending in a dot (refs/ci/requests/x. cannot be pushed)
		"x.", "a/b.",
	}
	for _, n := range good {
		if err := ValidateRequestName(n); err != nil {
			t.Errorf("ValidateRequestName(%q) = %v, want nil", n, err)
		}
	}
	for _, n := range bad {
		if err := ValidateRequestName(n); err == nil {
			t.Errorf("ValidateRequestName(%q) = nil, want an error", n)
		} else if n != "" && !strings.Contains(err.Error(), fmt.Sprintf("%q", n)) && len(n) <= 200 {
			t.Errorf("ValidateRequestName(%q): error %q does not quote the name", n, err)
		}
	}
	if len(strings.Repeat("ab/", 66)+"ab") != 200 {
		t.Fatal("fixture: the 200-byte name is not 200 bytes")
	}
}

// TestValidateRequestNameAgreesWithGit: every accepted name makes a ref
// name git accepts, and is a safe relative file path.
func TestValidateRequestNameAgreesWithGit(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewSource(7))
	const alphabet = "ab.-_+=,@/"
	names := []string{"x", "alice/topic", "pr/42", "patches/series-1/v2", "x.", "a./b", "@", "a@b", "-x", "x+y=z,w@v", ".x", "a..b"}
	for len(names) < 150 {
		b := make([]byte, 1+rng.Intn(8))
		for i := range b {
			b[i] = alphabet[rng.Intn(len(alphabet))]
		}
		names = append(names, string(b))
	}
	var accepted []string
	for _, n := range names {
		if ValidateRequestName(n) == nil {
			accepted = append(accepted, n)
			if path.Clean(n) != n || strings.HasPrefix(n, "/") || strings.HasPrefix(n, "../") || !filepath.IsLocal(n) {
				t.Errorf("ValidateRequestName accepts %q, which is not a clean local path", n)
			}
		}
	}
	if len(accepted) < 20 {
		t.Fatalf("fixture: only %d random names were accepted", len(accepted))
	}
	// One shell runs git check-ref-format for every name.
	script := `for n in "$@"; do if git check-ref-format "refs/ci/requests/$n"; then echo "ok $n"; else echo "bad $n"; fi; done`
	cmd := exec.Command("sh", append([]string{"-c", script, "sh"}, accepted...)...)
	cmd.Env = fixtures.GitEnv()
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if verdict, n, _ := strings.Cut(line, " "); verdict != "ok" {
			t.Errorf("ValidateRequestName accepts %q, but git check-ref-format refuses refs/ci/requests/%s", n, n)
		}
	}
}

func TestValidateJobName(t *testing.T) {
	t.Parallel()
	good := []string{"build", "a", "A", "0", "test-unit", "go1.26", "A_b", "x.y.z", "lint_", "a-", "a.", strings.Repeat("j", 100)}
	bad := []string{
		"", "-x", ".x", "_x", "a/b", "a..b", "..", ".", "sp ace", "x\n", "x\t", "é", "a:b", "a\\b", "a*", "a\x00",
		strings.Repeat("j", 101), "build\n", "\nbuild",
	}
	for _, n := range good {
		if err := ValidateJobName(n); err != nil {
			t.Errorf("ValidateJobName(%q) = %v, want nil", n, err)
		}
	}
	for _, n := range bad {
		if err := ValidateJobName(n); err == nil {
			t.Errorf("ValidateJobName(%q) = nil, want an error", n)
		}
	}
	// Every valid job name makes a safe path in the result tree.
	for _, n := range good {
		p := JobLogPath(n)
		if path.Clean(p) != p || !strings.HasPrefix(p, JobsDir+"/") || strings.Count(p, "/") != 2 {
			t.Errorf("JobLogPath(%q) = %q is not jobs/<name>/log.txt", n, p)
		}
	}
}

func TestCommitMessage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fixtures.Git(t, dir, "init", "-q", ".")
	tree := fixtures.Git(t, dir, "write-tree")
	target := "3f9a1c0b2d4e5f60718293a4b5c6d7e8f9a0b1c2"
	for _, tc := range []struct {
		name    string
		s       Status
		subject string
	}{
		{"failure", Status{State: Failure, Target: target, Request: "local", Run: "20261122T093000.123Z-3f9a1c", Attempt: 1,
			Reason: ".refci/run exited with code 2"}, "refci: failure 3f9a1c0b2d4e (request local)"},
		{"success", Status{State: Success, Target: target, Request: "pr/42", Run: "20261122T093000.123Z-3f9a1c", Attempt: 2},
			"refci: success 3f9a1c0b2d4e (request pr/42)"},
		{"multiline-reason", Status{State: Error, Target: target, Request: "alice/topic", Run: "20261122T093000.123Z-000000", Attempt: 3,
			Reason: "checkout failed:\nnote: this line looks like a trailer\nKey: value"}, "refci: error 3f9a1c0b2d4e (request alice/topic)"},
		{"sha256", Status{State: Cancelled, Target: strings.Repeat("ab", 32), Request: "x", Run: "20261122T093000.123Z-000000", Attempt: 1,
			Reason: "superseded"}, "refci: cancelled abababababab (request x)"},
	} {
		msg := CommitMessage(&tc.s)
		subject, rest, _ := strings.Cut(msg, "\n")
		if subject != tc.subject {
			t.Errorf("%s: subject %q, want %q", tc.name, subject, tc.subject)
		}
		if !strings.HasPrefix(rest, "\n") {
			t.Errorf("%s: no blank line after the subject: %q", tc.name, msg)
		}
		if tc.s.Reason != "" && !strings.Contains(msg, "\n\n"+tc.s.Reason+"\n\n") {
			t.Errorf("%s: the reason is not its own paragraph: %q", tc.name, msg)
		}
		want := fmt.Sprintf("Refci-Target: %s\nRefci-Request: %s\nRefci-Run: %s\nRefci-Attempt: %d\nRefci-State: %s\n",
			tc.s.Target, tc.s.Request, tc.s.Run, tc.s.Attempt, tc.s.State)
		got, err := fixtures.RunGit(dir, []byte(msg), nil, "interpret-trailers", "--parse")
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s: git interpret-trailers --parse:\n%s\nwant:\n%s", tc.name, got, want)
		}
		// What git log shows for a commit with this message.
		commit := fixtures.GitStdin(t, dir, []byte(msg), "commit-tree", tree)
		logged := string(fixtures.GitBytes(t, dir, "log", "-1", "--format=%s%n%(trailers:key=Refci-State,valueonly,separator=)%n%(trailers:key=Refci-Run,valueonly,separator=)%n%(trailers:key=Refci-Attempt,valueonly,separator=)", commit))
		if wantLog := fmt.Sprintf("%s\n%s\n%s\n%d\n", tc.subject, tc.s.State, tc.s.Run, tc.s.Attempt); logged != wantLog {
			t.Errorf("%s: git log shows %q, want %q", tc.name, logged, wantLog)
		}
	}
}

func TestParseRequestOptions(t *testing.T) {
	for _, tc := range []struct {
		msg     string
		want    RequestOptions
		wantErr []string // substrings; nil: no error
	}{
		{"refci request x\n\nEnv: staging\nTimeout: 20m0s\n", RequestOptions{Env: "staging", Timeout: 20 * time.Minute}, nil},
		{"free text, no options\n\nmore text. With a colon: here\n", RequestOptions{}, nil},
		{"v1.2: a subject whose first word is no key\n\nTIMEOUT: 1m\r\n", RequestOptions{Timeout: time.Minute}, nil},
		{"x\n\nEnv: a\n-----BEGIN PGP SIGNATURE-----\nVersion: 1\n", RequestOptions{Env: "a"}, nil},
		{"x\n\nTimeout: soon\n", RequestOptions{}, []string{"Timeout", `"soon"`, "20m"}},
		{"x\n\nTimeout: 0s\n", RequestOptions{}, []string{"Timeout", `"0s"`}},
		{"x\n\nTimeout:\n", RequestOptions{}, []string{"Timeout", `""`}},
		{"x\n\nEnv: a/b\n", RequestOptions{}, []string{"Env", `"a/b"`, "letters, digits"}},
		{"x\n\nEnv: \n", RequestOptions{}, []string{"Env", `""`}},
		{"x\n\nColour: blue\n", RequestOptions{}, []string{"Colour", `"blue"`, "unknown", "Env, Timeout"}},
		{"Fix: the subject\n", RequestOptions{}, nil},
		{"Env: staging\n", RequestOptions{}, []string{"Env", "subject line", "blank line"}},
		{"timeout: 5m\n\nEnv: a\n", RequestOptions{}, []string{"timeout", "subject line"}},
		{"Release: 1.2\nstill the subject: yes\n\nTimeout: 1m\n", RequestOptions{Timeout: time.Minute}, nil},
		{"x\n\nsome text\n\nFix: in the body\n", RequestOptions{}, []string{"Fix", "unknown"}},
		{"x\n\nEnv: a\n\nSigned-off-by: A <a@example.com>\n", RequestOptions{}, []string{"Signed-off-by", "unknown"}},
		{"x\n\nEnv: a\nENV: b\n", RequestOptions{}, []string{"ENV", "given twice"}},
	} {
		got, err := ParseRequestOptions(tc.msg)
		if tc.wantErr == nil {
			if err != nil || got != tc.want {
				t.Errorf("%q: got %+v, %v; want %+v", tc.msg, got, err, tc.want)
			}
			continue
		}
		if err == nil {
			t.Errorf("%q: no error (got %+v)", tc.msg, got)
			continue
		}
		for _, w := range tc.wantErr {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q does not say %q", tc.msg, err, w)
			}
		}
	}
	// What refci trigger writes reads back the same.
	o := RequestOptions{Env: "prod-1", Timeout: 90 * time.Second}
	if got, err := ParseRequestOptions(FormatRequestOptions("refci request main", o)); err != nil || got != o {
		t.Errorf("round trip: %+v, %v", got, err)
	}
}

func TestPullRequestNames(t *testing.T) {
	if PullRequestName(42) != "pr/42" || ValidateRequestName(PullRequestName(42)) != nil {
		t.Fatalf("PullRequestName(42) = %q", PullRequestName(42))
	}
	for name, want := range map[string]int{"pr/42": 42, "pr/042": 0, "pr/-1": 0, "pr/0": 0, "pr/4/x": 0, "pr/": 0, "main": 0, "pr/+3": 0} {
		n, ok := PullRequestOf(name)
		if ok != (want > 0) || ok && n != want {
			t.Errorf("PullRequestOf(%q) = %d, %v; want %d", name, n, ok, want)
		}
	}
}
