package jobwire

import (
	"bytes"
	"strings"
	"testing"
)

func TestLinePrefixer(t *testing.T) {
	var out bytes.Buffer
	p := NewLinePrefixer(&out, "[x] ")
	p.Write([]byte("a\nb"))
	if out.String() != "[x] a\n" || !p.Pending() {
		t.Fatalf("after a\\nb: %q", out.String())
	}
	p.Write([]byte("c\n\nd"))
	if out.String() != "[x] a\n[x] bc\n[x] \n" {
		t.Fatalf("%q", out.String())
	}
	p.Flush()
	p.Write([]byte("e\n"))
	p.Write([]byte("f"))
	p.Close()
	if want := "[x] a\n[x] bc\n[x] \n[x] de\n[x] f\n"; out.String() != want {
		t.Fatalf("%q, want %q", out.String(), want)
	}
	p.Close()
	if want := "[x] a\n[x] bc\n[x] \n[x] de\n[x] f\n"; out.String() != want {
		t.Fatalf("second Close wrote: %q", out.String())
	}

	// A huge line without a newline is passed on in bounded pieces, with
	// the prefix only at its start.
	out.Reset()
	p = NewLinePrefixer(&out, "[x] ")
	chunk := bytes.Repeat([]byte("y"), 1000)
	for range 1000 {
		p.Write(chunk)
		if len(p.buf) > MaxPendingLine+len(chunk)+10 {
			t.Fatalf("holding %d bytes", len(p.buf))
		}
	}
	p.Write([]byte("\nz\n"))
	p.Close()
	want := "[x] " + strings.Repeat("y", 1000*1000) + "\n[x] z\n"
	if out.String() != want {
		t.Errorf("huge line: got %d bytes, want %d", out.Len(), len(want))
	}
}
