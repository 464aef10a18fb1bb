// Command tandem-guest is the agent inside every Tandem microVM: PID 1
// (/init) of the test image's initramfs, or a systemd unit in a full image.
//
// As PID 1 it mounts /dev, /proc and /sys, loads the kernel modules listed in
// /etc/tandem/modules, switches to the root disk named by tandem.root=,
// mounts /tmp, /run and /dev/pts, and sets up the hostname and network from
// the tandem.* kernel parameters. In either mode it then opens the
// virtio-serial port named guest.PortName, says Hello, runs the one Job the
// host sends while streaming its output and sending heartbeats, reports its
// Exit, syncs and restarts the VM (QEMU runs with -no-reboot, so it exits).
// Beside the job it serves the host's exec sessions (`tandem ssh`: a
// program or login shell, with a pty or pipes; exec_linux.go); after a
// Hold from the host it stays up past Exit, sessions and heartbeats going
// on, until Release. A job the host marks Resumable outlives its host: the
// output is kept in memory while no host is connected and sent again to
// the next one that resumes, and the VM powers off once a host has
// acknowledged the Exit, or after the job's detach timeout
// (resume_linux.go).
//
// Exit codes it reports besides the job's own: 124 timed out, 125 could not
// start (bad job, bad dir), 126 not executable, 127 not found, 130 cancelled;
// a job killed by a signal reports 128+n and the signal's name.
//
// Called as tandem-debug-pause (a link to it in the images' PATH) it is
// instead that workflow step: it holds the job until a `tandem ssh`
// session has come and gone, or a timeout (pause.go).
//
// Any fatal error is printed on the console as "tandem-guest: fatal: ..."
// and the VM is restarted (powered off) the same way: init never exits.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/tandem-ci/tandem/internal/guest"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func versionString() string {
	return fmt.Sprintf("tandem-guest %s (protocol %d, %s, %s/%s)",
		version, guest.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func main() {
	if filepath.Base(os.Args[0]) == pauseName && os.Getpid() != 1 {
		os.Exit(pauseMain(os.Args[1:], os.Stdout, os.Stderr))
	}
	// As PID 1 the arguments are whatever the kernel passed on: ignore them.
	if os.Getpid() != 1 && len(os.Args) > 1 {
		switch os.Args[1] {
		case "--version", "-version", "version":
			fmt.Println(versionString())
			return
		case "-h", "--help", "help":
			fmt.Println("usage: tandem-guest [--version]\n\nRuns as /init (PID 1) of a Tandem VM, or as its systemd service.\nCalled as " + pauseName + ", it pauses a job for tandem ssh (see " + pauseName + " --help).")
			return
		default:
			fmt.Fprintf(os.Stderr, "tandem-guest: unknown argument %q (usage: tandem-guest [--version])\n", os.Args[1])
			os.Exit(2)
		}
	}
	boot()
}
