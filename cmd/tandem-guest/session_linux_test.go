//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
)

// hostView is what a fake host saw of one session.
type hostView struct {
	hello      guest.Hello
	stdout     bytes.Buffer
	stderr     bytes.Buffer
	exit       guest.Exit
	gotExit    bool
	heartbeats int
	maxFrame   int
	afterExit  int // frames after Exit
	guestErr   error
	elapsed    time.Duration
}

type hostOpts struct {
	ctx       context.Context                  // the guest's; nil: Background
	job       *guest.Job                       // nil: send no job
	preJob    func(h *guest.Conn)              // runs after Hello, before the job
	onFrame   func(h *guest.Conn, v *hostView) // after each output frame
	closeWhen func(v *hostView) bool           // close the host end when true
}

func needSh(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh")
	}
}

func testRunner() *jobRunner {
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/root"}
	return &jobRunner{reaper: startReaper(), baseEnv: env, drain: 300 * time.Millisecond}
}

// runFakeHost runs one session of runSession against a fake host over
// net.Pipe and returns what the host saw.
func runFakeHost(t *testing.T, o hostOpts) *hostView {
	t.Helper()
	gc, hc := net.Pipe()
	defer hc.Close()
	guestDone := make(chan error, 1)
	start := time.Now()
	ctx := o.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	go func() {
		defer gc.Close()
		_, err := runSession(ctx, guest.NewConn(gc), sessionConfig{
			Hello:     guest.Hello{Version: guest.Version, Arch: runtime.GOARCH, Kernel: "test", UptimeMS: 1},
			Heartbeat: 20 * time.Millisecond,
			Runner:    testRunner(),
			Con:       newConsole(io.Discard, nil),
		})
		guestDone <- err
	}()
	h := guest.NewConn(hc)
	v := &hostView{}
	typ, p, err := h.ReadFrame()
	if err != nil || typ != guest.FrameHello {
		t.Fatalf("first frame: %v %v", typ, err)
	}
	if err := guest.Decode(typ, p, &v.hello); err != nil {
		t.Fatal(err)
	}
	if o.preJob != nil {
		o.preJob(h)
	}
	if o.job != nil {
		if err := h.WriteJSON(guest.FrameJob, o.job); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	hc.SetReadDeadline(deadline)
	for !v.gotExit {
		if o.closeWhen != nil && o.closeWhen(v) {
			hc.Close()
			break
		}
		typ, p, err := h.ReadFrame()
		if err != nil {
			t.Fatalf("host read: %v (stdout %q)", err, v.stdout.String())
		}
		v.maxFrame = max(v.maxFrame, len(p))
		switch typ {
		case guest.FrameStdout:
			v.stdout.Write(p)
		case guest.FrameStderr:
			v.stderr.Write(p)
		case guest.FrameHeartbeat:
			v.heartbeats++
		case guest.FrameExit:
			if err := guest.Decode(typ, p, &v.exit); err != nil {
				t.Fatal(err)
			}
			v.gotExit = true
		default:
			t.Fatalf("unexpected frame %v", typ)
		}
		if o.onFrame != nil {
			o.onFrame(h, v)
		}
	}
	if v.gotExit {
		// Nothing may follow Exit, heartbeats included.
		hc.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
		for {
			if _, _, err := h.ReadFrame(); err != nil {
				break
			}
			v.afterExit++
		}
	}
	select {
	case v.guestErr = <-guestDone:
	case <-time.After(10 * time.Second):
		t.Fatal("runSession did not return")
	}
	v.elapsed = time.Since(start)
	return v
}

func sh(script string) *guest.Job {
	return &guest.Job{Argv: []string{"/bin/sh", "-c", script}}
}

func checkExit(t *testing.T, v *hostView, code int, sig string) {
	t.Helper()
	if !v.gotExit {
		t.Fatal("no Exit frame")
	}
	if v.exit.Code != code || v.exit.Signal != sig {
		t.Fatalf("exit = %+v, want code %d signal %q (stderr %q)", v.exit, code, sig, v.stderr.String())
	}
	if v.afterExit != 0 {
		t.Fatalf("%d frames after Exit", v.afterExit)
	}
	if v.guestErr != nil {
		t.Fatalf("runSession: %v", v.guestErr)
	}
}

func TestJobOutputAndHello(t *testing.T) {
	needSh(t)
	v := runFakeHost(t, hostOpts{job: sh("echo out; echo err >&2")})
	checkExit(t, v, 0, "")
	if v.stdout.String() != "out\n" || v.stderr.String() != "err\n" {
		t.Fatalf("stdout %q stderr %q", v.stdout.String(), v.stderr.String())
	}
	if v.hello.Version != guest.Version || v.hello.Arch != runtime.GOARCH {
		t.Fatalf("hello %+v", v.hello)
	}
}

func TestJobExitCode(t *testing.T) {
	needSh(t)
	checkExit(t, runFakeHost(t, hostOpts{job: sh("exit 7")}), 7, "")
}

func TestJobKilledBySignal(t *testing.T) {
	needSh(t)
	checkExit(t, runFakeHost(t, hostOpts{job: sh("kill -TERM $$")}), 128+15, "SIGTERM")
}

func TestJobEnvDirAndPath(t *testing.T) {
	needSh(t)
	dir := t.TempDir()
	// "sh" is found in the job's PATH; FOO comes from the job's env.
	job := &guest.Job{Argv: []string{"sh", "-c", "echo $FOO $HOME; pwd"}, Env: map[string]string{"FOO": "bar"}, Dir: dir}
	v := runFakeHost(t, hostOpts{job: job})
	checkExit(t, v, 0, "")
	want := "bar /root\n" + dir + "\n"
	if got := v.stdout.String(); got != want {
		t.Fatalf("stdout %q, want %q", got, want)
	}
}

func TestJobStartFailures(t *testing.T) {
	needSh(t)
	dir := t.TempDir()
	noexec := filepath.Join(dir, "noexec")
	if err := os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		job  guest.Job
		code int
		msg  string
	}{
		{"missing", guest.Job{Argv: []string{"tandem-no-such-binary"}}, 127, "not found"},
		{"missing path", guest.Job{Argv: []string{"/nonexistent/bin/x"}}, 127, "no such file"},
		{"not executable", guest.Job{Argv: []string{noexec}}, 126, "permission"},
		{"bad dir", guest.Job{Argv: []string{"/bin/sh"}, Dir: filepath.Join(dir, "nope")}, 125, "job dir"},
		{"no argv", guest.Job{}, 125, "no argv"},
		{"missing in job PATH", guest.Job{Argv: []string{"sh"}, Env: map[string]string{"PATH": dir}}, 127, "not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := runFakeHost(t, hostOpts{job: &tc.job})
			checkExit(t, v, tc.code, "")
			if !strings.Contains(v.exit.Error, tc.msg) {
				t.Fatalf("error %q does not mention %q", v.exit.Error, tc.msg)
			}
		})
	}
}

