package image

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The runner image: Debian 12 with systemd, Docker and build tools, a
// `runner` account, tandem-guest as a systemd service, the kernel's
// modules, and GitHub's runner from a tarball the operator gives.
//
// The tree is made by mmdebstrap, Debian's successor to debootstrap: one
// apt run resolves and downloads everything (debootstrap takes minutes
// more), it honours the host's apt configuration (proxies), it builds a
// foreign architecture through qemu-user and binfmt_misc, and with
// SOURCE_DATE_EPOCH it is made to give the same tree for the same packages.
const (
	runnerSuite   = "bookworm"
	runnerUser    = "runner"
	runnerUID     = 1001 // as on GitHub's hosted runners
	runnerHome    = "/home/runner"
	actionsRunner = runnerHome + "/actions-runner" // GitHub's runner, from --runner-tarball
	// runnerEntry starts GitHub's runner with the JIT config tandem-guest
	// got from the host; see runnerEntryScript.
	runnerEntry    = "/usr/local/bin/tandem-runner"
	fakeRunnerPath = "/usr/bin/tandem-fakerunner"
	guestPath      = "/usr/sbin/tandem-guest"
	// debugPauseLink is tandem-guest as the workflow step
	// tandem-debug-pause (tandem-guest's pause.go), in both images.
	debugPauseLink = "/usr/local/bin/tandem-debug-pause"
	// ContentsFile lists every file of a runner image's root filesystem
	// with its sha256, mode and owner.
	ContentsFile = "rootfs-contents.txt"
	// runnerRootfsMiB is the default size of a runner image's root file
	// system: sparse, so only what is written takes space, and each VM
	// writes into its own overlay.
	runnerRootfsMiB = 10240
)

// runnerPackages are installed into every runner image, besides what
// Debian's minbase variant has.
var runnerPackages = []string{
	"systemd", "systemd-sysv", "dbus", "kmod", "iproute2", "iptables", "procps", "netbase",
	"docker.io", "containerd", "git", "curl", "ca-certificates", "build-essential", "sudo",
	"openssh-client", "xz-utils", "zstd", "unzip", "jq",
	// Debian's kernel enables AppArmor: Docker then needs apparmor_parser
	// to load its containers' profile.
	"apparmor",
	// What GitHub's runner (.NET) needs, as its installdependencies.sh has it.
	"libicu72", "libkrb5-3", "zlib1g", "libssl3", "liblttng-ust1",
}

// maskedUnits are units a runner VM does not want at boot: timers for a
// machine that lives for days, consoles nobody logs in on.
var maskedUnits = []string{
	"apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
	"e2scrub_reap.service", "fstrim.timer", "getty.target", "systemd-pstore.service",
	"systemd-update-utmp.service", "systemd-update-utmp-runlevel.service",
	// Loads every profile in /etc/apparmor.d at boot; Docker loads its own.
	"apparmor.service",
	// On the way to sysinit.target, which Docker waits for: a module
	// loaded ahead (the static /dev nodes load loop, fuse and dm-mod when
	// first opened), users made already at build, a journal kept only in
	// memory (nothing to flush).
	"modprobe@loop.service", "modprobe@fuse.service", "modprobe@dm_mod.service",
	"modprobe@drm.service", "modprobe@efi_pstore.service", "modprobe@configfs.service",
	"systemd-sysusers.service", "systemd-journal-flush.service",
	// Run beside tandem-guest as it starts, for nothing: a seed saved for
	// a next boot no VM has (the kernel's generator is ready before init),
	// a remount of the root as fstab says (fstab is empty; tandem-guest
	// mounted it read-write), modules listed in /etc/modules (none; the
	// rest load on demand).
	"systemd-random-seed.service", "systemd-remount-fs.service", "systemd-modules-load.service",
}

// maskedGenerators are systemd generators a runner VM has nothing for:
// systemd runs every generator before it loads a unit, so each costs its
// start-up on the way to tandem-guest (these nine together about 0.2 s
// under emulation: 0.89 s to 0.68 s from systemd's start to its first job).
// No encrypted, integrity or verity volumes, no GPT auto-discovery, no
// hibernation, no gettys, no SysV scripts without a native unit (Docker's
// has one), no rc.local, no offline updates. Kept: fstab (an operator's
// mounts), debug and run (systemd.mask=, systemd.run= on the command line).
var maskedGenerators = []string{
	"systemd-cryptsetup-generator", "systemd-integritysetup-generator", "systemd-veritysetup-generator",
	"systemd-gpt-auto-generator", "systemd-hibernate-resume-generator", "systemd-getty-generator",
	"systemd-sysv-generator", "systemd-rc-local-generator", "systemd-system-update-generator",
}

