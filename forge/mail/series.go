package mail

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Window is how far apart unthreaded patches of one sender, version and
// count may be and still be taken as one series.
const Window = time.Hour

// Series is one version of a patch series: its cover letter (if any) and
// patches 1..Total. The zero value is an empty series. A Series made by
// Group is not changed afterwards and is safe to read concurrently.
//
// Identity across versions: a series' lineage is found (1) by threading,
// when a newer version's first message (cover or patch 1) names a
// message of an older version in In-Reply-To or References, as
// `git format-patch --in-reply-to=<old cover>` does; or else (2) by the
// same sender and the same title of the first message (the cover letter's
// subject, or patch 1's), git's placeholder "*** SUBJECT HERE ***"
// excepted. ID is a hash of the Message-ID of the oldest version's first
// message seen, so it is the same for every version Group is given.
//
// Within a version the earliest message for a slot (by Date, then the
// order given) keeps it; a resent patch, or a stranger's patch threaded
// into the series, is ignored when the slot is taken. Threading ties patches of any sender, so a series' patches are
// as untrusted as their senders: the request runs without secrets.
type Series struct {
	ID           string     // 16 hex digits; safe in a request name
	Version      int        // N of vN
	Total        int        // the patch count
	Cover        *Message   // nil without a cover letter
	Patches      []*Message // Patches[i] is patch i+1; nil where missing
	SupersededBy int        // the newer version of the same series, or 0
}

// Root is the message replies thread to: the cover letter, or the first
// patch that arrived.
func (s *Series) Root() *Message {
	if s.Cover != nil {
		return s.Cover
	}
	for _, p := range s.Patches {
		if p != nil {
			return p
		}
	}
	return nil
}

// Complete reports whether all Total patches arrived.
func (s *Series) Complete() bool { return len(s.Missing()) == 0 }

// Missing lists the numbers (1-based) of the patches that did not arrive.
func (s *Series) Missing() []int {
	var out []int
	for i, p := range s.Patches {
		if p == nil {
			out = append(out, i+1)
		}
	}
	return out
}

// RequestName is the request the applied series is pushed as, without
// refs/ci/requests/: patches/<id>/v<N>. It holds no text from the mail.
func (s *Series) RequestName() string {
	return "patches/" + s.ID + "/v" + strconv.Itoa(s.Version)
}

var baseLine = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`(?m)^base-commit: ([0-9a-f]{40}|[0-9a-f]{64})[ \t]*$`)
})

// Base is the base-commit: trailer of the cover letter, or else of the
// first patch; "" when neither names one.
func (s *Series) Base() string {
	for _, m := range []*Message{s.Cover, s.first()} {
		if m != nil {
			if sm := baseLine().FindStringSubmatch(m.Body); sm != nil {
				return sm[1]
			}
		}
	}
	return ""
}

func (s *Series) first() *Message {
	if len(s.Patches) > 0 {
		return s.Patches[0]
	}
	return nil
}

// Mbox is the patches in order as one mboxrd file for git am
// --patch-format=mboxrd; missing patches are left out.
func (s *Series) Mbox() []byte {
	var b strings.Builder
	for _, p := range s.Patches {
		if p != nil {
			writeMboxrd(&b, p.Raw)
		}
	}
	return []byte(b.String())
}

