package worker

import (
	"fmt"
	"io"
)

// Snapshot writes what the log holds so far, in the form Finish would
// give it (head, marker, tail), without finishing it. Callers serialise it
// with Write, as for every other method.
func (l *CappedLog) Snapshot(w io.Writer) error {
	if l.closed {
		return errLogFinished
	}
	if l.head == nil {
		_, err := w.Write(l.mem)
		return err
	}
	headLen := min(l.total, l.headCap)
	if _, err := io.Copy(w, io.NewSectionReader(l.head, 0, headLen)); err != nil {
		return err
	}
	if l.total <= l.headCap || l.ring == nil {
		return nil
	}
	inRing := l.total - l.headCap
	if inRing <= l.tailCap {
		_, err := io.Copy(w, io.NewSectionReader(l.ring, 0, inRing))
		return err
	}
	fmt.Fprintf(w, "\n[refci: %d bytes omitted so far; the log is capped at %d bytes, head and tail kept]\n", inRing-l.tailCap, l.capBytes)
	start := inRing % l.tailCap
	if _, err := io.Copy(w, io.NewSectionReader(l.ring, start, l.tailCap-start)); err != nil {
		return err
	}
	_, err := io.Copy(w, io.NewSectionReader(l.ring, 0, start))
	return err
}
