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
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/agent"
	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/config"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/vm"
	"github.com/tandem-ci/tandem/internal/vm/qemu"
)

// hostFlags configure the host's VM network.
type hostFlags struct {
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
	// allowUncapped runs VMs that cgroups cannot cap; ioPerVCPU caps VMs'
	// disk I/O.
	allowUncapped bool
	ioPerVCPU     config.IOPerVCPU
	// existing joins the network only if it is set up; if not, the host
	// has none (it reclaims VMs, and starts none: a watchdog, gc
	// --abandoned).
	existing bool
}

func (n *hostFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&n.bridge, "bridge", "tandem0", "bridge the VMs' TAP devices join")
	cmd.Flags().StringVar(&n.subnet, "subnet", "172.30.0.0/24", "IPv4 subnet for VM addresses; the bridge takes its first address")
	cmd.Flags().BoolVar(&n.noNetwork, "no-network", false, "give VMs no network interface")
	cmd.Flags().BoolVar(&n.allowUncapped, "allow-uncapped", false, "run VMs though cgroups cannot cap their memory and tasks here (unsafe: a VM may take the host's memory)")
}

// joinArgs renders, as flags add defines, what newHost needs to join this
// host's network as it is (own false): the bridge and subnet, or
// --no-network. A process that joins an agent's network (its watchdog)
// gets them; the policy flags are left out, for joining keeps the rules
// there.
func (n *hostFlags) joinArgs() []string {
	if n.noNetwork {
		return []string{"--no-network"}
	}
	return []string{"--bridge=" + n.bridge, "--subnet=" + n.subnet}
}

// addPolicy adds the flags of what VMs may reach (for the agent; tandem up
// reads agent.network).
func (n *hostFlags) addPolicy(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringArrayVar(&n.network.Allow, "allow-net", nil, "a CIDR[:port] every VM may reach though it is in a denied range (an internal cache); repeatable")
	f.StringArrayVar(&n.network.Deny, "deny-net", nil, "a further IPv4 CIDR no VM may reach; repeatable")
	f.StringVar(&n.network.HostFirewall, "host-firewall", "add", "a host firewall whose forward chain drops: add (accept the VM bridge's traffic there) or refuse (fail)")
	f.StringArrayVar(&n.network.DNSUpstreams, "dns-upstream", nil, "a resolver for the VMs' DNS forwarder, ADDR[:PORT] (default: /etc/resolv.conf's); repeatable")
	f.Int64Var(&n.ioPerVCPU.ReadMBps, "io-read-mbps", 0, "cap each VM's disk reads at this many MiB/s per vCPU (0: uncapped)")
	f.Int64Var(&n.ioPerVCPU.WriteMBps, "io-write-mbps", 0, "cap each VM's disk writes at this many MiB/s per vCPU (0: uncapped)")
	f.Int64Var(&n.ioPerVCPU.ReadIOPS, "io-read-iops", 0, "cap each VM's disk reads at this many operations/s per vCPU (0: uncapped)")
	f.Int64Var(&n.ioPerVCPU.WriteIOPS, "io-write-iops", 0, "cap each VM's disk writes at this many operations/s per vCPU (0: uncapped)")
}

// newHost wires the parts one host needs to run jobs in VMs: the QEMU
// driver, the image store, and unless turned off the VM network, isolated,
// with the DNS forwarder VMs resolve through. close stops the forwarder.
func newHost(ctx context.Context, g *globals, nf *hostFlags) (h *jobvm.Host, close func(), err error) {
	close = func() {}
	state := filepath.Join(g.dataDir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, close, err
	}
	limits, err := hostLimits()
	if err != nil {
		return nil, close, err
	}
	allowUncapped := nf != nil && nf.allowUncapped
	drv, err := qemu.New(qemu.Config{StateDir: state, Limits: limits, Logger: g.log, AllowUncapped: allowUncapped})
	if err != nil {
		return nil, close, err
	}
	if why := drv.Capped(); why != "" {
		if !allowUncapped {
			return nil, close, fmt.Errorf("VMs cannot be capped here (%s): a VM could take the host's memory; "+
				"fix the cgroups, or run them anyway with --allow-uncapped (tandem up: agent.allow_uncapped)", why)
		}
		g.log.Warn("VMS RUN UNCAPPED (--allow-uncapped): cgroups cannot cap their memory or tasks here", "why", why)
	}
	images, err := image.Open(filepath.Join(g.dataDir, "images"))
	if err != nil {
		return nil, close, err
	}
	h = &jobvm.Host{Driver: drv, Images: images, Log: g.log, StateDir: state}
	if nf != nil {
		h.IOPerVCPU = nf.ioPerVCPU.Limits()
	}
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
	close, err = h.SetUpNetwork(ctx, jobvm.Network{Bridge: nf.bridge, Subnet: subnet, StateDir: filepath.Join(state, "net"),
		Own: nf.own, MirrorPort: nf.mirrorPort, Allow: spec.Allow, Deny: spec.Deny, HostFirewall: spec.HostFirewall,
		DNSUpstreams: spec.DNSUpstreams, Existing: nf.existing, Logger: g.log})
	if errors.Is(err, jobvm.ErrNoNetwork) {
		g.log.Info("no VM network to join here: reclaiming VMs only", "bridge", nf.bridge)
		return h, func() {}, nil
	}
	if err != nil {
		return nil, func() {}, err
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

// parseMemory reads a VM's memory size (config.ParseSize: "512", "512MiB",
// "2GiB", ...), which must be more than nothing.
func parseMemory(s string) (int, error) {
	m, err := config.ParseSize(s)
	if err != nil {
		return 0, err
	}
	if m <= 0 {
		return 0, fmt.Errorf("memory size %q is nothing (want e.g. 512MiB or 2GiB)", s)
	}
	return int(m), nil
}

// hostSetup is what a host that runs jobs is told, by tandem agent's flags
// or by tandem up's config.
type hostSetup struct {
	net            *hostFlags
	mirror         config.Mirror
	mirrorPassword config.Secret
	vcpus          float64 // for VMs in all; 0: every CPU
	memoryMiB      int     // for VMs in all; 0: all but 1 GiB
	emulate        []string
	// keep, if set, is what the host's reclaiming of leftovers must keep
	// besides the VMs of live owners (jobvm.Host.Collect).
	keep func(vm.Info) bool
}

// runningHost is a host that startHost brought up.
type runningHost struct {
	*jobvm.Host
	// capacity is what the host offers now (its free disk changes).
	capacity func() agentapi.Capacity
	// close stops the mirror, then the host's network services; call it
	// after the VMs are gone.
	close func()
}

// startHost brings up what tandem agent and tandem up both run on a host:
// the VM host (driver, images, isolated network) with whatever a killed
// predecessor left behind reclaimed first, and the registry mirror. What
// the host offers is checked before anything starts.
func startHost(ctx context.Context, g *globals, s hostSetup) (_ *runningHost, err error) {
	capacity, err := localCapacity(s.vcpus, s.memoryMiB, s.emulate)
	if err != nil {
		return nil, err
	}
	if s.mirror.On() {
		s.net.mirrorPort = s.mirror.Port
	}
	h, closeHost, err := newHost(ctx, g, s.net)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			closeHost()
		}
	}()
	if ids, err := h.Collect(ctx, s.keep); err != nil {
		return nil, fmt.Errorf("reclaiming leftovers: %w", err)
	} else if len(ids) > 0 {
		g.log.Warn("reclaimed VMs a previous run left behind", "vms", ids)
	}
	stopMirror, err := startMirror(ctx, g, h, s.mirror, s.mirrorPassword, g.dataDir, true)
	if err != nil {
		return nil, err
	}
	return &runningHost{Host: h, capacity: func() agentapi.Capacity { return capacity(g.dataDir) },
		close: func() { stopMirror(); closeHost() }}, nil
}

