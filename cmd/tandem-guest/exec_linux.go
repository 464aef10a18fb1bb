//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
	"golang.org/x/sys/unix"
)

// Why an exec session was ended, as context causes.
var (
	errExecKilled   = errors.New("killed by host") // SIGKILL from the host: no error in ExecExit
	errExecShutdown = errors.New("the guest is shutting down")
)

// execServer runs the exec sessions the host opens on the channel
// (guest.FrameExecOpen and the frames after it), concurrently with the
// job. Each session runs in a session of its own (setsid), with a pty as
// its controlling terminal or with pipes; when its first process exits,
// or the session is ended, every process left in it is killed.
//
// handle is called by the channel's one reader and never blocks on a
// session or on the channel: input is queued (at most guest.ExecWindow
// bytes a session, which the host's window guarantees) and written by the
// session's own goroutine, which acknowledges it once written.
type execServer struct {
	c     *guest.Conn
	jr    *jobRunner
	con   *console
	drain time.Duration
	state *execStateFile // the session count, for tandem-debug-pause

	// chunk bounds the data of one ExecOutput frame; 0: guest.ExecChunk.
	chunk atomic.Int32

	mu     sync.Mutex
	byID   map[uint32]*execSession
	closed bool
	wg     sync.WaitGroup
}

// newExecServer makes the exec server and writes its session count to
// statePath ("": none).
func newExecServer(c *guest.Conn, jr *jobRunner, con *console, statePath string) *execServer {
	st := &execStateFile{path: statePath, logf: con.logf}
	st.start()
	return &execServer{c: c, jr: jr, con: con, drain: jr.drain, state: st, byID: map[uint32]*execSession{}}
}

// isExecFrame says whether t is for the exec server.
func isExecFrame(t guest.FrameType) bool {
	switch t {
	case guest.FrameExecOpen, guest.FrameExecInput, guest.FrameExecResize, guest.FrameExecSignal,
		guest.FrameExecEOF, guest.FrameExecAck:
		return true
	}
	return false
}

// handle takes one exec frame. Frames for ids that are not running are
// ignored; a malformed one ends its session with an error, or is answered
// with an ExecExit carrying the error when it names none.
func (x *execServer) handle(t guest.FrameType, p []byte) {
	switch t {
	case guest.FrameExecOpen:
		var o guest.ExecOpen
		if err := guest.Decode(t, p, &o); err != nil {
			x.bad(o.ID, err)
			return
		}
		x.open(o)
	case guest.FrameExecInput:
		id, data, err := guest.DecodeExecInput(p)
		if err != nil {
			x.bad(id, err)
		} else if s := x.get(id); s != nil {
			s.input(data)
		}
	case guest.FrameExecResize:
		var r guest.ExecResize
		if err := guest.Decode(t, p, &r); err != nil {
			x.bad(r.ID, err)
		} else if s := x.get(r.ID); s != nil {
			s.resize(r.Rows, r.Cols)
		}
	case guest.FrameExecSignal:
		var sig guest.ExecSignal
		err := guest.Decode(t, p, &sig)
		var n syscall.Signal
		if err == nil {
			n, err = parseSignal(sig.Signal)
		}
		if err != nil {
			x.bad(sig.ID, err)
		} else if s := x.get(sig.ID); s != nil {
			s.signal(n)
		}
	case guest.FrameExecEOF:
		id, err := guest.DecodeExecID(p)
		if err != nil {
			x.bad(id, err)
		} else if s := x.get(id); s != nil {
			s.closeInput()
		}
	case guest.FrameExecAck:
		id, n, err := guest.DecodeExecAck(p)
		if err != nil {
			x.bad(id, err)
		} else if s := x.get(id); s != nil {
			s.out.Give(int(min(n, guest.ExecWindow)))
		}
	}
}

func (x *execServer) get(id uint32) *execSession {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.byID[id]
}

// bad answers a malformed frame: the session it names, if running, ends
// with the error; otherwise an ExecExit carries it.
func (x *execServer) bad(id uint32, err error) {
	x.con.logf("exec: %v", err)
	if s := x.get(id); s != nil {
		s.stop(fmt.Errorf("bad frame from host: %w", err))
		return
	}
	x.reply(guest.ExecExit{ID: id, Code: codeBadJob, Error: err.Error()})
}

// reply sends an ExecExit without blocking the caller.
func (x *execServer) reply(e guest.ExecExit) {
	goSafe(func() { x.c.WriteJSON(guest.FrameExecExit, e) })
}

