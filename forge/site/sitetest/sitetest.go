// Package sitetest checks, for tests, what a server of the site of
// package site (refci serve --http, or a site.Handler alone) sends: the
// site's own pages under the site's Content-Security-Policy, what a
// result brought sandboxed, and active documents as downloads. Only
// tests import it.
package sitetest

import (
	"html"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Get asks url with extra request headers and returns the response
// (body read and closed) and the body.
func Get(t testing.TB, url string, hdr ...string) (*http.Response, string) {
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

// CheckHeaders asks the HTTP site at base for each path (relative to
// base) and checks what it sends: pages, the site's own, carry the site's
// CSP; content and active, what a result brought, are sandboxed, and
// active ones (documents that could act) are downloads unless a frame
// asks. Every answer must be 200 and carry nosniff.
func CheckHeaders(t testing.TB, base string, pages, content, active []string) {
	t.Helper()
	for _, p := range pages {
		resp, body := Get(t, base+p)
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
		resp, body := Get(t, base+p)
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
			resp, _ := Get(t, base+p, "Sec-Fetch-Dest", "iframe")
			if resp.Header.Get("Content-Disposition") != "" || !strings.HasPrefix(resp.Header.Get("Content-Security-Policy"), "sandbox;") {
				t.Errorf("GET %s from a frame: %v", p, resp.Header)
			}
		}
	}
}

// linkAttr finds the addresses a page links or loads.
var linkAttr = regexp.MustCompile(`\s(?:href|src)="([^"]*)"`)

// CheckLinks checks that every link of every HTML file of the site in dir
// that leads into the site (not to another site, not a fragment of the
// page itself) names a file that exists there.
//
// It checks the site as files: what a result brought (its artifacts) is
// not the site's and is skipped, and a file left in the site's .tmp/ is
// an error.
func CheckLinks(t testing.TB, dir string) {
	t.Helper()
	checked := 0
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".html") {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if strings.HasPrefix(rel, ".tmp/") {
			t.Errorf("%s is left in the site", rel)
			return nil
		}
		if strings.Contains(rel, "/artifacts/") {
			return nil // a result's own file, not the site's page
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range linkAttr.FindAllStringSubmatch(string(raw), -1) {
			u, err := url.Parse(html.UnescapeString(m[1]))
			if err != nil {
				t.Errorf("%s: link %q: %v", rel, m[1], err)
				continue
			}
			if u.Scheme != "" || u.Host != "" || u.Path == "" {
				continue
			}
			to := path.Join(path.Dir(rel), u.Path)
			if strings.HasPrefix(to, "../") || to == ".." {
				t.Errorf("%s links %s, outside the site", rel, m[1])
				continue
			}
			checked++
			if fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(to))); err != nil || fi.IsDir() {
				t.Errorf("%s links %s, which is not there", rel, m[1])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked == 0 {
		t.Errorf("no link checked in %s", dir)
	}
}
