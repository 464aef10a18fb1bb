//go:build linux

package main

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tandem-ci/tandem/internal/guest"
)

// readStats reads what a Heartbeat carries: load, memory, OOM kills, the
// root filesystem's use and the number of processes. What cannot be read
// stays zero: a heartbeat is never held up by its stats.
func readStats(proc string) guest.Stats {
	var s guest.Stats
	if b, err := os.ReadFile(proc + "/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			s.Load1, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	if b, err := os.ReadFile(proc + "/stat"); err == nil {
		s.CPUSeconds, s.CPUTotalSeconds = cpuSeconds(b)
	}
	if b, err := os.ReadFile(proc + "/meminfo"); err == nil {
		mi := fields(b)
		s.MemTotal, s.MemAvailable = mi["MemTotal:"]*1024, mi["MemAvailable:"]*1024
	}
	if b, err := os.ReadFile(proc + "/vmstat"); err == nil {
		s.OOMKills = fields(b)["oom_kill"]
	}
	var fs unix.Statfs_t
	if unix.Statfs("/", &fs) == nil {
		s.DiskTotal = int64(fs.Blocks) * int64(fs.Bsize)
		s.DiskUsed = int64(fs.Blocks-fs.Bfree) * int64(fs.Bsize)
	}
	if ents, err := os.ReadDir(proc); err == nil {
		for _, e := range ents {
			if n := e.Name(); n[0] >= '0' && n[0] <= '9' {
				s.Procs++
			}
		}
	}
	return s
}

// cpuSeconds reads /proc/stat's "cpu" line: user, nice, system, idle,
// iowait, irq, softirq, steal, in USER_HZ (100 per second), summed over
// the CPUs. Busy is all but idle, iowait and steal; total is all eight.
// (guest and guest_nice, which may follow, are already in user and nice.)
func cpuSeconds(stat []byte) (busy, total float64) {
	line, _, _ := bytes.Cut(stat, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0
	}
	var b, t int64
	for i := 1; i <= 8; i++ {
		n, _ := strconv.ParseInt(f[i], 10, 64)
		n = max(n, 0)
		t += n
		if i != 4 && i != 5 && i != 8 {
			b += n
		}
	}
	return float64(b) / 100, float64(t) / 100
}

// fields reads "name value ..." lines (meminfo, vmstat) into a map.
func fields(b []byte) map[string]int64 {
	out := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 {
			if v, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				out[f[0]] = v
			}
		}
	}
	return out
}
