package hostnet

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/egress"
)

// DeniedRanges are the IPv4 ranges no VM reaches, whatever its egress
// policy; only Config.Allow's holes open parts of them. Beside these, the
// host's own addresses and Config.Deny are denied too.
var DeniedRanges = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),      // "this" network
	netip.MustParsePrefix("10.0.0.0/8"),     // private
	netip.MustParsePrefix("100.64.0.0/10"),  // carrier-grade NAT
	netip.MustParsePrefix("127.0.0.0/8"),    // loopback
	netip.MustParsePrefix("169.254.0.0/16"), // link-local, cloud metadata services
	netip.MustParsePrefix("172.16.0.0/12"),  // private
	netip.MustParsePrefix("192.168.0.0/16"), // private
	netip.MustParsePrefix("224.0.0.0/4"),    // multicast
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved, broadcast
}

// DNSPorts are the resolver ports a VM may use only towards the host's
// forwarder: plain DNS and DNS over TLS. (DNS over HTTPS to a public
// resolver is ordinary HTTPS and is not told apart; an allowlist stops it
// by not listing the resolver.)
var DNSPorts = []uint16{53, 853}

// HostPort is a port on the gateway address that VMs may reach.
type HostPort struct {
	Proto string // "tcp" or "udp"
	Port  uint16
}

func (p HostPort) String() string { return p.Proto + "/" + strconv.Itoa(int(p.Port)) }

// tableName is the nftables table (families inet and bridge) of a network:
// each bridge has its own, so that two networks on one host never replace
// each other's rules.
func tableName(bridge string) string {
	return TableName + "_" + strings.NewReplacer("-", "_", ".", "_").Replace(bridge)
}

// vmKey names a VM's nftables objects: the hex part of its id.
func vmKey(vmID string) string { return strings.TrimPrefix(vmID, "vm-") }

// chainDef is a chain of a network's table: its base-chain line ("" for a
// regular chain) and its rules.
type chainDef struct {
	name, hook string
	rules      []string
}

// setDef is a set (or map) of a network's table.
type setDef struct {
	kind, name, spec string // kind: set or map; spec: type and flags
	elems            []string
}

