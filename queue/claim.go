package queue

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// ClaimFile is the one file of a claim commit's tree.
const ClaimFile = "claim.json"

// Claim is the content of claim.json: which worker runs which request, and
// until when its lease holds. A claim commit is signed by the worker; each
// renewal is a new commit whose parent is the previous claim commit.
// Plain value; not safe for concurrent mutation.
type Claim struct {
	Format        int       `json:"format"`
	Request       string    `json:"request"`        // request name
	RequestObject string    `json:"request_object"` // the value of the request ref that was claimed (commit or tag id)
	Target        string    `json:"target"`         // the commit (or other object) under test
	Run           string    `json:"run"`
	Attempt       int       `json:"attempt"`
	PreviousRun   string    `json:"previous_run,omitempty"` // the run an expired claim named, on takeover
	Worker        string    `json:"worker"`                 // key fingerprint
	Host          string    `json:"host,omitempty"`
	Claimed       time.Time `json:"claimed"`
	Renewed       time.Time `json:"renewed"`
	LeaseExpires  time.Time `json:"lease_expires"`
}

// ClockSkew is how long past LeaseExpires a claim is still respected, so
// that workers whose clocks disagree a little never take over a live run.
const ClockSkew = 15 * time.Second

// Expired reports whether the lease ran out (with ClockSkew of margin).
func (c *Claim) Expired(now time.Time) bool {
	return now.After(c.LeaseExpires.Add(ClockSkew))
}

