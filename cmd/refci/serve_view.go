package main

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

// siteServer serves the static viewer of every repository of refci serve
// at /<repo>/ (the same site `refci view` writes), read-only, and a list
// of the repositories at /. A repository's site is brought up to date
// when one of its pages is asked for, at most once per Fresh; the build is
// incremental, so a request after a new result costs about one run page.
//
// Safe for concurrent use. The zero value is not usable: set Repos, WWW
// and List.
type siteServer struct {
	Repos string                   // the bare repositories' root
	WWW   string                   // where the sites are written, one folder per repository
	List  func() ([]string, error) // the repositories' names, relative to Repos
	Keys  secrets.Keyring          // whose results the sites show as verified
	Fresh time.Duration            // default 2 s
	Log   *slog.Logger

	mu       sync.Mutex
	builders map[string]*siteBuilder
	built    map[string]time.Time
}

var siteIndex = template.Must(template.New("index").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>refci</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:15px/1.5 system-ui,sans-serif;margin:2em auto;max-width:44em;padding:0 1em}a{color:#0550ae}</style>
</head><body><h1>refci</h1>
{{if .}}<p>Repositories on this server; each page lists its runs, newest first.</p><ul>
{{range .}}<li><a href="{{.}}/">{{.}}</a></li>
{{end}}</ul>{{else}}<p>No repository yet. An admin creates one by pushing to it.</p>{{end}}
</body></html>
`))

func (s *siteServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := path.Clean("/" + r.URL.Path)
	w.Header().Set("Content-Security-Policy", siteCSP()) // every answer, errors too
	repos, err := s.List()
	if err != nil {
		http.Error(w, "cannot list the repositories", http.StatusInternalServerError)
		return
	}
	if p == "/" || p == "/index.html" {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		siteIndex.Execute(w, repos)
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
	http.FileServer(http.Dir(s.WWW)).ServeHTTP(w, r)
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

// siteRepos lists the repositories the HTTP site shows: those every key
// may read, and those the roles file marks public (queue.Access.OnSite).
func siteRepos(root string, a *queue.Access) ([]string, error) {
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
// within Fresh. A failed build is logged; the last good site stays.
func (s *siteServer) refresh(name string) {
	fresh := s.Fresh
	if fresh <= 0 {
		fresh = 2 * time.Second
	}
	s.mu.Lock()
	if s.builders == nil {
		s.builders, s.built = map[string]*siteBuilder{}, map[string]time.Time{}
	}
	b := s.builders[name]
	if b == nil {
		b = &siteBuilder{RepoDir: filepath.Join(s.Repos, filepath.FromSlash(name)), Out: filepath.Join(s.WWW, filepath.FromSlash(name)), Keys: s.Keys}
		if s.Log != nil {
			b.Warn = func(msg string) { s.Log.Warn("viewer", "repo", name, "problem", msg) }
		}
		s.builders[name] = b
	}
	if time.Since(s.built[name]) < fresh {
		s.mu.Unlock()
		return
	}
	s.built[name] = time.Now()
	s.mu.Unlock()
	if _, err := b.Build(); err != nil && s.Log != nil {
		s.Log.Error("viewer: cannot build the site", "repo", name, "err", err)
	}
}
