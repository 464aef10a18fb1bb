//go:build linux

package main

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/syncbuf"
)

// The guest's exec server keeps the count the pause reads: a session the
// host opens and that ends resumes a pause; one open when the pause began
// must be joined by a new one.
func TestPauseFollowsTheGuestsSessions(t *testing.T) {
	x := startExecHost(t)
	if c, err := readExecCount(x.state); err != nil || c != (execCount{}) {
		t.Fatalf("count once the guest said hello: %+v %v", c, err)
	}

	// A session open before the pause.
	x.send(guest.FrameExecOpen, guest.ExecOpen{ID: 1, Argv: []string{"sh", "-c", "echo early; cat"}})
	x.waitOutput(1, "early\n")
	if c, err := readExecCount(x.state); err != nil || c != (execCount{Opened: 1, Open: 1}) {
		t.Fatalf("count with one session: %+v %v", c, err)
	}
	// A session whose program is not there never started: not counted.
	x.send(guest.FrameExecOpen, guest.ExecOpen{ID: 2, Argv: []string{"no-such-program"}})
	if e := x.waitExit(2); e.Code != codeNotFound {
		t.Fatalf("missing program: %+v", e)
	}

	p := startPause(t, context.Background(), x.state, time.Minute, "tandem-test")
	x.send(guest.FrameExecEOF, guest.EncodeExecID(1)) // cat ends, and its session
	x.waitExit(1)
	p.stillPaused("when the session open before it ended")

	x.send(guest.FrameExecOpen, guest.ExecOpen{ID: 3, Argv: []string{"echo", "hi"}})
	x.waitOutput(3, "hi\n")
	x.waitExit(3)
	took := p.wait(10 * time.Second)
	if p.end != pauseDetached || p.err != nil {
		t.Fatalf("ended %v %v after %s, said:\n%s", p.end, p.err, took, p.out.String())
	}
	if c, err := readExecCount(x.state); err != nil || c != (execCount{Opened: 2, Open: 0}) {
		t.Fatalf("count at the end: %+v %v", c, err)
	}
}

// SIGINT and SIGTERM end the command as they would end a shell's.
func TestPauseMainSignals(t *testing.T) {
	t.Setenv(runnerNameEnv, "tandem-test")
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		var out, errOut syncbuf.Buffer
		code := make(chan int, 1)
		go func() { code <- pauseMain([]string{"1m"}, &out, &errOut) }()
		// pauseMain listens for signals before it says anything.
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(out.String(), "tandem ssh tandem-test") {
			if time.Now().After(deadline) {
				t.Fatalf("no banner: %q %q", out.String(), errOut.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
		syscall.Kill(os.Getpid(), sig)
		select {
		case c := <-code:
			if c != 128+int(sig) || !strings.Contains(out.String(), "got "+map[syscall.Signal]string{syscall.SIGINT: "SIGINT", syscall.SIGTERM: "SIGTERM"}[sig]) {
				t.Fatalf("%v: exit %d, said %q %q", sig, c, out.String(), errOut.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%v did not end the pause", sig)
		}
	}
}

func TestPauseMainBadArguments(t *testing.T) {
	t.Setenv(pauseTimeoutEnv, "forever")
	var out, errOut syncbuf.Buffer
	if c := pauseMain(nil, &out, &errOut); c != 2 || out.String() != "" ||
		!strings.Contains(errOut.String(), `tandem-debug-pause: $TANDEM_DEBUG_PAUSE_TIMEOUT "forever": not a duration such as 20m`) {
		t.Fatalf("exit %d, said %q %q", c, out.String(), errOut.String())
	}
	if c := pauseMain([]string{"--help"}, &out, &errOut); c != 0 || !strings.HasPrefix(out.String(), "usage: tandem-debug-pause [TIMEOUT]") {
		t.Fatalf("--help: exit %d, said %q", c, out.String())
	}
}
