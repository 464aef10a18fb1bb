package e2e

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/syncbuf"
)

// Read tokens of the debug tests: one scoped to the job's organisation,
// which debug.orgs lets debug; one of another organisation; one unscoped.
const (
	acmeReader    = "acme-reader-0123456789abcdef"
	initechReader = "initech-reader-0123456789abcd"
	anyReader     = "any-reader-0123456789abcdefgh"
)

// sshCmd is `tandem ssh ARGS` against s, as token ("" the admin token
// tandem up wrote).
func (s *system) sshCmd(token string, args ...string) *exec.Cmd {
	cmd := exec.Command(binary(s.t), append([]string{"--data-dir", s.data, "ssh"}, append(args, "--server", s.apiURL)...)...)
	cmd.Env = append(os.Environ(), "TANDEM_DATA_DIR=", "TANDEM_SERVER=", "TANDEM_TOKEN="+token, "TERM=xterm")
	return cmd
}

// exitCode runs cmd and returns its exit status and output.
func exitCode(t *testing.T, cmd *exec.Cmd) (int, string) {
	t.Helper()
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("%v: %v", cmd.Args, err)
	return 0, ""
}

// screen collects what a pty shows, for waiting on.
type screen struct{ syncbuf.Buffer }

// waitShown waits until the screen shows want (after from bytes of it).
func (s *screen) waitShown(t *testing.T, from int, want string) int {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		all := s.String()
		if i := strings.Index(all[from:], want); i >= 0 {
			return from + i + len(want)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the terminal never showed %q; it shows:\n%s", want, all)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// `tandem ssh` into a running job's VM, driven through a real terminal (a
// pty): commands run, the window's size follows a resize, ^C interrupts,
// and the shell's exit status is the command's. One-shot commands, who may
// and may not, and the audit log.
func TestDebugSessionInRealVM(t *testing.T) {
	s := newSystem(t, options{
		extra: "api:\n  read_token_file: read-tokens\ndebug:\n  orgs: [acme]\n  keep_failed: {acme/app: 20s}\n",
		files: map[string]string{"read-tokens": acmeReader + " read:acme\n" + initechReader + " read:initech\n" + anyReader + " read\n"},
	})
	s.install("acme", "app")
	id, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-1cpu-0.25gb"}, Script: "echo job-started; sleep 300"})
	s.waitTandemState([]int64{id}, 3*time.Minute, "running")
	job := strconv.FormatInt(id, 10)

	code, out := exitCode(t, s.sshCmd("", "ls"))
	if code != 0 || !strings.Contains(out, job) || !strings.Contains(out, "tandem ssh "+job) {
		t.Fatalf("tandem ssh ls: exit %d\n%s", code, out)
	}

	// An interactive shell, in a terminal of 24×80.
	cmd := s.sshCmd("", job)
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 80})
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	scr := &screen{}
	go io.Copy(scr, tty)
	send := func(text string) {
		if _, err := tty.Write([]byte(text)); err != nil {
			t.Fatalf("typing %q: %v", text, err)
		}
	}
	send("stty size; echo mark-$((6*7))\r")
	at := scr.waitShown(t, 0, "mark-42")
	if !strings.Contains(scr.String(), "24 80") {
		t.Errorf("stty size in a 24×80 terminal:\n%s", scr.String())
	}
	if err := pty.Setsize(tty, &pty.Winsize{Rows: 40, Cols: 120}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the resize travels as the command does: first
	send("stty size\r")
	at = scr.waitShown(t, at, "40 120")
	send("sleep 100\r")
	time.Sleep(time.Second)
	send("\x03")
	send("echo back-$((1+1))\r")
	at = scr.waitShown(t, at, "back-2")
	send("ps | grep -c '[s]leep 300'\r") // the job's own process, beside the shell
	scr.waitShown(t, at, "\n1")
	send("exit 3\r")
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("the shell exited 3; tandem ssh: %v\n%s", err, scr.String())
	}

	// One command, without a terminal: its output and status.
	code, out = exitCode(t, s.sshCmd("", job, "--command", "id -un; echo to-stderr >&2; exit 7"))
	if code != 7 || !strings.Contains(out, "root") || !strings.Contains(out, "to-stderr") {
		t.Errorf("--command: exit %d, output %q", code, out)
	}
	// The runner's name (as tandem-debug-pause prints it) names the job.
	jv, _ := s.job(id)
	if code, out := exitCode(t, s.sshCmd("", jv.Runner, "--command", "echo by-runner")); code != 0 || !strings.Contains(out, "by-runner") {
		t.Errorf("tandem ssh %s: exit %d, output %q", jv.Runner, code, out)
	}
	// A read token of the job's organisation, which debug.orgs lists, may.
	if code, out := exitCode(t, s.sshCmd(acmeReader, job, "--command", "true")); code != 0 {
		t.Errorf("acme's read token: exit %d\n%s", code, out)
	}
	// Another organisation's token does not see the job; an unscoped read
	// token may read, not run.
	if code, out := exitCode(t, s.sshCmd(initechReader, job, "--command", "true")); code != 255 || !strings.Contains(out, "no such job") {
		t.Errorf("initech's read token: exit %d\n%s", code, out)
	}
	if code, out := exitCode(t, s.sshCmd(anyReader, job, "--command", "true")); code != 255 || !strings.Contains(out, "may not open sessions") {
		t.Errorf("an unscoped read token: exit %d\n%s", code, out)
	}

	var audit struct{ Audit []controlplane.AuditView }
	s.getJSON("/api/v1/audit", &audit)
	starts, ends := 0, 0
	for _, e := range audit.Audit {
		if !strings.Contains(e.Target, "job "+job) {
			continue
		}
		switch e.Action {
		case "debug.session.start":
			starts++
		case "debug.session.end":
			ends++
		}
	}
	if starts != 4 || ends != 4 {
		t.Errorf("audit log: %d session starts and %d ends for job %s, want 4 of each: %+v", starts, ends, job, audit.Audit)
	}
	if j, _ := s.gh.Job(id); j.Status != "in_progress" {
		t.Errorf("the job after the sessions: %s (want it still running)", j.Status)
	}

	// A job that fails keeps its VM for debug.keep_failed: the job says so,
	// a session goes in, and the VM goes at its time.
	failed, _ := s.gh.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-1cpu-0.25gb"}, Script: "echo breaking > /tmp/evidence; exit 3"})
	s.waitTandemState([]int64{failed}, 3*time.Minute, "completed")
	fj, _ := s.job(failed)
	if fj.Conclusion != "failure" || fj.VMKeptUntil == nil {
		t.Fatalf("the failed job: %+v, want its VM kept", fj)
	}
	if out := s.cli("job", strconv.FormatInt(failed, 10)); !strings.Contains(out, "VM kept") {
		t.Errorf("tandem job does not say the VM is kept:\n%s", out)
	}
	if code, out := exitCode(t, s.sshCmd("", strconv.FormatInt(failed, 10), "--command", "cat /tmp/evidence")); code != 0 || !strings.Contains(out, "breaking") {
		t.Errorf("a session in the kept VM: exit %d, output %q", code, out)
	}
	s.waitFor("the kept VM to go", time.Minute, func() bool {
		var out struct{ Runners []controlplane.RunnerView }
		s.getJSON("/api/v1/runners", &out)
		for _, r := range out.Runners {
			if r.Name == fj.Runner {
				if r.State == "ended" && r.EndedAt.Before(*fj.VMKeptUntil) {
					t.Errorf("the kept VM ended at %s, before its time %s", r.EndedAt, fj.VMKeptUntil)
				}
				return r.State == "ended"
			}
		}
		return false
	})
	// The first job would run on past the test: it is cancelled, and its
	// VM goes.
	if err := s.gh.CancelJob(id); err != nil {
		t.Fatal(err)
	}
	s.waitTandemState([]int64{id}, 2*time.Minute, "cancelled")
	s.waitFor("the cancelled job's VM to go", 2*time.Minute, func() bool {
		var out struct{ Runners []struct{ Name string } }
		s.getJSON("/api/v1/runners?live=1", &out)
		return len(out.Runners) == 0
	})
}
