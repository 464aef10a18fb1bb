package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// tandem-debug-pause: a workflow step that holds the job so that someone
// can look around its VM with `tandem ssh`. tandem-guest is the command
// when called by that name (the images link it in /usr/local/bin).
//
// The rule: the pause reads the guest agent's session count (execCount, in
// execStatePath) when it begins and then every pausePoll. It resumes once
// a session has opened since it began (opened grew) and no session is
// open (open is 0), whichever came to be first; or when its timeout
// expires, sessions open or not. A session already open when the pause
// began is not someone who came for it: alone it neither counts as the
// attach nor, by ending, resumes the job; it only delays the resume while
// it stays open after a new one has come and gone. A session that opens
// and ends between two reads still counts (opened grew). When the count
// cannot be read at the start (no file: a guest agent older than this
// command), the pause says so and resumes only at its timeout.

const (
	pauseName           = "tandem-debug-pause"
	pauseTimeoutEnv     = "TANDEM_DEBUG_PAUSE_TIMEOUT"
	runnerNameEnv       = "TANDEM_RUNNER_NAME"
	defaultPauseTimeout = 30 * time.Minute
	pausePoll           = 300 * time.Millisecond
)

const pauseUsage = `usage: tandem-debug-pause [TIMEOUT]

Pauses a Tandem job so that you can look around its VM. It prints the
command that opens a shell in this VM (tandem ssh RUNNER-NAME) and waits
until a session has been opened after the pause began and no session is
open any more, or until TIMEOUT has passed, whichever comes first. Then
the job goes on (exit 0); a session still open at the timeout stays open.

TIMEOUT is a duration such as 20m or 1h30m; without it,
$TANDEM_DEBUG_PAUSE_TIMEOUT, else 30m. SIGINT or SIGTERM ends the pause
with 130 or 143, failing the step.

In a workflow:

    - run: tandem-debug-pause 20m
`

// pauseEnd is why a pause ended.
type pauseEnd int

const (
	pauseDetached pauseEnd = iota // a session came and all sessions are gone
	pauseTimedOut
)

// pauseConfig is one pause.
type pauseConfig struct {
	StateFile string        // the guest agent's session count (execStatePath)
	Timeout   time.Duration // > 0
	Poll      time.Duration // how often StateFile is read
	Runner    string        // this VM's runner name; "": unknown
	Out       io.Writer     // the job's log
}

// pauseWatch applies the rule to the counts read: base is opened when the
// pause began.
type pauseWatch struct {
	base     uint64
	attached bool
}

// see takes a count read and says whether a session has now come for the
// first time and whether the pause is over.
func (w *pauseWatch) see(c execCount) (arrived, over bool) {
	if !w.attached && c.Opened > w.base {
		w.attached, arrived = true, true
	}
	return arrived, w.attached && c.Open == 0
}

// debugPause prints how to reach this VM and waits as the rule says. It
// returns why it ended, or ctx's cause if ctx ended first.
func debugPause(ctx context.Context, c pauseConfig) (pauseEnd, error) {
	say := func(format string, args ...any) {
		fmt.Fprintf(c.Out, pauseName+": "+format+"\n", args...)
	}
	timer := time.NewTimer(c.Timeout)
	defer timer.Stop()
	first, seeErr := readExecCount(c.StateFile)
	if c.Runner != "" {
		say("the job is paused. Open a shell in this VM with:  tandem ssh %s", c.Runner)
	} else {
		say("the job is paused, but this VM's runner name is unknown (%s is not set): find its job with  tandem ssh ls  and open a shell with  tandem ssh JOB", runnerNameEnv)
	}
	var tick <-chan time.Time
	if seeErr != nil {
		say("cannot see the sessions of this VM (%v; is tandem-guest older than this command?): the job resumes in %s", seeErr, c.Timeout)
	} else {
		say("the job resumes when your session ends, or in %s", c.Timeout)
		t := time.NewTicker(c.Poll)
		defer t.Stop()
		tick = t.C
	}
	w := pauseWatch{base: first.Opened}
	var readErr string
	for {
		select {
		case <-ctx.Done():
			return 0, context.Cause(ctx)
		case <-timer.C:
			say("%s have passed: resuming the job", c.Timeout)
			return pauseTimedOut, nil
		case <-tick:
		}
		n, err := readExecCount(c.StateFile)
		if err != nil {
			if err.Error() != readErr { // say each new trouble once
				readErr = err.Error()
				say("cannot see the sessions of this VM for now: %v", err)
			}
			continue
		}
		readErr = ""
		arrived, over := w.see(n)
		if over {
			say("your session has ended: resuming the job")
			return pauseDetached, nil
		}
		if arrived {
			say("a session has opened: the job resumes once no session is open")
		}
	}
}

// pauseArgs reads the command line and environment: the timeout, or
// help asked for.
func pauseArgs(args []string, getenv func(string) string) (timeout time.Duration, help bool, err error) {
	var pos []string
	for _, a := range args {
		switch {
		case a == "-h" || a == "--help" || a == "-help" || a == "help":
			return 0, true, nil
		case strings.HasPrefix(a, "-") && a != "-":
			return 0, false, fmt.Errorf("unknown option %q", a)
		}
		pos = append(pos, a)
	}
	if len(pos) > 1 {
		return 0, false, fmt.Errorf("one timeout at most, got %d arguments", len(pos))
	}
	val, from := getenv(pauseTimeoutEnv), "$"+pauseTimeoutEnv
	if len(pos) == 1 {
		val, from = pos[0], "timeout"
	}
	if val == "" {
		return defaultPauseTimeout, false, nil
	}
	d, err := time.ParseDuration(val)
	if err != nil {
		return 0, false, fmt.Errorf("%s %q: not a duration such as 20m or 1h30m", from, val)
	}
	if d <= 0 {
		return 0, false, fmt.Errorf("%s %q: must be more than 0", from, val)
	}
	return d, false, nil
}

// signalled is a pause ended by a signal.
type signalled struct{ sig syscall.Signal }

func (s signalled) Error() string {
	switch s.sig {
	case syscall.SIGINT:
		return "got SIGINT"
	case syscall.SIGTERM:
		return "got SIGTERM"
	}
	return "got " + s.sig.String()
}

// pauseMain is tandem-debug-pause's main: it returns the exit code.
func pauseMain(args []string, stdout, stderr io.Writer) int {
	timeout, help, err := pauseArgs(args, os.Getenv)
	if help {
		fmt.Fprint(stdout, pauseUsage)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n(usage: %s [TIMEOUT]; --help says more)\n", pauseName, err, pauseName)
		return 2
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			if n, ok := s.(syscall.Signal); ok {
				cancel(signalled{n})
			}
		case <-ctx.Done():
		}
	}()
	_, err = debugPause(ctx, pauseConfig{
		StateFile: execStatePath, Timeout: timeout, Poll: pausePoll,
		Runner: os.Getenv(runnerNameEnv), Out: stdout,
	})
	var sig signalled
	if errors.As(err, &sig) {
		fmt.Fprintf(stdout, "%s: %v: ending the pause, failing the step\n", pauseName, err)
		return 128 + int(sig.sig)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", pauseName, err)
		return 1
	}
	return 0
}