// dropIns: Docker's socket listens before sysinit.target, as it needs
// nothing but /run, so that a job's first step finds it sooner (see
// jobStartedHook). Docker itself starts at boot beside the runner, which
// tandem-guest started before systemd (its handoff_linux.go); a docker
// command sent before the daemon is up waits for it on the socket.
var dropIns = map[string]string{
	"docker.socket": "[Unit]\nDefaultDependencies=no\nBefore=sockets.target\n",
}

// tmpConf replaces Debian's /usr/lib/tmpfiles.d/tmp.conf ("D /tmp", emptied
// by systemd-tmpfiles at boot): /tmp is made if missing, never emptied.
// systemd-tmpfiles-setup runs under the runner, which tandem-guest starts
// before systemd; emptying /tmp then could take files from a runner that
// has started. The job's /tmp is clean all the same: tandem-guest empties it
// before it hands the VM to systemd (its emptyDir), and each VM's disk is a
// fresh overlay of an image whose /tmp is empty.
const tmpConf = `# Tandem: /tmp is emptied by tandem-guest before systemd starts, not here
# (the runner may be using it while systemd-tmpfiles runs).
d /tmp 1777 root root -
`

// jobStartedHook is the runner's job-started hook (GitHub's runner runs
// the script that ACTIONS_RUNNER_HOOK_JOB_STARTED names before a job's
// first step, and fails the job if it fails). The runner starts before
// systemd has started anything, so this is where a job waits for Docker's
// socket: a job's first `docker` command, or the runner's own container
// set-up, finds it. A VM whose socket never comes runs the job all the
// same, with a warning in its log: a job that does not use Docker passes.
const (
	jobStartedHook       = "/usr/local/lib/tandem/job-started.sh"
	jobStartedHookScript = `#!/bin/sh
# Tandem: GitHub's runner runs this before the job's first step
# (ACTIONS_RUNNER_HOOK_JOB_STARTED). The runner started before systemd did;
# wait here for Docker's socket, which systemd makes early in its boot.
sock=/run/docker.sock
i=0
while [ ! -S "$sock" ]; do
	if [ "$i" -ge 1200 ]; then
		echo "::warning::Tandem: Docker's socket $sock did not appear within 120 s of the job's start; docker commands will fail"
		exit 0
	fi
	sleep 0.1
	i=$((i + 1))
done
`
)

// hookEnv sets the runner's job-started hook (jobStartedHook).
const hookEnv = "ACTIONS_RUNNER_HOOK_JOB_STARTED=" + jobStartedHook

// runnerEntryScript starts GitHub's runner as `run.sh --jitconfig`,
// taking the config from the environment tandem-guest set, so that it is
// not on tandem-guest's command line, and out of the environment the
// runner's jobs inherit.
const runnerEntryScript = `#!/bin/sh
# Starts GitHub's runner (` + actionsRunner + `) for one job with the
# just-in-time config tandem-guest received from the host.
set -eu
export ` + hookEnv + `
jit="${ACTIONS_RUNNER_INPUT_JITCONFIG:?tandem-runner: no JIT config in ACTIONS_RUNNER_INPUT_JITCONFIG}"
unset ACTIONS_RUNNER_INPUT_JITCONFIG
cd ` + actionsRunner + `
exec ./run.sh --jitconfig "$jit"
`

// RunnerInfo says how a VM of the image starts its runner.
type RunnerInfo struct {
	Command []string `json:"command"`
	User    string   `json:"user,omitempty"` // "": root
	// TarballSHA256 is the sha256 of GitHub's runner tarball in the image;
	// "" when it has only tandem-fakerunner.
	TarballSHA256 string `json:"tarball_sha256,omitempty"`
}

// Package is one Debian package in an image.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch"`
}

// runnerTree is a runner image's root filesystem, staged.
type runnerTree struct {
	root     string
	runner   *RunnerInfo
	packages []Package
}

