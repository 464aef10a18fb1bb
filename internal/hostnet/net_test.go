package hostnet

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tandem-ci/tandem/internal/egress"
)

// openPolicy is egress as it is by default.
var openPolicy = egress.Policy{Mode: egress.Open}

// nftList lists n's tables, inet then bridge.
func nftList(t *testing.T, n *Network) string {
	t.Helper()
	var all string
	for _, fam := range []string{"inet", "bridge"} {
		out, err := exec.Command("nft", "list", "table", fam, tableName(n.cfg.Bridge)).CombinedOutput()
		if err != nil {
			t.Fatalf("nft list table %s %s: %v: %s", fam, tableName(n.cfg.Bridge), err, out)
		}
		all += string(out)
	}
	return all
}

func TestEnsureIdempotent(t *testing.T) {
	n := ensured(t, func(c *Config) { c.DNS = []netip.Addr{netip.MustParseAddr("9.9.9.9")} })
	ctx := context.Background()
	if err := n.Ensure(ctx); err != nil {
		t.Fatalf("second Ensure: %v", err)
	}
	br, err := netlink.LinkByName("tandem0")
	if err != nil {
		t.Fatal(err)
	}
	if br.Type() != "bridge" || br.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("bridge: type %s flags %v", br.Type(), br.Attrs().Flags)
	}
	addrs, err := netlink.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != "172.30.0.1/24" {
		t.Errorf("bridge addresses %v, want just 172.30.0.1/24", addrs)
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); err != nil || strings.TrimSpace(string(b)) != "1" {
		t.Errorf("ip_forward = %q, %v", b, err)
	}
	rules := nftList(t, n)
	if !strings.Contains(rules, `ip saddr 172.30.0.0/24 oifname != "tandem0" masquerade`) {
		t.Errorf("no masquerade rule:\n%s", rules)
	}
	for _, want := range []string{`iifname "tandem0" jump from_vms`, `oifname "tandem0" jump to_vms`, `iifname "tandem0" jump vm_to_host`,
		"hook forward", "hook postrouting", "hook input", "hook prerouting"} {
		if strings.Count(rules, want) != 1 {
			t.Errorf("want %q once:\n%s", want, rules)
		}
	}

	// Ensure replaces whatever else is in the table, and a bridge left
	// with a stale gateway prefix gets the right one.
	if out, err := exec.Command("nft", "add rule inet tandem_tandem0 forward ip daddr 10.66.0.0/16 drop").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if err := netlink.AddrDel(br, &addrs[0]); err != nil {
		t.Fatal(err)
	}
	stale, _ := netlink.ParseAddr("172.30.0.1/16")
	if err := netlink.AddrAdd(br, stale); err != nil {
		t.Fatal(err)
	}
	if err := n.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if rules := nftList(t, n); strings.Contains(rules, "10.66.0.0") {
		t.Errorf("stray rule survived Ensure:\n%s", rules)
	}
	addrs, _ = netlink.AddrList(br, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "172.30.0.1/24" {
		t.Errorf("bridge addresses %v, want just 172.30.0.1/24", addrs)
	}
}

func TestEnsureNoNAT(t *testing.T) {
	n := ensured(t, func(c *Config) { c.NAT = false })
	if rules := nftList(t, n); strings.Contains(rules, "masquerade") || !strings.Contains(rules, `iifname "tandem0" jump from_vms`) {
		t.Errorf("NAT off:\n%s", rules)
	}
}

