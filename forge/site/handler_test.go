package site

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"refci.dev/refci/forge/site/sitetest"
	"refci.dev/refci/secrets"
)

// Issue 15, item 7, with a hand-made site: every kind of hostile file a
// result could bring.
func TestHandlerHeaders(t *testing.T) {
	www := t.TempDir()
	run := "app.git/runs/" + strings.Repeat("a", 40) + "/20261122T093000.123Z-3f9a1c0b2d4e/"
	files := map[string]string{
		"app.git/index.html":                "<!DOCTYPE html><title>list</title>",
		"app.git/state-success.html":        "<!DOCTYPE html><title>list</title>",
		"app.git/badges/main.svg":           "<svg xmlns='http://www.w3.org/2000/svg'></svg>",
		run + "index.html":                  "<!DOCTYPE html><title>run</title>",
		run + "status.json":                 "{}",
		run + "log.txt":                     "<script>alert(1)</script>",
		run + "jobs/build.log":              "<html><script>alert(1)</script>",
		run + "artifacts/report.html":       "<script>alert(document.cookie)</script>",
		run + "artifacts/index.html":        "<script>alert(document.cookie)</script>",
		run + "artifacts/pic.svg":           "<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
		run + "artifacts/feed.xml":          "<?xml version='1.0'?><x:script xmlns:x='http://www.w3.org/1999/xhtml'>alert(1)</x:script>",
		run + "artifacts/page.xhtml":        "<html xmlns='http://www.w3.org/1999/xhtml'><script>alert(1)</script></html>",
		run + "artifacts/noext":             "<html><script>alert(1)</script></html>",
		run + "artifacts/sub/deep.htm":      "<script>alert(1)</script>",
		run + "artifacts/data.bin":          "\x00\x01",
		run + "artifacts/notes.txt":         "plain",
		run + "artifacts/index.html.d/x.js": "alert(1)",
	}
	for p, c := range files {
		full := filepath.Join(www, filepath.FromSlash(p))
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h := NewHandler(t.TempDir(), www, func() ([]string, error) { return []string{"app.git"}, nil }, secrets.Keyring{}, nil)
	srv := httptest.NewServer(h)
	defer srv.Close()
	base := srv.URL + "/"
	sitetest.CheckHeaders(t, base,
		[]string{"", "app.git/", "app.git/index.html", "app.git/state-success.html", "app.git/badges/main.svg", run, run + "index.html", "app.git/runs/"},
		[]string{run + "status.json", run + "log.txt", run + "jobs/build.log", run + "artifacts/data.bin", run + "artifacts/notes.txt", run + "artifacts/index.html.d/x.js"},
		[]string{run + "artifacts/report.html", run + "artifacts/", run + "artifacts/pic.svg", run + "artifacts/feed.xml", run + "artifacts/page.xhtml", run + "artifacts/noext", run + "artifacts/sub/deep.htm", run + "artifacts/sub/"})
	// Errors carry the site's policy too.
	for _, p := range []string{"nope.git/", "app.git/missing.html", run + "artifacts/missing.html"} {
		resp, _ := sitetest.Get(t, base+p)
		if resp.StatusCode != 404 || resp.Header.Get("Content-Security-Policy") == "" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: %d %v", p, resp.StatusCode, resp.Header)
		}
	}
	// Escaped and dotted spellings of a result's path are the same path.
	for _, p := range []string{run + "artifacts/%72eport.html", run + "x/../artifacts/report.html", "app.git//runs/" + strings.Repeat("a", 40) + "/20261122T093000.123Z-3f9a1c0b2d4e/artifacts/report.html"} {
		resp, _ := sitetest.Get(t, base+p)
		if resp.StatusCode == 200 && (!strings.HasPrefix(resp.Header.Get("Content-Security-Policy"), "sandbox;") || resp.Header.Get("Content-Disposition") != "attachment") {
			t.Errorf("GET %s: %d %v", p, resp.StatusCode, resp.Header)
		}
	}
}
