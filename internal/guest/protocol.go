// Package guest holds the protocol spoken between the host and tandem-guest,
// the agent that runs as PID 1 (or a systemd unit) inside every microVM.
//
// The transport is any reliable byte stream: today a virtio-serial port whose
// host end is a Unix socket served by QEMU; later Firecracker's hybrid vsock.
// On that stream both sides exchange frames:
//
//	+--------+----------------+-----------------+
//	| type 1 | length 4 (BE)  | payload length  |
//	+--------+----------------+-----------------+
//
// Control frames carry JSON; output frames carry raw bytes. The exchange is:
//
//	guest → host  Hello       once the guest is ready to take a job
//	host  → guest Job         what to run
//	guest → host  Stdout/Stderr (any number, as the job writes)
//	guest → host  Heartbeat   every HeartbeatInterval while alive, carrying
//	                          Stats (an older guest's is empty)
//	host  → guest Cancel      optional: stop the job now
//	guest → host  Exit        the job's end; the guest then syncs and powers off
//
// Alongside the job, a guest whose Hello lists FeatureExec serves
// interactive exec sessions (`tandem ssh`), multiplexed on the same stream
// by a session id the host picks (see exec.go):
//
//	host  → guest ExecOpen    (9, JSON)  start a session: argv (none: the user's
//	                                     login shell), user, env, dir, tty, size
//	host  → guest ExecInput   (10, bin)  id + bytes for the session's stdin
//	host  → guest ExecResize  (11, JSON) a tty's new window size
//	host  → guest ExecSignal  (12, JSON) a signal for the session (SIGKILL ends it)
//	host  → guest ExecEOF     (13, bin)  id: no more input
//	guest → host  ExecOutput  (14, bin)  id + stream (1 stdout, 2 stderr) + bytes
//	guest → host  ExecExit    (15, JSON) the session's end: code, signal or error
//	either        ExecAck     (16, bin)  id + count: the receiver consumed that many
//	                                     bytes of the sender's ExecInput/ExecOutput
//	host  → guest Hold        (17)       FeatureHold: after Exit, stay up (heartbeats
//	                                     and exec sessions go on) until Release
//	host  → guest Release     (18)       power off now if held
//
// Each direction of a session is flow-controlled by a window of ExecWindow
// bytes: a side sends no more data than the other has acknowledged plus
// ExecWindow, in frames of at most ExecChunk bytes, so that neither side
// buffers without limit and output never starves heartbeats. A guest runs
// at most MaxExecSessions at once; frames for unknown ids are ignored; a
// malformed exec frame is answered with an ExecExit carrying an error (id 0
// when the id could not be read).
//
// # Resumable jobs
//
// A guest whose Hello lists FeatureResume keeps a Job with Resumable set
// running when its host goes away, so that a new host process (the agent
// restarted) can take the job over. The transport's semantics shape this
// part of the protocol. On a virtio-serial port whose host end QEMU serves
// as a Unix socket: while no host is connected the guest's reads return
// EOF at once and its writes block; once a host connects, blocked writes
// complete into that host; the guest kernel splits a write at 32 KiB, so a
// larger frame could reach two hosts; and bytes in flight when a host goes
// away may be lost. Hence, on a Resumable job:
//
//   - Every frame the guest sends fits one write of MaxWrite bytes, header
//     included, so that a host only ever receives whole frames.
//   - Job output travels in Output frames (19, bin: stream 1 byte, offset 8
//     bytes big-endian, data; see EncodeOutput) instead of Stdout/Stderr.
//     The offset counts every output byte of the job, both streams, from 0;
//     each frame carries at most OutputChunk bytes. The guest keeps the
//     job's most recent output (about 8 MiB) in memory so that it can send
//     it again; it drops the oldest first, and never makes the job wait for
//     the host. A frame whose offset is past the end of what the host has
//     received means the bytes in between were dropped.
//   - When a read returns EOF the guest takes the host as gone ("detached"):
//     it stops heartbeats, ends the open exec sessions, keeps the job
//     running and buffering, and polls the port for a new host.
//   - A host that connects to a guest mid-job (it gets no Hello) sends
//     Resume (20, JSON) as its first frame, with the offset up to which
//     it has the output. The guest ignores every frame of a new host
//     before Resume. It answers Resumed
//     (21, JSON): whether the job is "running" or has "exited" (then with
//     its Exit) and Oldest, the offset of the oldest output it still holds.
//     It then sends again the output from max(Resume.Offset, Oldest) on,
//     in order, and goes on live; heartbeats and exec sessions resume. The
//     host must skip what it receives before Resumed: frames written
//     before it connected (one per guest writer at most) reach it first.
//   - The guest sends Exit once all output before it has been sent, and
//     again after each Resume until a host answers ExitAck (22, empty);
//     the host that sent the Job answers it too.
//     It powers off on ExitAck (or, after Hold, on Release), or when
//     Job.DetachTimeoutMS (0: DefaultDetachTimeout) has passed since the
//     job ended without one. It also prints the Exit on its console as one
//     line, ExitLinePrefix followed by the Exit's JSON, for a host that
//     never comes back in time.
//
// The sequence for a host that reconnects:
//
//	host  → guest Resume      {"offset": N}
//	guest → host  Resumed     {"state": "running"|"exited", "exit": {…}, "oldest": O}
//	guest → host  Output      from max(N, O) on; then live output and heartbeats
//	guest → host  Exit        when the job has ended and its output was sent
//	host  → guest ExitAck     the guest may power off
//
// Cancel, Hold, Release and exec sessions work as usual on the host that
// resumed. The exec sessions of a host that went away are ended and
// forgotten: the guest sends nothing more for them but, at most, a frame
// it was writing, so a host ignores exec frames for ids it did not open.
// Hold lasts across hosts: a held guest powers off on Release, or when the
// host that acknowledged the Exit goes away. A Resume that arrives while
// the guest still takes its host as connected (it reconnected before the
// guest read EOF) is served the same way, provided the old host's last
// frame reached the guest whole. For a job without Resumable the guest
// sends Stdout and Stderr as before, never Output or Resumed, and ignores
// Resume and ExitAck.
package guest

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// Version is the protocol version carried in Hello. A host refuses a guest
// that speaks another major version.
const Version = 1

