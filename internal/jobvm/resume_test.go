package jobvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/syncbuf"
	"github.com/tandem-ci/tandem/internal/vm"
)

// fakeVM is a VM whose guest channel is a net.Pipe served by a test, and
// whose console is a file the test writes.
type fakeVM struct {
	vm.Instance // the methods Reattach does not use
	id          string
	console     string
	guest       func(*guest.Conn) // serves the guest's end of a channel; nil: none can be had

	mu        sync.Mutex
	stopped   chan struct{}
	destroyed bool
}

func newFakeVM(t *testing.T, console string, g func(*guest.Conn)) *fakeVM {
	path := filepath.Join(t.TempDir(), "console.log")
	if err := os.WriteFile(path, []byte(console), 0o644); err != nil {
		t.Fatal(err)
	}
	return &fakeVM{id: vm.NewID(), console: path, guest: g, stopped: make(chan struct{})}
}

func (f *fakeVM) ID() string         { return f.id }
func (f *fakeVM) ConsoleLog() string { return f.console }

func (f *fakeVM) Info() vm.Info {
	st := vm.StateRunning
	if isExited(f.stopped) {
		st = vm.StateStopped
	}
	return vm.Info{ID: f.id, State: st}
}

func (f *fakeVM) Wait(ctx context.Context) (vm.ExitStatus, error) {
	select {
	case <-f.stopped:
		return vm.ExitStatus{Reason: "guest-reset"}, nil
	case <-ctx.Done():
		return vm.ExitStatus{}, ctx.Err()
	}
}

// stop ends the VM, as its guest powering off would.
func (f *fakeVM) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !isExited(f.stopped) {
		close(f.stopped)
	}
}

func (f *fakeVM) Destroy(context.Context) error {
	f.stop()
	f.mu.Lock()
	f.destroyed = true
	f.mu.Unlock()
	return nil
}

func (f *fakeVM) isDestroyed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.destroyed
}

func (f *fakeVM) GuestChannel(context.Context) (io.ReadWriteCloser, error) {
	if f.guest == nil || isExited(f.stopped) {
		return nil, errors.New("no guest channel: the VM is not running")
	}
	gc, hc := net.Pipe()
	go func() {
		defer gc.Close()
		f.guest(guest.NewConn(gc))
	}()
	return hc, nil
}

func fakeHost() *Host { return &Host{Log: slog.New(slog.DiscardHandler)} }

func detachedAt(in vm.Instance, offset int64) Detached {
	return Detached{VMID: in.ID(), Offset: offset, Started: time.Now(), Sent: time.Now(),
		Egress: egress.Open, Features: []string{guest.FeatureResume}, Result: Result{VMID: in.ID()}}
}

func output(c *guest.Conn, s guest.Stream, off int64, data string) {
	c.WriteFrame(guest.FrameOutput, guest.EncodeOutput(s, off, []byte(data)))
}

