package doctor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/config"
	"github.com/tandem-ci/tandem/internal/hostdeps"
	"github.com/tandem-ci/tandem/internal/hostnet"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/vm"
	"github.com/tandem-ci/tandem/internal/vm/qemu"
)

const (
	tcgCost = "VMs run under TCG, QEMU's software emulation, 10-50x slower than under KVM"
	fixKVM  = "on bare metal: enable VT-x/AMD-V in the firmware and load kvm_intel or kvm_amd; " +
		"in a cloud VM: choose an instance type with nested virtualisation, or a metal one. Jobs run meanwhile, slower"
)

// checkKVM boots the driver's KVM probe (qemu.Driver.ResolveAccel), whose
// verdict the agent caches and uses too: the device opening proves nothing.
func checkKVM(ctx context.Context, e *Env) Result {
	host := arch.Host()
	im, _ := e.image(host)
	if im == nil {
		if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err != nil {
			return warn(fmt.Sprintf("/dev/kvm: %v: %s", unwrapPath(err), tcgCost), fixKVM)
		} else {
			f.Close()
		}
		return warn(fmt.Sprintf("not probed: no %s image to boot the probe (/dev/kvm opens, which does not prove that KVM runs guests)", host),
			fmt.Sprintf("build one (tandem image build --kind test --arch %s) and run tandem doctor again", host))
	}
	state, cleanup, err := e.stateDir()
	if err != nil {
		return warn("not probed: "+err.Error(), "give a writable --data-dir")
	}
	defer cleanup()
	// The driver's own loud warning would repeat this check's result.
	drv, err := qemu.New(qemu.Config{StateDir: state, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return warn("not probed: "+err.Error(), "give a writable --data-dir")
	}
	defer drv.Close()
	choice, err := drv.ResolveAccel(ctx, vm.AccelAuto, host, im.Kernel(), im.Initrd())
	switch {
	case err != nil:
		return warn("probe: "+err.Error()+": "+tcgCost, fixKVM)
	case choice.Accel == vm.AccelKVM:
		return ok("KVM runs guests: " + choice.Reason)
	}
	return warn("KVM cannot run guests here ("+strings.TrimPrefix(choice.Reason, "kvm unusable: ")+"): "+tcgCost, fixKVM)
}

// stateDir is the driver's state directory in the data dir (where the
// probe's verdict is cached for the agent), or a temporary one when there
// is no data dir yet.
func (e *Env) stateDir() (string, func(), error) {
	if _, err := os.Stat(e.DataDir); err == nil {
		return filepath.Join(e.DataDir, "state"), func() {}, nil
	}
	d, err := os.MkdirTemp("", "tandem-doctor-")
	return d, func() { os.RemoveAll(d) }, err
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// checkCgroups asks the driver's cgroup discovery (qemu.Cgroups) what
// caps VMs can have.
func checkCgroups(_ context.Context, e *Env) Result {
	cg := qemu.Cgroups()
	ver := "cgroup v1"
	if cg.V2 {
		ver = "cgroup v2"
	}
	have := ver + ", controllers: " + strings.Join(cg.Controllers, ", ")
	if len(cg.Controllers) == 0 {
		have = ver + ", no usable controller"
	}
	fix := "cgroup v2: enable them for Tandem (`echo '+cpu +memory +pids +io' > /sys/fs/cgroup/cgroup.subtree_control`; " +
		"under systemd, Delegate=yes in the unit); cgroup v1: mount the cpu, memory and pids hierarchies"
	if cg.Missing != "" {
		if e.Config != nil && e.Config.Agent.AllowUncapped {
			return warn(have+": "+cg.Missing+"; VMs run uncapped (agent.allow_uncapped)", fix)
		}
		return fail(have+": "+cg.Missing+": the agent refuses to run VMs it cannot cap",
			fix+"; or accept uncapped VMs with agent.allow_uncapped: true (tandem agent --allow-uncapped)")
	}
	if !slices.Contains(cg.Controllers, "io") {
		if e.Config != nil && e.Config.Agent.IOPerVCPU != (config.IOPerVCPU{}) {
			return warn(have+": no io controller, so agent.io_per_vcpu cannot cap disk I/O", fix)
		}
		return ok(have + " (no io: disk I/O caps unavailable, none configured)")
	}
	return ok(have)
}

// checkQEMU finds the QEMU binaries of every architecture offered, from
// hostdeps' table (the agent refuses an architecture without them).
func checkQEMU(_ context.Context, e *Env) Result {
	var found, missing, pkgs, fixes []string
	var user []string // emulated arches' image builds lack qemu-user
	for _, a := range e.arches() {
		for _, s := range hostdeps.Probe(hostdeps.QEMU(string(a))) {
			if slices.Contains(found, s.Path) {
				continue
			}
			if s.Err != nil {
				missing = append(missing, fmt.Sprintf("%s (%s VMs): %v", s.Name, a, s.Err))
				if !slices.Contains(pkgs, s.Package) {
					pkgs = append(pkgs, s.Package)
				}
				if s.Fix != "" {
					fixes = append(fixes, s.Fix)
				}
				continue
			}
			found = append(found, s.Path)
		}
		if string(a) != hostdeps.NativeArch() {
			// Emulated VMs need only qemu-system; building their runner
			// image here runs its package scripts through qemu-user.
			b := hostdeps.Binfmt(string(a))
			if st := hostdeps.Probe([]hostdeps.Requirement{b}); st[0].Err != nil {
				user = append(user, fmt.Sprintf("%s (to build %s runner images here): %v", b.Name, a, st[0].Err))
				fixes = append(fixes, b.Fix)
			}
		}
	}
	if len(missing) > 0 {
		return fail("missing: "+strings.Join(append(missing, user...), "; "), strings.Join(append([]string{"apt-get install " + strings.Join(pkgs, " ")}, fixes...), "; "))
	}
	if len(user) > 0 {
		return warn(strings.Join(found, ", ")+"; missing: "+strings.Join(user, "; "), strings.Join(fixes, "; "))
	}
	return ok(strings.Join(found, ", "))
}

// image resolves the image VMs of a boot from: the config's
// runner.image_<arch>, or test-<arch>.
func (e *Env) image(a arch.Arch) (*image.Image, string) {
	ref := "test-" + string(a)
	if e.Config != nil {
		switch a {
		case arch.AMD64:
			ref = e.Config.Runner.ImageAMD64
		case arch.ARM64:
			ref = e.Config.Runner.ImageARM64
		}
	}
	dir := filepath.Join(e.DataDir, "images")
	if _, err := os.Stat(dir); err != nil {
		return nil, ref
	}
	st, err := image.Open(dir)
	if err != nil {
		return nil, ref
	}
	im, err := st.Resolve(ref)
	if err != nil {
		return nil, ref
	}
	return im, ref
}

// checkImages finds the image of each architecture offered, and of each
// label the config gives its own (runner.images).
func checkImages(_ context.Context, e *Env) Result {
	var have, missing, fixes []string
	for _, a := range e.arches() {
		im, ref := e.image(a)
		if im == nil {
			missing = append(missing, fmt.Sprintf("%s (%s)", ref, a))
			fixes = append(fixes, buildFix(ref, a))
			continue
		}
		have = append(have, fmt.Sprintf("%s (%s)", ref, im.ID))
	}
	if e.Config != nil {
		dir := filepath.Join(e.DataDir, "images")
		for _, label := range slices.Sorted(maps.Keys(e.Config.Runner.Images)) {
			ref := e.Config.Runner.Images[label]
			var err error = fs.ErrNotExist
			if _, serr := os.Stat(dir); serr == nil {
				if st, oerr := image.Open(dir); oerr == nil {
					_, err = st.Resolve(ref)
				}
			}
			if err != nil {
				missing = append(missing, fmt.Sprintf("%s (runner.images, for %s)", ref, label))
				fixes = append(fixes, "build or fetch "+ref+" (tandem image build; tandem image list shows what is here)")
			}
		}
	}
	where := filepath.Join(e.DataDir, "images")
	if len(missing) > 0 {
		return fail("not in "+where+": "+strings.Join(missing, ", "), strings.Join(fixes, "; "))
	}
	return ok(strings.Join(have, ", ") + " in " + where)
}

func buildFix(ref string, a arch.Arch) string {
	if ref == "test-"+string(a) {
		return fmt.Sprintf("tandem image build --kind test --arch %s", a)
	}
	return fmt.Sprintf("build the runner image %s: tandem image build --kind runner --arch %s --runner-tarball actions-runner-linux-….tar.gz "+
		"(or point runner.image_%s at an image that is here: tandem image list)", ref, a, a)
}

// checkDisk looks at the free space of the data directory's filesystem.
func checkDisk(_ context.Context, e *Env) Result {
	dir := e.DataDir
	for dir != "/" {
		if _, err := os.Stat(dir); err == nil {
			break
		}
		dir = filepath.Dir(dir)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return warn(fmt.Sprintf("%s: %v", dir, err), "check --data-dir")
	}
	free := int64(st.Bavail) * int64(st.Bsize) >> 20
	// A VM needs its disk's writes (runner.disk_per_vcpu × its vCPUs) on
	// top of the images; say 2 GiB when uncapped.
	need := int64(2048)
	what := "one VM's writes (2 GiB)"
	if c := e.Config; c != nil && c.Runner.DiskPerVCPU > 0 {
		need = int64(float64(c.Runner.DiskPerVCPU) * max(c.Labels.DefaultVCPUs, 1))
		what = fmt.Sprintf("one default VM's writes (runner.disk_per_vcpu × %g vCPUs = %d MiB)", max(c.Labels.DefaultVCPUs, 1), need)
	}
	detail := fmt.Sprintf("%d MiB free on %s's filesystem", free, e.DataDir)
	fix := "free space there, or give Tandem a larger filesystem (--data-dir, or data_dir in the config)"
	switch {
	case free < need:
		return fail(detail+": less than "+what, fix)
	case free < 10*1024:
		return warn(detail+": less than 10 GiB, room for few VMs and images", fix)
	}
	return ok(detail)
}

// checkMemory compares the host's memory with what VMs are configured to
// take: agent.memory and the default VM's size.
func checkMemory(_ context.Context, e *Env) Result {
	if e.MemAvailableMiB == nil || e.MemTotalMiB == nil {
		return Result{}
	}
	avail, total := e.MemAvailableMiB(), e.MemTotalMiB()
	vmMiB, fromCfg := 4096, "the default VM size (4 GiB)"
	detail := fmt.Sprintf("%d MiB available of %d MiB", avail, total)
	if c := e.Config; c != nil {
		vmMiB = int(c.Labels.DefaultMemory)
		fromCfg = fmt.Sprintf("labels.default_memory (%d MiB)", vmMiB)
		if c.Agent.Memory > 0 && int(c.Agent.Memory) > total-1024 {
			return fail(fmt.Sprintf("%s: agent.memory %d MiB is more than the host can give VMs (all but 1 GiB)", detail, c.Agent.Memory),
				fmt.Sprintf("lower agent.memory to at most %d MiB, or leave it 0 (the whole host less 1 GiB)", max(total-1024, 0)))
		}
	}
	const overhead = 256 // QEMU's own, beside the guest's memory
	switch {
	case total-1024 < 256:
		return fail(detail+": less than 256 MiB for VMs after 1 GiB for the host", "run Tandem on a host with more memory")
	case avail < vmMiB+overhead:
		return warn(fmt.Sprintf("%s: not enough for one VM of %s now", detail, fromCfg),
			"free memory (stop what else runs here), or make VMs smaller (labels.default_memory, or runs-on labels with less memory)")
	}
	return ok(fmt.Sprintf("%s: room for %d VM(s) of %s now", detail, avail/(vmMiB+overhead), fromCfg))
}

// checkTUN opens /dev/net/tun, which every VM's TAP device needs.
func checkTUN(_ context.Context, e *Env) Result {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if errors.Is(err, fs.ErrPermission) && !e.Root {
		return needsRoot("opening /dev/net/tun")
	}
	if err != nil {
		return fail(fmt.Sprintf("/dev/net/tun: %v: VMs get no network", unwrapPath(err)),
			"load the tun module (modprobe tun) or create the device (mkdir -p /dev/net && mknod /dev/net/tun c 10 200)")
	}
	f.Close()
	return ok("/dev/net/tun opens")
}

// checkBridge makes a Linux bridge in a network namespace of its own,
// which is gone when the check ends: the host's own links are untouched.
func checkBridge(_ context.Context, e *Env) Result {
	if !e.Root {
		return needsRoot("making a test bridge")
	}
	errc := make(chan error, 1)
	go func() {
		// The thread enters a new network namespace and is never
		// unlocked: it ends with this goroutine, and the namespace with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("a network namespace for the test: %w", err)
			return
		}
		errc <- netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "tdmdoctor0"}})
	}()
	if err := <-errc; err != nil {
		return fail("cannot make a Linux bridge: "+err.Error(), "load the bridge module (modprobe bridge); the kernel needs CONFIG_BRIDGE")
	}
	return ok("Linux bridges can be made")
}

