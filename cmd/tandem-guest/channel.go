package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// channelOpener opens the byte stream to the host. The transport today is a
// virtio-serial port; a vsock dialer can be added behind the same signature
// (and chosen by a boot parameter) without touching the session code.
type channelOpener func(con *console, wait time.Duration) (io.ReadWriteCloser, error)

const virtioPortsDir = "/sys/class/virtio-ports"

// findPort returns the device name (e.g. "vport0p1") of the virtio-serial
// port called name under sysdir, "" if there is none (yet), and the names of
// all ports seen, for error messages.
func findPort(sysdir, name string) (string, []string) {
	ents, err := os.ReadDir(sysdir)
	if err != nil {
		return "", nil
	}
	var seen []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(sysdir, e.Name(), "name"))
		if err != nil {
			seen = append(seen, e.Name()) // named later, by the host
			continue
		}
		n := string(bytes.TrimSpace(b))
		seen = append(seen, e.Name()+"="+n)
		if n == name {
			return e.Name(), seen
		}
	}
	sort.Strings(seen)
	return "", seen
}

// parseUptime reads the first field of /proc/uptime ("12.34 56.78").
func parseUptime(s string) (time.Duration, error) {
	f, _, _ := strings.Cut(strings.TrimSpace(s), " ")
	secs, err := strconv.ParseFloat(f, 64)
	if err != nil || secs < 0 {
		return 0, fmt.Errorf("bad uptime %q", s)
	}
	return time.Duration(secs * float64(time.Second)), nil
}
