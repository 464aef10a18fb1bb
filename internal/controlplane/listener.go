package controlplane

import (
	"net"
	"sync"
)

// LimitListener accepts at most n connections at a time; the rest wait in
// the kernel's accept queue. The webhook listener uses it: GitHub may
// deliver a burst of thousands of webhooks, each on its own connection,
// and thousands of sockets becoming ready at once delay every other
// socket of the process in Go's network poller, agents' streams included
// (BenchmarkFleet500: assignment p99 37-124 ms unbounded, 17-31 ms at 32).
// Ingest stays far faster than GitHub's 10 s delivery timeout.
func LimitListener(l net.Listener, n int) net.Listener {
	return &limitListener{Listener: l, slots: make(chan struct{}, n), closed: make(chan struct{})}
}

type limitListener struct {
	net.Listener
	slots     chan struct{}
	closeOnce sync.Once
	closed    chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
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
	return &limitConn{Conn: c, release: sync.OnceFunc(func() { <-l.slots })}, nil
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
