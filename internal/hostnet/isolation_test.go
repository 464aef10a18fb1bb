package hostnet

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tandem-ci/tandem/internal/egress"
)

// These tests stand in for VMs with network namespaces: a VM's "TAP" is a
// veth whose host end has the TAP's name and is a port of the bridge like
// any TAP, and whose far end, in the VM's namespace, is configured as
// tandem-guest configures a VM's NIC. (The same promises are checked with
// real VMs in internal/jobvm's isolation suite.)

// testVM is a namespace standing in for a VM.
type testVM struct {
	id  string
	ns  netns.NsHandle
	att Attachment
	nic string // the NIC's name inside ns
}

// attachVM attaches a stand-in VM with policy pol.
func attachVM(t *testing.T, n *Network, id string, pol egress.Policy) *testVM {
	t.Helper()
	ns := newNetns(t)
	peer := "tdg-" + vmKey(id)
	n.makePort = func(name string, mac net.HardwareAddr, br netlink.Link) (bool, error) {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: mac}, PeerName: peer}
		if err := netlink.LinkAdd(v); err != nil {
			return false, err
		}
		l, err := netlink.LinkByName(name)
		if err != nil {
			return true, err
		}
		return true, joinBridge(l, br)
	}
	t.Cleanup(func() { n.makePort = ensureTAP })
	ctx := context.Background()
	att, err := n.Attach(ctx, id, pol)
	if err != nil {
		t.Fatalf("attach %s: %v", id, err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(att.TAP); err == nil {
			netlink.LinkDel(l)
		}
		if err := n.Detach(ctx, id); err != nil {
			t.Errorf("detach %s: %v", id, err)
		}
	})
	p, err := netlink.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(p, int(ns)); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	p = mustLink(t, h, peer)
	if err := h.LinkSetHardwareAddr(p, att.MAC); err != nil {
		t.Fatal(err)
	}
	a, _ := netlink.ParseAddr(att.Addr.String())
	if err := h.AddrAdd(p, a); err != nil {
		t.Fatal(err)
	}
	for _, l := range []netlink.Link{p, mustLink(t, h, "lo")} {
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: p.Attrs().Index, Gw: att.Gateway.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	return &testVM{id: id, ns: ns, att: att, nic: peer}
}

// peerNS is a namespace behind a veth from the host: a host on the LAN,
// or on the internet. It can route back to the VM subnet only if
// routeSubnet is valid.
type peerNS struct {
	ns   netns.NsHandle
	addr netip.Addr // its address; the host's end is hostAddr
	host netip.Addr
}

func addPeer(t *testing.T, name string, hostEnd, peerEnd netip.Prefix, routeSubnet netip.Prefix) *peerNS {
	t.Helper()
	ns := newNetns(t)
	here := addVethInto(t, name+"0", name+"1", ns, peerEnd, nil, netip.Addr{})
	a, _ := netlink.ParseAddr(hostEnd.String())
	if err := netlink.AddrAdd(here, a); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(here); err != nil {
		t.Fatal(err)
	}
	if routeSubnet.IsValid() {
		h, err := netlink.NewHandleAt(ns)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		dst := &net.IPNet{IP: routeSubnet.Addr().AsSlice(), Mask: net.CIDRMask(routeSubnet.Bits(), 32)}
		if err := h.RouteAdd(&netlink.Route{LinkIndex: mustLink(t, h, name+"1").Attrs().Index, Dst: dst, Gw: hostEnd.Addr().AsSlice()}); err != nil {
			t.Fatal(err)
		}
	}
	return &peerNS{ns: ns, addr: peerEnd.Addr(), host: hostEnd.Addr()}
}

// received is what a UDP server got: each datagram's payload.
type received struct {
	mu  sync.Mutex
	got map[string]bool
}

func (r *received) has(payload string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got[payload]
}

