package worker

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// defaultLogCap is the cap NewCappedLog uses for capBytes <= 0.
const defaultLogCap = 16 << 20

// memLogBytes is how much of a log is held in memory before it goes to a
// file.
const memLogBytes = 64 << 10

// CappedLog is an io.Writer that stores a pipeline log with a size cap,
// keeping the first half and the last half of the cap and a marker between
// them.
//
// Memory use is constant whatever is written: the first memLogBytes are
// held in memory (most logs are short, and a file per log is a file made
// and removed per run); past that the head goes to a temporary file, the
// tail to a fixed-size ring file written with WriteAt; nothing of the
// cap's size is held in memory.
//
// Bytes are stored verbatim: invalid UTF-8, NUL bytes, ANSI escapes and
// CRs are kept exactly as written. The cut points are byte offsets, so
// they may split a UTF-8 sequence (or an escape sequence or a line); that
// is accepted.
//
// A CappedLog is not safe for concurrent use: callers serialise Write,
// Total, Finish and Close.
type CappedLog struct {
	dir      string
	capBytes int64
	headCap  int64 // capBytes/2
	tailCap  int64 // capBytes - headCap, >= 1

	mem  []byte   // the log while it is short: no file yet
	head *os.File // the first headCap bytes; becomes the finished log
	ring *os.File // created when the head is full; byte at stream offset o >= headCap lives at (o-headCap) % tailCap

	total    int64
	err      error // sticky write error
	finished bool
	closed   bool
}

// NewCappedLog creates a capped log whose temporary files go to dir ("" is
// os.TempDir()). capBytes <= 0 means the default of 16 MiB.
func NewCappedLog(dir string, capBytes int64) (*CappedLog, error) {
	if capBytes <= 0 {
		capBytes = defaultLogCap
	}
	headCap := capBytes / 2
	return &CappedLog{
		dir:      dir,
		capBytes: capBytes,
		headCap:  headCap,
		tailCap:  capBytes - headCap,
	}, nil
}

// spill moves the log held in memory to its head file.
func (l *CappedLog) spill() error {
	if l.head != nil {
		return nil
	}
	head, err := os.CreateTemp(l.dir, "refci-log-*")
	if err != nil {
		return fmt.Errorf("worker: create log file: %w", err)
	}
	if _, err := head.Write(l.mem); err != nil {
		head.Close()
		os.Remove(head.Name())
		return fmt.Errorf("worker: write log: %w", err)
	}
	l.head, l.mem = head, nil
	return nil
}

var errLogFinished = errors.New("worker: log already finished or closed")

// Write stores p. It always accepts all of p unless a file operation
// fails; after a failure every further Write fails too.
func (l *CappedLog) Write(p []byte) (int, error) {
	if l.finished || l.closed {
		return 0, errLogFinished
	}
	if l.err != nil {
		return 0, l.err
	}
	n := len(p)
	if l.head == nil && l.total+int64(len(p)) > min(l.headCap, memLogBytes) {
		if err := l.spill(); err != nil {
			l.err = err
			return 0, err
		}
	}
	if l.head == nil {
		l.mem = append(l.mem, p...)
		l.total += int64(len(p))
		return n, nil
	}
	if l.total < l.headCap {
		k := min(int64(len(p)), l.headCap-l.total)
		w, err := l.head.Write(p[:k])
		l.total += int64(w)
		if err != nil {
			l.err = fmt.Errorf("worker: write log: %w", err)
			return w, l.err
		}
		p = p[k:]
	}
	if len(p) == 0 {
		return n, nil
	}
	if l.ring == nil {
		ring, err := os.CreateTemp(l.dir, "refci-logtail-*")
		if err != nil {
			l.err = fmt.Errorf("worker: create log tail file: %w", err)
			return n - len(p), l.err
		}
		l.ring = ring
	}
	// Only the last tailCap bytes of p can survive.
	if skip := int64(len(p)) - l.tailCap; skip > 0 {
		l.total += skip
		p = p[skip:]
	}
	off := (l.total - l.headCap) % l.tailCap
	first := min(int64(len(p)), l.tailCap-off)
	if _, err := l.ring.WriteAt(p[:first], off); err != nil {
		l.err = fmt.Errorf("worker: write log tail: %w", err)
		return n - len(p), l.err
	}
	if rest := p[first:]; len(rest) > 0 {
		if _, err := l.ring.WriteAt(rest, 0); err != nil {
			l.err = fmt.Errorf("worker: write log tail: %w", err)
			return n - len(p), l.err
		}
	}
	l.total += int64(len(p))
	return n, nil
}

