// Package qemu is the QEMU back end of vm.Driver: `-M microvm` for amd64
// guests and `-M virt` for arm64 guests, under KVM or TCG.
//
// Every VM lives in <StateDir>/vms/<id>/: its record (vm.json), its qcow2
// overlay over the read-only base disk, its console log, QEMU's log, and the
// QMP and guest-channel sockets. QEMU runs in its own session so that a
// Ctrl-C aimed at the caller does not reach it behind the caller's back; the
// caller decides (Spec.DieWithOwner) whether it must die with its creator.
// Nothing a VM uses is anonymous: the directory, the QEMU process (found by
// its -name and its sockets' paths), the cgroup and, outside this package, the
// TAP device and address lease are all named after the VM id, which is how
// Destroy and the leak collector find them.
package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/fsutil"
	"github.com/tandem-ci/tandem/internal/hostdeps"
	"github.com/tandem-ci/tandem/internal/vm"
)

// Config configures the driver.
type Config struct {
	StateDir string // required; VMs live under StateDir/vms
	Limits   vm.Limits
	Logger   *slog.Logger
	// AllowUncapped starts VMs that cgroups cannot cap (no memory or pids
	// controller, say), with a warning; without it such a VM fails to
	// start, saying why.
	AllowUncapped bool
	// ConsoleLimit is how much of its serial console a VM may write
	// (default 64 MiB); past it the VM is stopped (failure.ConsoleLimit).
	ConsoleLimit int64
}

// DefaultConsoleLimit bounds a VM's console log.
const DefaultConsoleLimit = 64 << 20

// Driver implements vm.Driver with QEMU.
type Driver struct {
	stateDir string
	limits   vm.Limits
	log      *slog.Logger
	cg       *cgroups
	// allowUncapped: Config.AllowUncapped. ioDevice is the disk the state
	// lives on, "MAJ:MIN" ("" if not a block device: no I/O caps).
	allowUncapped bool
	ioDevice      string
	consoleLimit  int64
	warned        sync.Once

	mu   sync.Mutex
	live map[string]*instance // handles this process holds
}

var _ vm.Driver = (*Driver)(nil)

// New returns a driver. It creates StateDir if needed.
func New(cfg Config) (*Driver, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("qemu driver: state dir is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "vms"), 0o700); err != nil {
		return nil, fmt.Errorf("qemu driver: %w", err)
	}
	d := &Driver{
		stateDir:      cfg.StateDir,
		limits:        cfg.Limits,
		log:           cfg.Logger,
		cg:            newCgroups(cfg.StateDir),
		allowUncapped: cfg.AllowUncapped,
		consoleLimit:  cfg.ConsoleLimit,
		live:          map[string]*instance{},
	}
	if d.consoleLimit <= 0 {
		d.consoleLimit = DefaultConsoleLimit
	}
	if dev, err := diskOf(cfg.StateDir); err == nil {
		d.ioDevice = dev
	} else {
		d.log.Debug("VM disk I/O cannot be capped", "err", err)
	}
	return d, nil
}

// warnUncapped says once that VMs run without (some of) their caps.
func (d *Driver) warnUncapped(err error) {
	d.warned.Do(func() {
		d.log.Warn("VMS RUN UNCAPPED: cgroups cannot cap them, and --allow-uncapped lets them run anyway", "err", err)
	})
}

// Capped reports why VMs could not be capped here, or "" when they can.
func (d *Driver) Capped() string { return d.cg.missing }

// Capabilities implements vm.Driver.
func (d *Driver) Capabilities() vm.Capabilities {
	return vm.Capabilities{Limits: d.limits, RootDevice: RootDevice}
}

// Name implements vm.Driver.
func (d *Driver) Name() string { return "qemu" }

func (d *Driver) vmDir(id string) string { return filepath.Join(d.stateDir, "vms", id) }