func (x *execServer) open(o guest.ExecOpen) {
	refuse := func(code int, err error) {
		x.reply(guest.ExecExit{ID: o.ID, Code: code, Error: err.Error()})
	}
	x.mu.Lock()
	switch {
	case o.ID == 0:
		x.mu.Unlock()
		refuse(codeBadJob, errors.New("exec session id 0"))
		return
	case x.byID[o.ID] != nil:
		x.mu.Unlock()
		x.con.logf("exec %d: opened twice", o.ID)
		return // an ExecExit for this id would end the running one on the host
	case x.closed:
		x.mu.Unlock()
		refuse(codeBadJob, errExecShutdown)
		return
	case len(x.byID) >= guest.MaxExecSessions:
		x.mu.Unlock()
		refuse(codeBadJob, fmt.Errorf("too many exec sessions (%d)", guest.MaxExecSessions))
		return
	}
	s := newExecSession(x, o)
	x.byID[o.ID] = s
	x.wg.Add(1)
	x.mu.Unlock()

	// Arguments and environment may hold secrets: log the program only.
	what := "login shell"
	if len(o.Argv) > 0 {
		what = firstArg(o.Argv)
	}
	user := o.User
	if user == "" {
		user = "root"
	}
	x.con.logf("exec %d: %s as %s, tty %v", o.ID, what, user, o.TTY)
	wait, err := s.start()
	if err != nil {
		code := codeBadJob
		var se *startError
		if errors.As(err, &se) {
			code = se.code
		}
		x.forget(s)
		x.wg.Done()
		refuse(code, err)
		return
	}
	x.state.opened()
	goSafe(func() {
		defer x.wg.Done()
		e := s.run(wait)
		x.forget(s)
		x.state.closed()
		x.con.logf("exec %d: exit %d %s", o.ID, e.Code, e.Error)
		if !s.detached() {
			x.c.WriteJSON(guest.FrameExecExit, e)
		}
	})
}

func (x *execServer) forget(s *execSession) {
	x.mu.Lock()
	if x.byID[s.id] == s {
		delete(x.byID, s.id)
	}
	x.mu.Unlock()
}

// endAll ends every session with cause, without waiting, and forgets them,
// so that a new host may open sessions of the same ids.
func (x *execServer) endAll(cause error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for id, s := range x.byID {
		s.stop(cause)
		delete(x.byID, id)
	}
}

// outChunk is the most data one ExecOutput frame carries.
func (x *execServer) outChunk() int {
	if n := x.chunk.Load(); n > 0 {
		return int(n)
	}
	return guest.ExecChunk
}

// closeAll ends every session with cause and refuses new ones, then waits
// up to wait for the sessions to report their ends.
func (x *execServer) closeAll(cause error, wait time.Duration) {
	x.mu.Lock()
	x.closed = true
	for _, s := range x.byID {
		s.stop(cause)
	}
	x.mu.Unlock()
	done := make(chan struct{})
	go func() { x.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
	}
}

// startError is a failure to start a session's program, with its exit code.
type startError struct {
	code int
	err  error
}

func (e *startError) Error() string { return e.err.Error() }
func (e *startError) Unwrap() error { return e.err }

// execSession is one running session.
type execSession struct {
	x    *execServer
	id   uint32
	open guest.ExecOpen
	out  *guest.Window // credit for output to the host

	ctx  context.Context
	stop context.CancelCauseFunc

	pid     int
	pty     *os.File // the master, with a tty
	stdin   io.WriteCloser
	outputs []*os.File // what the pumps read

	mu     sync.Mutex
	cond   sync.Cond
	queue  [][]byte // input not yet written
	queued int
	eof    bool
	ended  bool
}

func newExecSession(x *execServer, o guest.ExecOpen) *execSession {
	s := &execSession{x: x, id: o.ID, open: o, out: guest.NewWindow(guest.ExecWindow)}
	s.cond.L = &s.mu
	s.ctx, s.stop = context.WithCancelCause(context.Background())
	return s
}