func TestJobTimeout(t *testing.T) {
	needSh(t)
	job := sh("echo started; sleep 30 & sleep 30")
	job.TimeoutMS = 300
	v := runFakeHost(t, hostOpts{job: job})
	checkExit(t, v, codeTimeout, "SIGKILL")
	if !v.exit.TimedOut || v.stdout.String() != "started\n" {
		t.Fatalf("exit %+v stdout %q", v.exit, v.stdout.String())
	}
	if v.exit.DurationMS < 300 || v.elapsed > 10*time.Second {
		t.Fatalf("duration %dms, elapsed %s", v.exit.DurationMS, v.elapsed)
	}
	if v.heartbeats == 0 {
		t.Fatal("no heartbeats during a 300ms job at 20ms interval")
	}
}

func TestJobCancel(t *testing.T) {
	needSh(t)
	sent := false
	v := runFakeHost(t, hostOpts{
		job: sh("echo started; exec sleep 30"),
		onFrame: func(h *guest.Conn, v *hostView) {
			if !sent && v.stdout.Len() > 0 {
				sent = true
				if err := h.WriteFrame(guest.FrameCancel, nil); err != nil {
					t.Error(err)
				}
			}
		},
	})
	checkExit(t, v, codeCancelled, "SIGKILL")
	if v.exit.TimedOut || v.elapsed > 10*time.Second {
		t.Fatalf("exit %+v after %s", v.exit, v.elapsed)
	}
}

