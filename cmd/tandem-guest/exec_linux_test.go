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
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
)

// execHost is a fake host speaking to runSession over net.Pipe, for exec
// sessions: it keeps each session's output and end, and acknowledges
// output as it arrives unless told to hold back.
type execHost struct {
	t  *testing.T
	h  *guest.Conn
	hc net.Conn

	hello      guest.Hello
	state      string // the session count's file
	guestDone  chan error
	readerDone chan struct{}

	mu         sync.Mutex
	cond       sync.Cond
	out        map[uint32]*bytes.Buffer
	errOut     map[uint32]*bytes.Buffer
	exits      map[uint32]guest.ExecExit
	noAck      bool
	unacked    int // output bytes received while noAck
	inputAcked int
	exit       *guest.Exit
	afterExit  int // heartbeats after Exit
}

func startExecHost(t *testing.T) *execHost {
	t.Helper()
	needSh(t)
	gc, hc := net.Pipe()
	x := &execHost{t: t, h: guest.NewConn(hc), hc: hc, guestDone: make(chan error, 1), readerDone: make(chan struct{}),
		out: map[uint32]*bytes.Buffer{}, errOut: map[uint32]*bytes.Buffer{}, exits: map[uint32]guest.ExecExit{}}
	x.cond.L = &x.mu
	x.state = filepath.Join(t.TempDir(), "tandem", "exec-sessions")
	go func() {
		defer gc.Close()
		_, err := runSession(context.Background(), guest.NewConn(gc), sessionConfig{
			Hello:     guest.Hello{Version: guest.Version, Arch: runtime.GOARCH, Kernel: "test"},
			Heartbeat: 20 * time.Millisecond,
			Runner:    testRunner(),
			Con:       newConsole(io.Discard, nil),
			ExecState: x.state,
		})
		x.guestDone <- err
	}()
	typ, p, err := x.h.ReadFrame()
	if err != nil || typ != guest.FrameHello || guest.Decode(typ, p, &x.hello) != nil {
		t.Fatalf("first frame: %v %v", typ, err)
	}
	go x.read()
	t.Cleanup(func() {
		hc.Close()
		<-x.readerDone
		select {
		case <-x.guestDone:
		case <-time.After(10 * time.Second):
			t.Error("runSession did not return after the host went away")
		}
	})
	return x
}

func (x *execHost) read() {
	defer close(x.readerDone)
	for {
		typ, p, err := x.h.ReadFrame()
		if err != nil {
			x.mu.Lock()
			x.cond.Broadcast()
			x.mu.Unlock()
			return
		}
		x.mu.Lock()
		switch typ {
		case guest.FrameExecOutput:
			id, s, data, err := guest.DecodeExecOutput(p)
			if err != nil {
				x.t.Errorf("output frame: %v", err)
				break
			}
			if len(data) > guest.ExecChunk {
				x.t.Errorf("output frame of %d bytes", len(data))
			}
			m := x.out
			if s == guest.StreamStderr {
				m = x.errOut
			}
			if m[id] == nil {
				m[id] = &bytes.Buffer{}
			}
			m[id].Write(data)
			if x.noAck {
				x.unacked += len(data)
			} else {
				go x.h.WriteFrame(guest.FrameExecAck, guest.EncodeExecAck(id, uint32(len(data))))
			}
		case guest.FrameExecExit:
			var e guest.ExecExit
			if err := guest.Decode(typ, p, &e); err != nil {
				x.t.Errorf("exec exit: %v", err)
			}
			x.exits[e.ID] = e
		case guest.FrameExecAck:
			_, n, _ := guest.DecodeExecAck(p)
			x.inputAcked += int(n)
		case guest.FrameExit:
			var e guest.Exit
			guest.Decode(typ, p, &e)
			x.exit = &e
		case guest.FrameHeartbeat:
			if x.exit != nil {
				x.afterExit++
			}
		}
		x.cond.Broadcast()
		x.mu.Unlock()
	}
}

