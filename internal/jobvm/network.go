package jobvm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/hostnet"
	"github.com/tandem-ci/tandem/internal/vmdns"
)

// Network is a host's VM network as an agent (or `tandem run`) sets it up:
// a bridge and subnet, isolated (internal/hostnet), with the DNS forwarder
// the VMs resolve through on the gateway address.
type Network struct {
	Bridge   string
	Subnet   netip.Prefix
	StateDir string // the network's leases and TAP records
	// Own: this process owns the host's network (an agent): its rules
	// replace what is there. Otherwise it joins the network as it is, or
	// sets it up if there is none.
	Own bool
	// MirrorPort, if not 0, is the registry mirror's port on the gateway
	// address, which VMs may reach besides DNS.
	MirrorPort int
	// Allow, Deny, HostFirewall: see hostnet.Config.
	Allow        []egress.Net
	Deny         []netip.Prefix
	HostFirewall string
	// DNSUpstreams are the forwarder's resolvers (default: the host's).
	DNSUpstreams []string
	// Existing joins the network only if it is set up already (a
	// watchdog, a package's removal): otherwise SetUpNetwork returns
	// ErrNoNetwork and makes nothing.
	Existing bool
	Logger   *slog.Logger
}

// ErrNoNetwork is SetUpNetwork's error for a network that is not there to
// join (Network.Existing).
var ErrNoNetwork = errors.New("the VM network is not set up here")

// SetUpNetwork gives h's VMs their network: VMs resolve through the
// forwarder on the gateway address and may reach it and the mirror there,
// nothing else of the host. stop stops the forwarder (the network's rules
// stay, for the VMs that outlive this process: an agent restarting).
func (h *Host) SetUpNetwork(ctx context.Context, c Network) (stop func(), err error) {
	log := c.Logger
	if log == nil {
		log = slog.Default()
	}
	gw := hostnet.GatewayOf(c.Subnet)
	ports := []hostnet.HostPort{{Proto: "udp", Port: 53}, {Proto: "tcp", Port: 53}}
	if c.MirrorPort != 0 {
		ports = append(ports, hostnet.HostPort{Proto: "tcp", Port: uint16(c.MirrorPort)})
	}
	n, err := hostnet.New(hostnet.Config{Bridge: c.Bridge, Subnet: c.Subnet, StateDir: c.StateDir, NAT: true,
		DNS: []netip.Addr{gw}, HostPorts: ports, Allow: c.Allow, Deny: c.Deny, HostFirewall: c.HostFirewall, Logger: log})
	if err != nil {
		return nil, err
	}
	if c.Existing && !n.Exists(ctx) {
		return nil, ErrNoNetwork
	}
	setup := n.Join
	if c.Own {
		setup = n.Ensure
	}
	if err := setup(ctx); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	h.Net = n
	dns, err := vmdns.Start(vmdns.Config{
		Listen:    netip.AddrPortFrom(gw, 53).String(),
		Upstreams: c.DNSUpstreams,
		Logger:    log,
		Lookup: func(a netip.Addr) (string, egress.Policy, bool) {
			l, ok, err := n.LeaseOf(a)
			if err != nil || !ok {
				return "", egress.Policy{}, false
			}
			return l.VMID, l.Egress, true
		},
		Pin: n.Pin,
	})
	switch {
	case errors.Is(err, vmdns.ErrInUse):
		// Another Tandem process on this bridge (the agent) answers for
		// every VM of it: it reads the same leases.
		log.Debug("DNS for VMs is served by another process", "addr", gw)
		return func() {}, nil
	case err != nil:
		return nil, err
	}
	h.DNS = dns
	return func() { dns.Close() }, nil
}
