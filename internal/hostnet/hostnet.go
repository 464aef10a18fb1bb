// Package hostnet gives Tandem's microVMs their network on one host, and
// isolates each VM in it: a Linux bridge holding the gateway address, one
// persistent TAP per VM enslaved to it, a small lease file that hands every
// VM its own address, and nftables tables of the bridge's own
// (tandem_<bridge>, families inet and bridge) that NAT the VM subnet on its
// way out and filter everything a VM sends or receives.
//
// # Isolation (every VM, always; there is no switch to turn it off)
//
//   - To the host itself: only Config.HostPorts on the gateway address (the
//     registry mirror, the DNS forwarder) and replies. Not SSH, not the
//     API, not anything bound to 0.0.0.0 or to the host's other addresses.
//   - Routed: never to DeniedRanges (private, CGNAT, loopback, link-local
//     and metadata, multicast, reserved), the host's own addresses,
//     Config.Deny, the VM subnet itself, or a resolver other than the
//     host's (ports 53 and 853); Config.Allow punches CIDR[:port] holes.
//     The rest goes out through NAT, as the VM's egress policy allows.
//   - To VMs: replies only; nothing unsolicited from the LAN or from a host
//     that routes the subnet.
//   - Layer 2: every TAP is an isolated bridge port (no VM reaches another),
//     and the bridge table pins each TAP's Ethernet source, ARP sender MAC
//     and IP, and IPv4 source to its lease; anything but IPv4 and ARP is
//     dropped (VMs have no IPv6). rp_filter is strict on the bridge.
//   - A host firewall whose forward chain drops by default is detected:
//     Ensure accepts the bridge's traffic there, marked, or refuses (see
//     FirewallAdd).
//
// # Egress policy (per VM, internal/egress)
//
// Attach takes the VM's policy and gives it a chain of its own: open
// accepts, audit records each new flow and accepts, allowlist accepts only
// its CIDR[:port] entries, the operator's holes and the addresses its DNS
// names resolved to (Pin, for the record's TTL), recording every flow.
// Flows reads what was recorded.
//
// # Rules follow the VMs
//
// Ensure replaces the tables in one transaction and re-adds every leased
// VM's objects; Attach adds one VM's objects, Detach and Reclaim remove
// them, each in one transaction, under the lease lock, so the rules always
// match the leases. Everything a VM uses is named after the VM (TAP
// "tdm-<id>", lease keyed by VM id, chains and sets "<kind>_<id hex>"),
// so that Reclaim can find and remove what a crashed or killed process
// left behind.
package hostnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tandem-ci/tandem/internal/egress"
)

// Defaults for Config.
const (
	DefaultBridge = "tandem0"
	// TAPPrefix starts the name of every TAP device Tandem creates.
	TAPPrefix = "tdm-"
	// TableName starts the name of every nftables table Tandem owns:
	// tandem_<bridge>, in the inet and bridge families.
	TableName = "tandem"
)

// DefaultSubnet is the VM subnet used when Config.Subnet is left zero.
var DefaultSubnet = netip.MustParsePrefix("172.30.0.0/24")

// Sentinel errors callers may branch on.
var (
	// ErrNoAddress: every address of the subnet is leased.
	ErrNoAddress = errors.New("no free address in subnet")
	// ErrCorruptLeases: the lease file cannot be read; it is never reset
	// silently, an operator has to look at it.
	ErrCorruptLeases = errors.New("corrupt lease file")
	// ErrInvalidVMID: a VM id is not "vm-" followed by 10 lowercase hex digits.
	ErrInvalidVMID = errors.New("invalid vm id")
	// ErrInvalidConfig: New was given a config it cannot use.
	ErrInvalidConfig = errors.New("invalid network config")
	// ErrNoBridge: Attach found no bridge; Ensure has not run.
	ErrNoBridge = errors.New("bridge missing (Ensure not run)")
)

// Config describes the VM network of one host.
type Config struct {
	Bridge   string       // bridge name, default "tandem0" (<= 15 chars)
	Subnet   netip.Prefix // IPv4 VM subnet, default 172.30.0.0/24; the gateway (.1) lives on the bridge
	StateDir string       // where leases are persisted (a JSON file + lock file); required
	NAT      bool         // install masquerade for the subnet (egress)
	DNS      []netip.Addr // handed to guests, may be empty

	// HostPorts are the ports on the gateway address VMs may reach (the
	// registry mirror, the DNS forwarder). Nothing else on the host is.
	HostPorts []HostPort
	// Deny lists further IPv4 ranges no VM may reach, beside DeniedRanges
	// and the host's own addresses.
	Deny []netip.Prefix
	// Allow punches CIDR[:port] holes through the denied ranges for every
	// VM: an internal artifact cache, a package proxy.
	Allow []egress.Net
	// HostFirewall is FirewallAdd (the default, "") or FirewallRefuse.
	HostFirewall string
	// Logger, if set, receives a line per TAP reclaimed. Nil: slog.Default().
	Logger *slog.Logger
}