// baseTables returns the objects of the network's tables that do not
// belong to one VM: the sets, the map of VMs and the chains, family by
// family. hostAddrs are the host's own IPv4 addresses (denied).
func (n *Network) baseTables(hostAddrs []netip.Addr) (inet, bridge []setDef, inetChains, bridgeChains []chainDef) {
	br := quote(n.cfg.Bridge)
	denied := slices.Clone(DeniedRanges)
	denied = append(denied, n.cfg.Deny...)
	for _, a := range hostAddrs {
		denied = append(denied, netip.PrefixFrom(a, 32))
	}
	var holes, holePorts []string
	for _, h := range n.cfg.Allow {
		if h.Port == 0 {
			holes = append(holes, h.Prefix.String())
		} else {
			holePorts = append(holePorts, fmt.Sprintf("%s . %d", h.Prefix, h.Port))
		}
	}
	var hp []string
	for _, p := range n.cfg.HostPorts {
		hp = append(hp, fmt.Sprintf("%s . %d", p.Proto, p.Port))
	}
	inet = []setDef{
		{"set", "denied", "type ipv4_addr; flags interval; auto-merge;", prefixStrings(denied)},
		{"set", "holes", "type ipv4_addr; flags interval; auto-merge;", holes},
		{"set", "holes_port", "type ipv4_addr . inet_service; flags interval;", holePorts},
		{"set", "host_ports", "type inet_proto . inet_service;", hp},
		{"map", "vms", "type ipv4_addr : verdict;", nil}, // each VM's entry: renderVM
	}
	if n.cfg.NAT {
		inetChains = append(inetChains, chainDef{"postrouting", "type nat hook postrouting priority srcnat; policy accept;",
			[]string{fmt.Sprintf("ip saddr %s oifname != %s masquerade", n.cfg.Subnet, br)}})
	}
	inetChains = append(inetChains,
		// To the host itself: replies, and the ports the host serves VMs
		// on the gateway address. Not SSH, not the API, not anything bound
		// to 0.0.0.0 or to the host's other addresses, not IPv6.
		chainDef{"input", "type filter hook input priority filter; policy accept;", []string{
			fmt.Sprintf("iifname %s jump vm_to_host", br)}},
		chainDef{"vm_to_host", "", []string{
			"ct state established,related accept",
			fmt.Sprintf("meta nfproto ipv4 ip daddr %s meta l4proto . th dport @host_ports accept", n.gateway),
			"counter drop"}},
		chainDef{"forward", "type filter hook forward priority filter; policy accept;", []string{
			fmt.Sprintf("iifname %s jump from_vms", br),
			fmt.Sprintf("oifname %s jump to_vms", br)}},
		// To VMs: replies only; nothing unsolicited from the LAN, or from
		// a host that routes the VM subnet.
		chainDef{"to_vms", "", []string{"ct state established,related accept", "counter drop"}},
		chainDef{"from_vms", "", []string{
			"ct state established,related accept",
			"meta nfproto != ipv4 counter drop",
			fmt.Sprintf("ip saddr != %s counter drop", n.cfg.Subnet),
			fmt.Sprintf("ip daddr %s counter drop", n.cfg.Subnet), // VM to VM through the gateway
			fmt.Sprintf("meta l4proto { tcp, udp } th dport { %s } counter drop", joinPorts(DNSPorts)),
			"ip daddr @holes goto egress",
			"meta l4proto { tcp, udp } ip daddr . th dport @holes_port goto egress",
			"ip daddr @denied counter drop",
			"goto egress"}},
		// Each VM's own policy; a source without a chain gets nothing.
		chainDef{"egress", "", []string{"ip saddr vmap @vms", "counter drop"}},
	)
	// Layer 2: a VM may send only from its own MAC, ARP only for its own
	// address, IPv4 only from its own address; nothing but IPv4 and ARP.
	// Bridge port isolation (on every TAP) keeps VMs from each other.
	bridge = []setDef{
		{"set", "ports", "type ifname;", nil},
		{"set", "macs", "type ifname . ether_addr;", nil},
		{"set", "arps", "type ifname . ether_addr . ipv4_addr;", nil},
		{"set", "ips", "type ifname . ipv4_addr;", nil},
	}
	// A bridge-family hook sees the frames of every bridge on the host:
	// this table judges only its own VMs' TAPs (ports), so that another
	// network's (another host's, on one machine) are left to theirs. (Not
	// "meta ibrname": kernels without nft_meta_bridge refuse it.) A TAP
	// joins ports before its VM starts and leaves it after the TAP is gone.
	bridgeChains = []chainDef{{"prerouting", "type filter hook prerouting priority -300; policy accept;", []string{
		"iifname != @ports accept",
		"iifname . ether saddr != @macs counter drop",
		"ether type arp iifname . arp saddr ether . arp saddr ip != @arps counter drop",
		"ether type ip iifname . ip saddr != @ips counter drop",
		"ether type != { ip, arp } counter drop"}}}
	return inet, bridge, inetChains, bridgeChains
}