// PortName is the name of the virtio-serial port the guest looks for.
const PortName = "tandem.0"

// HeartbeatInterval is how often a guest says it is alive.
const HeartbeatInterval = time.Second

// MaxPayload bounds one frame so that a corrupt length cannot make either side
// allocate without limit.
const MaxPayload = 1 << 20

// FrameType says what a frame carries.
type FrameType byte

// Frame types. Values are part of the wire format: never renumber.
const (
	FrameHello     FrameType = 1
	FrameJob       FrameType = 2
	FrameStdout    FrameType = 3
	FrameStderr    FrameType = 4
	FrameExit      FrameType = 5
	FrameHeartbeat FrameType = 6
	FrameCancel    FrameType = 7
	FrameLog       FrameType = 8

	FrameExecOpen   FrameType = 9
	FrameExecInput  FrameType = 10
	FrameExecResize FrameType = 11
	FrameExecSignal FrameType = 12
	FrameExecEOF    FrameType = 13
	FrameExecOutput FrameType = 14
	FrameExecExit   FrameType = 15
	FrameExecAck    FrameType = 16
	FrameHold       FrameType = 17
	FrameRelease    FrameType = 18

	FrameOutput  FrameType = 19
	FrameResume  FrameType = 20
	FrameResumed FrameType = 21
	FrameExitAck FrameType = 22
)

func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "hello"
	case FrameJob:
		return "job"
	case FrameStdout:
		return "stdout"
	case FrameStderr:
		return "stderr"
	case FrameExit:
		return "exit"
	case FrameHeartbeat:
		return "heartbeat"
	case FrameCancel:
		return "cancel"
	case FrameLog:
		return "log"
	case FrameExecOpen:
		return "exec-open"
	case FrameExecInput:
		return "exec-input"
	case FrameExecResize:
		return "exec-resize"
	case FrameExecSignal:
		return "exec-signal"
	case FrameExecEOF:
		return "exec-eof"
	case FrameExecOutput:
		return "exec-output"
	case FrameExecExit:
		return "exec-exit"
	case FrameExecAck:
		return "exec-ack"
	case FrameHold:
		return "hold"
	case FrameRelease:
		return "release"
	case FrameOutput:
		return "output"
	case FrameResume:
		return "resume"
	case FrameResumed:
		return "resumed"
	case FrameExitAck:
		return "exit-ack"
	}
	return fmt.Sprintf("frame(%d)", byte(t))
}

// ErrFrameTooLarge is returned when a frame announces a payload above MaxPayload.
var ErrFrameTooLarge = errors.New("guest protocol: frame too large")

// Hello is the guest's first frame.
type Hello struct {
	Version  int    `json:"version"`
	Arch     string `json:"arch"`      // runtime.GOARCH of tandem-guest
	Kernel   string `json:"kernel"`    // uname -r
	UptimeMS int64  `json:"uptime_ms"` // guest clock at Hello, from /proc/uptime
	// Features lists what the guest can do beyond the job (FeatureExec,
	// FeatureHold); an older guest lists none.
	Features []string `json:"features,omitempty"`
}

// Features a guest may list in Hello.
const (
	FeatureExec = "exec" // exec sessions (frames 9-16)
	FeatureHold = "hold" // Hold and Release (frames 17-18)
	// FeatureResume: resumable jobs (Job.Resumable, frames 19-22).
	FeatureResume = "resume"
)

// Has reports whether the guest listed feature f.
func (h Hello) Has(f string) bool { return slices.Contains(h.Features, f) }