// waitFor waits until cond holds (under the host's lock).
func (x *execHost) waitFor(what string, cond func() bool) {
	x.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	timer := time.AfterFunc(20*time.Second, func() { x.mu.Lock(); x.cond.Broadcast(); x.mu.Unlock() })
	defer timer.Stop()
	x.mu.Lock()
	defer x.mu.Unlock()
	for !cond() {
		if time.Now().After(deadline) {
			x.t.Fatalf("timed out waiting for %s; outputs %v, exits %+v", what, x.dump(), x.exits)
		}
		x.cond.Wait()
	}
}

func (x *execHost) dump() map[uint32]string {
	m := map[uint32]string{}
	for id, b := range x.out {
		m[id] = b.String()
		if b.Len() > 200 {
			m[id] = fmt.Sprintf("%d bytes", b.Len())
		}
	}
	return m
}

func (x *execHost) stdout(id uint32) string {
	if b := x.out[id]; b != nil {
		return b.String()
	}
	return ""
}

func (x *execHost) waitOutput(id uint32, want string) {
	x.t.Helper()
	x.waitFor(strconv.Quote(want), func() bool { return strings.Contains(x.stdout(id), want) })
}

func (x *execHost) waitExit(id uint32) guest.ExecExit {
	x.t.Helper()
	var e guest.ExecExit
	x.waitFor("exit of session "+strconv.Itoa(int(id)), func() bool {
		var ok bool
		e, ok = x.exits[id]
		return ok
	})
	return e
}

func (x *execHost) send(t guest.FrameType, v any) {
	x.t.Helper()
	var err error
	if b, ok := v.([]byte); ok {
		err = x.h.WriteFrame(t, b)
	} else {
		err = x.h.WriteJSON(t, v)
	}
	if err != nil {
		x.t.Fatal(err)
	}
}

func (x *execHost) input(id uint32, s string) {
	x.send(guest.FrameExecInput, guest.EncodeExecInput(id, []byte(s)))
}

func TestExecHelloAdvertises(t *testing.T) {
	x := startExecHost(t)
	if !x.hello.Has(guest.FeatureExec) || !x.hello.Has(guest.FeatureHold) {
		t.Fatalf("hello features %v", x.hello.Features)
	}
}

func TestExecPipes(t *testing.T) {
	x := startExecHost(t)
	x.send(guest.FrameExecOpen, guest.ExecOpen{ID: 1, Argv: []string{"sh", "-c", "cat; echo err >&2; echo $FOO; exit 3"}, Env: map[string]string{"FOO": "bar"}})
	x.input(1, "hello ")
	x.input(1, "world\n")
	x.send(guest.FrameExecEOF, guest.EncodeExecID(1))
	e := x.waitExit(1)
	if e.Code != 3 || e.Error != "" {
		t.Fatalf("exit %+v", e)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.stdout(1) != "hello world\nbar\n" || x.errOut[1].String() != "err\n" || x.inputAcked != len("hello world\n") {
		t.Fatalf("stdout %q stderr %q, %d input bytes acknowledged", x.stdout(1), x.errOut[1], x.inputAcked)
	}
}

func TestExecTTY(t *testing.T) {
	if _, err := os.Stat("/dev/ptmx"); err != nil {
		t.Skip("no /dev/ptmx")
	}
	x := startExecHost(t)
	x.send(guest.FrameExecOpen, guest.ExecOpen{ID: 5, Argv: []string{"/bin/sh"}, TTY: true, Rows: 24, Cols: 80, Env: map[string]string{"PS1": "$ "}})
	x.input(5, "tty >/dev/null && echo is-$((6*7)); echo $TERM\n")
	x.waitOutput(5, "is-42\r\nxterm\r\n")
	x.input(5, "stty size\n")
	x.waitOutput(5, "24 80\r\n")
	x.send(guest.FrameExecResize, guest.ExecResize{ID: 5, Rows: 40, Cols: 120})
	x.input(5, "stty size\n")
	x.waitOutput(5, "40 120\r\n")
	// ^C, through the terminal's line discipline, interrupts the command.
	x.input(5, "sleep 100; echo not-interrupted\n")
	time.Sleep(300 * time.Millisecond)
	x.input(5, "\x03")
	x.input(5, "echo back-$((2*3))\n")
	start := time.Now()
	x.waitOutput(5, "back-6")
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("^C took %s", d)
	}
	x.input(5, "exit 3\n")
	if e := x.waitExit(5); e.Code != 3 || e.Error != "" {
		t.Fatalf("exit %+v", e)
	}
}

