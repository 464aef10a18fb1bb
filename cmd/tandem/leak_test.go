package main

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Every way `tandem run` can end must leave nothing of its VM behind: no
// QEMU, TAP, overlay disk, socket, address lease or cgroup.

func TestNoLeakOnSuccessAndFailure(t *testing.T) {
	e := newEnv(t)
	if r := e.run("run", "--", "true"); r.code != 0 {
		t.Fatalf("true: exit %d %s", r.code, r.stderr)
	}
	e.assertNoLeaks(nil)
	if r := e.run("run", "--", "false"); r.code != 1 {
		t.Fatalf("false: exit %d %s", r.code, r.stderr)
	}
	e.assertNoLeaks(nil)
	if r := e.run("run", "--", "no-such-command"); r.code != 127 {
		t.Fatalf("missing command: exit %d %s", r.code, r.stderr)
	}
	e.assertNoLeaks(nil)
}

func TestNoLeakOnGuestPanic(t *testing.T) {
	e := newEnv(t)
	r := e.run("run", "--", "sh", "-c", "echo c > /proc/sysrq-trigger; sleep 60")
	if r.code != exitTandem || !strings.Contains(r.stderr, "guest-panic") || !strings.Contains(r.stderr, "Kernel panic") {
		t.Errorf("panic: exit %d, stderr %s", r.code, r.stderr)
	}
	e.assertNoLeaks(nil)
}

func TestNoLeakOnTimeout(t *testing.T) {
	e := newEnv(t)
	start := time.Now()
	r := e.run("run", "--timeout", "3s", "--", "sleep", "600")
	if r.code != exitTimeout || !strings.Contains(r.stderr, "timeout") {
		t.Errorf("timeout: exit %d, stderr %s", r.code, r.stderr)
	}
	if time.Since(start) > 3*time.Minute {
		t.Errorf("a 3s timeout took %s", time.Since(start))
	}
	e.assertNoLeaks(nil)
}

// startJob starts `tandem run` with a long job and returns once the job's
// first output line arrived (so the VM is booted and the job runs), with the
// id of its VM.
func startJob(t *testing.T, e *env) (*exec.Cmd, string, <-chan error) {
	t.Helper()
	cmd := e.command(context.Background(), "run", "--", "sh", "-c", "echo started; sleep 600")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- l
		io.Copy(io.Discard, stdout)
	}()
	select {
	case l := <-line:
		if l != "started\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("job's first line %q; stderr %s", l, stderr.String())
		}
	case <-time.After(3 * time.Minute):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("job did not start; stderr %s", stderr.String())
	}
	vms, _ := os.ReadDir(filepath.Join(e.data, "state", "vms"))
	if len(vms) != 1 {
		t.Fatalf("want one VM while the job runs, found %d", len(vms))
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	return cmd, vms[0].Name(), done
}

func TestNoLeakOnInterrupt(t *testing.T) {
	e := newEnv(t)
	cmd, id, done := startJob(t, e)
	cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitCancelled {
			t.Errorf("after Ctrl-C: %v, want exit %d", err, exitCancelled)
		}
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		t.Fatal("tandem run did not end within a minute of Ctrl-C")
	}
	e.assertNoLeaks([]string{id})
}

func TestNoLeakAfterSIGKILL(t *testing.T) {
	e := newEnv(t)
	cmd, id, done := startJob(t, e)
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
	// The VM dies with its owner; what it used on the host stays until the
	// next tandem start reclaims it.
	if _, err := os.Stat(filepath.Join(e.data, "state", "vms", id)); err != nil {
		t.Fatalf("expected %s's state to outlive SIGKILL (else this test proves nothing): %v", id, err)
	}
	r := e.run("gc")
	if r.code != 0 || !strings.Contains(r.stdout, "reclaimed "+id) {
		t.Errorf("tandem gc: exit %d, stdout %q, stderr %s", r.code, r.stdout, r.stderr)
	}
	e.assertNoLeaks([]string{id})

	// And the same through the next `tandem run` instead of `tandem gc`.
	cmd, id, done = startJob(t, e)
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
	if r := e.run("run", "--", "true"); r.code != 0 {
		t.Fatalf("next run: exit %d %s", r.code, r.stderr)
	}
	e.assertNoLeaks([]string{id})
}
