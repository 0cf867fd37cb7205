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
	http.FileServer(http.Dir(s.WWW)).ServeHTTP(w, r)
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
