package render

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"fmt"
	"html/template"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"refci.dev/refci/queue"
)

// Result is what every rendering reads: one result tree. Status is
// required; the logs may be nil (not stored, or not read). JobLogs is
// keyed by job name. Ref and Commit, when set, are shown. A Result is
// only read by the renderers, so one value may be rendered from several
// goroutines at once.
type Result struct {
	Status  *queue.Status
	Log     []byte            // log.txt
	JobLogs map[string][]byte // jobs/<name>/log.txt by job name
	Ref     string            // refs/ci/runs/<target>/<run>
	Commit  string            // the result commit's id
}

// HTMLOptions changes the page. The zero value renders the page that
// lives in the result tree itself.
type HTMLOptions struct {
	// Home, when set, is a link (relative URL) to the list of all runs,
	// shown at the top; `refci view` sets it.
	Home string
	// Links are extra (label, relative URL) links shown at the top, e.g.
	// the commit's history.
	Links [][2]string
	// Verdict, when set, is what the reader concluded of this result
	// (`refci view` sets it): shown at the top, and a result that is not
	// verified is not drawn in its state's colour.
	Verdict *Verdict
	// Stored, when set, says whether a file of the result tree (log.txt,
	// a job's log, artifacts/<path>; by its path in the tree) is next to
	// the page: one that is not is shown as not stored and not linked.
	// nil: every file status.json names is there (the page in the result
	// tree itself). It is called from the goroutine of HTML only.
	Stored func(path string) bool
	// Commit, when set, describes the target commit as the reader's own
	// repository has it (`refci view` sets it): its subject and author
	// are shown, escaped, and never used for anything else.
	Commit *CommitInfo
}

// CommitInfo is what a page shows of the target commit: its subject and
// author, read from the reader's repository. It is untrusted text (a
// pusher chose it): shown escaped, never a path or a URL.
type CommitInfo struct {
	Subject string    `json:"subject,omitempty"`
	Author  string    `json:"author,omitempty"`
	Date    time.Time `json:"date,omitzero"`
}

// CommitInfoOf cleans a commit's message and author name for showing:
// the message's first line, both on one line, escaped and capped.
func CommitInfoOf(message, author string, date time.Time) CommitInfo {
	subject, _, _ := strings.Cut(strings.TrimLeft(message, "\n"), "\n")
	return CommitInfo{Subject: capText(oneLine(subject), 200), Author: capText(oneLine(author), 100), Date: date.UTC()}
}

func capText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// RunLabel names a run more precisely than its timestamp: request,
// short commit, attempt and the run id's random suffix, as in
// "main · 3f9a1c0b2d4e · attempt 2 · run 3f9a1c".
func RunLabel(request, target string, attempt int, run string) string {
	suffix := run
	if i := strings.LastIndexByte(run, '-'); i >= 0 {
		suffix = run[i+1:]
	}
	if attempt < 1 {
		attempt = 1
	}
	return fmt.Sprintf("%s · %s · attempt %d · run %s", request, shortID(target), attempt, suffix)
}

//go:embed page.tmpl
var pageTmpl string

//go:embed page.css
var pageCSS string

//go:embed page.js
var pageOwnJS string

//go:embed time.js
var timeJS string

// pageJS is the run page's script; listJS (site.go) the lists'. Both
// write times relative to now.
var pageJS = timeJS + pageOwnJS

// pageTemplate is parsed on first use, not at every start of refci.
var pageTemplate = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("page").Funcs(funcs).Parse(pageTmpl))
})

// scriptCSP is the Content-Security-Policy every page carries: only its
// own inline script (by hash) may run, nothing is fetched from anywhere,
// so even a mistake in escaping a log could not run a pipeline's script.
var scriptCSP = sync.OnceValue(func() template.HTMLAttr { return template.HTMLAttr(`content="` + csp(pageJS) + `"`) })

// SiteCSP is a Content-Security-Policy for an HTTP server to send with
// every page of the static site (besides the one each page carries): the
// pages' own inline scripts (by hash), inline styles, images and frames
// from the site itself, and nothing else.
func SiteCSP() string {
	return strings.Replace(csp(pageJS, listJS), "frame-src 'self' file:", "frame-src 'self'", 1) + "; frame-ancestors 'self'"
}