// listenIn starts, in ns (or here if ns is -1), a TCP server answering with
// the client's address and a UDP server echoing it likewise, on addr. It
// returns what the UDP server receives.
func listenIn(t *testing.T, ns netns.NsHandle, addr string) *received {
	t.Helper()
	rec := &received{got: map[string]bool{}}
	var ln net.Listener
	var pc net.PacketConn
	listen := func() error {
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", addr)
		return err
	}
	var err error
	if ns == -1 {
		err = listen()
	} else {
		err = inNetns(ns, listen)
	}
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go serve(ln)
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			rec.mu.Lock()
			rec.got[string(buf[:n])] = true
			rec.mu.Unlock()
			pc.WriteTo([]byte(from.(*net.UDPAddr).AddrPort().Addr().Unmap().String()+"\n"), from)
		}
	}()
	return rec
}

// udpFrom sends a datagram from ns to addr and returns the answer.
func udpFrom(ns netns.NsHandle, addr string, timeout time.Duration) (string, error) {
	var answer string
	err := inNetns(ns, func() error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 64)
		for range 3 { // the first datagram may be lost to neighbour resolution
			c.SetDeadline(time.Now().Add(timeout / 3))
			c.Write([]byte("hi"))
			if n, err := c.Read(buf); err == nil {
				answer = strings.TrimSpace(string(buf[:n]))
				return nil
			}
		}
		return fmt.Errorf("no answer")
	})
	return answer, err
}

