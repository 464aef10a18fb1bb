//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
	"golang.org/x/sys/unix"
)

const (
	rootWait = 15 * time.Second // for tandem.root's device to appear
	jobPath  = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	jobHome  = "/root"
)

// openChannel is the host transport in use.
var openChannel channelOpener = openVirtioSerial

type agent struct {
	pid1     bool
	inVM     bool // tandem.* on the kernel command line: powering off is ours to do
	con      *console
	ctx      context.Context // ends when the guest is told to shut down
	shutOnce sync.Once
	lock     *os.File // held while this is the VM's guest agent (not as PID 1)
}

// boot is the whole life of the guest. It never returns as PID 1.
func boot() {
	a := &agent{pid1: os.Getpid() == 1}
	var early error
	out := io.Writer(os.Stderr)
	if a.pid1 {
		// First of all /dev, so that the console and /dev/null exist.
		early = mountAPI()
		fixConsole()
		out = os.Stdout
	}
	a.con = newConsole(out, bootClock)
	fatalHook = a.fail
	a.ctx = a.watchSignals()
	defer func() {
		if r := recover(); r != nil {
			a.fail(fmt.Errorf("panic: %v\n%s", r, debug.Stack()))
		}
	}()
	if early != nil {
		a.fail(early)
	}
	if err := a.run(); errors.Is(err, errAgentRunning) {
		a.con.logf("%v: this one exits", err)
		drainConsole()
		os.Exit(0)
	} else if err != nil {
		a.fail(err)
	}
	a.powerOff()
}

func (a *agent) run() error {
	con := a.con
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("read kernel command line: %w", err)
	}
	cmdline := string(b)
	a.inVM = strings.Contains(cmdline, "tandem.")
	early := os.Getenv(earlyEnv) != ""
	os.Unsetenv(earlyEnv) // not for the job
	mode := "pid 1"
	switch {
	case early:
		mode = fmt.Sprintf("started before init, pid %d", os.Getpid())
	case !a.pid1:
		mode = fmt.Sprintf("service, pid %d", os.Getpid())
	}
	release := kernelRelease()
	con.logf("%s %s, kernel %s, %s", version, runtime.GOARCH, release, mode)
	bp, err := guest.ParseBootParams(cmdline)
	if err != nil {
		return fmt.Errorf("boot params: %w", err)
	}
	if bp.Probe {
		con.raw(guest.ProbeMarker)
		return nil
	}

	reaper := startReaper()
	failedModules := 0
	if a.pid1 {
		if failedModules, err = loadModules(con, moduleDir, moduleList, cmdline); err != nil {
			return err
		}
		if bp.Root != "" {
			if err := switchRoot(con, bp.Root, shortenIf(failedModules > 0, rootWait)); err != nil {
				return err
			}
		}
		if err := mountAPI(); err != nil {
			return err
		}
		init, err := handOffInit()
		if err != nil {
			return err
		}
		if init == "" {
			mountRuntime(con, runtimeMounts)
		} else {
			// The guest agent, and with it the runner, starts before init:
			// what they need of /dev and /run is mounted now, as systemd
			// would mount it (systemd keeps what it finds mounted); /tmp
			// is the root's and cgroup2 is left to systemd.
			mountRuntime(con, handOffMounts)
		}
		if err := setupNetwork(con, bp); err != nil {
			return err
		}
		if bp.Mirror != "" {
			configureDockerMirror(con, bp.Mirror)
		}
		if now := time.Now(); now.Year() < 2000 {
			// x86 microvm with rtc=off under TCG has neither RTC nor kvm-clock.
			con.logf("warning: clock unset (%s): no RTC or kvm-clock", now.UTC().Format(time.DateOnly))
		}
		if init != "" {
			// systemd sets the hostname from /etc/hostname.
			writeEtc(con, "/etc/hostname", hostnameOf(bp.Hostname)+"\n")
			return a.execInit(init)
		}
		os.Setenv("PATH", jobPath)
		os.Setenv("HOME", jobHome)
	} else {
		// Started by PID 1 just before it handed the VM to init, or by
		// init as a service: PID 1 has mounted and configured what the
		// runner needs.
		if err := a.claimAgent(early); err != nil {
			return err
		}
		setenvDefault("PATH", jobPath)
		setenvDefault("HOME", jobHome)
	}

	rwc, err := openChannel(con, shortenIf(failedModules > 0, channelWait))
	if err != nil {
		if failedModules > 0 {
			err = fmt.Errorf("%w (%d modules failed to load, see above)", err, failedModules)
		}
		return err
	}
	conn := guest.NewConn(rwc)
	hello := guest.Hello{Version: guest.Version, Arch: runtime.GOARCH, Kernel: release, UptimeMS: uptime().Milliseconds()}
	runner := &jobRunner{reaper: reaper, baseEnv: os.Environ(), drain: drainWait}
	_, err = runSession(a.ctx, conn, sessionConfig{
		Hello: hello, Heartbeat: guest.HeartbeatInterval, Runner: runner, Con: con,
		Stats:     func() guest.Stats { return readStats("/proc") },
		ExecState: execStatePath,
	})
	return err
}

