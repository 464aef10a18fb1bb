package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// execStatePath is where the guest agent keeps the count of its exec
// sessions, for tandem-debug-pause (pause.go) to read: in a directory of
// root's, mode 0755, the file 0644, so that a job running as an
// unprivileged user can read it and nobody but root can change it.
const execStatePath = "/run/tandem/exec-sessions"

// execCount is the exec sessions' count in the state file. Its text form
// is one "key value" line each, in this order:
//
//	opened 3
//	open 1
//
// opened counts the sessions started since the guest agent started (a
// session refused or whose program could not start is not counted); open
// counts those not yet ended, so open <= opened. Readers ignore lines with
// other keys, which a later guest may add.
type execCount struct {
	Opened uint64
	Open   uint64
}

func (c execCount) marshal() []byte {
	return fmt.Appendf(nil, "opened %d\nopen %d\n", c.Opened, c.Open)
}

// maxExecState bounds what is read of a state file.
const maxExecState = 4096

// parseExecCount reads the text form of an execCount.
func parseExecCount(b []byte) (execCount, error) {
	var c execCount
	var haveOpened, haveOpen bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		key, val, ok := strings.Cut(line, " ")
		if !ok {
			return execCount{}, fmt.Errorf("malformed line %q", line)
		}
		var dst *uint64
		switch key {
		case "opened":
			dst, haveOpened = &c.Opened, true
		case "open":
			dst, haveOpen = &c.Open, true
		default:
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(val), 10, 64)
		if err != nil {
			return execCount{}, fmt.Errorf("malformed %s count %q", key, val)
		}
		*dst = n
	}
	if err := sc.Err(); err != nil {
		return execCount{}, err
	}
	switch {
	case !haveOpened || !haveOpen:
		return execCount{}, errors.New("no opened and open counts")
	case c.Open > c.Opened:
		return execCount{}, fmt.Errorf("%d sessions open of %d opened", c.Open, c.Opened)
	}
	return c, nil
}

// readExecCount reads the state file at path.
func readExecCount(path string) (execCount, error) {
	f, err := os.Open(path)
	if err != nil {
		return execCount{}, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxExecState+1))
	if err != nil {
		return execCount{}, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxExecState {
		return execCount{}, fmt.Errorf("%s: over %d bytes", path, maxExecState)
	}
	c, err := parseExecCount(b)
	if err != nil {
		return execCount{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// execStateFile keeps the state file up to date as sessions start and
// end. Each change replaces the file whole (a temporary file renamed over
// it), so a reader sees one count or the next, never a mix. A failure to
// write is logged once and otherwise ignored: sessions do not depend on it.
type execStateFile struct {
	path string // "": keep no file
	logf func(format string, args ...any)

	mu     sync.Mutex
	n      execCount
	failed bool
}

// start writes the file with no sessions, making its directory (0755) if
// needed: from now on its presence says that this guest keeps it.
func (f *execStateFile) start() {
	if f.path == "" {
		return
	}
	dir := filepath.Dir(f.path)
	if err := os.Mkdir(dir, 0o755); err == nil {
		os.Chmod(dir, 0o755) // whatever the umask
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writeLocked()
}

// opened counts a session that has started.
func (f *execStateFile) opened() {
	f.update(func(c *execCount) { c.Opened++; c.Open++ })
}

// closed counts a started session that has ended.
func (f *execStateFile) closed() {
	f.update(func(c *execCount) {
		if c.Open > 0 {
			c.Open--
		}
	})
}

func (f *execStateFile) update(change func(*execCount)) {
	if f.path == "" {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	change(&f.n)
	f.writeLocked()
}

func (f *execStateFile) writeLocked() {
	if err := writeReplacing(f.path, f.n.marshal(), 0o644); err != nil && !f.failed {
		f.failed = true
		if f.logf != nil {
			f.logf("exec: session count for tandem-debug-pause: %v", err)
		}
	}
}

// writeReplacing replaces path with b through a temporary file in its
// directory, renamed over it. No fsync: the file lives in /run, a tmpfs,
// and means nothing after a reboot.
func writeReplacing(path string, b []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
