package jobvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/syncbuf"
)

// fakeGuest speaks the guest's side of exec sessions over net.Pipe, with
// simple programs: "echo" sends its input back and exits 7 at its end;
// "flood N" writes N bytes, as fast as the host's window lets it, and
// exits 0; "wait" runs until killed. A resize is reported as output; a
// signal ends the session with 128+9. It keeps to the host's window for
// output and checks the host keeps to its own for input.
type fakeGuest struct {
	t  *testing.T
	c  *guest.Conn
	gc net.Conn

	mu       sync.Mutex
	sessions map[uint32]*fakeSession
	opened   int
	signals  []string
}

type fakeSession struct {
	prog     string
	out      *guest.Window
	inFlight int // input received, not yet acknowledged
}

// newExecRig connects an Execer to a fake guest whose Hello lists features.
func newExecRig(t *testing.T, features ...string) (*Execer, *fakeGuest) {
	gc, hc := net.Pipe()
	e := newExecer(guest.NewConn(hc), slog.New(slog.DiscardHandler))
	e.ready(guest.Hello{Version: guest.Version, Features: features})
	// The host's reader, as session.read: exec frames to the Execer.
	go func() {
		defer e.close()
		for {
			t, p, err := e.conn.ReadFrame()
			if err != nil {
				return
			}
			e.route(t, p)
		}
	}()
	g := &fakeGuest{t: t, c: guest.NewConn(gc), gc: gc, sessions: map[uint32]*fakeSession{}}
	go g.serve()
	t.Cleanup(func() { gc.Close(); hc.Close() })
	return e, g
}

func (g *fakeGuest) serve() {
	for {
		t, p, err := g.c.ReadFrame()
		if err != nil {
			return
		}
		g.mu.Lock()
		switch t {
		case guest.FrameExecOpen:
			var o guest.ExecOpen
			guest.Decode(t, p, &o)
			s := &fakeSession{out: guest.NewWindow(guest.ExecWindow)}
			if len(o.Argv) > 0 {
				s.prog = o.Argv[0]
			}
			g.sessions[o.ID] = s
			g.opened++
			var n int
			if len(o.Argv) == 2 && o.Argv[0] == "flood" {
				fmt.Sscan(o.Argv[1], &n)
				go g.flood(o.ID, s, n)
			}
		case guest.FrameExecInput:
			id, data, _ := guest.DecodeExecInput(p)
			s := g.sessions[id]
			s.inFlight += len(data)
			if s.inFlight > guest.ExecWindow {
				g.t.Errorf("the host sent %d bytes of input past the window", s.inFlight)
			}
			go func() {
				g.send(s, id, data)
				g.mu.Lock()
				s.inFlight -= len(data)
				g.mu.Unlock()
				g.c.WriteFrame(guest.FrameExecAck, guest.EncodeExecAck(id, uint32(len(data))))
			}()
		case guest.FrameExecEOF:
			id, _ := guest.DecodeExecID(p)
			if p := g.sessions[id].prog; p == "flood" || p == "wait" {
				break
			}
			go func() {
				// After the input still on its way back.
				time.Sleep(20 * time.Millisecond)
				g.c.WriteJSON(guest.FrameExecExit, guest.ExecExit{ID: id, Code: 7})
			}()
		case guest.FrameExecResize:
			var r guest.ExecResize
			guest.Decode(t, p, &r)
			go g.send(g.sessions[r.ID], r.ID, fmt.Appendf(nil, "resize %dx%d\n", r.Rows, r.Cols))
		case guest.FrameExecSignal:
			var sig guest.ExecSignal
			guest.Decode(t, p, &sig)
			g.signals = append(g.signals, sig.Signal)
			go g.c.WriteJSON(guest.FrameExecExit, guest.ExecExit{ID: sig.ID, Code: 137, Signal: sig.Signal})
		case guest.FrameExecAck:
			id, n, _ := guest.DecodeExecAck(p)
			g.sessions[id].out.Give(int(n))
		}
		g.mu.Unlock()
	}
}

// send writes output within the window, in chunks.
func (g *fakeGuest) send(s *fakeSession, id uint32, data []byte) {
	for len(data) > 0 {
		n, err := s.out.Take(min(len(data), guest.ExecChunk))
		if err != nil {
			return
		}
		if g.c.WriteFrame(guest.FrameExecOutput, guest.EncodeExecOutput(id, guest.StreamStdout, data[:n])) != nil {
			return
		}
		data = data[n:]
	}
}

func (g *fakeGuest) flood(id uint32, s *fakeSession, n int) {
	g.send(s, id, bytes.Repeat([]byte("x"), n))
	g.c.WriteJSON(guest.FrameExecExit, guest.ExecExit{ID: id})
}

func TestExecUnsupportedGuest(t *testing.T) {
	e, _ := newExecRig(t) // an older guest: no features in its Hello
	if _, err := e.Exec(context.Background(), ExecRequest{}, nil, nil, nil, nil); !errors.Is(err, ErrExecUnsupported) {
		t.Fatalf("Exec = %v, want ErrExecUnsupported", err)
	}
}

