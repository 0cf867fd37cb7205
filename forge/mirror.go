package forge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/renameio/v2"

	"refci.dev/refci/gitproto"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
	"refci.dev/refci/results"
)

// CommentMarker is the hidden line that marks the mirror's comment on a
// pull request, found again by it (and by every other mirror of the
// same repository) to edit it in place.
const CommentMarker = "<!-- refci:comment -->"

// Target is one forge repository a mirror shows runs on.
type Target struct {
	// Name says which forge and repository it is in logs and names its
	// record of what was mirrored, e.g. "github org/app". Names of one
	// mirror's targets are distinct.
	Name  string
	Forge Forge
}

// MirrorConfig configures a Mirror. Source and at least one Target are
// required; the other zero values are the defaults.
type MirrorConfig struct {
	// Source is the remote whose runs are mirrored and the local
	// repository its run refs are fetched into (a bare repository of the
	// mirror's own).
	Source results.Source
	// Targets are the forges that show the remote's runs.
	Targets []Target
	// StateDir holds one JSON file per target recording what that forge
	// already shows, so a restart resends nothing it has; "" keeps the
	// record in memory only.
	StateDir string
	// Poll is how often the remote is looked at (default 10s).
	Poll time.Duration
	// RunsURL is the public URL where refci serve --http (or a static
	// copy of refci view's site) serves this remote's run pages, e.g.
	// "https://ci.example.org/app.git": a run's page is
	// <RunsURL>/runs/<target>/<run>/. "" links no page.
	RunsURL string
	// MaxAge: runs that started longer ago are not mirrored, so a new
	// mirror of an old remote does not post its whole history (default
	// 7 days; negative mirrors every run).
	MaxAge time.Duration
	// MinBackoff and MaxBackoff bound the wait before a failed call is
	// tried again (defaults 1s and 5m); the wait doubles per failure in
	// a row.
	MinBackoff, MaxBackoff time.Duration
	// PullRequestPoll is how often a forge that lists its open pull
	// requests (PullRequestLister) is asked for them, to comment on one
	// opened after its commit's runs ended: one API call per poll
	// (default 1m; negative never asks).
	PullRequestPoll time.Duration
	// Logger gets the mirror's log lines; nil discards them.
	Logger *slog.Logger
}

// Mirror shows every run of one remote on one or more forges: a commit
// status refci/<request> per request on each run's commit, and one
// comment on every open pull request whose head is that commit, listing
// each request's latest run. Updates are coalesced: per (commit,
// context) and per pull request only the newest state is sent, and never
// a state the forge already shows (as recorded in StateDir). Each forge
// is served by its own goroutine: one that is down, refusing the token
// or rate-limiting is paused and retried with backoff without holding
// up the watch or the other forges, and catches up with the newest
// state of everything pending when it returns.
//
// Lifecycle: NewMirror checks the configuration and loads the records;
// Run watches and sends until its context ends. A Mirror runs once.
type Mirror struct {
	cfg     MirrorConfig
	log     *slog.Logger
	mu      sync.Mutex
	runs    map[string]map[string]runView // by commit, by request: the latest run
	sinks   []*sink
	changes *results.Changes
}

// Wake has the mirror look at the remote at once (results.Changes.Wake):
// a worker that has just pushed a result says so. Safe for concurrent
// use, never blocks.
func (m *Mirror) Wake() { m.changes.Wake() }

// Remote is the remote whose runs the mirror shows (MirrorConfig.Source).
func (m *Mirror) Remote() string { return m.cfg.Source.Remote }

// runView is what the mirror shows of one request's latest run on a
// commit.
type runView struct {
	id     string
	state  queue.State
	desc   string
	url    string
	icon   string
	status *queue.Status // as shown
	ref    string
	commit gitproto.Hash // the result commit
}

// failed reports whether the comment quotes the run's logs.
func (v runView) failed() bool { return v.state == queue.Failure || v.state == queue.Error }