// EncodeClaim renders claim.json.
func EncodeClaim(c *Claim) ([]byte, error) {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// DecodeClaim parses claim.json, checking the format first.
func DecodeClaim(b []byte) (*Claim, error) {
	var probe struct {
		Format *int `json:"format"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, fmt.Errorf("claim.json is not valid JSON: %w", err)
	}
	if probe.Format == nil || *probe.Format != Format {
		f := "none"
		if probe.Format != nil {
			f = fmt.Sprint(*probe.Format)
		}
		return nil, fmt.Errorf("%w: claim.json has format %s and this refci reads format %d; upgrade refci", ErrFormat, f, Format)
	}
	var c Claim
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("claim.json: %w", err)
	}
	return &c, nil
}

// DecodeClaimOf decodes claim.json read under refs/ci/claims/<name> and
// checks it (Validate): the one way every reader of claims believes one.
func DecodeClaimOf(b []byte, name string) (*Claim, error) {
	c, err := DecodeClaim(b)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(name); err != nil {
		return nil, err
	}
	return c, nil
}

// Validate checks a claim read under refs/ci/claims/<name> before anything
// of it is believed or used: it must be about that request, and every value
// that becomes a ref name, a path or a line of output must have the shape a
// worker writes (a run id, a full hex target, a key fingerprint). The error
// wraps ErrInvalid and shows the offending value escaped.
func (c *Claim) Validate(name string) error {
	bad := func(field, v, why string) error {
		return fmt.Errorf("%w: claim.json under %s: %s %s %s", ErrInvalid, Printable(ClaimRef(name)), field, Printable(v), why)
	}
	switch {
	case c.Request != name:
		return bad("request", c.Request, "is not the request the claim ref names: a claim copied from another request")
	case ValidateRequestName(c.Request) != nil:
		return bad("request", c.Request, "is not a request name")
	case !isHexID(c.RequestObject):
		return bad("request_object", c.RequestObject, "is not a full hex object id")
	case !isHexID(c.Target):
		return bad("target", c.Target, "is not a full hex object id")
	case !ValidRunID(c.Run):
		return bad("run", c.Run, "is not a run id")
	case c.Attempt < 1:
		return bad("attempt", fmt.Sprint(c.Attempt), "is not 1 or more")
	case c.PreviousRun != "" && !ValidRunID(c.PreviousRun):
		return bad("previous_run", c.PreviousRun, "is not a run id")
	case c.PreviousRun == c.Run && c.Run != "":
		return bad("previous_run", c.PreviousRun, "is the claim's own run")
	case !isFingerprint(c.Worker):
		return bad("worker", c.Worker, "is not a hex key fingerprint")
	}
	return nil
}

// ClaimMessage is the commit message of a claim commit.
func ClaimMessage(c *Claim) string {
	return fmt.Sprintf("refci: claim %s (attempt %d)\n\n%s: %s\n%s: %s\n%s: %d\n", c.Request, c.Attempt,
		TrailerRequest, c.Request, TrailerRun, c.Run, TrailerAttempt, c.Attempt)
}

// RequestOptions are the options a request carries in its annotated tag's
// message, as "Key: value" lines (keys are case-insensitive).
type RequestOptions struct {
	Env     string
	Timeout time.Duration
}

// RequestOptionNames are the keys ParseRequestOptions knows, as they are
// written.
var RequestOptionNames = []string{"Env", "Timeout"}

// ParseRequestOptions reads the Key: value lines of a request tag
// message, after its subject paragraph (free text, whatever it holds:
// "Release: 1.2" is a subject, not an option). A line is an option when
// the text before its first colon is one word (letters, digits, '-', '_',
// starting with a letter); other lines (free text) are ignored, and so is
// a signed tag's signature.
// Every option line must be right: an unknown key, a key given twice or a
// bad value is an error that names the option and its value and says
// what is accepted, so that a worker can answer the request with it
// rather than run with defaults the requester did not ask for.
func ParseRequestOptions(msg string) (RequestOptions, error) {
	var o RequestOptions
	seen := map[string]bool{}
	lines := strings.Split(msg, "\n")
	for len(lines) > 0 && strings.TrimSpace(lines[0]) != "" {
		// The subject paragraph: free text, but for a known option
		// there (git tag -m "Env: staging"), which would otherwise be
		// ignored without a word.
		if k, _, ok := strings.Cut(lines[0], ":"); ok && slices.ContainsFunc(RequestOptionNames, func(n string) bool { return strings.EqualFold(n, k) }) {
			return o, fmt.Errorf("request option %s is in the tag's subject line; options go after it, following a blank line (git tag -m 'refci request' -m '%s: ...')", k, k)
		}
		lines = lines[1:]
	}
	for _, line := range lines {
		if strings.HasPrefix(line, "-----BEGIN PGP") || strings.HasPrefix(line, "-----BEGIN SSH SIGNATURE") {
			break // the signature of a signed tag
		}
		k, v, ok := strings.Cut(strings.TrimRight(line, "\r"), ":")
		if !ok || !optionKeyShape(k) {
			continue
		}
		v = strings.TrimSpace(v)
		key := strings.ToLower(k)
		if seen[key] {
			return o, fmt.Errorf("request option %s is given twice; give each option once (the options are %s)", k, strings.Join(RequestOptionNames, ", "))
		}
		seen[key] = true
		switch key {
		case "env":
			if err := ValidateJobName(v); err != nil {
				return o, fmt.Errorf("request option %s: %q is not a valid environment name; use 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit", k, v)
			}
			o.Env = v
		case "timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return o, fmt.Errorf("request option %s: %q is not a positive duration; write e.g. \"Timeout: 20m\" (units h, m, s)", k, v)
			}
			o.Timeout = d
		default:
			return o, fmt.Errorf("request option %s (%q) is unknown; the options are %s, as \"Key: value\" lines of the tag message (free text must not start with a word and a colon)", k, v, strings.Join(RequestOptionNames, ", "))
		}
	}
	return o, nil
}

// optionKeyShape reports whether k can be an option key: one word of
// letters, digits, '-' and '_' starting with a letter.
func optionKeyShape(k string) bool {
	if k == "" || len(k) > 64 {
		return false
	}
	for i, c := range k {
		switch {
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '-' || c == '_'):
		default:
			return false
		}
	}
	return true
}

// FormatRequestOptions is the inverse of ParseRequestOptions, for
// `refci trigger`.
func FormatRequestOptions(subject string, o RequestOptions) string {
	var b strings.Builder
	b.WriteString(subject)
	b.WriteString("\n\n")
	if o.Env != "" {
		fmt.Fprintf(&b, "Env: %s\n", o.Env)
	}
	if o.Timeout > 0 {
		fmt.Fprintf(&b, "Timeout: %s\n", o.Timeout)
	}
	return b.String()
}