func TestExecSignalsAndKill(t *testing.T) {
	x := startExecHost(t)
	x.send(guest.FrameExecOpen, guest.ExecOpen{ID: 1, Argv: []string{"sh", "-c", "echo ready; sleep 30"}})
	x.waitOutput(1, "ready")
	x.send(guest.FrameExecSignal, guest.ExecSignal{ID: 1, Signal: "TERM"})
	if e := x.waitExit(1); e.Code != 143 || e.Signal != "SIGTERM" {
		t.Fatalf("TERM: %+v", e)
	}
	// SIGKILL ends the session, what it started in the background too.
	x.send(guest.FrameExecOpen, guest.ExecOpen{ID: 2, Argv: []string{"sh", "-c", "sleep 300 & echo pid $!; wait"}})
	x.waitOutput(2, "\n")
	x.mu.Lock()
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(x.stdout(2), "pid ")))
	x.mu.Unlock()
	x.send(guest.FrameExecSignal, guest.ExecSignal{ID: 2, Signal: "SIGKILL"})
	if e := x.waitExit(2); e.Code != 137 || e.Signal != "SIGKILL" || e.Error != "" {
		t.Fatalf("KILL: %+v", e)
	}
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("the session's background process %d outlived it", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// alive says whether pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && !strings.HasPrefix(string(b[i+1:]), " Z")
}

func TestExecBadFramesAndLimits(t *testing.T) {
	x := startExecHost(t)
	x.send(guest.FrameExecOpen, []byte("{not json"))
	x.send(guest.FrameExecInput, []byte{0, 1})
	x.send(guest.FrameExecInput, guest.EncodeExecInput(99, []byte("to nobody"))) // ignored
	x.send(guest.FrameExecOpen, guest.ExecOpen{ID: 3, Argv: []string{"tandem-no-such-program"}})
	x.send(guest.FrameExecOpen, guest.ExecOpen{ID: 4, Argv: []string{"sh"}, Dir: "/nonexistent/dir"})
	if e := x.waitExit(3); e.Code != 127 || !strings.Contains(e.Error, "not found") {
		t.Fatalf("missing program: %+v", e)
	}
	if e := x.waitExit(4); e.Code != 125 || !strings.Contains(e.Error, "dir") {
		t.Fatalf("bad dir: %+v", e)
	}
	x.waitFor("two refusals for id 0", func() bool { _, ok := x.exits[0]; return ok })

	for id := uint32(10); id < 10+guest.MaxExecSessions; id++ {
		x.send(guest.FrameExecOpen, guest.ExecOpen{ID: id, Argv: []string{"sh", "-c", "echo up; exec sleep 30"}})
		x.waitOutput(id, "up")
	}
	x.send(guest.FrameExecOpen, guest.ExecOpen{ID: 100, Argv: []string{"true"}})
	if e := x.waitExit(100); e.Code != 125 || !strings.Contains(e.Error, "too many") {
		t.Fatalf("past the limit: %+v", e)
	}
	// A bad frame naming a session ends it, with the error.
	x.send(guest.FrameExecSignal, guest.ExecSignal{ID: 10, Signal: "SIGNOPE"})
	if e := x.waitExit(10); e.Code != 137 || !strings.Contains(e.Error, "unknown signal") {
		t.Fatalf("bad signal: %+v", e)
	}
	// The job's end ends the others.
	x.send(guest.FrameJob, guest.Job{Argv: []string{"true"}})
	x.waitFor("the job's exit", func() bool { return x.exit != nil })
	x.mu.Lock()
	defer x.mu.Unlock()
	for id := uint32(11); id < 10+guest.MaxExecSessions; id++ {
		if e, ok := x.exits[id]; !ok || e.Error != errJobEnded.Error() {
			t.Errorf("session %d at the job's end: %+v (reported %v)", id, e, ok)
		}
	}
}

