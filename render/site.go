package render

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"strings"
	"sync"
	"time"

	"refci.dev/refci/queue"
)

// RunSummary is one run in the site's lists: what status.json says of
// it, enough to list and filter it without reading the result again.
// Href is the run page, relative to the site's root.
type RunSummary struct {
	Ref        string      `json:"ref"`
	Commit     string      `json:"commit"`
	Target     string      `json:"target"`
	TargetRef  string      `json:"target_ref,omitempty"`
	Request    string      `json:"request"`
	Run        string      `json:"run"`
	State      queue.State `json:"state"`
	Reason     string      `json:"reason,omitempty"`
	Started    time.Time   `json:"started"`
	DurationMS int64       `json:"duration_ms"`
	FailedJobs []string    `json:"failed_jobs,omitempty"`
	Href       string      `json:"href"`
	Attempt    int         `json:"attempt,omitempty"`
	// Subject and Author are the target commit's (CommitInfo), as the
	// reader's repository has it; "" when it does not have the commit.
	// Untrusted text, shown escaped.
	Subject string `json:"subject,omitempty"`
	Author  string `json:"author,omitempty"`
	// PreviousRun is the run this attempt took over (queue.Status.PreviousRun).
	PreviousRun string `json:"previous_run,omitempty"`
	// LostTo, when set, is the run that took this one over after its
	// worker was lost: State and Reason are then queue.Lost's, while the
	// run's own status.json still says running.
	LostTo string `json:"lost_to,omitempty"`
	// Verdict is what the reader concluded of the result commit (see
	// Verdict). Only a verified run is shown in its state's colour.
	Verdict Verdict `json:"verdict"`
	// NotLatest, set by the caller, keeps the run out of "the latest" of
	// its request and of its commit's streak (a run dated in the future).
	// Runs that are not verified are never the latest either.
	NotLatest bool `json:"-"`
}

// Verdict says whether a result is believed, and why.
type Verdict struct {
	// Kind is VerdictVerified, VerdictUnverified, VerdictInconsistent or
	// VerdictInvalid; anything else is shown as unverified.
	Kind string `json:"kind"`
	// By, for a verified result, names the key that signed it:
	// "Name <email> (FINGERPRINT)".
	By string `json:"by,omitempty"`
	// Why, for any other, says what is wrong, in one line.
	Why string `json:"why,omitempty"`
}

// The verdicts of a result.
const (
	VerdictVerified     = "verified"     // signed by a trusted key, the worker it names, and consistent
	VerdictUnverified   = "unverified"   // unsigned, bad signature, unknown key, or another worker than it names
	VerdictInconsistent = "inconsistent" // its signed content does not agree with its ref
	VerdictInvalid      = "invalid"      // status.json has values refci never writes
)

// Verified reports whether the verdict is "verified".
func (v Verdict) Verified() bool { return v.Kind == VerdictVerified }

// Label is the verdict as shown: "verified", "unverified", ...
func (v Verdict) Label() string {
	switch v.Kind {
	case VerdictVerified, VerdictInconsistent, VerdictInvalid:
		return v.Kind
	}
	return VerdictUnverified
}

// Shown is the state class a run is drawn with: its state when verified
// (and not dated in the future), "unverified" (neutral) otherwise.
func (r RunSummary) Shown() string {
	if r.latestCandidate() {
		return string(r.State)
	}
	return "unverified"
}

// StateLabel is the state as written in lists: "success", or "success
// (unverified)" with the verdict for a run that is not verified, or
// "success (dated in the future)".
func (r RunSummary) StateLabel() string {
	switch {
	case !r.Verdict.Verified():
		return string(r.State) + " (" + r.Verdict.Label() + ")"
	case r.NotLatest:
		return string(r.State) + " (dated in the future)"
	}
	return string(r.State)
}

// latestCandidate reports whether r may be the latest of its request.
func (r RunSummary) latestCandidate() bool { return r.Verdict.Verified() && !r.NotLatest }