// record is vm.json: what a later process needs to find and reclaim the VM.
type record struct {
	Spec      vm.Spec   `json:"spec"`
	Created   time.Time `json:"created"`
	UID       int       `json:"uid"` // QEMU's, the VM's own (jail.go)
	PID       int       `json:"pid,omitempty"`
	StartTime uint64    `json:"pid_start_time,omitempty"` // /proc/PID/stat field 22, against PID reuse
}

func (d *Driver) writeRecord(id string, r record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(d.vmDir(id), "vm.json"), b, 0o600)
}

func (d *Driver) readRecord(id string) (record, error) {
	var r record
	b, err := os.ReadFile(filepath.Join(d.vmDir(id), "vm.json"))
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("vm %s: corrupt record: %w", id, err)
	}
	return r, nil
}

// Create implements vm.Driver.
func (d *Driver) Create(ctx context.Context, s vm.Spec) (vm.Instance, error) {
	if err := s.Validate(d.limits); err != nil {
		return nil, err
	}
	if err := hostdeps.Check(hostdeps.QEMU(string(s.Arch))); err != nil {
		return nil, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	for _, f := range []string{s.Kernel, s.Initrd, s.BaseDisk} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("vm %s: %w", s.ID, err)
		}
	}
	dir := d.vmDir(s.ID)
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("vm %s already exists", s.ID)
		}
		return nil, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	in := d.newInstance(s, time.Now().UTC())
	ok := false
	defer func() {
		if !ok {
			in.Destroy(context.WithoutCancel(ctx))
		}
	}()
	d.mu.Lock()
	in.uid = vmUID(s.ID, d.takenUIDs())
	err := d.writeRecord(s.ID, record{Spec: s, Created: in.created, UID: in.uid})
	d.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("vm %s: write record: %w", s.ID, err)
	}
	run := filepath.Dir(in.paths.Console)
	if err := os.Mkdir(run, 0o700); err != nil {
		return nil, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	if s.BaseDisk != "" {
		base, err := filepath.Abs(s.BaseDisk)
		if err != nil {
			return nil, err
		}
		out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2",
			"-F", "raw", "-b", base, in.paths.Disk).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("vm %s: create overlay: %v: %s", s.ID, err, out)
		}
		if err := os.Chown(in.paths.Disk, in.uid, in.uid); err != nil {
			return nil, fmt.Errorf("vm %s: %w", s.ID, err)
		}
	}
	if err := os.Chown(run, in.uid, in.uid); err != nil {
		return nil, fmt.Errorf("vm %s: %w", s.ID, err)
	}
	ok = true
	d.track(in)
	return in, nil
}

// newInstance lays out a VM's directory: the record and QEMU's log in it
// (the driver's, root's), and in its run/ what QEMU writes (the overlay,
// console, sockets), owned by the VM's own uid.
func (d *Driver) newInstance(s vm.Spec, created time.Time) *instance {
	dir := d.vmDir(s.ID)
	run := filepath.Join(dir, "run")
	p := Paths{
		Console: filepath.Join(run, "console.log"),
		Guest:   filepath.Join(run, "guest.sock"),
		QMP:     filepath.Join(run, "qmp.sock"),
		PIDFile: filepath.Join(run, "qemu.pid"),
	}
	if s.BaseDisk != "" {
		p.Disk = filepath.Join(run, "overlay.qcow2")
	}
	w := s.CPUWeight
	if w == 0 {
		w = vm.CPUWeightNormal
	}
	return &instance{d: d, spec: s, dir: dir, paths: p, created: created, done: make(chan struct{}), weight: w}
}

func (d *Driver) track(in *instance) {
	d.mu.Lock()
	d.live[in.spec.ID] = in
	d.mu.Unlock()
}

func (d *Driver) untrack(id string) {
	d.mu.Lock()
	delete(d.live, id)
	d.mu.Unlock()
}

// Get implements vm.Driver.
func (d *Driver) Get(ctx context.Context, id string) (vm.Instance, error) {
	if !vm.ValidID(id) {
		return nil, fmt.Errorf("%w: invalid id %q", vm.ErrNotFound, id)
	}
	d.mu.Lock()
	in := d.live[id]
	d.mu.Unlock()
	if in != nil {
		return in, nil
	}
	return d.attach(ctx, id)
}

