package guest

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func TestOutputRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	c := NewConn(&buf)
	data := []byte("line\x00\xff\n")
	if err := c.WriteFrame(FrameOutput, EncodeOutput(StreamStderr, 1<<40+3, data)); err != nil {
		t.Fatal(err)
	}
	typ, p, err := c.ReadFrame()
	if err != nil || typ != FrameOutput {
		t.Fatalf("frame: %v %v", typ, err)
	}
	s, off, got, err := DecodeOutput(p)
	if err != nil || s != StreamStderr || off != 1<<40+3 || !bytes.Equal(got, data) {
		t.Fatalf("DecodeOutput = %v %d %q %v", s, off, got, err)
	}
	if _, _, _, err := DecodeOutput([]byte{1, 0, 0}); err == nil {
		t.Error("short output frame decoded")
	}
	if _, _, _, err := DecodeOutput(EncodeOutput(3, 0, nil)); err == nil {
		t.Error("output frame of stream 3 decoded")
	}
	if _, _, _, err := DecodeOutput(EncodeOutput(StreamStdout, -1, nil)); err == nil {
		t.Error("output frame at a negative offset decoded")
	}
}

func TestResumeFramesRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	c := NewConn(&buf)
	job := Job{Argv: []string{"run.sh"}, Resumable: true, DetachTimeoutMS: 60000}
	resume := Resume{Offset: 12345}
	running := Resumed{State: StateRunning, Oldest: 17}
	exited := Resumed{State: StateExited, Exit: &Exit{Code: 3, DurationMS: 9}, Oldest: 0}
	for _, f := range []struct {
		t FrameType
		v any
	}{{FrameJob, job}, {FrameResume, resume}, {FrameResumed, running}, {FrameResumed, exited}} {
		if err := c.WriteJSON(f.t, f.v); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WriteFrame(FrameExitAck, nil); err != nil {
		t.Fatal(err)
	}

	var gotJob Job
	var gotResume Resume
	var gotRunning, gotExited Resumed
	for _, want := range []struct {
		t    FrameType
		v    any
		into any
	}{{FrameJob, job, &gotJob}, {FrameResume, resume, &gotResume}, {FrameResumed, running, &gotRunning}, {FrameResumed, exited, &gotExited}} {
		typ, p, err := c.ReadFrame()
		if err != nil || typ != want.t {
			t.Fatalf("frame %v: got %v, %v", want.t, typ, err)
		}
		if err := Decode(typ, p, want.into); err != nil {
			t.Fatal(err)
		}
		if got := reflect.ValueOf(want.into).Elem().Interface(); !reflect.DeepEqual(got, want.v) {
			t.Errorf("%v: got %+v, want %+v", typ, got, want.v)
		}
	}
	if typ, p, err := c.ReadFrame(); err != nil || typ != FrameExitAck || len(p) != 0 {
		t.Fatalf("exit-ack: %v %q %v", typ, p, err)
	}

	// An older host's Job has neither field; an older guest ignores them.
	var old Job
	if err := Decode(FrameJob, []byte(`{"argv":["x"]}`), &old); err != nil || old.Resumable || old.DetachTimeoutMS != 0 {
		t.Fatalf("old job = %+v, %v", old, err)
	}
}

// TestResumableFramesFitOneWrite pins the bound that keeps a frame from
// being split between two hosts: the largest Output and ExecOutput frames,
// and the control frames, fit MaxWrite.
func TestResumableFramesFitOneWrite(t *testing.T) {
	full := make([]byte, OutputChunk)
	if n := FrameSize(len(EncodeOutput(StreamStdout, 1<<62, full))); n != MaxWrite {
		t.Errorf("largest output frame: %d bytes, want exactly %d", n, MaxWrite)
	}
	if n := FrameSize(len(EncodeExecOutput(1<<31, StreamStderr, make([]byte, ResumableExecChunk)))); n != MaxWrite {
		t.Errorf("largest resumable exec-output frame: %d bytes, want exactly %d", n, MaxWrite)
	}
	var buf bytes.Buffer
	c := NewConn(&buf)
	ex := &Exit{Code: 127, Signal: "SIGKILL", TimedOut: true, Error: strings.Repeat("e", 4096), DurationMS: 1 << 40}
	c.WriteJSON(FrameResumed, Resumed{State: StateExited, Exit: ex, Oldest: 1 << 62})
	if buf.Len() > MaxWrite {
		t.Errorf("resumed frame: %d bytes", buf.Len())
	}
}

func TestResumeFrameTypeStrings(t *testing.T) {
	for typ, want := range map[FrameType]string{FrameOutput: "output", FrameResume: "resume", FrameResumed: "resumed", FrameExitAck: "exit-ack"} {
		if typ.String() != want {
			t.Errorf("%d: %q, want %q", typ, typ.String(), want)
		}
	}
}