// SummaryOf summarises a status.
func SummaryOf(s *queue.Status, ref, commit, href string) RunSummary {
	sum := RunSummary{Ref: ref, Commit: commit, Target: s.Target, TargetRef: s.TargetRef, Request: s.Request, Run: s.Run,
		State: s.State, Reason: oneLine(s.Reason), Started: s.Started, DurationMS: s.DurationMS, Href: href,
		Attempt: s.Attempt, PreviousRun: s.PreviousRun()}
	for _, j := range s.Jobs {
		if j.State == queue.Failure {
			sum.FailedJobs = append(sum.FailedJobs, Safe(j.Name))
		}
	}
	return sum
}

// ListPage describes one list of runs: the whole site, one state, or one
// commit's history. Root is the relative path from the page to the
// site's root ("" or "../"). The whole-site list (Commit == "") starts
// with the latest run of each request and since when its state holds.
// A ListPage is a plain value; List only reads it.
type ListPage struct {
	Title  string
	Root   string
	Runs   []RunSummary // newest first
	States []string     // the states with their own page, for links (each must be there)
	Filter bool         // offer the client-side filters
	// Commit, for a commit's history page: the commit. The page then
	// says since when the newest state holds ("failure since ...").
	Commit string
	// All, when Runs is one page of a longer list, is the whole list,
	// newest first: the latest of each request is found in it. nil: Runs
	// is the whole list.
	All []RunSummary
	// Page, for a page of an older part of a list, is its number: such a
	// page shows its runs without the latest of each request. 0: the
	// list's front page.
	Page int
	// Newer and Older link the pages of a paginated list (relative to
	// Root; "" for none), and PageNote says which runs this page holds.
	Newer, Older, PageNote string
	// NoRuns is what the page says when it has no runs (a state's list
	// when no run is in that state); "": how to fetch results.
	NoRuns string
}

//go:embed list.tmpl
var listTmpl string

//go:embed list.js
var listOwnJS string

var listJS = timeJS + listOwnJS

var listTemplate = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("list").Funcs(funcs).Funcs(template.FuncMap{
		"esc": template.URLQueryEscaper,
	}).Parse(listTmpl))
})

var listCSP = sync.OnceValue(func() template.HTMLAttr { return template.HTMLAttr(`content="` + csp(listJS) + `"`) })

// List renders a list page of runs, newest first, with filters by state,
// request and branch that work in the page (script), and links to the
// per-state and per-commit pages that work without script.
func List(p ListPage) ([]byte, error) {
	type row struct {
		RunSummary
		Short, Branch, Root string
	}
	var rows []row
	streak := ""
	requests, branches := map[string]bool{}, map[string]bool{}
	mkRow := func(r RunSummary) row {
		r.Request, r.TargetRef, r.Run = Safe(r.Request), Safe(r.TargetRef), Safe(r.Run)
		r.Verdict.Why, r.Verdict.By = oneLine(r.Verdict.Why), oneLine(r.Verdict.By)
		r.Subject, r.Author = capText(oneLine(r.Subject), 200), capText(oneLine(r.Author), 100)
		return row{RunSummary: r, Short: shortID(r.Target), Branch: r.TargetRef, Root: p.Root}
	}
	// Since when: in a history (one commit or request), the oldest run of
	// the newest streak of the same state, among the runs that may be the
	// latest, in the whole history (All) when Runs is its front page.
	if p.Commit != "" && p.Page == 0 {
		hist := p.All
		if hist == nil {
			hist = p.Runs
		}
		for i, r := range hist {
			if !r.latestCandidate() {
				continue
			}
			n, since := 1, r.Started
			for _, o := range hist[i+1:] {
				if !o.latestCandidate() {
					continue
				}
				if o.State != r.State {
					break
				}
				n, since = n+1, o.Started
			}
			if n > 1 {
				streak = fmt.Sprintf("%s since %s (%d runs)", r.State, since.UTC().Format(time.RFC3339), n)
			}
			break
		}
	}
	for _, r := range p.Runs {
		rw := mkRow(r)
		r = rw.RunSummary
		rows = append(rows, rw)
		requests[r.Request] = true
		if r.TargetRef != "" {
			branches[r.TargetRef] = true
		}
	}
	type reqRow struct {
		row
		Since time.Time
		Runs  int
	}
	var summary []reqRow
	if p.Commit == "" && p.Page == 0 {
		all := p.All
		if all == nil {
			all = p.Runs
		}
		at := map[string]int{}
		for _, r := range all {
			if !r.latestCandidate() {
				continue
			}
			i, seen := at[r.Request]
			if !seen {
				at[r.Request] = len(summary)
				summary = append(summary, reqRow{row: mkRow(r), Since: r.Started, Runs: 1})
				continue
			}
			rw := r
			if sr := &summary[i]; sr.Runs > 0 && rw.State == sr.State {
				sr.Since, sr.Runs = rw.Started, sr.Runs+1
			} else if sr.Runs > 0 {
				sr.Runs = -sr.Runs // the streak ended
			}
		}
		for i := range summary {
			if summary[i].Runs < 0 {
				summary[i].Runs = -summary[i].Runs
			}
		}
	}
	unverified := 0
	for _, r := range p.Runs {
		if !r.Verdict.Verified() {
			unverified++
		}
	}
	d := struct {
		ListPage
		StreakNote         string
		Unverified         int
		Summary            []reqRow
		Rows               []row
		Requests, Branches []string
		CSP                template.HTMLAttr
		CSS                template.CSS
		JS                 template.JS
	}{ListPage: p, StreakNote: streak, Unverified: unverified, Summary: summary, Rows: rows, Requests: sortedKeys(requests), Branches: sortedKeys(branches), CSP: listCSP(),
		CSS: template.CSS(pageCSS + listCSS), JS: template.JS(listJS)}
	var b bytes.Buffer
	b.Grow(len(p.Runs)*400 + 16<<10)
	if err := listTemplate().Execute(&b, d); err != nil {
		return nil, fmt.Errorf("render list: %w", err)
	}
	return b.Bytes(), nil
}

