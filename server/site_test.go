package server

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestViewerIsReadOnly(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "index.html"), []byte("hello"), 0o644)
	srv := httptest.NewServer(ReadOnly(http.FileServer(http.Dir(dir))))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/index.html")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET: %v %v", resp, err)
	}
	resp.Body.Close()
	for _, m := range []string{"POST", "PUT", "DELETE"} {
		req, _ := http.NewRequest(m, srv.URL+"/index.html", strings.NewReader("x"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s: %v %v", m, resp, err)
		}
		resp.Body.Close()
	}
	resp, _ = http.Get(srv.URL + "/../../etc/passwd")
	if resp.StatusCode == 200 {
		t.Error("path traversal")
	}
	resp.Body.Close()
}

// A site named by a port alone, or with an empty host, listens on the
// loopback address only; it serves GET and HEAD with nosniff, refuses
// the rest, and Close ends Serve.
func TestSiteListensOnLoopbackUnlessToldAndServesReadOnly(t *testing.T) {
	for _, addr := range []string{"0", ":0", "127.0.0.1:0"} {
		s, err := ListenSite(addr)
		if err != nil {
			t.Fatalf("ListenSite(%q): %v", addr, err)
		}
		host, _, err := net.SplitHostPort(s.ln.Addr().String())
		if err != nil || host != "127.0.0.1" {
			t.Errorf("ListenSite(%q) listens on %s, want the loopback address", addr, s.ln.Addr())
		}
		if !strings.HasPrefix(s.URL(), "http://127.0.0.1:") || !strings.HasSuffix(s.URL(), "/") {
			t.Errorf("URL %q", s.URL())
		}
		served := make(chan error, 1)
		go func() {
			served <- s.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "results") }))
		}()
		resp, err := http.Get(s.URL())
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "results" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET: %q, headers %v", b, resp.Header)
		}
		resp, err = http.Post(s.URL(), "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("POST: %s, Allow %q", resp.Status, resp.Header.Get("Allow"))
		}
		s.Close()
		select {
		case err := <-served:
			if !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("Serve after Close: %v", err)
			}
		case <-time.After(time.Minute):
			t.Fatal("Close did not end Serve")
		}
	}
	// Closed before it serves: the port is free again.
	s, err := ListenSite("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := s.ln.Addr().String()
	s.Close()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Errorf("a site closed before serving keeps its port: %v", err)
	} else {
		ln.Close()
	}
	if _, err := ListenSite("127.0.0.1:99999"); err == nil || !strings.Contains(err.Error(), "127.0.0.1:99999") {
		t.Errorf("a bad address: %v", err)
	}
}
