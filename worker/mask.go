package worker

// Masking: every secret value handed out to a pipeline is replaced by
// MaskText in every log and text artifact, in the common encodings a
// pipeline might print it in, also when a value arrives split across
// writes.

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net/url"
	"sort"
	"strings"
	"sync"
)

// MaskText replaces a secret value in logs and artifacts.
const MaskText = "***"

// MinMaskLen is the shortest byte pattern masked. The secrets side refuses
// values shorter than this (secrets.MinValueLen, the same number), and a
// line of a multi-line value shorter than this is not masked on its own:
// masking "yes" or "}" everywhere would hide unrelated text.
const MinMaskLen = 6

// MaskSet is the set of byte patterns a run hides: the values handed out
// so far, each in every encoding maskPatterns lists. The zero value is an
// empty set that masks nothing. It is safe for concurrent use: values are
// added while maskers read it.
type MaskSet struct {
	mu      sync.RWMutex
	pats    [][]byte // longest first
	seen    map[string]bool
	first   [256][]int // indices into pats, by first byte
	maxLen  int
	version int // bumped by every Add
}

// Add masks value from now on. Values shorter than MinMaskLen are ignored
// (the caller refuses to hand them out).
func (s *MaskSet) Add(value []byte) {
	if len(value) < MinMaskLen {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[string]bool{}
	}
	added := false
	for _, p := range maskPatterns(value) {
		if !s.seen[string(p)] {
			s.seen[string(p)] = true
			s.pats = append(s.pats, p)
			added = true
		}
	}
	if !added {
		return
	}
	sort.SliceStable(s.pats, func(i, j int) bool { return len(s.pats[i]) > len(s.pats[j]) })
	s.first = [256][]int{}
	s.maxLen = 0
	for i, p := range s.pats {
		s.first[p[0]] = append(s.first[p[0]], i)
		s.maxLen = max(s.maxLen, len(p))
	}
	s.version++
}

// Empty reports whether nothing is masked yet.
func (s *MaskSet) Empty() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.pats) == 0
}

// Holds reports whether s holds a masked pattern. A nil set holds none.
func (s *MaskSet) Holds(str string) bool {
	if s == nil || s.Empty() {
		return false
	}
	_, _, n := s.mask([]byte(str), true)
	return n > 0
}

// String returns str with every masked pattern replaced by MaskText. A
// nil set masks nothing.
func (s *MaskSet) String(str string) string {
	if s == nil || s.Empty() {
		return str
	}
	out, _, n := s.mask([]byte(str), true)
	if n == 0 {
		return str
	}
	return string(out)
}

// maskPatterns lists the byte strings that reveal value: the value itself
// (also without a trailing newline), each line of a multi-line value, and
// for the value with and without a trailing newline: base64 (standard and
// URL alphabets, padded and not), hex (lower and upper case) and URL
// encoding (query and path style). Patterns shorter than MinMaskLen are
// left out.
func maskPatterns(value []byte) [][]byte {
	var out [][]byte
	add := func(p []byte) {
		if len(p) >= MinMaskLen {
			out = append(out, p)
		}
	}
	forms := [][]byte{value}
	trimmed := bytes.TrimRight(value, "\r\n")
	if len(trimmed) != len(value) {
		forms = append(forms, trimmed)
	} else {
		forms = append(forms, append(bytes.Clone(value), '\n'))
	}
	add(trimmed)
	if bytes.ContainsAny(trimmed, "\r\n") {
		for _, line := range strings.Split(string(trimmed), "\n") {
			add([]byte(strings.TrimRight(line, "\r")))
		}
	}
	for _, f := range forms {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			add([]byte(enc.EncodeToString(f)))
		}
		h := hex.EncodeToString(f)
		add([]byte(h))
		add([]byte(strings.ToUpper(h)))
		add([]byte(url.QueryEscape(string(f))))
		add([]byte(url.PathEscape(string(f))))
	}
	return out
}

// mask replaces every pattern in data. Unless final, it stops at the
// first position where the rest of data could be the start of a pattern
// that more data would complete, and returns that rest as held. It
// reports how many patterns it replaced.
func (s *MaskSet) mask(data []byte, final bool) (out, held []byte, n int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.pats) == 0 {
		return data, nil, 0
	}
	emitted := 0
	for i := 0; i < len(data); {
		rest := data[i:]
		if !final && len(rest) < s.maxLen && s.couldStart(rest) {
			return append(out, data[emitted:i]...), rest, n
		}
		if l := s.matchAt(rest); l > 0 {
			out = append(out, data[emitted:i]...)
			out = append(out, MaskText...)
			n++
			i += l
			emitted = i
			continue
		}
		i++
	}
	return append(out, data[emitted:]...), nil, n
}

// matchAt is the length of the longest pattern at the start of b, or 0.
func (s *MaskSet) matchAt(b []byte) int {
	for _, idx := range s.first[b[0]] {
		if bytes.HasPrefix(b, s.pats[idx]) {
			return len(s.pats[idx]) // longest first
		}
	}
	return 0
}

// couldStart reports whether b is a proper prefix of a pattern.
func (s *MaskSet) couldStart(b []byte) bool {
	for _, idx := range s.first[b[0]] {
		if p := s.pats[idx]; len(p) > len(b) && bytes.HasPrefix(p, b) {
			return true
		}
	}
	return false
}

// Masker is a writer that passes everything on to W with the patterns of
// Set masked. Bytes that may begin a pattern are held back until the
// following write decides, so a value split across writes is still
// masked; Flush writes what is held at the end. When Set is empty, writes
// pass straight through. A Masker is not safe for concurrent use (the
// callers serialise writes); Set may grow meanwhile.
type Masker struct {
	Set *MaskSet
	W   io.Writer

	held   []byte
	masked int
}

// Write masks p and writes what is decided. It reports len(p) unless W
// failed.
func (m *Masker) Write(p []byte) (int, error) {
	if len(m.held) == 0 && m.Set.Empty() {
		return m.W.Write(p) // nothing to mask: no copy
	}
	data := append(m.held, p...)
	out, held, n := m.Set.mask(data, false)
	m.held = append([]byte(nil), held...)
	m.masked += n
	if len(out) > 0 {
		if _, err := m.W.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush writes the bytes held back, masked.
func (m *Masker) Flush() error {
	if len(m.held) == 0 {
		return nil
	}
	out, _, n := m.Set.mask(m.held, true)
	m.held = nil
	m.masked += n
	_, err := m.W.Write(out)
	return err
}

// Masked is how many occurrences were replaced so far.
func (m *Masker) Masked() int { return m.masked }
