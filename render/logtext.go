package render

import (
	"bytes"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Logs are stored byte for byte (PROTOCOL.md section 3): they may hold
// ANSI escapes, NUL and other control bytes, invalid UTF-8 and lines of
// any length. Everything here turns such bytes into text that is safe for
// its reader: HTML with the SGR colours kept as classes, or plain text for
// Markdown and mail.

// sgr is the text style an ANSI SGR sequence selects. Only the 16 basic
// colours are kept; 256-colour and true-colour selections are read (so
// their numbers are not misread as other attributes) and dropped.
type sgr struct {
	fg, bg                    int8 // -1: default; 0..15
	bold, dim, italic, underl bool
}

var plainStyle = sgr{fg: -1, bg: -1}

func (s sgr) class() string {
	var b []byte
	add := func(c string) {
		if len(b) > 0 {
			b = append(b, ' ')
		}
		b = append(b, c...)
	}
	if s.fg >= 0 {
		add("f" + strconv.Itoa(int(s.fg)))
	}
	if s.bg >= 0 {
		add("g" + strconv.Itoa(int(s.bg)))
	}
	if s.bold {
		add("b")
	}
	if s.dim {
		add("d")
	}
	if s.italic {
		add("i")
	}
	if s.underl {
		add("u")
	}
	return string(b)
}

// apply updates s with the parameters of one SGR sequence ("1;31").
func (s *sgr) apply(params []byte) {
	if len(params) == 0 {
		*s = plainStyle
		return
	}
	var ps []int
	for _, p := range bytes.Split(params, []byte{';'}) {
		n, err := strconv.Atoi(string(p))
		if err != nil || n > 255 {
			n = -1 // an empty or odd parameter: ignored (an empty one means 0 in SGR, but only alone)
			if len(p) == 0 {
				n = 0
			}
		}
		ps = append(ps, n)
	}
	for i := 0; i < len(ps); i++ {
		switch n := ps[i]; {
		case n == 0:
			*s = plainStyle
		case n == 1:
			s.bold = true
		case n == 2:
			s.dim = true
		case n == 3:
			s.italic = true
		case n == 4:
			s.underl = true
		case n == 22:
			s.bold, s.dim = false, false
		case n == 23:
			s.italic = false
		case n == 24:
			s.underl = false
		case n >= 30 && n <= 37:
			s.fg = int8(n - 30)
		case n == 39:
			s.fg = -1
		case n >= 40 && n <= 47:
			s.bg = int8(n - 40)
		case n == 49:
			s.bg = -1
		case n >= 90 && n <= 97:
			s.fg = int8(n - 90 + 8)
		case n >= 100 && n <= 107:
			s.bg = int8(n - 100 + 8)
		case n == 38 || n == 48:
			// 38;5;N or 38;2;R;G;B: skip the colour's parameters.
			if i+1 < len(ps) && ps[i+1] == 5 {
				i += 2
			} else if i+1 < len(ps) && ps[i+1] == 2 {
				i += 4
			}
		}
	}
}

// escapeEnd returns the length of the escape sequence at the start of b
// (b[0] == ESC), whether it is an SGR sequence, and its parameters. An
// unterminated sequence runs to the end of b.
func escapeEnd(b []byte) (n int, isSGR bool, params []byte) {
	if len(b) < 2 {
		return len(b), false, nil
	}
	switch b[1] {
	case '[': // CSI: parameters 0x30-0x3f, intermediates 0x20-0x2f, final 0x40-0x7e
		i := 2
		for i < len(b) && b[i] >= 0x30 && b[i] <= 0x3f {
			i++
		}
		p := b[2:i]
		for i < len(b) && b[i] >= 0x20 && b[i] <= 0x2f {
			i++
		}
		if i < len(b) && b[i] >= 0x40 && b[i] <= 0x7e {
			return i + 1, b[i] == 'm' && i == 2+len(p), p
		}
		return i, false, nil
	case ']', 'P', '_', '^', 'X': // OSC, DCS, APC, PM, SOS: until BEL or ESC \
		for i := 2; i < len(b); i++ {
			if b[i] == 0x07 {
				return i + 1, false, nil
			}
			if b[i] == 0x1b && i+1 < len(b) && b[i+1] == '\\' {
				return i + 2, false, nil
			}
		}
		return len(b), false, nil
	}
	if b[1] >= 0x20 && b[1] <= 0x2f && len(b) > 2 { // ESC ( B and friends
		return 3, false, nil
	}
	return 2, false, nil
}

// overwrite applies a terminal's carriage return to one line: what a
// terminal shows is the text after the last CR (progress bars redraw the
// line). A CR at the very end (CRLF files) is dropped.
func overwrite(line []byte) []byte {
	line = bytes.TrimSuffix(line, []byte{'\r'})
	if i := bytes.LastIndexByte(line, '\r'); i >= 0 {
		return line[i+1:]
	}
	return line
}

// PlainLine makes one log line (without its newline) safe plain text:
// escape sequences removed, carriage returns applied, invalid UTF-8
// replaced by U+FFFD, and other control characters shown as their
// Unicode control pictures (NUL as ␀). Tabs are kept.
func PlainLine(line []byte) string {
	line = overwrite(line)
	var b bytes.Buffer
	b.Grow(len(line))
	for i := 0; i < len(line); {
		c := line[i]
		if c == 0x1b {
			n, _, _ := escapeEnd(line[i:])
			i += n
			continue
		}
		r, size := utf8.DecodeRune(line[i:])
		i += size
		switch {
		case r == utf8.RuneError && size <= 1:
			b.WriteRune(utf8.RuneError)
		case r == '\t':
			b.WriteByte('\t')
		case r < 0x20:
			b.WriteRune(0x2400 + r)
		case r == 0x7f:
			b.WriteRune(0x2421)
		case r >= 0x80 && r < 0xa0:
			fmt.Fprintf(&b, "\\x%02x", r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// tailLines returns the last n lines of log (a final newline does not
// start another line), and how many lines come before them.
func tailLines(log []byte, n int) ([][]byte, int) {
	log = bytes.TrimSuffix(log, []byte{'\n'})
	if len(log) == 0 || n <= 0 {
		return nil, 0
	}
	pos := len(log)
	for k := 0; k < n; k++ {
		i := bytes.LastIndexByte(log[:pos], '\n')
		if i < 0 {
			pos = -1
			break
		}
		pos = i
	}
	start := pos + 1
	return bytes.Split(log[start:], []byte{'\n'}), bytes.Count(log[:start], []byte{'\n'})
}