// checkNftables finds nft, and asks the kernel for its tables.
func checkNftables(ctx context.Context, e *Env) Result {
	path, err := hostdeps.Find("nft")
	if err != nil {
		return fail("nft: "+err.Error(), "apt-get install nftables")
	}
	if !e.Root {
		return needsRoot("asking the kernel for nftables")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, path, "list", "tables").CombinedOutput(); err != nil {
		return fail(fmt.Sprintf("%s list tables: %v: %s", path, err, strings.TrimSpace(string(out))),
			"the kernel needs nf_tables (modprobe nf_tables; CONFIG_NF_TABLES, CONFIG_NFT_NAT, CONFIG_NFT_CT)")
	}
	return ok(path + ": the kernel's nf_tables answers")
}

// checkIPForward reads net.ipv4.ip_forward.
func checkIPForward(_ context.Context, e *Env) Result {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return warn("net.ipv4.ip_forward: "+err.Error(), "")
	}
	if strings.TrimSpace(string(b)) == "1" {
		return ok("net.ipv4.ip_forward = 1")
	}
	return warn("net.ipv4.ip_forward = 0: the agent turns it on when it sets up the VM network, but whatever turned it off may do so again",
		"sysctl -w net.ipv4.ip_forward=1, and keep it: echo net.ipv4.ip_forward=1 > /etc/sysctl.d/90-tandem.conf")
}

