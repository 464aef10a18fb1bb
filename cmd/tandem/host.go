package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/config"
	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/hostnet"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/vm"
	"github.com/tandem-ci/tandem/internal/vm/qemu"
	"github.com/tandem-ci/tandem/internal/vmdns"
)

// netFlags configure the host's VM network.
type netFlags struct {
	bridge    string
	subnet    string
	noNetwork bool
	network   config.Network // holes, denied ranges, host firewall, DNS upstreams
	// own: this process owns the host's network (tandem agent, tandem up):
	// its rules replace what is there. Others (run, gc, bench) join an
	// agent's network as it is, or set it up if there is none.
	own bool
	// mirrorPort, if not 0, is the registry mirror's port on the bridge
	// address, which VMs may reach.
	mirrorPort int
}

func (n *netFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&n.bridge, "bridge", "tandem0", "bridge the VMs' TAP devices join")
	cmd.Flags().StringVar(&n.subnet, "subnet", "172.30.0.0/24", "IPv4 subnet for VM addresses; the bridge takes its first address")
	cmd.Flags().BoolVar(&n.noNetwork, "no-network", false, "give VMs no network interface")
}

// addPolicy adds the flags of what VMs may reach (for the agent; tandem up
// reads agent.network).
func (n *netFlags) addPolicy(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringArrayVar(&n.network.Allow, "allow-net", nil, "a CIDR[:port] every VM may reach though it is in a denied range (an internal cache); repeatable")
	f.StringArrayVar(&n.network.Deny, "deny-net", nil, "a further IPv4 CIDR no VM may reach; repeatable")
	f.StringVar(&n.network.HostFirewall, "host-firewall", "add", "a host firewall whose forward chain drops: add (accept the VM bridge's traffic there) or refuse (fail)")
	f.StringArrayVar(&n.network.DNSUpstreams, "dns-upstream", nil, "a resolver for the VMs' DNS forwarder, ADDR[:PORT] (default: /etc/resolv.conf's); repeatable")
}

// newHost wires the parts one host needs to run jobs in VMs: the QEMU
// driver, the image store, and unless turned off the VM network, isolated,
// with the DNS forwarder VMs resolve through. close stops the forwarder.
func newHost(ctx context.Context, g *globals, nf *netFlags) (h *jobvm.Host, close func(), err error) {
	close = func() {}
	state := filepath.Join(g.dataDir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, close, err
	}
	limits, err := hostLimits()
	if err != nil {
		return nil, close, err
	}
	drv, err := qemu.New(qemu.Config{StateDir: state, Limits: limits, Logger: g.log})
	if err != nil {
		return nil, close, err
	}
	images, err := image.Open(filepath.Join(g.dataDir, "images"))
	if err != nil {
		return nil, close, err
	}
	h = &jobvm.Host{Driver: drv, Images: images, Log: g.log, StateDir: state}
	if nf == nil || nf.noNetwork {
		return h, close, nil
	}
	subnet, err := netip.ParsePrefix(nf.subnet)
	if err != nil {
		return nil, close, fmt.Errorf("--subnet: %w", err)
	}
	spec, err := nf.network.Compile()
	if err != nil {
		return nil, close, err
	}
	// VMs resolve through the forwarder on the gateway address, and may
	// reach it and the mirror there: nothing else of the host.
	gw := hostnet.GatewayOf(subnet)
	ports := []hostnet.HostPort{{Proto: "udp", Port: 53}, {Proto: "tcp", Port: 53}}
	if nf.mirrorPort != 0 {
		ports = append(ports, hostnet.HostPort{Proto: "tcp", Port: uint16(nf.mirrorPort)})
	}
	n, err := hostnet.New(hostnet.Config{Bridge: nf.bridge, Subnet: subnet, StateDir: filepath.Join(state, "net"), NAT: true,
		DNS: []netip.Addr{gw}, HostPorts: ports, Allow: spec.Allow, Deny: spec.Deny, HostFirewall: spec.HostFirewall, Logger: g.log})
	if err != nil {
		return nil, close, err
	}
	setup := n.Join
	if nf.own {
		setup = n.Ensure
	}
	if err := setup(ctx); err != nil {
		return nil, close, fmt.Errorf("network: %w", err)
	}
	h.Net = n
	dns, err := vmdns.Start(vmdns.Config{
		Listen:    netip.AddrPortFrom(gw, 53).String(),
		Upstreams: spec.DNSUpstreams,
		Logger:    g.log,
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
		g.log.Debug("DNS for VMs is served by another process", "addr", gw)
	case err != nil:
		return nil, close, err
	default:
		h.DNS = dns
		close = func() { dns.Close() }
	}
	return h, close, nil
}

// hostLimits reads this host's CPU count and memory.
func hostLimits() (vm.Limits, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return vm.Limits{}, err
	}
	defer f.Close()
	l := vm.Limits{VCPUs: runtime.NumCPU()}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				return l, fmt.Errorf("parse /proc/meminfo: %w", err)
			}
			l.MemoryMiB = kb / 1024
		}
	}
	return l, sc.Err()
}

// parseMemory reads a size in MiB: "512", "512M", "512MiB", "2G", "2GiB".
func parseMemory(s string) (int, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := 1
	for _, suf := range []struct {
		s string
		m int
	}{{"GIB", 1024}, {"GB", 1024}, {"G", 1024}, {"MIB", 1}, {"MB", 1}, {"M", 1}} {
		if strings.HasSuffix(t, suf.s) {
			t, mult = strings.TrimSuffix(t, suf.s), suf.m
			break
		}
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("invalid memory size %q (e.g. 512M or 2G)", s)
	}
	return int(n * float64(mult)), nil
}