// Network is the VM network of one host. It holds no open resources: every
// method works from the kernel's state and the lease file, so several
// Network values and several processes may share one StateDir.
type Network struct {
	cfg     Config
	gateway netip.Addr
	leases  *leaseStore
	log     *slog.Logger
	// makePort makes a VM's bridge port: ensureTAP (tests: a veth into a
	// namespace that stands in for the VM).
	makePort func(name string, mac net.HardwareAddr, br netlink.Link) (created bool, err error)
}

// Attachment is what a VM needs to use its network.
type Attachment struct {
	VMID    string
	TAP     string
	MAC     net.HardwareAddr // the guest NIC's MAC: locally administered, derived from VMID
	Addr    netip.Prefix     // guest address with the subnet's prefix length
	Gateway netip.Addr
	DNS     []netip.Addr
}

// Lease is one address handed to one VM, with the VM's egress policy.
type Lease struct {
	VMID    string        `json:"vm_id"`
	Addr    netip.Addr    `json:"addr"`
	Created time.Time     `json:"created"`
	Egress  egress.Policy `json:"egress"`
}

var (
	vmIDRE   = regexp.MustCompile(`^vm-[0-9a-f]{10}$`)
	ifnameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
)

// New checks cfg and fills in defaults. It has no side effects: nothing is
// created until Ensure or Attach.
func New(cfg Config) (*Network, error) {
	if cfg.Bridge == "" {
		cfg.Bridge = DefaultBridge
	}
	if !cfg.Subnet.IsValid() {
		cfg.Subnet = DefaultSubnet
	}
	if err := validBridgeName(cfg.Bridge); err != nil {
		return nil, err
	}
	gw, err := validSubnet(cfg.Subnet)
	if err != nil {
		return nil, err
	}
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("%w: state dir is required", ErrInvalidConfig)
	}
	dns := make([]netip.Addr, 0, len(cfg.DNS))
	for i, a := range cfg.DNS {
		if !a.IsValid() || a.IsUnspecified() {
			return nil, fmt.Errorf("%w: dns server %d is not a usable address", ErrInvalidConfig, i)
		}
		dns = append(dns, a.Unmap())
	}
	cfg.DNS = dns
	for _, p := range cfg.HostPorts {
		if (p.Proto != "tcp" && p.Proto != "udp") || p.Port == 0 {
			return nil, fmt.Errorf("%w: host port %s: want tcp or udp and a port", ErrInvalidConfig, p)
		}
	}
	for _, d := range cfg.Deny {
		if !d.IsValid() || !d.Addr().Is4() {
			return nil, fmt.Errorf("%w: deny %s: want an IPv4 CIDR", ErrInvalidConfig, d)
		}
	}
	for _, h := range cfg.Allow {
		if !h.Prefix.IsValid() || !h.Prefix.Addr().Is4() {
			return nil, fmt.Errorf("%w: allow %s: want an IPv4 CIDR[:port]", ErrInvalidConfig, h)
		}
	}
	switch cfg.HostFirewall {
	case "":
		cfg.HostFirewall = FirewallAdd
	case FirewallAdd, FirewallRefuse:
	default:
		return nil, fmt.Errorf("%w: host firewall %q: want %s or %s", ErrInvalidConfig, cfg.HostFirewall, FirewallAdd, FirewallRefuse)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Network{
		cfg:      cfg,
		gateway:  gw,
		leases:   newLeaseStore(cfg.StateDir),
		log:      log,
		makePort: ensureTAP,
	}, nil
}

func validBridgeName(name string) error {
	switch {
	case len(name) > 15:
		return fmt.Errorf("%w: bridge name %q is longer than 15 characters", ErrInvalidConfig, name)
	case !ifnameRE.MatchString(name):
		return fmt.Errorf("%w: bridge name %q: use letters, digits, '_', '.', '-'", ErrInvalidConfig, name)
	case strings.HasPrefix(name, TAPPrefix):
		return fmt.Errorf("%w: bridge name %q starts with the tap prefix %q", ErrInvalidConfig, name, TAPPrefix)
	}
	return nil
}

