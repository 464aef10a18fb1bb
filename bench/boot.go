// Package bench measures Tandem against baselines in the same run.
//
// The boot benchmark times VM boots of the test image from "boot asked for"
// to "guest agent ready" (its Hello on the host↔guest channel), two ways:
//
//   - tandem: through jobvm.Host.Run, so including everything Tandem does for
//     a VM (image verification, accelerator choice, address lease and TAP,
//     copy-on-write overlay, cgroup, QMP);
//   - baseline: a bare qemu-system-* started by the benchmark itself with the
//     same kernel, initramfs, root image (snapshot=on), accelerator and flags
//     (qemu.Args), on a TAP prepared beforehand, timed to the same Hello.
//
// Runs alternate between the two so that drift in the machine's speed hits
// both sides alike.
package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/stats"
	"github.com/tandem-ci/tandem/internal/vm"
	"github.com/tandem-ci/tandem/internal/vm/qemu"
)

// BootOptions configure the boot benchmark.
type BootOptions struct {
	N           int   // boots per side and concurrency level
	Concurrency []int // e.g. 1, 4, 8
	Arch        arch.Arch
	Accel       vm.Accel
	VCPUs       float64
	MemoryMiB   int
	Image       string
	// ScratchDir holds the baseline's sockets and logs.
	ScratchDir string
}

// Level is the result at one concurrency.
type Level struct {
	Concurrency    int     `json:"concurrency"`
	N              int     `json:"n"`
	TandemP50MS    float64 `json:"tandem_p50_ms"`
	TandemP95MS    float64 `json:"tandem_p95_ms"`
	BaselineP50MS  float64 `json:"baseline_p50_ms"`
	BaselineP95MS  float64 `json:"baseline_p95_ms"`
	Ratio          float64 `json:"ratio"` // tandem p50 / baseline p50
	TandemRSSMiB   float64 `json:"tandem_qemu_rss_mib"`
	BaselineRSSMiB float64 `json:"baseline_qemu_rss_mib"`
}

// BootReport is the whole result. The first level's figures are repeated at
// the top for scripts.
type BootReport struct {
	Arch          arch.Arch `json:"arch"`
	Accel         vm.Accel  `json:"accel"`
	AccelReason   string    `json:"accel_reason"`
	Image         string    `json:"image"`
	TandemP50MS   float64   `json:"tandem_p50_ms"`
	TandemP95MS   float64   `json:"tandem_p95_ms"`
	BaselineP50MS float64   `json:"baseline_p50_ms"`
	BaselineP95MS float64   `json:"baseline_p95_ms"`
	Ratio         float64   `json:"ratio"`
	Levels        []Level   `json:"levels"`
}

// Boot runs the boot benchmark on h.
func Boot(ctx context.Context, h *jobvm.Host, o BootOptions) (*BootReport, error) {
	if o.N < 1 {
		return nil, fmt.Errorf("n must be at least 1")
	}
	if len(o.Concurrency) == 0 {
		o.Concurrency = []int{1}
	}
	if o.Image == "" {
		o.Image = "test-" + string(o.Arch)
	}
	im, err := h.Images.Resolve(o.Image)
	if err != nil {
		return nil, err
	}
	if err := im.Verify(); err != nil {
		return nil, err
	}
	choice, err := h.Driver.ResolveAccel(ctx, o.Accel, o.Arch, im.Kernel(), im.Initrd())
	if err != nil {
		return nil, err
	}
	rep := &BootReport{Arch: o.Arch, Accel: choice.Accel, AccelReason: choice.Reason, Image: im.ID}
	for _, c := range o.Concurrency {
		if c < 1 {
			return nil, fmt.Errorf("concurrency must be at least 1")
		}
		var tandem, base, tRSS, bRSS []float64
		var mu sync.Mutex
		for round := 0; round < o.N; round += c {
			k := min(c, o.N-round)
			// tandem side: k boots at once
			errs := parallel(k, func(int) error {
				d, rss, err := tandemBoot(ctx, h, o, choice.Accel)
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					tandem, tRSS = append(tandem, d), append(tRSS, rss)
				}
				return err
			})
			if errs != nil {
				return nil, fmt.Errorf("tandem boot: %w", errs)
			}
			errs = parallel(k, func(i int) error {
				d, rss, err := baselineBoot(ctx, h, o, im, choice.Accel, i)
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					base, bRSS = append(base, d), append(bRSS, rss)
				}
				return err
			})
			if errs != nil {
				return nil, fmt.Errorf("baseline boot: %w", errs)
			}
		}
		l := Level{Concurrency: c, N: len(tandem),
			TandemP50MS: pct(tandem, 50), TandemP95MS: pct(tandem, 95),
			BaselineP50MS: pct(base, 50), BaselineP95MS: pct(base, 95),
			TandemRSSMiB: pct(tRSS, 50), BaselineRSSMiB: pct(bRSS, 50)}
		l.Ratio = round2(l.TandemP50MS / l.BaselineP50MS)
		rep.Levels = append(rep.Levels, l)
	}
	first := rep.Levels[0]
	rep.TandemP50MS, rep.TandemP95MS = first.TandemP50MS, first.TandemP95MS
	rep.BaselineP50MS, rep.BaselineP95MS, rep.Ratio = first.BaselineP50MS, first.BaselineP95MS, first.Ratio
	return rep, nil
}

