package guest

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"
)

func TestExecFramesRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	c := NewConn(&buf)
	open := ExecOpen{ID: 7, Argv: []string{"sh"}, User: "runner", Env: map[string]string{"A": "1"}, Dir: "/tmp", TTY: true, Rows: 40, Cols: 120, Term: "xterm"}
	c.WriteJSON(FrameExecOpen, open)
	c.WriteFrame(FrameExecInput, EncodeExecInput(7, []byte("ls\n")))
	c.WriteFrame(FrameExecOutput, EncodeExecOutput(7, StreamStderr, []byte("\x00err")))
	c.WriteFrame(FrameExecEOF, EncodeExecID(7))
	c.WriteFrame(FrameExecAck, EncodeExecAck(7, 1<<20))
	c.WriteJSON(FrameExecExit, ExecExit{ID: 7, Code: 130, Signal: "SIGINT"})

	typ, p, _ := c.ReadFrame()
	var gotOpen ExecOpen
	if typ != FrameExecOpen || Decode(typ, p, &gotOpen) != nil || !reflect.DeepEqual(gotOpen, open) {
		t.Fatalf("open: %v %+v", typ, gotOpen)
	}
	typ, p, _ = c.ReadFrame()
	if id, data, err := DecodeExecInput(p); typ != FrameExecInput || id != 7 || string(data) != "ls\n" || err != nil {
		t.Fatalf("input: %v %d %q %v", typ, id, data, err)
	}
	typ, p, _ = c.ReadFrame()
	if id, s, data, err := DecodeExecOutput(p); typ != FrameExecOutput || id != 7 || s != StreamStderr || string(data) != "\x00err" || err != nil {
		t.Fatalf("output: %v %d %d %q %v", typ, id, s, data, err)
	}
	typ, p, _ = c.ReadFrame()
	if id, err := DecodeExecID(p); typ != FrameExecEOF || id != 7 || err != nil {
		t.Fatalf("eof: %v %d %v", typ, id, err)
	}
	typ, p, _ = c.ReadFrame()
	if id, n, err := DecodeExecAck(p); typ != FrameExecAck || id != 7 || n != 1<<20 || err != nil {
		t.Fatalf("ack: %v %d %d %v", typ, id, n, err)
	}
	typ, p, _ = c.ReadFrame()
	var ex ExecExit
	if typ != FrameExecExit || Decode(typ, p, &ex) != nil || ex != (ExecExit{ID: 7, Code: 130, Signal: "SIGINT"}) {
		t.Fatalf("exit: %v %+v", typ, ex)
	}
	if FrameExecAck.String() != "exec-ack" || FrameRelease.String() != "release" {
		t.Fatal(FrameExecAck, FrameRelease)
	}
}

func TestExecDecodersRefuseShortFrames(t *testing.T) {
	if _, _, err := DecodeExecInput([]byte{1, 2, 3}); !errors.Is(err, ErrShortFrame) {
		t.Errorf("input: %v", err)
	}
	if _, _, _, err := DecodeExecOutput([]byte{0, 0, 0, 1}); !errors.Is(err, ErrShortFrame) {
		t.Errorf("output: %v", err)
	}
	if id, _, _, err := DecodeExecOutput([]byte{0, 0, 0, 1, 9}); err == nil || id != 1 {
		t.Errorf("output with an unknown stream: id %d, %v", id, err)
	}
	if _, err := DecodeExecID([]byte{0, 0, 0, 1, 0}); !errors.Is(err, ErrShortFrame) {
		t.Errorf("id: %v", err)
	}
	if _, _, err := DecodeExecAck([]byte{0, 0, 0, 1}); !errors.Is(err, ErrShortFrame) {
		t.Errorf("ack: %v", err)
	}
}

func TestHelloFeatures(t *testing.T) {
	var old Hello
	if err := json.Unmarshal([]byte(`{"version":1,"arch":"amd64"}`), &old); err != nil || old.Has(FeatureExec) {
		t.Fatalf("an older guest's hello: %+v %v", old, err)
	}
	if h := (Hello{Features: []string{FeatureHold, FeatureExec}}); !h.Has(FeatureExec) || !h.Has(FeatureHold) {
		t.Fatal("Has")
	}
}

func TestWindow(t *testing.T) {
	w := NewWindow(10)
	if n, err := w.Take(4); n != 4 || err != nil {
		t.Fatalf("Take = %d, %v", n, err)
	}
	if n, _ := w.Take(100); n != 6 {
		t.Fatalf("Take of the rest = %d", n)
	}
	got := make(chan int)
	go func() {
		n, _ := w.Take(100)
		got <- n
	}()
	select {
	case n := <-got:
		t.Fatalf("Take on an empty window returned %d", n)
	case <-time.After(20 * time.Millisecond):
	}
	w.Give(3)
	if n := <-got; n != 3 {
		t.Fatalf("Take after Give(3) = %d", n)
	}
	w.Give(1000) // more than was ever taken: capped at the size
	if n, _ := w.Take(100); n != 10 {
		t.Fatalf("window grew past its size: %d", n)
	}
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := w.Take(1); !errors.Is(err, ErrWindowClosed) {
				t.Errorf("Take after Close: %v", err)
			}
		}()
	}
	time.Sleep(10 * time.Millisecond)
	w.Close()
	wg.Wait()
}

// FuzzExecDecoders feeds any payload to every exec decoder: none may
// panic, and what decodes encodes back to the same bytes.
func FuzzExecDecoders(f *testing.F) {
	f.Add([]byte{})
	f.Add(EncodeExecInput(1, []byte("x")))
	f.Add(EncodeExecOutput(2, StreamStdout, []byte("y")))
	f.Add(EncodeExecAck(3, 4))
	f.Add([]byte(`{"id":1,"argv":["sh"],"tty":true,"rows":65535}`))
	f.Fuzz(func(t *testing.T, p []byte) {
		if id, data, err := DecodeExecInput(p); err == nil && !bytes.Equal(EncodeExecInput(id, data), p) {
			t.Fatal("input does not round-trip")
		}
		if id, s, data, err := DecodeExecOutput(p); err == nil && !bytes.Equal(EncodeExecOutput(id, s, data), p) {
			t.Fatal("output does not round-trip")
		}
		if id, err := DecodeExecID(p); err == nil && !bytes.Equal(EncodeExecID(id), p) {
			t.Fatal("id does not round-trip")
		}
		if id, n, err := DecodeExecAck(p); err == nil && !bytes.Equal(EncodeExecAck(id, n), p) {
			t.Fatal("ack does not round-trip")
		}
		var o ExecOpen
		_ = Decode(FrameExecOpen, p, &o)
		var r ExecResize
		_ = Decode(FrameExecResize, p, &r)
		var s ExecSignal
		_ = Decode(FrameExecSignal, p, &s)
		var e ExecExit
		_ = Decode(FrameExecExit, p, &e)
	})
}
