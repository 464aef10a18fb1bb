//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
	"golang.org/x/sys/unix"
)

// Exit codes the guest reports for jobs it ended or could not start. A job
// that exits on its own reports its own code; one killed by a signal it did
// not get from us reports 128+signal with Exit.Signal set (shell style).
const (
	codeBadJob    = 125 // the job could not be started: bad request, bad Dir, other start failure
	codeCannotRun = 126 // the program exists but cannot be executed (permission, format)
	codeNotFound  = 127 // the program, or its interpreter, does not exist
	codeTimeout   = 124 // killed after Job.TimeoutMS (as coreutils timeout); TimedOut is set
	codeCancelled = 130 // killed on the host's Cancel, a SIGTERM/SIGINT to the guest, or the host going away
)

// drainWait bounds how long output is awaited after the job's process is
// gone: long enough for the pipes to empty, short enough that a daemon
// which escaped the process group with our stdout cannot hold the VM.
const drainWait = 2 * time.Second

// jobRunner runs one job at a time.
type jobRunner struct {
	reaper  *reaper
	baseEnv []string
	drain   time.Duration
}

// run runs job with its output written to stdout and stderr (the host's
// stream writers) and returns how it ended.
//
// The job runs in its own process group. It is killed, group and all, with
// SIGKILL when its timeout expires or ctx ends (host Cancel, guest shutdown,
// host gone). When its main process has exited the rest of the group is
// SIGKILLed as well, then output is drained for up to jr.drain. hostGone,
// when closed, means nobody reads output any more: run then does not wait
// for writes that can no longer complete.
func (jr *jobRunner) run(ctx context.Context, job guest.Job, stdout, stderr io.Writer, hostGone <-chan struct{}) guest.Exit {
	start := time.Now()
	done := func(e guest.Exit) guest.Exit {
		e.DurationMS = time.Since(start).Milliseconds()
		return e
	}
	l, code, err := jr.resolve(job.Argv, job.User, job.Env, job.Dir, false)
	if err != nil {
		return done(guest.Exit{Code: code, Error: err.Error()})
	}

	outR, outW, err := os.Pipe()
	if err != nil {
		return done(guest.Exit{Code: codeBadJob, Error: err.Error()})
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return done(guest.Exit{Code: codeBadJob, Error: err.Error()})
	}
	defer outR.Close()
	defer errR.Close()
	stdin, _ := os.Open(os.DevNull) // nil if missing: the job gets a closed fd 0
	attr := &os.ProcAttr{
		Dir:   l.dir,
		Env:   l.env,
		Files: []*os.File{stdin, outW, errW},
		Sys:   &syscall.SysProcAttr{Setpgid: true, Credential: l.cred},
	}
	p, waitCh, err := jr.reaper.start(l.path, l.argv, attr)
	outW.Close()
	errW.Close()
	if stdin != nil {
		stdin.Close()
	}
	if err != nil {
		return done(startFailure(l.path, err))
	}
	defer p.Release()

	var wg sync.WaitGroup
	wg.Add(2)
	goSafe(func() { pump(&wg, outR, stdout) })
	goSafe(func() { pump(&wg, errR, stderr) })

	pgid := p.Pid
	killGroup := func() { syscall.Kill(-pgid, syscall.SIGKILL) }
	var timeout <-chan time.Time
	if job.TimeoutMS > 0 {
		t := time.NewTimer(time.Duration(job.TimeoutMS) * time.Millisecond)
		defer t.Stop()
		timeout = t.C
	}
	var (
		ws        syscall.WaitStatus
		timedOut  bool
		cancelled bool
		stop      = ctx.Done()
	)
wait:
	for {
		select {
		case ws = <-waitCh:
			break wait
		case <-timeout:
			timeout = nil
			if !cancelled {
				timedOut = true
			}
			killGroup()
		case <-stop:
			stop = nil
			if !timedOut {
				cancelled = true
			}
			killGroup()
		}
	}
	killGroup() // whatever the job left running in its group

	pumped := make(chan struct{})
	go func() { wg.Wait(); close(pumped) }()
	select {
	case <-pumped:
	case <-hostGone:
	case <-time.After(jr.drain):
		// Something outside the group still holds the pipes: stop reading.
		outR.Close()
		errR.Close()
		select {
		case <-pumped:
		case <-hostGone:
		}
	}

	e := guest.Exit{}
	e.Code, e.Signal = exitStatus(ws)
	switch {
	case timedOut:
		e.Code, e.TimedOut = codeTimeout, true
	case cancelled:
		e.Code = codeCancelled
	}
	return done(e)
}

