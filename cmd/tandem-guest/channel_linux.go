//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
	"golang.org/x/sys/unix"
)

// channelWait bounds the wait for the host's port: virtio_console creates
// ports, and the host names them, asynchronously after the module loads.
const channelWait = 30 * time.Second

// openVirtioSerial opens the virtio-serial port named guest.PortName.
//
// The fd is deliberately left blocking (and so outside Go's poller): a
// blocking write to a virtio port returns only once the host side has taken
// the buffer, so the Exit frame is out of the VM before we reset it. A port
// whose host end is not connected blocks writes until it is and returns EOF
// on reads.
func openVirtioSerial(con *console, wait time.Duration) (io.ReadWriteCloser, error) {
	start := time.Now()
	deadline := start.Add(wait)
	var seen []string
	for {
		var dev string
		dev, seen = findPort(virtioPortsDir, guest.PortName)
		if dev != "" {
			path := "/dev/" + dev
			fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
			if err == nil {
				con.logf("channel: %s (%s) open (%s)", path, guest.PortName, ms(time.Since(start)))
				return os.NewFile(uintptr(fd), path), nil
			}
			if !errors.Is(err, unix.ENOENT) { // ENOENT: devtmpfs has not made the node yet
				return nil, fmt.Errorf("channel: open %s: %w", path, err)
			}
		}
		if time.Now().After(deadline) {
			ports := strings.Join(seen, " ")
			if ports == "" {
				ports = "none"
			}
			return nil, fmt.Errorf("channel: no virtio-serial port %q after %s (ports: %s; virtio_console loaded, -device virtserialport,name=%s given?)",
				guest.PortName, wait, ports, guest.PortName)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
