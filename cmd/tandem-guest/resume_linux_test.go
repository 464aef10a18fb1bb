//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/syncbuf"
)

// fakePort models the guest's end of a virtio-serial port whose host end
// is a Unix socket served by QEMU, which host processes connect to one at a
// time. While no host is connected, reads return EOF at once and writes
// block; a write blocked then completes into the next host. Writes are
// split at 32 KiB, and each piece goes whole to one host, or is lost when
// that host goes away while taking it.
type fakePort struct {
	mu     sync.Mutex
	cond   sync.Cond
	host   net.Conn // the guest's end of the connected host's pipe; nil: none
	closed bool
}

func newFakePort() *fakePort {
	p := &fakePort{}
	p.cond.L = &p.mu
	return p
}

// connect connects a new host and returns its end.
func (p *fakePort) connect() net.Conn {
	g, h := net.Pipe()
	p.mu.Lock()
	if p.host != nil {
		panic("fakePort: two hosts")
	}
	p.host = g
	p.mu.Unlock()
	p.cond.Broadcast()
	return h
}

// disconnect drops the connected host.
func (p *fakePort) disconnect() {
	p.mu.Lock()
	h := p.host
	p.host = nil
	p.mu.Unlock()
	if h != nil {
		h.Close()
	}
}

func (p *fakePort) Close() error {
	p.disconnect()
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cond.Broadcast()
	return nil
}

func (p *fakePort) Read(b []byte) (int, error) {
	p.mu.Lock()
	h, closed := p.host, p.closed
	p.mu.Unlock()
	switch {
	case closed:
		return 0, os.ErrClosed
	case h == nil:
		return 0, io.EOF
	}
	n, err := h.Read(b)
	if err != nil {
		err = io.EOF
	}
	return n, err
}

func (p *fakePort) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		piece := b[:min(len(b), 32<<10)]
		p.mu.Lock()
		for p.host == nil && !p.closed {
			p.cond.Wait()
		}
		h, closed := p.host, p.closed
		p.mu.Unlock()
		if closed {
			return n, os.ErrClosed
		}
		h.Write(piece) // an error: the host went away with it in flight
		n += len(piece)
		b = b[len(piece):]
	}
	return n, nil
}

// jobOutput is what the hosts of one resumable job saw, together.
type jobOutput struct {
	stdout, stderr bytes.Buffer
	next           int64 // offset of the next output byte expected
	gaps           [][2]int64
	resumed        []guest.Resumed
	exit           *guest.Exit
	heartbeats     int
	maxFrame       int
	exec           map[uint32]*bytes.Buffer // exec sessions' output
	execExits      map[uint32]guest.ExecExit
}

// resumableGuest runs runSession on a fake port.
type resumableGuest struct {
	t    *testing.T
	port *fakePort
	con  *syncbuf.Buffer
	done chan error
	ex   guest.Exit
}

func startResumable(t *testing.T, ringSize int) *resumableGuest {
	t.Helper()
	needSh(t)
	g := &resumableGuest{t: t, port: newFakePort(), con: &syncbuf.Buffer{}, done: make(chan error, 1)}
	go func() {
		ex, err := runSession(context.Background(), guest.NewConn(g.port), sessionConfig{
			Hello:     guest.Hello{Version: guest.Version, Arch: runtime.GOARCH, Kernel: "test", UptimeMS: 1},
			Heartbeat: 20 * time.Millisecond,
			Runner:    testRunner(),
			Con:       newConsole(g.con, nil),
			RingSize:  ringSize,
		})
		g.ex = ex
		g.done <- err
	}()
	t.Cleanup(func() { g.port.Close() })
	return g
}

// wait waits for runSession to return.
func (g *resumableGuest) wait(within time.Duration) {
	g.t.Helper()
	select {
	case err := <-g.done:
		if err != nil {
			g.t.Fatalf("runSession: %v", err)
		}
	case <-time.After(within):
		g.t.Fatalf("runSession did not return within %s; console:\n%s", within, g.con.String())
	}
}

// testHost is one host process connected to the guest.
type testHost struct {
	t       *testing.T
	nc      net.Conn
	c       *guest.Conn
	resumed bool              // frames count (Resumed seen, or the first host)
	stale   []guest.FrameType // frames before Resumed
}

