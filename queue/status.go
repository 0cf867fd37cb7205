package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Format is the version of the result tree and of status.json that this
// code writes. Readers refuse any other value (invariant 7).
const Format = 1

// State is the state of a run or of a job inside it.
type State string

// The states. A run starts Running and ends in exactly one of the final
// states. Jobs additionally use Skipped.
const (
	Running   State = "running"
	Success   State = "success"   // the pipeline exited 0 and no job failed
	Failure   State = "failure"   // the code under test failed (non-zero exit, a failed job, a timeout)
	Error     State = "error"     // refci or the machine could not run it (no .refci/run, checkout failed, worker lost)
	Cancelled State = "cancelled" // stopped on request (Ctrl-C, request superseded or deleted)
	Skipped   State = "skipped"   // jobs only: a job whose needs did not succeed
)

// Final reports whether s is a terminal state.
func (s State) Final() bool {
	switch s {
	case Success, Failure, Error, Cancelled, Skipped:
		return true
	}
	return false
}

// Valid reports whether s is one of the known states.
func (s State) Valid() bool { return s == Running || s.Final() }

// Status is the content of status.json, the machine-readable result of one
// run. The zero value is not a valid status; build one with NewStatus.
// It is a plain value: not safe for concurrent mutation.
type Status struct {
	Format    int    `json:"format"`
	State     State  `json:"state"`
	Reason    string `json:"reason"`
	Target    string `json:"target"`               // full hex object id of the commit under test
	TargetRef string `json:"target_ref,omitempty"` // what the user named (branch, tag), informational
	Request   string `json:"request"`              // request name (refs/ci/requests/<name>), "local" for refci run
	// RequestObject is the value of the request ref that was claimed and
	// run (a commit, or an annotated tag that `refci trigger` makes unique
	// per trigger): followers match their run by it. "" for refci run.
	RequestObject string `json:"request_object,omitempty"`
	Run           string `json:"run"` // run id
	Attempt       int    `json:"attempt"`
	Worker        string `json:"worker"` // fingerprint of the signing key
	Host          string `json:"host,omitempty"`
	Env           string `json:"env"`
	Trusted       bool   `json:"trusted"`
	TrustNote     string `json:"trust_reason,omitempty"` // why the request was trusted or not
	// Secrets is "" when the run asked for no environment, SecretsAvailable
	// or SecretsWithheld; SecretsReason says why they were withheld.
	Secrets       string    `json:"secrets,omitempty"`
	SecretsReason string    `json:"secrets_reason,omitempty"`
	SecretsCommit string    `json:"secrets_commit,omitempty"` // the verified refs/ci/secrets/<env> commit used
	SecretsUsed   []string  `json:"secrets_used,omitempty"`   // names handed out, in order, never values
	Started       time.Time `json:"started"`
	Finished      time.Time `json:"finished,omitzero"`
	DurationMS    int64     `json:"duration_ms"`
	ExitCode      *int      `json:"exit_code"` // nil when the pipeline never ran
	Signal        string    `json:"signal,omitempty"`
	TimedOut      bool      `json:"timed_out,omitempty"`

	Jobs             []Job             `json:"jobs"`
	Artifacts        []Artifact        `json:"artifacts"`
	ArtifactsSkipped []SkippedArtifact `json:"artifacts_skipped,omitempty"`
	LogBytes         int64             `json:"log_bytes"` // bytes the pipeline wrote in total
	LogTruncated     bool              `json:"log_truncated"`
	Leftovers        int               `json:"leftover_processes,omitempty"`
	Version          string            `json:"refci_version,omitempty"`
	Extra            map[string]any    `json:"extra,omitempty"`
}

// ExtraPreviousRun is the key in Status.Extra under which a run that took
// over an expired claim (attempt 2 or later) names the run that claim
// held.
const ExtraPreviousRun = "previous_run"

// PreviousRun returns the run this one took over from, or "" for a first
// attempt.
func (s *Status) PreviousRun() string {
	v, _ := s.Extra[ExtraPreviousRun].(string)
	return v
}

// TargetRefFor is what Status.TargetRef records of rev, the revision a
// user named for the commit target (its full id): rev, unless rev is
// target's id or an abbreviation of it (4 to 40 hex digits), which says
// nothing more; then "".
func TargetRefFor(rev, target string) string {
	if len(rev) >= 4 && len(rev) <= 40 && len(rev) <= len(target) && target[:len(rev)] == rev {
		return ""
	}
	return rev
}