// renderBase returns the nft script that gives the network's tables the
// rules every VM gets, and each leased VM its own objects; nft runs a
// script as one transaction, so rules are replaced at once, never partly.
// Without fresh, the tables are updated in place: the base objects are
// declared (a no-op where they exist), flushed and filled again, each
// lease's objects re-added — which keeps the addresses its DNS names
// pinned and the flows it recorded — and the objects of VMs without a
// lease (orphans, by key) removed. With fresh, the tables are deleted and
// made anew.
func (n *Network) renderBase(leases []Lease, hostAddrs []netip.Addr, orphans []string, fresh bool) string {
	t := tableName(n.cfg.Bridge)
	inet, bridge, inetChains, bridgeChains := n.baseTables(hostAddrs)
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	for _, f := range []struct {
		fam    string
		sets   []setDef
		chains []chainDef
	}{{"inet", inet, inetChains}, {"bridge", bridge, bridgeChains}} {
		if fresh {
			w("table %s %s", f.fam, t)
			w("delete table %s %s", f.fam, t)
		}
		w("table %s %s {", f.fam, t)
		for _, s := range f.sets {
			w("\t%s %s { %s }", s.kind, s.name, s.spec)
		}
		for _, c := range f.chains {
			w("\tchain %s { %s }", c.name, c.hook)
		}
		w("}")
		for _, s := range f.sets {
			w("flush %s %s %s %s", s.kind, f.fam, t, s.name)
			if len(s.elems) > 0 {
				w("add element %s %s %s { %s }", f.fam, t, s.name, strings.Join(s.elems, ", "))
			}
		}
		for _, c := range f.chains {
			w("flush chain %s %s %s", f.fam, t, c.name)
			for _, r := range c.rules {
				w("add rule %s %s %s %s", f.fam, t, c.name, r)
			}
		}
	}
	for _, k := range orphans {
		b.WriteString(n.renderKeyRemoval(k))
	}
	for _, l := range leases {
		b.WriteString(n.renderVM(l))
	}
	return b.String()
}

// renderVM returns the nft commands that give a leased VM its layer-2 pins,
// its egress chain and sets, and its entry in the vms map. It may run again
// for the same lease: it replaces what was there.
func (n *Network) renderVM(l Lease) string {
	t := tableName(n.cfg.Bridge)
	k := vmKey(l.VMID)
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	for _, e := range layer2Elements(l) {
		w("add element bridge %s %s", t, e)
	}
	w("add chain inet %s vm_%s", t, k)
	w("flush chain inet %s vm_%s", t, k)
	w("add chain inet %s ok_%s", t, k)
	w("flush chain inet %s ok_%s", t, k)
	for _, vs := range vmSets {
		// An existing set is kept as it is: the names pinned into it and
		// the flows recorded. The policy's own entries are filled anew.
		w("add set inet %s %s_%s { %s }", t, vs.name, k, vs.spec)
		if vs.name == "nets" || vs.name == "netports" {
			w("flush set inet %s %s_%s", t, vs.name, k)
		}
	}
	record := func(chain, set string) {
		w("add rule inet %s %s_%s ct state new meta l4proto { tcp, udp } update @%s_%s { ip daddr . meta l4proto . th dport }",
			t, chain, k, set, k)
	}
	switch l.Egress.Mode {
	case egress.Audit:
		record("vm", "flows")
		w("add rule inet %s vm_%s accept", t, k)
	case egress.Allowlist:
		var nets, ports []string
		for _, e := range l.Egress.Nets {
			if e.Port == 0 {
				nets = append(nets, e.Prefix.String())
			} else {
				ports = append(ports, fmt.Sprintf("%s . %d", e.Prefix, e.Port))
			}
		}
		if len(nets) > 0 {
			w("add element inet %s nets_%s { %s }", t, k, strings.Join(nets, ", "))
		}
		if len(ports) > 0 {
			w("add element inet %s netports_%s { %s }", t, k, strings.Join(ports, ", "))
		}
		for _, m := range []string{
			"ip daddr @holes", "meta l4proto { tcp, udp } ip daddr . th dport @holes_port",
			"ip daddr @nets_" + k, "meta l4proto { tcp, udp } ip daddr . th dport @netports_" + k,
			"ip daddr @names_" + k,
		} {
			w("add rule inet %s vm_%s %s goto ok_%s", t, k, m, k)
		}
		record("vm", "blocked")
		w("add rule inet %s vm_%s counter drop", t, k)
		record("ok", "flows")
		w("add rule inet %s ok_%s accept", t, k)
	default: // open
		w("add rule inet %s vm_%s accept", t, k)
	}
	w("add element inet %s vms { %s : goto vm_%s }", t, l.Addr, k)
	return b.String()
}

