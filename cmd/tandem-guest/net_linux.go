//go:build linux

package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// nicWait bounds the wait for the guest's NIC after virtio_net loaded.
const nicWait = 10 * time.Second

// setupNetwork sets the hostname, brings lo up and, when the boot
// parameters carry an address, configures the first Ethernet interface with
// it and a default route via the gateway. /etc/hosts and /etc/resolv.conf
// are written if /etc is writable. An error means the requested network
// could not be set up.
func setupNetwork(con *console, bp guest.BootParams) error {
	hostname := hostnameOf(bp.Hostname)
	if err := unix.Sethostname([]byte(hostname)); err != nil {
		con.logf("net: hostname: %v", err)
	}
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("net: lo up: %w", err)
	}
	writeEtc(con, "/etc/hosts", hostsFile(hostname, bp.Addr.Addr()))
	if len(bp.DNS) > 0 {
		writeEtc(con, "/etc/resolv.conf", resolvConf(bp.DNS))
	}
	if !bp.Addr.IsValid() {
		con.logf("net: %s, lo only", hostname)
		return nil
	}
	start := time.Now()
	link, err := waitForNIC(nicWait)
	if err != nil {
		return err
	}
	name := link.Attrs().Name
	addr := &netlink.Addr{IPNet: ipNet(bp.Addr)}
	if bp.Addr.Addr().Is6() {
		addr.Flags = unix.IFA_F_NODAD // nobody else is on this link
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("net: %s: add %s: %w", name, bp.Addr, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("net: %s: up: %w", name, err)
	}
	gw := "none"
	if bp.Gateway.IsValid() {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IP(bp.Gateway.AsSlice())}
		if !bp.Addr.Masked().Contains(bp.Gateway) {
			r.Flags = int(netlink.FLAG_ONLINK)
		}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("net: default route via %s: %w", bp.Gateway, err)
		}
		gw = bp.Gateway.String()
	}
	con.logf("net: %s %s %s gw %s (%s)", hostname, name, bp.Addr, gw, ms(time.Since(start)))
	return nil
}

// waitForNIC returns the first non-loopback Ethernet link, waiting for the
// virtio_net driver to create it.
func waitForNIC(wait time.Duration) (netlink.Link, error) {
	deadline := time.Now().Add(wait)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("net: list links: %w", err)
		}
		var seen []string
		for _, l := range links {
			a := l.Attrs()
			seen = append(seen, a.Name)
			if a.Flags&net.FlagLoopback == 0 && a.EncapType == "ether" {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("net: no ethernet interface after %s (links: %s; virtio_net loaded?)",
				wait, strings.Join(seen, " "))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// writeEtc replaces an /etc file, tolerating a read-only /etc: the image
// then keeps its own. Replacing by rename also replaces a symlink (e.g. to
// systemd-resolved's file) instead of writing through it.
func writeEtc(con *console, path, content string) {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tandem")
	err := os.WriteFile(tmp, []byte(content), 0o644)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		con.logf("net: %s not written: %v", path, unwrapPathErr(err))
	}
}

// unwrapPathErr drops the path from an *os.PathError or *os.LinkError,
// which the caller prints already.
func unwrapPathErr(err error) error {
	switch e := err.(type) {
	case *os.PathError:
		return e.Err
	case *os.LinkError:
		return e.Err
	}
	return err
}
