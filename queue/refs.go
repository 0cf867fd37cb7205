package queue

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"refci.dev/refci/queue/jobname"
)

// The ref layout. Every ref name refci reads or writes is built here and
// nowhere else.
const (
	Namespace      = "refs/ci/"
	RequestsPrefix = "refs/ci/requests/"
	ClaimsPrefix   = "refs/ci/claims/"
	RunsPrefix     = "refs/ci/runs/"
	SecretsPrefix  = "refs/ci/secrets/"
	MailPrefix     = "refs/ci/mail/"
)

// RequestRef is the ref a user pushes to ask for a run named name.
func RequestRef(name string) string { return RequestsPrefix + name }

// ClaimRef is the ref a worker holds while it runs request name.
func ClaimRef(name string) string { return ClaimsPrefix + name }

// RunRef is the ref of one run's result commits.
func RunRef(target, runID string) string { return RunsPrefix + target + "/" + runID }

// PullRequestPrefix begins the names of requests a forge's pull requests
// were taken in as (refci's forge intake): pull request 42 is the request
// pr/42.
const PullRequestPrefix = "pr/"

// PullRequestName is the request name of pull request n.
func PullRequestName(n int) string { return PullRequestPrefix + strconv.Itoa(n) }

// PullRequestOf returns the pull request number a request name names, and
// whether it is one (pr/<n>, n a positive number in its plain form).
func PullRequestOf(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, PullRequestPrefix)
	n, err := strconv.Atoi(rest)
	return n, ok && err == nil && n > 0 && strconv.Itoa(n) == rest
}

// IntakeHeadRef is where refci's forge intake keeps, in its own cache
// repository (never on a remote), the fetched head of the pull request
// whose request name is name.
func IntakeHeadRef(name string) string { return "refs/refci-intake/" + name }

// MailLedgerRef is the ledger of the mail bridge named name
// (ValidateEnvName's rules): a commit chain recording the messages it
// handled, the series it claimed and the replies it owes or sent (see
// PROTOCOL.md, "The mail bridge").
func MailLedgerRef(name string) string { return MailPrefix + "ledger/" + name }

// MailSeriesRef keeps on the remote the applied head of the mailed
// series whose request name is request (patches/<id>/v<N>), so that its
// commits stay fetchable after the request ran and was deleted.
func MailSeriesRef(request string) string { return MailPrefix + request }

// SecretsRef is the ref of one environment's secrets.
func SecretsRef(env string) string { return SecretsPrefix + env }

// ValidateEnvName checks the name of a secrets environment, which ends
// its ref: letters, digits, '.', '_' and '-', as for job names.
func ValidateEnvName(env string) error {
	if err := ValidateJobName(env); err != nil {
		return fmt.Errorf("environment name %q: use letters, digits, '.', '_' or '-', starting with a letter or digit", env)
	}
	return nil
}

// Refs a worker keeps in its own cache of a remote and never pushes.
const (
	seenSecretsPrefix    = "refs/refci/seen-secrets/"
	fetchedSecretsPrefix = "refs/refci/fetched-secrets/"
)

// SeenSecretsRef is where a worker remembers the version of environment
// env it verified last: a later version must descend from it.
func SeenSecretsRef(env string) string { return seenSecretsPrefix + env }

// FetchedSecretsRef is where a worker fetches environment env's ref to
// before verifying it.
func FetchedSecretsRef(env string) string { return fetchedSecretsPrefix + env }

// ParseRunRef splits refs/ci/runs/<target>/<run-id>.
func ParseRunRef(ref string) (target, runID string, ok bool) {
	rest, found := strings.CutPrefix(ref, RunsPrefix)
	if !found {
		return "", "", false
	}
	target, runID, found = strings.Cut(rest, "/")
	if !found || !isHexID(target) || !ValidRunID(runID) {
		return "", "", false
	}
	return target, runID, true
}

