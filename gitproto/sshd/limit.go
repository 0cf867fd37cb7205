package sshd

// Connection limits. A TCP connection is "unauthenticated" from accept
// until a key's signature was verified, and "authenticated" after.
//
//   - An unauthenticated connection must finish its handshake within
//     HandshakeTimeout; its deadlines cannot be pushed past that.
//   - At most MaxUnauthPerAddr unauthenticated connections per source
//     address, and MaxUnauth in all. A new connection beyond either
//     limit closes the oldest unauthenticated one (of that address, or of
//     all), never the new one: a flood of idle connections held open
//     costs its sender its own oldest connections, and a real client,
//     even from the same address, still gets its turn.
//   - At most MaxConns authenticated connections; a connection that
//     authenticates beyond that is told the server is busy.

import (
	"log/slog"
	"net"
	"sync"
	"time"
)

// limiter counts connections. Safe for concurrent use.
type limiter struct {
	log       *slog.Logger
	handshake time.Duration
	perAddr   int
	maxUnauth int
	maxAuth   int

	mu     sync.Mutex
	unauth []*limitConn // oldest first
	byAddr map[string]int
	nAuth  int
}

const (
	connNew = iota
	connAuth
	connOver // authenticated beyond MaxConns: is told so and closed
	connClosed
)

// limitConn is a connection the limiter counts. Its deadlines are kept
// within the handshake deadline until it authenticates.
type limitConn struct {
	net.Conn
	lim  *limiter
	host string
	by   time.Time // the handshake deadline

	mu    sync.Mutex
	state int

	refused    int // keys refused on this connection
	refusedLog bool
}

// limitListener hands out counted connections.
type limitListener struct {
	net.Listener
	lim *limiter
}

func (l *limitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.lim.admit(c), nil
}

func hostOf(addr net.Addr) string {
	if a, ok := addr.(*net.TCPAddr); ok {
		return a.IP.String()
	}
	h, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	return h
}

// admit counts a new connection, closing the oldest unauthenticated
// ones it pushes over a limit.
func (l *limiter) admit(c net.Conn) *limitConn {
	lc := &limitConn{Conn: c, lim: l, host: hostOf(c.RemoteAddr()), by: time.Now().Add(l.handshake)}
	c.SetDeadline(lc.by)
	var evict []*limitConn
	l.mu.Lock()
	if l.byAddr[lc.host] >= l.perAddr {
		for _, o := range l.unauth {
			if o.host == lc.host {
				evict = append(evict, o)
				l.dropLocked(o)
				break
			}
		}
	}
	if len(l.unauth) >= l.maxUnauth {
		o := l.unauth[0]
		evict = append(evict, o)
		l.dropLocked(o)
	}
	l.unauth = append(l.unauth, lc)
	l.byAddr[lc.host]++
	l.mu.Unlock()
	for _, o := range evict {
		o.mu.Lock()
		waiting := o.state == connNew // not if it authenticated meanwhile
		if waiting {
			o.state = connClosed
		}
		o.mu.Unlock()
		if waiting {
			l.log.Warn("too many connections waiting to log in; closed the oldest", "addr", o.RemoteAddr().String(), "per_address", l.perAddr, "max", l.maxUnauth)
			o.Conn.Close()
		}
	}
	return lc
}

// dropLocked removes an unauthenticated connection from the counts.
func (l *limiter) dropLocked(c *limitConn) {
	for i, o := range l.unauth {
		if o == c {
			l.unauth = append(l.unauth[:i], l.unauth[i+1:]...)
			if l.byAddr[c.host]--; l.byAddr[c.host] <= 0 {
				delete(l.byAddr, c.host)
			}
			return
		}
	}
}

// authenticated moves the connection to the authenticated ones, lifting
// the handshake deadline; it reports false when there are MaxConns
// already (the connection keeps its deadline and must be turned away).
func (c *limitConn) authenticated() bool {
	l := c.lim
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case connAuth:
		return true
	case connOver, connClosed:
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dropLocked(c)
	if l.nAuth >= l.maxAuth {
		c.state = connOver
		return false
	}
	l.nAuth++
	c.state = connAuth
	c.Conn.SetDeadline(time.Time{})
	return true
}

// over reports whether the connection authenticated beyond MaxConns.
func (c *limitConn) over() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == connOver
}

func (c *limitConn) Close() error {
	c.mu.Lock()
	state := c.state
	c.state = connClosed
	c.mu.Unlock()
	c.lim.mu.Lock()
	switch state {
	case connNew, connOver:
		c.lim.dropLocked(c)
	case connAuth:
		c.lim.nAuth--
	}
	c.lim.mu.Unlock()
	return c.Conn.Close()
}

// clamp keeps a deadline within the handshake deadline until the
// connection authenticated.
func (c *limitConn) clamp(t time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == connAuth {
		return t
	}
	if t.IsZero() || t.After(c.by) {
		return c.by
	}
	return t
}

func (c *limitConn) SetDeadline(t time.Time) error      { return c.Conn.SetDeadline(c.clamp(t)) }
func (c *limitConn) SetReadDeadline(t time.Time) error  { return c.Conn.SetReadDeadline(c.clamp(t)) }
func (c *limitConn) SetWriteDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(c.clamp(t)) }

// refusedKey reports whether a refused key should be logged: the first
// one a connection offers is; the rest are counted (a client may offer
// every key of its agent).
func (c *limitConn) refusedKey() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refused++
	if c.refusedLog {
		return false
	}
	c.refusedLog = true
	return true
}

// refusedCount is how many keys the connection offered in vain.
func (c *limitConn) refusedCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.refused
}
