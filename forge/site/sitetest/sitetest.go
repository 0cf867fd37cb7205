// Package sitetest checks, for tests, what a server of the site of
// package site (refci serve --http, or a site.Handler alone) sends: the
// site's own pages under the site's Content-Security-Policy, what a
// result brought sandboxed, and active documents as downloads. Only
// tests import it.
package sitetest

import (
	"io"
	"net/http"
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