// start starts the session's program and returns its wait channel.
func (s *execSession) start() (<-chan syscall.WaitStatus, error) {
	o := s.open
	env := maps.Clone(o.Env)
	if o.TTY {
		if env == nil {
			env = map[string]string{}
		}
		if o.Term != "" {
			env["TERM"] = o.Term
		} else if env["TERM"] == "" {
			env["TERM"] = "xterm"
		}
	}
	l, code, err := s.x.jr.resolve(o.Argv, o.User, env, o.Dir, true)
	if err != nil {
		return nil, &startError{code, err}
	}
	attr := &os.ProcAttr{Dir: l.dir, Env: l.env, Sys: &syscall.SysProcAttr{Setsid: true, Credential: l.cred}}
	var child []*os.File // the child's ends, closed once it has them
	defer func() {
		for _, f := range child {
			f.Close()
		}
	}()
	if o.TTY {
		master, slave, err := openPTY()
		if err != nil {
			return nil, &startError{codeBadJob, err}
		}
		child = append(child, slave)
		rows, cols := o.Rows, o.Cols
		if rows == 0 || cols == 0 {
			rows, cols = 24, 80
		}
		setWinsize(master, rows, cols)
		if l.cred != nil {
			// As login does: the user owns the terminal.
			unix.Fchown(int(slave.Fd()), int(l.cred.Uid), -1)
		}
		s.pty, s.stdin, s.outputs = master, master, []*os.File{master}
		attr.Files = []*os.File{slave, slave, slave}
		attr.Sys.Setctty, attr.Sys.Ctty = true, 0
	} else {
		var fds [6]*os.File // stdin r/w, stdout r/w, stderr r/w
		for i := 0; i < 6; i += 2 {
			if fds[i], fds[i+1], err = os.Pipe(); err != nil {
				for _, f := range fds[:i] {
					f.Close()
				}
				return nil, &startError{codeBadJob, err}
			}
		}
		child = append(child, fds[0], fds[3], fds[5])
		s.stdin, s.outputs = fds[1], []*os.File{fds[2], fds[4]}
		attr.Files = []*os.File{fds[0], fds[3], fds[5]}
	}
	p, wait, err := s.x.jr.reaper.start(l.path, l.argv, attr)
	if err != nil {
		s.stdin.Close()
		for _, f := range s.outputs {
			f.Close()
		}
		e := startFailure(l.path, err)
		return nil, &startError{e.Code, errors.New(e.Error)}
	}
	s.pid = p.Pid
	p.Release()
	return wait, nil
}

// run relays the session until its first process has exited or it is
// stopped, kills what is left of it, and returns its ExecExit.
func (s *execSession) run(wait <-chan syscall.WaitStatus) guest.ExecExit {
	var pumps sync.WaitGroup
	for i, f := range s.outputs {
		stream := guest.StreamStdout
		if i == 1 {
			stream = guest.StreamStderr
		}
		pumps.Add(1)
		goSafe(func() { defer pumps.Done(); s.pump(f, stream) })
	}
	inputDone := make(chan struct{})
	goSafe(func() { defer close(inputDone); s.writeInput() })

	var ws syscall.WaitStatus
	select {
	case ws = <-wait:
	case <-s.ctx.Done():
		killSession(s.pid)
		ws = <-wait
	}
	killSession(s.pid) // whatever it left running

	pumped := make(chan struct{})
	go func() { pumps.Wait(); close(pumped) }()
	select {
	case <-pumped:
	case <-time.After(s.x.drain):
		// Something that escaped the session holds the output, or the
		// host takes none: stop relaying.
		s.out.Close()
		for _, f := range s.outputs {
			f.Close()
		}
		<-pumped
	}
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
	s.cond.Broadcast()
	s.stdin.Close() // unblocks a write to it
	<-inputDone
	for _, f := range s.outputs {
		f.Close()
	}

	e := guest.ExecExit{ID: s.id}
	e.Code, e.Signal = exitStatus(ws)
	if cause := context.Cause(s.ctx); cause != nil && cause != errExecKilled {
		e.Error = cause.Error()
	}
	s.stop(nil)
	return e
}

// pump relays one output to the host, no faster than the host acknowledges:
// it holds at most one chunk read and not yet sent, and takes credit only
// for what it has read (an idle stderr holds none).
func (s *execSession) pump(r io.Reader, stream guest.Stream) {
	buf := make([]byte, guest.ExecChunk)
	for {
		m, rerr := r.Read(buf)
		for p := buf[:m]; len(p) > 0; {
			n, err := s.out.Take(min(len(p), s.x.outChunk()))
			if err != nil || s.detached() {
				return
			}
			if err := s.x.c.WriteFrame(guest.FrameExecOutput, guest.EncodeExecOutput(s.id, stream, p[:n])); err != nil {
				return
			}
			p = p[n:]
		}
		if rerr != nil { // EOF; EIO from a pty's master once the terminal is gone
			return
		}
	}
}