// launch is a program resolved and ready to start, as a job or an exec
// session.
type launch struct {
	path string
	argv []string
	env  []string
	dir  string
	cred *syscall.Credential // nil: as the guest (root)
}

// resolve finds the account, environment, working directory and program
// for argv run as user ("" root) with extra variables set. On failure it
// returns the exit code to report (125, 126 or 127) and why.
//
// For an exec session (login): no argv starts the account's login shell
// ("-sh"), and a home that does not exist gives / as the directory, as
// login does; a job needs argv and a directory that exists.
func (jr *jobRunner) resolve(argv []string, user string, extra map[string]string, dir string, login bool) (launch, int, error) {
	l := launch{argv: argv, env: jr.baseEnv, dir: dir}
	if !login && (len(argv) == 0 || argv[0] == "") {
		return l, codeBadJob, errors.New("job has no argv")
	}
	var acct *account
	switch {
	case user != "":
		a, err := lookupAccount(user)
		if err != nil {
			return l, codeBadJob, err
		}
		acct, l.cred = a, a.credential()
	case login:
		acct, _ = lookupAccount("root") // for its shell and variables; none is fine
	}
	if acct != nil {
		l.env = mergeEnv(l.env, acct.env())
	}
	l.env = mergeEnv(l.env, extra)
	if l.dir == "" && (acct != nil || login) {
		if acct != nil {
			l.dir = acct.home
		} else {
			l.dir = envValue(l.env, "HOME")
		}
		if st, err := os.Stat(l.dir); login && (err != nil || !st.IsDir()) {
			l.dir = "/"
		}
	}
	if len(argv) == 0 || argv[0] == "" {
		shell := "/bin/sh"
		if acct != nil && acct.shell != "" {
			shell = acct.shell
		}
		l.argv = []string{"-" + filepath.Base(shell)}
		argv = []string{shell}
	}
	path, err := lookPath(argv[0], envValue(l.env, "PATH"), l.dir)
	if err != nil {
		return l, startErrorCode(err), err
	}
	l.path = path
	if l.dir != "" {
		if st, err := os.Stat(l.dir); err != nil || !st.IsDir() {
			if err == nil {
				err = fmt.Errorf("%s: not a directory", l.dir)
			}
			return l, codeBadJob, fmt.Errorf("job dir: %w", err)
		}
	}
	return l, 0, nil
}

// pump copies a job's output to the host. If the host stops taking it,
// the rest is read and dropped so the job never blocks on a full pipe.
func pump(wg *sync.WaitGroup, r io.Reader, w io.Writer) {
	defer wg.Done()
	buf := make([]byte, 32<<10)
	broken := false
	for {
		n, err := r.Read(buf)
		if n > 0 && !broken {
			if _, werr := w.Write(buf[:n]); werr != nil {
				broken = true
			}
		}
		if err != nil {
			return
		}
	}
}

// exitStatus maps a wait status to an exit code and signal name: the
// process's own code, or 128+n and the signal's name when a signal ended it.
func exitStatus(ws syscall.WaitStatus) (int, string) {
	switch {
	case ws.Exited():
		return ws.ExitStatus(), ""
	case ws.Signaled():
		return 128 + int(ws.Signal()), signalName(ws.Signal())
	}
	return 255, ""
}

func signalName(s syscall.Signal) string {
	if n := unix.SignalName(s); n != "" {
		return n
	}
	return fmt.Sprintf("SIG%d", int(s))
}

// startErrorCode maps a failure to find or start a program to the shell's
// exit codes.
func startErrorCode(err error) int {
	switch {
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, fs.ErrNotExist):
		return codeNotFound
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.ENOEXEC), errors.Is(err, syscall.EISDIR):
		return codeCannotRun
	}
	return codeBadJob
}

// startFailure describes an error from starting a program that lookPath found.
func startFailure(path string, err error) guest.Exit {
	msg := err.Error()
	if errors.Is(err, fs.ErrNotExist) {
		// The file is there, so its interpreter is not.
		msg += " (missing ELF interpreter or #! interpreter?)"
	}
	return guest.Exit{Code: startErrorCode(err), Error: msg}
}