// watchSignals turns SIGTERM, SIGINT (ctrl-alt-del for PID 1) and SIGHUP into
// a guest shutdown: the job is stopped, its Exit sent, the VM powered off.
// SIGPIPE, SIGQUIT and SIGUSR1/2 are caught and ignored: as PID 1 the Go
// runtime's default for them would end init. Handlers, unlike ignored
// signals, are reset for the job's exec.
func (a *agent) watchSignals() context.Context {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP,
		syscall.SIGPIPE, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	goSafe(func() {
		for s := range sigs {
			switch s {
			case syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP:
				a.con.logf("got %v: shutting down", s)
				cancel(fmt.Errorf("guest got %v", s))
			case syscall.SIGPIPE:
			default:
				a.con.logf("ignoring %v", s)
			}
		}
	})
	return ctx
}

// fail reports a fatal error and powers off. Safe from any goroutine.
func (a *agent) fail(err error) {
	a.con.fatalf("%v", err)
	a.powerOff()
}

// powerOff syncs and restarts the VM, which with QEMU's -no-reboot (and
// reboot=t on x86 microvm, PSCI on arm64 virt) ends it; power-off is the
// fallback. It does not return as PID 1. Outside a Tandem VM (no tandem.*
// kernel parameters) a service-mode guest exits instead of rebooting the
// machine it was started on by hand.
func (a *agent) powerOff() {
	a.shutOnce.Do(func() {
		if !a.pid1 && !a.inVM {
			a.con.logf("not in a tandem VM: exiting instead of powering off")
			os.Exit(1)
		}
		a.con.logf("powering off")
		drainConsole()
		unix.Sync()
		err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
		if err2 := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err2 != nil {
			err = fmt.Errorf("%v; power off: %v", err, err2)
		}
		a.con.fatalf("reboot: %v", err)
		drainConsole()
		if !a.pid1 {
			os.Exit(1)
		}
	})
	// PID 1 must not exit: that would panic the kernel. (A sleep, not an
	// empty select: the runtime would call that a deadlock and exit.)
	for {
		time.Sleep(time.Hour)
	}
}

// drainConsole waits until the console has transmitted what was written to
// it (tcdrain), so the last lines are not lost in the UART at reset.
func drainConsole() {
	unix.IoctlSetInt(1, unix.TCSBRK, 1)
	unix.IoctlSetInt(2, unix.TCSBRK, 1)
}

// shortenIf cuts a device wait when a module failed to load: the device
// is then most likely never coming, and the VM should say so soon.
func shortenIf(failed bool, wait time.Duration) time.Duration {
	if failed {
		return min(wait, 5*time.Second)
	}
	return wait
}

func setenvDefault(k, v string) {
	if os.Getenv(k) == "" {
		os.Setenv(k, v)
	}
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// bootClock is the time since boot, as the kernel stamps its messages.
func bootClock() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// uptime reads /proc/uptime, falling back to the boot clock.
func uptime() time.Duration {
	if b, err := os.ReadFile("/proc/uptime"); err == nil {
		if d, err := parseUptime(string(b)); err == nil {
			return d
		}
	}
	return bootClock()
}
