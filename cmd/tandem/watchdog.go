package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/tandem-ci/tandem/internal/procs"
	"github.com/tandem-ci/tandem/internal/vm"
)

// The agent's watchdog stops a dead agent's VMs if no agent returns for
// them in time, so that an agent removed for good leaves no VM running.
//
// An agent's VMs outlive it (an upgrade restarts the agent under them): they
// are owned by its lease (vm.AgentOwner), alive while the agent's process
// is, or until the lease's returns_by. The agent spawns the watchdog once it
// holds its lease; the watchdog, in a session of its own, outlives the
// agent. One watchdog watches a lease (an flock on <lease>.watchdog). An
// agent that starts retires the watchdog an earlier one left, found by its
// command line, while it holds the lease (so that watchdog only watches), and
// spawns its own: after an upgrade or a change of the host's network, the
// watchdog is the new binary with the new flags. When the owner is gone, it takes the
// agent's lock (<lease>.lock) so that no agent starts meanwhile, stops every
// VM whose owner is gone (jobvm.Host.Collect, which also reclaims their TAP
// devices and address leases), and exits.

// watchdogPoll is how often the watchdog looks at the lease.
const watchdogPoll = 2 * time.Second

func agentWatchdogCmd(g *globals) *cobra.Command {
	var nf hostFlags
	var lease string
	cmd := &cobra.Command{
		Use:    "agent-watchdog --lease PATH",
		Short:  "Stop a dead agent's VMs if no agent returns for them in time (spawned by the agent)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if lease == "" {
				return errors.New("--lease is required")
			}
			if err := requireRoot("tandem agent-watchdog"); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			err := watchAgent(ctx, g, lease, &nf, watchdogPoll)
			if ctx.Err() != nil {
				return nil // told to stop
			}
			return err
		},
	}
	cmd.Flags().StringVar(&lease, "lease", "", "the agent's lease file")
	nf.add(cmd)
	cmd.Flags().MarkHidden("allow-uncapped") // it starts no VM
	return cmd
}