// markdown renders the run within limit bytes, its logs read from repo
// (none when repo is nil).
func (v runView) markdown(repo *gitproto.Repo, limit int) string {
	res := render.Result{Status: v.status, Ref: v.ref, Commit: v.commit.String(), JobLogs: map[string][]byte{}}
	if repo != nil {
		res.Log, _ = repo.ReadFile(v.commit, queue.LogFile)
		for _, j := range v.status.Jobs {
			if j.State == queue.Failure {
				if b, err := repo.ReadFile(v.commit, queue.JobLogPath(j.Name)); err == nil {
					res.JobLogs[j.Name] = b
				}
			}
		}
	}
	return render.Markdown(res, render.MarkdownOptions{Link: v.url, Limit: limit})
}

// NewMirror checks cfg and loads what each forge was recorded to show.
func NewMirror(cfg MirrorConfig) (*Mirror, error) {
	if cfg.Source.Dir == "" || cfg.Source.Remote == "" {
		return nil, errors.New("mirror: no source repository or remote")
	}
	if len(cfg.Targets) == 0 {
		return nil, errors.New("mirror: no forge to show results on")
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 10 * time.Second
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = 7 * 24 * time.Hour
	}
	if cfg.PullRequestPoll == 0 {
		cfg.PullRequestPoll = time.Minute
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(5*time.Minute, cfg.MinBackoff)
	}
	cfg.RunsURL = strings.TrimRight(cfg.RunsURL, "/")
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Mirror{cfg: cfg, log: log, runs: map[string]map[string]runView{}, changes: cfg.Source.WatchRuns(cfg.Poll)}
	names := map[string]bool{}
	for _, t := range cfg.Targets {
		if t.Forge == nil || t.Name == "" {
			return nil, errors.New("mirror: a forge without a name or an adapter")
		}
		if names[t.Name] {
			return nil, fmt.Errorf("mirror: forge %s is listed twice for %s", t.Name, gitproto.RedactURL(cfg.Source.Remote))
		}
		names[t.Name] = true
		s := &sink{m: m, t: t, wake: make(chan struct{}, 1), pending: map[statusKey]Status{}, commits: map[string]bool{},
			rec: record{Statuses: map[string]sentStatus{}, Comments: map[string]sentComment{}}, told: map[string]bool{}}
		if cfg.StateDir != "" {
			s.file = filepath.Join(cfg.StateDir, stateFileName(t.Name, cfg.Source.Remote))
			if err := s.load(); err != nil {
				return nil, err
			}
		}
		m.sinks = append(m.sinks, s)
	}
	if cfg.StateDir != "" {
		if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
			return nil, fmt.Errorf("mirror: state directory: %w", err)
		}
	}
	return m, nil
}

// Run watches the remote and sends what changed to every forge until ctx
// ends, then returns nil. A failed look at the remote is logged and
// tried again at the next poll; Run returns an error only when it cannot
// start.
func (m *Mirror) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, s := range m.sinks {
		wg.Add(1)
		go func() { defer wg.Done(); s.run(ctx) }()
	}
	defer wg.Wait()
	changes := m.changes
	failing := false
	for {
		runs, err := changes.Next(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if !failing {
				m.log.Warn("mirror: cannot fetch the runs; trying again at each poll", "remote", gitproto.RedactURL(m.cfg.Source.Remote), "err", err)
			}
			failing = true
			continue
		}
		if failing {
			m.log.Info("mirror: fetching the runs works again", "remote", gitproto.RedactURL(m.cfg.Source.Remote))
			failing = false
		}
		m.ingest(runs)
	}
}

