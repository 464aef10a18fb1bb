package main

import (
	"net/netip"
	"testing"
)

func TestEtcFiles(t *testing.T) {
	if got := hostsFile("vm1", netip.MustParseAddr("10.0.0.2")); got !=
		"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.0.0.2\tvm1\n" {
		t.Fatalf("hosts %q", got)
	}
	if got := hostsFile("tandem", netip.Addr{}); got !=
		"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\ttandem\n" {
		t.Fatalf("hosts %q", got)
	}
	dns := []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("2606:4700::1111")}
	if got := resolvConf(dns); got != "nameserver 1.1.1.1\nnameserver 2606:4700::1111\n" {
		t.Fatalf("resolv %q", got)
	}
	if hostnameOf("") != "tandem" || hostnameOf("x") != "x" {
		t.Fatal("hostnameOf")
	}
}

func TestIPNet(t *testing.T) {
	n := ipNet(netip.MustParsePrefix("10.1.2.3/24"))
	if n.String() != "10.1.2.3/24" || len(n.IP) != 4 {
		t.Fatalf("ipNet = %v (%d bytes)", n, len(n.IP))
	}
	if n := ipNet(netip.MustParsePrefix("fd00::5/64")); n.String() != "fd00::5/64" {
		t.Fatalf("ipNet = %v", n)
	}
}