// Job is what the host asks the guest to run.
type Job struct {
	Argv      []string          `json:"argv"`
	Env       map[string]string `json:"env,omitempty"`
	Dir       string            `json:"dir,omitempty"`
	TimeoutMS int64             `json:"timeout_ms,omitempty"` // 0: no guest-side limit
	// User, if set, is the guest account the job runs as (with its groups,
	// HOME, USER, LOGNAME and SHELL; Dir defaults to its home); "": root.
	User string `json:"user,omitempty"`
	// Resumable asks a guest with FeatureResume to keep the job running
	// when the host goes away and to let a new host resume it (see the
	// package comment). Without it a host going away cancels the job.
	Resumable bool `json:"resumable,omitempty"`
	// DetachTimeoutMS bounds, for a Resumable job, how long after the
	// job's end the guest waits for a host to acknowledge its Exit
	// (ExitAck), reconnecting if need be, before it powers off anyway;
	// 0: DefaultDetachTimeout.
	DetachTimeoutMS int64 `json:"detach_timeout_ms,omitempty"`
}

// Stats is what the guest says of itself in each Heartbeat: the guest half
// of a job's resource profile (internal/profile). Sizes are bytes.
type Stats struct {
	// CPUSeconds is the time the guest's CPUs were busy since boot (user,
	// nice, system, irq, softirq), by the guest's own accounting.
	CPUSeconds float64 `json:"cpu_seconds"`
	// CPUTotalSeconds is all the time the guest's CPUs accounted since
	// boot, busy or not (CPUSeconds plus idle, iowait and steal), summed
	// over its CPUs. Busy over total between two heartbeats is the share
	// of the CPUs that was busy, with no clock in it: neither a heartbeat
	// that arrives late nor a guest clock that drifts skews it.
	CPUTotalSeconds float64 `json:"cpu_total_seconds,omitempty"`
	Load1           float64 `json:"load1"`
	MemTotal        int64   `json:"mem_total"`
	MemAvailable    int64   `json:"mem_available"`
	OOMKills        int64   `json:"oom_kills"`  // since boot
	DiskTotal       int64   `json:"disk_total"` // the root filesystem
	DiskUsed        int64   `json:"disk_used"`
	Procs           int     `json:"procs"`
}

// Exit reports how the job ended.
type Exit struct {
	Code       int    `json:"code"`             // exit code; 128+signal when killed
	Signal     string `json:"signal,omitempty"` // set when the job died of a signal
	TimedOut   bool   `json:"timed_out,omitempty"`
	Error      string `json:"error,omitempty"` // the job could not be started at all
	DurationMS int64  `json:"duration_ms"`
}

// frameHeader is a frame's type and length, before its payload.
const frameHeader = 5

// Conn frames a byte stream. Writes are safe from several goroutines; reads
// must come from one.
type Conn struct {
	rw  io.ReadWriter
	wmu sync.Mutex
	hdr [frameHeader]byte
}

// NewConn wraps a stream.
func NewConn(rw io.ReadWriter) *Conn { return &Conn{rw: rw} }

// WriteFrame sends one frame.
func (c *Conn) WriteFrame(t FrameType, payload []byte) error {
	if len(payload) > MaxPayload {
		return ErrFrameTooLarge
	}
	buf := make([]byte, frameHeader+len(payload))
	buf[0] = byte(t)
	binary.BigEndian.PutUint32(buf[1:frameHeader], uint32(len(payload)))
	copy(buf[frameHeader:], payload)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.rw.Write(buf)
	return err
}

// WriteJSON sends one control frame.
func (c *Conn) WriteJSON(t FrameType, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", t, err)
	}
	return c.WriteFrame(t, b)
}

// ReadFrame reads one frame. The payload is freshly allocated.
func (c *Conn) ReadFrame() (FrameType, []byte, error) {
	if _, err := io.ReadFull(c.rw, c.hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(c.hdr[1:frameHeader])
	if n > MaxPayload {
		return 0, nil, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	t := FrameType(c.hdr[0])
	p := make([]byte, n)
	if _, err := io.ReadFull(c.rw, p); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, fmt.Errorf("read %s payload: %w", t, err)
	}
	return t, p, nil
}

// Decode unmarshals a control frame's payload. Unknown fields are ignored so
// that a newer peer may add some.
func Decode(t FrameType, p []byte, v any) error {
	if err := json.Unmarshal(p, v); err != nil {
		return fmt.Errorf("decode %s: %w", t, err)
	}
	return nil
}

// ReadHello reads frames until the guest's Hello (skipping what a guest may
// send before it, such as log lines) and decodes it.
func (c *Conn) ReadHello() (Hello, error) {
	for {
		t, p, err := c.ReadFrame()
		if err != nil {
			return Hello{}, fmt.Errorf("waiting for hello: %w", err)
		}
		if t != FrameHello {
			continue
		}
		var h Hello
		return h, Decode(t, p, &h)
	}
}

// StreamWriter turns writes into output frames of one type, chunked under
// MaxPayload. It lets a job's stdout or stderr be wired straight to the channel.
type StreamWriter struct {
	C    *Conn
	Type FrameType
}

func (w StreamWriter) Write(p []byte) (int, error) {
	const chunk = 32 << 10
	total := 0
	for len(p) > 0 {
		n := min(len(p), chunk)
		if err := w.C.WriteFrame(w.Type, p[:n]); err != nil {
			return total, err
		}
		total += n
		p = p[n:]
	}
	return total, nil
}
