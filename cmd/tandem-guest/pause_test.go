package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/syncbuf"
)

func TestExecCountText(t *testing.T) {
	c := execCount{Opened: 3, Open: 1}
	if got := string(c.marshal()); got != "opened 3\nopen 1\n" {
		t.Fatalf("marshal: %q", got)
	}
	back, err := parseExecCount(c.marshal())
	if err != nil || back != c {
		t.Fatalf("parse back: %+v %v", back, err)
	}
	// A later guest may add lines: they are skipped.
	if got, err := parseExecCount([]byte("version 2\nopened 5\nopen 0\nlast 12:00\n")); err != nil || got != (execCount{5, 0}) {
		t.Fatalf("with other lines: %+v %v", got, err)
	}
	for _, bad := range []string{"", "opened 1\n", "open 0\n", "opened x\nopen 0\n", "opened 1\nopen -1\n",
		"opened 1\nopen 2\n", "opened\nopen 0\n", "\x00\x01\x02", "opened 99999999999999999999\nopen 0\n"} {
		if c, err := parseExecCount([]byte(bad)); err == nil {
			t.Errorf("parse %q: %+v, want an error", bad, c)
		}
	}
}

func TestExecStateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tandem", "exec-sessions")
	var logged []string
	f := &execStateFile{path: path, logf: func(format string, args ...any) { logged = append(logged, fmt.Sprintf(format, args...)) }}
	f.start()
	read := func() execCount {
		t.Helper()
		c, err := readExecCount(path)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if c := read(); c != (execCount{}) {
		t.Fatalf("at start: %+v", c)
	}
	dir, _ := os.Stat(filepath.Dir(path))
	file, _ := os.Stat(path)
	if dir.Mode().Perm() != 0o755 || file.Mode().Perm() != 0o644 {
		t.Fatalf("modes: dir %v, file %v; want 0755 and 0644 (readable by a job's user, writable by root only)", dir.Mode(), file.Mode())
	}
	f.opened()
	f.opened()
	f.closed()
	if c := read(); c != (execCount{Opened: 2, Open: 1}) {
		t.Fatalf("after 2 opened, 1 closed: %+v", c)
	}
	f.closed()
	f.closed() // one too many: never below 0
	if c := read(); c != (execCount{Opened: 2, Open: 0}) {
		t.Fatalf("after all closed: %+v", c)
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Fatalf("files left beside the state file: %v", ents)
	}
	if len(logged) != 0 {
		t.Fatalf("logged %q", logged)
	}

	// A directory that is not there: the failure is logged once.
	g := &execStateFile{path: filepath.Join(t.TempDir(), "no", "such", "exec-sessions"), logf: f.logf}
	g.start()
	g.opened()
	g.closed()
	if len(logged) != 1 || !strings.Contains(logged[0], "tandem-debug-pause") {
		t.Fatalf("logged %q, want one line", logged)
	}
	(&execStateFile{}).opened() // no file kept: nothing to do
}

func TestPauseArgs(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  string
		want time.Duration
		help bool
		err  string
	}{
		{want: defaultPauseTimeout},
		{args: []string{"20m"}, want: 20 * time.Minute},
		{env: "1h30m", want: 90 * time.Minute},
		{args: []string{"5s"}, env: "1h", want: 5 * time.Second}, // the argument wins
		{args: []string{"--help"}, help: true},
		{args: []string{"20m", "-h"}, help: true},
		{args: []string{"20"}, err: `timeout "20": not a duration`},
		{env: "soon", err: `$TANDEM_DEBUG_PAUSE_TIMEOUT "soon": not a duration`},
		{args: []string{"0s"}, err: "must be more than 0"},
		{args: []string{"-5m"}, err: `unknown option "-5m"`},
		{args: []string{"1m", "2m"}, err: "one timeout at most"},
	} {
		d, help, err := pauseArgs(c.args, func(k string) string {
			if k == pauseTimeoutEnv {
				return c.env
			}
			return ""
		})
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q env %q: %v, want an error with %q", c.args, c.env, err, c.err)
			}
			continue
		}
		if err != nil || d != c.want || help != c.help {
			t.Errorf("%q env %q: %v %v %v, want %v help %v", c.args, c.env, d, help, err, c.want, c.help)
		}
	}
}

