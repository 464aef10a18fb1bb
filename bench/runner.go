package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/vm"
)

// StartOptions configure the runner-start benchmark: how long a VM of Image
// takes from Run to its job's first output, against a VM of BaselineImage
// in the same run, on the same accelerator.
type StartOptions struct {
	N             int // VMs per side
	Arch          arch.Arch
	Accel         vm.Accel
	VCPUs         float64
	MemoryMiB     int
	Image         string // default runner-<arch>
	BaselineImage string // default test-<arch>
}

// StartReport is the result. "Ready" is the guest agent's Hello; "started"
// is the first byte of output from the job's process, which runs as the
// image's runner account (root in the test image), as its runner would.
type StartReport struct {
	Arch            arch.Arch `json:"arch"`
	Accel           vm.Accel  `json:"accel"`
	Image           string    `json:"image"`
	BaselineImage   string    `json:"baseline_image"`
	N               int       `json:"n"`
	StartedP50MS    float64   `json:"started_p50_ms"`
	StartedP95MS    float64   `json:"started_p95_ms"`
	ReadyP50MS      float64   `json:"ready_p50_ms"`
	BaseStartedP50  float64   `json:"baseline_started_p50_ms"`
	BaseStartedP95  float64   `json:"baseline_started_p95_ms"`
	BaseReadyP50MS  float64   `json:"baseline_ready_p50_ms"`
	Ratio           float64   `json:"ratio"` // started p50 / baseline started p50
	ImageRunnerUser string    `json:"image_runner_user"`
}

// RunnerStart runs the runner-start benchmark on h, alternating the sides
// so that drift in the machine's load falls on both.
func RunnerStart(ctx context.Context, h *jobvm.Host, o StartOptions) (*StartReport, error) {
	if o.N < 1 {
		return nil, fmt.Errorf("n must be at least 1")
	}
	if o.Image == "" {
		o.Image = "runner-" + string(o.Arch)
	}
	if o.BaselineImage == "" {
		o.BaselineImage = "test-" + string(o.Arch)
	}
	rep := &StartReport{Arch: o.Arch, N: o.N}
	users := map[string]string{}
	for _, ref := range []string{o.Image, o.BaselineImage} {
		im, err := h.Images.Resolve(ref)
		if err != nil {
			return nil, err
		}
		if im.Manifest.Runner != nil {
			users[ref] = im.Manifest.Runner.User
		}
		if ref == o.Image {
			rep.Image = im.ID
		} else {
			rep.BaselineImage = im.ID
		}
	}
	rep.ImageRunnerUser = users[o.Image]
	var started, ready, bStarted, bReady []float64
	for i := 0; i < o.N; i++ {
		for _, side := range []string{o.Image, o.BaselineImage} {
			s, r, accel, err := startOnce(ctx, h, o, side, users[side])
			if err != nil {
				return nil, fmt.Errorf("%s: %w", side, err)
			}
			rep.Accel = accel
			if side == o.Image {
				started, ready = append(started, s), append(ready, r)
			} else {
				bStarted, bReady = append(bStarted, s), append(bReady, r)
			}
		}
	}
	rep.StartedP50MS, rep.StartedP95MS, rep.ReadyP50MS = pct(started, 50), pct(started, 95), pct(ready, 50)
	rep.BaseStartedP50, rep.BaseStartedP95, rep.BaseReadyP50MS = pct(bStarted, 50), pct(bStarted, 95), pct(bReady, 50)
	rep.Ratio = round2(rep.StartedP50MS / rep.BaseStartedP50)
	return rep, nil
}

// startOnce runs one VM of image and returns the milliseconds from Run to
// the job's first output and to the guest's Hello.
func startOnce(ctx context.Context, h *jobvm.Host, o StartOptions, image, user string) (started, ready float64, accel vm.Accel, err error) {
	fb := &firstByte{}
	t0 := time.Now()
	var readyAt time.Time
	res, err := h.Run(ctx, jobvm.Request{
		Arch: o.Arch, VCPUs: o.VCPUs, MemoryMiB: o.MemoryMiB, Image: image, Accel: o.Accel,
		Argv: []string{"/bin/sh", "-c", "echo started"}, User: user,
		Stdout: fb, Stderr: fb, Owner: vm.ProcessOwner(), DieWithOwner: true,
		OnReady: func(vm.Instance) { readyAt = time.Now() },
	})
	if err != nil {
		return 0, 0, "", err
	}
	if res.Failure != "" || res.ExitCode != 0 {
		return 0, 0, "", fmt.Errorf("run failed: %s %s (exit %d)", res.Failure, res.Detail, res.ExitCode)
	}
	at := fb.at()
	if at.IsZero() {
		return 0, 0, "", fmt.Errorf("the job printed nothing")
	}
	return ms(at.Sub(t0)), ms(readyAt.Sub(t0)), res.Accel, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// firstByte remembers when the first output arrived.
type firstByte struct {
	mu sync.Mutex
	t  time.Time
}

func (f *firstByte) Write(p []byte) (int, error) {
	f.mu.Lock()
	if f.t.IsZero() && len(p) > 0 {
		f.t = time.Now()
	}
	f.mu.Unlock()
	return len(p), nil
}

func (f *firstByte) at() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}