func TestGuestShutdownStopsJob(t *testing.T) {
	needSh(t)
	ctx, stop := context.WithCancelCause(context.Background())
	defer stop(nil)
	v := runFakeHost(t, hostOpts{
		ctx: ctx,
		job: sh("echo started; exec sleep 30"),
		onFrame: func(h *guest.Conn, v *hostView) {
			if v.stdout.Len() > 0 {
				stop(errors.New("guest got terminated"))
			}
		},
	})
	checkExit(t, v, codeCancelled, "SIGKILL")
}

func TestBadJobFrame(t *testing.T) {
	v := runFakeHost(t, hostOpts{preJob: func(h *guest.Conn) { h.WriteFrame(guest.FrameJob, []byte("{argv")) }})
	checkExit(t, v, codeBadJob, "")
	if !strings.Contains(v.exit.Error, "decode job") {
		t.Fatalf("error %q", v.exit.Error)
	}
}

func TestCancelBeforeJob(t *testing.T) {
	v := runFakeHost(t, hostOpts{preJob: func(h *guest.Conn) { h.WriteFrame(guest.FrameCancel, nil) }})
	checkExit(t, v, codeCancelled, "")
	if v.exit.Error == "" {
		t.Fatal("no error in Exit")
	}
}

func TestHostGoneBeforeJob(t *testing.T) {
	v := runFakeHost(t, hostOpts{closeWhen: func(*hostView) bool { return true }})
	if v.guestErr == nil || !strings.Contains(v.guestErr.Error(), "before a job") {
		t.Fatalf("runSession error = %v", v.guestErr)
	}
}

func TestHostGoneDuringJob(t *testing.T) {
	needSh(t)
	v := runFakeHost(t, hostOpts{
		job:       sh("while :; do echo tick; sleep 0.05; done"),
		closeWhen: func(v *hostView) bool { return v.stdout.Len() > 0 },
	})
	if v.guestErr == nil || v.elapsed > 10*time.Second {
		t.Fatalf("runSession error = %v after %s", v.guestErr, v.elapsed)
	}
}

func TestJobLargeOutput(t *testing.T) {
	needSh(t)
	const n = 3*guest.MaxPayload + 12345
	v := runFakeHost(t, hostOpts{job: sh("head -c 3158073 /dev/zero; echo done >&2")})
	checkExit(t, v, 0, "")
	if v.stdout.Len() != n || v.stderr.String() != "done\n" {
		t.Fatalf("got %d stdout bytes, want %d; stderr %q", v.stdout.Len(), n, v.stderr.String())
	}
	if v.maxFrame > guest.MaxPayload {
		t.Fatalf("frame of %d bytes", v.maxFrame)
	}
}

func TestJobLeftoversDoNotHold(t *testing.T) {
	needSh(t)
	// A background child in the job's group is killed when the job ends.
	v := runFakeHost(t, hostOpts{job: sh("sleep 30 & echo hi")})
	checkExit(t, v, 0, "")
	if v.stdout.String() != "hi\n" || v.elapsed > 5*time.Second {
		t.Fatalf("stdout %q after %s", v.stdout.String(), v.elapsed)
	}
	// One that escaped the group with our stdout is cut off after the drain wait.
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Skip("no setsid")
	}
	v = runFakeHost(t, hostOpts{job: sh("setsid sleep 3 & sleep 0.2; echo hi")})
	checkExit(t, v, 0, "")
	if v.stdout.String() != "hi\n" || v.elapsed > 2500*time.Millisecond {
		t.Fatalf("stdout %q after %s", v.stdout.String(), v.elapsed)
	}
}

func TestReaperCollectsOrphans(t *testing.T) {
	needSh(t)
	r := startReaper()
	if !r.adopts {
		t.Skip("cannot become a child subreaper here (qemu-user rejects PR_SET_CHILD_SUBREAPER)")
	}
	before := r.orphans.Load()
	// The job's grandchild is orphaned and, the guest being a subreaper
	// (or PID 1), reparented to it; it must be reaped without disturbing
	// the job's own exit status.
	v := runFakeHost(t, hostOpts{job: sh("(sleep 0.1; exit 3) & exit 5")})
	checkExit(t, v, 5, "")
	deadline := time.Now().Add(5 * time.Second)
	for r.orphans.Load() == before {
		if time.Now().After(deadline) {
			t.Fatal("the orphaned grandchild was not reaped")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