// layer2Elements are a leased VM's elements of the bridge table's sets:
// its TAP among the ports judged, and what that TAP may send from.
func layer2Elements(l Lease) []string {
	tap := quote(TAPName(l.VMID))
	mac := GuestMAC(l.VMID).String()
	return []string{
		fmt.Sprintf("ports { %s }", tap),
		fmt.Sprintf("macs { %s . %s }", tap, mac),
		fmt.Sprintf("arps { %s . %s . %s }", tap, mac, l.Addr),
		fmt.Sprintf("ips { %s . %s }", tap, l.Addr),
	}
}

// renderVMRemoval returns the nft commands that remove what renderVM
// added. Each object is added first, so that removing works whether or not
// it exists: a removal may run again after a partial failure.
func (n *Network) renderVMRemoval(l Lease) string {
	t := tableName(n.cfg.Bridge)
	k := vmKey(l.VMID)
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	for _, e := range layer2Elements(l) {
		w("add element bridge %s %s", t, e)
		w("delete element bridge %s %s", t, e)
	}
	w("add chain inet %s vm_%s", t, k)
	w("add element inet %s vms { %s : goto vm_%s }", t, l.Addr, k)
	w("delete element inet %s vms { %s }", t, l.Addr)
	b.WriteString(n.renderKeyRemoval(k))
	return b.String()
}

// renderKeyRemoval returns the nft commands that remove a VM's chains and
// sets, by the VM's key, whether or not they exist; nothing may refer to
// them any more (its vms entry is gone).
func (n *Network) renderKeyRemoval(k string) string {
	t := tableName(n.cfg.Bridge)
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	for _, c := range []string{"vm", "ok"} {
		w("add chain inet %s %s_%s", t, c, k)
		w("flush chain inet %s %s_%s", t, c, k)
	}
	for _, c := range []string{"vm", "ok"} {
		w("delete chain inet %s %s_%s", t, c, k)
	}
	for _, vs := range vmSets {
		w("add set inet %s %s_%s { %s }", t, vs.name, k, vs.spec)
		w("delete set inet %s %s_%s", t, vs.name, k)
	}
	return b.String()
}

// vmSets are the sets each VM has, named <name>_<key>: the flows its
// policy let through and those it blocked (with a counter per element),
// the addresses its DNS names resolved to (with the answers' TTL), and its
// allowlist's CIDRs and CIDR:ports.
var vmSets = []struct{ name, spec string }{
	{"flows", flowSpec},
	{"blocked", flowSpec},
	{"names", "type ipv4_addr; flags timeout;"},
	{"nets", "type ipv4_addr; flags interval; auto-merge;"},
	{"netports", "type ipv4_addr . inet_service; flags interval;"},
}

const flowSpec = "type ipv4_addr . inet_proto . inet_service; size 65535; flags dynamic; counter;"

// renderPin returns the nft command that lets a VM reach addrs for ttl:
// the answers of a DNS name its allowlist allows.
func (n *Network) renderPin(vmID string, addrs []netip.Addr, ttl time.Duration) string {
	var els []string
	secs := int(ttl.Round(time.Second) / time.Second)
	for _, a := range addrs {
		els = append(els, fmt.Sprintf("%s timeout %ds", a, secs))
	}
	return fmt.Sprintf("add element inet %s names_%s { %s }\n", tableName(n.cfg.Bridge), vmKey(vmID), strings.Join(els, ", "))
}

func elements(els []string) string {
	if len(els) == 0 {
		return ""
	}
	return "elements = { " + strings.Join(els, ", ") + " }; "
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Masked().String())
	}
	return out
}

func joinPorts(ps []uint16) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ", ")
}
