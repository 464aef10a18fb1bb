package jobvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
)

// Errors of Execer.Exec that callers branch on.
var (
	// ErrExecUnsupported: the guest's tandem-guest predates exec sessions
	// (its Hello does not list guest.FeatureExec); the image wants a rebuild.
	ErrExecUnsupported = errors.New("the guest does not support exec sessions (its image predates them: rebuild it)")
	// ErrGuestGone: the VM stopped, or its channel closed, before the
	// session ended.
	ErrGuestGone = errors.New("the guest went away")
	// ErrTooManySessions: the VM already runs guest.MaxExecSessions sessions.
	ErrTooManySessions = fmt.Errorf("too many exec sessions (at most %d a VM)", guest.MaxExecSessions)
)

// WindowSize is a terminal's size in characters.
type WindowSize struct {
	Rows, Cols uint16
}

// ExecRequest describes one exec session.
type ExecRequest struct {
	// Argv is the program and its arguments; none: the user's login shell.
	Argv []string
	// User is the guest account to run as ("" root), with its groups and
	// login variables, as Request.User.
	User string
	Env  map[string]string
	Dir  string // "": the user's home, or /
	// TTY gives the session a terminal of Size (zero: 24×80) with
	// TERM=Term ("": xterm); its output all comes as stdout.
	TTY  bool
	Size WindowSize
	Term string
}

// ExecExit is how a session ended: the exit code (128+n when signal n
// killed it, and Signal names it), or, when the guest could not start the
// program or refused the session, Error and the code 125, 126 or 127.
type ExecExit struct {
	Code   int
	Signal string
	Error  string
}

// execStopWait bounds how long Exec waits, once its ctx has ended, for
// the guest to report the end of the session it killed.
const execStopWait = 5 * time.Second

// Execer runs exec sessions in a running job's VM, beside the job, over
// the guest channel: Request.OnExec hands one over once the guest is ready.
// It is safe for several goroutines; every session it runs ends, with an
// ExecExit or ErrGuestGone, when the VM stops or its job ends.
//
// The channel's one reader (session.read) hands it the guest's exec frames
// (route), which it queues without ever blocking: the guest sends a
// session's output only as far as Exec has acknowledged it, so no queue
// holds more than guest.ExecWindow bytes, and a slow reader of one
// session's output holds up neither the job's frames nor the others.
type Execer struct {
	conn    *guest.Conn
	log     *slog.Logger
	jobUser string // the account the job runs as ("" root)

	mu        sync.Mutex
	supported bool
	closed    bool
	next      uint32
	byID      map[uint32]*execSession
	done      chan struct{}
}

func newExecer(c *guest.Conn, log *slog.Logger) *Execer {
	return &Execer{conn: c, log: log, byID: map[uint32]*execSession{}, done: make(chan struct{})}
}

// ready records what the guest's Hello says it can do.
func (e *Execer) ready(h guest.Hello) {
	e.mu.Lock()
	e.supported = h.Has(guest.FeatureExec)
	e.mu.Unlock()
}

// Supported says whether the guest runs exec sessions.
func (e *Execer) Supported() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.supported
}

// JobUser is the guest account the VM's job runs as ("" root): the one an
// exec session into the job runs as.
func (e *Execer) JobUser() string { return e.jobUser }

// Done is closed when the guest has gone away: no session runs any more,
// and Exec fails with ErrGuestGone.
func (e *Execer) Done() <-chan struct{} { return e.done }

// Exec runs one session and returns how it ended. Its input is read from
// stdin (nil: none) and sent as it comes, its end of file as the session's
// (with a terminal: ^D); output goes to stdout and stderr (nil: dropped);
// each size from resize is applied to the terminal. ctx ending kills the
// session (every process in it) and returns ctx's error.
//
// Exec does not wait for a stdin Read that blocks: the goroutine reading
// it ends when that Read returns.
func (e *Execer) Exec(ctx context.Context, r ExecRequest, stdin io.Reader, stdout, stderr io.Writer, resize <-chan WindowSize) (ExecExit, error) {
	s, err := e.add()
	if err != nil {
		return ExecExit{}, err
	}
	defer e.forget(s)
	open := guest.ExecOpen{ID: s.id, Argv: r.Argv, User: r.User, Env: r.Env, Dir: r.Dir,
		TTY: r.TTY, Rows: r.Size.Rows, Cols: r.Size.Cols, Term: r.Term}
	if err := e.conn.WriteJSON(guest.FrameExecOpen, open); err != nil {
		return ExecExit{}, fmt.Errorf("exec: send open: %w: %w", ErrGuestGone, err)
	}
	if stdin != nil {
		go e.sendInput(s, stdin)
	} else {
		e.conn.WriteFrame(guest.FrameExecEOF, guest.EncodeExecID(s.id))
	}
	written := make(chan struct{})
	go func() { defer close(written); e.writeOutput(s, stdout, stderr) }()
	for {
		select {
		case ws, ok := <-resize:
			if !ok {
				resize = nil
				continue
			}
			if err := e.conn.WriteJSON(guest.FrameExecResize, guest.ExecResize{ID: s.id, Rows: ws.Rows, Cols: ws.Cols}); err != nil {
				e.log.Debug("exec: sending a resize failed", "session", s.id, "err", err)
			}
		case <-written:
			return s.result()
		case <-ctx.Done():
			e.conn.WriteJSON(guest.FrameExecSignal, guest.ExecSignal{ID: s.id, Signal: "SIGKILL"})
			select {
			case <-written:
			case <-time.After(execStopWait):
			}
			return ExecExit{}, fmt.Errorf("exec: %w", ctx.Err())
		}
	}
}