// attach builds a handle on a VM from its record and, if its QEMU still
// runs, watches that process.
func (d *Driver) attach(ctx context.Context, id string) (*instance, error) {
	r, err := d.readRecord(id)
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(d.vmDir(id)); serr != nil {
			return nil, fmt.Errorf("%w: %s", vm.ErrNotFound, id)
		}
		// A directory without a record: Create died before writing it.
		r = record{Spec: vm.Spec{ID: id}}
	} else if err != nil {
		// A corrupt record still names a VM to reclaim.
		d.log.Warn("vm record unreadable; the vm can only be destroyed", "vm", id, "err", err)
		r = record{Spec: vm.Spec{ID: id}}
	}
	r.Spec.ID = id
	in := d.newInstance(r.Spec, r.Created)
	in.uid = r.UID
	pid := r.PID
	if pid == 0 || !sameProcess(pid, r.StartTime) {
		pid = 0
	}
	if pid == 0 {
		// QEMU may have started after the record was last written: look for it.
		pid = findQEMU(d.stateDir, id)
	}
	if pid != 0 {
		if err := in.watchForeign(ctx, pid); err != nil {
			d.log.Warn("cannot watch leftover qemu", "vm", id, "pid", pid, "err", err)
		}
	} else if r.PID != 0 {
		in.markStopped(vm.ExitStatus{Reason: "unknown", ExitCode: -1})
	}
	d.track(in)
	return in, nil
}

// List implements vm.Driver.
func (d *Driver) List(ctx context.Context) ([]vm.Info, error) {
	ins, err := d.Recover(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]vm.Info, len(ins))
	for i, in := range ins {
		out[i] = in.Info()
	}
	return out, nil
}

// Recover implements vm.Driver.
func (d *Driver) Recover(ctx context.Context) ([]vm.Instance, error) {
	ids, err := d.ids()
	if err != nil {
		return nil, err
	}
	var out []vm.Instance
	for _, id := range ids {
		in, err := d.Get(ctx, id)
		if err != nil {
			if errors.Is(err, vm.ErrNotFound) {
				continue // destroyed meanwhile
			}
			return nil, err
		}
		out = append(out, in)
	}
	return out, nil
}

// Close implements vm.Driver: it drops this process's QMP connections (QEMU
// serves one client at a time) and forgets its handles; the VMs run on.
func (d *Driver) Close() error {
	d.mu.Lock()
	live := d.live
	d.live = map[string]*instance{}
	d.mu.Unlock()
	for _, in := range live {
		in.mu.Lock()
		if in.qmp != nil {
			in.qmp.close()
			in.qmp = nil
		}
		in.mu.Unlock()
	}
	return nil
}

// ids lists VM ids with state on this host: directories under vms/ and QEMU
// processes of ours whose directory is gone.
func (d *Driver) ids() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(d.stateDir, "vms"))
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	seen := map[string]bool{}
	for _, e := range ents {
		if e.IsDir() && vm.ValidID(e.Name()) {
			seen[e.Name()] = true
		}
	}
	for id, pid := range scanQEMU(d.stateDir) {
		if !seen[id] {
			// A QEMU whose directory was removed under it: recreate the
			// directory so the VM can be listed and destroyed like any other.
			d.log.Warn("found a qemu process without state; it will be reclaimed", "vm", id, "pid", pid)
			if err := os.MkdirAll(d.vmDir(id), 0o700); err == nil {
				seen[id] = true
			}
		}
	}
	for _, id := range d.cg.list() {
		if vm.ValidID(id) && !seen[id] {
			// A cgroup outliving its VM (a crash mid-Destroy): adopt it for reclaiming.
			if err := os.MkdirAll(d.vmDir(id), 0o700); err == nil {
				seen[id] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(seen)), nil
}