// bootstrapRunner stages a runner image's tree under work/rootfs: Debian
// with runnerPackages, the runner account, tandem-guest as a service, the
// runner. The kernel's modules are added later (addModules), once the
// kernel package is unpacked.
func bootstrapRunner(ctx context.Context, p *progress, work string, o BuildOptions, guestBin, fakeRunner []byte) (*runnerTree, error) {
	root := filepath.Join(work, "rootfs")
	debs := filepath.Join(o.CacheDir, "runner-"+o.Arch)
	if strings.ContainsAny(debs+root, " \t\n'\"\\") {
		return nil, fmt.Errorf("runner images: the store and cache paths (%s, %s) must not contain spaces or quotes (mmdebstrap's hooks split on them)", root, debs)
	}
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return nil, err
	}
	args := []string{
		"--variant=minbase", "--architectures=" + o.Arch, "--format=directory",
		"--include=" + strings.Join(runnerPackages, ","),
		// Manuals and translations are not what CI jobs read; licences stay.
		"--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/info/*",
		"--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
		"--dpkgopt=path-include=/usr/share/doc/*/copyright",
		"--aptopt=Acquire::Retries \"3\"",
		// Keep the downloaded packages for the next build.
		"--skip=download/empty", "--skip=essential/unlink",
		"--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
		"--setup-hook=sync-in " + debs + " /var/cache/apt/archives/",
		"--customize-hook=sync-out /var/cache/apt/archives " + debs,
		runnerSuite, root,
	}
	args = append(args, o.Mirrors...)
	p.step("mmdebstrap %s %s: %d packages and their dependencies", runnerSuite, o.Arch, len(runnerPackages))
	cmd := exec.CommandContext(ctx, "mmdebstrap", args...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", epoch), "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive")
	// Cancelled, mmdebstrap gets a SIGTERM and time to unmount what it
	// mounted in the tree (removeBuildDir detaches anything left).
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	if err := runLogged(cmd, p, "mmdebstrap: "); err != nil {
		return nil, fmt.Errorf("mmdebstrap: %w", err)
	}
	t := &runnerTree{root: root}
	var err error
	if t.packages, err = listPackages(ctx, root); err != nil {
		return nil, err
	}
	p.step("debian: %d packages installed", len(t.packages))

	// The runner account: in the docker group, sudo without a password.
	if out, err := exec.CommandContext(ctx, "chroot", root, "useradd", "--create-home", "--uid", fmt.Sprint(runnerUID),
		"--user-group", "--groups", "docker,sudo", "--shell", "/bin/bash", runnerUser).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("useradd %s: %v: %s", runnerUser, err, out)
	}
	type treeFile struct {
		path string
		mode os.FileMode
		data []byte
	}
	files := []treeFile{
		{"/etc/sudoers.d/runner", 0o440, []byte(runnerUser + " ALL=(ALL) NOPASSWD:ALL\n")},
		{guestPath, 0o755, guestBin},
		{jobStartedHook, 0o755, []byte(jobStartedHookScript)},
		{"/etc/tmpfiles.d/tmp.conf", 0o644, []byte(tmpConf)},
		{"/etc/tandem/init", 0o644, []byte("/sbin/init\n")},
		{"/etc/hostname", 0o644, []byte("tandem\n")},
		{runnerEntry, 0o755, []byte(runnerEntryScript)},
	}
	if fakeRunner != nil {
		files = append(files, treeFile{fakeRunnerPath, 0o755, fakeRunner})
	}
	for _, f := range files {
		dst := filepath.Join(root, f.path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(dst, f.data, f.mode); err != nil {
			return nil, err
		}
		if err := os.Chmod(dst, f.mode); err != nil {
			return nil, err
		}
	}
	links := map[string]string{
		debugPauseLink: guestPath,
	}
	for _, u := range maskedUnits {
		links["/etc/systemd/system/"+u] = "/dev/null"
	}
	for _, g := range maskedGenerators {
		links["/etc/systemd/system-generators/"+g] = "/dev/null"
	}
	for unit, conf := range dropIns {
		dst := filepath.Join(root, "etc/systemd/system", unit+".d", "tandem.conf")
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(dst, []byte(conf), 0o644); err != nil {
			return nil, err
		}
	}
	for link, target := range links {
		dst := filepath.Join(root, link)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		os.Remove(dst)
		if err := os.Symlink(target, dst); err != nil {
			return nil, err
		}
	}
	// What a build leaves that differs from build to build, or that each
	// VM should make for itself.
	for _, f := range []string{"/etc/resolv.conf", "/var/cache/ldconfig/aux-cache", "/var/log/dpkg.log",
		"/var/log/alternatives.log", "/var/log/apt/history.log", "/var/log/apt/term.log", "/var/log/apt/eipp.log.xz"} {
		if err := os.Remove(filepath.Join(root, f)); err != nil && !os.IsNotExist(err) {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/machine-id"), nil, 0o444); err != nil {
		return nil, err
	}

	switch {
	case o.RunnerTarball != "":
		sum, err := installRunnerTarball(o.RunnerTarball, filepath.Join(root, actionsRunner), o.Arch)
		if err != nil {
			return nil, err
		}
		t.runner = &RunnerInfo{Command: []string{runnerEntry}, User: runnerUser, TarballSHA256: sum}
		p.step("GitHub's runner from %s (sha256 %.16s…) in %s", filepath.Base(o.RunnerTarball), sum, actionsRunner)
	case fakeRunner != nil:
		t.runner = &RunnerInfo{Command: []string{"/usr/bin/env", hookEnv, fakeRunnerPath}, User: runnerUser}
		p.step("NOTE: no --runner-tarball given: this image has no GitHub runner, only tandem-fakerunner (for tests against ghfake). "+
			"GitHub's runner cannot be downloaded here: fetch actions-runner-linux-%s-<version>.tar.gz from the actions/runner releases and pass it with --runner-tarball",
			runnerTarballArch(o.Arch))
	default:
		p.step("NOTE: no --runner-tarball and no tandem-fakerunner given: this image has no runner at all; %s",
			"VMs boot and run commands (tandem run), but cannot take GitHub jobs")
	}
	return t, nil
}

// addModules puts the kernel's modules into the tree, so that Docker and
// its friends can load what they need (overlay, bridge, veth, nf_tables…).
func addModules(ctx context.Context, root, kernelPkg, kver string) error {
	src := filepath.Join(kernelPkg, "lib", "modules", kver)
	dst := filepath.Join(root, "usr", "lib", "modules")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "cp", "-a", src, dst+"/").CombinedOutput(); err != nil {
		return fmt.Errorf("copy kernel modules: %v: %s", err, out)
	}
	if out, err := exec.CommandContext(ctx, "depmod", "-b", root, kver).CombinedOutput(); err != nil {
		return fmt.Errorf("depmod: %v: %s", err, out)
	}
	return nil
}

