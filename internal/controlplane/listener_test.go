package controlplane_test

import (
	"net"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/controlplane"
)

func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := controlplane.LimitListener(inner, 2, 0)
	accepted := make(chan net.Conn, 3)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	first, second := <-accepted, <-accepted
	select {
	case <-accepted:
		t.Fatal("a third connection was accepted while two were open")
	case <-time.After(200 * time.Millisecond):
	}
	first.Close()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("closing a connection did not free a slot")
	}
	second.Close()
	l.Close()
	if _, ok := <-accepted; ok {
		t.Error("Accept went on after Close")
	}
}

// TestLimitListenerPerSource: one address past its cap is turned away at
// once; another still gets in.
func TestLimitListenerPerSource(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := controlplane.LimitListener(inner, 10, 3)
	defer l.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func(src string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for range 5 {
		dial("127.0.0.2")
	}
	var mine []net.Conn
	for range 3 {
		mine = append(mine, <-accepted)
	}
	select {
	case <-accepted:
		t.Fatal("a fourth connection from one source was accepted")
	case <-time.After(200 * time.Millisecond):
	}
	dial("127.0.0.3")
	select {
	case c := <-accepted:
		if got := c.RemoteAddr().(*net.TCPAddr).IP.String(); got != "127.0.0.3" {
			t.Errorf("accepted %s", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("another source was not accepted")
	}
	// The source's own connections past the cap were closed, not queued:
	// closing one of its open ones admits a new one of it.
	mine[0].Close()
	dial("127.0.0.2")
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("a freed slot of the source was not given to its next connection")
	}
}