// firstHost connects, reads Hello and sends job.
func (g *resumableGuest) firstHost(job guest.Job) *testHost {
	g.t.Helper()
	h := &testHost{t: g.t, nc: g.port.connect(), resumed: true}
	h.c = guest.NewConn(h.nc)
	h.nc.SetDeadline(time.Now().Add(20 * time.Second))
	hello, err := h.c.ReadHello()
	if err != nil {
		g.t.Fatal(err)
	}
	if !hello.Has(guest.FeatureResume) {
		g.t.Fatalf("hello features %v", hello.Features)
	}
	if err := h.c.WriteJSON(guest.FrameJob, job); err != nil {
		g.t.Fatal(err)
	}
	return h
}

// resumeHost connects a new host that sends before (frames the guest must
// ignore), then Resume at the output it has.
func (g *resumableGuest) resumeHost(o *jobOutput, before ...guest.FrameType) *testHost {
	g.t.Helper()
	h := &testHost{t: g.t, nc: g.port.connect()}
	h.c = guest.NewConn(h.nc)
	h.nc.SetDeadline(time.Now().Add(20 * time.Second))
	// The host writes while reading, as a real host must: the guest may
	// be blocked writing to it.
	go func() {
		for _, t := range before {
			h.c.WriteFrame(t, nil)
		}
		h.c.WriteJSON(guest.FrameResume, guest.Resume{Offset: o.next})
	}()
	return h
}

// read reads frames into o until until returns true.
func (h *testHost) read(o *jobOutput, until func() bool) {
	h.t.Helper()
	for !until() {
		typ, p, err := h.c.ReadFrame()
		if err != nil {
			h.t.Fatalf("host read: %v (output so far: %d bytes)", err, o.next)
		}
		if n := guest.FrameSize(len(p)); n > guest.MaxWrite {
			h.t.Errorf("%s frame of %d bytes", typ, n)
		}
		o.maxFrame = max(o.maxFrame, guest.FrameSize(len(p)))
		if !h.resumed {
			if typ == guest.FrameResumed {
				var r guest.Resumed
				if err := guest.Decode(typ, p, &r); err != nil {
					h.t.Fatal(err)
				}
				o.resumed = append(o.resumed, r)
				h.resumed = true
			} else {
				h.stale = append(h.stale, typ) // written before this host resumed
			}
			continue
		}
		switch typ {
		case guest.FrameOutput:
			s, off, data, err := guest.DecodeOutput(p)
			if err != nil {
				h.t.Fatal(err)
			}
			switch {
			case off > o.next:
				o.gaps = append(o.gaps, [2]int64{o.next, off})
			case off < o.next:
				h.t.Fatalf("output at %d, expected %d", off, o.next)
			}
			if s == guest.StreamStdout {
				o.stdout.Write(data)
			} else {
				o.stderr.Write(data)
			}
			o.next = off + int64(len(data))
		case guest.FrameHeartbeat:
			o.heartbeats++
		case guest.FrameExit:
			var e guest.Exit
			if err := guest.Decode(typ, p, &e); err != nil {
				h.t.Fatal(err)
			}
			o.exit = &e
		case guest.FrameExecOutput:
			id, _, data, err := guest.DecodeExecOutput(p)
			if err != nil {
				h.t.Fatal(err)
			}
			if o.exec == nil {
				o.exec = map[uint32]*bytes.Buffer{}
			}
			if o.exec[id] == nil {
				o.exec[id] = &bytes.Buffer{}
			}
			o.exec[id].Write(data)
			h.c.WriteFrame(guest.FrameExecAck, guest.EncodeExecAck(id, uint32(len(data))))
		case guest.FrameExecExit:
			var e guest.ExecExit
			if err := guest.Decode(typ, p, &e); err != nil {
				h.t.Fatal(err)
			}
			if o.execExits == nil {
				o.execExits = map[uint32]guest.ExecExit{}
			}
			o.execExits[e.ID] = e
		case guest.FrameStdout, guest.FrameStderr:
			h.t.Fatalf("%s frame on a resumable job", typ)
		default:
			h.t.Fatalf("unexpected %s frame", typ)
		}
	}
}

func (h *testHost) ack() {
	h.t.Helper()
	if err := h.c.WriteFrame(guest.FrameExitAck, nil); err != nil {
		h.t.Fatal(err)
	}
}

func resumable(script string, detach time.Duration) guest.Job {
	return guest.Job{Argv: []string{"/bin/sh", "-c", script}, Resumable: true, DetachTimeoutMS: detach.Milliseconds()}
}