func TestEnsureRefusesConflicts(t *testing.T) {
	requireNetns(t)
	ctx := context.Background()
	d := addVeth(t, "tdmtest-d0", "tdmtest-d1")
	a, _ := netlink.ParseAddr("10.44.0.5/16")
	if err := netlink.AddrAdd(d, a); err != nil {
		t.Fatal(err)
	}
	n := newNet(t, func(c *Config) { c.Subnet = mustPrefix("10.44.3.0/24"); c.Bridge = "tdmtest-br" })
	t.Cleanup(func() { removeAll(t, n) })
	if err := n.Ensure(ctx); err == nil || !strings.Contains(err.Error(), "overlaps 10.44.0.5/16 on tdmtest-d0") {
		t.Errorf("Ensure with an overlapping subnet: %v", err)
	}
	if _, err := netlink.LinkByName("tdmtest-br"); !isNotFound(err) {
		t.Errorf("failed Ensure left a bridge: %v", err)
	}

	bad := newNet(t, func(c *Config) { c.Bridge = "tdmtest-br" })
	if err := os.WriteFile(filepath.Join(bad.cfg.StateDir, leaseFileName), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := bad.Ensure(ctx); !errors.Is(err, ErrCorruptLeases) {
		t.Errorf("Ensure with a corrupt lease file: %v", err)
	}
	if _, err := netlink.LinkByName("tdmtest-br"); !isNotFound(err) {
		t.Errorf("failed Ensure left a bridge: %v", err)
	}

	m := newNet(t, func(c *Config) { c.Bridge = "tdmtest-d0" })
	if err := m.Ensure(ctx); err == nil || !strings.Contains(err.Error(), "not a bridge") {
		t.Errorf("Ensure with a veth named like the bridge: %v", err)
	}
}

func TestAttachDetach(t *testing.T) {
	n := ensured(t, func(c *Config) { c.DNS = []netip.Addr{netip.MustParseAddr("9.9.9.9")} })
	ctx := context.Background()
	id := "vm-0123456789"
	att, err := n.Attach(ctx, id, openPolicy)
	if err != nil {
		t.Fatal(err)
	}
	if att.VMID != id || att.TAP != "tdm-0123456789" || att.MAC.String() != "02:01:23:45:67:89" ||
		att.Addr != mustPrefix("172.30.0.2/24") || att.Gateway != netip.MustParseAddr("172.30.0.1") ||
		!slices.Equal(att.DNS, []netip.Addr{netip.MustParseAddr("9.9.9.9")}) {
		t.Errorf("attachment %+v", att)
	}
	br, err := n.bridge()
	if err != nil {
		t.Fatal(err)
	}
	l, err := netlink.LinkByName(att.TAP)
	if err != nil {
		t.Fatalf("tap: %v", err)
	}
	tt, ok := l.(*netlink.Tuntap)
	if !ok || tt.Mode != netlink.TUNTAP_MODE_TAP || tt.NonPersist || tt.Flags&netlink.TUNTAP_VNET_HDR != 0 {
		t.Errorf("tap is %T %+v", l, l)
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		t.Errorf("tap master %d, bridge %d", l.Attrs().MasterIndex, br.Attrs().Index)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		t.Error("tap not up")
	}
	if l.Attrs().HardwareAddr.String() == att.MAC.String() {
		t.Error("tap has the guest's MAC")
	}

	again, err := n.Attach(ctx, id, openPolicy)
	if err != nil || again.Addr != att.Addr || again.TAP != att.TAP {
		t.Errorf("Attach again: %+v %v", again, err)
	}
	if leases, _ := n.Leases(); len(leases) != 1 || leases[0].VMID != id || leases[0].Addr != att.Addr.Addr() {
		t.Errorf("leases %+v", leases)
	}

	if err := n.Detach(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(att.TAP); !isNotFound(err) {
		t.Errorf("tap after Detach: %v", err)
	}
	if leases, _ := n.Leases(); len(leases) != 0 {
		t.Errorf("leases after Detach: %+v", leases)
	}
	if err := n.Detach(ctx, id); err != nil {
		t.Errorf("second Detach: %v", err)
	}

	for _, bad := range []string{"vm-XYZ", "../../x", "vm-0123456789ab", ""} {
		if _, err := n.Attach(ctx, bad, openPolicy); !errors.Is(err, ErrInvalidVMID) {
			t.Errorf("Attach(%q): %v", bad, err)
		}
		if err := n.Detach(ctx, bad); !errors.Is(err, ErrInvalidVMID) {
			t.Errorf("Detach(%q): %v", bad, err)
		}
	}
	if leases, _ := n.Leases(); len(leases) != 0 {
		t.Errorf("leases after bad ids: %+v", leases)
	}
}

func TestAttachUndoesOnFailure(t *testing.T) {
	requireNetns(t)
	ctx := context.Background()

	// No bridge: nothing is leased.
	n := newNet(t, nil)
	if _, err := n.Attach(ctx, "vm-0000000001", openPolicy); !errors.Is(err, ErrNoBridge) {
		t.Errorf("Attach without Ensure: %v", err)
	}
	if leases, _ := n.Leases(); len(leases) != 0 {
		t.Errorf("leases %+v", leases)
	}

	n = ensured(t, func(c *Config) { c.Subnet = mustPrefix("10.45.0.0/30") }) // one address
	if _, err := n.Attach(ctx, "vm-0000000001", openPolicy); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Attach(ctx, "vm-0000000002", openPolicy); !errors.Is(err, ErrNoAddress) {
		t.Errorf("Attach to a full subnet: %v", err)
	}
	if _, err := netlink.LinkByName(TAPName("vm-0000000002")); !isNotFound(err) {
		t.Errorf("tap of failed Attach: %v", err)
	}
	if err := n.Detach(ctx, "vm-0000000001"); err != nil {
		t.Fatal(err)
	}

	// The TAP cannot be made (a veth has its name): the
	// lease is released and the other link left alone.
	d := addVeth(t, TAPName("vm-0000000003"), "tdmtest-p0")
	if _, err := n.Attach(ctx, "vm-0000000003", openPolicy); err == nil || !strings.Contains(err.Error(), "not a tap") {
		t.Errorf("Attach over a veth: %v", err)
	}
	if leases, _ := n.Leases(); len(leases) != 0 {
		t.Errorf("leases after failed Attach: %+v", leases)
	}
	if _, err := netlink.LinkByName(d.Attrs().Name); err != nil {
		t.Errorf("veth: %v", err)
	}
}

func TestReclaim(t *testing.T) {
	n := ensured(t, nil)
	ctx := context.Background()
	const dead1, live, dead2, dead3 = "vm-00000000d1", "vm-00000000a1", "vm-00000000d2", "vm-00000000d3"
	for _, id := range []string{dead1, live} {
		if _, err := n.Attach(ctx, id, openPolicy); err != nil {
			t.Fatal(err)
		}
	}
	// Leftovers of a process killed half way: a lease without TAP, and a
	// TAP never enslaved (and without lease).
	if _, _, err := n.lease(ctx, dead2, openPolicy); err != nil {
		t.Fatal(err)
	}
	addTAP(t, TAPName(dead3), "")
	// Not ours: a TAP without the prefix, and a Tandem TAP on another bridge.
	addTAP(t, "othertap0", "")
	other := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "tdmtest-obr"}}
	if err := netlink.LinkAdd(other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.LinkDel(other) })
	addTAP(t, "tdm-00000000e1", other.Name)

	got, err := n.Reclaim(ctx, func(id string) bool { return id == live })
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{dead1, dead2, dead3}; !slices.Equal(got, want) {
		t.Errorf("Reclaim = %v, want %v", got, want)
	}
	for _, name := range []string{TAPName(dead1), TAPName(dead3)} {
		if _, err := netlink.LinkByName(name); !isNotFound(err) {
			t.Errorf("%s after Reclaim: %v", name, err)
		}
	}
	for _, name := range []string{TAPName(live), "othertap0", "tdm-00000000e1"} {
		if _, err := netlink.LinkByName(name); err != nil {
			t.Errorf("%s after Reclaim: %v", name, err)
		}
	}
	if leases, _ := n.Leases(); len(leases) != 1 || leases[0].VMID != live {
		t.Errorf("leases after Reclaim: %+v", leases)
	}
	if got, err := n.Reclaim(ctx, func(id string) bool { return id == live }); err != nil || len(got) != 0 {
		t.Errorf("second Reclaim: %v %v", got, err)
	}
}