// validSubnet checks p and returns its gateway, the first host address.
func validSubnet(p netip.Prefix) (netip.Addr, error) {
	a := p.Addr()
	switch {
	case !a.Is4():
		return netip.Addr{}, fmt.Errorf("%w: subnet %s is not IPv4", ErrInvalidConfig, p)
	case p.Masked() != p:
		return netip.Addr{}, fmt.Errorf("%w: subnet %s has host bits set (did you mean %s?)", ErrInvalidConfig, p, p.Masked())
	case p.Bits() < 8 || p.Bits() > 30:
		return netip.Addr{}, fmt.Errorf("%w: subnet %s: prefix length must be 8..30", ErrInvalidConfig, p)
	case a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast() || a.IsUnspecified() ||
		a.As4()[0] == 0 || a.As4()[0] >= 240:
		return netip.Addr{}, fmt.Errorf("%w: subnet %s is not a usable unicast range", ErrInvalidConfig, p)
	}
	return GatewayOf(p), nil
}

// GatewayOf returns the gateway address of a VM subnet: its first host
// address, which the bridge holds.
func GatewayOf(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr().Next() }

// Bridge returns the bridge's name.
func (n *Network) Bridge() string { return n.cfg.Bridge }

// Subnet returns the VM subnet.
func (n *Network) Subnet() netip.Prefix { return n.cfg.Subnet }

// Gateway returns the gateway address, which lives on the bridge.
func (n *Network) Gateway() netip.Addr { return n.gateway }

// ValidVMID reports whether id has the form of a VM id: "vm-" + 10
// lowercase hex digits.
func ValidVMID(id string) bool { return vmIDRE.MatchString(id) }

func checkVMID(id string) error {
	if !ValidVMID(id) {
		return fmt.Errorf("%w: %q (want vm- and 10 lowercase hex digits)", ErrInvalidVMID, id)
	}
	return nil
}

// TAPName returns the TAP device name of a VM: "tdm-" + the part of vmID
// after "vm-", cut to the kernel's 15 characters.
func TAPName(vmID string) string {
	s := TAPPrefix + strings.TrimPrefix(vmID, "vm-")
	if len(s) > 15 {
		s = s[:15]
	}
	return s
}

// vmIDOfTAP inverts TAPName; ok is false if name is not a Tandem TAP.
func vmIDOfTAP(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, TAPPrefix)
	if !ok || rest == "" {
		return "", false
	}
	return "vm-" + rest, true
}

// idBytes returns the 5 bytes the hex part of a valid VM id spells.
func idBytes(vmID string) [5]byte {
	var b [5]byte
	h := vmID[len("vm-"):]
	for i := range b {
		b[i] = unhex(h[2*i])<<4 | unhex(h[2*i+1])
	}
	return b
}

func unhex(c byte) byte {
	if c >= 'a' {
		return c - 'a' + 10
	}
	return c - '0'
}

// GuestMAC returns the MAC of a VM's NIC: 02 (locally administered,
// unicast) followed by the 5 bytes of the VM id, so that distinct VMs never
// share one. vmID must be valid (see ValidVMID); otherwise GuestMAC is nil.
func GuestMAC(vmID string) net.HardwareAddr {
	if !ValidVMID(vmID) {
		return nil
	}
	b := idBytes(vmID)
	return net.HardwareAddr{0x02, b[0], b[1], b[2], b[3], b[4]}
}

// tapMAC is the host side's MAC of a VM's TAP: fe (locally administered,
// unicast, and high, so the bridge never adopts it) and the VM id's bytes.
func tapMAC(vmID string) net.HardwareAddr {
	b := idBytes(vmID)
	return net.HardwareAddr{0xfe, b[0], b[1], b[2], b[3], b[4]}
}

