package testenv

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"

	"github.com/tandem-ci/tandem/internal/netnsutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// The test's stand-in for the internet: addresses of TEST-NET-2 (RFC
// 5737), which no VM isolation rule denies.
var (
	// InternetAddr is the internet's address: servers that VMs must reach
	// as they reach GitHub (ghfake, file servers) listen there.
	InternetAddr = netip.MustParseAddr("198.51.100.2")
	// InternetAddr2 is a second address of the internet: a server no
	// name points to, or that an allowlist does not name.
	InternetAddr2 = netip.MustParseAddr("198.51.100.3")
	// InternetGateway is this side of the link: the internet routes back
	// through it.
	InternetGateway = netip.MustParseAddr("198.51.100.1")
)

var (
	internetOnce sync.Once
	internetNS   netns.NsHandle
	internetErr  error
)

// Internet returns the test's internet: a network namespace behind a veth
// from the test's private namespace, at InternetAddr. The host reaches it
// directly; VMs reach it only through their host's NAT, as they reach
// GitHub; hosts of a test fleet (namespaces routed through this one) reach
// it too. It is made once per test binary and goes with the test's
// namespace.
func Internet(t testing.TB) *InternetNS {
	t.Helper()
	RequireRoot(t)
	if NetnsName() == "" {
		t.Fatal("testenv.Internet needs the private network namespace of RunInNetns")
	}
	internetOnce.Do(func() { internetNS, internetErr = makeInternet() })
	if internetErr != nil {
		t.Fatalf("the test's internet: %v", internetErr)
	}
	return &InternetNS{ns: internetNS}
}

// InternetNS is the test's internet.
type InternetNS struct{ ns netns.NsHandle }

// Listen opens a TCP listener on InternetAddr (port 0: any), inside the
// internet. It is closed when the test ends.
func (i *InternetNS) Listen(t testing.TB, port int) net.Listener {
	t.Helper()
	return listenIn(t, i.ns, netip.AddrPortFrom(InternetAddr, uint16(port)))
}

// ListenOn opens a TCP listener on addr (InternetAddr or InternetAddr2),
// inside the internet. It is closed when the test ends.
func (i *InternetNS) ListenOn(t testing.TB, addr netip.AddrPort) net.Listener {
	t.Helper()
	return listenIn(t, i.ns, addr)
}

// ListenPacket opens a UDP socket on addr inside the internet. It is
// closed when the test ends.
func (i *InternetNS) ListenPacket(t testing.TB, addr netip.AddrPort) net.PacketConn {
	t.Helper()
	return listenPacketIn(t, i.ns, addr)
}

func listenIn(t testing.TB, ns netns.NsHandle, addr netip.AddrPort) net.Listener {
	t.Helper()
	var ln net.Listener
	err := InNetns(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func listenPacketIn(t testing.TB, ns netns.NsHandle, addr netip.AddrPort) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	err := InNetns(ns, func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr.String())
		return err
	})
	if err != nil {
		t.Fatalf("listen on udp %s: %v", addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// Peer is a network namespace behind a veth from the test's namespace: a
// machine on the host's LAN. It routes only to its own link.
type Peer struct {
	ns   netns.NsHandle
	Addr netip.Addr // the peer's address
}

// NewPeer makes a peer namespace linked to the test's by the veth
// name+"0" (here, hostEnd) and name+"1" (there, peerEnd). It is removed
// when the test ends.
func NewPeer(t testing.TB, name string, hostEnd, peerEnd netip.Prefix) *Peer {
	t.Helper()
	RequireRoot(t)
	if NetnsName() == "" {
		t.Fatal("testenv.NewPeer needs the private network namespace of RunInNetns")
	}
	var ns netns.NsHandle
	err := InNetns(-1, func() error {
		var err error
		ns, err = netns.New()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name + "0"}, PeerName: name + "1"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("veth: %v", err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(name + "0"); err == nil {
			netlink.LinkDel(l)
		}
	})
	here, err := netlink.LinkByName(name + "0")
	if err != nil {
		t.Fatal(err)
	}
	peer, err := netlink.LinkByName(name + "1")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(peer, int(ns)); err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(here, &netlink.Addr{IPNet: prefixNet(hostEnd)}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(here); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, n := range []string{name + "1", "lo"} {
		l, err := h.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if n != "lo" {
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: prefixNet(peerEnd)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	return &Peer{ns: ns, Addr: peerEnd.Addr()}
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Listen opens a TCP listener on the peer's address. It is closed when
// the test ends.
func (p *Peer) Listen(t testing.TB, port int) net.Listener {
	t.Helper()
	return listenIn(t, p.ns, netip.AddrPortFrom(p.Addr, uint16(port)))
}

// Do runs fn inside the peer's namespace.
func (p *Peer) Do(fn func() error) error { return InNetns(p.ns, fn) }

func makeInternet() (netns.NsHandle, error) {
	var ns netns.NsHandle
	err := InNetns(-1, func() error {
		var err error
		ns, err = netns.New() // this thread is in it now; InNetns returns it
		return err
	})
	if err != nil {
		return -1, err
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tdminet0"}, PeerName: "tdminet1"}
	if err := netlink.LinkAdd(veth); err != nil {
		return -1, fmt.Errorf("veth: %w", err)
	}
	here, err := netlink.LinkByName("tdminet0")
	if err != nil {
		return -1, err
	}
	peer, err := netlink.LinkByName("tdminet1")
	if err != nil {
		return -1, err
	}
	if err := netlink.LinkSetNsFd(peer, int(ns)); err != nil {
		return -1, err
	}
	a, _ := netlink.ParseAddr(InternetGateway.String() + "/24")
	if err := netlink.AddrAdd(here, a); err != nil {
		return -1, err
	}
	if err := netlink.LinkSetUp(here); err != nil {
		return -1, err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return -1, err
	}
	defer h.Close()
	for _, name := range []string{"tdminet1", "lo"} {
		l, err := h.LinkByName(name)
		if err != nil {
			return -1, err
		}
		if name != "lo" {
			for _, addr := range []netip.Addr{InternetAddr, InternetAddr2} {
				a, _ := netlink.ParseAddr(addr.String() + "/24")
				if err := h.AddrAdd(l, a); err != nil {
					return -1, err
				}
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return -1, err
		}
		if name != "lo" {
			if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: InternetGateway.AsSlice()}); err != nil {
				return -1, fmt.Errorf("default route: %w", err)
			}
		}
	}
	// The test's namespace routes between its fleet hosts and the internet.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		return -1, err
	}
	return ns, nil
}

// InNetns runs fn on a locked OS thread in ns (netnsutil.InNetns).
func InNetns(ns netns.NsHandle, fn func() error) error { return netnsutil.InNetns(ns, fn) }
