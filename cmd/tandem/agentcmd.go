package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/tandem-ci/tandem/internal/agent"
	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/config"
	"github.com/tandem-ci/tandem/internal/hostdeps"
)

func agentCmd(g *globals) *cobra.Command {
	var token, tokenFile, hostID, memory string
	var vcpus float64
	var servers, emulate []string
	var sampleEvery, returnWithin time.Duration
	nf := &hostFlags{own: true}
	mf := &mirrorFlags{}
	cmd := &cobra.Command{
		Use:   "agent --server https://HOST:8443[,https://HOST2:8443…] --enroll-token TOKEN",
		Short: "Run this host's agent: dial the control plane, run the VMs it assigns",
		Long: `Run this host's agent. It dials out to the control plane over TLS (the
host needs no inbound port), pinning the control plane's certificate by the
fingerprint in the enrolment token. The first run enrols with a one-time
token (tandem enroll prints one) and keeps the credential it gets in
<data-dir>/agent/credentials.json; later runs need no token.

Several --server addresses are replicas of one control plane (one database,
one agents certificate): the agent enrols at the first that answers and
fails over between them, in order. Later runs may name a new set of
replicas that shares an address with the enrolled one.

Running jobs outlive the agent: SIGTERM (systemctl stop or restart, an
upgrade) lets them go on in their VMs, and the next agent started on the
same data directory takes them over, as it does after a crash or SIGKILL.
VMs still booting or waiting for their runner config are stopped. If no
agent comes back within --return-within, a watchdog stops the VMs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireRoot("tandem agent"); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if tokenFile != "" {
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return err
				}
				token = strings.TrimSpace(string(b))
			}
			if hostID == "" {
				var err error
				if hostID, err = defaultHostID(); err != nil {
					return err
				}
			}
			mc, mpw, err := mf.config()
			if err != nil {
				return err
			}
			memMiB := 0
			if memory != "" {
				m, err := config.ParseSize(memory)
				if err != nil {
					return fmt.Errorf("--memory: %w", err)
				}
				memMiB = int(m)
			}
			creds, err := agentCredentials(ctx, g, servers, token, hostID)
			if err != nil {
				return err
			}
			if returnWithin < config.MinReturnWithin {
				return fmt.Errorf("--return-within %s: at least %s (the agent must have time to start again)", returnWithin, config.MinReturnWithin)
			}
			if sampleEvery < 100*time.Millisecond {
				return fmt.Errorf("--sample-every %s: at least 100ms", sampleEvery)
			}
			agentStartupDoctor(ctx, g, nf, emulate)
			client := agentapi.NewClient(creds)
			client.Logger = g.log
			d := &agentapi.Daemon{Client: client, AgentVersion: version, Load: loadAvg, MemAvailable: memAvailable, Logger: g.log}
			var images *agent.Images
			ha, err := startHostAgent(ctx, g, hostSetup{net: nf, mirror: mc, mirrorPassword: mpw,
				vcpus: vcpus, memoryMiB: memMiB, emulate: emulate}, returnWithin,
				func(h *runningHost) agent.Config {
					d.Capacity = h.capacity
					// The images the control plane names come from it, checked.
					images = agent.NewImages(h.Host.Images, client, g.log)
					return agent.Config{HostID: creds.HostID, Sink: d.Send, LogSink: d.Log,
						SampleSink: d.Sample, SampleEvery: sampleEvery, Images: images}
				})
			if images != nil {
				defer images.Close() // after the VMs (ha.detach below)
			}
			if err != nil {
				return err
			}
			d.Bind(ha.Agent)
			dctx, dcancel := context.WithCancel(context.Background())
			defer dcancel()
			done := make(chan error, 1)
			go func() { done <- d.Run(dctx) }()
			fmt.Fprintf(os.Stderr, "tandem agent: %s\n", creds)
			select {
			case <-ctx.Done():
			case err = <-done:
				// Revoked, or refused: nothing will take the jobs over.
				ha.close()
				return err
			}
			// Let the jobs go for the next agent, and stop the rest while
			// the daemon can still report their ends.
			ha.detach()
			dcancel()
			<-done
			return nil
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&servers, "server", nil, "the control plane's agent address, https://HOST:PORT (needed to enrol); several, comma-separated or repeated, for replicas")
	f.StringVar(&token, "enroll-token", "", "one-time enrolment token (tandem enroll)")
	f.StringVar(&tokenFile, "enroll-token-file", "", "read the enrolment token from this file")
	f.StringVar(&hostID, "host-id", "", "this host's id (default: the hostname)")
	f.Float64Var(&vcpus, "vcpus", 0, "vCPUs VMs may use in all (default: all CPUs)")
	f.DurationVar(&sampleEvery, "sample-every", time.Second, "how often a running job's VM is sampled for its resource profile (at least 100ms)")
	f.StringVar(&memory, "memory", "", "memory VMs may use in all, e.g. 64GiB (default: all but 1 GiB)")
	f.StringSliceVar(&emulate, "emulate", nil, "foreign architectures to offer under emulation (arm64, amd64)")
	f.DurationVar(&returnWithin, "return-within", config.DefaultReturnWithin, "how long running jobs' VMs wait for the agent to come back after it stops or dies (a restart, an upgrade) before a watchdog stops them")
	nf.add(cmd)
	nf.addPolicy(cmd)
	mf.add(cmd, true)
	return cmd
}

// agentCredentials loads this host's credentials, enrolling first if there
// are none, and takes in the control-plane addresses servers names.
func agentCredentials(ctx context.Context, g *globals, servers []string, token, hostID string) (agentapi.Credentials, error) {
	path := filepath.Join(g.dataDir, "agent", "credentials.json")
	addrs, err := agentapi.ParseAddrs(servers)
	if err != nil {
		return agentapi.Credentials{}, fmt.Errorf("--server: %w", err)
	}
	creds, err := agentapi.LoadCredentials(path)
	switch {
	case err == nil:
		return updateServers(g, path, creds, addrs)
	case !errors.Is(err, fs.ErrNotExist):
		return creds, err
	}
	if len(addrs) == 0 || token == "" {
		return creds, errors.New("this host is not enrolled: give --server and --enroll-token (tandem enroll prints one)")
	}
	if creds, err = agentapi.EnrollFirst(ctx, addrs, token, hostID); err != nil {
		return creds, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return creds, err
	}
	return creds, creds.Save(path)
}

// updateServers saves the addresses given (if any) in enrolled
// credentials when they differ from the enrolled ones (withServers).
func updateServers(g *globals, path string, creds agentapi.Credentials, addrs []string) (agentapi.Credentials, error) {
	next, err := withServers(creds, addrs)
	if err != nil {
		return creds, fmt.Errorf("%w: remove %s to enrol again", err, path)
	}
	if slices.Equal(next.Addrs(), creds.Addrs()) {
		return creds, nil
	}
	if err := next.Save(path); err != nil {
		return creds, err
	}
	g.log.Info("control-plane addresses updated", "was", creds.Addrs(), "now", next.Addrs())
	return next, nil
}

// withServers returns creds with the control-plane addresses addrs (parsed:
// agentapi.ParseAddrs). None, or the enrolled set in any order, changes
// nothing. A set that shares an address with the enrolled one is the same
// control plane (replicas on one database, which knows the credential), so
// it replaces the enrolled addresses, in its order. A disjoint set is
// another control plane, which needs its own enrolment.
func withServers(creds agentapi.Credentials, addrs []string) (agentapi.Credentials, error) {
	enrolled := creds.Addrs()
	for i, a := range enrolled {
		enrolled[i] = agentapi.CanonAddr(a)
	}
	shared := false
	for _, a := range addrs {
		shared = shared || slices.Contains(enrolled, a)
	}
	switch {
	case len(addrs) == 0:
		return creds, nil
	case !shared:
		return creds, fmt.Errorf("this host is enrolled with %s, not %s",
			strings.Join(creds.Addrs(), ", "), strings.Join(addrs, ", "))
	case sameSet(addrs, enrolled):
		return creds, nil
	}
	creds.Server, creds.Servers = addrs[0], slices.Clone(addrs[1:])
	return creds, nil
}

// sameSet reports whether a and b hold the same strings, in any order.
func sameSet(a, b []string) bool {
	a, b = slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b))
	return slices.Equal(a, b)
}

// localCapacity returns what this host offers VMs: vcpus and memMiB, or
// when zero the whole host (memory less 1 GiB), its native architecture and
// the emulated ones asked for; the free disk of a directory is read at
// each call.
func localCapacity(vcpus float64, memMiB int, emulate []string) (func(dir string) agentapi.Capacity, error) {
	limits, err := hostLimits()
	if err != nil {
		return nil, err
	}
	c := agentapi.Capacity{VCPUs: float64(limits.VCPUs), MemoryMiB: limits.MemoryMiB - 1024}
	if vcpus > 0 {
		c.VCPUs = vcpus
	}
	if memMiB > 0 {
		c.MemoryMiB = memMiB
	}
	if c.MemoryMiB < 256 {
		return nil, fmt.Errorf("only %d MiB of memory for VMs", c.MemoryMiB)
	}
	native := arch.Host()
	c.Arches = []agentapi.ArchSupport{{Arch: native}}
	for _, name := range emulate {
		a := arch.Arch(name)
		if !a.IsMachine() {
			return nil, fmt.Errorf("--emulate: %q is not amd64 or arm64", name)
		}
		if a != native {
			c.Arches = append(c.Arches, agentapi.ArchSupport{Arch: a, Emulated: true})
		}
	}
	// A host offers only the architectures it can boot.
	for _, a := range c.Arches {
		if err := hostdeps.Check(hostdeps.QEMU(string(a.Arch))); err != nil {
			return nil, fmt.Errorf("running %s VMs: %w", a.Arch, err)
		}
	}
	return func(dir string) agentapi.Capacity {
		out := c
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil {
			out.DiskFreeMiB = int64(st.Bavail) * int64(st.Bsize) >> 20
			out.DiskMiB = out.DiskFreeMiB + vmDisksMiB(filepath.Join(dir, "state", "vms"))
		}
		return out
	}, nil
}

// vmDisksMiB is what the VMs' disks under vms hold now (their overlays'
// allocated blocks): free space they already took, which placement counts
// as theirs.
func vmDisksMiB(vms string) int64 {
	var n int64
	files, _ := filepath.Glob(filepath.Join(vms, "vm-*", "run", "overlay.qcow2"))
	for _, f := range files {
		var st unix.Stat_t
		if unix.Stat(f, &st) == nil {
			n += st.Blocks * 512
		}
	}
	return n >> 20
}

// memAvailable is the host's available memory in MiB (0 if unreadable).
func memAvailable() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			var kb int
			fmt.Sscanf(strings.TrimSpace(rest), "%d", &kb)
			return kb >> 10
		}
	}
	return 0
}

// loadAvg is the host's one-minute load average (0 if unreadable).
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	var l float64
	fmt.Sscanf(string(b), "%f", &l)
	return l
}
