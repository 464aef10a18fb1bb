package dbcopy

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// shmDeadManByte is the byte of a WAL database's -shm file on which every
// connection to the database holds a shared lock for as long as it is open
// (SQLite's os_unix.c: UNIX_SHM_DMS, after the 120 bytes of the wal-index
// header and the 8 bytes of its locks).
const shmDeadManByte = 128

// SQLiteInUse reports whether a connection has the SQLite database at path
// open — a control plane, most likely: one of this process or another. It
// asks whether the byte every connection holds a shared lock on in the
// database's -shm file could be locked exclusively; no -shm file means no
// connection.
func SQLiteInUse(path string) (bool, error) {
	f, err := os.Open(path + "-shm")
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("is the database in use: %w", err)
	}
	defer f.Close()
	// An open file description lock (OFD) conflicts with the POSIX locks
	// SQLite takes even when they are this process's own.
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: shmDeadManByte, Len: 1}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return false, fmt.Errorf("is the database in use: %w", err)
	}
	return lk.Type != unix.F_UNLCK, nil
}
