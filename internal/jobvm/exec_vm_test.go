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

// Exec sessions in a real VM while its job runs: an interactive shell on
// a terminal (output, window size and its change, ^C, exit code), a
// one-shot command on pipes beside it, and a command as another user.
func TestExecSessionsInAJobsVM(t *testing.T) {
	h := newHost(t)
	r := req()
	r.Argv = []string{"sleep", "600"}
	ctx, stopJob := context.WithCancel(context.Background())
	defer stopJob()
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
	defer func() { stopJob(); <-ran }() // before the host's cleanup checks that nothing is left
	var e *jobvm.Execer
	select {
	case e = <-execers:
	case res := <-ran:
		t.Fatalf("the VM ended before the guest was ready: %+v", res)
	}
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
