package server

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
)

// Site serves a handler read-only over HTTP: refci serve --http, the
// static site of results. Lifecycle: ListenSite listens, Serve serves
// until Close. Safe for concurrent use.
type Site struct {
	ln net.Listener
	hs *http.Server
}

// ListenSite listens for the site on addr: a port alone ("8080") or with
// no host (":8080") listens on the loopback address 127.0.0.1 only; a
// host ("0.0.0.0:8080") is taken as given. The error says the address.
func ListenSite(addr string) (*Site, error) {
	if h, p, err := net.SplitHostPort(addr); err == nil && h == "" {
		addr = net.JoinHostPort("127.0.0.1", p)
	} else if err != nil && !strings.Contains(addr, ":") {
		addr = net.JoinHostPort("127.0.0.1", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	return &Site{ln: ln, hs: &http.Server{ReadHeaderTimeout: 10 * time.Second}}, nil
}

// URL is the site's address, http://host:port/.
func (s *Site) URL() string { return "http://" + s.ln.Addr().String() + "/" }

// Serve serves h read-only (see ReadOnly) until Close, which makes it
// return http.ErrServerClosed. Call it once.
func (s *Site) Serve(h http.Handler) error {
	s.hs.Handler = ReadOnly(h)
	return s.hs.Serve(s.ln)
}

// Close closes the listener and every connection at once.
func (s *Site) Close() error {
	err := s.hs.Close()
	s.ln.Close() // when Serve never ran
	return err
}

// ReadOnly serves h for GET and HEAD requests, with the header
// X-Content-Type-Options: nosniff, and refuses every other method (405,
// Allow: GET, HEAD).
func ReadOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "read-only", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("X-Content-Type-Options", "nosniff")
		h.ServeHTTP(w, r)
	})
}