// detached says whether the session was ended because its host went
// away: a new host knows nothing of it, so nothing more is sent for it.
func (s *execSession) detached() bool {
	return context.Cause(s.ctx) == errHostDetached
}

// input queues data from the host for the program's stdin.
func (s *execSession) input(data []byte) {
	s.mu.Lock()
	if s.queued+len(data) > guest.ExecWindow {
		s.mu.Unlock()
		s.stop(fmt.Errorf("host sent input past its window of %d bytes", guest.ExecWindow))
		return
	}
	s.queue = append(s.queue, data)
	s.queued += len(data)
	s.mu.Unlock()
	s.cond.Signal()
}

func (s *execSession) closeInput() {
	s.mu.Lock()
	s.eof = true
	s.mu.Unlock()
	s.cond.Signal()
}

// writeInput writes queued input to the program and acknowledges it. Input
// the program no longer takes is acknowledged and dropped. The host's EOF
// closes a pipe; on a terminal it is the EOF character (^D), which ends
// the input of a program reading a line.
func (s *execSession) writeInput() {
	broken := false
	for {
		s.mu.Lock()
		for len(s.queue) == 0 && !s.eof && !s.ended {
			s.cond.Wait()
		}
		if s.ended {
			s.mu.Unlock()
			return
		}
		if len(s.queue) == 0 { // eof
			s.mu.Unlock()
			if s.pty != nil {
				s.stdin.Write([]byte{4})
			} else {
				s.stdin.Close()
			}
			return
		}
		b := s.queue[0]
		s.queue[0] = nil
		s.queue = s.queue[1:]
		s.mu.Unlock()
		if !broken {
			if _, err := s.stdin.Write(b); err != nil {
				broken = true
			}
		}
		s.mu.Lock()
		s.queued -= len(b)
		s.mu.Unlock()
		if err := s.x.c.WriteFrame(guest.FrameExecAck, guest.EncodeExecAck(s.id, uint32(len(b)))); err != nil {
			return
		}
	}
}

func (s *execSession) resize(rows, cols uint16) {
	if s.pty != nil && rows > 0 && cols > 0 {
		setWinsize(s.pty, rows, cols) // the kernel sends SIGWINCH
	}
}

// signal sends sig to the terminal's foreground process group (with a
// tty) or to the session's process group. SIGKILL ends the session.
func (s *execSession) signal(sig syscall.Signal) {
	if sig == syscall.SIGKILL {
		s.stop(errExecKilled)
		return
	}
	pgrp := s.pid
	if s.pty != nil {
		if fg := foregroundGroup(s.pty); fg > 0 {
			pgrp = fg
		}
	}
	syscall.Kill(-pgrp, sig)
}

// parseSignal reads "SIGINT", "INT" or a number.
func parseSignal(name string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(name); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	name = strings.ToUpper(name)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if s := unix.SignalNum(name); s != 0 {
		return s, nil
	}
	return 0, fmt.Errorf("unknown signal %q", name)
}

// killSession kills every process of session sid (the session's leader
// has pid sid): its process group, then whatever /proc lists in it.
func killSession(sid int) {
	syscall.Kill(-sid, syscall.SIGKILL)
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if s, ok := procSession(pid); ok && s == sid {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// procSession reads a process's session id from /proc/PID/stat.
func procSession(pid int) (int, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// pid (comm) state ppid pgrp session ...; comm may hold anything.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 4 {
		return 0, false
	}
	sid, err := strconv.Atoi(f[3])
	return sid, err == nil
}

// openPTY opens a pseudo-terminal pair. The master is non-blocking (Go's
// poller serves it, so Close ends a blocked Read or Write).
func openPTY() (master, slave *os.File, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("pty number: %w", err)
	}
	name := "/dev/pts/" + strconv.FormatUint(uint64(n), 10)
	sfd, err := unix.Open(name, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("open %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), os.NewFile(uintptr(sfd), name), nil
}

// setWinsize sets a terminal's size; on a change the kernel signals
// SIGWINCH to its foreground process group.
func setWinsize(f *os.File, rows, cols uint16) {
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
		})
	}
}

// foregroundGroup is the foreground process group of the terminal whose
// master is f, or 0.
func foregroundGroup(f *os.File) int {
	pgrp := 0
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			if n, err := unix.IoctlGetInt(int(fd), unix.TIOCGPGRP); err == nil {
				pgrp = n
			}
		})
	}
	return pgrp
}