// ingest takes changed runs in: the latest run of each request on each
// commit, and what each forge should show of it.
func (m *Mirror) ingest(runs []results.Listed) {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	changed := map[string]bool{}
	for _, l := range runs {
		if l.Future {
			m.log.Info("mirror: skipping a run dated in the future", "run", l.Ref)
			continue
		}
		if l.Err != nil {
			m.log.Warn("mirror: skipping a run that is not believed", "run", l.Ref, "problem", results.Problem(l.Err))
			continue
		}
		st := l.Shown()
		if m.cfg.MaxAge > 0 && !st.Started.IsZero() && now.Sub(st.Started) > m.cfg.MaxAge {
			continue
		}
		byReq := m.runs[st.Target]
		if byReq == nil {
			byReq = map[string]runView{}
			m.runs[st.Target] = byReq
		}
		if old, ok := byReq[st.Request]; ok && old.id > st.Run {
			continue // an older run of the request changed: the newer one is shown
		}
		v := runView{id: st.Run, state: st.State, desc: Describe(st), url: m.runURL(st), icon: icons[st.State], status: st, ref: l.Ref, commit: l.Commit}
		byReq[st.Request] = v
		changed[st.Target] = true
		// The summary (GitHub check runs) is rendered without the logs,
		// which the comment quotes: no git read under the lock. 65,535
		// characters is GitHub's limit of a check run's summary.
		summary := v.markdown(nil, 65535)
		for _, s := range m.sinks {
			s.queueStatus(st.Target, Status{Context: "refci/" + st.Request, State: v.state, Description: v.desc, TargetURL: v.url, Summary: summary})
		}
	}
	for c := range changed {
		for _, s := range m.sinks {
			s.queueComment(c)
		}
	}
	if m.cfg.MaxAge > 0 {
		// Commits whose runs are all final and too old to mirror are
		// forgotten, so a long-lived mirror's memory stays bounded.
	commits:
		for c, byReq := range m.runs {
			for _, v := range byReq {
				if !v.state.Final() || now.Sub(v.status.Started) <= m.cfg.MaxAge {
					continue commits
				}
			}
			delete(m.runs, c)
		}
	}
	for _, s := range m.sinks {
		s.poke()
	}
}

var icons = map[queue.State]string{queue.Success: "✅", queue.Failure: "❌", queue.Error: "⚠️", queue.Cancelled: "⏹️", queue.Running: "⏳"}

func (m *Mirror) runURL(st *queue.Status) string {
	if m.cfg.RunsURL == "" {
		return ""
	}
	return m.cfg.RunsURL + "/runs/" + st.Target + "/" + st.Run + "/"
}

// Describe is a run's status in one line: what ran, its state, and the
// reason or the failing job. Adapters shorten it to their forge's limit.
func Describe(st *queue.Status) string {
	d := string(st.State)
	var failed []string
	for _, j := range st.Jobs {
		if j.State == queue.Failure {
			failed = append(failed, j.Name)
		}
	}
	switch {
	case st.State == queue.Running:
		d = "running"
		if n := len(st.Jobs); n > 0 {
			done := 0
			for _, j := range st.Jobs {
				if j.State.Final() {
					done++
				}
			}
			d += fmt.Sprintf(", %d of %d jobs done", done, n)
		}
	case st.State == queue.Success:
		d = "passed in " + render.Duration(st.DurationMS)
	case len(failed) > 0:
		d += ": job " + strings.Join(failed, ", ") + " failed"
	case st.Reason != "":
		d += ": " + st.Reason
	}
	d = "refci " + st.Request + ": " + d
	return strings.Join(strings.Fields(render.Safe(d)), " ")
}