// requiredKernelConfig is what Docker, KinD and K3s need of the kernel
// (after moby's check-config.sh and K3s's check-config): built in (y) or
// a module (m) the image carries.
var requiredKernelConfig = []string{
	"NAMESPACES", "NET_NS", "PID_NS", "IPC_NS", "UTS_NS", "USER_NS",
	"CGROUPS", "CGROUP_BPF", "CGROUP_CPUACCT", "CGROUP_DEVICE", "CGROUP_FREEZER", "CGROUP_SCHED", "CGROUP_PIDS",
	"CPUSETS", "MEMCG", "BLK_CGROUP", "BPF_SYSCALL", "KEYS", "SECCOMP", "SECCOMP_FILTER", "POSIX_MQUEUE",
	"OVERLAY_FS", "VETH", "BRIDGE", "BRIDGE_NETFILTER", "VXLAN", "TUN",
	"NETFILTER_XT_MATCH_ADDRTYPE", "NETFILTER_XT_MATCH_CONNTRACK", "NETFILTER_XT_MATCH_IPVS",
	"NETFILTER_XT_MARK", "NETFILTER_XT_TARGET_MASQUERADE", "NETFILTER_XT_MATCH_COMMENT", "NETFILTER_XT_MATCH_MULTIPORT",
	"IP_NF_FILTER", "IP_NF_NAT", "IP_NF_IPTABLES", "IP6_NF_NAT", "NF_NAT", "NF_CONNTRACK",
	"NF_TABLES", "NFT_COMPAT", "NFT_NAT", "NFT_MASQ", "NFT_CT", "IP_VS",
}