// Tail returns up to n bytes of the end of what was stored so far (after
// a failed write, up to the failure), and whether anything before them
// is left out. It reads the log's files and writes nothing, so it works
// on a full disk. Call it before Finish.
func (l *CappedLog) Tail(n int) ([]byte, bool) {
	if l.head == nil {
		return lastBytes(l.mem, n)
	}
	headSize := l.headCap
	if fi, err := l.head.Stat(); err == nil {
		headSize = min(fi.Size(), l.headCap)
	}
	if l.ring == nil {
		return readEnd(l.head, headSize, n)
	}
	stored := min(l.total-l.headCap, l.tailCap)
	end := (l.total - l.headCap) % l.tailCap
	if stored < l.tailCap {
		end = stored
	}
	want := min(stored, int64(n))
	buf := make([]byte, want)
	start := (end - want + l.tailCap) % l.tailCap
	if start+want <= l.tailCap {
		l.ring.ReadAt(buf, start)
	} else {
		k := l.tailCap - start
		l.ring.ReadAt(buf[:k], start)
		l.ring.ReadAt(buf[k:], 0)
	}
	if want < int64(n) && l.total <= l.capBytes { // nothing dropped between head and tail
		head, cut := readEnd(l.head, headSize, n-int(want))
		return append(head, buf...), cut
	}
	return buf, l.total > want
}

// Total returns the number of bytes written so far.
func (l *CappedLog) Total() int64 { return l.total }

// FinishedLog is a finished log: in memory (Data) when it stayed short,
// else the file at Path.
type FinishedLog struct {
	Path      string
	Data      []byte
	Size      int64 // of the stored log
	Total     int64 // bytes written
	Truncated bool  // whether anything was dropped
}

// Finish assembles the stored log: the head, then, when bytes were
// dropped, a marker line like
//
//	"\n[refci: 123456789 bytes omitted; the log was capped at 16777216 bytes, head and tail kept]\n"
//
// then the tail in order. A short log is returned in memory, a longer one
// as one file. Call it once; Write fails afterwards. The file belongs to
// the caller: Close does not remove it (it lives in dir, so removing dir
// does).
func (l *CappedLog) Finish() (FinishedLog, error) {
	if l.finished || l.closed {
		return FinishedLog{}, errLogFinished
	}
	l.finished = true
	if l.err != nil {
		return FinishedLog{}, l.err
	}
	fail := func(err error) (FinishedLog, error) {
		l.err = fmt.Errorf("worker: assemble log: %w", err)
		return FinishedLog{}, l.err
	}
	if l.head == nil {
		return FinishedLog{Data: l.mem, Size: int64(len(l.mem)), Total: l.total}, nil
	}
	truncated := l.total > l.capBytes
	if l.ring != nil {
		if !truncated {
			if _, err := io.Copy(l.head, io.NewSectionReader(l.ring, 0, l.total-l.headCap)); err != nil {
				return fail(err)
			}
		} else {
			omitted := l.total - l.capBytes
			marker := fmt.Sprintf("\n[refci: %d bytes omitted; the log was capped at %d bytes, head and tail kept]\n", omitted, l.capBytes)
			if _, err := io.WriteString(l.head, marker); err != nil {
				return fail(err)
			}
			// The tail starts at stream offset total-tailCap.
			pos := omitted % l.tailCap
			if _, err := io.Copy(l.head, io.NewSectionReader(l.ring, pos, l.tailCap-pos)); err != nil {
				return fail(err)
			}
			if _, err := io.Copy(l.head, io.NewSectionReader(l.ring, 0, pos)); err != nil {
				return fail(err)
			}
		}
	}
	fi, err := l.head.Stat()
	if err != nil {
		return fail(err)
	}
	if err := l.head.Close(); err != nil {
		return fail(err)
	}
	return FinishedLog{Path: l.head.Name(), Size: fi.Size(), Total: l.total, Truncated: truncated}, nil
}

// Close removes the temporary files. It is safe after Finish (the
// finished file is kept, see Finish) and safe to call more than once.
func (l *CappedLog) Close() error {
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	if l.ring != nil {
		l.ring.Close()
		if err := os.Remove(l.ring.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if l.head != nil && (!l.finished || l.err != nil) {
		l.head.Close() // may already be closed
		if err := os.Remove(l.head.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
