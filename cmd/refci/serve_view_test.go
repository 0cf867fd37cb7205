package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// getWith asks url with extra request headers and returns the response
// (body read and closed) and the body.
func getWith(t *testing.T, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// checkSiteHeaders checks what the HTTP site sends for one path: the
// site's own pages carry the site's CSP; what a result brought is
// sandboxed, and active documents are downloads unless a frame asks.
func checkSiteHeaders(t *testing.T, base string, pages, content, active []string) {
	t.Helper()
	for _, p := range pages {
		resp, body := getWith(t, base+p)
		if resp.StatusCode != 200 {
			t.Errorf("GET %s: %d\n%.300s", p, resp.StatusCode, body)
			continue
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'sha256-") || strings.Contains(csp, "sandbox") {
			t.Errorf("GET %s: the site's page has CSP %q", p, csp)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("Content-Disposition") != "" {
			t.Errorf("GET %s: headers %v", p, resp.Header)
		}
	}
	isActive := map[string]bool{}
	for _, p := range active {
		isActive[p] = true
	}
	for _, p := range append(content, active...) {
		resp, body := getWith(t, base+p)
		if resp.StatusCode != 200 {
			t.Errorf("GET %s: %d\n%.300s", p, resp.StatusCode, body)
			continue
		}
		csp := resp.Header.Get("Content-Security-Policy")
		if !strings.HasPrefix(csp, "sandbox;") || strings.Contains(csp, "allow-") || strings.Contains(csp, "script-src") || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s (%s): CSP %q, headers %v", p, resp.Header.Get("Content-Type"), csp, resp.Header)
		}
		if cd := resp.Header.Get("Content-Disposition"); (cd == "attachment") != isActive[p] {
			t.Errorf("GET %s (%s): Content-Disposition %q, want attachment: %v", p, resp.Header.Get("Content-Type"), cd, isActive[p])
		}
		if isActive[p] {
			// The run page's sandboxed preview frame gets it inline,
			// still under the sandbox.
			resp, _ := getWith(t, base+p, "Sec-Fetch-Dest", "iframe")
			if resp.Header.Get("Content-Disposition") != "" || !strings.HasPrefix(resp.Header.Get("Content-Security-Policy"), "sandbox;") {
				t.Errorf("GET %s from a frame: %v", p, resp.Header)
			}
		}
	}
}

// Issue 15, item 7, with a hand-made site: every kind of hostile file a
// result could bring.
func TestSiteServerHeaders(t *testing.T) {
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
	site := &siteServer{Repos: t.TempDir(), WWW: www, List: func() ([]string, error) { return []string{"app.git"}, nil }}
	srv := httptest.NewServer(readOnly(site))
	defer srv.Close()
	base := srv.URL + "/"
	checkSiteHeaders(t, base,
		[]string{"", "app.git/", "app.git/index.html", "app.git/state-success.html", "app.git/badges/main.svg", run, run + "index.html", "app.git/runs/"},
		[]string{run + "status.json", run + "log.txt", run + "jobs/build.log", run + "artifacts/data.bin", run + "artifacts/notes.txt", run + "artifacts/index.html.d/x.js"},
		[]string{run + "artifacts/report.html", run + "artifacts/", run + "artifacts/pic.svg", run + "artifacts/feed.xml", run + "artifacts/page.xhtml", run + "artifacts/noext", run + "artifacts/sub/deep.htm", run + "artifacts/sub/"})
	// Errors carry the site's policy too.
	for _, p := range []string{"nope.git/", "app.git/missing.html", run + "artifacts/missing.html"} {
		resp, _ := getWith(t, base+p)
		if resp.StatusCode != 404 || resp.Header.Get("Content-Security-Policy") == "" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: %d %v", p, resp.StatusCode, resp.Header)
		}
	}
	// Escaped and dotted spellings of a result's path are the same path.
	for _, p := range []string{run + "artifacts/%72eport.html", run + "x/../artifacts/report.html", "app.git//runs/" + strings.Repeat("a", 40) + "/20261122T093000.123Z-3f9a1c0b2d4e/artifacts/report.html"} {
		resp, _ := getWith(t, base+p)
		if resp.StatusCode == 200 && (!strings.HasPrefix(resp.Header.Get("Content-Security-Policy"), "sandbox;") || resp.Header.Get("Content-Disposition") != "attachment") {
			t.Errorf("GET %s: %d %v", p, resp.StatusCode, resp.Header)
		}
	}
}
