package sshd

// Connection limits. A TCP connection is "unauthenticated" from accept
// until a key's signature was verified, and "authenticated" after.
//
//   - An unauthenticated connection must finish its handshake within
//     HandshakeTimeout; its deadlines cannot be pushed past that.
//   - At most MaxUnauthPerAddr unauthenticated connections per source
//     address, and MaxUnauth in all. A new connection beyond either
//     limit closes the unauthenticated connection (of that address, or of
//     all) that has been idle longest, if it has been idle (nothing read
//     or written) for EvictIdle at least; otherwise the new connection is
//     turned away. A flood of idle connections held open costs its sender
//     its own connections, and a real client, even from the same address,
//     gets its turn; clients that are busy logging in, however many come
//     at once, are never cut off by each other.
//   - At most MaxConns authenticated connections; a connection that
//     authenticates beyond that is told the server is busy.

import (
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// limiter counts connections. Safe for concurrent use.
type limiter struct {
	log       *slog.Logger
	handshake time.Duration
	perAddr   int
	maxUnauth int
	maxAuth   int
	idle      time.Duration // EvictIdle

	mu     sync.Mutex
	warned time.Time    // when a turned-away connection was last logged
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
	by   time.Time    // the handshake deadline
	seen atomic.Int64 // when a byte was last read or written, in Unix nanoseconds

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
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if lc := l.lim.admit(c); lc != nil {
			return lc, nil
		}
	}
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

// admit counts a new connection, closing the idlest unauthenticated one
// it pushes over a limit; nil means the new one was turned away (and
// closed) instead, every other waiting one being busy.
func (l *limiter) admit(c net.Conn) *limitConn {
	now := time.Now()
	lc := &limitConn{Conn: c, lim: l, host: hostOf(c.RemoteAddr()), by: now.Add(l.handshake)}
	lc.seen.Store(now.UnixNano())
	c.SetDeadline(lc.by)
	var evict []*limitConn
	turnAway := false
	l.mu.Lock()
	if l.byAddr[lc.host] >= l.perAddr {
		if o := l.idlestLocked(lc.host, now); o != nil {
			evict = append(evict, o)
			l.dropLocked(o)
		} else {
			turnAway = true
		}
	}
	if !turnAway && len(l.unauth) >= l.maxUnauth {
		if o := l.idlestLocked("", now); o != nil {
			evict = append(evict, o)
			l.dropLocked(o)
		} else {
			turnAway = true
		}
	}
	warn := false
	if turnAway {
		if now.Sub(l.warned) >= time.Minute {
			l.warned, warn = now, true
		}
	} else {
		l.unauth = append(l.unauth, lc)
		l.byAddr[lc.host]++
	}
	l.mu.Unlock()
	for _, o := range evict {
		o.mu.Lock()
		waiting := o.state == connNew // not if it authenticated meanwhile
		if waiting {
			o.state = connClosed
		}
		o.mu.Unlock()
		if waiting {
			l.log.Warn("too many connections waiting to log in; closed the one idle longest", "addr", o.RemoteAddr().String(), "per_address", l.perAddr, "max", l.maxUnauth)
			o.Conn.Close()
		}
	}
	if turnAway {
		if warn {
			l.log.Warn("too many connections logging in at once; turned new ones away (logged once a minute)", "addr", c.RemoteAddr().String(), "per_address", l.perAddr, "max", l.maxUnauth)
		}
		c.Close()
		return nil
	}
	return lc
}

// idlestLocked returns the unauthenticated connection (of host, or of
// any host when host is "") idle longest, if it has been idle for
// EvictIdle at least.
func (l *limiter) idlestLocked(host string, now time.Time) *limitConn {
	var best *limitConn
	var bestSeen int64
	for _, o := range l.unauth {
		if host != "" && o.host != host {
			continue
		}
		if s := o.seen.Load(); best == nil || s < bestSeen {
			best, bestSeen = o, s
		}
	}
	if best == nil || now.Sub(time.Unix(0, bestSeen)) < l.idle {
		return nil
	}
	return best
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
	if l.nAuth >= l.maxAuth {
		c.state = connOver // still counted as waiting until it is closed
		return false
	}
	l.dropLocked(c)
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

func (c *limitConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.seen.Store(time.Now().UnixNano())
	}
	return n, err
}

func (c *limitConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.seen.Store(time.Now().UnixNano())
	}
	return n, err
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