func parallel(n int, f func(i int) error) error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = f(i) })
	}
	wg.Wait()
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// tandemBoot times Run from its start to the guest's Hello (its prepare and
// boot phases) and reads QEMU's RSS at that moment.
func tandemBoot(ctx context.Context, h *jobvm.Host, o BootOptions, accel vm.Accel) (float64, float64, error) {
	var rss float64
	res, err := h.Run(ctx, jobvm.Request{
		Arch: o.Arch, VCPUs: o.VCPUs, MemoryMiB: o.MemoryMiB, Image: o.Image, Accel: accel,
		Argv: []string{"true"}, Owner: vm.ProcessOwner(), DieWithOwner: true,
		OnReady: func(in vm.Instance) { rss = rssMiB(in.Info().PID) },
	})
	if err != nil {
		return 0, 0, err
	}
	if res.Failure != "" || res.ExitCode != 0 {
		return 0, 0, fmt.Errorf("boot run failed: %s %s (exit %d)", res.Failure, res.Detail, res.ExitCode)
	}
	return float64(res.Timings.Prepare + res.Timings.Boot), rss, nil
}

// baselineBoot starts bare QEMU with the flags Tandem uses and times it to
// the guest's Hello. Its TAP is made before the clock starts.
func baselineBoot(ctx context.Context, h *jobvm.Host, o BootOptions, im *image.Image, accel vm.Accel, i int) (float64, float64, error) {
	spec := vm.Spec{ID: vm.NewID(), Arch: o.Arch, VCPUs: o.VCPUs, MemoryMiB: o.MemoryMiB,
		Kernel: im.Kernel(), Initrd: im.Initrd(), BaseDisk: im.Rootfs(), Accel: accel}
	boot := guest.BootParams{Root: qemu.RootDevice, Hostname: spec.ID}
	if h.Net != nil {
		att, err := h.Net.Attach(ctx, spec.ID, egress.Policy{Mode: egress.Open})
		defer h.Net.Detach(context.WithoutCancel(ctx), spec.ID)
		if err != nil {
			return 0, 0, err
		}
		spec.NIC = &vm.NIC{TAP: att.TAP, MAC: att.MAC}
		boot.Addr, boot.Gateway, boot.DNS = att.Addr, att.Gateway, att.DNS
	}
	spec.Cmdline = boot.Cmdline()
	dir, err := os.MkdirTemp(o.ScratchDir, "base-")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	p := qemu.Paths{Console: filepath.Join(dir, "console"), Guest: filepath.Join(dir, "guest.sock")}

	start := time.Now()
	cmd := exec.CommandContext(ctx, qemu.Binary(o.Arch), qemu.Args(spec, p)...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	bctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := waitHello(bctx, p.Guest); err != nil {
		return 0, 0, fmt.Errorf("baseline %d: %w (qemu: %s)", i, err, out.String())
	}
	d := float64(time.Since(start).Microseconds()) / 1000
	return d, rssMiB(cmd.Process.Pid), nil
}

func waitHello(ctx context.Context, sock string) error {
	var conn net.Conn
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", sock)
		if err == nil {
			conn = c
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	_, err := guest.NewConn(conn).ReadHello()
	return err
}

// rssMiB reads a process's resident memory.
func rssMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return round2(kb / 1024)
		}
	}
	return 0
}

// pct is the p-th percentile of xs, rounded to two places; 0 for none.
func pct(xs []float64, p float64) float64 { return round2(stats.Quantile(xs, p/100)) }

func round2(x float64) float64 { return float64(int64(x*100+0.5)) / 100 }
