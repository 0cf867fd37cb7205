package forge

import (
	"strings"
	"unicode/utf8"
)

// OneLine makes s one line (runs of white space, newlines included,
// become one space) of at most n characters, ending in "…" when cut: a
// status description within a forge's limit.
func OneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}

// Cut shortens s to at most n characters, ending in "…" when cut: a
// comment body within a forge's limit.
func Cut(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}
