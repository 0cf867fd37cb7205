package sshd

import (
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// sniffer passes a client's input through to git, counting bytes and
// reading the first pkt-lines of a fetch for the log: the ref prefixes a
// protocol v2 client asks for, and how many objects it wants. It reads
// at most sniffLimit bytes and stops at the first thing that is not a
// pkt-line (a pack).
type sniffer struct {
	r io.Reader
	n atomic.Int64

	mu       sync.Mutex
	buf      []byte
	seen     int
	done     bool
	prefixes []string
	wants    int
}

const sniffLimit = 64 << 10

func (s *sniffer) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.n.Add(int64(n))
		s.feed(p[:n])
	}
	return n, err
}

func (s *sniffer) feed(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return
	}
	s.seen += len(b)
	s.buf = append(s.buf, b...)
	for len(s.buf) >= 4 {
		l, err := strconv.ParseUint(string(s.buf[:4]), 16, 16)
		if err != nil {
			s.done, s.buf = true, nil
			return
		}
		if l < 4 { // flush, delimiter, response end
			s.buf = s.buf[4:]
			continue
		}
		if len(s.buf) < int(l) {
			break
		}
		line := strings.TrimSuffix(string(s.buf[4:l]), "\n")
		s.buf = s.buf[l:]
		switch {
		case strings.HasPrefix(line, "ref-prefix "):
			if len(s.prefixes) < 20 {
				s.prefixes = append(s.prefixes, strings.TrimPrefix(line, "ref-prefix "))
			}
		case strings.HasPrefix(line, "want "):
			s.wants++
		}
	}
	if s.seen > sniffLimit {
		s.done, s.buf = true, nil
	}
}

// summary returns the ref prefixes asked for and the number of wants.
func (s *sniffer) summary() ([]string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.prefixes...), s.wants
}