func (e *Execer) add() (*execSession, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case !e.supported:
		return nil, ErrExecUnsupported
	case e.closed:
		return nil, ErrGuestGone
	case len(e.byID) >= guest.MaxExecSessions:
		return nil, ErrTooManySessions
	}
	for e.next++; e.next == 0 || e.byID[e.next] != nil; e.next++ {
	}
	s := &execSession{id: e.next, in: guest.NewWindow(guest.ExecWindow)}
	s.cond.L = &s.mu
	e.byID[s.id] = s
	return s, nil
}

func (e *Execer) forget(s *execSession) {
	e.mu.Lock()
	delete(e.byID, s.id)
	e.mu.Unlock()
	s.end(nil, errors.New("session closed"))
}

func (e *Execer) get(id uint32) *execSession {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.byID[id]
}

// route takes a frame from the channel's reader if it is an exec frame,
// and says whether it was. It never blocks.
func (e *Execer) route(t guest.FrameType, p []byte) bool {
	switch t {
	case guest.FrameExecOutput:
		id, stream, data, err := guest.DecodeExecOutput(p)
		if err != nil {
			e.log.Warn("exec: bad output frame from the guest", "err", err)
		} else if s := e.get(id); s != nil && !s.push(stream, data) {
			e.log.Warn("exec: the guest sent output past its window: ending the session", "session", id)
			go e.conn.WriteJSON(guest.FrameExecSignal, guest.ExecSignal{ID: id, Signal: "SIGKILL"})
		}
	case guest.FrameExecExit:
		var x guest.ExecExit
		if err := guest.Decode(t, p, &x); err != nil {
			e.log.Warn("exec: bad exit frame from the guest", "err", err)
		} else if s := e.get(x.ID); s != nil {
			s.end(&ExecExit{Code: x.Code, Signal: x.Signal, Error: x.Error}, nil)
		} else if x.ID == 0 {
			e.log.Warn("exec: the guest refused a frame", "err", x.Error)
		}
	case guest.FrameExecAck:
		if id, n, err := guest.DecodeExecAck(p); err != nil {
			e.log.Warn("exec: bad ack frame from the guest", "err", err)
		} else if s := e.get(id); s != nil {
			s.in.Give(int(min(n, guest.ExecWindow)))
		}
	default:
		return false
	}
	return true
}

// close ends every session with ErrGuestGone; the channel has ended.
func (e *Execer) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	e.closed = true
	close(e.done)
	for _, s := range e.byID {
		s.end(nil, ErrGuestGone)
	}
}

// sendInput sends what stdin gives, no faster than the guest acknowledges
// it, then the end of input.
func (e *Execer) sendInput(s *execSession, stdin io.Reader) {
	buf := make([]byte, guest.ExecChunk)
	for {
		n, rerr := stdin.Read(buf)
		for p := buf[:n]; len(p) > 0; {
			k, err := s.in.Take(len(p))
			if err != nil {
				return // the session has ended
			}
			if err := e.conn.WriteFrame(guest.FrameExecInput, guest.EncodeExecInput(s.id, p[:k])); err != nil {
				return
			}
			p = p[k:]
		}
		if rerr != nil {
			if !s.ended() {
				e.conn.WriteFrame(guest.FrameExecEOF, guest.EncodeExecID(s.id))
			}
			return
		}
	}
}

// writeOutput writes the session's output as it comes and acknowledges it
// once written, until the session has ended and its output is all out.
// Output the caller's writers refuse is dropped (and acknowledged).
func (e *Execer) writeOutput(s *execSession, stdout, stderr io.Writer) {
	for {
		c, ok := s.pop()
		if !ok {
			return
		}
		w := stdout
		if c.stream == guest.StreamStderr {
			w = stderr
		}
		if w != nil {
			w.Write(c.data)
		}
		if !s.ended() {
			e.conn.WriteFrame(guest.FrameExecAck, guest.EncodeExecAck(s.id, uint32(len(c.data))))
		}
	}
}

// execSession is the host's side of one session.
type execSession struct {
	id uint32
	in *guest.Window // credit for input to the guest

	mu     sync.Mutex
	cond   sync.Cond
	queue  []outChunk
	queued int
	exit   *ExecExit
	err    error // the session ended without an exit
}

type outChunk struct {
	stream guest.Stream
	data   []byte
}

// push queues output; false if it overflows the window the guest must keep to.
func (s *execSession) push(stream guest.Stream, data []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exit != nil || s.err != nil {
		return true
	}
	if s.queued+len(data) > guest.ExecWindow {
		s.err = errors.New("exec: the guest broke flow control")
		s.in.Close()
		s.cond.Broadcast()
		return false
	}
	s.queue = append(s.queue, outChunk{stream, data})
	s.queued += len(data)
	s.cond.Signal()
	return true
}

// pop waits for the next output; false once the session has ended and
// nothing is left (or it ended without an exit: the rest is dropped).
func (s *execSession) pop() (outChunk, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.queue) == 0 && s.exit == nil && s.err == nil {
		s.cond.Wait()
	}
	if len(s.queue) == 0 || s.err != nil {
		return outChunk{}, false
	}
	c := s.queue[0]
	s.queue[0] = outChunk{}
	s.queue = s.queue[1:]
	s.queued -= len(c.data)
	return c, true
}

// end records the session's end, the first one given.
func (s *execSession) end(x *ExecExit, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exit != nil || s.err != nil {
		return
	}
	s.exit, s.err = x, err
	s.in.Close()
	s.cond.Broadcast()
}

func (s *execSession) ended() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exit != nil || s.err != nil
}

func (s *execSession) result() (ExecExit, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return ExecExit{}, s.err
	}
	return *s.exit, nil
}
