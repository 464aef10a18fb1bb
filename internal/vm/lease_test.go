package vm

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// deadPID is the pid of a process that has exited (and been reaped): this
// test binary run again, with no test to run.
func deadPID(t *testing.T) int {
	t.Helper()
	c := exec.Command(os.Args[0], "-test.run=^$")
	if err := c.Run(); err != nil {
		t.Fatalf("running a child: %v", err)
	}
	return c.Process.Pid
}

// writeDeadLease writes a lease at path for a process that is gone.
func writeDeadLease(t *testing.T, path string, returnsBy time.Time) {
	t.Helper()
	if err := writeLease(path, LeaseRecord{PID: deadPID(t), Start: 1, ReturnsBy: returnsBy}); err != nil {
		t.Fatal(err)
	}
}

// markDead rewrites the lease at path as if its process had died, keeping
// returns_by.
func markDead(t *testing.T, path string) {
	t.Helper()
	r, err := ReadLease(path)
	if err != nil {
		t.Fatal(err)
	}
	writeDeadLease(t, path, r.ReturnsBy)
}

func TestLeaseHeldIsAlive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "agent.lease")
	l, err := AcquireLease(context.Background(), path, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(false)
	if l.Owner() != AgentOwner(path) || !strings.HasPrefix(l.Owner(), "agent:/") || l.Path() != path {
		t.Errorf("Owner() = %q, Path() = %q; AgentOwner = %q", l.Owner(), l.Path(), AgentOwner(path))
	}
	if !OwnerAlive(l.Owner()) {
		t.Error("owner of a held lease is not alive")
	}
	r, err := ReadLease(path)
	if err != nil {
		t.Fatal(err)
	}
	if r.PID != os.Getpid() || !r.ProcessAlive() {
		t.Errorf("lease names pid %d (alive %v), want this process %d", r.PID, r.ProcessAlive(), os.Getpid())
	}
	for _, p := range []string{path, path + ".lock"} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", p, fi.Mode(), err)
		}
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("lease dir: %v %v, want mode 0700", fi.Mode(), err)
	}
}

func TestLeaseExcludesSecondAgent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.lease")
	l, err := AcquireLease(context.Background(), path, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if l2, err := AcquireLease(ctx, path, time.Minute); err == nil {
		l2.Release(false)
		t.Fatal("second AcquireLease succeeded while the first holds the lease")
	} else if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), path+".lock") {
		t.Errorf("second AcquireLease: %v; want a deadline error naming %s.lock", err, path)
	}
	if err := l.Release(false); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(false); err != nil {
		t.Errorf("second Release: %v", err)
	}
	l2, err := AcquireLease(context.Background(), path, time.Minute)
	if err != nil {
		t.Fatalf("AcquireLease after Release: %v", err)
	}
	l2.Release(false)
}

func TestLeaseNamesHolder(t *testing.T) {
	// The error names the pid in the lease if it lives: here this process,
	// which the message leaves out (it is no other agent), so fake another
	// live one: pid 1.
	path := filepath.Join(t.TempDir(), "agent.lease")
	l, err := AcquireLease(context.Background(), path, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(false)
	l.mu.Lock() // keep the renewal from rewriting it
	defer l.mu.Unlock()
	st, err := ProcStartTime(1)
	if err != nil {
		t.Skipf("pid 1: %v", err)
	}
	if err := writeLease(path, LeaseRecord{PID: 1, Start: st, ReturnsBy: time.Now()}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := AcquireLease(ctx, path, time.Minute); err == nil || !strings.Contains(err.Error(), "another tandem agent (pid 1) holds") {
		t.Errorf("AcquireLease: %v; want it to name pid 1", err)
	}
}

func TestLeaseReleaseNotReturning(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.lease")
	l, err := AcquireLease(context.Background(), path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Release(false); err != nil {
		t.Fatal(err)
	}
	if !OwnerAlive(l.Owner()) {
		t.Error("released lease not alive while its process still runs")
	}
	markDead(t, path)
	if OwnerAlive(l.Owner()) {
		t.Error("lease released without a successor is alive after its process died")
	}
}

func TestLeaseReleaseReturning(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.lease")
	within := 1500 * time.Millisecond
	l, err := AcquireLease(context.Background(), path, within)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Release(true); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	markDead(t, path)
	r, err := ReadLease(path)
	if err != nil {
		t.Fatal(err)
	}
	if d := r.ReturnsBy.Sub(released); d < within-time.Second || d > within {
		t.Errorf("returns_by is %v after Release(true), want about %v", d, within)
	}
	if !OwnerAlive(l.Owner()) {
		t.Error("lease left to a successor is not alive before returns_by")
	}
	time.Sleep(time.Until(r.ReturnsBy) + 50*time.Millisecond)
	if OwnerAlive(l.Owner()) {
		t.Error("lease of a dead agent is alive after returns_by")
	}
}

func TestLeaseDeadOrGarbled(t *testing.T) {
	dir := t.TempDir()
	past := filepath.Join(dir, "past.lease")
	writeDeadLease(t, past, time.Now().Add(-time.Second))
	future := filepath.Join(dir, "future.lease")
	writeDeadLease(t, future, time.Now().Add(time.Hour))
	garbled := filepath.Join(dir, "garbled.lease")
	if err := os.WriteFile(garbled, []byte(`{"pid":`), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.lease")
	if err := os.WriteFile(empty, []byte(`{}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{
		past:                          false,
		future:                        true,
		garbled:                       false,
		empty:                         false,
		filepath.Join(dir, "missing"): false,
	} {
		if got := OwnerAlive(AgentOwner(path)); got != want {
			t.Errorf("OwnerAlive(%s) = %v, want %v", filepath.Base(path), got, want)
		}
	}
	if OwnerAlive("agent:relative/future.lease") {
		t.Error("a relative lease path is alive")
	}
	if !OwnerAlive("agent") {
		t.Error("the legacy owner agent is not alive")
	}
}

func TestLeaseRenews(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.lease")
	l, err := AcquireLease(context.Background(), path, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(false)
	first, err := ReadLease(path)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		time.Sleep(50 * time.Millisecond)
		r, err := ReadLease(path)
		if err != nil {
			t.Fatal(err) // the file is replaced atomically: never half-written
		}
		if r.ReturnsBy.After(first.ReturnsBy) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("returns_by still %v after 5s", r.ReturnsBy)
		}
	}
}

func TestLeaseRejectsNonPositive(t *testing.T) {
	if _, err := AcquireLease(context.Background(), filepath.Join(t.TempDir(), "l"), 0); err == nil {
		t.Error("AcquireLease with returnWithin 0 succeeded")
	}
}
