package render

import (
	"io"
	"unicode/utf8"
)

// TermLog passes a pipeline's log to a terminal. A log is the pipeline's
// own bytes, and a terminal obeys what it is sent: escape sequences can
// move the cursor over refci's own lines, set the window title, write
// the clipboard (OSC 52), make hyperlinks (OSC 8), or send the terminal
// device control strings. TermLog keeps only what a log needs to look
// right: text, newlines, tabs, carriage returns (progress bars redraw
// their line) and, when color is on, SGR colour sequences (ESC [ ... m).
// Every other escape sequence, C0 and C1 control character is dropped,
// and invalid UTF-8 becomes U+FFFD. A sequence or character cut by the
// end of one Write is held until the next (a followed log arrives in
// pieces); Flush ends the stream.
//
// Output that is not a terminal (a pipe, a file) gets the log byte for
// byte instead: callers use TermLog only for a terminal.
type TermLog struct {
	w      io.Writer
	color  bool
	styled bool // an SGR sequence went through since the last Flush
	held   []byte
	out    []byte
}

// maxHeld bounds what TermLog holds back for a sequence that has not
// ended; a longer one is dropped as far as it goes.
const maxHeld = 4096

// NewTermLog returns a TermLog writing to w.
func NewTermLog(w io.Writer, color bool) *TermLog { return &TermLog{w: w, color: color} }

// Write filters p to the terminal. It reports len(p) written unless the
// terminal's writer fails.
func (t *TermLog) Write(p []byte) (int, error) {
	buf := p
	if len(t.held) > 0 {
		buf = append(t.held, p...)
		t.held = nil
	}
	out := t.out[:0]
	for i := 0; i < len(buf); {
		c := buf[i]
		switch {
		case c == 0x1b:
			rest := buf[i:]
			if !escapeComplete(rest) {
				if len(rest) <= maxHeld {
					t.held = append([]byte(nil), rest...)
				}
				i = len(buf)
				continue
			}
			n, isSGR, _ := escapeEnd(rest)
			if isSGR && t.color {
				out = append(out, rest[:n]...)
				t.styled = true
			}
			i += n
		case c == '\n' || c == '\t' || c == '\r':
			out = append(out, c)
			i++
		case c < 0x20 || c == 0x7f:
			i++
		case c < 0x80:
			out = append(out, c)
			i++
		default:
			if !utf8.FullRune(buf[i:]) {
				t.held = append([]byte(nil), buf[i:]...)
				i = len(buf)
				continue
			}
			r, size := utf8.DecodeRune(buf[i:])
			switch {
			case r == utf8.RuneError && size == 1:
				out = utf8.AppendRune(out, utf8.RuneError)
			case r >= 0x80 && r < 0xa0: // C1 controls: CSI, OSC, DCS in 8 bits
			default:
				out = append(out, buf[i:i+size]...)
			}
			i += size
		}
	}
	t.out = out
	if len(out) > 0 {
		if _, err := t.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush ends the stream: a sequence that never ended is dropped, a
// character cut short becomes U+FFFD, and the terminal's colours are
// reset if the log set any, so that a log ending in, say, hidden or
// black-on-black text cannot hide what is printed after it. The TermLog
// may be written again after.
func (t *TermLog) Flush() error {
	var out []byte
	if held := t.held; len(held) > 0 && held[0] != 0x1b {
		out = utf8.AppendRune(out, utf8.RuneError)
	}
	t.held = nil
	if t.styled {
		out = append(out, "\x1b[0m"...)
		t.styled = false
	}
	if len(out) == 0 {
		return nil
	}
	_, err := t.w.Write(out)
	return err
}

// escapeComplete reports whether b (b[0] == ESC) holds a whole escape
// sequence, as escapeEnd reads them.
func escapeComplete(b []byte) bool {
	if len(b) < 2 {
		return false
	}
	switch b[1] {
	case '[':
		i := 2
		for i < len(b) && b[i] >= 0x20 && b[i] <= 0x3f {
			i++
		}
		return i < len(b)
	case ']', 'P', '_', '^', 'X':
		for i := 2; i < len(b); i++ {
			if b[i] == 0x07 || b[i] == 0x1b && i+1 < len(b) && b[i+1] == '\\' {
				return true
			}
		}
		return false
	}
	if b[1] >= 0x20 && b[1] <= 0x2f {
		return len(b) > 2
	}
	return true
}