// comment is the body of the comment on a pull request whose head is
// commit: each request's latest run with its state, the failures'
// excerpts, and how to fetch the results. Under render.MarkdownLimit.
// Called with m.mu held.
func (m *Mirror) comment(commit string) string {
	byReq := m.runs[commit]
	reqs := make([]string, 0, len(byReq))
	for r := range byReq {
		reqs = append(reqs, r)
	}
	sort.Strings(reqs)
	var head strings.Builder
	head.WriteString(CommentMarker + "\n")
	fmt.Fprintf(&head, "**refci** on `%s`\n\n| | request | state | run |\n|---|---|---|---|\n", commit[:min(12, len(commit))])
	var failed []runView
	for _, r := range reqs {
		v := byReq[r]
		run := "`" + v.id + "`"
		if v.url != "" {
			run = "[" + v.id + "](" + v.url + ")"
		}
		fmt.Fprintf(&head, "| %s | `%s` | %s | %s |\n", v.icon, strings.ReplaceAll(r, "`", "'"), v.state, run)
		if v.failed() {
			failed = append(failed, v)
		}
	}
	head.WriteString("\n")
	tail := "Every result is a signed commit; fetch them with:\n\n```sh\n" + render.FetchLine(commit) + "\n```\n"
	const sep = "\n---\n\n"
	budget := render.MarkdownLimit - head.Len() - len(tail)
	var repo *gitproto.Repo
	if len(failed) > 0 {
		repo, _ = m.cfg.Source.Open()
	}
	var body strings.Builder
	for i, v := range failed {
		share := budget/(len(failed)-i) - len(sep)
		if share < 1024 { // not even a summary fits: the table says it
			continue
		}
		sec := v.markdown(repo, share) + sep
		budget -= len(sec)
		body.WriteString(sec)
	}
	return head.String() + body.String() + tail
}

// statusKey is one status on one commit.
type statusKey struct{ commit, context string }

// sink sends one mirror's updates to one forge.
type sink struct {
	m    *Mirror
	t    Target
	file string
	wake chan struct{}
	// Guarded by m.mu:
	pending map[statusKey]Status
	commits map[string]bool // commits whose pull requests' comments may need an update
	rec     record
	// Used only by the sink's goroutine:
	backoff time.Duration
	told    map[string]bool // problems logged and not yet solved
}

// record is what a forge was last sent, as stored in StateDir.
type record struct {
	Version  int                    `json:"version"`
	Remote   string                 `json:"remote"`
	Statuses map[string]sentStatus  `json:"statuses"` // by "<commit> <context>"
	Comments map[string]sentComment `json:"comments"` // by pull request number
}

type sentStatus struct {
	State queue.State `json:"state"`
	Sent  time.Time   `json:"sent"`
}

type sentComment struct {
	Commit string    `json:"commit"`
	Body   string    `json:"body_sha256"`
	Sent   time.Time `json:"sent"`
}

const recordVersion = 1

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// stateFileName names the record of forge name showing remote.
func stateFileName(name, remote string) string {
	sum := sha256.Sum256([]byte(name + "\x00" + remote))
	base := strings.Trim(unsafeName.ReplaceAllString(name, "_"), "_.")
	if len(base) > 60 {
		base = base[:60]
	}
	return base + "-" + hex.EncodeToString(sum[:6]) + ".json"
}

