package hostnet

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// bridgeMAC gives the bridge a fixed MAC, so that it does not change as
// ports come and go (a bridge without one takes its lowest port's MAC).
func bridgeMAC(name string) net.HardwareAddr {
	h := sha256.Sum256([]byte("tandem bridge " + name))
	return net.HardwareAddr{0x06, h[0], h[1], h[2], h[3], h[4]}
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// bridge returns the bridge, which Ensure made.
func (n *Network) bridge() (netlink.Link, error) {
	l, err := netlink.LinkByName(n.cfg.Bridge)
	if isNotFound(err) {
		return nil, fmt.Errorf("%w: %s", ErrNoBridge, n.cfg.Bridge)
	}
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", n.cfg.Bridge, err)
	}
	if l.Type() != "bridge" {
		return nil, fmt.Errorf("bridge %s: is a %s, not a bridge", n.cfg.Bridge, l.Type())
	}
	return l, nil
}

// ensureBridge creates the bridge if missing, gives it the gateway address
// and sets it up.
func (n *Network) ensureBridge() (netlink.Link, error) {
	name := n.cfg.Bridge
	br, err := n.bridge()
	if errors.Is(err, ErrNoBridge) {
		add := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: bridgeMAC(name)}}
		if aerr := netlink.LinkAdd(add); aerr != nil && !errors.Is(aerr, unix.EEXIST) {
			return nil, fmt.Errorf("create bridge %s: %w", name, aerr)
		}
		br, err = n.bridge() // another process may have won the race: fine
	}
	if err != nil {
		return nil, err
	}
	want := netip.PrefixFrom(n.gateway, n.cfg.Subnet.Bits())
	addrs, err := netlink.AddrList(br, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("bridge %s: list addresses: %w", name, err)
	}
	have := false
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if !ok || p.Addr() != n.gateway {
			continue
		}
		if p.Bits() == want.Bits() {
			have = true
			continue
		}
		// The gateway with another prefix length: a leftover of an older
		// config. Replace it, or the subnet route would be wrong.
		if err := netlink.AddrDel(br, &a); err != nil {
			return nil, fmt.Errorf("bridge %s: remove stale %s: %w", name, p, err)
		}
	}
	if !have {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: n.gateway.AsSlice(), Mask: net.CIDRMask(want.Bits(), 32)}}
		if err := netlink.AddrReplace(br, addr); err != nil {
			return nil, fmt.Errorf("bridge %s: add %s: %w", name, want, err)
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("bridge %s: set up: %w", name, err)
	}
	// Strict reverse-path filtering: a packet arriving on the bridge with a
	// source not routed back through it is dropped (the bridge table pins
	// each VM's source too).
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+name+"/rp_filter", []byte("1\n"), 0o644); err != nil {
		return nil, fmt.Errorf("bridge %s: rp_filter: %w", name, err)
	}
	return br, nil
}

// checkSubnetFree fails if a link other than the bridge has an address
// inside the VM subnet (or one whose network contains it): VMs would then
// be unreachable, or worse, shadow a real network.
func (n *Network) checkSubnetFree(brIndex int) error {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if brIndex != 0 && a.LinkIndex == brIndex {
			continue
		}
		p, ok := prefixOf(a.IPNet)
		if !ok || !p.Masked().Overlaps(n.cfg.Subnet) {
			continue
		}
		dev := fmt.Sprintf("index %d", a.LinkIndex)
		if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
		return fmt.Errorf("subnet %s overlaps %s on %s: choose another subnet", n.cfg.Subnet, p, dev)
	}
	return nil
}

func prefixOf(ipn *net.IPNet) (netip.Prefix, bool) {
	if ipn == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(ipn.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := ipn.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), true
}

// ensureTAP creates the persistent TAP name (unless it exists already as a
// TAP), sets its MAC, enslaves it to br and sets it up. created reports
// whether this call made it.
func ensureTAP(name string, mac net.HardwareAddr, br netlink.Link) (created bool, err error) {
	l, err := netlink.LinkByName(name)
	switch {
	case isNotFound(err):
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			// Persistent (NonPersist false), one queue, no packet info:
			// what QEMU asks for when it opens the TAP by name.
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_ONE_QUEUE | netlink.TUNTAP_TUN_EXCL,
		}
		aerr := netlink.LinkAdd(tap)
		created = aerr == nil
		if l, err = netlink.LinkByName(name); err != nil {
			if aerr != nil { // not made, and not made by another either
				return false, fmt.Errorf("create: %w", aerr)
			}
			return created, fmt.Errorf("look up: %w", err)
		}
		// aerr != nil but the link exists: another caller made it meanwhile.
	case err != nil:
		return false, fmt.Errorf("look up: %w", err)
	}
	if l.Type() != "tuntap" {
		return false, fmt.Errorf("exists and is a %s, not a tap", l.Type())
	}
	if tt, ok := l.(*netlink.Tuntap); ok && tt.Mode != 0 && tt.Mode != netlink.TUNTAP_MODE_TAP {
		return created, fmt.Errorf("exists and is a tun, not a tap")
	}
	if l.Attrs().HardwareAddr.String() != mac.String() {
		if err := netlink.LinkSetHardwareAddr(l, mac); err != nil {
			return created, fmt.Errorf("set mac: %w", err)
		}
	}
	return created, joinBridge(l, br)
}

// joinBridge enslaves l to br as an isolated port and sets it up.
func joinBridge(l, br netlink.Link) error {
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("enslave to %s: %w", br.Attrs().Name, err)
		}
	}
	// An isolated port forwards only to the bridge's non-isolated ports
	// (the host): no VM reaches another at layer 2. Set before the port
	// comes up.
	if err := netlink.LinkSetIsolated(l, true); err != nil {
		return fmt.Errorf("isolate port: %w", err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	return nil
}

// deleteTAP deletes the TAP name; a missing one is fine, a link of that
// name that is not a TAP is left alone and reported.
func deleteTAP(name string) error {
	l, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up: %w", err)
	}
	if l.Type() != "tuntap" {
		return fmt.Errorf("is a %s, not a tap: left alone", l.Type())
	}
	if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete: %w", err)
	}
	return nil
}

// tandemTAPs lists the TAPs named with TAPPrefix that are enslaved to the
// bridge named bridge or to nothing (a TAP leaked before it was enslaved);
// TAPs on other bridges belong to another Tandem network.
func tandemTAPs(bridge string) ([]string, error) {
	brIndex := -1
	if br, err := netlink.LinkByName(bridge); err == nil {
		brIndex = br.Attrs().Index
	}
	var links []netlink.Link
	var err error
	for range 5 {
		links, err = netlink.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []string
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "tuntap" || !strings.HasPrefix(a.Name, TAPPrefix) {
			continue
		}
		if a.MasterIndex != 0 && a.MasterIndex != brIndex {
			continue
		}
		out = append(out, a.Name)
	}
	return out, nil
}

// enableIPForward turns on IPv4 forwarding in this network namespace. It is
// left on: other things on the host (containers) may rely on it too.
func enableIPForward() error {
	const p = "/proc/sys/net/ipv4/ip_forward"
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("ip forwarding: %w", err)
	}
	if strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("ip forwarding: enable: %w", err)
	}
	return nil
}

// hostAddrs returns every IPv4 address of this host (this network
// namespace), which no VM may reach by routing.
func hostAddrs() ([]netip.Addr, error) {
	var addrs []netlink.Addr
	var err error
	for range 5 {
		if addrs, err = netlink.AddrList(nil, netlink.FAMILY_V4); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("list host addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok && p.Addr().Is4() {
			out = append(out, p.Addr())
		}
	}
	return out, nil
}
