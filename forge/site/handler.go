package site

import (
	"html/template"
	"log/slog"
	"net/http"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"refci.dev/refci/gitproto/sshd"
	"refci.dev/refci/queue"
	"refci.dev/refci/render"
	"refci.dev/refci/secrets"
)

// Handler serves the static site (the one Builder writes) of each
// repository it lists at /<repo>/, and the list of them at /, as refci
// serve --http does. A repository's site is brought up to date when one
// of its pages is asked for, at most once every two seconds; the build
// is incremental, so a request after a new result costs about one run
// page.
//
// Every answer carries a Content-Security-Policy and nosniff; what a
// result brought (logs, status.json, artifacts) is served sandboxed, and
// as a download when a browser would render it as an active document.
// Handler writes nothing but the sites, whatever the method; refusing
// methods other than GET and HEAD is left to the server around it.
//
// Safe for concurrent use. The zero value is not usable; make one with
// NewHandler.
type Handler struct {
	repos string
	www   string
	list  func() ([]string, error)
	keys  secrets.Keyring
	log   *slog.Logger

	mu       sync.Mutex
	builders map[string]*Builder
	built    map[string]time.Time
}

// NewHandler returns a Handler of the sites of the bare repositories
// under repos, written into www (one folder per repository). list names
// the repositories to show, relative to repos (see ReposOnSite); it is
// called for every request. Results signed by a key of keys are shown
// verified. log hears of failed builds and problems with single runs;
// nil: they are not told.
func NewHandler(repos, www string, list func() ([]string, error), keys secrets.Keyring, log *slog.Logger) *Handler {
	return &Handler{repos: repos, www: www, list: list, keys: keys, log: log}
}

// refreshEvery is how long a repository's site is not built again.
const refreshEvery = 2 * time.Second

// siteIndex is parsed at its first use, not at every start of refci.
var siteIndex = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("index").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>refci</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:15px/1.5 system-ui,sans-serif;margin:2em auto;max-width:44em;padding:0 1em}a{color:#0550ae}</style>
</head><body><h1>refci</h1>
{{if .}}<p>Repositories on this server; each page lists its runs, newest first.</p><ul>
{{range .}}<li><a href="{{.}}/">{{.}}</a></li>
{{end}}</ul>{{else}}<p>No repository yet. An admin creates one by pushing to it.</p>{{end}}
</body></html>
`))
})

// ServeHTTP answers a request for a page of the list or of a site.
func (s *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := path.Clean("/" + r.URL.Path)
	w.Header().Set("Content-Security-Policy", siteCSP()) // every answer, errors too
	w.Header().Set("X-Content-Type-Options", "nosniff")
	repos, err := s.list()
	if err != nil {
		http.Error(w, "cannot list the repositories", http.StatusInternalServerError)
		return
	}
	if p == "/" || p == "/index.html" {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		siteIndex().Execute(w, repos)
		return
	}
	name := ""
	for _, n := range repos {
		if (p == "/"+n || strings.HasPrefix(p, "/"+n+"/")) && len(n) > len(name) {
			name = n
		}
	}
	if name == "" {
		http.NotFound(w, r)
		return
	}
	if r.URL.Path == "/"+name {
		http.Redirect(w, r, "/"+name+"/", http.StatusFound)
		return
	}
	s.refresh(name)
	if resultContent(strings.TrimPrefix(p, "/"+name)) {
		// What a result brought: never a page of this site's origin.
		w.Header().Set("Content-Security-Policy", contentCSP)
		dest := r.Header.Get("Sec-Fetch-Dest")
		w = &activeAsDownload{ResponseWriter: w, inline: dest == "iframe" || dest == "frame"}
	}
	http.FileServer(http.Dir(s.www)).ServeHTTP(w, r)
}

// siteCSP is the policy of the site's own pages (render.SiteCSP).
var siteCSP = sync.OnceValue(render.SiteCSP)

// contentCSP is the policy of everything a result brought (logs,
// status.json, artifacts): a sandbox without scripts, forms or the
// site's origin, that loads nothing but inline styles and images, and
// may be framed only by the site's pages (the artifact preview).
const contentCSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"

// resultContent reports whether rest (a cleaned path inside one
// repository's site, starting with "/") is a file a result brought: under
// runs/<target>/<run>/, except the run's page index.html, which the site
// rendered itself.
func resultContent(rest string) bool {
	parts := strings.Split(strings.Trim(rest, "/"), "/")
	if len(parts) < 4 || parts[0] != "runs" {
		return false
	}
	return !(len(parts) == 4 && parts[3] == "index.html")
}

// activeAsDownload makes a response whose type a browser would render as
// a document that can act (HTML, SVG, XML) an attachment, unless it is
// asked for by a frame (the run page's sandboxed preview).
type activeAsDownload struct {
	http.ResponseWriter
	inline  bool
	decided bool
}

func (a *activeAsDownload) decide() {
	if a.decided {
		return
	}
	a.decided = true
	if !a.inline && activeType(a.Header().Get("Content-Type")) {
		a.Header().Set("Content-Disposition", "attachment")
	}
}

func (a *activeAsDownload) WriteHeader(code int) {
	a.decide()
	a.ResponseWriter.WriteHeader(code)
}

func (a *activeAsDownload) Write(b []byte) (int, error) {
	a.decide()
	return a.ResponseWriter.Write(b)
}

// activeType reports whether a Content-Type is one a browser renders as
// a document with scripts or links of its own.
func activeType(ct string) bool {
	mt, _, _ := strings.Cut(strings.ToLower(ct), ";")
	mt = strings.TrimSpace(mt)
	return mt == "" || strings.Contains(mt, "html") || strings.Contains(mt, "xml") || strings.Contains(mt, "svg") ||
		mt == "application/pdf" || strings.HasPrefix(mt, "multipart/")
}

// ReposOnSite lists the bare repositories under root that a site shows:
// those every key may read, and those the roles a marks public
// (queue.Access.OnSite). It suits NewHandler's list.
func ReposOnSite(root string, a *queue.Access) ([]string, error) {
	all, err := sshd.ListRepos(root)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range all {
		if a.OnSite(r) {
			out = append(out, r)
		}
	}
	return out, nil
}

// refresh brings one repository's site up to date unless it was built
// within refreshEvery. A failed build is logged; the last good site
// stays.
func (s *Handler) refresh(name string) {
	s.mu.Lock()
	if s.builders == nil {
		s.builders, s.built = map[string]*Builder{}, map[string]time.Time{}
	}
	b := s.builders[name]
	if b == nil {
		var o Options
		if s.log != nil {
			o.Warn = func(msg string) { s.log.Warn("viewer", "repo", name, "problem", msg) }
		}
		b = NewBuilder(filepath.Join(s.repos, filepath.FromSlash(name)), filepath.Join(s.www, filepath.FromSlash(name)), s.keys, o)
		s.builders[name] = b
	}
	if time.Since(s.built[name]) < refreshEvery {
		s.mu.Unlock()
		return
	}
	s.built[name] = time.Now()
	s.mu.Unlock()
	if _, err := b.Build(); err != nil && s.log != nil {
		s.log.Error("viewer: cannot build the site", "repo", name, "err", err)
	}
}
