package hostnet

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/tandem-ci/tandem/internal/egress"
)

func TestNewDefaults(t *testing.T) {
	n, err := New(Config{StateDir: "/nonexistent/state"})
	if err != nil {
		t.Fatal(err)
	}
	if n.Bridge() != "tandem0" || n.Subnet() != mustPrefix("172.30.0.0/24") || n.Gateway() != netip.MustParseAddr("172.30.0.1") {
		t.Errorf("defaults: bridge %q subnet %s gateway %s", n.Bridge(), n.Subnet(), n.Gateway())
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	ok := Config{StateDir: "/tmp/x"}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no state dir", func(c *Config) { c.StateDir = "" }, "state dir"},
		{"long bridge", func(c *Config) { c.Bridge = "abcdefghijklmnop" }, "longer than 15"},
		{"bridge with space", func(c *Config) { c.Bridge = "br 0" }, "bridge name"},
		{"bridge with quote", func(c *Config) { c.Bridge = `br"0` }, "bridge name"},
		{"bridge with slash", func(c *Config) { c.Bridge = "br/0" }, "bridge name"},
		{"bridge with tap prefix", func(c *Config) { c.Bridge = "tdm-br" }, "tap prefix"},
		{"ipv6 subnet", func(c *Config) { c.Subnet = mustPrefix("fd00::/64") }, "not IPv4"},
		{"host bits", func(c *Config) { c.Subnet = mustPrefix("10.1.2.3/24") }, "did you mean 10.1.2.0/24"},
		{"too small", func(c *Config) { c.Subnet = mustPrefix("10.1.2.0/31") }, "prefix length"},
		{"single", func(c *Config) { c.Subnet = mustPrefix("10.1.2.0/32") }, "prefix length"},
		{"too large", func(c *Config) { c.Subnet = mustPrefix("10.0.0.0/7") }, "prefix length"},
		{"loopback", func(c *Config) { c.Subnet = mustPrefix("127.0.0.0/24") }, "unicast"},
		{"link local", func(c *Config) { c.Subnet = mustPrefix("169.254.0.0/24") }, "unicast"},
		{"multicast", func(c *Config) { c.Subnet = mustPrefix("224.1.0.0/24") }, "unicast"},
		{"zero net", func(c *Config) { c.Subnet = mustPrefix("0.0.0.0/24") }, "unicast"},
		{"bad dns", func(c *Config) { c.DNS = []netip.Addr{{}} }, "dns"},
		{"unspecified dns", func(c *Config) { c.DNS = []netip.Addr{netip.IPv4Unspecified()} }, "dns"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.mod(&cfg)
			_, err := New(cfg)
			if err == nil || !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v; want ErrInvalidConfig mentioning %q", err, tc.want)
			}
		})
	}
	for _, good := range []string{"10.0.0.0/8", "192.168.7.0/30", "172.30.0.0/29"} {
		if _, err := New(Config{StateDir: "/tmp/x", Subnet: mustPrefix(good), Bridge: "br-tandem_1.x"}); err != nil {
			t.Errorf("New with subnet %s: %v", good, err)
		}
	}
}

func TestTAPName(t *testing.T) {
	for in, want := range map[string]string{
		"vm-0123456789":     "tdm-0123456789",
		"vm-abcdef0123":     "tdm-abcdef0123",
		"vm-0123456789abcd": "tdm-0123456789a", // cut to 15
		"xyz":               "tdm-xyz",
	} {
		if got := TAPName(in); got != want {
			t.Errorf("TAPName(%q) = %q, want %q", in, got, want)
		}
		if got := TAPName(in); len(got) > 15 {
			t.Errorf("TAPName(%q) = %q: longer than 15", in, got)
		}
	}
	id, ok := vmIDOfTAP("tdm-0123456789")
	if !ok || id != "vm-0123456789" {
		t.Errorf("vmIDOfTAP: %q %v", id, ok)
	}
	if _, ok := vmIDOfTAP("eth0"); ok {
		t.Error("vmIDOfTAP(eth0) ok")
	}
}

