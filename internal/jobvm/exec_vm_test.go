package jobvm_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/syncbuf"
)

// screen is a terminal's output as a test reads it.
type screen struct{ syncbuf.Buffer }

// waitFor waits until the screen shows want after what it showed at from.
func (s *screen) waitFor(t *testing.T, from int, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !strings.Contains(s.String()[from:], want) {
		if time.Now().After(deadline) {
			t.Fatalf("the terminal did not show %q within %s; it shows:\n%s", want, within, s.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startExecJob runs r's job in a VM of a new host and returns the VM's
// Execer once the guest is ready, the job's result to come (closed after
// it), and what stops the job. On the test's end the job is stopped and
// its end awaited, before the host's cleanup checks that nothing is left.
func startExecJob(t *testing.T, r jobvm.Request) (*jobvm.Execer, <-chan jobvm.Result, context.CancelFunc) {
	t.Helper()
	h := newHost(t)
	ctx, stopJob := context.WithCancel(context.Background())
	execers := make(chan *jobvm.Execer, 1)
	r.OnExec = func(e *jobvm.Execer) { execers <- e }
	ran := make(chan jobvm.Result, 1)
	go func() {
		res, err := h.Run(ctx, r)
		if err != nil {
			t.Errorf("Run: %v", err)
		}
		ran <- res
		close(ran)
	}()
	t.Cleanup(func() { stopJob(); <-ran })
	select {
	case e := <-execers:
		return e, ran, stopJob
	case res := <-ran:
		t.Fatalf("the VM ended before the guest was ready: %+v", res)
		return nil, nil, nil
	}
}

// Exec sessions in a real VM while its job runs: an interactive shell on
// a terminal (output, window size and its change, ^C, exit code), a
// one-shot command on pipes beside it, and a command as another user.
func TestExecSessionsInAJobsVM(t *testing.T) {
	r := req()
	r.Argv = []string{"sleep", "600"}
	e, _, stopJob := startExecJob(t, r)
	if !e.Supported() {
		t.Fatal("the test image's guest does not support exec")
	}
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// The login shell on a terminal.
	term := &screen{}
	inR, inW := io.Pipe()
	resize := make(chan jobvm.WindowSize)
	shell := make(chan error, 1)
	var shellExit jobvm.ExecExit
	go func() {
		var err error
		shellExit, err = e.Exec(sctx, jobvm.ExecRequest{TTY: true, Size: jobvm.WindowSize{Rows: 24, Cols: 80}}, inR, term, nil, resize)
		shell <- err
	}()
	typeIn := func(s string) {
		t.Helper()
		if _, err := io.WriteString(inW, s); err != nil {
			t.Fatal(err)
		}
	}
	typeIn("echo hi-$((6*7)) $TERM $HOME; stty size\n")
	term.waitFor(t, 0, "hi-42 xterm /root\r\n24 80\r\n", 30*time.Second)
	mark := len(term.String())
	resize <- jobvm.WindowSize{Rows: 50, Cols: 132}
	typeIn("stty size\n")
	term.waitFor(t, mark, "50 132\r\n", 30*time.Second)

	// A one-shot command on pipes, while the shell is open.
	var out, errOut bytes.Buffer
	x, err := e.Exec(sctx, jobvm.ExecRequest{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 9"}}, nil, &out, &errOut, nil)
	if err != nil || x.Code != 9 || out.String() != "out\n" || errOut.String() != "err\n" {
		t.Fatalf("pipes: %+v %v, stdout %q, stderr %q", x, err, out.String(), errOut.String())
	}
	// As another user, with a terminal.
	out.Reset()
	x, err = e.Exec(sctx, jobvm.ExecRequest{User: "nobody", TTY: true, Argv: []string{"sh", "-c", "echo $(id -u) $USER; pwd"}}, nil, &out, nil, nil)
	if err != nil || x.Code != 0 || out.String() != "65534 nobody\r\n/\r\n" {
		t.Fatalf("as nobody: %+v %v, output %q", x, err, out.String())
	}
	// A program that is not there.
	x, err = e.Exec(sctx, jobvm.ExecRequest{Argv: []string{"no-such-program"}}, nil, nil, nil, nil)
	if err != nil || x.Code != 127 || x.Error == "" {
		t.Fatalf("missing program: %+v %v", x, err)
	}

	// ^C interrupts the shell's foreground command.
	mark = len(term.String())
	typeIn("sleep 100\n")
	time.Sleep(time.Second) // under TCG the sleep takes a moment to start
	typeIn("\x03")
	typeIn("echo back-$((2*3))\n")
	term.waitFor(t, mark, "back-6", 30*time.Second) // not 100 s

	typeIn("exit 3\n")
	select {
	case err := <-shell:
		if err != nil || shellExit.Code != 3 {
			t.Fatalf("shell: %+v %v", shellExit, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the shell did not exit; terminal:\n%s", term.String())
	}

	// The end of the VM ends the sessions still open.
	inR2, inW2 := io.Pipe()
	defer inW2.Close()
	open := make(chan error, 1)
	go func() {
		_, err := e.Exec(sctx, jobvm.ExecRequest{Argv: []string{"cat"}}, inR2, io.Discard, nil, nil)
		open <- err
	}()
	time.Sleep(500 * time.Millisecond)
	stopJob()
	select {
	case err := <-open:
		if !errors.Is(err, jobvm.ErrGuestGone) {
			t.Fatalf("an open session at the VM's end: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("an open session outlived the VM")
	}
	<-e.Done()
}

// tandem-debug-pause in a real VM: the job says how to reach it, waits for
// a session to come and go, then goes on, long before its timeout.
func TestDebugPauseInAJobsVM(t *testing.T) {
	r := req()
	r.Argv = []string{"sh", "-c", "tandem-debug-pause 2m; echo resumed"}
	r.Env = map[string]string{"TANDEM_RUNNER_NAME": "tandem-test"}
	var out syncbuf.Buffer
	r.Stdout = &out
	e, ran, _ := startExecJob(t, r)
	// Both lines, which may reach the host in separate chunks: how to
	// reach the VM, and when the job resumes.
	deadline := time.Now().Add(90 * time.Second)
	for _, line := range []struct{ text, missing string }{
		{"tandem ssh tandem-test\n", "the job did not say how to reach its VM"},
		{"resumes when your session ends, or in 2m0s", "the job does not say when it resumes"},
	} {
		for !strings.Contains(out.String(), line.text) {
			if time.Now().After(deadline) {
				t.Fatalf("%s; it said:\n%s", line.missing, out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var hi bytes.Buffer
	x, err := e.Exec(sctx, jobvm.ExecRequest{Argv: []string{"echo", "hi"}}, nil, &hi, nil, nil)
	if err != nil || x.Code != 0 || hi.String() != "hi\n" {
		t.Fatalf("session: %+v %v, output %q", x, err, hi.String())
	}
	detached := time.Now()
	select {
	case res := <-ran:
		if res.ExitCode != 0 || res.Failure != "" || !strings.HasSuffix(out.String(), "resuming the job\nresumed\n") {
			t.Fatalf("result %+v, output:\n%s", res, out.String())
		}
		t.Logf("resumed %s after the session ended; the job said:\n%s", time.Since(detached).Round(time.Millisecond), out.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("the job did not resume within 60 s of the session's end; it said:\n%s", out.String())
	}
}