// A new host skips what reaches it before Resumed, keeps what it had
// already of output sent again, says how much the guest dropped, writes
// each stream to its writer, and acknowledges the Exit.
func TestReattachRelaysTheRestOfTheOutput(t *testing.T) {
	var resume guest.Resume
	acked := make(chan bool, 1)
	var f *fakeVM
	f = newFakeVM(t, "", func(c *guest.Conn) {
		// Written before the new host connected, for the one that left.
		output(c, guest.StreamStdout, 0, "stale\n")
		c.WriteFrame(guest.FrameExecOutput, guest.EncodeExecOutput(9, guest.StreamStdout, []byte("old session")))
		for {
			ft, p, err := c.ReadFrame()
			if err != nil {
				return
			}
			if ft == guest.FrameResume {
				guest.Decode(ft, p, &resume)
				break
			}
		}
		c.WriteJSON(guest.FrameResumed, guest.Resumed{State: guest.StateRunning})
		output(c, guest.StreamStdout, 0, "line 1\nline 2\n") // 0-6 the host has
		output(c, guest.StreamStderr, 14, "warn\n")
		c.WriteFrame(guest.FrameHeartbeat, nil)
		output(c, guest.StreamStdout, 119, "line 9\n") // 19-119 dropped
		c.WriteJSON(guest.FrameExit, guest.Exit{Code: 3})
		ft, _, err := c.ReadFrame()
		acked <- err == nil && ft == guest.FrameExitAck
		f.stop()
	})
	var stdout, stderr syncbuf.Buffer
	res, err := fakeHost().Reattach(context.Background(), f, detachedAt(f, 7), ReattachRequest{Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	if resume.Offset != 7 {
		t.Errorf("Resume asked for output from %d, want 7", resume.Offset)
	}
	if !<-acked {
		t.Error("the Exit was not acknowledged")
	}
	if res.ExitCode != 3 || res.Failure != "" || res.VMID != f.id {
		t.Errorf("result %+v", res)
	}
	if got := stdout.String(); got != "line 2\nline 9\n" {
		t.Errorf("stdout %q", got)
	}
	if got := stderr.String(); !strings.HasPrefix(got, "warn\n[tandem: 100 bytes") || strings.Count(got, "\n") != 2 {
		t.Errorf("stderr %q, want the job's line and one saying 100 bytes were lost", got)
	}
	if !f.isDestroyed() {
		t.Error("the VM was not destroyed")
	}
}

// Output older than the guest still holds is said to be lost at once,
// even when no later output comes to show the gap.
func TestReattachSaysWhatTheGuestNoLongerHolds(t *testing.T) {
	f := newFakeVM(t, "", nil)
	f.guest = func(c *guest.Conn) {
		c.ReadFrame()
		c.WriteJSON(guest.FrameResumed, guest.Resumed{State: guest.StateExited, Exit: &guest.Exit{Code: 0}, Oldest: 50})
		c.WriteJSON(guest.FrameExit, guest.Exit{Code: 0})
		c.ReadFrame()
		f.stop()
	}
	var stderr syncbuf.Buffer
	res, err := fakeHost().Reattach(context.Background(), f, detachedAt(f, 20), ReattachRequest{Stderr: &stderr})
	if err != nil || res.ExitCode != 0 || res.Failure != "" {
		t.Fatalf("result %+v, err %v", res, err)
	}
	if !strings.Contains(stderr.String(), "30 bytes of the job's output were lost") {
		t.Errorf("stderr %q", stderr.String())
	}
}

// A job whose VM ended while no host was attached has the exit its guest
// printed on the console; without one, it failed.
func TestReattachToAVMThatEnded(t *testing.T) {
	for _, tc := range []struct {
		console string
		code    int
		failure failure.Kind
	}{
		{"boot\r\n" + guest.ExitLinePrefix + `{"code":4,"duration_ms":1200}` + "\r\nreboot: Restarting system\r\n", 4, ""},
		{"boot\r\nreboot: Restarting system\r\n", 0, failure.GuestCrash},
	} {
		f := newFakeVM(t, tc.console, nil)
		f.stop()
		var stderr syncbuf.Buffer
		res, err := fakeHost().Reattach(context.Background(), f, detachedAt(f, 10), ReattachRequest{Stderr: &stderr})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != tc.code || res.Failure != tc.failure {
			t.Errorf("console %q: result %+v", tc.console, res)
		}
		if tc.failure != "" && !strings.Contains(res.Detail, "while no host was attached") {
			t.Errorf("detail %q", res.Detail)
		}
		if tc.failure == "" && !strings.Contains(stderr.String(), "past byte 10") {
			t.Errorf("stderr %q, want a line saying output past byte 10 is lost", stderr.String())
		}
		if !f.isDestroyed() {
			t.Error("the VM was not destroyed")
		}
	}
}

// A reattached job can be let go again: the VM is left, and the Detached
// returned has the output received since.
func TestReattachDetachesAgain(t *testing.T) {
	closed := make(chan struct{})
	f := newFakeVM(t, "", func(c *guest.Conn) {
		c.ReadFrame()
		c.WriteJSON(guest.FrameResumed, guest.Resumed{State: guest.StateRunning})
		output(c, guest.StreamStdout, 5, "more\n")
		for {
			if _, _, err := c.ReadFrame(); err != nil {
				close(closed)
				return
			}
		}
	})
	ctx, cancel := context.WithCancelCause(context.Background())
	var stdout syncbuf.Buffer
	w := writerFunc(func(p []byte) (int, error) {
		n, err := stdout.Write(p)
		cancel(ErrDetached)
		return n, err
	})
	d0 := detachedAt(f, 5)
	d0.TimeoutMS = 60000
	res, err := fakeHost().Reattach(ctx, f, d0, ReattachRequest{Stdout: w})
	var d *Detached
	if !errors.As(err, &d) || !errors.Is(err, ErrDetached) {
		t.Fatalf("err %v, want a *Detached", err)
	}
	if d.Offset != 10 || d.VMID != f.id || d.TimeoutMS != 60000 || !d.Sent.Equal(d0.Sent) {
		t.Errorf("detached %+v", d)
	}
	if res.Failure != "" || f.isDestroyed() {
		t.Errorf("result %+v, VM destroyed %v: the job should run on", res, f.isDestroyed())
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Error("the guest channel was not closed")
	}
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }

func TestReattachRefusesAnotherVM(t *testing.T) {
	f := newFakeVM(t, "", nil)
	_, err := fakeHost().Reattach(context.Background(), f, Detached{VMID: vm.NewID()}, ReattachRequest{})
	if !errors.Is(err, ErrBadRequest) || f.isDestroyed() {
		t.Errorf("err %v, destroyed %v", err, f.isDestroyed())
	}
}

func TestExitLine(t *testing.T) {
	console := fmt.Sprintf("x\n%s{\"code\":1}\n%s{\"code\":2,\"timed_out\":true}\r\n[ 3.1] reboot\n", guest.ExitLinePrefix, guest.ExitLinePrefix)
	if e, ok := exitLine(console); !ok || e.Code != 2 || !e.TimedOut {
		t.Errorf("exitLine: %+v, %v", e, ok)
	}
	if _, ok := exitLine(guest.ExitLinePrefix + "{\"co"); ok {
		t.Error("a cut line was taken for an exit")
	}
}