func TestVMIDAndMAC(t *testing.T) {
	for _, bad := range []string{"", "vm-", "vm-012345678", "vm-0123456789a", "vm-ABCDEF0123", "xx-0123456789", "vm-01234567g9", "vm-0123456789\n"} {
		if ValidVMID(bad) {
			t.Errorf("ValidVMID(%q) = true", bad)
		}
		if GuestMAC(bad) != nil {
			t.Errorf("GuestMAC(%q) not nil", bad)
		}
	}
	if got := GuestMAC("vm-0123456789").String(); got != "02:01:23:45:67:89" {
		t.Errorf("GuestMAC = %s", got)
	}
	if got := tapMAC("vm-abcdef0123").String(); got != "fe:ab:cd:ef:01:23" {
		t.Errorf("tapMAC = %s", got)
	}
	seen := map[string]bool{}
	for i := range 1000 {
		id := fmt.Sprintf("vm-%010x", i*7919)
		m := GuestMAC(id)
		if m[0]&0x02 == 0 || m[0]&0x01 != 0 {
			t.Fatalf("GuestMAC(%s) = %s: not locally administered unicast", id, m)
		}
		if seen[m.String()] {
			t.Fatalf("GuestMAC(%s) = %s: seen before", id, m)
		}
		seen[m.String()] = true
		if GuestMAC(id).String() != m.String() {
			t.Fatal("GuestMAC not deterministic")
		}
	}
}

