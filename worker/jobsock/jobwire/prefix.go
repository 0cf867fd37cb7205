package jobwire

import (
	"bytes"
	"io"
)

// MaxPendingLine is how much of a partial line a LinePrefixer holds back
// at most: a longer line is passed on in pieces, with the prefix only at
// its start, so memory stays bounded.
const MaxPendingLine = 64 << 10

// LinePrefixer writes its input to w with a prefix at the start of every
// line, as a job's output is echoed on the pipeline's stdout (`refci job`)
// or in the run's log (in-shell jobs). Complete lines are written at once,
// one Write of w per input chunk, so that jobs sharing w interleave whole
// lines; a partial line is held back until its newline, Flush, Close, or
// MaxPendingLine bytes. Errors of w are ignored: the job goes on. Not
// safe for concurrent use.
type LinePrefixer struct {
	w       io.Writer
	prefix  []byte
	buf     []byte // the partial line held back, prefix included where it starts a line
	atStart bool   // the next input byte starts a line
}

// NewLinePrefixer returns a LinePrefixer writing to w.
func NewLinePrefixer(w io.Writer, prefix string) *LinePrefixer {
	return &LinePrefixer{w: w, prefix: []byte(prefix), atStart: true}
}

// Write never fails.
func (p *LinePrefixer) Write(b []byte) (int, error) {
	n := len(b)
	out := p.buf
	for len(b) > 0 {
		if p.atStart {
			out = append(out, p.prefix...)
			p.atStart = false
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			out = append(out, b...)
			break
		}
		out = append(out, b[:i+1]...)
		b = b[i+1:]
		p.atStart = true
	}
	j := bytes.LastIndexByte(out, '\n') + 1
	if len(out)-j >= MaxPendingLine {
		j = len(out)
	}
	if j > 0 {
		p.w.Write(out[:j])
	}
	p.buf = append(p.buf[:0:0], out[j:]...)
	return n, nil
}

// Pending reports whether a partial line is held back.
func (p *LinePrefixer) Pending() bool { return len(p.buf) > 0 }

// Flush writes the partial line held back; the rest of the line follows
// without a prefix.
func (p *LinePrefixer) Flush() {
	if len(p.buf) > 0 {
		p.w.Write(p.buf)
		p.buf = nil
	}
}

// Close writes the partial line left, ended with a newline. A second
// Close writes nothing.
func (p *LinePrefixer) Close() {
	p.Flush()
	if !p.atStart {
		p.w.Write([]byte{'\n'})
		p.atStart = true
	}
}
