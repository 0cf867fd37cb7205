package gitproto

import (
	"strings"
	"testing"
)

// The names are those refci has always given its caches: a worker or a
// server started again after an upgrade keeps using them.
func TestCacheNameIsStable(t *testing.T) {
	for url, want := range map[string]string{
		"ssh://git@example.org/app.git":       "ssh_git_example.org_app.git-a10553eb5182.git",
		"/srv/refci/repos/org/app.git":        "srv_refci_repos_org_app.git-04f5e352edf1.git",
		"https://user:secret@example.org/a/b": "",
		"../..":                               "",
		strings.Repeat("x", 100) + "/tail-of-a-very-long-url.git": "",
	} {
		got := CacheName(url)
		if want != "" && got != want {
			t.Errorf("CacheName(%q) = %q, want %q", url, got, want)
		}
		if strings.ContainsAny(got, "/\\:@ ") || strings.HasPrefix(got, ".") || !strings.HasSuffix(got, ".git") || len(got) > 60+1+12+4 {
			t.Errorf("CacheName(%q) = %q: not one short, safe path element", url, got)
		}
		if strings.Contains(got, "secret") {
			t.Errorf("CacheName(%q) = %q keeps the password", url, got)
		}
	}
	if CacheName("/a/b") == CacheName("/a_b") {
		t.Error("two remotes whose readable parts agree share a cache")
	}
}