const listCSS = `
table.runs{width:100%}table.runs td{border-top:1px solid var(--line);overflow-wrap:anywhere}
table.runs td:first-child,table.runs td.when{white-space:nowrap}table.runs td.why{color:var(--mute)}
table.runs td.run{min-width:14em}.commit{color:var(--mute);font-size:.93em}.commit .subject{color:var(--fg)}
@media (max-width:50em){table.runs,table.runs tbody,table.runs tr{display:block}table.runs tr:first-child{display:none}
table.runs tr{border-top:1px solid var(--line);padding:.3em 0}table.runs td{display:inline-block;border:0;padding:.1em .5em .1em 0}
table.runs td.run{display:block;min-width:0}table.runs td.since::before{content:"since "}table.runs td.when br{display:none}}
.verdict{color:var(--mute)}.verdict.v-verified{color:var(--fg)}.verdict.v-inconsistent,.verdict.v-invalid{font-weight:700;color:var(--fg)}
.filters{margin:.6em 0;display:flex;flex-wrap:wrap;gap:.3em 1em}.filters select{max-width:16em}.streak{font-weight:600}
`

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	// small sets; insertion sort keeps this file free of another import
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

var badgeColor = map[queue.State]string{
	queue.Success: "#1a7f37", queue.Failure: "#cf222e", queue.Error: "#8250df",
	queue.Cancelled: "#9a6700", queue.Running: "#0969da",
}

// Badge renders a small SVG badge "label | state" for READMEs. Text is
// escaped; widths are estimated from the length (no font metrics), which
// is close enough for Verdana 11px.
func Badge(label string, s queue.State) []byte {
	state := string(s)
	color := badgeColor[s]
	if color == "" {
		color = "#59636e"
		state = "unknown"
	}
	return badge(label, state, color)
}

// BadgeNoVerified is the badge of a request without a verified run: grey,
// "not verified".
func BadgeNoVerified(label string) []byte { return badge(label, "not verified", "#59636e") }

func badge(label, state, color string) []byte {
	label = Safe(label)
	lw := 6*len([]rune(label)) + 10
	sw := 6*len(state) + 10
	esc := template.HTMLEscapeString
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="20" role="img" aria-label="%s: %s">`, lw+sw, esc(label), state)
	fmt.Fprintf(&b, `<title>%s: %s</title><rect width="%d" height="20" fill="#555"/><rect x="%d" width="%d" height="20" fill="%s"/>`, esc(label), state, lw, lw, sw, color)
	fmt.Fprintf(&b, `<g fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11" text-anchor="middle">`)
	fmt.Fprintf(&b, `<text x="%d" y="14">%s</text><text x="%d" y="14">%s</text></g></svg>`+"\n", lw/2, esc(label), lw+sw/2, state)
	return []byte(b.String())
}