// checkKernelConfig reads the kernel package's config and names every
// required option it lacks.
func checkKernelConfig(kernelPkg, kver string) error {
	b, err := os.ReadFile(filepath.Join(kernelPkg, "boot", "config-"+kver))
	if err != nil {
		return fmt.Errorf("kernel config: %w", err)
	}
	set := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && (v == "y" || v == "m") {
			set[strings.TrimPrefix(k, "CONFIG_")] = true
		}
	}
	var missing []string
	for _, o := range requiredKernelConfig {
		if !set[o] {
			missing = append(missing, "CONFIG_"+o)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("kernel %s lacks what Docker/KinD/K3s need: %s", kver, strings.Join(missing, " "))
	}
	return nil
}

// listPackages reads the tree's dpkg database with the host's dpkg-query.
func listPackages(ctx context.Context, root string) ([]Package, error) {
	out, err := exec.CommandContext(ctx, "dpkg-query", "--admindir="+filepath.Join(root, "var/lib/dpkg"),
		"-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n").Output()
	if err != nil {
		return nil, fmt.Errorf("dpkg-query: %w", err)
	}
	var pkgs []Package
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 4 || !strings.HasPrefix(f[0], "ii") {
			continue
		}
		pkgs = append(pkgs, Package{Name: f[1], Version: f[2], Arch: f[3]})
	}
	sort.Slice(pkgs, func(i, j int) bool { return pkgs[i].Name < pkgs[j].Name })
	return pkgs, nil
}

// contentsList describes every file under root, one line each, sorted by
// path: "<sha256 or ->  <mode> <uid>:<gid> /path[ -> target]". It is the
// image's record of what it holds, and its hash names the tree for mkfs.
func contentsList(root string) ([]byte, error) {
	type entry struct{ path, line string }
	var entries []entry
	var mu sync.Mutex
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	var firstErr error
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := "/" + strings.TrimPrefix(strings.TrimPrefix(p, root), "/")
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		fi, _ := d.Info()
		head := fmt.Sprintf("%o %d:%d %s", st.Mode, st.Uid, st.Gid, rel)
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			mu.Lock()
			entries = append(entries, entry{rel, "- " + head + " -> " + t})
			mu.Unlock()
		case fi.Mode().IsRegular():
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				sum, err := fileSHA256(p)
				mu.Lock()
				defer mu.Unlock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				entries = append(entries, entry{rel, sum + " " + head})
			}()
		default:
			mu.Lock()
			entries = append(entries, entry{rel, fmt.Sprintf("- %s %d", head, st.Rdev)})
			mu.Unlock()
		}
		return nil
	})
	wg.Wait()
	if err == nil {
		err = firstErr
	}
	if err != nil {
		return nil, fmt.Errorf("list the root filesystem: %w", err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].path < entries[j].path })
	var b bytes.Buffer
	for _, e := range entries {
		b.WriteString(e.line)
		b.WriteByte('\n')
	}
	return b.Bytes(), nil
}

// runLogged runs cmd, printing each line of its output as a progress step.
// The last lines come back in the error if it fails.
func runLogged(cmd *exec.Cmd, p *progress, prefix string) error {
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return err
	}
	var tail []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if strings.TrimSpace(line) == "" {
				continue
			}
			p.step("%s%s", prefix, line)
			tail = append(tail, line)
			if len(tail) > 20 {
				tail = tail[1:]
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Wait()
	pw.Close()
	<-done
	if err != nil {
		return fmt.Errorf("%w; last output:\n%s", err, strings.Join(tail, "\n"))
	}
	return nil
}

// finishRunnerRootfs adds the kernel's modules to the staged tree, lists
// its contents and makes the ext4 file system at dest.
func finishRunnerRootfs(ctx context.Context, p *progress, work string, t *runnerTree, kver string, sizeMiB int, dest string) ([]byte, error) {
	if err := addModules(ctx, t.root, filepath.Join(work, "kernel-pkg"), kver); err != nil {
		return nil, err
	}
	if err := fixTimes(t.root); err != nil {
		return nil, err
	}
	contents, err := contentsList(t.root)
	if err != nil {
		return nil, err
	}
	n := bytes.Count(contents, []byte("\n"))
	p.step("root filesystem: %d entries, kernel modules %s; making ext4 (%d MiB, sparse)", n, kver, sizeMiB)
	// An inode per 16 KiB: container layers are many small files.
	if err := makeExt4(ctx, work, t.root, dest, sha256hex(contents), sizeMiB, 16384); err != nil {
		return nil, err
	}
	return contents, nil
}
