package main

import (
	"net"
	"net/netip"
	"strings"
)

const defaultHostname = "tandem"

// hostnameOf is the hostname to set from the boot parameters.
func hostnameOf(name string) string {
	if name == "" {
		return defaultHostname
	}
	return name
}

// hostsFile renders /etc/hosts: localhost, and the hostname on the guest's
// address (or 127.0.1.1, the Debian convention, without one).
func hostsFile(hostname string, addr netip.Addr) string {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	own := "127.0.1.1"
	if addr.IsValid() {
		own = addr.String()
	}
	b.WriteString(own + "\t" + hostname + "\n")
	return b.String()
}

// resolvConf renders /etc/resolv.conf for the given servers.
func resolvConf(dns []netip.Addr) string {
	var b strings.Builder
	for _, a := range dns {
		b.WriteString("nameserver " + a.String() + "\n")
	}
	return b.String()
}

// ipNet converts a prefix, keeping its host address, for netlink.
func ipNet(p netip.Prefix) *net.IPNet {
	a := p.Addr()
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(p.Bits(), a.BitLen())}
}
