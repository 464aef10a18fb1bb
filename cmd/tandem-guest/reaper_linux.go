//go:build linux

package main

import (
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// reaper is the one place in the process that waits for children.
//
// As PID 1 the guest inherits every orphan in the VM and must reap them, but
// a blind wait4(-1) loop would also steal the exit status of the job it is
// running. So nothing else waits (the job runner never calls
// exec.Cmd.Wait/Process.Wait): on every SIGCHLD the reaper collects all
// exited children with wait4(-1, WNOHANG|__WALL) and hands the status of a
// registered child (the job) to its waiter; any other PID is an orphan and is
// just counted.
//
// Processes are started under the reaper's lock and registered before the
// lock is released, so a job that exits at once cannot be reaped before it
// is known, and the wait4 the Go runtime itself does for a child whose exec
// failed cannot race the reaper.
type reaper struct {
	mu      sync.Mutex
	waiters map[int]chan syscall.WaitStatus
	orphans atomic.Int64
	adopts  bool // orphans come to us: PID 1, or a child subreaper
}

var (
	reaperOnce sync.Once
	procReaper *reaper
)

// startReaper returns the process-wide reaper, starting it on first use.
// In service mode (not PID 1) it also makes the guest a child subreaper, so
// daemons the job leaves behind are reaped here as they would be by PID 1.
func startReaper() *reaper {
	reaperOnce.Do(func() {
		r := &reaper{waiters: make(map[int]chan syscall.WaitStatus), adopts: os.Getpid() == 1}
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGCHLD)
		if !r.adopts {
			r.adopts = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == nil
		}
		go func() {
			for range sigs {
				r.reap()
			}
		}()
		r.reap() // anything that died before we listened
		procReaper = r
	})
	return procReaper
}

// start starts a process and returns a channel that receives its wait
// status once, when it has exited and been reaped.
func (r *reaper) start(path string, argv []string, attr *os.ProcAttr) (*os.Process, <-chan syscall.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, err := os.StartProcess(path, argv, attr)
	if err != nil {
		return nil, nil, err
	}
	ch := make(chan syscall.WaitStatus, 1)
	r.waiters[p.Pid] = ch
	return p, ch, nil
}

// reap collects every exited child.
func (r *reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG|unix.WALL, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 { // ECHILD: no children; 0: none exited yet
			return
		}
		if ch, ok := r.waiters[pid]; ok {
			delete(r.waiters, pid)
			ch <- ws
		} else {
			r.orphans.Add(1)
		}
	}
}