// pausing is a debugPause running in the background.
type pausing struct {
	t     *testing.T
	out   syncbuf.Buffer
	start time.Time
	done  chan struct{}
	end   pauseEnd
	err   error
}

func startPause(t *testing.T, ctx context.Context, state string, timeout time.Duration, runner string) *pausing {
	t.Helper()
	p := &pausing{t: t, start: time.Now(), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.end, p.err = debugPause(ctx, pauseConfig{StateFile: state, Timeout: timeout, Poll: 10 * time.Millisecond, Runner: runner, Out: &p.out})
	}()
	p.waitOutput("the job resumes")
	return p
}

func (p *pausing) waitOutput(want string) {
	p.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.out.String(), want) {
		if time.Now().After(deadline) {
			p.t.Fatalf("the pause did not say %q; it said:\n%s", want, p.out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wait waits for the pause to end and returns how long it took.
func (p *pausing) wait(within time.Duration) time.Duration {
	p.t.Helper()
	select {
	case <-p.done:
		return time.Since(p.start)
	case <-time.After(within):
		p.t.Fatalf("the pause did not end within %s; it said:\n%s", within, p.out.String())
		return 0
	}
}

// stillPaused checks the pause is still going after a few polls.
func (p *pausing) stillPaused(why string) {
	p.t.Helper()
	select {
	case <-p.done:
		p.t.Fatalf("the pause ended (%v %v) %s; it said:\n%s", p.end, p.err, why, p.out.String())
	case <-time.After(100 * time.Millisecond):
	}
}

func newStateFile(t *testing.T) *execStateFile {
	f := &execStateFile{path: filepath.Join(t.TempDir(), "tandem", "exec-sessions"), logf: t.Logf}
	f.start()
	return f
}

func TestPauseResumesWhenTheSessionEnds(t *testing.T) {
	f := newStateFile(t)
	f.opened() // sessions before the pause are history
	f.closed()
	p := startPause(t, context.Background(), f.path, time.Minute, "tandem-3f2a9c1b7d4e")
	if first := strings.SplitN(p.out.String(), "\n", 2)[0]; first != "tandem-debug-pause: the job is paused. Open a shell in this VM with:  tandem ssh tandem-3f2a9c1b7d4e" {
		t.Fatalf("first line %q", first)
	}
	p.waitOutput("the job resumes when your session ends, or in 1m0s\n")
	p.stillPaused("before any session")
	f.opened()
	p.waitOutput("a session has opened")
	f.opened() // a second one, ending last
	f.closed()
	p.stillPaused("with a session open")
	f.closed()
	p.wait(5 * time.Second)
	if p.end != pauseDetached || p.err != nil || !strings.HasSuffix(p.out.String(), "your session has ended: resuming the job\n") {
		t.Fatalf("ended %v %v, said:\n%s", p.end, p.err, p.out.String())
	}
}

func TestPauseTimesOut(t *testing.T) {
	f := newStateFile(t)
	p := startPause(t, context.Background(), f.path, 300*time.Millisecond, "r")
	took := p.wait(10 * time.Second)
	if p.end != pauseTimedOut || p.err != nil || took < 300*time.Millisecond ||
		!strings.HasSuffix(p.out.String(), "300ms have passed: resuming the job\n") {
		t.Fatalf("ended %v %v after %s, said:\n%s", p.end, p.err, took, p.out.String())
	}

	// The timeout holds with a session open, too.
	p = startPause(t, context.Background(), f.path, 300*time.Millisecond, "r")
	f.opened()
	p.waitOutput("a session has opened")
	if p.wait(10 * time.Second); p.end != pauseTimedOut {
		t.Fatalf("ended %v %v, said:\n%s", p.end, p.err, p.out.String())
	}
}

// A session open when the pause begins is not someone who came for it:
// its end alone does not resume the job, and after a new session has
// come and gone the job waits for it as well.
func TestPauseSessionOpenBeforeDoesNotCount(t *testing.T) {
	f := newStateFile(t)
	f.opened() // open before the pause
	p := startPause(t, context.Background(), f.path, 400*time.Millisecond, "r")
	f.closed()
	p.stillPaused("when a session open before it ended")
	if p.wait(10 * time.Second); p.end != pauseTimedOut {
		t.Fatalf("ended %v %v, said:\n%s", p.end, p.err, p.out.String())
	}

	f.opened() // open before the pause, again
	p = startPause(t, context.Background(), f.path, time.Minute, "r")
	f.opened()
	p.waitOutput("a session has opened")
	f.closed() // the new one ends; the old one is still open
	p.stillPaused("with the earlier session still open")
	f.closed()
	if p.wait(5 * time.Second); p.end != pauseDetached {
		t.Fatalf("ended %v %v, said:\n%s", p.end, p.err, p.out.String())
	}
}

// A session that opens and ends between two reads of the count counts.
func TestPauseSeesASessionBetweenReads(t *testing.T) {
	f := newStateFile(t)
	p := &pausing{t: t, start: time.Now(), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.end, p.err = debugPause(context.Background(), pauseConfig{StateFile: f.path, Timeout: time.Minute, Poll: 300 * time.Millisecond, Runner: "r", Out: &p.out})
	}()
	p.waitOutput("the job resumes")
	f.opened()
	f.closed()
	if p.wait(5 * time.Second); p.end != pauseDetached {
		t.Fatalf("ended %v %v, said:\n%s", p.end, p.err, p.out.String())
	}
}

// No count to read (a guest agent older than the command), or one that
// makes no sense: the pause says it cannot see sessions and keeps to its
// timeout.
func TestPauseCannotSeeSessions(t *testing.T) {
	dir := t.TempDir()
	corrupt := filepath.Join(dir, "corrupt")
	os.WriteFile(corrupt, []byte("opened lots\n"), 0o644)
	for _, c := range []struct{ name, path, says string }{
		{"missing", filepath.Join(dir, "missing"), "no such file"},
		{"corrupt", corrupt, `malformed opened count "lots"`},
	} {
		p := startPause(t, context.Background(), c.path, 300*time.Millisecond, "")
		// The count appearing later changes nothing.
		os.WriteFile(filepath.Join(dir, "missing"), []byte("opened 1\nopen 0\n"), 0o644)
		took := p.wait(10 * time.Second)
		out := p.out.String()
		if p.end != pauseTimedOut || took < 300*time.Millisecond || !strings.Contains(out, "cannot see the sessions of this VM") ||
			!strings.Contains(out, c.says) || !strings.Contains(out, "the job resumes in 300ms") {
			t.Errorf("%s: ended %v %v after %s, said:\n%s", c.name, p.end, p.err, took, out)
		}
		if !strings.Contains(out, "runner name is unknown (TANDEM_RUNNER_NAME is not set)") || !strings.Contains(out, "tandem ssh ls") {
			t.Errorf("%s: with no runner name, said:\n%s", c.name, out)
		}
		os.Remove(filepath.Join(dir, "missing"))
	}
}

// The count going bad during the pause is said once and waited out.
func TestPauseCountUnreadableForAWhile(t *testing.T) {
	f := newStateFile(t)
	p := startPause(t, context.Background(), f.path, time.Minute, "r")
	os.WriteFile(f.path, []byte("garbage"), 0o644)
	p.waitOutput("cannot see the sessions of this VM for now")
	p.stillPaused("with the count unreadable")
	f.opened()
	f.closed()
	if p.wait(5 * time.Second); p.end != pauseDetached || strings.Count(p.out.String(), "for now") != 1 {
		t.Fatalf("ended %v %v, said:\n%s", p.end, p.err, p.out.String())
	}
}

func TestPauseEndsWithItsContext(t *testing.T) {
	f := newStateFile(t)
	ctx, cancel := context.WithCancelCause(context.Background())
	p := startPause(t, ctx, f.path, time.Minute, "r")
	stop := errors.New("stop")
	cancel(stop)
	if p.wait(5 * time.Second); p.err != stop {
		t.Fatalf("ended %v %v", p.end, p.err)
	}
}