// ValidRunID reports whether s has the shape of a run id:
// YYYYMMDDTHHMMSS[.fraction]Z-hex, with 1 to 9 fraction digits and 6 to 16
// hex digits. (Checked by hand: a regexp compiled at start-up costs every
// refci process time.)
func ValidRunID(s string) bool {
	digits := func(s string) bool {
		for _, c := range s {
			if c < '0' || c > '9' {
				return false
			}
		}
		return true
	}
	if len(s) < 16 || !digits(s[:8]) || s[8] != 'T' || !digits(s[9:15]) {
		return false
	}
	rest := s[15:]
	if rest[0] == '.' {
		i := 1
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 1 || i > 10 {
			return false
		}
		rest = rest[i:]
	}
	hexPart, ok := strings.CutPrefix(rest, "Z-")
	if !ok || len(hexPart) < 6 || len(hexPart) > 16 {
		return false
	}
	for _, c := range hexPart {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// NewRunID returns a run id that sorts by start time: the UTC time to the
// millisecond, then 12 random hex digits so that two workers starting in the same
// millisecond never collide, e.g. 20261122T093000.123Z-3f9a1c0b2d4e (48 random bits).
func NewRunID(now time.Time) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return now.UTC().Format("20060102T150405.000Z") + "-" + hex.EncodeToString(b[:])
}

// IsObjectID reports whether s is a full lower-case hex object id (SHA-1
// or SHA-256), as the target of a run ref is.
func IsObjectID(s string) bool { return isHexID(s) }

func isHexID(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// ValidateRequestName checks a request name (the part after
// refs/ci/requests/). Names may contain slashes; each component follows
// git's ref-name rules, restricted to a portable set so that the same name
// works as a file path on every worker.
func ValidateRequestName(name string) error {
	if name == "" {
		return fmt.Errorf("request name is empty")
	}
	if len(name) > 200 {
		return fmt.Errorf("request name %q is longer than 200 bytes", name)
	}
	for _, part := range strings.Split(name, "/") {
		switch {
		case part == "":
			return fmt.Errorf("request name %q has an empty component (leading, trailing or double slash)", name)
		case part == "." || part == ".." || strings.HasPrefix(part, "."):
			return fmt.Errorf("request name %q has a component starting with a dot", name)
		case part == "@":
			return fmt.Errorf("request name %q has a component that is just \"@\"", name)
		case strings.HasSuffix(part, ".lock"):
			return fmt.Errorf("request name %q has a component ending in .lock", name)
		}
		for _, c := range part {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_.+=,@", c)) {
				return fmt.Errorf("request name %q contains %q; use letters, digits, '/' and -_.+=,@", name, c)
			}
		}
	}
	if strings.Contains(name, "..") {
		return fmt.Errorf("request name %q contains \"..\"", name)
	}
	if strings.HasSuffix(name, ".") { // git refuses a ref name ending in a dot
		return fmt.Errorf("request name %q ends with a dot", name)
	}
	return nil
}

// ValidateJobName checks the NAME of `refci job NAME`: it becomes the
// directory jobs/NAME in the result tree. The rule is package jobname's.
func ValidateJobName(name string) error { return jobname.Validate(name) }

// Result tree paths (format 1).
const (
	StatusFile   = "status.json"
	LogFile      = "log.txt"
	JobsDir      = "jobs"
	ArtifactsDir = "artifacts"
	IndexFile    = "index.html"
)

// JobLogPath is the path of a job's log in the result tree.
func JobLogPath(job string) string { return JobsDir + "/" + job + "/log.txt" }

// Commit message trailers of a result commit.
const (
	TrailerTarget  = "Refci-Target"
	TrailerRequest = "Refci-Request"
	TrailerRun     = "Refci-Run"
	TrailerState   = "Refci-State"
	TrailerAttempt = "Refci-Attempt"
)

// CommitMessage is the message of a result commit: a subject naming state,
// target and request, then trailers.
func CommitMessage(s *Status) string {
	short := s.Target
	if len(short) > 12 {
		short = short[:12]
	}
	var b strings.Builder
	fmt.Fprintf(&b, "refci: %s %s (request %s)\n\n", s.State, short, s.Request)
	if s.Reason != "" {
		b.WriteString(s.Reason)
		b.WriteString("\n\n")
	}
	fmt.Fprintf(&b, "%s: %s\n", TrailerTarget, s.Target)
	fmt.Fprintf(&b, "%s: %s\n", TrailerRequest, s.Request)
	fmt.Fprintf(&b, "%s: %s\n", TrailerRun, s.Run)
	fmt.Fprintf(&b, "%s: %d\n", TrailerAttempt, s.Attempt)
	fmt.Fprintf(&b, "%s: %s\n", TrailerState, s.State)
	return b.String()
}

func isAlnum(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