// checkHostFirewall looks for forward chains whose policy drops, as
// hostnet does when it sets up the VM network (hostnet.DropForwardChains),
// and says what agent.network.host_firewall will do about them.
func checkHostFirewall(ctx context.Context, e *Env) Result {
	if _, err := hostdeps.Find("nft"); err != nil {
		return warn("not checked: no nft", "apt-get install nftables")
	}
	if !e.Root {
		return needsRoot("listing nftables chains")
	}
	bridge, mode := "tandem0", hostnet.FirewallAdd
	if e.Bridge != "" {
		bridge = e.Bridge
	}
	if e.HostFirewall != "" {
		mode = e.HostFirewall
	}
	if c := e.Config; c != nil {
		bridge = c.Agent.Bridge
		if c.Agent.Network.HostFirewall != "" {
			mode = c.Agent.Network.HostFirewall
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	chains, err := hostnet.DropForwardChains(ctx, bridge)
	if err != nil {
		return warn("cannot list nftables chains: "+err.Error(), "see the nftables check")
	}
	if len(chains) == 0 {
		return ok("no forward chain drops by default")
	}
	detail := fmt.Sprintf("forward chain(s) %s drop by default: VM traffic would be dropped there", strings.Join(chains, ", "))
	if mode == hostnet.FirewallRefuse {
		return fail(detail+", and agent.network.host_firewall: refuse stops the agent", hostnet.FirewallFix(bridge, chains[0]))
	}
	return warn(detail+"; the agent inserts rules accepting "+bridge+"'s traffic at their top (agent.network.host_firewall: add)",
		fmt.Sprintf("nothing to do; to keep Tandem out of that table, accept %s's traffic in it yourself "+
			"(e.g. `nft insert rule %s iifname %q accept` and the same with oifname and ct state established,related) and set agent.network.host_firewall: refuse",
			bridge, chains[0], bridge))
}
