package worker

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// defaultLogCap is the cap NewCappedLog uses for capBytes <= 0.
const defaultLogCap = 16 << 20

// CappedLog is an io.Writer that stores a pipeline log with a size cap,
// keeping the first half and the last half of the cap and a marker between
// them.
//
// Memory use is constant whatever is written: the head goes to a temporary
// file, the tail to a fixed-size ring file written with WriteAt; nothing of
// the cap's size is held in memory.
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
	head, err := os.CreateTemp(dir, "refci-log-*")
	if err != nil {
		return nil, fmt.Errorf("worker: create log file: %w", err)
	}
	headCap := capBytes / 2
	return &CappedLog{
		dir:      dir,
		capBytes: capBytes,
		headCap:  headCap,
		tailCap:  capBytes - headCap,
		head:     head,
	}, nil
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

// Total returns the number of bytes written so far.
func (l *CappedLog) Total() int64 { return l.total }

// Finish assembles the stored log into one file: the head, then, when
// bytes were dropped, a marker line like
//
//	"\n[refci: 123456789 bytes omitted; the log was capped at 16777216 bytes, head and tail kept]\n"
//
// then the tail in order. It returns the file's path, its size, the total
// number of bytes written and whether anything was dropped. Call it once;
// Write fails afterwards. The file belongs to the caller: Close does not
// remove it (it lives in dir, so removing dir does).
func (l *CappedLog) Finish() (path string, size int64, total int64, truncated bool, err error) {
	if l.finished || l.closed {
		return "", 0, 0, false, errLogFinished
	}
	l.finished = true
	if l.err != nil {
		return "", 0, 0, false, l.err
	}
	fail := func(err error) (string, int64, int64, bool, error) {
		l.err = fmt.Errorf("worker: assemble log: %w", err)
		return "", 0, 0, false, l.err
	}
	truncated = l.total > l.capBytes
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
	return l.head.Name(), fi.Size(), l.total, truncated, nil
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
	if !l.finished || l.err != nil {
		l.head.Close() // may already be closed
		if err := os.Remove(l.head.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