// waitConsole waits for s on the guest's console.
func (g *resumableGuest) waitConsole(s string) {
	g.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(g.con.String(), s) {
		if time.Now().After(deadline) {
			g.t.Fatalf("no %q on the console:\n%s", s, g.con.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestResumeMidJobTwice(t *testing.T) {
	const lines = 150
	g := startResumable(t, 0)
	h := g.firstHost(resumable(fmt.Sprintf(`i=0; while [ $i -lt %d ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); sleep 0.01; done; exit 3`, lines), 10*time.Second))
	o := &jobOutput{}
	h.read(o, func() bool { return o.next >= 200 })
	g.port.disconnect()
	time.Sleep(300 * time.Millisecond) // the job goes on

	// A Cancel before Resume is not for this job's host: ignored.
	h = g.resumeHost(o, guest.FrameCancel)
	at := o.next
	h.read(o, func() bool { return o.next >= at+400 })
	g.port.disconnect()
	time.Sleep(300 * time.Millisecond)

	h = g.resumeHost(o)
	h.read(o, func() bool { return o.exit != nil })
	h.ack()
	g.wait(5 * time.Second)

	var wantOut, wantErr strings.Builder
	for i := range lines {
		fmt.Fprintf(&wantOut, "out %d\n", i)
		fmt.Fprintf(&wantErr, "err %d\n", i)
	}
	if o.stdout.String() != wantOut.String() || o.stderr.String() != wantErr.String() {
		t.Errorf("stdout %q\nstderr %q", o.stdout.String(), o.stderr.String())
	}
	if o.exit.Code != 3 || g.ex.Code != 3 {
		t.Errorf("exit %+v, runSession's %+v", *o.exit, g.ex)
	}
	if len(o.resumed) != 2 || o.resumed[0].State != guest.StateRunning || o.resumed[1].State != guest.StateRunning {
		t.Errorf("resumed %+v", o.resumed)
	}
	if len(o.gaps) != 0 {
		t.Errorf("gaps %v", o.gaps)
	}
	if o.heartbeats == 0 {
		t.Error("no heartbeats")
	}
	if !strings.Contains(g.con.String(), guest.ExitLinePrefix+`{"code":3,`) {
		t.Errorf("no exit line on the console:\n%s", g.con.String())
	}
}

func TestResumeAfterExitWhileDetached(t *testing.T) {
	g := startResumable(t, 0)
	g.firstHost(resumable(`echo hi; echo oops >&2; sleep 0.2; echo bye; exit 7`, 10*time.Second))
	g.port.disconnect()
	g.waitConsole(guest.ExitLinePrefix)

	o := &jobOutput{}
	h := g.resumeHost(o)
	h.read(o, func() bool { return o.exit != nil })
	if len(o.resumed) != 1 || o.resumed[0].State != guest.StateExited || o.resumed[0].Exit == nil || o.resumed[0].Exit.Code != 7 || o.resumed[0].Oldest != 0 {
		t.Fatalf("resumed %+v", o.resumed)
	}
	if o.stdout.String() != "hi\nbye\n" || o.stderr.String() != "oops\n" || o.exit.Code != 7 {
		t.Fatalf("stdout %q stderr %q exit %+v", o.stdout.String(), o.stderr.String(), *o.exit)
	}
	select {
	case err := <-g.done:
		t.Fatalf("runSession returned before ExitAck: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	start := time.Now()
	h.ack()
	g.wait(5 * time.Second)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("powered off %s after ExitAck", d)
	}
	if g.ex.Code != 7 {
		t.Errorf("runSession's exit %+v", g.ex)
	}
}

// TestExitResentAfterResume: a host that goes away before it acknowledged
// the Exit gets it again, after Resumed, from the next one.
func TestExitResentAfterResume(t *testing.T) {
	g := startResumable(t, 0)
	h := g.firstHost(resumable(`echo done`, 10*time.Second))
	o := &jobOutput{}
	h.read(o, func() bool { return o.exit != nil })
	g.port.disconnect()

	o2 := &jobOutput{next: o.next}
	h = g.resumeHost(o2)
	h.read(o2, func() bool { return o2.exit != nil })
	if len(o2.resumed) != 1 || o2.resumed[0].State != guest.StateExited || o2.stdout.Len() != 0 || o2.exit.Code != 0 {
		t.Fatalf("resumed %+v, stdout %q, exit %+v", o2.resumed, o2.stdout.String(), *o2.exit)
	}
	h.ack()
	g.wait(5 * time.Second)
}

func TestDetachTimeoutPowersOff(t *testing.T) {
	g := startResumable(t, 0)
	start := time.Now()
	g.firstHost(resumable(`sleep 0.2; exit 0`, 500*time.Millisecond))
	g.port.disconnect()
	g.wait(10 * time.Second)
	if d := time.Since(start); d < 700*time.Millisecond {
		t.Errorf("powered off after %s, before the job's end and the detach timeout", d)
	}
	if !strings.Contains(g.con.String(), "no host acknowledged the exit") {
		t.Errorf("console:\n%s", g.con.String())
	}
}

func TestRingOverflowReportsGap(t *testing.T) {
	const ring = 64 << 10
	g := startResumable(t, ring)
	g.firstHost(resumable(`i=0; while [ $i -lt 20000 ]; do echo "line $i"; i=$((i+1)); done`, 10*time.Second))
	g.port.disconnect()
	g.waitConsole(guest.ExitLinePrefix)

	var want strings.Builder
	for i := range 20000 {
		fmt.Fprintf(&want, "line %d\n", i)
	}
	o := &jobOutput{}
	h := g.resumeHost(o)
	h.read(o, func() bool { return o.exit != nil })
	h.ack()
	g.wait(5 * time.Second)

	end := int64(want.Len())
	if len(o.resumed) != 1 || o.resumed[0].Oldest != end-ring {
		t.Fatalf("resumed %+v, want oldest %d", o.resumed, end-ring)
	}
	if len(o.gaps) != 1 || o.gaps[0] != [2]int64{0, end - ring} {
		t.Errorf("gaps %v", o.gaps)
	}
	if o.stdout.String() != want.String()[end-ring:] {
		t.Errorf("output after the gap is not the job's last %d bytes", ring)
	}
	// read checks that no frame is above MaxWrite; small writes of the
	// job make larger frames.
	if o.maxFrame < guest.MaxWrite/2 {
		t.Errorf("largest frame %d bytes: output not coalesced", o.maxFrame)
	}
}

// TestExecCancelAndHoldAfterResume: the host that resumed runs exec
// sessions (the old host's are ended and forgotten, their ids free), and
// its Hold and Release work.
func TestExecAndHoldAfterResume(t *testing.T) {
	g := startResumable(t, 0)
	stop := filepath.Join(t.TempDir(), "stop")
	h := g.firstHost(resumable(`echo started; while [ ! -e `+stop+` ]; do sleep 0.02; done`, 10*time.Second))
	if err := h.c.WriteJSON(guest.FrameExecOpen, guest.ExecOpen{ID: 1, Argv: []string{"sh", "-c", "echo old; sleep 30"}}); err != nil {
		t.Fatal(err)
	}
	o := &jobOutput{}
	h.read(o, func() bool {
		return o.stdout.String() == "started\n" && o.exec[1] != nil && o.exec[1].String() == "old\n"
	})
	g.port.disconnect()
	g.waitConsole("host detached")
	time.Sleep(200 * time.Millisecond)

	h = g.resumeHost(o)
	h.read(o, func() bool { return h.resumed })
	o.exec, o.execExits = nil, nil
	if err := h.c.WriteJSON(guest.FrameExecOpen, guest.ExecOpen{ID: 1, Argv: []string{"sh", "-c", "echo new"}}); err != nil {
		t.Fatal(err)
	}
	h.read(o, func() bool { _, ok := o.execExits[1]; return ok })
	if o.exec[1] == nil || o.exec[1].String() != "new\n" || o.execExits[1].Code != 0 || o.execExits[1].Error != "" {
		t.Fatalf("exec after resume: output %v, exit %+v", o.exec[1], o.execExits[1])
	}
	if err := h.c.WriteFrame(guest.FrameHold, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	h.read(o, func() bool { return o.exit != nil })
	if o.exit.Code != 0 || o.stdout.String() != "started\n" {
		t.Fatalf("exit %+v, stdout %q", *o.exit, o.stdout.String())
	}
	h.ack()
	select {
	case err := <-g.done:
		t.Fatalf("a held guest returned on ExitAck: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := h.c.WriteFrame(guest.FrameRelease, nil); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, h.nc) // heartbeats, until the end
	g.wait(5 * time.Second)
}

func TestCancelAfterResume(t *testing.T) {
	g := startResumable(t, 0)
	h := g.firstHost(resumable(`echo started; sleep 30`, 10*time.Second))
	o := &jobOutput{}
	h.read(o, func() bool { return o.stdout.Len() > 0 })
	g.port.disconnect()
	g.waitConsole("host detached")

	h = g.resumeHost(o)
	h.read(o, func() bool { return h.resumed })
	if err := h.c.WriteFrame(guest.FrameCancel, nil); err != nil {
		t.Fatal(err)
	}
	h.read(o, func() bool { return o.exit != nil })
	if o.exit.Code != codeCancelled || o.stdout.String() != "started\n" {
		t.Fatalf("exit %+v, stdout %q", *o.exit, o.stdout.String())
	}
	h.ack()
	g.wait(5 * time.Second)
}
