package main

import (
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestViewerIsReadOnly(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "index.html"), []byte("hello"), 0o644)
	srv := httptest.NewServer(readOnly(http.FileServer(http.Dir(dir))))
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
