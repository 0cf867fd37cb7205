package main

import (
	"encoding/pem"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"refci.dev/refci/queue"
)

// A worker serves https:// remotes, here stock git http-backend behind
// TLS and basic authentication, with credentials supplied the two ways
// git users supply them: a credential helper in their git config, and a
// user:password URL. The password never reaches the worker's log.
func TestWorkerOverHTTPS(t *testing.T) {
	f := newFleet(t, "echo over https\n")
	root := filepath.Join(f.root, "served")
	os.MkdirAll(root, 0o755)
	for _, name := range []string{"helper.git", "inurl.git", "nocreds.git"} {
		dir := filepath.Join(root, name)
		f.git("", "clone", "-q", "--bare", f.bare, dir)
		f.git(dir, "config", "http.receivepack", "true")
		f.git("", "push", "-q", dir, "HEAD:refs/ci/requests/via-"+strings.TrimSuffix(name, ".git"))
	}
	execPath := f.git("", "--exec-path")
	backend := &cgi.Handler{Path: filepath.Join(execPath, "git-http-backend"), Root: "/",
		Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"}}
	const user, pass = "ci-bot", "s3cret-Pa55word"
	var refused, served atomic.Int64
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
			refused.Add(1)
			w.Header().Set("WWW-Authenticate", `Basic realm="refci test"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		served.Add(1)
		backend.ServeHTTP(w, r)
	}))
	defer srv.Close()
	ca := filepath.Join(f.root, "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	host := strings.TrimPrefix(srv.URL, "https://")
	creds := filepath.Join(f.root, "git-credentials")
	os.WriteFile(creds, []byte("https://"+user+":"+pass+"@"+host+"/helper.git\n"), 0o600) // for that repository only
	f.git("", "config", "--global", "credential.helper", "store --file="+creds)
	f.git("", "config", "--global", "credential.useHttpPath", "true")
	f.env = append(f.env, "GIT_SSL_CAINFO="+ca)

	helperURL := srv.URL + "/helper.git"
	inURL := "https://" + user + ":" + pass + "@" + host + "/inurl.git"
	noCreds := srv.URL + "/nocreds.git" // no credentials for it: refused
	w := startRefci(t, f.root, append(append([]string{}, f.env...), "REFCI_HOME="+filepath.Join(f.root, "worker-https")),
		"worker", "--remote", helperURL, "--remote", inURL, "--remote", noCreds, "--poll", "200ms", "--lease", "3s")
	wlog := w.errOut
	for _, name := range []string{"helper", "inurl"} {
		dir := filepath.Join(root, name+".git")
		f.waitFor(name+" to be done", time.Minute, func() bool {
			out := f.gitErr(dir, "for-each-ref", "refs/ci/requests/", "refs/ci/claims/")
			return strings.TrimSpace(out) == "" && strings.TrimSpace(f.gitErr(dir, "for-each-ref", "refs/ci/runs/")) != ""
		})
		ref := strings.Fields(f.gitErr(dir, "for-each-ref", "--format=%(refname)", "refs/ci/runs/"))[0]
		st, err := queue.DecodeStatus([]byte(f.gitErr(dir, "show", ref+":status.json")))
		if err != nil || st.State != queue.Success || st.Request != "via-"+name {
			t.Errorf("%s: %+v %v", name, st, err)
		}
	}
	if refused.Load() == 0 || served.Load() == 0 {
		t.Errorf("the server refused %d and served %d requests; want both (git asks its helper after a 401)", refused.Load(), served.Load())
	}
	// The refused remote: one clear line, not one per retry, and its
	// request waits. The line is awaited (a loaded machine may be slow to
	// poll); the 2 s after it only give retries the chance to repeat it.
	f.waitFor("the problem line of the remote without credentials", 2*time.Minute, func() bool {
		return strings.Contains(wlog.String(), "remote problem; retrying with backoff\" remote="+noCreds)
	})
	time.Sleep(2 * time.Second)
	if n := strings.Count(wlog.String(), "remote problem; retrying with backoff\" remote="+noCreds); n != 1 || !strings.Contains(wlog.String(), "check the credentials") {
		t.Errorf("%d problem lines for the remote without credentials, want 1 saying to check them:\n%s", n, tail(wlog.String()))
	}
	if strings.TrimSpace(f.gitErr(filepath.Join(root, "nocreds.git"), "for-each-ref", "refs/ci/requests/")) == "" {
		t.Error("the request on the refused remote is gone")
	}
	if strings.Contains(wlog.String(), pass) {
		t.Errorf("the password is in the worker's log:\n%s", wlog.String())
	}
	if !strings.Contains(wlog.String(), user+":***@") {
		t.Errorf("the worker's log does not name the remote with its password masked:\n%s", tail(wlog.String()))
	}
}