// reach dials addr from ns over TCP, retrying for up to 10 s (a new bridge
// port may take a moment), and returns the address the server saw.
func reach(t *testing.T, ns netns.NsHandle, addr string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		saw, err := dialFrom(ns, addr, 2*time.Second)
		if err == nil {
			return saw
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// blocked fails t if ns reaches addr over TCP (or, with udp, over UDP).
func blocked(t *testing.T, ns netns.NsHandle, what, addr string, udp bool) {
	t.Helper()
	if saw, err := dialFrom(ns, addr, time.Second); err == nil {
		t.Errorf("%s: TCP to %s REACHED (the server saw %s)", what, addr, saw)
	}
	if udp {
		if saw, err := udpFrom(ns, addr, time.Second); err == nil {
			t.Errorf("%s: UDP to %s REACHED (the server saw %s)", what, addr, saw)
		}
	}
}

// isolationRig is a host network with two stand-in VMs, an "internet"
// peer (a TEST-NET address, reached through NAT), a LAN peer (a private
// address that routes the VM subnet back to the host), a LAN address of
// the host itself on a dummy link and a metadata address.
type isolationRig struct {
	n        *Network
	a, b     *testVM
	internet *peerNS
	lan      *peerNS
	inet80   *received // what the internet's UDP port 80 received
}

const (
	mirrorPort = 5000
	lanAddr    = "10.66.0.5" // the host's own LAN address
	metadata   = "169.254.169.254"
)

func newIsolationRig(t *testing.T, mod func(*Config)) *isolationRig {
	t.Helper()
	n := ensured(t, func(c *Config) {
		c.HostPorts = []HostPort{{"tcp", mirrorPort}, {"udp", 53}, {"tcp", 53}}
		if mod != nil {
			mod(c)
		}
	})
	r := &isolationRig{n: n}
	r.internet = addPeer(t, "tdmi", mustPrefix("198.51.100.1/24"), mustPrefix("198.51.100.2/24"), netip.Prefix{})
	r.lan = addPeer(t, "tdml", mustPrefix("10.77.0.1/24"), mustPrefix("10.77.0.2/24"), n.Subnet())
	// The host's LAN address and a metadata address, on the host's end of
	// the LAN link (this kernel may lack dummy links).
	hostLAN, err := netlink.LinkByName("tdml0")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{lanAddr + "/24", metadata + "/32"} {
		addr, _ := netlink.ParseAddr(a)
		if err := netlink.AddrAdd(hostLAN, addr); err != nil {
			t.Fatal(err)
		}
	}
	// Ensure again: the host's addresses changed.
	if err := n.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	gw := n.Gateway().String()
	for _, a := range []string{
		fmt.Sprintf("%s:%d", gw, mirrorPort), gw + ":53", gw + ":18080", lanAddr + ":18080", metadata + ":80",
	} {
		listenIn(t, -1, a)
	}
	r.inet80 = listenIn(t, r.internet.ns, "198.51.100.2:80")
	for _, a := range []string{"198.51.100.2:81", "198.51.100.2:53", "198.51.100.2:853"} {
		listenIn(t, r.internet.ns, a)
	}
	for _, a := range []string{"10.77.0.2:8080", "10.77.0.2:8081"} {
		listenIn(t, r.lan.ns, a)
	}
	r.a = attachVM(t, n, "vm-00000000a1", openPolicy)
	r.b = attachVM(t, n, "vm-00000000b2", openPolicy)
	listenIn(t, r.b.ns, netip.AddrPortFrom(r.b.att.Addr.Addr(), 8000).String())
	return r
}

// TestIsolation is the isolation conformance suite on stand-in VMs: what a
// VM may reach, and everything it may not.
func TestIsolation(t *testing.T) {
	r := newIsolationRig(t, func(c *Config) {
		c.Allow = []egress.Net{{Prefix: mustPrefix("10.77.0.2/32"), Port: 8080}}
	})
	gw := r.n.Gateway().String()
	a, b := r.a, r.b

	// Allowed: the mirror port and the DNS forwarder on the gateway, the
	// internet through NAT, an operator's hole.
	if saw := reach(t, a.ns, fmt.Sprintf("%s:%d", gw, mirrorPort)); saw != a.att.Addr.Addr().String() {
		t.Errorf("the mirror saw %s, want the VM's own address", saw)
	}
	if saw, err := udpFrom(a.ns, gw+":53", 2*time.Second); err != nil || saw != a.att.Addr.Addr().String() {
		t.Errorf("DNS forwarder over UDP: %q, %v", saw, err)
	}
	reach(t, a.ns, gw+":53")
	if saw := reach(t, a.ns, "198.51.100.2:80"); saw != "198.51.100.1" {
		t.Errorf("the internet saw %s, want the host's 198.51.100.1 (NAT)", saw)
	}
	reach(t, a.ns, "10.77.0.2:8080")

	// Blocked.
	blocked(t, a.ns, "a host port that is not the mirror", gw+":18080", true)
	blocked(t, a.ns, "the host's LAN address", lanAddr+":18080", true)
	blocked(t, a.ns, "the metadata address", metadata+":80", true)
	blocked(t, a.ns, "a LAN peer, outside the hole", "10.77.0.2:8081", true)
	blocked(t, a.ns, "a resolver other than the host's", "198.51.100.2:53", true)
	blocked(t, a.ns, "DNS over TLS", "198.51.100.2:853", false)
	bAddr := netip.AddrPortFrom(b.att.Addr.Addr(), 8000).String()
	reach(t, b.ns, bAddr) // B's server works
	blocked(t, a.ns, "another VM", bAddr, true)
	t.Run("vm to vm at layer 2", func(t *testing.T) {
		// Where br_netfilter passes bridged frames through the inet
		// forward hook, table inet's rules stop VM-to-VM traffic too;
		// without it (as on many hosts), the bridge port isolation alone
		// must.
		const p = "/proc/sys/net/bridge/bridge-nf-call-iptables"
		if old, err := os.ReadFile(p); err == nil {
			os.WriteFile(p, []byte("0\n"), 0o644)
			t.Cleanup(func() { os.WriteFile(p, old, 0o644) })
		}
		blocked(t, a.ns, "another VM, bridged", bAddr, true)
		for _, vm := range []*testVM{a, b} {
			l, _ := netlink.LinkByName(vm.att.TAP)
			if pi, err := netlink.LinkGetProtinfo(l); err != nil || !pi.Isolated {
				t.Errorf("%s: bridge port isolation off (%v)", vm.att.TAP, err)
			}
		}
	})

	t.Run("lan to vm", func(t *testing.T) {
		blocked(t, r.lan.ns, "the LAN, unsolicited, to a VM", bAddr, true)
	})
	t.Run("ipv6 to the host", func(t *testing.T) {
		var ll netip.Addr
		br, _ := r.n.bridge()
		deadline := time.Now().Add(5 * time.Second)
		for !ll.IsValid() && time.Now().Before(deadline) {
			addrs, _ := netlink.AddrList(br, netlink.FAMILY_V6)
			for _, x := range addrs {
				if p, ok := prefixOf(x.IPNet); ok && p.Addr().IsLinkLocalUnicast() && x.Flags&unix.IFA_F_TENTATIVE == 0 {
					ll = p.Addr()
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !ll.IsValid() {
			t.Skip("the bridge has no IPv6 link-local address (IPv6 off here)")
		}
		listenIn(t, -1, "[::]:18082")
		blocked(t, a.ns, "the host over IPv6 link-local", "["+ll.WithZone(a.nic).String()+"]:18082", false)
	})
	t.Run("forged source", func(t *testing.T) {
		// From an unleased address of the subnet, from another VM's
		// address (which has an egress chain of its own), and from outside
		// the subnet: nothing arrives.
		for i, forged := range []netip.Addr{netip.MustParseAddr("172.30.0.200"), b.att.Addr.Addr(), netip.MustParseAddr("10.66.0.99")} {
			h, _ := netlink.NewHandleAt(a.ns)
			nic := mustLink(t, h, a.nic)
			fa, _ := netlink.ParseAddr(forged.String() + "/32")
			if err := h.AddrAdd(nic, fa); err != nil {
				t.Fatal(err)
			}
			payload := fmt.Sprintf("forged-%d", i)
			sendUDPFrom(t, a.ns, forged, "198.51.100.2:80", payload)
			if saw, err := dialFromAddr(a.ns, forged, "198.51.100.2:80", time.Second); err == nil {
				t.Errorf("a VM sending from %s reached the internet over TCP, which saw %s", forged, saw)
			}
			if r.inet80.has(payload) {
				t.Errorf("a VM's UDP datagram from %s arrived on the internet", forged)
			}
			h.AddrDel(nic, fa)
			h.Close()
		}
		// Its own address still works.
		reach(t, a.ns, "198.51.100.2:80")
		sendUDPFrom(t, a.ns, a.att.Addr.Addr(), "198.51.100.2:80", "own-address")
		if !r.inet80.has("own-address") {
			t.Error("a datagram from the VM's own address did not arrive")
		}
	})
	t.Run("arp spoofing", func(t *testing.T) {
		// A claims the gateway's address (to B, whose port it cannot
		// reach), and B's address to the host, by asking for the gateway
		// from B's address: the host would learn it from that request.
		// Neither sticks: the host's entry for B stays B's, and the mirror
		// still gets B's connections from B.
		br, _ := r.n.bridge()
		netlink.NeighDel(&netlink.Neigh{LinkIndex: br.Attrs().Index, IP: b.att.Addr.Addr().AsSlice()})
		for range 3 {
			if err := sendARP(a.ns, a.nic, a.att.MAC, r.n.Gateway(), netip.Addr{}); err != nil {
				t.Fatal(err)
			}
			if err := sendARP(a.ns, a.nic, a.att.MAC, b.att.Addr.Addr(), r.n.Gateway()); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(200 * time.Millisecond)
		checkNeigh := func(when string) {
			neighs, _ := netlink.NeighList(br.Attrs().Index, netlink.FAMILY_V4)
			for _, nb := range neighs {
				if nb.IP.Equal(b.att.Addr.Addr().AsSlice()) && nb.HardwareAddr != nil && nb.HardwareAddr.String() != b.att.MAC.String() {
					t.Errorf("%s, the host's neighbour entry for B's %s is %s, not B's %s", when, b.att.Addr.Addr(), nb.HardwareAddr, b.att.MAC)
				}
			}
		}
		checkNeigh("after A's spoofing")
		if saw := reach(t, b.ns, fmt.Sprintf("%s:%d", gw, mirrorPort)); saw != b.att.Addr.Addr().String() {
			t.Errorf("after A's ARP spoofing, the mirror saw %s from B", saw)
		}
		checkNeigh("after B's connection")
	})
	t.Run("mac spoofing", func(t *testing.T) {
		h, _ := netlink.NewHandleAt(a.ns)
		defer h.Close()
		nic := mustLink(t, h, a.nic)
		h.LinkSetHardwareAddr(nic, net.HardwareAddr{0x02, 0xde, 0xad, 0xbe, 0xef, 0x01})
		blocked(t, a.ns, "a VM with another MAC", "198.51.100.2:80", false)
		h.LinkSetHardwareAddr(nic, a.att.MAC)
		reach(t, a.ns, "198.51.100.2:80")
	})
}

// dialFromAddr is dialFrom with the socket bound to src.
func dialFromAddr(ns netns.NsHandle, src netip.Addr, addr string, timeout time.Duration) (string, error) {
	var answer string
	err := inNetns(ns, func() error {
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		answer = strings.TrimSpace(string(buf[:n]))
		return err
	})
	return answer, err
}

// sendUDPFrom sends one datagram from ns, from src, to addr.
func sendUDPFrom(t *testing.T, ns netns.NsHandle, src netip.Addr, addr, payload string) {
	t.Helper()
	err := inNetns(ns, func() error {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: src.AsSlice()}, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		if err != nil {
			return err
		}
		defer c.Close()
		for range 3 { // the first may be lost to neighbour resolution
			c.Write([]byte(payload))
			time.Sleep(150 * time.Millisecond)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send from %s: %v", src, err)
	}
}

// sendARP broadcasts, from nic in ns, an ARP packet saying that claim is
// at mac: a gratuitous reply, or with target valid a request for target.
func sendARP(ns netns.NsHandle, nic string, mac net.HardwareAddr, claim, target netip.Addr) error {
	return inNetns(ns, func() error {
		l, err := netlink.LinkByName(nic)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ARP)))
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		f := make([]byte, 0, 42)
		f = append(f, bcast...)
		f = append(f, mac...)
		f = binary.BigEndian.AppendUint16(f, unix.ETH_P_ARP)
		f = binary.BigEndian.AppendUint16(f, 1)      // Ethernet
		f = binary.BigEndian.AppendUint16(f, 0x0800) // IPv4
		f = append(f, 6, 4)
		op, tha, tpa := uint16(2), bcast, claim.As4() // gratuitous reply
		if target.IsValid() {
			op, tha, tpa = 1, make(net.HardwareAddr, 6), target.As4() // request
		}
		f = binary.BigEndian.AppendUint16(f, op)
		ip := claim.As4()
		f = append(f, mac...)
		f = append(f, ip[:]...)
		f = append(f, tha...)
		f = append(f, tpa[:]...)
		sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: l.Attrs().Index, Halen: 6}
		copy(sa.Addr[:], bcast)
		return unix.Sendto(fd, f, 0, sa)
	})
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// TestEgressPolicies checks audit and allowlist on stand-in VMs, and what
// they record.
func TestEgressPolicies(t *testing.T) {
	r := newIsolationRig(t, nil)
	ctx := context.Background()
	audit := attachVM(t, r.n, "vm-00000000c3", egress.Policy{Mode: egress.Audit})
	allow := attachVM(t, r.n, "vm-00000000d4", egress.Policy{Mode: egress.Allowlist,
		Nets: []egress.Net{{Prefix: mustPrefix("198.51.100.2/32"), Port: 81}}})

	reach(t, audit.ns, "198.51.100.2:80")
	reach(t, audit.ns, "198.51.100.2:81")
	if saw, err := udpFrom(audit.ns, "198.51.100.2:80", 2*time.Second); err != nil {
		t.Errorf("audit, UDP: %q %v", saw, err)
	}
	blocked(t, audit.ns, "audit mode, still isolated", "10.77.0.2:8080", false)

	reach(t, allow.ns, "198.51.100.2:81")
	blocked(t, allow.ns, "an address the allowlist lacks", "198.51.100.2:80", true)
	// Its DNS name resolved to that address: pinned, it opens; the pin
	// times out.
	if err := r.n.Pin(ctx, allow.id, []netip.Addr{netip.MustParseAddr("198.51.100.2")}, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	reach(t, allow.ns, "198.51.100.2:80")
	time.Sleep(4 * time.Second)
	blocked(t, allow.ns, "a pin past its TTL", "198.51.100.2:80", false)

	flows, err := r.n.Flows(ctx, audit.id)
	if err != nil {
		t.Fatal(err)
	}
	want := []egress.Flow{
		{Addr: netip.MustParseAddr("198.51.100.2"), Proto: "tcp", Port: 80, Allowed: true, Count: 1},
		{Addr: netip.MustParseAddr("198.51.100.2"), Proto: "tcp", Port: 81, Allowed: true, Count: 1},
		{Addr: netip.MustParseAddr("198.51.100.2"), Proto: "udp", Port: 80, Allowed: true, Count: 1},
	}
	if fmt.Sprint(flows) != fmt.Sprint(want) {
		t.Errorf("audit flows:\n got %v\nwant %v", flows, want)
	}
	flows, err = r.n.Flows(ctx, allow.id)
	if err != nil {
		t.Fatal(err)
	}
	var allowed, refused []string
	for _, f := range flows {
		s := fmt.Sprintf("%s/%d", f.Proto, f.Port)
		if f.Allowed {
			allowed = append(allowed, s)
		} else {
			refused = append(refused, s)
		}
	}
	if fmt.Sprint(allowed) != "[tcp/80 tcp/81]" || !strings.Contains(fmt.Sprint(refused), "tcp/80") || !strings.Contains(fmt.Sprint(refused), "udp/80") {
		t.Errorf("allowlist flows: allowed %v, blocked %v", allowed, refused)
	}
	if flows, err := r.n.Flows(ctx, r.a.id); err != nil || len(flows) != 0 {
		t.Errorf("an open VM's flows: %v, %v", flows, err)
	}
}

// TestHostFirewall puts a forward chain that drops by default beside
// Tandem's, as Docker's or ufw's would be.
func TestHostFirewall(t *testing.T) {
	requireNetns(t)
	ctx := context.Background()
	foreign := "table ip filter {\n\tchain FORWARD {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n}\n"
	if err := runNft(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { runNft(ctx, "delete table ip filter\n") })

	refuse := newNet(t, func(c *Config) { c.HostFirewall = FirewallRefuse })
	t.Cleanup(func() { removeAll(t, refuse) })
	if err := refuse.Ensure(ctx); err == nil || !strings.Contains(err.Error(), "ip filter FORWARD") {
		t.Fatalf("Ensure with a dropping forward chain, refusing: %v", err)
	}

	r := newIsolationRig(t, nil) // FirewallAdd
	reach(t, r.a.ns, "198.51.100.2:80")
	blocked(t, r.a.ns, "the LAN, through the foreign accept", "10.77.0.2:8081", false)
	out, _ := exec.Command("nft", "list", "chain", "ip", "filter", "FORWARD").CombinedOutput()
	if strings.Count(string(out), r.n.firewallComment()) != 2 {
		t.Errorf("the foreign chain:\n%s", out)
	}
	if err := r.n.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	out, _ = exec.Command("nft", "list", "chain", "ip", "filter", "FORWARD").CombinedOutput()
	if strings.Count(string(out), r.n.firewallComment()) != 2 {
		t.Errorf("Ensure again added rules twice:\n%s", out)
	}
	if err := r.n.RemoveRules(ctx); err != nil {
		t.Fatal(err)
	}
	out, _ = exec.Command("nft", "list", "chain", "ip", "filter", "FORWARD").CombinedOutput()
	if strings.Contains(string(out), "tandem") || !strings.Contains(string(out), "policy drop") {
		t.Errorf("RemoveRules left:\n%s", out)
	}
	if err := r.n.Ensure(ctx); err != nil { // for the rig's cleanup
		t.Fatal(err)
	}
}

// TestNetworksOnTwoBridges: two networks on one machine (two hosts, or a
// host and a test) each carry their own VMs: neither's layer-2 rules,
// which the kernel runs for every bridge, drop the other's frames.
func TestNetworksOnTwoBridges(t *testing.T) {
	r := newIsolationRig(t, nil)
	other := ensured(t, func(c *Config) {
		c.Bridge = "tandem1"
		c.Subnet = mustPrefix("172.30.1.0/24")
		c.HostPorts = []HostPort{{"tcp", 53}}
	})
	c := attachVM(t, other, "vm-00000000c3", openPolicy)
	listenIn(t, -1, fmt.Sprintf("%s:53", other.Gateway()))
	for _, vm := range []*testVM{r.a, c} {
		if saw := reach(t, vm.ns, "198.51.100.2:80"); saw != "198.51.100.1" {
			t.Errorf("%s: the internet saw %s, want the host's 198.51.100.1 (NAT)", vm.id, saw)
		}
	}
	if saw := reach(t, c.ns, fmt.Sprintf("%s:%d", other.Gateway(), 53)); saw != c.att.Addr.Addr().String() {
		t.Errorf("%s: its DNS port on its own gateway saw %s", c.id, saw)
	}
}
