package main

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/hostnet"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/vm"
	"github.com/tandem-ci/tandem/internal/vm/qemu"
)

// netFlags configure the host's VM network.
type netFlags struct {
	bridge    string
	subnet    string
	noNetwork bool
}

func (n *netFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&n.bridge, "bridge", "tandem0", "bridge the VMs' TAP devices join")
	cmd.Flags().StringVar(&n.subnet, "subnet", "172.30.0.0/24", "IPv4 subnet for VM addresses; the bridge takes its first address")
	cmd.Flags().BoolVar(&n.noNetwork, "no-network", false, "give VMs no network interface")
}

// newHost wires the parts one host needs to run jobs in VMs.
func newHost(ctx context.Context, g *globals, nf *netFlags) (*jobvm.Host, error) {
	state := filepath.Join(g.dataDir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, err
	}
	limits, err := hostLimits()
	if err != nil {
		return nil, err
	}
	drv, err := qemu.New(qemu.Config{StateDir: state, Limits: limits, Logger: g.log})
	if err != nil {
		return nil, err
	}
	images, err := image.Open(filepath.Join(g.dataDir, "images"))
	if err != nil {
		return nil, err
	}
	h := &jobvm.Host{Driver: drv, Images: images, Log: g.log, StateDir: state}
	if nf != nil && !nf.noNetwork {
		subnet, err := netip.ParsePrefix(nf.subnet)
		if err != nil {
			return nil, fmt.Errorf("--subnet: %w", err)
		}
		n, err := hostnet.New(hostnet.Config{Bridge: nf.bridge, Subnet: subnet, StateDir: filepath.Join(state, "net"), NAT: true})
		if err != nil {
			return nil, err
		}
		if err := n.Ensure(ctx); err != nil {
			return nil, fmt.Errorf("network: %w", err)
		}
		h.Net = n
	}
	return h, nil
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