// addTAP makes a persistent TAP, enslaved to master unless that is "".
func addTAP(t *testing.T, name, master string) {
	t.Helper()
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI}
	if master != "" {
		m, err := netlink.LinkByName(master)
		if err != nil {
			t.Fatal(err)
		}
		tap.MasterIndex = m.Attrs().Index
	}
	if err := netlink.LinkAdd(tap); err != nil {
		t.Fatalf("add tap %s: %v", name, err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(name); err == nil {
			netlink.LinkDel(l)
		}
	})
}

// TestVMRulesFollowLeases checks that a VM's objects come with Attach, go
// with Detach and Reclaim, and come back with Ensure for a lease that
// outlived its process.
func TestVMRulesFollowLeases(t *testing.T) {
	n := ensured(t, nil)
	ctx := context.Background()
	const id = "vm-00000000b1"
	att, err := n.Attach(ctx, id, egress.Policy{Mode: egress.Allowlist,
		Nets: []egress.Net{{Prefix: mustPrefix("198.51.100.0/24"), Port: 443}}})
	if err != nil {
		t.Fatal(err)
	}
	present := func() []string {
		rules := nftList(t, n)
		var have []string
		for _, want := range []string{"chain vm_00000000b1", "chain ok_00000000b1", "set flows_00000000b1", "set blocked_00000000b1",
			"set names_00000000b1", "198.51.100.0/24 . 443", att.Addr.Addr().String() + " : goto vm_00000000b1",
			`"tdm-00000000b1" . 02:00:00:00:00:b1`} {
			if strings.Contains(rules, want) {
				have = append(have, want)
			}
		}
		return have
	}
	if have := present(); len(have) != 8 {
		t.Fatalf("after Attach, the VM's rules have only %q:\n%s", have, nftList(t, n))
	}
	if err := n.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if have := present(); len(have) != 8 {
		t.Errorf("after Ensure, the VM's rules have only %q", have)
	}
	if err := n.Detach(ctx, id); err != nil {
		t.Fatal(err)
	}
	if have := present(); len(have) != 0 {
		t.Errorf("after Detach, left: %q", have)
	}
	if _, err := n.Attach(ctx, id, openPolicy); err != nil {
		t.Fatal(err)
	}
	if rules := nftList(t, n); !strings.Contains(rules, "chain vm_00000000b1 {\n\t\taccept") || strings.Contains(rules, "198.51.100.0/24 . 443") {
		t.Errorf("re-attached open, the rules are:\n%s", rules)
	}
	if _, err := n.Reclaim(ctx, func(string) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if have := present(); len(have) != 0 {
		t.Errorf("after Reclaim, left: %q", have)
	}
}

// addVeth makes a veth pair and returns its first end.
func addVeth(t *testing.T, name, peer string) netlink.Link {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	t.Cleanup(func() { netlink.LinkDel(v) })
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestEnsureInPlace checks that Ensure keeps what a running VM's rules
// hold (its pinned DNS answers), removes a VM's objects left without a
// lease, and that Join leaves an agent's rules as they are.
func TestEnsureInPlace(t *testing.T) {
	n := ensured(t, func(c *Config) { c.HostPorts = []HostPort{{"tcp", 5000}} })
	ctx := context.Background()
	const id = "vm-00000000e1"
	if _, err := n.Attach(ctx, id, egress.Policy{Mode: egress.Allowlist}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Detach(ctx, id) })
	if err := n.Pin(ctx, id, []netip.Addr{netip.MustParseAddr("198.51.100.44")}, time.Hour); err != nil {
		t.Fatal(err)
	}
	// A leftover: a VM's chain and set without a lease.
	if err := runNft(ctx, "add chain inet tandem_tandem0 vm_00000000ee\nadd set inet tandem_tandem0 names_00000000ee { type ipv4_addr; flags timeout; }\n"); err != nil {
		t.Fatal(err)
	}
	if err := n.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	rules := nftList(t, n)
	if !strings.Contains(rules, "198.51.100.44") {
		t.Errorf("Ensure lost a running VM's pinned address:\n%s", rules)
	}
	if strings.Contains(rules, "00000000ee") {
		t.Errorf("Ensure kept a VM's objects without a lease:\n%s", rules)
	}
	// Another process (tandem run) joins with a config of its own: the
	// agent's rules stand.
	other := newNet(t, nil)
	if err := other.Join(ctx); err != nil {
		t.Fatal(err)
	}
	if rules := nftList(t, n); !strings.Contains(rules, "tcp . 5000") || !strings.Contains(rules, "198.51.100.44") {
		t.Errorf("Join changed the rules:\n%s", rules)
	}
}
