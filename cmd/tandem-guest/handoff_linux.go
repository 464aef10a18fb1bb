//go:build linux

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// initFile, in the root filesystem, names the init that tandem-guest hands
// the VM to once it has mounted the root and set up the network: a runner
// image's systemd. Just before, it starts the guest agent again as a child
// (earlyEnv), which talks to the host and starts the runner while init
// boots the rest (Docker, the journal, logind): the runner waits for none
// of that, and a job's first step waits for Docker's socket in the image's
// job-started hook. The test image has no initFile, and tandem-guest stays
// PID 1.
const initFile = "/etc/tandem/init"

// earlyEnv, set to 1, tells tandem-guest that PID 1 started it before init.
const earlyEnv = "TANDEM_GUEST_EARLY"

// agentLock is locked (flock) by the VM's guest agent for as long as it
// runs, so that a second one, started by an image's own
// tandem-guest.service, stands down (errAgentRunning).
const agentLock = "/run/tandem/guest.lock"

// errAgentRunning: the guest agent started before init runs already.
var errAgentRunning = errors.New("the guest agent runs already, started before init")

// startEarlyAgent starts the guest agent as a child of PID 1 (itself, until
// it execs init), in its own session, on the console. /proc/self/exe is the
// initramfs's tandem-guest, the very binary that booted the VM, though
// switching root has unlinked it.
func (a *agent) startEarlyAgent() error {
	attr := &os.ProcAttr{
		Env:   append(os.Environ(), earlyEnv+"=1"),
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	}
	p, _, err := startReaper().start("/proc/self/exe", []string{"tandem-guest"}, attr)
	if err != nil {
		return fmt.Errorf("start the guest agent: %w", err)
	}
	a.con.logf("guest agent started before init, pid %d", p.Pid)
	return p.Release()
}

// claimAgent makes this process the VM's guest agent, not PID 1: it takes
// agentLock, or returns errAgentRunning when the agent started before init
// has it; the one started before init also shields itself from the OOM
// killer, as the image's unit did (OOMScoreAdjust=-900), so that a job
// that runs the VM out of memory is killed rather than the agent.
func (a *agent) claimAgent(early bool) error {
	if err := os.MkdirAll(filepath.Dir(agentLock), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(agentLock, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return errAgentRunning
		}
		return fmt.Errorf("lock %s: %w", agentLock, err)
	}
	a.lock = f
	if early {
		if err := os.WriteFile("/proc/self/oom_score_adj", []byte("-900"), 0); err != nil {
			a.con.logf("oom_score_adj: %v", err)
		}
		// Started as /proc/self/exe, it would show in ps as "exe".
		os.WriteFile("/proc/self/comm", []byte("tandem-guest"), 0)
	}
	return nil
}

// handOffInit reads initFile: the path of the init to hand over to, or ""
// when there is none.
func handOffInit() (string, error) {
	b, err := os.ReadFile(initFile)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", initFile, err)
	}
	p := strings.TrimSpace(string(b))
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%s: %q is not an absolute path", initFile, p)
	}
	if err := checkExecutable(p); err != nil {
		return "", fmt.Errorf("%s names %s: %w", initFile, p, err)
	}
	return p, nil
}

// execInit starts the guest agent and replaces tandem-guest, PID 1, with
// init. It returns only if either failed. /tmp is emptied and the static
// /dev nodes are made first, before the agent can start a job: the runner
// does not wait for init's own boot-time cleaning (the runner image's
// tmpfiles.d leaves /tmp alone), so this is where the job's /tmp is made
// clean.
func (a *agent) execInit(init string) error {
	if err := emptyDir(tmpDir); err != nil {
		return fmt.Errorf("empty %s: %w", tmpDir, err)
	}
	devname := filepath.Join("/lib/modules", kernelRelease(), "modules.devname")
	if n, err := makeStaticNodes(devname, "/dev"); err != nil {
		a.con.logf("static device nodes: %d made; %v", n, err)
	}
	if err := a.startEarlyAgent(); err != nil {
		return err
	}
	a.con.logf("handing over to %s", init)
	drainConsole()
	err := unix.Exec(init, []string{init}, os.Environ())
	return fmt.Errorf("exec %s: %w", init, err)
}

// tmpDir is the root filesystem's /tmp, emptied before init starts.
var tmpDir = "/tmp"

// emptyDir removes everything in dir, not dir itself, nor anything a
// symlink in it points to. A missing dir is made (mode 1777, as /tmp).
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		return os.Chmod(dir, 0o777|fs.ModeSticky)
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// makeStaticNodes makes the device nodes modules.devname lists (fuse,
// loop-control, net/tun, mapper/control…) under dev, mode 0600, so that
// opening one loads its module. systemd's kmod-static-nodes and
// systemd-tmpfiles-setup-dev make the same nodes (and set their modes), but
// during sysinit.target, which the runner image's tandem-guest no longer
// waits for: a job could find them missing. Nodes already there are left
// alone. It returns how many it made; a missing file is not an error.
func makeStaticNodes(devname, dev string) (int, error) {
	b, err := os.ReadFile(devname)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	made := 0
	var errs []error
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		var typ byte
		var major, minor uint32
		if _, err := fmt.Sscanf(f[2], "%c%d:%d", &typ, &major, &minor); err != nil || (typ != 'c' && typ != 'b') {
			errs = append(errs, fmt.Errorf("%s: bad device %q", f[1], f[2]))
			continue
		}
		path := filepath.Join(dev, filepath.Clean("/"+f[1]))
		mode := uint32(unix.S_IFCHR)
		if typ == 'b' {
			mode = unix.S_IFBLK
		}
		os.MkdirAll(filepath.Dir(path), 0o755)
		err := unix.Mknod(path, mode|0o600, int(unix.Mkdev(major, minor)))
		switch {
		case err == nil:
			made++
		case !errors.Is(err, unix.EEXIST):
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
		}
	}
	return made, errors.Join(errs...)
}

// dockerConfig is the Docker daemon's configuration file in the guest.
var dockerConfig = "/etc/docker/daemon.json"

// configureDockerMirror points the guest's Docker daemon at the host's
// registry mirror, keeping whatever else daemon.json says. Images without
// Docker (no /etc/docker) are left alone. Problems are printed: Docker
// then pulls from the registry itself, which works, only slower.
func configureDockerMirror(con *console, mirror string) {
	if _, err := os.Stat(filepath.Dir(dockerConfig)); err != nil {
		return
	}
	b, err := mergeDockerMirror(dockerConfig, mirror)
	if err == nil {
		tmp := dockerConfig + ".tandem"
		if err = os.WriteFile(tmp, b, 0o644); err == nil {
			err = os.Rename(tmp, dockerConfig)
		}
	}
	if err != nil {
		con.logf("docker: registry mirror %s not configured: %v", mirror, err)
		return
	}
	con.logf("docker: registry mirror %s", mirror)
}

// mergeDockerMirror returns the daemon.json at path (or an empty one) with
// registry-mirrors set to mirror.
func mergeDockerMirror(path, mirror string) ([]byte, error) {
	conf := map[string]any{}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	case len(strings.TrimSpace(string(b))) > 0:
		if err := json.Unmarshal(b, &conf); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	conf["registry-mirrors"] = []string{mirror}
	out, err := json.MarshalIndent(conf, "", "  ")
	return append(out, '\n'), err
}
