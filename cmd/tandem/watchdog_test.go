package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/vm"
)

// watchdogEnv is a data dir for the watchdog, with no network and no VM:
// these tests boot none (one with a real VM is elsewhere).
func watchdogEnv(t *testing.T) (*globals, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: the watchdog tests need root (the watchdog builds a VM host: cgroups, VM state); run go test as root")
	}
	data := testenv.ShortTempDir(t)
	g := &globals{dataDir: data, logLevel: "info",
		log: slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	return g, filepath.Join(data, "agent", "lease")
}

type tlogWriter struct{ t *testing.T }

func (w tlogWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// writeDeadLease writes a lease of a process that has exited, which was to
// return by returnsBy.
func writeDeadLease(t *testing.T, path string, returnsBy time.Time) {
	t.Helper()
	c := exec.Command(os.Args[0], "-test.run=^$")
	if err := c.Run(); err != nil {
		t.Fatalf("running a child: %v", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	b := fmt.Sprintf(`{"pid":%d,"start":1,"returns_by":%q}`, c.Process.Pid, returnsBy.UTC().Format(time.RFC3339Nano))
	if err := os.WriteFile(path, []byte(b), 0o600); err != nil {
		t.Fatal(err)
	}
	if vm.OwnerAlive(vm.AgentOwner(path)) != time.Now().Before(returnsBy) {
		t.Fatalf("lease %s: alive %v", b, !time.Now().Before(returnsBy))
	}
}

var noNetwork = &hostFlags{noNetwork: true}

func TestWatchdogStopsDeadAgent(t *testing.T) {
	g, lease := watchdogEnv(t)
	writeDeadLease(t, lease, time.Now().Add(-time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if err := watchAgent(ctx, g, lease, noNetwork, 50*time.Millisecond); err != nil {
		t.Fatalf("watchAgent: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("watchAgent took %v for a lease long dead", d)
	}
	// It let go of the agent's lock: an agent may start.
	actx, acancel := context.WithTimeout(context.Background(), time.Second)
	defer acancel()
	l, err := vm.AcquireLease(actx, lease, time.Minute)
	if err != nil {
		t.Fatalf("an agent cannot start after the watchdog: %v", err)
	}
	l.Release(false)
	testenv.AssertNoLeaks(t, g.dataDir, nil)
}

func TestWatchdogWaitsForAgent(t *testing.T) {
	g, lease := watchdogEnv(t)
	l, err := vm.AcquireLease(context.Background(), lease, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := watchAgent(ctx, g, lease, noNetwork, 50*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("watchAgent with the agent alive: %v, want it to wait until ctx ends", err)
	}

	// A dead agent not yet due back is waited for too.
	g, lease = watchdogEnv(t)
	writeDeadLease(t, lease, time.Now().Add(time.Hour))
	ctx, cancel = context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := watchAgent(ctx, g, lease, noNetwork, 50*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("watchAgent before returns_by: %v, want it to wait until ctx ends", err)
	}
}

func TestWatchdogWaitsForStartingAgent(t *testing.T) {
	// The agent's lock is held (an agent starting, its lease not written
	// yet): the watchdog stops nothing.
	g, lease := watchdogEnv(t)
	writeDeadLease(t, lease, time.Now().Add(-time.Second))
	unlock, busy, err := tryLock(lease + ".lock")
	if err != nil || busy {
		t.Fatalf("tryLock: busy %v, %v", busy, err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := watchAgent(ctx, g, lease, noNetwork, 50*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("watchAgent with the agent's lock held: %v, want it to wait until ctx ends", err)
	}
}

func TestWatchdogSingleton(t *testing.T) {
	g, lease := watchdogEnv(t)
	writeDeadLease(t, lease, time.Now().Add(time.Hour))
	unlock, busy, err := tryLock(lease + ".watchdog")
	if err != nil || busy {
		t.Fatalf("tryLock: busy %v, %v", busy, err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := watchAgent(ctx, g, lease, noNetwork, 50*time.Millisecond); err != nil {
		t.Fatalf("second watchdog: %v, want it to leave at once", err)
	}
}

func TestWatchdogSpawned(t *testing.T) {
	g, lease := watchdogEnv(t)
	writeDeadLease(t, lease, time.Now().Add(-time.Second))
	if err := startWatchdog(binary(t), g, lease, noNetwork); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(g.dataDir, "logs", "watchdog.log")
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(log)
		if strings.Contains(string(b), "the dead agent left nothing running") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the spawned watchdog did not stop the dead agent in 30s; its log:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// It is gone: its singleton lock is free.
	for {
		unlock, busy, err := tryLock(lease + ".watchdog")
		if err != nil {
			t.Fatal(err)
		}
		if !busy {
			unlock()
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the spawned watchdog still runs after its work")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// An agent that starts retires the watchdog an earlier agent left (an
// upgrade: the old one runs an old binary) and spawns its own.
func TestWatchdogRetired(t *testing.T) {
	g, lease := watchdogEnv(t)
	writeDeadLease(t, lease, time.Now().Add(time.Hour)) // away, not late: watched
	// watcher is the one watchdog of the lease, once it holds its lock.
	watcher := func() int {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			unlock, busy, err := tryLock(lease + ".watchdog")
			if err != nil {
				t.Fatal(err)
			}
			if !busy {
				unlock()
			} else if pids := watchdogsOf(lease); len(pids) == 1 {
				return pids[0]
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("no one watchdog holds the lease's lock: %v", watchdogsOf(lease))
		return 0
	}
	if err := startWatchdog(binary(t), g, lease, noNetwork); err != nil {
		t.Fatal(err)
	}
	first := watcher()
	if err := startWatchdog(binary(t), g, lease, noNetwork); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(watchdogsOf(lease), first) {
		t.Errorf("the first watchdog (%d) runs on beside the second", first)
	}
	second := watcher()
	if second == first {
		t.Fatalf("the watchdog is still %d", first)
	}
	if err := retireWatchdog(lease, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if pids := watchdogsOf(lease); len(pids) != 0 {
		t.Errorf("watchdogs %v run on once retired", pids)
	}
	// Nothing to retire: no error.
	if err := retireWatchdog(lease, time.Second); err != nil {
		t.Errorf("retiring no watchdog: %v", err)
	}
}
