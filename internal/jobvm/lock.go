package jobvm

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// hostLock orders leak collection against VM preparation across processes:
// between attaching a VM to the network and writing its record, a VM exists
// only as a lease and a TAP, which a concurrent Collect would take for a
// leftover. Preparation holds the lock shared; Collect holds it exclusive.
func (h *Host) hostLock(exclusive bool) (unlock func(), err error) {
	if h.StateDir == "" {
		return func() {}, nil
	}
	f, err := os.OpenFile(filepath.Join(h.StateDir, "host.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("host lock: %w", err)
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("host lock: %w", err)
	}
	return func() { f.Close() }, nil
}
