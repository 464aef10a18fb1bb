package agent_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agent"
	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/testenv/testhost"
)

func TestMain(m *testing.M) { os.Exit(testenv.RunInNetns(m)) }

// recorder collects events and lets a test wait for one. The control
// plane has each for good at once, or, with hold set, once hold closes.
type recorder struct {
	mu   sync.Mutex
	evs  []agentapi.Event
	ch   chan agentapi.Event
	hold chan struct{}
}

func newRecorder() *recorder { return &recorder{ch: make(chan agentapi.Event, 64)} }

func (r *recorder) sink(e agentapi.Event) <-chan struct{} {
	r.mu.Lock()
	r.evs = append(r.evs, e)
	r.mu.Unlock()
	r.ch <- e
	return r.hold
}

func (r *recorder) wait(t *testing.T, runner string, kind agentapi.EventKind) agentapi.Event {
	t.Helper()
	timeout := time.After(3 * time.Minute)
	for {
		select {
		case e := <-r.ch:
			if e.Runner == runner && e.Kind == kind {
				return e
			}
		case <-timeout:
			t.Fatalf("no %s event for %s", kind, runner)
		}
	}
}

func newAgent(t *testing.T, rec *recorder) (*agent.Agent, string) {
	t.Helper()
	h := testhost.New(t)
	logs := t.TempDir()
	a, err := agent.New(agent.Config{HostID: "h1", Host: h, Sink: rec.sink, LogDir: logs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a, logs
}

func asg(name string, cmd ...string) agentapi.Assignment {
	return agentapi.Assignment{Runner: name, Arch: arch.Host(), VCPUs: 1, MemoryMiB: 256, Command: cmd,
		Env: map[string]string{"PLAIN": "visible"}, ConfigTimeout: time.Minute}
}

// The VM boots before the config arrives; the secret env reaches the
// runner only, never the host's log of the runner... except as the runner
// itself prints it, which this test does on purpose to prove delivery.
func TestLaunchConfigureRun(t *testing.T) {
	rec := newRecorder()
	a, logs := newAgent(t, rec)
	if err := a.Launch(asg("r1", "sh", "-c", `echo "plain=$PLAIN secret=$SECRET"; exit 3`)); err != nil {
		t.Fatal(err)
	}
	if err := a.Launch(asg("r1", "true")); !errors.Is(err, agentapi.ErrDuplicate) {
		t.Errorf("second launch of r1: %v, want ErrDuplicate", err)
	}
	boot := rec.wait(t, "r1", agentapi.EventBooting)
	if boot.VMID == "" || boot.Host != "h1" {
		t.Errorf("booting event %+v: want a VM id and host h1", boot)
	}
	if inv := agentapi.InventoryOf(a); !slices.Equal(inv.Running, []string{"r1"}) || !slices.Equal(inv.AwaitingConfig, []string{"r1"}) {
		t.Errorf("inventory before Configure %+v: want r1 running and waiting", inv)
	}
	if err := a.Configure("r1", map[string]string{"SECRET": "s3cr3t"}); err != nil {
		t.Fatal(err)
	}
	if err := a.Configure("r1", map[string]string{"SECRET": "again"}); err == nil {
		t.Error("a second Configure succeeded")
	}
	if w := a.AwaitingConfig(); len(w) != 0 {
		t.Errorf("still waiting for their config after Configure: %v", w)
	}
	rec.wait(t, "r1", agentapi.EventStarted)
	end := rec.wait(t, "r1", agentapi.EventEnded)
	if end.ExitCode != 3 || end.Failure != "" || end.VMID != boot.VMID {
		t.Errorf("ended %+v: want exit 3, no failure, vm %s", end, boot.VMID)
	}
	out, err := os.ReadFile(filepath.Join(logs, "r1.log"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "plain=visible secret=s3cr3t" {
		t.Errorf("runner output %q", got)
	}
	if rs := a.Runners(); len(rs) != 0 {
		t.Errorf("runners after the end: %v", rs)
	}
	if err := a.Configure("r1", nil); !errors.Is(err, agent.ErrUnknown) {
		t.Errorf("configure after the end: %v, want ErrUnknown", err)
	}
}

// Stopping a VM that waits for its config ends it as cancelled, with the
// reason given, and leaves nothing behind (testhost checks on cleanup).
func TestStopBeforeConfig(t *testing.T) {
	rec := newRecorder()
	a, _ := newAgent(t, rec)
	if err := a.Launch(asg("r2", "true")); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, "r2", agentapi.EventBooting)
	if err := a.Stop("r2", "spare: no queued job needs it"); err != nil {
		t.Fatal(err)
	}
	end := rec.wait(t, "r2", agentapi.EventEnded)
	if end.Failure != failure.Cancelled || !strings.Contains(end.Detail, "spare") {
		t.Errorf("ended %+v: want cancelled with the stop reason", end)
	}
	if err := a.Stop("r2", "again"); err != nil {
		t.Errorf("stopping a gone runner: %v", err)
	}
}

func TestConfigTimeout(t *testing.T) {
	rec := newRecorder()
	a, _ := newAgent(t, rec)
	x := asg("r3", "true")
	x.ConfigTimeout = 2 * time.Second
	if err := a.Launch(x); err != nil {
		t.Fatal(err)
	}
	end := rec.wait(t, "r3", agentapi.EventEnded)
	if end.Failure == "" || !strings.Contains(end.Detail, "no runner config") {
		t.Errorf("ended %+v: want a failure naming the missing config", end)
	}
}

// A launch that cannot make a VM ends at once as launch-failed.
func TestLaunchFailure(t *testing.T) {
	rec := newRecorder()
	a, _ := newAgent(t, rec)
	x := asg("r4", "true")
	x.Image = "no-such-image"
	if err := a.Launch(x); err != nil {
		t.Fatal(err)
	}
	end := rec.wait(t, "r4", agentapi.EventEnded)
	if end.Failure != failure.Launch || !strings.Contains(end.Detail, "no-such-image") {
		t.Errorf("ended %+v: want launch-failed naming the image", end)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	rec := newRecorder()
	a, _ := newAgent(t, rec)
	for _, n := range []string{"c1", "c2"} {
		if err := a.Launch(asg(n, "sleep", "600")); err != nil {
			t.Fatal(err)
		}
		rec.wait(t, n, agentapi.EventBooting)
	}
	a.Close()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	ended := 0
	for _, e := range rec.evs {
		if e.Kind == agentapi.EventEnded {
			ended++
		}
	}
	if ended != 2 {
		t.Errorf("%d ended events after Close, want 2", ended)
	}
	if err := a.Launch(asg("c3", "true")); !errors.Is(err, agent.ErrClosed) {
		t.Errorf("launch after Close: %v, want ErrClosed", err)
	}
}

// cpuWeight reads the CPU weight of a VM's cgroup (v1 cpu.shares or v2
// cpu.weight).
func cpuWeight(t *testing.T, id string) string {
	return testenv.VMCPUCgroup(t, id, "cpu.shares", "cpu.weight")
}

// A warm pool's VM boots and waits at the idle CPU weight (v1's shares or
// v2's weight), behind VMs running jobs; Configure raises it to the normal
// one before the runner gets its config, whether the VM was ready or still
// booting when claimed.
func TestPoolVMYieldsUntilConfigured(t *testing.T) {
	idle, normal := []string{"102", "10"}, []string{"1024", "100"}
	rec := newRecorder()
	a, _ := newAgent(t, rec)

	x := asg("p1", "sleep", "600")
	x.Pool = "tandem-1cpu"
	if err := a.Launch(x); err != nil {
		t.Fatal(err)
	}
	boot := rec.wait(t, "p1", agentapi.EventBooting)
	rec.wait(t, "p1", agentapi.EventReady)
	if w := cpuWeight(t, boot.VMID); !slices.Contains(idle, w) {
		t.Errorf("ready pool VM: CPU weight %q, want the idle one (%v)", w, idle)
	}
	if err := a.Configure("p1", map[string]string{"SECRET": "s"}); err != nil {
		t.Fatal(err)
	}
	// Raised when Configure returns: before the guest has its config.
	if w := cpuWeight(t, boot.VMID); !slices.Contains(normal, w) {
		t.Errorf("claimed pool VM: CPU weight %q, want the normal one (%v)", w, normal)
	}
	rec.wait(t, "p1", agentapi.EventStarted)
	a.Stop("p1", "test over")
	rec.wait(t, "p1", agentapi.EventEnded)

	// Claimed as soon as it is made, while it boots (very likely before
	// its cgroup exists): its job runs at the normal weight all the same.
	x = asg("p2", "sleep", "600")
	x.Pool = "tandem-1cpu"
	if err := a.Launch(x); err != nil {
		t.Fatal(err)
	}
	boot = rec.wait(t, "p2", agentapi.EventBooting)
	if err := a.Configure("p2", map[string]string{"SECRET": "s"}); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, "p2", agentapi.EventStarted)
	if w := cpuWeight(t, boot.VMID); !slices.Contains(normal, w) {
		t.Errorf("pool VM claimed while booting: CPU weight %q, want the normal one (%v)", w, normal)
	}
	a.Stop("p2", "test over")
	rec.wait(t, "p2", agentapi.EventEnded)
}
