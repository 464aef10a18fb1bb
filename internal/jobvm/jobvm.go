// Package jobvm runs one job in one fresh microVM and leaves nothing behind:
// it resolves and verifies the image, picks the accelerator, attaches the VM
// to the host network, boots it, hands the job to tandem-guest, streams its
// output, and on every exit path destroys the VM and everything named after
// it; but a resumable job that its caller detaches runs on, for a later
// process to take over (Host.Reattach). `tandem run` is a thin shell around
// it; the host agent uses it too.
package jobvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/hostnet"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/vm"
)

// Host is what one machine needs to run jobs in VMs.
type Host struct {
	Driver vm.Driver
	Images *image.Store
	Net    *hostnet.Network // nil: VMs get no NIC
	Log    *slog.Logger
	// StateDir holds the host lock that orders Collect against Run across
	// processes; "" disables it (one process only).
	StateDir string
	// Mirror, if set, is the host's registry mirror as the VMs reach it
	// (http://<bridge address>:<port>): runner images configure their
	// Docker daemon to pull Docker Hub images through it.
	Mirror string
	// DNS, if set, is the host's DNS forwarder, which knows what names the
	// VMs resolved (internal/vmdns); recorded flows get their names from it.
	DNS DNSNames
	// IOPerVCPU caps each VM's disk I/O per vCPU (zero: uncapped).
	IOPerVCPU vm.IOLimits
}

// DNSNames is what a DNS forwarder remembers of a VM.
type DNSNames interface {
	Names(vmID string) map[netip.Addr]string
	Refused(vmID string) map[string]int
	Forget(vmID string)
}

// Request describes one job.
type Request struct {
	Arch      arch.Arch
	VCPUs     float64
	MemoryMiB int
	Image     string // image ref; "" means "test-<arch>"
	Accel     vm.Accel

	// Argv is the job's program and arguments, run as User ("" root).
	// No Argv: the image's runner (its manifest's Runner), as its user.
	Argv    []string
	User    string
	Env     map[string]string
	Dir     string
	Timeout time.Duration // 0: none

	Stdout, Stderr io.Writer

	// Egress is the VM's egress policy (zero: open).
	Egress egress.Policy
	// DiskMiB caps what the job may write to its disk (0: the image's
	// free space); past it the VM is stopped, Failure failure.DiskFull.
	DiskMiB int

	Owner        string
	DieWithOwner bool

	// BootTimeout bounds QEMU start → guest ready; 0 picks a default for the
	// accelerator. HeartbeatTimeout is how long a running guest may stay
	// silent before it is declared hung; 0 picks a default.
	BootTimeout      time.Duration
	HeartbeatTimeout time.Duration

	// OnCreate, if set, is called with the VM once it has been created, before
	// it starts (tests use it to reach the instance).
	OnCreate func(vm.Instance)
	// OnSample, if set, receives the VM's resource samples while the job
	// runs, one every SampleEvery (0: DefaultSampleEvery): host side from
	// the driver and the VM's TAP device, guest side from tandem-guest.
	// It is called from the goroutine that relays the guest's frames, and
	// must not block.
	OnSample    func(profile.Sample)
	SampleEvery time.Duration
	// OnReady, if set, is called once the guest agent is ready, before the
	// job is sent (benchmarks read QEMU's memory there; tests freeze the guest).
	OnReady func(vm.Instance)
	// Await, if set, is called once the guest agent is ready, after
	// OnReady, and the job is sent only when it returns: the agent boots a
	// runner's VM while the control plane is still fetching the runner's
	// config. The variables it returns are added to Env (secrets go this
	// way: they never touch the host's disk or logs). An error ends the run
	// with Failure "cancelled" and the error as Detail.
	Await func(context.Context) (map[string]string, error)
	// Standby, if set, makes the VM one booted ahead of its job (a warm
	// pool's): it yields the host's CPUs to VMs running jobs until
	// Standby.Claim, or until the job is sent (see Standby).
	Standby *Standby
	// OnExec, if set, is called once the guest agent is ready, after
	// OnReady, with the Execer that runs exec sessions in the VM while it
	// lives (`tandem ssh`); its Done is closed when the VM is going away.
	// It must not block.
	OnExec func(*Execer)
	// AfterExit, if set, may keep the VM up after its job has exited, for
	// someone to look around in it (exec sessions go on): the guest is
	// told at the job's start to wait after its exit, and AfterExit,
	// called with the job's exit code, says until when to keep it (zero,
	// or a time past: not at all). It may block while it finds out. The
	// guest is watched meanwhile; ctx ending lets it go at once. A guest
	// too old to wait gets no such call.
	AfterExit func(ctx context.Context, exitCode int) time.Time
	// Resumable asks for a job that can outlive this process: Run's ctx
	// ending with cause ErrDetached lets go of it, VM and network left as
	// they are, and a later process takes it over with Reattach (the VM
	// must then not die with its owner: DieWithOwner false). A guest that
	// cannot resume jobs runs it as any other, and a detach cancels it.
	// DetachTimeout bounds how long the guest keeps the VM after the job
	// has ended while no host was attached (0: guest.DefaultDetachTimeout).
	Resumable     bool
	DetachTimeout time.Duration
	// OnSent, if set, is called once a Resumable job has been sent to a
	// guest that can resume it, before any of its output is relayed, with
	// what Reattach needs to take the job over (Offset 0). A caller that
	// keeps it where a later process finds it can take the job over even
	// after this process was killed, with the offset it has written since
	// (see Detached). A job sent to a guest that cannot resume gets no call.
	OnSent func(Detached)
}

