package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agent"
	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/testenv/testhost"
	"github.com/tandem-ci/tandem/internal/vm"
)

// resumable is an agent whose jobs outlive it, over dirs a successor
// shares.
type resumable struct {
	h            *jobvm.Host
	logs, runDir string
}

func (x resumable) start(t testing.TB, rec *recorder) *agent.Agent {
	t.Helper()
	a, err := agent.New(agent.Config{HostID: "h1", Host: x.h, Sink: rec.sink, LogDir: x.logs, RunDir: x.runDir,
		Owner: "agent"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a
}

// countingJob prints lines 1..n, a fifth of a second apart, then exits
// with code.
func countingJob(name string, n, code int) agentapi.Assignment {
	return asg(name, "sh", "-c", fmt.Sprintf(`for i in $(seq 1 %d); do echo "line $i"; sleep 0.2; done; exit %d`, n, code))
}

// waitLog waits until runner's log holds s.
func waitLog(t testing.TB, logs, runner, s string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(filepath.Join(logs, runner+".log"))
		if strings.Contains(string(b), s) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s's log never showed %q", runner, s)
}

// checkCounted checks that runner's log holds lines 1..n, each once and in
// order.
func checkCounted(t *testing.T, logs, runner string, n int) {
	t.Helper()
	b := readLog(t, logs, runner)
	var want []string
	for i := 1; i <= n; i++ {
		want = append(want, fmt.Sprintf("line %d", i))
	}
	if got := strings.Split(strings.TrimSpace(b), "\n"); !slices.Equal(got, want) {
		t.Errorf("%s's log:\n%s\nwant lines 1..%d, each once", runner, b, n)
	}
}

// An agent that lets go of its jobs (Detach, as on SIGTERM) leaves them
// running; the next agent process takes them over before anyone asks it
// what runs, and reports their ends, the logs whole. A runner still
// waiting for its config is stopped, as before. The agent that took a job
// over can be killed in turn: the next one goes on where the log ends. An
// end the control plane may not have is reported again.
func TestDetachAndRecover(t *testing.T) {
	x := resumable{h: testhost.New(t), logs: t.TempDir(), runDir: t.TempDir()}
	rec := newRecorder()
	a := x.start(t, rec)
	for _, r := range []agentapi.Assignment{countingJob("r1", 60, 5), asg("idle", "true")} {
		if err := a.Launch(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Configure("r1", nil); err != nil {
		t.Fatal(err)
	}
	waitLog(t, x.logs, "r1", "line 5\n")
	rec.wait(t, "idle", agentapi.EventBooting)
	if n := a.Detach(); n != 1 {
		t.Fatalf("Detach let %d jobs go, want 1 (r1)", n)
	}
	end := rec.wait(t, "idle", agentapi.EventEnded)
	if end.Failure != failure.Cancelled {
		t.Errorf("the runner waiting for its config ended %+v, want cancelled", end)
	}
	if _, err := os.Stat(filepath.Join(x.runDir, "r1.json")); err != nil {
		t.Fatalf("no record of the detached runner: %v", err)
	}

	// The next process: Collect keeps what the record names, and nothing
	// else of the agent's.
	h2 := testhost.Restart(t, x.h)
	keep, err := agent.Keep(x.runDir, "agent")
	if err != nil {
		t.Fatal(err)
	}
	if ids, err := h2.Collect(context.Background(), keep); err != nil || len(ids) != 0 {
		t.Fatalf("Collect before Recover reclaimed %v (%v), want nothing", ids, err)
	}
	rec2 := newRecorder()
	b := resumable{h: h2, logs: x.logs, runDir: x.runDir}.start(t, rec2)
	taken, err := b.Recover(context.Background())
	if err != nil || !slices.Equal(taken, []string{"r1"}) {
		t.Fatalf("Recover: %v, %v; want r1", taken, err)
	}
	if rs := b.Runners(); !slices.Equal(rs, []string{"r1"}) {
		t.Errorf("runners after Recover: %v", rs)
	}
	if w := b.AwaitingConfig(); len(w) != 0 {
		t.Errorf("a taken-over runner waits for a config: %v", w)
	}
	// This agent is killed in turn, mid-job: what it left on disk is the
	// record as it stood while it ran (Detach rewrites it; the test puts
	// it back). The third agent resumes the output where the log ends,
	// repeating none of what the second one wrote.
	if err := b.WaitTakenOver(context.Background()); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(x.runDir, "r1.json")
	running, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	at := strings.Count(readLog(t, x.logs, "r1"), "\n")
	waitLog(t, x.logs, "r1", fmt.Sprintf("line %d\n", at+3))
	if n := b.Detach(); n != 1 {
		t.Fatalf("the second agent let %d jobs go, want 1 (the job ended too soon?)", n)
	}
	if err := os.WriteFile(file, running, 0o600); err != nil {
		t.Fatal(err)
	}
	// The third agent sees the job end, but stops before the control
	// plane has its end (the Sink's channel stays open): the record keeps
	// the end, and the fourth agent reports it again, exit code and all,
	// rather than the VM as gone.
	rec3 := newRecorder()
	rec3.hold = make(chan struct{})
	h3 := testhost.Restart(t, h2)
	c := resumable{h: h3, logs: x.logs, runDir: x.runDir}.start(t, rec3)
	if taken, err := c.Recover(context.Background()); err != nil || !slices.Equal(taken, []string{"r1"}) {
		t.Fatalf("Recover after a kill: %v, %v; want r1", taken, err)
	}
	end = rec3.wait(t, "r1", agentapi.EventEnded)
	if end.ExitCode != 5 || end.Failure != "" || end.VMID == "" {
		t.Errorf("ended %+v: want exit 5, no failure", end)
	}
	checkCounted(t, x.logs, "r1", 60)
	c.Close()
	rec4 := newRecorder()
	rec4.hold = make(chan struct{})
	d := resumable{h: testhost.Restart(t, h3), logs: x.logs, runDir: x.runDir}.start(t, rec4)
	if taken, err := d.Recover(context.Background()); err != nil || len(taken) != 0 {
		t.Fatalf("Recover with a recorded end: took %v over (%v), want none", taken, err)
	}
	again := rec4.wait(t, "r1", agentapi.EventEnded)
	if again.ExitCode != 5 || again.Failure != "" || again.VMID != end.VMID || !again.At.Equal(end.At) || again.Host != "h1" {
		t.Errorf("the end reported again: %+v, want the first one: %+v", again, end)
	}
	if rs := d.Runners(); len(rs) != 0 {
		t.Errorf("runners after reporting an end again: %v", rs)
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("the record went before the control plane had the end: %v", err)
	}
	close(rec4.hold)
	waitNoRecords(t, x.runDir)
}

func readLog(t *testing.T, logs, runner string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(logs, runner+".log"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitNoRecords waits a moment for the records in runDir to go: a
// runner's goes just after its end has been handed on.
func waitNoRecords(t *testing.T, runDir string) {
	t.Helper()
	var left []os.DirEntry
	for range 50 {
		if left, _ = os.ReadDir(runDir); len(left) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("records outlived their runners' ends: %v", left)
}

// An agent killed outright leaves only the record written when the job was
// sent: the next one goes by the log's size for where the output resumes.
// The kill is played by putting that first record back after a Detach.
// A record whose VM is gone is reported ended as such.
func TestRecoverAfterKill(t *testing.T) {
	x := resumable{h: testhost.New(t), logs: t.TempDir(), runDir: t.TempDir()}
	rec := newRecorder()
	a := x.start(t, rec)
	if err := a.Launch(countingJob("r1", 40, 0)); err != nil {
		t.Fatal(err)
	}
	if err := a.Configure("r1", nil); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(x.runDir, "r1.json")
	waitLog(t, x.logs, "r1", "line 1\n")
	sent, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("no record once the job was sent: %v", err)
	}
	waitLog(t, x.logs, "r1", "line 8\n")
	if n := a.Detach(); n != 1 {
		t.Fatalf("Detach let %d jobs go, want 1", n)
	}
	if err := os.WriteFile(file, sent, 0o600); err != nil {
		t.Fatal(err)
	}
	// A runner whose VM is gone, as a record would have it.
	ghost := strings.ReplaceAll(string(sent), `"r1"`, `"ghost"`)
	var d jobvm.Detached
	if i := strings.Index(ghost, `"vm_id":"`); i < 0 {
		t.Fatalf("record %s has no vm_id", sent)
	} else {
		id := ghost[i+len(`"vm_id":"`):]
		id = id[:strings.IndexByte(id, '"')]
		d.VMID = id
		ghost = strings.ReplaceAll(ghost, id, vm.NewID())
	}
	if err := os.WriteFile(filepath.Join(x.runDir, "ghost.json"), []byte(ghost), 0o600); err != nil {
		t.Fatal(err)
	}

	h2 := testhost.Restart(t, x.h)
	rec2 := newRecorder()
	b := resumable{h: h2, logs: x.logs, runDir: x.runDir}.start(t, rec2)
	taken, err := b.Recover(context.Background())
	if err != nil || !slices.Equal(taken, []string{"r1"}) {
		t.Fatalf("Recover: %v, %v; want r1 (the ghost's VM is gone)", taken, err)
	}
	if end := rec2.wait(t, "ghost", agentapi.EventEnded); end.Failure != failure.VMGone {
		t.Errorf("the ghost ended %+v, want %s", end, failure.VMGone)
	}
	if end := rec2.wait(t, "r1", agentapi.EventEnded); end.ExitCode != 0 || end.Failure != "" || end.VMID != d.VMID {
		t.Errorf("r1 ended %+v: want exit 0 in VM %s", end, d.VMID)
	}
	checkCounted(t, x.logs, "r1", 40)
	waitNoRecords(t, x.runDir)
}
