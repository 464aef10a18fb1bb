package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ci/tandem/internal/fsutil"
)

// An agent lease is how a host agent owns VMs that outlive it. It is two
// files:
//
//   - <path>: JSON {"pid":N,"start":T,"returns_by":RFC3339}, replaced
//     atomically. pid and start (ProcStartTime) name the agent's process;
//     returns_by is when its VMs stop being its once that process is gone.
//   - <path>.lock: an flock LOCK_EX the agent holds for its whole life, so
//     that one data directory has one agent. A watchdog takes it for a
//     moment while it stops a dead agent's VMs, so that no agent starts
//     meanwhile.
//
// A VM owned by AgentOwner(path) is alive (OwnerAlive) while the process in
// the lease exists, or until returns_by. The agent renews returns_by while
// it runs (now + returnWithin, every min(returnWithin/3, 30s)), so a
// SIGKILLed agent's VMs outlive it by at most returnWithin plus one renewal
// period; one that detaches its VMs for a successor (an upgrade) gives it
// returnWithin; one that expects no successor sets returns_by to now. The
// times are the wall clock's: a clock stepped forward shortens the wait.

// maxRenewEvery bounds how long a lease goes without being renewed.
const maxRenewEvery = 30 * time.Second

// acquirePoll is how often AcquireLease tries the lock again.
const acquirePoll = 200 * time.Millisecond

// LeaseRecord is what a lease file says.
type LeaseRecord struct {
	PID       int       `json:"pid"`
	Start     uint64    `json:"start"` // ProcStartTime of PID
	ReturnsBy time.Time `json:"returns_by"`
}

// ProcessAlive reports whether the process the record names still exists
// (the same pid with the same start time).
func (r LeaseRecord) ProcessAlive() bool {
	if r.PID <= 0 {
		return false
	}
	st, err := ProcStartTime(r.PID)
	return err == nil && st == r.Start
}

// ReadLease reads the lease file at path.
func ReadLease(path string) (LeaseRecord, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return LeaseRecord{}, err
	}
	var r LeaseRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return LeaseRecord{}, fmt.Errorf("lease %s: %w", path, err)
	}
	if r.PID <= 0 || r.ReturnsBy.IsZero() {
		return LeaseRecord{}, fmt.Errorf("lease %s: no pid or returns_by", path)
	}
	return r, nil
}

// writeLease replaces the lease file at path with r.
func writeLease(path string, r LeaseRecord) error {
	r.ReturnsBy = r.ReturnsBy.UTC()
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write lease: %w", err)
	}
	return nil
}

// AgentOwner names, as a VM owner, the agent that holds the lease at
// leasePath: "agent:" + its absolute path. See OwnerAlive.
func AgentOwner(leasePath string) string {
	return "agent:" + absPath(leasePath)
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return filepath.Clean(p)
}

// agentAlive reports whether the agent of the lease at path (absolute) is
// alive as an owner: its process exists, or it has not yet run out its
// time to return.
func agentAlive(path string) bool {
	if !filepath.IsAbs(path) {
		return false
	}
	r, err := ReadLease(path)
	if err != nil {
		return false
	}
	return r.ProcessAlive() || time.Now().Before(r.ReturnsBy)
}

// Lease is an agent's hold on its lease (see AgentOwner): it holds the
// lock and renews returns_by until Release.
type Lease struct {
	path   string
	within time.Duration
	lock   *os.File
	rec    LeaseRecord // pid and start of this process

	mu       sync.Mutex // serialises writes of the lease file
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
	released error
}

// AcquireLease takes the lease at path for this process. It creates path's
// directory (0700) and path.lock (0600), and takes the lock, trying again
// every 200ms until ctx ends (a watchdog may hold it for a moment); while
// another agent holds it, the error names that agent's pid and wraps
// ctx.Err(). It then writes the lease with returns_by = now + returnWithin
// and renews it in the background every min(returnWithin/3, 30s) until
// Release; ctx does not stop the renewal. returnWithin must be positive.
func AcquireLease(ctx context.Context, path string, returnWithin time.Duration) (*Lease, error) {
	if returnWithin <= 0 {
		return nil, fmt.Errorf("agent lease: return-within %v is not positive", returnWithin)
	}
	path = absPath(path)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("agent lease: %w", err)
	}
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("agent lease: %w", err)
	}
	if err := lockWait(ctx, f); err != nil {
		f.Close()
		if ctx.Err() == nil {
			return nil, fmt.Errorf("agent lease: lock %s: %w", f.Name(), err)
		}
		if r, rerr := ReadLease(path); rerr == nil && r.ProcessAlive() && r.PID != os.Getpid() {
			return nil, fmt.Errorf("another tandem agent (pid %d) holds %s: %w", r.PID, f.Name(), err)
		}
		return nil, fmt.Errorf("another process (an agent, or the watchdog of a dead one) holds %s: %w", f.Name(), err)
	}
	pid := os.Getpid()
	st, err := ProcStartTime(pid)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("agent lease: %w", err)
	}
	l := &Lease{path: path, within: returnWithin, lock: f, rec: LeaseRecord{PID: pid, Start: st},
		stop: make(chan struct{}), done: make(chan struct{})}
	if err := l.write(time.Now().Add(returnWithin)); err != nil {
		f.Close()
		return nil, err
	}
	go l.renew(max(min(returnWithin/3, maxRenewEvery), 10*time.Millisecond))
	return l, nil
}

// lockWait takes an exclusive flock on f, polling until ctx ends.
func lockWait(ctx context.Context, f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return err
		}
		t := time.NewTimer(acquirePoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (l *Lease) write(returnsBy time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.rec
	r.ReturnsBy = returnsBy
	return writeLease(l.path, r)
}

func (l *Lease) renew(every time.Duration) {
	defer close(l.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			if err := l.write(time.Now().Add(l.within)); err != nil {
				// The last returns_by stands; the next tick tries again.
				slog.Warn("renewing the agent lease failed", "lease", l.path, "err", err)
			}
		}
	}
}

// Owner is the VM owner this lease makes alive: AgentOwner(l.Path()).
func (l *Lease) Owner() string { return "agent:" + l.path }

// Path is the lease file's absolute path.
func (l *Lease) Path() string { return l.path }

// Release stops renewing the lease, writes its last returns_by and gives up
// the lock. returning: the agent leaves its VMs to a successor (an upgrade),
// which has returnWithin to take them; otherwise returns_by is now, and the
// VMs are the watchdog's as soon as this process is gone. Release is
// idempotent: later calls return the first one's result.
func (l *Lease) Release(returning bool) error {
	l.once.Do(func() {
		close(l.stop)
		<-l.done
		by := time.Now()
		if returning {
			by = by.Add(l.within)
		}
		err := l.write(by)
		// The lock goes last: whoever takes it next reads the final lease.
		if cerr := l.lock.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("agent lease: %w", cerr)
		}
		l.released = err
	})
	return l.released
}
