package worker

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"

	"refci.dev/refci/gitproto"
)

var unsafeCacheChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// CacheName is the directory name of the cache of the remote at url (the
// URL, a path, or any key naming a remote): readable (the end of the URL
// with its credentials removed and other characters than letters,
// digits, '.', '_' and '-' replaced) and stable (a hash of the whole
// key), so that a worker started again finds its caches. It is one path
// element ending in .git, never "." or "..".
func CacheName(url string) string {
	sum := sha256.Sum256([]byte(url))
	base := unsafeCacheChars.ReplaceAllString(gitproto.RedactURL(url), "_")
	base = strings.Trim(base, "_.")
	if len(base) > 60 {
		base = base[len(base)-60:]
	}
	return base + "-" + hex.EncodeToString(sum[:6]) + ".git"
}
