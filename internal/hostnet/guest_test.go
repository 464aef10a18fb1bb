package hostnet

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/tandem-ci/tandem/internal/testenv"
)

// newNetns makes an anonymous network namespace, alive while its handle is
// open (closed on cleanup; its links go with it).
func newNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	var h netns.NsHandle
	err := testenv.InNetns(-1, func() error {
		var err error
		h, err = netns.New() // also moves this thread into it; InNetns moves it back
		return err
	})
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// inNetns runs fn on a thread inside ns. Sockets fn opens stay in ns.
func inNetns(ns netns.NsHandle, fn func() error) error { return testenv.InNetns(ns, fn) }

// addVethInto makes a veth pair here and moves its peer into ns, where it
// gets addr (and mac, if set), is set up and, with gw valid, routes
// everything through gw. It returns the end that stays here.
func addVethInto(t *testing.T, name, peer string, ns netns.NsHandle, addr netip.Prefix, mac net.HardwareAddr, gw netip.Addr) netlink.Link {
	t.Helper()
	here := addVeth(t, name, peer)
	p, err := netlink.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(p, int(ns)); err != nil {
		t.Fatalf("move %s: %v", peer, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if p, err = h.LinkByName(peer); err != nil {
		t.Fatal(err)
	}
	if mac != nil {
		if err := h.LinkSetHardwareAddr(p, mac); err != nil {
			t.Fatal(err)
		}
	}
	a, err := netlink.ParseAddr(addr.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(p, a); err != nil {
		t.Fatalf("address %s: %v", addr, err)
	}
	for _, l := range []netlink.Link{p, mustLink(t, h, "lo")} {
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	if gw.IsValid() {
		if err := h.RouteAdd(&netlink.Route{LinkIndex: p.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			t.Fatalf("default route via %s: %v", gw, err)
		}
	}
	return here
}

func mustLink(t *testing.T, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// serve answers every connection on ln with the address it came from.
func serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap())
		c.Close()
	}
}

// dialFrom connects from ns to addr and returns what the server answered:
// the source address it saw.
func dialFrom(ns netns.NsHandle, addr string, timeout time.Duration) (string, error) {
	var answer string
	err := inNetns(ns, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr) // the socket is made here, in ns
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		answer, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	return strings.TrimSpace(answer), err
}
