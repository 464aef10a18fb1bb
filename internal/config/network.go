package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/tandem-ci/tandem/internal/egress"
)

// Network is what a host's VMs may reach beyond the isolation every VM
// gets (internal/hostnet), and how the host resolves names for them. It is
// the agent's: `tandem up`'s agent.network, `tandem agent`'s flags.
type Network struct {
	// Allow punches CIDR[:port] holes through the denied ranges for every
	// VM on the host: an internal artifact cache, a package proxy.
	Allow []string `yaml:"allow"`
	// Deny adds IPv4 ranges no VM may reach.
	Deny []string `yaml:"deny"`
	// HostFirewall is what to do about a host firewall whose forward
	// chain drops: "add" (accept the VM bridge's traffic there, marked;
	// the default) or "refuse" (fail, saying what to change).
	HostFirewall string `yaml:"host_firewall"`
	// DNSUpstreams are the resolvers the VMs' DNS forwarder asks,
	// host[:port]; default: the host's own, from /etc/resolv.conf.
	DNSUpstreams []string `yaml:"dns_upstreams"`
}

// NetworkSpec is a Network, checked.
type NetworkSpec struct {
	Allow        []egress.Net
	Deny         []netip.Prefix
	HostFirewall string
	DNSUpstreams []string // host:port
}

// Compile checks n.
func (n Network) Compile() (NetworkSpec, error) {
	var s NetworkSpec
	var errs []error
	for _, a := range n.Allow {
		h, err := egress.ParseNet(a)
		if err != nil {
			errs = append(errs, fmt.Errorf("allow: %w", err))
			continue
		}
		s.Allow = append(s.Allow, h)
	}
	for _, d := range n.Deny {
		p, err := egress.ParseNet(d)
		if err == nil && p.Port != 0 {
			err = errors.New("a port has no meaning here")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("deny %q: %w", d, err))
			continue
		}
		s.Deny = append(s.Deny, p.Prefix)
	}
	switch n.HostFirewall {
	case "", "add", "refuse":
		s.HostFirewall = n.HostFirewall
	default:
		errs = append(errs, fmt.Errorf("host_firewall %q: want add or refuse", n.HostFirewall))
	}
	for _, u := range n.DNSUpstreams {
		hp := u
		if _, _, err := net.SplitHostPort(u); err != nil {
			hp = net.JoinHostPort(strings.Trim(u, "[]"), "53")
		}
		if ap, err := netip.ParseAddrPort(hp); err != nil || ap.Port() == 0 {
			errs = append(errs, fmt.Errorf("dns_upstreams: %q: want an address, with or without a port", u))
			continue
		}
		s.DNSUpstreams = append(s.DNSUpstreams, hp)
	}
	return s, errors.Join(errs...)
}