// Input larger than the window goes through, within it, and comes back.
func TestExecRoundTripAndResize(t *testing.T) {
	e, g := newExecRig(t, guest.FeatureExec)
	in := bytes.Repeat([]byte("0123456789abcdef"), 3*guest.ExecWindow/16+5)
	var out bytes.Buffer
	x, err := e.Exec(context.Background(), ExecRequest{Argv: []string{"echo"}}, bytes.NewReader(in), &out, nil, nil)
	if err != nil || x.Code != 7 {
		t.Fatalf("Exec = %+v, %v", x, err)
	}
	if !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("got %d bytes back, want %d", out.Len(), len(in))
	}

	resize := make(chan WindowSize, 1)
	resize <- WindowSize{Rows: 40, Cols: 120}
	pr, pw := io.Pipe()
	defer pw.Close()
	sw := &syncbuf.Buffer{}
	done := make(chan error, 1)
	go func() {
		_, err := e.Exec(context.Background(), ExecRequest{TTY: true}, pr, sw, nil, resize)
		done <- err
	}()
	waitUntil(t, func() bool { return strings.Contains(sw.String(), "resize 40x120\n") })
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.opened != 2 {
		t.Fatalf("%d sessions opened", g.opened)
	}
}

func TestExecCancelKillsTheSession(t *testing.T) {
	e, g := newExecRig(t, guest.FeatureExec)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	pr, pw := io.Pipe() // never written: the session waits
	defer pw.Close()
	if _, err := e.Exec(ctx, ExecRequest{Argv: []string{"wait"}}, pr, nil, nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Exec = %v", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.signals) != 1 || g.signals[0] != "SIGKILL" {
		t.Fatalf("signals %v", g.signals)
	}
}

func TestExecGuestGone(t *testing.T) {
	e, g := newExecRig(t, guest.FeatureExec)
	pr, pw := io.Pipe()
	defer pw.Close()
	done := make(chan error, 1)
	go func() {
		_, err := e.Exec(context.Background(), ExecRequest{Argv: []string{"wait"}}, pr, nil, nil, nil)
		done <- err
	}()
	waitUntil(t, func() bool { g.mu.Lock(); defer g.mu.Unlock(); return g.opened == 1 })
	g.gc.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrGuestGone) {
			t.Fatalf("Exec = %v, want ErrGuestGone", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Exec did not end with the guest")
	}
	<-e.Done()
	if _, err := e.Exec(context.Background(), ExecRequest{}, nil, nil, nil, nil); !errors.Is(err, ErrGuestGone) {
		t.Fatalf("Exec after = %v", err)
	}
}

// Sessions run at once, up to the limit; one whose output is not read
// holds up none of the others.
func TestExecConcurrentSessions(t *testing.T) {
	e, _ := newExecRig(t, guest.FeatureExec)
	stuck := &blockedWriter{unblock: make(chan struct{})}
	stuckDone := make(chan error, 1)
	go func() {
		_, err := e.Exec(context.Background(), ExecRequest{Argv: []string{"flood", "1000000"}}, nil, stuck, nil, nil)
		stuckDone <- err
	}()
	waitUntil(t, func() bool { return stuck.started() })
	var wg sync.WaitGroup
	for i := range guest.MaxExecSessions - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			x, err := e.Exec(context.Background(), ExecRequest{Argv: []string{"flood", "100000"}}, nil, &out, nil, nil)
			if err != nil || x.Code != 0 || out.Len() != 100000 {
				t.Errorf("session %d: %+v %v, %d bytes", i, x, err, out.Len())
			}
		}()
	}
	wg.Wait()
	// With 8 open, a 9th is refused.
	var hold []chan struct{}
	for range guest.MaxExecSessions - 1 {
		pr, pw := io.Pipe()
		defer pw.Close()
		c := make(chan struct{})
		hold = append(hold, c)
		go func() {
			defer close(c)
			e.Exec(context.Background(), ExecRequest{Argv: []string{"echo"}}, pr, nil, nil, nil)
		}()
	}
	waitUntil(t, func() bool { e.mu.Lock(); defer e.mu.Unlock(); return len(e.byID) == guest.MaxExecSessions })
	if _, err := e.Exec(context.Background(), ExecRequest{}, nil, nil, nil, nil); !errors.Is(err, ErrTooManySessions) {
		t.Fatalf("a 9th session: %v", err)
	}
	close(stuck.unblock)
	if err := <-stuckDone; err != nil {
		t.Fatal(err)
	}
	for _, c := range hold {
		select {
		case <-c:
			t.Fatal("a session ended before its input did")
		default:
		}
	}
	if n := stuck.n(); n != 1000000 {
		t.Fatalf("the slow session got %d bytes", n)
	}
}

// blockedWriter takes nothing until unblock is closed.
type blockedWriter struct {
	unblock chan struct{}
	mu      sync.Mutex
	got     int
	calls   int
}

func (w *blockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.calls++
	w.mu.Unlock()
	<-w.unblock
	w.mu.Lock()
	defer w.mu.Unlock()
	w.got += len(p)
	return len(p), nil
}

func (w *blockedWriter) started() bool { w.mu.Lock(); defer w.mu.Unlock(); return w.calls > 0 }
func (w *blockedWriter) n() int        { w.mu.Lock(); defer w.mu.Unlock(); return w.got }

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
