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

	"github.com/vishvananda/netlink"
)

func nftList(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("nft", "list", "table", "inet", TableName).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table inet %s: %v: %s", TableName, err, out)
	}
	return string(out)
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
	rules := nftList(t)
	if !strings.Contains(rules, `ip saddr 172.30.0.0/24 oifname != "tandem0" masquerade`) {
		t.Errorf("no masquerade rule:\n%s", rules)
	}
	for _, want := range []string{`iifname "tandem0" accept`, `oifname "tandem0" accept`, "hook forward", "hook postrouting"} {
		if strings.Count(rules, want) != 1 {
			t.Errorf("want %q once:\n%s", want, rules)
		}
	}

	// Ensure replaces whatever else is in the table, and a bridge left
	// with a stale gateway prefix gets the right one.
	if out, err := exec.Command("nft", "add rule inet tandem forward ip daddr 10.66.0.0/16 drop").CombinedOutput(); err != nil {
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
	if rules := nftList(t); strings.Contains(rules, "10.66.0.0") {
		t.Errorf("stray rule survived Ensure:\n%s", rules)
	}
	addrs, _ = netlink.AddrList(br, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "172.30.0.1/24" {
		t.Errorf("bridge addresses %v, want just 172.30.0.1/24", addrs)
	}
}

func TestEnsureNoNAT(t *testing.T) {
	ensured(t, func(c *Config) { c.NAT = false })
	if rules := nftList(t); strings.Contains(rules, "masquerade") || !strings.Contains(rules, `iifname "tandem0" accept`) {
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
	att, err := n.Attach(ctx, id)
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

	again, err := n.Attach(ctx, id)
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
		if _, err := n.Attach(ctx, bad); !errors.Is(err, ErrInvalidVMID) {
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
	if _, err := n.Attach(ctx, "vm-0000000001"); !errors.Is(err, ErrNoBridge) {
		t.Errorf("Attach without Ensure: %v", err)
	}
	if leases, _ := n.Leases(); len(leases) != 0 {
		t.Errorf("leases %+v", leases)
	}

	n = ensured(t, func(c *Config) { c.Subnet = mustPrefix("10.45.0.0/30") }) // one address
	if _, err := n.Attach(ctx, "vm-0000000001"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Attach(ctx, "vm-0000000002"); !errors.Is(err, ErrNoAddress) {
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
	if _, err := n.Attach(ctx, "vm-0000000003"); err == nil || !strings.Contains(err.Error(), "not a tap") {
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
		if _, err := n.Attach(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	// Leftovers of a process killed half way: a lease without TAP, and a
	// TAP never enslaved (and without lease).
	if _, _, err := n.lease(ctx, dead2); err != nil {
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

func TestPolicyRulesApplied(t *testing.T) {
	n := ensured(t, func(c *Config) { c.Policy = &testPolicy{} })
	ctx := context.Background()
	rules := nftList(t)
	if !strings.Contains(rules, "169.254.0.0/16") || !strings.Contains(rules, `ip daddr != 172.30.0.1 drop`) {
		t.Errorf("policy rules missing:\n%s", rules)
	}
	if _, err := n.Attach(ctx, "vm-0000000001"); err != nil {
		t.Fatal(err)
	}
	if rules := nftList(t); !strings.Contains(rules, "ip saddr != 172.30.0.2") {
		t.Errorf("per-VM policy rule missing after Attach:\n%s", rules)
	}
	if err := n.Detach(ctx, "vm-0000000001"); err != nil {
		t.Fatal(err)
	}
	if rules := nftList(t); strings.Contains(rules, "ip saddr != 172.30.0.2") {
		t.Errorf("per-VM policy rule left after Detach:\n%s", rules)
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
