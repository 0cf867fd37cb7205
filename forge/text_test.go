package forge

import "testing"

func TestOneLineAndCut(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"two\nlines\r\n  and\tspace", 40, "two lines and space"},
		{"ééééééééééé", 5, "éééé…"}, // characters, not bytes
	} {
		if got := OneLine(tc.in, tc.n); got != tc.want {
			t.Errorf("OneLine(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
	if got := Cut("a\nb\nc", 10); got != "a\nb\nc" {
		t.Errorf("Cut keeps lines: %q", got)
	}
	if got := Cut("abcdéf", 4); got != "abc…" {
		t.Errorf("Cut: %q", got)
	}
}