// Ensure makes the host ready for VMs, and may run any number of times: the
// bridge exists, is up, holds the gateway address and filters strictly on
// reverse paths; IPv4 forwarding is on; a host firewall that drops
// forwarded traffic is dealt with (HostFirewall); the network's nftables
// tables hold exactly the rules this Network wants for its leases,
// replaced in one transaction (a VM's DNS pins and recorded flows are lost:
// call it when the host starts, not while VMs run).
func (n *Network) Ensure(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// Refuse an unreadable lease file and a subnet in use elsewhere before
	// changing anything.
	if _, err := n.Leases(); err != nil {
		return err
	}
	brIndex := 0
	if br, err := n.bridge(); err == nil {
		brIndex = br.Attrs().Index
	} else if !errors.Is(err, ErrNoBridge) {
		return err
	}
	if err := n.checkSubnetFree(brIndex); err != nil {
		return err
	}
	if err := n.ensureFirewall(ctx); err != nil {
		return err
	}
	if _, err := n.ensureBridge(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := enableIPForward(); err != nil {
		return err
	}
	hostAddrs, err := hostAddrs()
	if err != nil {
		return err
	}
	return n.leases.withLock(ctx, true, func() error {
		st, err := n.leases.load()
		if err != nil {
			return err
		}
		if !n.hasTables(ctx) {
			return runNft(ctx, n.renderBase(st.Leases, hostAddrs, nil, true))
		}
		orphans, err := n.orphans(ctx, st.Leases)
		if err == nil {
			if err = runNft(ctx, n.renderBase(st.Leases, hostAddrs, orphans, false)); err == nil {
				return nil
			}
		}
		// Tables an older version made, whose objects cannot be updated
		// in place: made anew.
		n.log.Warn("network rules could not be updated in place; replacing them", "bridge", n.cfg.Bridge, "err", err)
		return runNft(ctx, n.renderBase(st.Leases, hostAddrs, nil, true))
	})
}

// Join makes the host ready for VMs as Ensure does, unless the network's
// tables exist already: then another process (the agent) set the network
// up and its rules stand; Join only checks the bridge. Commands that share
// the host with an agent (tandem run, gc, bench) join.
func (n *Network) Join(ctx context.Context) error {
	if !n.hasTables(ctx) {
		return n.Ensure(ctx)
	}
	if _, err := n.bridge(); err != nil {
		return n.Ensure(ctx)
	}
	return nil
}

// Exists says whether the network is set up here: its tables and its
// bridge.
func (n *Network) Exists(ctx context.Context) bool {
	if !n.hasTables(ctx) {
		return false
	}
	_, err := n.bridge()
	return err == nil
}

// Attach gives vmID its network under policy pol: it leases an address
// (the same one again if vmID holds a lease already), creates the
// persistent TAP TAPName(vmID) as an isolated port of the bridge, sets it
// up, and adds the VM's layer-2 pins and egress rules. On failure it undoes
// what it did (a lease or TAP that existed before stays).
func (n *Network) Attach(ctx context.Context, vmID string, pol egress.Policy) (att Attachment, err error) {
	if err := checkVMID(vmID); err != nil {
		return Attachment{}, err
	}
	if _, err := egress.ParseMode(string(pol.Mode)); err != nil {
		return Attachment{}, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if err := ctx.Err(); err != nil {
		return Attachment{}, err
	}
	br, err := n.bridge()
	if err != nil {
		return Attachment{}, err
	}
	lease, newLease, err := n.lease(ctx, vmID, pol)
	if err != nil {
		return Attachment{}, err
	}
	tap := TAPName(vmID)
	var newTAP bool
	defer func() {
		if err == nil {
			return
		}
		var errs []error
		if newTAP {
			if derr := deleteTAP(tap); derr != nil {
				errs = append(errs, fmt.Errorf("undo tap: %w", derr))
			}
		}
		if newLease {
			if rerr := n.release(context.WithoutCancel(ctx), vmID); rerr != nil {
				errs = append(errs, fmt.Errorf("undo lease: %w", rerr))
			}
		}
		if len(errs) > 0 {
			err = errors.Join(append([]error{err}, errs...)...)
		}
	}()
	newTAP, err = n.makePort(tap, tapMAC(vmID), br)
	if err != nil {
		return Attachment{}, fmt.Errorf("tap %s: %w", tap, err)
	}
	if err := n.leases.withLock(ctx, true, func() error { return runNft(ctx, n.renderVM(lease)) }); err != nil {
		return Attachment{}, fmt.Errorf("rules for %s: %w", vmID, err)
	}
	return Attachment{
		VMID:    vmID,
		TAP:     tap,
		MAC:     GuestMAC(vmID),
		Addr:    netip.PrefixFrom(lease.Addr, n.cfg.Subnet.Bits()),
		Gateway: n.gateway,
		DNS:     append([]netip.Addr(nil), n.cfg.DNS...),
	}, nil
}

// lease returns vmID's lease, with pol as its policy, making one if it has
// none (isNew).
func (n *Network) lease(ctx context.Context, vmID string, pol egress.Policy) (l Lease, isNew bool, err error) {
	err = n.leases.withLock(ctx, true, func() error {
		var err error
		l, isNew, err = n.leases.acquire(n.cfg.Subnet, n.gateway, vmID, pol, time.Now())
		return err
	})
	if err != nil {
		return Lease{}, false, fmt.Errorf("lease for %s: %w", vmID, err)
	}
	return l, isNew, nil
}

// Detach deletes vmID's TAP and releases its lease. A missing TAP or lease
// is not an error, so Detach may run again after a partial failure.
func (n *Network) Detach(ctx context.Context, vmID string) error {
	if err := checkVMID(vmID); err != nil {
		return err
	}
	tap := TAPName(vmID)
	if err := deleteTAP(tap); err != nil {
		return fmt.Errorf("detach %s: tap %s: %w", vmID, tap, err)
	}
	if err := n.release(ctx, vmID); err != nil {
		return fmt.Errorf("detach %s: %w", vmID, err)
	}
	return nil
}

// release removes vmID's rules and drops its lease.
func (n *Network) release(ctx context.Context, vmID string) error {
	return n.leases.withLock(ctx, true, func() error {
		return n.dropLeases(ctx, func(l Lease) bool { return l.VMID == vmID })
	})
}

// dropLeases removes the rules of the leases gone reports true for, then
// the leases themselves. Call it with the exclusive lease lock held.
func (n *Network) dropLeases(ctx context.Context, gone func(Lease) bool) error {
	st, err := n.leases.load()
	if err != nil {
		return err
	}
	var script strings.Builder
	ids := map[string]bool{}
	for _, l := range st.Leases {
		if gone(l) {
			ids[l.VMID] = true
			script.WriteString(n.renderVMRemoval(l))
		}
	}
	if len(ids) == 0 {
		return nil
	}
	if err := runNft(ctx, script.String()); err != nil && n.hasTables(ctx) {
		// (Without the tables, which only Ensure makes, there are no
		// rules to remove.)
		return fmt.Errorf("remove rules: %w", err)
	}
	if _, _, err := n.leases.drop(func(l Lease) bool { return ids[l.VMID] }); err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	return nil
}

// Leases returns every lease, ordered by address.
func (n *Network) Leases() ([]Lease, error) {
	var out []Lease
	err := n.leases.withLock(context.Background(), false, func() error {
		st, err := n.leases.load()
		if err != nil {
			return err
		}
		out = st.Leases
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("leases: %w", err)
	}
	return out, nil
}

// Reclaim removes what dead VMs left: every Tandem TAP (name starting with
// "tdm-", on this bridge or on none) and every lease whose VM live reports
// not live. It returns the ids of those VMs, sorted. Call it when no Attach
// for a VM that live calls dead can run at the same time (at agent start,
// or under the caller's own lock).
func (n *Network) Reclaim(ctx context.Context, live func(vmID string) bool) (reclaimed []string, err error) {
	seen := map[string]bool{}
	var errs []error
	taps, err := tandemTAPs(n.cfg.Bridge)
	if err != nil {
		return nil, fmt.Errorf("reclaim: %w", err)
	}
	for _, tap := range taps {
		id, _ := vmIDOfTAP(tap)
		if live(id) {
			continue
		}
		if err := deleteTAP(tap); err != nil {
			errs = append(errs, fmt.Errorf("tap %s: %w", tap, err))
			continue
		}
		n.log.Info("reclaimed leftover tap", "tap", tap, "vm", id)
		seen[id] = true
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
		return slices.Sorted(maps.Keys(seen)), fmt.Errorf("reclaim: %w", errors.Join(errs...))
	}
	err = n.leases.withLock(ctx, true, func() error {
		return n.dropLeases(ctx, func(l Lease) bool {
			if live(l.VMID) {
				return false
			}
			n.log.Info("reclaimed leftover lease", "vm", l.VMID, "addr", l.Addr)
			seen[l.VMID] = true
			return true
		})
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("leases: %w", err))
	}
	if len(errs) > 0 {
		return slices.Sorted(maps.Keys(seen)), fmt.Errorf("reclaim: %w", errors.Join(errs...))
	}
	return slices.Sorted(maps.Keys(seen)), nil
}

// LeaseOf returns the lease of addr: which VM holds it, under which egress
// policy (the DNS forwarder asks, for each query's source).
func (n *Network) LeaseOf(addr netip.Addr) (Lease, bool, error) {
	leases, err := n.Leases()
	if err != nil {
		return Lease{}, false, err
	}
	addr = addr.Unmap()
	for _, l := range leases {
		if l.Addr == addr {
			return l, true, nil
		}
	}
	return Lease{}, false, nil
}
