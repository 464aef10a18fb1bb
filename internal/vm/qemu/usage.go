package qemu

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tandem-ci/tandem/internal/vm"
)

var _ vm.UsageReader = (*instance)(nil)

// Usage implements vm.UsageReader: CPU time, resident memory and storage
// I/O from QEMU's /proc entry, the overlay's allocated size. It reads a few small files: cheap enough to call every second.
func (in *instance) Usage() (vm.Usage, error) {
	in.mu.Lock()
	pid, stopped := in.pid, in.stopped
	in.mu.Unlock()
	if pid == 0 || stopped {
		return vm.Usage{}, fmt.Errorf("vm %s: not running", in.spec.ID)
	}
	var u vm.Usage
	var errs []error
	proc := filepath.Join("/proc", strconv.Itoa(pid))
	var err error
	if u.CPUSeconds, err = cpuSeconds(proc); err != nil {
		errs = append(errs, err)
	}
	if b, err := os.ReadFile(filepath.Join(proc, "status")); err == nil {
		u.RSS = kv(b, ":")["VmRSS"] * 1024 // kB
	} else {
		errs = append(errs, err)
	}
	if b, err := os.ReadFile(filepath.Join(proc, "io")); err == nil {
		io := kv(b, ":")
		u.DiskRead, u.DiskWrite = io["read_bytes"], io["write_bytes"]
	} else {
		errs = append(errs, err)
	}
	if in.paths.Disk != "" {
		var st unix.Stat_t
		if err := unix.Stat(in.paths.Disk, &st); err == nil {
			u.DiskAlloc = st.Blocks * 512
		} else {
			errs = append(errs, err)
		}
	}
	return u, errors.Join(errs...)
}

// kv reads "key<sep> value [unit]" lines into numbers.
func kv(b []byte, sep string) map[string]int64 {
	out := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), sep)
		if !ok {
			continue
		}
		if f := strings.Fields(v); len(f) > 0 {
			if n, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				out[strings.TrimSpace(k)] = n
			}
		}
	}
	return out
}

// clockTicks is the unit of /proc/PID/stat's CPU times (USER_HZ, 100 on
// every Linux architecture Tandem runs on).
const clockTicks = 100

// cpuSeconds reads the CPU time of a process and all its threads (user and
// system) from /proc/PID/stat. QEMU may not fork (-sandbox spawn=deny), so
// this is all the CPU its VM took, under cgroup v1 and v2 alike.
func cpuSeconds(proc string) (float64, error) {
	b, err := os.ReadFile(filepath.Join(proc, "stat"))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces: fields count from its ")".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("malformed stat")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed stat")
	}
	return float64(utime+stime) / clockTicks, nil
}
