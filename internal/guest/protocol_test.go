package guest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	c := NewConn(&buf)
	hello := Hello{Version: Version, Arch: "arm64", Kernel: "6.1.0-28-cloud-arm64", UptimeMS: 812, Features: []string{FeatureExec}}
	if err := c.WriteJSON(FrameHello, hello); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteFrame(FrameStdout, []byte("out\x00\xff")); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteFrame(FrameHeartbeat, nil); err != nil {
		t.Fatal(err)
	}
	exit := Exit{Code: 137, Signal: "SIGKILL", TimedOut: true, DurationMS: 5}
	if err := c.WriteJSON(FrameExit, exit); err != nil {
		t.Fatal(err)
	}

	typ, p, err := c.ReadFrame()
	var gotHello Hello
	if err != nil || typ != FrameHello || Decode(typ, p, &gotHello) != nil || !reflect.DeepEqual(gotHello, hello) {
		t.Fatalf("hello: %v %v %+v", typ, err, gotHello)
	}
	typ, p, err = c.ReadFrame()
	if err != nil || typ != FrameStdout || string(p) != "out\x00\xff" {
		t.Fatalf("stdout: %v %q %v", typ, p, err)
	}
	typ, p, err = c.ReadFrame()
	if err != nil || typ != FrameHeartbeat || len(p) != 0 {
		t.Fatalf("heartbeat: %v %q %v", typ, p, err)
	}
	typ, p, err = c.ReadFrame()
	var gotExit Exit
	if err != nil || typ != FrameExit || Decode(typ, p, &gotExit) != nil || gotExit != exit {
		t.Fatalf("exit: %v %v %+v", typ, err, gotExit)
	}
	if _, _, err := c.ReadFrame(); err != io.EOF {
		t.Fatalf("at end: %v, want io.EOF", err)
	}
}

func TestJobRoundTripOverPipe(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	job := Job{Argv: []string{"run.sh", "--jitconfig", "x"}, Env: map[string]string{"A": "1"}, Dir: "/home/runner", TimeoutMS: 1000}
	go NewConn(a).WriteJSON(FrameJob, job)
	typ, p, err := NewConn(b).ReadFrame()
	var got Job
	if err != nil || typ != FrameJob || Decode(typ, p, &got) != nil {
		t.Fatalf("%v %v", typ, err)
	}
	if strings.Join(got.Argv, " ") != "run.sh --jitconfig x" || got.Env["A"] != "1" || got.Dir != job.Dir || got.TimeoutMS != 1000 {
		t.Fatalf("got %+v", got)
	}
}

func TestFrameTooLarge(t *testing.T) {
	var buf bytes.Buffer
	c := NewConn(&buf)
	if err := c.WriteFrame(FrameStdout, make([]byte, MaxPayload+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("write: %v", err)
	}
	if buf.Len() != 0 {
		t.Fatal("a refused frame was written")
	}
	if err := c.WriteFrame(FrameStdout, make([]byte, MaxPayload)); err != nil {
		t.Fatalf("write at the limit: %v", err)
	}
	if _, p, err := c.ReadFrame(); err != nil || len(p) != MaxPayload {
		t.Fatalf("read at the limit: %d %v", len(p), err)
	}

	// A header announcing more than MaxPayload is refused before allocating.
	hdr := []byte{byte(FrameStdout), 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hdr[1:], MaxPayload+1)
	if _, _, err := NewConn(bytes.NewBuffer(hdr)).ReadFrame(); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("read: %v", err)
	}
	binary.BigEndian.PutUint32(hdr[1:], 0xffffffff)
	if _, _, err := NewConn(bytes.NewBuffer(hdr)).ReadFrame(); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("read: %v", err)
	}
}

func TestTruncatedFrame(t *testing.T) {
	var buf bytes.Buffer
	NewConn(&buf).WriteFrame(FrameStdout, []byte("hello world"))
	full := buf.Bytes()

	// Cut in the payload.
	_, _, err := NewConn(bytes.NewBuffer(full[:len(full)-3])).ReadFrame()
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated payload: %v", err)
	}
	// Cut in the header.
	if _, _, err := NewConn(bytes.NewBuffer(full[:3])).ReadFrame(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated header: %v", err)
	}
	// Nothing at all: a clean end of stream.
	if _, _, err := NewConn(bytes.NewBuffer(nil)).ReadFrame(); err != io.EOF {
		t.Fatalf("empty: %v", err)
	}
}

func TestDecodeError(t *testing.T) {
	var j Job
	if err := Decode(FrameJob, []byte("{not json"), &j); err == nil || !strings.Contains(err.Error(), "job") {
		t.Fatalf("Decode: %v", err)
	}
}

func TestStreamWriterChunks(t *testing.T) {
	var buf bytes.Buffer
	c := NewConn(&buf)
	data := make([]byte, 100<<10+7)
	for i := range data {
		data[i] = byte(i * 7)
	}
	n, err := StreamWriter{C: c, Type: FrameStderr}.Write(data)
	if err != nil || n != len(data) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	var got []byte
	var sizes []int
	for {
		typ, p, err := c.ReadFrame()
		if err == io.EOF {
			break
		}
		if err != nil || typ != FrameStderr {
			t.Fatalf("%v %v", typ, err)
		}
		sizes = append(sizes, len(p))
		got = append(got, p...)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("reassembled output differs")
	}
	want := []int{32 << 10, 32 << 10, 32 << 10, 4<<10 + 7}
	if len(sizes) != len(want) {
		t.Fatalf("chunks %v, want %v", sizes, want)
	}
	for i := range want {
		if sizes[i] != want[i] {
			t.Fatalf("chunks %v, want %v", sizes, want)
		}
	}
	if n, err := (StreamWriter{C: c, Type: FrameStdout}).Write(nil); n != 0 || err != nil || buf.Len() != 0 {
		t.Fatalf("empty write: %d %v, %d bytes", n, err, buf.Len())
	}
}

type failAfter struct{ n int }

func (f *failAfter) Read([]byte) (int, error) { return 0, io.EOF }
func (f *failAfter) Write(p []byte) (int, error) {
	if f.n == 0 {
		return 0, io.ErrClosedPipe
	}
	f.n--
	return len(p), nil
}

func TestStreamWriterError(t *testing.T) {
	n, err := StreamWriter{C: NewConn(&failAfter{n: 1}), Type: FrameStdout}.Write(make([]byte, 40<<10))
	if !errors.Is(err, io.ErrClosedPipe) || n != 32<<10 {
		t.Fatalf("Write = %d, %v", n, err)
	}
}

func TestFrameTypeString(t *testing.T) {
	if FrameCancel.String() != "cancel" || FrameType(99).String() != "frame(99)" {
		t.Fatal(FrameCancel.String(), FrameType(99).String())
	}
}

func TestReadHelloSkipsEarlierFrames(t *testing.T) {
	var buf bytes.Buffer
	c := NewConn(&buf)
	c.WriteFrame(FrameLog, []byte("early"))
	c.WriteJSON(FrameHello, Hello{Version: Version, Arch: "arm64"})
	h, err := c.ReadHello()
	if err != nil || h.Arch != "arm64" || h.Version != Version {
		t.Fatalf("ReadHello = %+v, %v", h, err)
	}
	if _, err := c.ReadHello(); err == nil {
		t.Error("ReadHello on an ended stream succeeded")
	}
}
