package controlplane

import (
	"net"
	"net/netip"
	"sync"
)

// LimitListener accepts at most n connections at a time, and at most
// perSource from one source address (0: no such cap); the rest wait in the
// kernel's accept queue, or, past a source's cap, are closed at once. Both
// listeners use it. GitHub may deliver a burst of thousands of webhooks,
// each on its own connection, and thousands of sockets becoming ready at
// once delay every other socket of the process in Go's network poller,
// agents' streams included (BenchmarkFleet500: assignment p99 37-124 ms
// unbounded, 17-31 ms at 32). The per-source cap keeps one address from
// holding every slot with connections it never finishes (slow or
// half-sent requests, each held until the server's read deadline), so
// GitHub's deliveries and /healthz still get through.
func LimitListener(l net.Listener, n, perSource int) net.Listener {
	return &limitListener{Listener: l, slots: make(chan struct{}, n), perSource: perSource,
		bySource: map[netip.Addr]int{}, closed: make(chan struct{})}
}

type limitListener struct {
	net.Listener
	slots     chan struct{}
	perSource int
	closeOnce sync.Once
	closed    chan struct{}

	mu       sync.Mutex
	bySource map[netip.Addr]int // open connections per source; guarded by mu
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		select {
		case l.slots <- struct{}{}:
		case <-l.closed:
			return nil, net.ErrClosed
		}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.slots
			return nil, err
		}
		src := sourceOf(c)
		l.mu.Lock()
		over := l.perSource > 0 && l.bySource[src] >= l.perSource
		if !over {
			l.bySource[src]++
		}
		l.mu.Unlock()
		if over {
			c.Close()
			<-l.slots
			continue
		}
		return &limitConn{Conn: c, release: sync.OnceFunc(func() {
			l.mu.Lock()
			if l.bySource[src]--; l.bySource[src] <= 0 {
				delete(l.bySource, src)
			}
			l.mu.Unlock()
			<-l.slots
		})}, nil
	}
}

func sourceOf(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

type limitConn struct {
	net.Conn
	release func()
}

func (c *limitConn) Close() error {
	c.release()
	return c.Conn.Close()
}