// maxBoots is how many times Run boots a VM whose guest kernel lost its
// timer while booting (failure.GuestClock) before it gives up.
const maxBoots = 3

// Timings are the phases of one run, in milliseconds.
type Timings struct {
	Prepare  int64 `json:"prepare"`  // image, accelerator, network, disk
	Boot     int64 `json:"boot"`     // QEMU start → guest agent ready
	Run      int64 `json:"run"`      // job sent → exit reported
	Teardown int64 `json:"teardown"` // VM and its resources gone
	Total    int64 `json:"total"`
}

// Result is the outcome of a run that got as far as a VM.
type Result struct {
	ExitCode    int          `json:"exit_code"` // the job's; meaningful when Failure is "" or "timeout"
	Failure     failure.Kind `json:"failure,omitempty"`
	Detail      string       `json:"detail,omitempty"` // what went wrong, for humans
	VMID        string       `json:"vm_id"`
	Arch        arch.Arch    `json:"arch"`
	Accel       vm.Accel     `json:"accel"`
	AccelReason string       `json:"accel_reason"`
	Emulated    bool         `json:"emulated"`
	Image       string       `json:"image"`
	GuestKernel string       `json:"guest_kernel,omitempty"`
	Timings     Timings      `json:"timings_ms"`
	// BootRetries counts boots given up because the guest kernel lost its
	// timer (failure.GuestClock) before one came up.
	BootRetries int `json:"boot_retries,omitempty"`
	// Egress is what the VM did under an auditing or allowlist policy;
	// nil for an open one.
	Egress *egress.Record `json:"egress,omitempty"`
	// KeptUntil is until when the VM was kept after its job's exit
	// (Request.AfterExit), when it was.
	KeptUntil time.Time `json:"kept_until,omitzero"`
}

// ErrBadRequest marks errors in the request itself.
var ErrBadRequest = errors.New("bad request")