// watchAgent is the watchdog of the agent lease at leasePath: every poll it
// looks whether the lease's owner is alive, and once it is not, stops what
// it left running (stopDeadAgent) and returns nil. It returns nil at once
// if another watchdog watches the lease, and ctx's error when ctx ends.
// nf says how to join the host's network.
func watchAgent(ctx context.Context, g *globals, leasePath string, nf *hostFlags, poll time.Duration) error {
	leasePath, err := filepath.Abs(leasePath)
	if err != nil {
		return err
	}
	unlock, busy, err := tryLock(leasePath + ".watchdog")
	if err != nil {
		return fmt.Errorf("watchdog: %w", err)
	}
	if busy {
		g.log.Debug("another watchdog watches this agent lease", "lease", leasePath)
		return nil
	}
	defer unlock()
	g.log.Info("watching the agent lease", "lease", leasePath, "pid", os.Getpid())
	owner := vm.AgentOwner(leasePath)
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		if _, err := os.Stat(filepath.Dir(leasePath)); errors.Is(err, os.ErrNotExist) {
			g.log.Info("the agent's data directory is gone: nothing left to watch", "lease", leasePath)
			return nil
		}
		if !vm.OwnerAlive(owner) {
			done, err := stopDeadAgent(ctx, g, leasePath, nf)
			if err != nil {
				g.log.Error("stopping a dead agent's VMs failed; trying again", "lease", leasePath, "err", err)
			}
			if done {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// stopDeadAgent stops the VMs of the dead agent of the lease at leasePath,
// holding the agent's lock so that no agent starts meanwhile. It reports
// false if it could not: an agent holds the lock or came back, or an error.
func stopDeadAgent(ctx context.Context, g *globals, leasePath string, nf *hostFlags) (done bool, err error) {
	unlock, busy, err := tryLock(leasePath + ".lock")
	if err != nil || busy {
		return false, err // busy: an agent is starting
	}
	defer unlock()
	if vm.OwnerAlive(vm.AgentOwner(leasePath)) {
		return false, nil // an agent came and went before the lock was ours
	}
	why := "its agent's lease is missing or unreadable"
	if r, err := vm.ReadLease(leasePath); err == nil {
		why = fmt.Sprintf("its agent (pid %d) did not return by %s", r.PID, r.ReturnsBy.Local().Format(time.RFC3339))
	}
	// It joins the network as it is, if it is there (a package removed
	// took it away: nothing may set it up again), and starts no VM.
	join := hostFlags{bridge: nf.bridge, subnet: nf.subnet, noNetwork: nf.noNetwork,
		allowUncapped: true, existing: true}
	h, closeHost, err := newHost(ctx, g, &join)
	if err != nil {
		return false, err
	}
	defer closeHost()
	ids, err := h.Collect(ctx, nil)
	if len(ids) > 0 {
		g.log.Warn("stopped the VMs (and network leftovers) of a dead agent", "reclaimed", ids, "why", why, "lease", leasePath)
	}
	if err != nil {
		return false, err
	}
	if len(ids) == 0 {
		g.log.Info("the dead agent left nothing running", "why", why, "lease", leasePath)
	}
	return true, nil
}

// retireWatchdog stops the watchdog of the lease at leasePath, if one runs
// (of this version or an older one), and waits up to wait for it to let go
// of its lock. Call it holding the lease: the watchdog is then only
// watching, never stopping VMs.
func retireWatchdog(leasePath string, wait time.Duration) error {
	lock := leasePath + ".watchdog"
	deadline := time.Now().Add(wait)
	for {
		unlock, busy, err := tryLock(lock)
		if err != nil {
			return err
		}
		if !busy {
			unlock()
			return nil
		}
		pids := watchdogsOf(leasePath)
		for _, pid := range pids {
			if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("retiring watchdog %d: %w", pid, err)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is still held %s after SIGTERM to the watchdogs of the lease (%v)", lock, wait, pids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// watchdogsOf lists the processes that are a tandem agent-watchdog of the
// lease at leasePath, by their command lines.
func watchdogsOf(leasePath string) []int {
	return procs.Matching(func(args []string) bool {
		return slices.Contains(args, "agent-watchdog") && slices.Contains(args, leasePath)
	})
}

// tryLock takes an exclusive flock on path (created 0600 if missing)
// without waiting: busy if another holds it.
func tryLock(path string) (unlock func(), busy bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, false, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) || errors.Is(err, unix.EINTR) {
			return nil, true, nil
		}
		return nil, false, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, false, nil
}

// spawnWatchdog starts the watchdog of the agent lease at leasePath (call
// it once the lease is held): this binary's agent-watchdog, with the data
// directory and nf's network, in a session of its own so that it outlives
// the agent, stdin /dev/null, its output appended to
// <data-dir>/logs/watchdog.log. A watchdog that watches the lease already
// is retired first; if it cannot be, it goes on, and the new one exits at
// once.
func spawnWatchdog(g *globals, leasePath string, nf *hostFlags) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("spawn watchdog: %w", err)
	}
	return startWatchdog(exe, g, leasePath, nf)
}

// startWatchdog is spawnWatchdog with the tandem binary exe.
func startWatchdog(exe string, g *globals, leasePath string, nf *hostFlags) error {
	dataDir, err := filepath.Abs(g.dataDir)
	if err != nil {
		return fmt.Errorf("spawn watchdog: %w", err)
	}
	leasePath, err = filepath.Abs(leasePath)
	if err != nil {
		return fmt.Errorf("spawn watchdog: %w", err)
	}
	logs := filepath.Join(dataDir, "logs")
	if err := os.MkdirAll(logs, 0o700); err != nil {
		return fmt.Errorf("spawn watchdog: %w", err)
	}
	out, err := os.OpenFile(filepath.Join(logs, "watchdog.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("spawn watchdog: %w", err)
	}
	defer out.Close()
	if err := retireWatchdog(leasePath, 10*time.Second); err != nil {
		g.log.Warn("the watchdog an earlier agent left goes on watching, with its binary and network flags", "err", err)
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		return fmt.Errorf("spawn watchdog: %w", err)
	}
	defer null.Close()
	level := "info" // a few lines in its life, each one worth keeping
	if g.logLevel == "debug" {
		level = "debug"
	}
	args := append([]string{"agent-watchdog", "--data-dir", dataDir, "--log-level", level, "--lease", leasePath}, nf.joinArgs()...)
	cmd := exec.Command(exe, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = null, out, out
	// No Pdeathsig: it must outlive the agent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("spawn watchdog: %w", err)
	}
	// Reap it if it exits while the agent runs (a second watchdog exits at
	// once); if the agent goes first, init reaps it.
	go cmd.Wait()
	return nil
}
