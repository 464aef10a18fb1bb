package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/bench"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/hostdeps"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/vm"
)

func benchCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Benchmarks against baselines measured in the same run"}
	cmd.AddCommand(benchBootCmd(g), benchRunnerCmd(g))
	return cmd
}

func benchBootCmd(g *globals) *cobra.Command {
	var (
		n    int
		conc string
		vf   benchVMFlags
	)
	cmd := &cobra.Command{
		Use:   "boot",
		Short: "Time VM boots through Tandem against bare QEMU with the same kernel, image and flags",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var levels []int
			for _, s := range strings.Split(conc, ",") {
				c, err := strconv.Atoi(strings.TrimSpace(s))
				if err != nil || c < 1 {
					return fmt.Errorf("--concurrency %q: want a list of positive numbers such as 1,4,8", conc)
				}
				levels = append(levels, c)
			}
			a, ac, mem, h, err := vf.host(cmd, g, "tandem bench boot")
			if err != nil {
				return err
			}
			scratch := filepath.Join(g.dataDir, "state", "bench")
			if err := os.MkdirAll(scratch, 0o700); err != nil {
				return err
			}
			defer os.RemoveAll(scratch)
			rep, err := bench.Boot(cmd.Context(), h, bench.BootOptions{N: n, Concurrency: levels, Arch: a, Accel: ac,
				VCPUs: vf.cpus, MemoryMiB: mem, ScratchDir: scratch})
			if err != nil {
				return err
			}
			if vf.json {
				return printValue(os.Stdout, rep)
			}
			fmt.Printf("boot to guest agent ready, %s guest, %s (%s), image %s\n", rep.Arch, rep.Accel, rep.AccelReason, rep.Image)
			fmt.Printf("%-11s %4s %12s %12s %14s %14s %7s %10s %10s\n", "concurrency", "n", "tandem p50", "tandem p95", "baseline p50", "baseline p95", "ratio", "tandem RSS", "bare RSS")
			for _, l := range rep.Levels {
				fmt.Printf("%-11d %4d %10.0fms %10.0fms %12.0fms %12.0fms %7.2f %7.0f MiB %6.0f MiB\n", l.Concurrency, l.N,
					l.TandemP50MS, l.TandemP95MS, l.BaselineP50MS, l.BaselineP95MS, l.Ratio, l.TandemRSSMiB, l.BaselineRSSMiB)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&n, "n", 10, "boots per side at each concurrency")
	f.StringVar(&conc, "concurrency", "1", "comma-separated concurrency levels, e.g. 1,4,8")
	vf.add(cmd, 1, "256M")
	return cmd
}

func benchRunnerCmd(g *globals) *cobra.Command {
	var (
		n          int
		img, based string
		vf         benchVMFlags
	)
	cmd := &cobra.Command{
		Use:   "runner",
		Short: "Time a runner image's VMs to their runner's start against the test image's, in the same run",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			a, ac, mem, h, err := vf.host(cmd, g, "tandem bench runner")
			if err != nil {
				return err
			}
			rep, err := bench.RunnerStart(cmd.Context(), h, bench.StartOptions{N: n, Arch: a, Accel: ac, VCPUs: vf.cpus,
				MemoryMiB: mem, Image: img, BaselineImage: based})
			if err != nil {
				return err
			}
			if vf.json {
				return printValue(os.Stdout, rep)
			}
			fmt.Printf("VM start to the job's first output, %s guest, %s, n=%d each\n", rep.Arch, rep.Accel, rep.N)
			fmt.Printf("%-28s %12s %12s %14s\n", "image", "started p50", "started p95", "agent ready p50")
			fmt.Printf("%-28s %10.0fms %10.0fms %12.0fms\n", rep.Image+" (as "+orRoot(rep.ImageRunnerUser)+")", rep.StartedP50MS, rep.StartedP95MS, rep.ReadyP50MS)
			fmt.Printf("%-28s %10.0fms %10.0fms %12.0fms\n", rep.BaselineImage+" (as root)", rep.BaseStartedP50, rep.BaseStartedP95, rep.BaseReadyP50MS)
			fmt.Printf("ratio (started p50): %.2f\n", rep.Ratio)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&n, "n", 10, "VMs per image")
	f.StringVar(&img, "image", "", "the image measured (default runner-<arch>)")
	f.StringVar(&based, "baseline", "", "the image it is compared with (default test-<arch>)")
	vf.add(cmd, 2, "2G")
	return cmd
}

func orRoot(user string) string {
	if user == "" {
		return "root"
	}
	return user
}

// benchVMFlags are the VM, host and output flags the benchmarks share.
type benchVMFlags struct {
	arch, accel, memory string
	cpus                float64
	json                bool
	nf                  hostFlags
}

func (v *benchVMFlags) add(cmd *cobra.Command, cpus float64, memory string) {
	f := cmd.Flags()
	f.StringVar(&v.arch, "arch", string(arch.Host()), "guest architecture")
	f.StringVar(&v.accel, "accel", "auto", "auto, kvm or tcg (both sides use the same)")
	f.Float64Var(&v.cpus, "cpus", cpus, "vCPUs per VM")
	f.StringVar(&v.memory, "memory", memory, "memory per VM")
	f.BoolVar(&v.json, "json", false, "print JSON")
	v.nf.add(cmd)
}

// host checks the flags and sets up this host for a benchmark, leftovers
// of earlier runs reclaimed.
func (v *benchVMFlags) host(cmd *cobra.Command, g *globals, what string) (arch.Arch, vm.Accel, int, *jobvm.Host, error) {
	a, err := arch.Parse(v.arch)
	if err != nil {
		return "", "", 0, nil, err
	}
	ac, err := vm.ParseAccel(v.accel)
	if err != nil {
		return "", "", 0, nil, err
	}
	mem, err := parseMemory(v.memory)
	if err != nil {
		return "", "", 0, nil, fmt.Errorf("--memory: %w", err)
	}
	if err := requireRoot(what); err != nil {
		return "", "", 0, nil, err
	}
	if err := hostdeps.Check(hostdeps.QEMU(string(a))); err != nil {
		return "", "", 0, nil, err
	}
	h, _, err := newHost(cmd.Context(), g, &v.nf) // (the process's exit closes it)
	if err != nil {
		return "", "", 0, nil, err
	}
	if _, err := h.Collect(cmd.Context(), nil); err != nil {
		g.log.Warn("reclaiming leftovers failed", "err", err)
	}
	return a, ac, mem, h, nil
}