func TestRenderBase(t *testing.T) {
	n := newNet(t, func(c *Config) {
		c.HostPorts = []HostPort{{"tcp", 5000}, {"udp", 53}}
		c.Deny = []netip.Prefix{mustPrefix("203.0.113.0/24")}
		c.Allow = []egress.Net{{Prefix: mustPrefix("10.1.2.3/32"), Port: 8080}, {Prefix: mustPrefix("10.9.0.0/16")}}
	})
	leases := []Lease{{VMID: "vm-0123456789", Addr: netip.MustParseAddr("172.30.0.7")}}
	s := n.renderBase(leases, []netip.Addr{netip.MustParseAddr("192.0.2.10")}, []string{"00000000ff"}, false)
	const T = "inet tandem_tandem0 "
	for _, want := range []string{
		"add rule " + T + `postrouting ip saddr 172.30.0.0/24 oifname != "tandem0" masquerade`,
		"add element " + T + "host_ports { tcp . 5000, udp . 53 }",
		"add rule " + T + "vm_to_host meta nfproto ipv4 ip daddr 172.30.0.1 meta l4proto . th dport @host_ports accept",
		"10.0.0.0/8", "169.254.0.0/16", "203.0.113.0/24", "192.0.2.10/32",
		"add element " + T + "holes_port { 10.1.2.3/32 . 8080 }", "add element " + T + "holes { 10.9.0.0/16 }",
		"from_vms meta l4proto { tcp, udp } th dport { 53, 853 } counter drop",
		"from_vms ip saddr != 172.30.0.0/24 counter drop",
		"add rule bridge tandem_tandem0 prerouting ether type != { ip, arp } counter drop",
		`prerouting iifname != @ports accept`,
		"flush map " + T + "vms", "flush chain " + T + "from_vms",
		"delete chain " + T + "vm_00000000ff",         // the orphan
		T + "vms { 172.30.0.7 : goto vm_0123456789 }", // the lease
	} {
		if !strings.Contains(s, want) {
			t.Errorf("rules lack %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "delete table") {
		t.Errorf("an update in place deletes a table:\n%s", s)
	}
	// from_vms: replies, then the drops, then holes, then the denied
	// ranges, then each VM's policy.
	var from []string
	for _, l := range strings.Split(s, "\n") {
		if r, ok := strings.CutPrefix(l, "add rule "+T+"from_vms "); ok {
			from = append(from, r)
		}
	}
	var at []int
	for _, r := range []string{"ct state established,related accept", "meta l4proto { tcp, udp } th dport { 53, 853 } counter drop",
		"ip daddr @holes goto egress", "ip daddr @denied counter drop", "goto egress"} {
		at = append(at, slices.Index(from, r))
	}
	if !slices.IsSorted(at) || at[0] < 0 {
		t.Errorf("from_vms out of order (%v):\n%s", at, strings.Join(from, "\n"))
	}
	fresh := n.renderBase(nil, nil, nil, true)
	if !strings.HasPrefix(fresh, "table inet tandem_tandem0\ndelete table inet tandem_tandem0\n") ||
		!strings.Contains(fresh, "table bridge tandem_tandem0\ndelete table bridge tandem_tandem0\n") {
		t.Errorf("a fresh render does not replace the tables:\n%s", fresh)
	}
	n = newNet(t, func(c *Config) { c.NAT = false })
	if s := n.renderBase(nil, nil, nil, false); strings.Contains(s, "masquerade") || strings.Contains(s, "host_ports {  }") {
		t.Errorf("NAT off, no host ports:\n%s", s)
	}
}

func TestRenderVM(t *testing.T) {
	n := newNet(t, nil)
	l := Lease{VMID: "vm-0123456789", Addr: netip.MustParseAddr("172.30.0.7")}
	for mode, want := range map[egress.Mode][]string{
		egress.Open:  {"add rule inet tandem_tandem0 vm_0123456789 accept"},
		egress.Audit: {"update @flows_0123456789 { ip daddr . meta l4proto . th dport }", "add rule inet tandem_tandem0 vm_0123456789 accept"},
		egress.Allowlist: {"ip daddr @names_0123456789 goto ok_0123456789", "update @blocked_0123456789", "vm_0123456789 counter drop",
			"add element inet tandem_tandem0 nets_0123456789 { 198.51.100.0/24 }",
			"add element inet tandem_tandem0 netports_0123456789 { 203.0.113.5/32 . 443 }"},
	} {
		l.Egress = egress.Policy{Mode: mode}
		if mode == egress.Allowlist {
			l.Egress.Nets = []egress.Net{{Prefix: mustPrefix("198.51.100.0/24")}, {Prefix: mustPrefix("203.0.113.5/32"), Port: 443}}
		}
		s := n.renderVM(l)
		for _, w := range append(want,
			`add element bridge tandem_tandem0 macs { "tdm-0123456789" . 02:01:23:45:67:89 }`,
			`add element bridge tandem_tandem0 arps { "tdm-0123456789" . 02:01:23:45:67:89 . 172.30.0.7 }`,
			"add element inet tandem_tandem0 vms { 172.30.0.7 : goto vm_0123456789 }") {
			if !strings.Contains(s, w) {
				t.Errorf("%s: rules lack %q:\n%s", mode, w, s)
			}
		}
		// The map entry comes last: the VM's chain is complete before
		// any packet can reach it.
		if !strings.HasSuffix(strings.TrimSpace(s), "vms { 172.30.0.7 : goto vm_0123456789 }") {
			t.Errorf("%s: vms entry not last:\n%s", mode, s)
		}
	}
	rm := n.renderVMRemoval(l)
	for _, w := range []string{"delete element inet tandem_tandem0 vms { 172.30.0.7 }", "delete chain inet tandem_tandem0 vm_0123456789",
		"delete set inet tandem_tandem0 flows_0123456789", `delete element bridge tandem_tandem0 ips { "tdm-0123456789" . 172.30.0.7 }`} {
		if !strings.Contains(rm, w) {
			t.Errorf("removal lacks %q:\n%s", w, rm)
		}
	}
	if i, j := strings.Index(rm, "delete element inet tandem_tandem0 vms"), strings.Index(rm, "delete chain inet tandem_tandem0 vm_"); i > j {
		t.Errorf("removal deletes the chain before the map entry that jumps to it:\n%s", rm)
	}
}