func csp(scripts ...string) string {
	var hashes []string
	for _, s := range scripts {
		sum := sha256.Sum256([]byte(s))
		hashes = append(hashes, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'")
	}
	return "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; frame-src 'self' file:; script-src " +
		strings.Join(hashes, " ") + "; base-uri 'none'; form-action 'none'"
}

var funcs = template.FuncMap{
	"dur":   Duration,
	"safe":  Safe,
	"time":  func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"when":  when,
	"label": RunLabel,
	"upper": strings.ToUpper,
	"short": shortID,
	"mark":  func(s queue.State) string { return stateMark[s] },
}

// when marks up a time: the absolute UTC time, in the text (what a
// reader without script sees) and the datetime; the page's script writes
// it relative to now ("3 minutes ago") when the page is viewed, and the
// absolute time becomes its title (shown on hover). The title is not in
// the markup: a list of 10,000 runs would carry it 20,000 times.
func when(t time.Time) template.HTML {
	if t.IsZero() {
		return "-"
	}
	abs := t.UTC().Format(time.RFC3339)
	text := t.UTC().Format("2006-01-02 15:04:05") + " UTC"
	return template.HTML(`<time datetime="` + abs + `">` + text + `</time>`)
}

func shortID(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

type pageJob struct {
	queue.Job
	Depth  int
	Tree   string // the tree's lines before the name: "│  ├─ "
	Anchor string // section id, "" when the job has no log shown
	Raw    string // link to the stored log, "" when none
}

type pageLog struct {
	ID, Title, Raw string
	State          queue.State
	Open           bool
	Bytes          int
	Truncated      bool // capped by the worker
	HTML           template.HTML
	Omitted        bool // past the page's budget
}

type pageArtifact struct {
	queue.Artifact
	Href    string
	Active  bool // may run script when opened (HTML, SVG, XML)
	Preview string
	Missing bool // named by status.json, not next to the page (HTMLOptions.Stored)
}

type pageData struct {
	S          *queue.Status
	R          Result
	O          HTMLOptions
	CSP        template.HTMLAttr
	CSS        template.CSS
	JS         template.JS
	Jobs       []pageJob
	Logs       []pageLog
	Artifacts  []pageArtifact
	AnyActive  bool
	FirstFail  string // anchor of the first failure
	FailLabel  string
	PrevRun    string
	Fingerprnt string
	Shown      string // the state class of the title: the state, or "unverified"
	StateText  string
	Label      string // RunLabel
	LogRaw     string // the link to log.txt, "" when it is not stored
}

// HTML renders the static page of one run: state, target, request,
// worker, timing, the job tree, each log with line anchors (#L<n> for the
// pipeline's log, #<job>-L<n> for a job's), a link to the first failure,
// and the artifacts. It is self-contained (inline CSS and a small inline
// script, nothing fetched) and readable without script. Logs are inlined
// up to LogInline bytes each and PageInline in all; links point to the
// files next to the page in the result tree (log.txt, jobs/..., artifacts/...).
func HTML(r Result, o HTMLOptions) ([]byte, error) {
	s := r.Status
	if s == nil {
		return nil, fmt.Errorf("render: no status")
	}
	s = cleanStatus(s)
	d := pageData{S: s, R: r, O: o, CSP: scriptCSP(), CSS: template.CSS(pageCSS), JS: template.JS(pageJS)}
	d.PrevRun = s.PreviousRun()
	d.Shown, d.StateText = string(s.State), strings.ToUpper(string(s.State))
	if v := o.Verdict; v != nil {
		o.Verdict = &Verdict{Kind: v.Kind, By: oneLine(v.By), Why: oneLine(v.Why)}
		d.O = o
		if !v.Verified() {
			d.Shown, d.StateText = "unverified", strings.ToUpper(string(s.State))+" ("+strings.ToUpper(o.Verdict.Label())+")"
		}
	}
	budget := PageInline
	failJob := -1
	d.Label = RunLabel(s.Request, s.Target, s.Attempt, s.Run)
	if o.Commit != nil {
		c := CommitInfoOf(o.Commit.Subject, o.Commit.Author, o.Commit.Date)
		d.O.Commit = &c
	}
	stored := func(p string) bool { return o.Stored == nil || o.Stored(p) }
	tree := jobTree(s.Jobs)
	prefixes := treePrefixes(tree)
	for i, n := range tree {
		pj := pageJob{Job: n.Job, Depth: n.Depth, Tree: prefixes[i]}
		log, has := r.JobLogs[n.Name]
		safe := queue.ValidateJobName(n.Name) == nil
		if safe && (has || n.Log != "") {
			pj.Anchor = "job-" + n.Name
			if stored(jobLogHref(n.Name)) {
				pj.Raw = jobLogHref(n.Name)
			} else {
				has = false
			}
		}
		d.Jobs = append(d.Jobs, pj)
		if pj.Anchor == "" {
			continue
		}
		bad := n.State == queue.Failure || n.State == queue.Cancelled
		pl := pageLog{ID: pj.Anchor, Title: "job " + n.Name, Raw: pj.Raw, State: n.State, Open: bad, Bytes: len(log), Truncated: n.Truncated}
		pl.HTML, budget, pl.Omitted = inline(log, n.Name+"-", pj.Raw, budget, has)
		d.Logs = append(d.Logs, pl)
		if n.State == queue.Failure && failJob < 0 {
			failJob = len(d.Logs) - 1
			last := lineCount(log)
			d.FirstFail = pj.Anchor
			d.FailLabel = "job " + n.Name
			if last > 0 && !pl.Omitted {
				d.FirstFail = fmt.Sprintf("%s-L%d", n.Name, last)
				d.FailLabel = fmt.Sprintf("job %s, end of its log (line %d)", n.Name, last)
			}
		}
	}
	// The pipeline's own log last: it holds every job's output again.
	if stored(queue.LogFile) {
		d.LogRaw = queue.LogFile
	}
	main := pageLog{ID: "log", Title: "pipeline log (all output)", Raw: d.LogRaw, State: s.State, Bytes: len(r.Log), Truncated: s.LogTruncated}
	main.Open = failJob < 0 || s.State == queue.Running
	main.HTML, _, main.Omitted = inline(r.Log, "", d.LogRaw, max(budget, LogInline/4), d.LogRaw != "")
	d.Logs = append(d.Logs, main)
	if d.FirstFail == "" && (s.State == queue.Failure || s.State == queue.Error) {
		d.FirstFail, d.FailLabel = "log", "the pipeline log"
		if last := lineCount(r.Log); last > 0 && !main.Omitted {
			d.FirstFail = "L" + strconv.Itoa(last)
			d.FailLabel = fmt.Sprintf("end of the pipeline log (line %d)", last)
		}
	}
	for i, a := range r.Status.Artifacts {
		pa := pageArtifact{Artifact: s.Artifacts[i]}
		href, ok := artifactHref(a.Path)
		if ok && !stored(queue.ArtifactsDir+"/"+a.Path) {
			ok, pa.Missing = false, true
		}
		if ok {
			pa.Href = href
			pa.Active = activeContent(a.Path)
			d.AnyActive = d.AnyActive || pa.Active
		}
		d.Artifacts = append(d.Artifacts, pa)
	}
	var b bytes.Buffer
	b.Grow(len(r.Log) + 64<<10)
	if err := pageTemplate().Execute(&b, d); err != nil {
		return nil, fmt.Errorf("render page: %w", err)
	}
	return b.Bytes(), nil
}

// treePrefixes draws the job tree's lines: for each node, "│  " for
// every ancestor level that has more children below, then "├─ " or "└─ ".
func treePrefixes(nodes []treeNode) []string {
	more := func(i int) bool { // a later sibling of node i
		for _, n := range nodes[i+1:] {
			if n.Depth < nodes[i].Depth {
				return false
			}
			if n.Depth == nodes[i].Depth {
				return true
			}
		}
		return false
	}
	out := make([]string, len(nodes))
	var open []bool // by depth: the ancestor at that depth has a later sibling
	for i, n := range nodes {
		if n.Depth == 0 {
			open = open[:0]
			open = append(open, more(i))
			continue
		}
		var b strings.Builder
		for k := 1; k < n.Depth && k < len(open); k++ {
			if open[k] {
				b.WriteString("│\u00a0\u00a0")
			} else {
				b.WriteString("\u00a0\u00a0\u00a0")
			}
		}
		m := more(i)
		if m {
			b.WriteString("├─\u00a0")
		} else {
			b.WriteString("└─\u00a0")
		}
		open = append(open[:min(n.Depth, len(open))], m)
		out[i] = b.String()
	}
	return out
}

// inline renders one log within the page's remaining budget.
func inline(log []byte, prefix, raw string, budget int, stored bool) (template.HTML, int, bool) {
	if !stored {
		return template.HTML(`<p class="empty">(no log stored)</p>`), budget, false
	}
	if budget <= 0 && len(log) > 0 {
		return template.HTML(`<p class="gap">Not shown: this page already shows as much log as it may. <a href="` + raw + `">Open the log</a></p>`), budget, true
	}
	var b bytes.Buffer
	b.Grow(len(log) + len(log)/8)
	limit := min(LogInline, budget)
	logHTML(&b, log, prefix, raw, limit)
	return template.HTML(b.String()), budget - min(len(log), limit), false
}

func lineCount(log []byte) int {
	log = bytes.TrimSuffix(log, []byte{'\n'})
	if len(log) == 0 {
		return 0
	}
	return bytes.Count(log, []byte{'\n'}) + 1
}

func jobLogHref(name string) string { return queue.JobLogPath(name) }

// artifactHref is the link to an artifact in the result tree, each path
// segment escaped. Paths that could leave artifacts/ are not linked.
func artifactHref(p string) (string, bool) {
	if p == "" || path.Clean(p) != p || strings.HasPrefix(p, "/") || p == ".." || strings.HasPrefix(p, "../") {
		return "", false
	}
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return queue.ArtifactsDir + "/" + strings.Join(segs, "/"), true
}

// activeContent reports whether a browser would run script in a file of
// this name when opening it: HTML, SVG and XML (with XSLT). Such
// artifacts are never opened in the viewer's own origin: the page links
// them with `download`, and shows them only in an <iframe sandbox>
// without allow-same-origin and without allow-scripts. Loaded there, the
// file gets an opaque origin and no script, so it can neither read other
// results next to it (on a static host or under file://) nor act as
// this page. A plain link would open it as a top-level page in the
// viewer's origin, which is exactly what must not happen.
func activeContent(p string) bool {
	ext := strings.ToLower(path.Ext(p))
	switch ext {
	case ".html", ".htm", ".xhtml", ".shtml", ".svg", ".svgz", ".xml", ".xsl", ".xslt", ".mht", ".mhtml":
		return true
	}
	return false
}

// cleanStatus returns a copy of s whose texts are safe to show anywhere:
// control characters written as \xNN, reasons on one line. (html/template
// escapes markup; this keeps escapes and control bytes out of the page.)
func cleanStatus(in *queue.Status) *queue.Status {
	s := *in
	s.Reason = oneLine(s.Reason)
	for _, p := range []*string{&s.Target, &s.TargetRef, &s.Request, &s.Run, &s.Worker, &s.Host, &s.Env, &s.Signal, &s.Version} {
		*p = Safe(*p)
	}
	s.TrustNote = oneLine(s.TrustNote)
	s.Jobs = append([]queue.Job(nil), in.Jobs...)
	for i := range s.Jobs {
		j := &s.Jobs[i]
		j.Reason = oneLine(j.Reason)
		j.Needs = append([]string(nil), j.Needs...)
		for k := range j.Needs {
			j.Needs[k] = Safe(j.Needs[k])
		}
	}
	s.Artifacts = append([]queue.Artifact(nil), in.Artifacts...)
	for i := range s.Artifacts {
		s.Artifacts[i].Path = Safe(s.Artifacts[i].Path)
	}
	s.ArtifactsSkipped = append([]queue.SkippedArtifact(nil), in.ArtifactsSkipped...)
	for i := range s.ArtifactsSkipped {
		s.ArtifactsSkipped[i].Path = Safe(s.ArtifactsSkipped[i].Path)
		s.ArtifactsSkipped[i].Reason = oneLine(s.ArtifactsSkipped[i].Reason)
	}
	return &s
}
