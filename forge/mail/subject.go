package mail

import (
	"strconv"
	"strings"
	"unicode"
)

// Subject is a patch subject taken apart: "[RFC PATCH repo v2 3/5] title".
// The zero value is a subject that is not a patch.
type Subject struct {
	Re      bool   // the subject starts with Re: (never a patch)
	Patch   bool   // a bracket group holds PATCH
	RFC     bool   // the group holds RFC
	Prefix  string // the group's other words (a repository's name), space separated
	Version int    // vN; 1 when absent
	Index   int    // 3 of 3/5; 0 for a cover letter; 1 for a lone [PATCH]
	Total   int    // 5 of 3/5; 1 for a lone [PATCH]
	Title   string // the rest, other bracket groups included, trimmed
}

// ParseSubject reads a decoded subject. Case and white space are
// tolerated; "v2,3/5" is "v2 3/5". Bracket groups other than the first
// PATCH group stay in Title. A subject without a PATCH group has Patch
// false and the whole text (after Re:) as Title.
func ParseSubject(s string) Subject {
	var out Subject
	var pre []string
	rest := strings.TrimSpace(s)
	for {
		rest = strings.TrimLeftFunc(rest, unicode.IsSpace)
		if len(rest) >= 3 && strings.EqualFold(rest[:3], "re:") {
			out.Re = true
			rest = rest[3:]
			continue
		}
		if !strings.HasPrefix(rest, "[") {
			break
		}
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			break
		}
		group := rest[1:end]
		rest = rest[end+1:]
		if t, ok := parseTag(group); ok {
			t.Re = out.Re
			out = t
			break
		}
		pre = append(pre, "["+group+"]")
	}
	rest = strings.TrimSpace(rest)
	if !out.Patch {
		return Subject{Re: out.Re, Title: strings.TrimSpace(strings.Join(append(pre, rest), " "))}
	}
	if rest != "" {
		pre = append(pre, rest)
	}
	out.Title = strings.Join(pre, " ")
	return out
}

func parseTag(group string) (Subject, bool) {
	t := Subject{Version: 1, Index: 1, Total: 1}
	var prefix []string
	for _, w := range strings.FieldsFunc(group, func(r rune) bool { return unicode.IsSpace(r) || r == ',' }) {
		switch {
		case strings.EqualFold(w, "PATCH"):
			t.Patch = true
		case strings.EqualFold(w, "RFC"):
			t.RFC = true
		case version(w) > 0:
			t.Version = version(w)
		default:
			if i, n, ok := counter(w); ok {
				t.Index, t.Total = i, n
			} else {
				prefix = append(prefix, w)
			}
		}
	}
	t.Prefix = strings.Join(prefix, " ")
	return t, t.Patch
}

func version(w string) int {
	if len(w) < 2 || (w[0] != 'v' && w[0] != 'V') {
		return 0
	}
	n, err := strconv.Atoi(w[1:])
	if err != nil || n < 1 || n > 9999 || strings.ContainsAny(w[1:], "+-") {
		return 0
	}
	return n
}

func counter(w string) (int, int, bool) {
	a, b, ok := strings.Cut(w, "/")
	if !ok || strings.ContainsAny(w, "+-") {
		return 0, 0, false
	}
	i, err1 := strconv.Atoi(a)
	n, err2 := strconv.Atoi(b)
	if err1 != nil || err2 != nil || n < 1 || n > 9999 || i < 0 || i > n {
		return 0, 0, false
	}
	return i, n, true
}

// String formats s as git format-patch would: "[RFC PATCH repo v2 3/5] title".
func (s Subject) String() string {
	var b strings.Builder
	if s.Re {
		b.WriteString("Re: ")
	}
	if !s.Patch {
		b.WriteString(s.Title)
		return b.String()
	}
	words := []string{}
	if s.RFC {
		words = append(words, "RFC")
	}
	words = append(words, "PATCH")
	if s.Prefix != "" {
		words = append(words, s.Prefix)
	}
	if s.Version > 1 {
		words = append(words, "v"+strconv.Itoa(s.Version))
	}
	if !(s.Index == 1 && s.Total == 1) {
		words = append(words, strconv.Itoa(s.Index)+"/"+strconv.Itoa(s.Total))
	}
	b.WriteString("[" + strings.Join(words, " ") + "]")
	if s.Title != "" {
		b.WriteString(" " + s.Title)
	}
	return b.String()
}
