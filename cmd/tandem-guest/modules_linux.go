//go:build linux

package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// loadModules loads every module named in list, in order, with
// finit_module(2), each with the "modname.param=value" parameters of the
// kernel command line. (The kernel applies those only to built-in code; for
// a loadable module it is the loader's job, as modprobe does it — QEMU's
// microvm describes its virtio-mmio devices to virtio_mmio that way.) A module already
// loaded (EEXIST) is fine. A failing module is reported and the rest still
// load; the caller learns how many failed, and later stages (no disk, no
// channel) fail with a hint pointing back here.
func loadModules(con *console, dir, list, cmdline string) (failed int, err error) {
	f, err := os.Open(list)
	if errors.Is(err, os.ErrNotExist) {
		con.logf("modules: no %s, none loaded", list)
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("modules: %w", err)
	}
	paths, err := parseModuleList(f, dir)
	f.Close()
	if err != nil {
		return 0, fmt.Errorf("modules: %s: %w", list, err)
	}
	start := time.Now()
	loaded, present := 0, 0
	for _, p := range paths {
		switch err := loadModule(p, moduleParams(cmdline, moduleName(p))); {
		case err == nil:
			loaded++
		case errors.Is(err, unix.EEXIST):
			present++
		default:
			failed++
			con.logf("modules: %s: %v", moduleName(p), err)
		}
	}
	con.logf("modules: %d loaded, %d present, %d failed (%s)", loaded, present, failed, ms(time.Since(start)))
	return failed, nil
}

func loadModule(path, params string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer unix.Close(fd)
	flags := 0
	if compressedModule(path) {
		flags |= unix.MODULE_INIT_COMPRESSED_FILE
	}
	for {
		err = unix.FinitModule(fd, params, flags)
		if err != unix.EINTR {
			break
		}
	}
	switch {
	case err == nil, errors.Is(err, unix.EEXIST):
		return err
	case errors.Is(err, unix.ENOENT):
		// finit_module reports an unresolved symbol as ENOENT.
		return fmt.Errorf("unknown symbol (%w): dependency missing or listed later?", err)
	case errors.Is(err, unix.ENOEXEC):
		return fmt.Errorf("%w (module built for another kernel or arch?)", err)
	}
	return err
}