// hostAgent is this host's agent, as tandem agent and tandem up run it:
// its jobs outlive it (see "Jobs that outlive the agent" in
// internal/agent). It holds the host's agent lease, which owns its VMs
// and keeps them alive while it lives and for ReturnWithin after, and a
// watchdog stops them if no agent has come back by then.
type hostAgent struct {
	*agent.Agent
	host  *runningHost
	lease *vm.Lease
	// returnWithin is how long its VMs wait for the next agent.
	returnWithin time.Duration
}

// startHostAgent brings up the host (startHost) and its agent, configured
// by configure (the sinks, host id, images), which it calls once the host
// is up, and taking over the jobs an earlier agent on this data directory
// left running, before anything can reach it.
func startHostAgent(ctx context.Context, g *globals, s hostSetup, returnWithin time.Duration,
	configure func(*runningHost) agent.Config) (_ *hostAgent, err error) {
	dir := filepath.Join(g.dataDir, "agent")
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	lease, err := vm.AcquireLease(lctx, filepath.Join(dir, "lease"), returnWithin)
	cancel()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			lease.Release(true) // whatever an earlier agent left runs on, for the next try
		}
	}()
	if err := spawnWatchdog(g, lease.Path(), s.net); err != nil {
		g.log.Warn("no watchdog: if this agent goes and no other comes back, its VMs run until their jobs end", "err", err)
	}
	runDir := filepath.Join(dir, "runs")
	if s.keep, err = agent.Keep(runDir, lease.Owner()); err != nil {
		return nil, fmt.Errorf("the jobs an earlier agent left: %w", err)
	}
	h, err := startHost(ctx, g, s)
	if err != nil {
		return nil, err
	}
	cfg := configure(h)
	cfg.Host, cfg.RunDir, cfg.Owner, cfg.DetachTimeout = h.Host, runDir, lease.Owner(), returnWithin
	cfg.LogDir, cfg.Logger = filepath.Join(g.dataDir, "logs", "runners"), g.log
	ag, err := agent.New(cfg)
	if err != nil {
		h.close()
		return nil, err
	}
	t0 := time.Now()
	taken, err := ag.Recover(ctx)
	if len(taken) > 0 {
		g.log.Info("took over the jobs an earlier agent left running", "runners", taken)
		go func() {
			if ag.WaitTakenOver(ctx) == nil {
				g.log.Info("every job taken over is attached again", "jobs", len(taken), "ms", time.Since(t0).Milliseconds(),
					"since_process_start_ms", time.Since(processStarted).Milliseconds())
			}
		}()
	}
	if err != nil {
		ag.Detach()
		h.close()
		return nil, err
	}
	return &hostAgent{Agent: ag, host: h, lease: lease, returnWithin: returnWithin}, nil
}

// detach lets go of the agent's jobs for the next agent (an upgrade, a
// restart) and stops the rest, then the host's services.
func (x *hostAgent) detach() {
	n := x.Detach()
	x.host.close()
	x.lease.Release(n > 0)
	if n > 0 {
		fmt.Fprintf(os.Stderr, "tandem: %d job(s) run on in their VMs: start the agent again within %s to take them over\n",
			n, x.returnWithin)
	}
}

// close stops every VM, then the host's services: the agent is not coming
// back (the control plane revoked it).
func (x *hostAgent) close() {
	x.Close()
	x.host.close()
	x.lease.Release(false)
}

// defaultHostID is this host's id when none is given: its hostname, in
// lower case as host ids are.
func defaultHostID() (string, error) {
	h, err := os.Hostname()
	if err != nil {
		return "", err
	}
	return strings.ToLower(h), nil
}