// Run runs one job in a fresh VM. A non-nil error means no job ran (bad
// input, missing image, no room); a job that ran and failed is a Result with
// Failure set. Either way nothing is left on the host, but for a Resumable
// job detached (ctx ended with cause ErrDetached once the job was sent):
// then the error is a *Detached, which Reattach takes, and the job, its VM
// and its network are left running.
func (h *Host) Run(ctx context.Context, r Request) (res Result, err error) {
	t0 := time.Now()
	if !r.Arch.IsMachine() {
		return res, fmt.Errorf("%w: %w %q", ErrBadRequest, arch.ErrUnknown, r.Arch)
	}
	// What the host can never hold fails before anything is probed or made.
	if err := h.Driver.Capabilities().Limits.Check(r.VCPUs, r.MemoryMiB); err != nil {
		return res, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	if r.Image == "" {
		r.Image = "test-" + string(r.Arch)
	}
	if r.Egress.Mode == "" {
		r.Egress.Mode = egress.Open
	}
	im, err := h.Images.Resolve(r.Image)
	if err != nil {
		return res, err
	}
	if im.Manifest.Arch != string(r.Arch) {
		return res, fmt.Errorf("%w: image %s is for %s, not %s", ErrBadRequest, r.Image, im.Manifest.Arch, r.Arch)
	}
	if len(r.Argv) == 0 {
		ri := im.Manifest.Runner
		if ri == nil || len(ri.Command) == 0 {
			return res, fmt.Errorf("%w: no command given, and image %s (%s) has no runner of its own", ErrBadRequest, r.Image, im.ID)
		}
		r.Argv, r.User = ri.Command, ri.User
	}
	if err := im.Verify(); err != nil {
		return res, err
	}
	choice, err := h.Driver.ResolveAccel(ctx, r.Accel, r.Arch, im.Kernel(), im.Initrd())
	if err != nil {
		return res, err
	}
	spec := vm.Spec{
		ID: vm.NewID(), Arch: r.Arch, VCPUs: r.VCPUs, MemoryMiB: r.MemoryMiB,
		Kernel: im.Kernel(), Initrd: im.Initrd(), BaseDisk: im.Rootfs(),
		Accel: choice.Accel, Owner: r.Owner, DieWithOwner: r.DieWithOwner,
		IO: h.IOPerVCPU.Scaled(r.VCPUs), DiskMiB: r.DiskMiB,
	}
	if r.Standby != nil {
		spec.CPUWeight = vm.CPUWeightIdle
	}
	res = Result{VMID: spec.ID, Arch: r.Arch, Accel: choice.Accel, AccelReason: choice.Reason,
		Emulated: choice.Emulated, Image: im.ID}
	boot := guest.BootParams{Root: h.Driver.Capabilities().RootDevice, Hostname: spec.ID, Mirror: h.Mirror}

	// From here on, every path ends in teardown, but a detach.
	var inst vm.Instance
	var attached bool
	out := failed
	defer func() {
		r.Standby.attach(nil) // a late Claim finds no VM to raise
		if out != detached {
			if terr := h.finish(&res, inst, spec.ID, r.Egress.Mode, attached, out == reported); terr != nil {
				err = errors.Join(err, terr)
			}
		}
		res.Timings.Total = ms(time.Since(t0))
	}()
	unlock, err := h.hostLock(ctx, false)
	if err != nil {
		return res, err
	}
	defer func() {
		if unlock != nil {
			unlock()
		}
	}()
	if h.Net != nil {
		att, err := h.Net.Attach(ctx, spec.ID, r.Egress)
		attached = true // even a failed Attach may have leased: Detach is idempotent
		if err != nil {
			return res, fmt.Errorf("network: %w", err)
		}
		spec.NIC = &vm.NIC{TAP: att.TAP, MAC: att.MAC}
		boot.Addr, boot.Gateway, boot.DNS = att.Addr, att.Gateway, att.DNS
	}
	spec.Cmdline = boot.Cmdline()
	var s *session
	var tb time.Time
	for attempt := 1; ; attempt++ {
		inst, err = h.Driver.Create(ctx, spec)
		if err != nil {
			return res, err
		}
		if err := r.Standby.attach(inst); err != nil {
			h.Log.Warn("cannot raise a claimed VM's CPU weight; its job runs on", "vm", spec.ID, "err", err)
		}
		unlock()
		unlock = nil
		if attempt == 1 {
			if r.OnCreate != nil {
				r.OnCreate(inst)
			}
			res.Timings.Prepare = ms(time.Since(t0))
			tb = time.Now()
		}
		if err := inst.Start(ctx); err != nil {
			return res, err
		}
		s = &session{h: h, r: r, inst: inst, res: &res}
		err = s.boot(ctx, choice.Accel)
		var fe *FailureError
		if err == nil || !errors.As(err, &fe) || fe.Kind != failure.GuestClock || attempt == maxBoots {
			break
		}
		// The guest's kernel lost its only timer to a host stall (see
		// timerLost): this boot can never finish, and the next very
		// probably will. Same VM id, network and disk allowance.
		h.Log.Warn("the guest kernel lost its timer while booting (the host stalled it); booting the VM again",
			"vm", spec.ID, "attempt", attempt)
		res.BootRetries++
		res.Failure, res.Detail = "", ""
		r.Standby.attach(nil)
		if err := inst.Destroy(ctx); err != nil {
			return res, fmt.Errorf("destroying a VM to boot it again: %w", err)
		}
		inst = nil
		if unlock, err = h.hostLock(ctx, false); err != nil {
			return res, err
		}
	}
	if err != nil {
		return res, err
	}
	res.Timings.Boot = ms(time.Since(tb))
	if r.OnReady != nil {
		r.OnReady(inst)
	}
	if r.OnExec != nil {
		r.OnExec(s.exec)
	}
	if r.Await != nil {
		env, err := s.await(ctx, r.Await)
		if err != nil {
			return res, err
		}
		s.r.Env = mergeEnv(r.Env, env)
	}
	// The job is about to be sent: its VM is claimed, if its caller has
	// not said so already.
	if err := r.Standby.Claim(); err != nil {
		h.Log.Warn("cannot raise a claimed VM's CPU weight; its job runs on", "vm", spec.ID, "err", err)
	}

	s.profile()
	tr := time.Now()
	out = s.run(ctx, t0)
	res.Timings.Run = ms(time.Since(tr))
	if out == detached {
		return res, s.detached(t0, tr)
	}
	return res, nil
}

// finish records the VM's egress (mode) and tears the VM down, as the end
// of every run that is not detached; attached says whether it may have a
// network, reported whether its guest reported the job's exit.
func (h *Host) finish(res *Result, inst vm.Instance, id string, mode egress.Mode, attached, reported bool) error {
	tt := time.Now()
	if attached && mode.Records() {
		res.Egress = h.egressRecord(id, mode)
	}
	if h.DNS != nil {
		h.DNS.Forget(id)
	}
	err := h.teardown(inst, id, attached, reported)
	res.Timings.Teardown = ms(time.Since(tt))
	return err
}

// teardown destroys the VM and its network. A guest that reported its job's
// exit (reported) ends the VM by itself: it gets a moment to do so cleanly
// before Destroy kills whatever is left.
func (h *Host) teardown(inst vm.Instance, id string, attached, reported bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	if inst != nil {
		if reported && inst.Info().State == vm.StateRunning {
			wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
			inst.Wait(wctx)
			wcancel()
		}
		if err := inst.Destroy(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if attached && h.Net != nil {
		if err := h.Net.Detach(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("teardown of %s: %w", id, errors.Join(errs...))
	}
	return nil
}

// egressRecord reads what the VM's policy recorded, with the names its DNS
// answers gave, before the VM's rules go. A failure loses the record, not
// the run: it is logged.
func (h *Host) egressRecord(vmID string, mode egress.Mode) *egress.Record {
	rec := &egress.Record{Mode: mode}
	if h.Net == nil {
		return rec
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	flows, err := h.Net.Flows(ctx, vmID)
	if err != nil {
		h.Log.Warn("reading the VM's egress flows failed", "vm", vmID, "err", err)
	}
	if h.DNS != nil {
		names := h.DNS.Names(vmID)
		for i := range flows {
			flows[i].Name = names[flows[i].Addr]
		}
		rec.Refused = h.DNS.Refused(vmID)
	}
	rec.Flows = flows
	rec.Bound()
	return rec
}

// mergeEnv returns base with extra's variables set, leaving base untouched.
func mergeEnv(base, extra map[string]string) map[string]string {
	if len(extra) == 0 {
		return base
	}
	env := make(map[string]string, len(base)+len(extra))
	for k, v := range base {
		env[k] = v
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

func ms(d time.Duration) int64 { return d.Milliseconds() }

// consoleTail returns the last n bytes of a VM's console log, reading no
// more of it than that.
func consoleTail(inst vm.Instance, n int) string {
	f, err := os.Open(inst.ConsoleLog())
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(fi.Size()-int64(n), 0)
	b := make([]byte, fi.Size()-off)
	m, _ := f.ReadAt(b, off)
	return string(b[:m])
}