// ExtraConfigError is the key in Status.Extra that marks a run in state
// error as ended by the repository's own configuration (no .refci/run,
// not executable), which its owner must fix rather than retry.
const ExtraConfigError = "config_error"

// IsConfigError reports whether the run ended in state error because of
// the repository's own configuration (ExtraConfigError): the CLI exits 2
// for it.
func (s *Status) IsConfigError() bool {
	return s.Extra[ExtraConfigError] == true
}

// TakenOver finds the runs that lost their worker. A worker killed in the
// middle of a run leaves that run's last snapshot, state running, on the
// remote for good; the worker that takes the expired claim over names it
// as its previous run. TakenOver maps every run in runs that is not final
// and that a later attempt of the same request on the same target names
// that way, to that later attempt; the keys are the lost runs' refs
// (RunRef). A final run is never taken over: it ended before its lease
// did.
func TakenOver(runs []*Status) map[string]*Status {
	byRun := map[string]*Status{}
	for _, s := range runs {
		byRun[RunRef(s.Target, s.Run)] = s
	}
	out := map[string]*Status{}
	for _, by := range runs {
		prev := by.PreviousRun()
		if prev == "" {
			continue
		}
		key := RunRef(by.Target, prev)
		lost := byRun[key]
		if lost == nil || lost.State.Final() || lost.Request != by.Request || lost.Attempt >= by.Attempt {
			continue
		}
		if cur := out[key]; cur == nil || by.Attempt < cur.Attempt {
			out[key] = by
		}
	}
	return out
}

// Lost returns a copy of s, a run that lost its worker, as readers show
// it: in state error, saying which run took the request over. The
// result's own status.json is not changed: no worker writes another
// worker's run.
func Lost(s *Status, byRun string, byAttempt int) *Status {
	c := *s
	c.State = Error
	c.Reason = fmt.Sprintf("worker lost: its claim expired and run %s (attempt %d) took the request over", byRun, byAttempt)
	c.Jobs = append([]Job(nil), s.Jobs...)
	for i := range c.Jobs {
		if !c.Jobs[i].State.Final() {
			c.Jobs[i].State, c.Jobs[i].Reason = Error, "worker lost"
		}
	}
	return &c
}

// Values of Status.Secrets.
const (
	SecretsAvailable = "available" // the environment was verified and its values could be asked for
	SecretsWithheld  = "withheld"  // the run asked for an environment and got none: see SecretsReason
)

// Job is one job declared with `refci job` inside a pipeline.
type Job struct {
	Name       string    `json:"name"`
	Needs      []string  `json:"needs,omitempty"`
	State      State     `json:"state"`
	Reason     string    `json:"reason"`
	Started    time.Time `json:"started,omitzero"`
	Finished   time.Time `json:"finished,omitzero"`
	DurationMS int64     `json:"duration_ms"`
	ExitCode   *int      `json:"exit_code"`
	Log        string    `json:"log,omitempty"` // path in the result tree, e.g. jobs/build/log.txt
	LogBytes   int64     `json:"log_bytes"`
	Truncated  bool      `json:"log_truncated,omitempty"`
}

// Artifact is one file stored under artifacts/ in the result tree.
type Artifact struct {
	Path   string `json:"path"` // relative to artifacts/, slash-separated
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// SkippedArtifact is a file the pipeline left in $REFCI_ARTIFACTS that was
// not stored, and why.
type SkippedArtifact struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// ErrFormat is returned (wrapped) by DecodeStatus for a status.json whose
// format this version does not know.
var ErrFormat = errors.New("unknown result format")

// EncodeStatus renders s as indented JSON with a trailing newline.
func EncodeStatus(s *Status) ([]byte, error) {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// DecodeStatus parses status.json. It checks the format number before
// decoding anything else, so a newer writer's result is refused with a
// clear error instead of being misread.
func DecodeStatus(b []byte) (*Status, error) {
	var probe struct {
		Format *int `json:"format"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, fmt.Errorf("status.json is not valid JSON: %w", err)
	}
	if probe.Format == nil {
		return nil, fmt.Errorf("%w: status.json has no \"format\" field; it was not written by refci", ErrFormat)
	}
	if *probe.Format != Format {
		return nil, fmt.Errorf("%w: status.json has format %d and this refci reads format %d; upgrade refci to read it", ErrFormat, *probe.Format, Format)
	}
	var s Status
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("status.json: %w", err)
	}
	if !s.State.Valid() {
		return nil, fmt.Errorf("status.json: unknown state %q", s.State)
	}
	return &s, nil
}

// IntPtr returns a pointer to v, for ExitCode fields.
func IntPtr(v int) *int { return &v }
