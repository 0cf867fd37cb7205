package gitproto

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
)

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// CacheName is a stable, readable directory name (ending in .git) for a
// local repository kept for the remote url (a worker's cache, a mirror's
// copy): the URL without its credentials, made safe and cut to its last
// 60 characters, and a hash of the whole URL. The same url always gives
// the same name, so a restart finds its repositories again.
func CacheName(url string) string {
	sum := sha256.Sum256([]byte(url))
	base := unsafeChars.ReplaceAllString(RedactURL(url), "_")
	base = strings.Trim(base, "_.")
	if len(base) > 60 {
		base = base[len(base)-60:]
	}
	return base + "-" + hex.EncodeToString(sum[:6]) + ".git"
}
