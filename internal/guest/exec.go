package guest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
)

// Limits of exec sessions (see the package comment).
const (
	// MaxExecSessions is how many exec sessions a guest runs at once.
	MaxExecSessions = 8
	// ExecChunk bounds the data of one ExecInput or ExecOutput frame, so
	// that a busy session never holds the channel long from heartbeats.
	ExecChunk = 32 << 10
	// ExecWindow is how many bytes of one session's data, in one direction,
	// may be sent and not yet acknowledged.
	ExecWindow = 256 << 10
)

// Stream says which of a session's outputs an ExecOutput frame carries.
type Stream byte

// Streams of ExecOutput. A tty session has stdout only.
const (
	StreamStdout Stream = 1
	StreamStderr Stream = 2
)

// ExecOpen asks the guest to start a session. ID 0 is never a session.
type ExecOpen struct {
	ID uint32 `json:"id"`
	// Argv is the program and its arguments; none: the user's login shell,
	// started as a login shell ("-sh").
	Argv []string `json:"argv,omitempty"`
	// User is the guest account to run as, with its groups, HOME, USER,
	// LOGNAME and SHELL, as Job.User; "": root.
	User string            `json:"user,omitempty"`
	Env  map[string]string `json:"env,omitempty"`
	// Dir is the working directory; "": the user's home, or / if it has none.
	Dir string `json:"dir,omitempty"`
	// TTY gives the session a pseudo-terminal of Rows×Cols (0: 24×80) as
	// its controlling terminal, and TERM=Term (default "xterm").
	TTY  bool   `json:"tty,omitempty"`
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	Term string `json:"term,omitempty"`
}

// ExecResize is a tty session's new window size.
type ExecResize struct {
	ID   uint32 `json:"id"`
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// ExecSignal sends a signal ("SIGINT", "INT") to a session: to the
// terminal's foreground process group with a tty, to the session's process
// group without. SIGKILL ends the session: every process in it is killed.
type ExecSignal struct {
	ID     uint32 `json:"id"`
	Signal string `json:"signal"`
}

// ExecExit is a session's end. Code is the process's exit code, 128+n when
// signal n killed it (Signal names it); Error says why the session could
// not start or was refused (Code 125, 126 or 127 then, as for jobs).
type ExecExit struct {
	ID     uint32 `json:"id"`
	Code   int    `json:"code"`
	Signal string `json:"signal,omitempty"`
	Error  string `json:"error,omitempty"`
}

// ErrShortFrame is returned for an exec frame too short for its header.
var ErrShortFrame = errors.New("guest protocol: exec frame too short")

// EncodeExecInput builds an ExecInput payload: id, then data.
func EncodeExecInput(id uint32, data []byte) []byte {
	b := make([]byte, 4+len(data))
	binary.BigEndian.PutUint32(b, id)
	copy(b[4:], data)
	return b
}

// DecodeExecInput splits an ExecInput payload. data aliases p.
func DecodeExecInput(p []byte) (id uint32, data []byte, err error) {
	if len(p) < 4 {
		return 0, nil, fmt.Errorf("%w: %d bytes", ErrShortFrame, len(p))
	}
	return binary.BigEndian.Uint32(p), p[4:], nil
}

// EncodeExecOutput builds an ExecOutput payload: id, stream, then data.
func EncodeExecOutput(id uint32, s Stream, data []byte) []byte {
	b := make([]byte, execOutputHeader+len(data))
	binary.BigEndian.PutUint32(b, id)
	b[4] = byte(s)
	copy(b[execOutputHeader:], data)
	return b
}

// execOutputHeader is an ExecOutput payload's session id and stream,
// before its data.
const execOutputHeader = 5

// DecodeExecOutput splits an ExecOutput payload. data aliases p.
func DecodeExecOutput(p []byte) (id uint32, s Stream, data []byte, err error) {
	if len(p) < execOutputHeader {
		return 0, 0, nil, fmt.Errorf("%w: %d bytes", ErrShortFrame, len(p))
	}
	id, s = binary.BigEndian.Uint32(p), Stream(p[4])
	if s != StreamStdout && s != StreamStderr {
		return id, 0, nil, fmt.Errorf("guest protocol: unknown stream %d", s)
	}
	return id, s, p[execOutputHeader:], nil
}

// EncodeExecID builds an ExecEOF payload.
func EncodeExecID(id uint32) []byte { return binary.BigEndian.AppendUint32(nil, id) }

// DecodeExecID reads an ExecEOF payload.
func DecodeExecID(p []byte) (uint32, error) {
	if len(p) != 4 {
		return 0, fmt.Errorf("%w: %d bytes, want 4", ErrShortFrame, len(p))
	}
	return binary.BigEndian.Uint32(p), nil
}

// EncodeExecAck builds an ExecAck payload: id, then the count consumed.
func EncodeExecAck(id uint32, n uint32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, id), n)
}

// DecodeExecAck reads an ExecAck payload.
func DecodeExecAck(p []byte) (id, n uint32, err error) {
	if len(p) != 8 {
		return 0, 0, fmt.Errorf("%w: %d bytes, want 8", ErrShortFrame, len(p))
	}
	return binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:]), nil
}

// ErrWindowClosed is returned by Window.Take once the window is closed.
var ErrWindowClosed = errors.New("exec window closed")

// Window is the sending side's count of one session direction's credit:
// Take before sending, Give what the peer acknowledges. Safe for several
// goroutines.
type Window struct {
	mu     sync.Mutex
	cond   sync.Cond
	avail  int
	size   int
	closed bool
}

// NewWindow returns a window of size bytes, all available.
func NewWindow(size int) *Window {
	w := &Window{avail: size, size: size}
	w.cond.L = &w.mu
	return w
}

// Take waits until some credit is available and takes up to max of it.
func (w *Window) Take(max int) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.avail == 0 && !w.closed {
		w.cond.Wait()
	}
	if w.closed {
		return 0, ErrWindowClosed
	}
	n := min(w.avail, max)
	w.avail -= n
	if w.avail > 0 {
		w.cond.Signal() // another taker may use the rest
	}
	return n, nil
}

// Give returns n bytes of credit. A peer acknowledging more than was sent
// cannot raise the window past its size.
func (w *Window) Give(n int) {
	if n <= 0 {
		return
	}
	w.mu.Lock()
	w.avail = min(w.avail+n, w.size)
	w.mu.Unlock()
	w.cond.Broadcast()
}

// Close makes every Take, waiting or to come, fail.
func (w *Window) Close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.cond.Broadcast()
}