var fromQuoted = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^>*From `) })

func writeMboxrd(b *strings.Builder, raw []byte) {
	b.WriteString("From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n")
	text := strings.ReplaceAll(string(raw), "\r\n", "\n")
	text = strings.TrimSuffix(text, "\n")
	for _, line := range strings.Split(text, "\n") {
		if fromQuoted().MatchString(line) {
			b.WriteByte('>')
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
}

const placeholderTitle = "*** SUBJECT HERE ***"

// Group groups patches and cover letters into series; other kinds are
// ignored, and a message whose Message-ID was seen already is dropped.
// A patch belongs to the series of the nearest message it names (In-Reply-To,
// then References newest first) that has the same version and count (of
// any sender: a patch's author may differ from the cover letter's),
// followed to its cover letter or patch 1; an unthreaded patch joins a
// series of the same sender, version and count whose first message is
// within Window; otherwise it starts one. The result is sorted by the
// first message's date, then ID and version; its order is deterministic.
func Group(msgs []*Message) []*Series {
	byID := map[string]*Message{}
	var ms []*Message
	for _, m := range msgs {
		if m == nil || (m.Kind != KindPatch && m.Kind != KindCover) {
			continue
		}
		if m.ID != "" {
			if byID[m.ID] != nil {
				continue
			}
			byID[m.ID] = m
		}
		ms = append(ms, m)
	}
	sort.SliceStable(ms, func(i, j int) bool { return ms[i].Date.Before(ms[j].Date) })

	// Threading ties messages of any sender (git send-email keeps each
	// patch's author); without threading the sender must match too.
	same := func(a, b *Message) bool {
		return a.Tag.Version == b.Tag.Version && a.Tag.Total == b.Tag.Total
	}
	parent := func(m *Message) *Message {
		cands := []string{m.InReplyTo}
		for i := len(m.References) - 1; i >= 0; i-- {
			cands = append(cands, m.References[i])
		}
		for _, id := range cands {
			if p := byID[id]; p != nil && p != m && same(p, m) {
				return p
			}
		}
		return nil
	}
	anchor := func(m *Message) *Message {
		for seen := 0; seen < len(ms) && m.Kind != KindCover; seen++ {
			p := parent(m)
			if p == nil {
				break
			}
			m = p
		}
		return m
	}

	var order []*Series
	byAnchor := map[*Message]*Series{}
	var pending []*Message // unthreaded patches that are not patch 1
	for _, m := range ms {
		a := anchor(m)
		if a == m && m.Kind == KindPatch && m.Tag.Index != 1 {
			pending = append(pending, m)
			continue
		}
		s := byAnchor[a]
		if s == nil {
			s = &Series{Version: a.Tag.Version, Total: a.Tag.Total, Patches: make([]*Message, a.Tag.Total)}
			byAnchor[a] = s
			order = append(order, s)
		}
		s.add(m)
	}
	for _, m := range pending {
		var into *Series
		for _, s := range order {
			r := s.Root()
			if same(r, m) && r.From == m.From && absDur(m.Date.Sub(r.Date)) <= Window && s.Patches[m.Tag.Index-1] == nil {
				into = s
				break
			}
		}
		if into == nil {
			into = &Series{Version: m.Tag.Version, Total: m.Tag.Total, Patches: make([]*Message, m.Tag.Total)}
			order = append(order, into)
		}
		into.add(m)
	}
	lineage(order, byID)
	sort.SliceStable(order, func(i, j int) bool {
		a, b := order[i], order[j]
		if !a.Root().Date.Equal(b.Root().Date) {
			return a.Root().Date.Before(b.Root().Date)
		}
		if a.ID != b.ID {
			return a.ID < b.ID
		}
		return a.Version < b.Version
	})
	return order
}

func (s *Series) add(m *Message) {
	if m.Kind == KindCover {
		if s.Cover == nil {
			s.Cover = m
		}
		return
	}
	if i := m.Tag.Index - 1; i >= 0 && i < len(s.Patches) && s.Patches[i] == nil {
		s.Patches[i] = m
	}
}

// lineage ties versions together, sets ID and SupersededBy.
func lineage(order []*Series, byID map[string]*Message) {
	seriesOf := map[*Message]*Series{}
	for _, s := range order {
		if s.Cover != nil {
			seriesOf[s.Cover] = s
		}
		for _, p := range s.Patches {
			if p != nil {
				seriesOf[p] = s
			}
		}
	}
	older := map[*Series]*Series{} // a series -> the older version it continues
	byVersion := append([]*Series(nil), order...)
	sort.SliceStable(byVersion, func(i, j int) bool { return byVersion[i].Version < byVersion[j].Version })
	for _, s := range byVersion {
		r := s.Root()
		refs := append([]string{r.InReplyTo}, r.References...)
		for _, id := range refs {
			if o := seriesOf[byID[id]]; o != nil && o != s && o.Version < s.Version {
				older[s] = o
				break
			}
		}
		if older[s] != nil {
			continue
		}
		title := r.Tag.Title
		if title == "" || title == placeholderTitle {
			continue
		}
		for _, o := range byVersion {
			if o.Version >= s.Version {
				break
			}
			if or := o.Root(); or.From == r.From && or.Tag.Title == title {
				older[s] = o // the newest older one wins: keep looking
			}
		}
	}
	newest := map[*Series]*Series{}
	for _, s := range byVersion {
		first := s
		for i := 0; older[first] != nil && i < len(order); i++ {
			first = older[first]
		}
		s.ID = shortHash(first.Root())
		if n := newest[first]; n == nil || s.Version >= n.Version {
			newest[first] = s
		}
	}
	for _, s := range order {
		first := s
		for i := 0; older[first] != nil && i < len(order); i++ {
			first = older[first]
		}
		if n := newest[first]; n != s {
			s.SupersededBy = n.Version
		}
	}
}

func shortHash(m *Message) string {
	key := m.ID
	if key == "" { // no Message-ID: the sender and subject, hashed alike
		key = m.From + "\x00" + m.Subject + "\x00" + m.Date.UTC().Format(time.RFC3339)
	}
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:8])
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}
