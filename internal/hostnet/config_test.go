package hostnet

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
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

type testPolicy struct{ env PolicyEnv }

func (p *testPolicy) Rules(env PolicyEnv) (PolicyRules, error) {
	p.env = env
	r := PolicyRules{
		Input:   []string{fmt.Sprintf("iifname %q ip daddr != %s drop", env.Bridge, env.Gateway)},
		Forward: []string{fmt.Sprintf("iifname %q ip daddr @metadata drop", env.Bridge)},
		Chains:  []string{"set metadata { type ipv4_addr; flags interval; elements = { 169.254.0.0/16 } }"},
	}
	for _, vm := range env.VMs {
		r.Forward = append(r.Forward, fmt.Sprintf("iifname %q ip saddr != %s ip saddr %s counter", env.Bridge, vm.Addr, env.Subnet))
	}
	return r, nil
}

func TestRenderRules(t *testing.T) {
	n := newNet(t, nil)
	s, err := n.renderRules(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"table inet tandem\ndelete table inet tandem\ntable inet tandem {",
		`ip saddr 172.30.0.0/24 oifname != "tandem0" masquerade`,
		`iifname "tandem0" accept`,
		`oifname "tandem0" accept`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("rules lack %q:\n%s", want, s)
		}
	}
	n = newNet(t, func(c *Config) { c.NAT = false })
	if s, _ := n.renderRules(nil); strings.Contains(s, "masquerade") {
		t.Errorf("NAT off, yet:\n%s", s)
	}

	p := &testPolicy{}
	n = newNet(t, func(c *Config) { c.Policy = p })
	s, err = n.renderRules([]Lease{{VMID: "vm-0123456789", Addr: netip.MustParseAddr("172.30.0.2")}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.env.VMs) != 1 || p.env.VMs[0].TAP != "tdm-0123456789" || p.env.VMs[0].MAC != "02:01:23:45:67:89" {
		t.Errorf("policy saw %+v", p.env)
	}
	fwd := s[strings.Index(s, "chain forward"):]
	if i, j := strings.Index(fwd, "@metadata drop"), strings.Index(fwd, `iifname "tandem0" accept`); i < 0 || j < 0 || i > j {
		t.Errorf("policy forward rules not before the accepts:\n%s", s)
	}
}