func (s *sink) load() error {
	b, err := os.ReadFile(s.file)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("mirror: %s: %w", s.t.Name, err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil || r.Version != recordVersion {
		s.m.log.Warn("mirror: the record of what was mirrored cannot be read; starting afresh (the forge may get each newest state once more)", "forge", s.t.Name, "file", s.file, "err", err)
		return nil
	}
	if r.Statuses != nil {
		s.rec.Statuses = r.Statuses
	}
	if r.Comments != nil {
		s.rec.Comments = r.Comments
	}
	return nil
}

// save writes the record atomically. Called with m.mu held.
func (s *sink) save() {
	if s.file == "" {
		return
	}
	s.rec.Version, s.rec.Remote = recordVersion, gitproto.RedactURL(s.m.cfg.Source.Remote)
	if age := s.m.cfg.MaxAge; age > 0 {
		// What was sent before runs this old is never sent again (such
		// runs are not mirrored): forget it.
		old := time.Now().Add(-age - 24*time.Hour)
		for k, v := range s.rec.Statuses {
			if v.Sent.Before(old) {
				delete(s.rec.Statuses, k)
			}
		}
		for k, v := range s.rec.Comments {
			if v.Sent.Before(old) {
				delete(s.rec.Comments, k)
			}
		}
	}
	b, err := json.MarshalIndent(s.rec, "", "\t")
	if err == nil {
		err = renameio.WriteFile(s.file, append(b, '\n'), 0o600)
	}
	if err != nil {
		s.m.log.Warn("mirror: cannot record what was mirrored; a restart may send it again", "forge", s.t.Name, "err", err)
	}
}

// queueStatus queues st on commit unless the forge already shows its
// state. Called with m.mu held.
func (s *sink) queueStatus(commit string, st Status) {
	k := statusKey{commit, st.Context}
	if sent, ok := s.rec.Statuses[commit+" "+st.Context]; ok && sent.State == st.State {
		delete(s.pending, k)
		return
	}
	s.pending[k] = st
}

// queueComment queues a look at commit's pull requests. Called with m.mu
// held.
func (s *sink) queueComment(commit string) { s.commits[commit] = true }

func (s *sink) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run sends pending updates until ctx ends.
func (s *sink) run(ctx context.Context) {
	var tick <-chan time.Time
	lister, _ := s.t.Forge.(PullRequestLister)
	if lister != nil && s.m.cfg.PullRequestPoll > 0 {
		t := time.NewTicker(s.m.cfg.PullRequestPoll)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-tick:
			s.newPullRequests(ctx, lister)
		}
		for {
			wait, more := s.sendAll(ctx)
			if ctx.Err() != nil {
				return
			}
			if !more {
				break
			}
			if wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
		}
	}
}

// newPullRequests queues the comment of every open pull request whose
// head has runs and that has no comment of the mirror for that head yet:
// a pull request opened after its commit's runs ended.
func (s *sink) newPullRequests(ctx context.Context, lister PullRequestLister) {
	prs, err := lister.OpenPullRequests(ctx)
	if err != nil {
		s.m.log.Debug("mirror: cannot list the open pull requests; trying at the next look", "forge", s.t.Name, "err", err)
		return
	}
	s.m.mu.Lock()
	for _, pr := range prs {
		if _, ok := s.m.runs[pr.Head]; ok && s.rec.Comments[fmt.Sprint(pr.Number)].Commit != pr.Head {
			s.commits[pr.Head] = true
		}
	}
	s.m.mu.Unlock()
	s.poke()
}

// sendAll sends what is pending, statuses first. On a failure it stops
// and says how long to wait before trying again; more is false when
// nothing is left.
func (s *sink) sendAll(ctx context.Context) (wait time.Duration, more bool) {
	for {
		s.m.mu.Lock()
		var k statusKey
		var st Status
		found := false
		for kk, v := range s.pending {
			if !found || kk.commit < k.commit || kk.commit == k.commit && kk.context < k.context {
				k, st, found = kk, v, true
			}
		}
		s.m.mu.Unlock()
		if !found {
			break
		}
		err := s.t.Forge.SetStatus(ctx, k.commit, st)
		s.m.mu.Lock()
		if err == nil || errors.Is(err, ErrNotFound) {
			if cur, ok := s.pending[k]; ok && (cur == st || err == nil && cur.State == st.State) {
				delete(s.pending, k) // never send a state the forge shows
			}
			if err == nil {
				s.rec.Statuses[k.commit+" "+k.context] = sentStatus{State: st.State, Sent: time.Now().UTC()}
				s.save()
			}
		}
		s.m.mu.Unlock()
		if w, stop := s.outcome(ctx, err, "set status "+st.Context+" on "+k.commit); stop {
			return w, true
		}
	}
	for {
		s.m.mu.Lock()
		commit := ""
		for c := range s.commits {
			if commit == "" || c < commit {
				commit = c
			}
		}
		s.m.mu.Unlock()
		if commit == "" {
			return 0, false
		}
		err := s.comment(ctx, commit)
		if err == nil || errors.Is(err, ErrNotFound) {
			s.m.mu.Lock()
			delete(s.commits, commit)
			s.m.mu.Unlock()
		}
		if w, stop := s.outcome(ctx, err, "comment on the pull requests of "+commit); stop {
			return w, true
		}
	}
}

