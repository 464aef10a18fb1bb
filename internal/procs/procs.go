// Package procs finds this machine's processes by their command lines, as
// Tandem finds the QEMU processes and watchdogs it started.
package procs

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Each calls fn with the pid and the arguments of every process whose
// command line can be read (not a kernel thread, not a zombie, not gone
// meanwhile).
func Each(fn func(pid int, args []string)) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		fn(pid, strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"))
	}
}

// Matching lists the processes whose arguments match says yes to.
func Matching(match func(args []string) bool) []int {
	var pids []int
	Each(func(pid int, args []string) {
		if match(args) {
			pids = append(pids, pid)
		}
	})
	return pids
}