// A host that does not acknowledge output stops the session's output at
// the window; heartbeats go on; acknowledging resumes it.
func TestExecFlowControl(t *testing.T) {
	x := startExecHost(t)
	x.mu.Lock()
	x.noAck = true
	x.mu.Unlock()
	const total = 1 << 20
	x.send(guest.FrameExecOpen, guest.ExecOpen{ID: 1, Argv: []string{"head", "-c", strconv.Itoa(total), "/dev/zero"}})
	x.waitFor("a full window", func() bool { return x.unacked == guest.ExecWindow })
	time.Sleep(200 * time.Millisecond)
	x.mu.Lock()
	if x.unacked != guest.ExecWindow {
		t.Errorf("%d bytes sent past a window of %d", x.unacked, guest.ExecWindow)
	}
	_, exited := x.exits[1]
	x.noAck = false
	n := x.unacked
	x.mu.Unlock()
	if exited {
		t.Fatal("the session ended with its output held back")
	}
	x.send(guest.FrameExecAck, guest.EncodeExecAck(1, uint32(n)))
	if e := x.waitExit(1); e.Code != 0 {
		t.Fatalf("exit %+v", e)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if got := x.out[1].Len(); got != total {
		t.Fatalf("%d bytes of output, want %d", got, total)
	}
}

func TestExecHoldAfterExit(t *testing.T) {
	x := startExecHost(t)
	x.send(guest.FrameHold, []byte(nil))
	x.send(guest.FrameJob, guest.Job{Argv: []string{"sh", "-c", "exit 4"}})
	x.waitFor("the job's exit", func() bool { return x.exit != nil })
	if x.exit.Code != 4 {
		t.Fatalf("exit %+v", x.exit)
	}
	x.waitFor("heartbeats after Exit", func() bool { return x.afterExit >= 2 })
	x.send(guest.FrameExecOpen, guest.ExecOpen{ID: 1, Argv: []string{"echo", "still-here"}})
	x.waitOutput(1, "still-here\n")
	x.waitExit(1)
	x.send(guest.FrameRelease, []byte(nil))
	select {
	case err := <-x.guestDone:
		x.guestDone <- err
		if err != nil {
			t.Fatalf("runSession: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Release did not end the session")
	}
}

func TestExecAsUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to change user")
	}
	if _, err := lookupAccount("nobody"); err != nil {
		t.Skip("no nobody account")
	}
	x := startExecHost(t)
	x.send(guest.FrameExecOpen, guest.ExecOpen{ID: 1, User: "nobody", Argv: []string{"sh", "-c", "echo $(id -u) $USER; pwd"}})
	if e := x.waitExit(1); e.Code != 0 {
		t.Fatalf("exit %+v", e)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if got := x.stdout(1); got != "65534 nobody\n/\n" { // nobody's home does not exist
		t.Fatalf("stdout %q", got)
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]int{"SIGINT": 2, "int": 2, "TERM": 15, "9": 9, "SIGWINCH": 28} {
		if got, err := parseSignal(in); err != nil || int(got) != want {
			t.Errorf("parseSignal(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "SIGNOPE", "0", "99"} {
		if _, err := parseSignal(in); err == nil {
			t.Errorf("parseSignal(%q) succeeded", in)
		}
	}
}