// comment updates the comment of every open pull request whose head is
// commit, unless it already reads so.
func (s *sink) comment(ctx context.Context, commit string) error {
	prs, err := s.t.Forge.PullRequestsOf(ctx, commit)
	if err != nil {
		return err
	}
	for _, pr := range prs {
		s.m.mu.Lock()
		body := s.m.comment(commit)
		sum := sha256.Sum256([]byte(body))
		key := fmt.Sprint(pr.Number)
		same := s.rec.Comments[key].Body == hex.EncodeToString(sum[:]) && s.rec.Comments[key].Commit == commit
		s.m.mu.Unlock()
		if same {
			continue
		}
		if err := s.t.Forge.UpsertComment(ctx, pr.Number, CommentMarker, body); err != nil {
			return fmt.Errorf("pull request %d: %w", pr.Number, err)
		}
		s.m.mu.Lock()
		s.rec.Comments[key] = sentComment{Commit: commit, Body: hex.EncodeToString(sum[:]), Sent: time.Now().UTC()}
		s.save()
		s.m.mu.Unlock()
	}
	return nil
}

// outcome handles the result of one call: on success it clears the
// backoff and says so when a problem was solved; on a failure it logs
// the problem (once until solved) and says how long to pause the forge.
// stop is true when sending should pause.
func (s *sink) outcome(ctx context.Context, err error, what string) (time.Duration, bool) {
	if err == nil {
		s.backoff = 0
		solved := false
		for p := range s.told {
			if p != "notfound" { // a missing commit says nothing of the others
				delete(s.told, p)
				solved = true
			}
		}
		if solved {
			s.m.log.Info("mirror: the forge answers again; catching up", "forge", s.t.Name)
		}
		return 0, false
	}
	if ctx.Err() != nil {
		return 0, true
	}
	var rl *RateLimitError
	problem, hint := "", ""
	switch {
	case errors.As(err, &rl):
		problem, hint = "rate", "the forge asked to wait; the mirror pauses this forge until then and then sends the newest state of everything pending (if it happens often, poll less or give the mirror a token of its own)"
	case errors.Is(err, ErrAuth):
		problem, hint = "auth", "the token was refused: check token_file (expired, revoked, or for another forge) and restart"
	case errors.Is(err, ErrPermission):
		problem, hint = "permission", "the token lacks a permission: give it write access to commit statuses and pull request comments"
	case errors.Is(err, ErrNotFound):
		problem, hint = "notfound", "the forge does not know the repository, commit or pull request: check repo and base_url, and that the commit was pushed to this forge; the update is dropped"
	default:
		problem, hint = "down", "the forge is failing or unreachable; retrying with backoff"
	}
	if !s.told[problem] {
		s.told[problem] = true
		args := []any{"forge", s.t.Name, "what", what, "err", err, "todo", hint}
		if rl != nil {
			args = append(args, "until", rl.Until.UTC().Format(time.RFC3339))
		}
		s.m.log.Warn("mirror: "+map[string]string{"rate": "rate limited", "auth": "token refused", "permission": "permission missing", "notfound": "not found", "down": "forge failing"}[problem], args...)
	}
	if problem == "notfound" {
		return 0, false // dropped; go on with the rest
	}
	if s.backoff == 0 {
		s.backoff = s.m.cfg.MinBackoff
	} else {
		s.backoff = min(2*s.backoff, s.m.cfg.MaxBackoff)
	}
	w := s.backoff
	if rl != nil {
		if d := min(time.Until(rl.Until), MaxRateLimitPause); d > w {
			w = d
		}
	}
	return w, true
}

// MaxRateLimitPause bounds how long a forge that asked to wait is paused
// at once: the forges' documented limits reset within an hour, and a
// reset header naming a later time (a broken proxy, a hostile server, a
// clock far off) must not silence a forge for good. Past it the mirror
// tries again, and a forge still limiting says so again.
const MaxRateLimitPause = time.Hour
