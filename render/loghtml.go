package render

import (
	"bytes"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Limits on what a page inlines of a log. The stored log is always
// complete (up to the worker's cap) next to the page; the page says when
// it shows less and links to it.
const (
	// LineInline is how many bytes of one line are shown; the rest of a
	// longer line is replaced by a note.
	LineInline = 4 << 10
	// LogInline is how many bytes of one log are shown: the first quarter
	// and the last three quarters of it (failures are usually near the
	// end), with a note between them.
	LogInline = 2 << 20
	// PageInline is how many bytes of logs one page shows in all; logs
	// past it are only linked.
	PageInline = 8 << 20
)

// logHTML writes log as an ordered list, one item per line, so that the
// browser numbers the lines (no bytes spent on numbers) and every line
// has an anchor: id=<prefix>L<n> (unquoted: prefixes are job names,
// which are letters, digits, '.', '_' and '-'). The end tags of li are
// implied.
// Everything is escaped; SGR colours become classes; other escapes are
// dropped; control characters are shown as control pictures; invalid
// UTF-8 becomes U+FFFD. raw is the link to the stored log.
func logHTML(b *bytes.Buffer, log []byte, prefix, raw string, limit int) {
	log = bytes.TrimSuffix(log, []byte{'\n'})
	if len(log) == 0 {
		b.WriteString(`<p class="empty">(empty log)</p>`)
		return
	}
	if limit > len(log) || limit <= 0 {
		limit = len(log)
	}
	if limit >= len(log) {
		logList(b, log, prefix, raw, 1)
		return
	}
	// Head: a quarter, cut after a newline; tail: the rest, cut after a newline.
	headEnd := limit / 4
	if i := bytes.LastIndexByte(log[:headEnd], '\n'); i >= 0 {
		headEnd = i
	} else {
		headEnd = 0
	}
	tailStart := len(log) - (limit - headEnd)
	if i := bytes.IndexByte(log[tailStart:], '\n'); i >= 0 {
		tailStart += i + 1
	} else {
		tailStart = len(log)
	}
	if headEnd > 0 {
		logList(b, log[:headEnd], prefix, raw, 1)
	}
	skippedLines := bytes.Count(log[headEnd:tailStart], []byte{'\n'})
	first := 1 + bytes.Count(log[:tailStart], []byte{'\n'})
	fmt.Fprintf(b, `<p class="gap">%d bytes (about %d lines) are not shown here; the page shows at most %d bytes of a log. The whole log: <a href="%s">%s</a></p>`,
		tailStart-headEnd, skippedLines, limit, raw, raw)
	if tailStart < len(log) {
		logList(b, log[tailStart:], prefix, raw, first)
	}
}

func logList(b *bytes.Buffer, log []byte, prefix, raw string, first int) {
	b.WriteString(`<ol class="log"`)
	if first != 1 {
		b.WriteString(` start="`)
		b.WriteString(strconv.Itoa(first))
		b.WriteByte('"')
	}
	b.WriteByte('>')
	for n := first; ; n++ {
		line, rest, found := bytes.Cut(log, []byte{'\n'})
		b.WriteString(`<li id=`)
		b.WriteString(prefix)
		b.WriteByte('L')
		b.WriteString(strconv.Itoa(n))
		b.WriteByte('>')
		lineHTML(b, line, raw)
		if !found {
			break
		}
		log = rest
	}
	b.WriteString("</ol>")
}

// lineHTML writes one line.
func lineHTML(b *bytes.Buffer, line []byte, raw string) {
	line = overwrite(line)
	more := 0
	if len(line) > LineInline {
		more = len(line) - LineInline
		line = line[:LineInline]
		// Do not cut a UTF-8 sequence in two: it would show as invalid.
		for j := len(line) - 1; j >= 0 && j >= len(line)-utf8.UTFMax; j-- {
			if utf8.RuneStart(line[j]) {
				if !utf8.FullRune(line[j:]) {
					more += len(line) - j
					line = line[:j]
				}
				break
			}
		}
	}
	style := plainStyle
	open := false
	setStyle := func(s sgr) {
		if s == style {
			return
		}
		if open {
			b.WriteString("</span>")
			open = false
		}
		style = s
		if c := s.class(); c != "" {
			b.WriteString(`<span class="`)
			b.WriteString(c)
			b.WriteString(`">`)
			open = true
		}
	}
	for i := 0; i < len(line); {
		c := line[i]
		if c == 0x1b {
			n, isSGR, params := escapeEnd(line[i:])
			if isSGR {
				s := style
				s.apply(params)
				setStyle(s)
			}
			i += n
			continue
		}
		if c < utf8.RuneSelf {
			i++
			switch {
			case c == '<':
				b.WriteString("&lt;")
			case c == '>':
				b.WriteString("&gt;")
			case c == '&':
				b.WriteString("&amp;")
			case c == '"':
				b.WriteString("&#34;")
			case c == '\'':
				b.WriteString("&#39;")
			case c == '\t':
				b.WriteByte('\t')
			case c < 0x20:
				b.WriteString(`<b class="c">`)
				b.WriteRune(0x2400 + rune(c))
				b.WriteString(`</b>`)
			case c == 0x7f:
				b.WriteString(`<b class="c">␡</b>`)
			default:
				b.WriteByte(c)
			}
			continue
		}
		r, size := utf8.DecodeRune(line[i:])
		if r == utf8.RuneError && size <= 1 {
			b.WriteString(`<b class="c">` + "\ufffd" + `</b>`)
		} else if r >= 0x80 && r < 0xa0 {
			fmt.Fprintf(b, `<b class="c">\x%02x</b>`, r)
		} else {
			b.Write(line[i : i+size])
		}
		i += size
	}
	setStyle(plainStyle)
	if more > 0 {
		fmt.Fprintf(b, `<em class="cut"> [%d more bytes on this line: <a href="%s">whole log</a>]</em>`, more, raw)
	}
}
