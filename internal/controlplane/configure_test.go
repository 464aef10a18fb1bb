package controlplane_test

import (
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/pool"
	"github.com/tandem-ci/tandem/internal/store"
)

// lossyLink is a host's link that loses every runner config, as commands
// are lost in a stream that breaks, or with a replica that dies before it
// sends them.
type lossyLink struct {
	*goHost
	lost atomic.Int64
}

func (l *lossyLink) Configure(string, map[string]string) error {
	l.lost.Add(1)
	return nil
}

// A runner's config that never reached its VM is handed over when the
// host's agent attaches again and says the VM still waits: GitHub refuses
// a second registration of the name, so the first attempt's is deleted
// and the config asked for again. The job runs once, on the VM that was
// launched for it; a warm pool's VM, which waits for a job rather than a
// config, is left waiting.
func TestConfigLostWithTheLinkIsHandedOverAgain(t *testing.T) {
	r := poolRig(t, rigOptions{noHosts: true},
		controlplane.PoolSpec{Label: poolLabel, Sizing: pool.Sizing{MinIdle: 1, MaxIdle: 1}, MaxAge: time.Hour})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	h := newGoHost("h1")
	h.cp = r.cp
	r.hosts = append(r.hosts, h)
	rec := store.Host{ID: h.id, VCPUs: 8, MemoryMiB: 64 << 10, Arches: []store.ArchSupport{{Arch: arch.AMD64}}}
	link := &lossyLink{goHost: h}
	if err := r.cp.AttachHost(r.t.Context(), rec, link, agentapi.Inventory{}); err != nil {
		t.Fatal(err)
	}
	r.waitIdle(1)
	idle, _ := r.idlePool()
	warm := idle[0].Name

	id := r.queue("acme/app", "tandem-1cpu-1gb", "sleep 1; echo hi") // long enough for its in_progress to come before its VM ends
	var name string
	var first int64
	r.waitFor("the job's runner registered, its config lost", 20*time.Second, func() bool {
		j, _ := r.job(id)
		name = j.RunnerName
		for _, g := range r.gh.Runners() {
			if name != "" && g.Name == name {
				first = g.ID
			}
		}
		return first != 0 && link.lost.Load() == 1
	})
	waiting := h.AwaitingConfig()
	if !slices.Contains(waiting, name) || !slices.Contains(waiting, warm) {
		t.Fatalf("VMs waiting for their config: %v, want %s and the pool's %s", waiting, name, warm)
	}

	// The agent comes back (to this replica or another), with a link of
	// its own, and says what it runs.
	if err := r.cp.AttachHost(r.t.Context(), rec, h, agentapi.InventoryOf(h)); err != nil {
		t.Fatal(err)
	}
	r.waitStates([]int64{id}, 20*time.Second, store.JobCompleted)
	j, _ := r.job(id)
	gj, _ := r.gh.Job(id)
	if j.RunnerName != name || gj.RunnerName != name || gj.Claims != 1 || gj.Conclusion != "success" {
		t.Errorf("job %+v; GitHub %+v: want it run once by runner %s", j, gj, name)
	}
	if gj.RunnerID == first {
		t.Errorf("the job ran on the first registration (%d), whose config was lost", first)
	}
	for _, g := range r.gh.Runners() {
		if g.ID == first {
			t.Errorf("the first registration of %s is still on GitHub: %+v", name, g)
		}
	}
	if got := r.runner(name).GitHubID; got != gj.RunnerID {
		t.Errorf("runner %s recorded with GitHub id %d, want %d", name, got, gj.RunnerID)
	}
	if !slices.Contains(h.AwaitingConfig(), warm) || !r.runner(warm).Idle() {
		t.Errorf("the pool's VM %s was handed a config with no job to claim it", warm)
	}
	h.mu.Lock()
	started, assigned := h.started, slices.Clone(h.assigned)
	h.mu.Unlock()
	if started != 2 {
		t.Errorf("%d VMs launched, want 2 (the pool's and the job's): %+v", started, assigned)
		for _, e := range r.jobEvents(id) {
			t.Logf("job %s→%s %s: %s (runner %s)", e.From, e.To, e.Source, e.Reason, e.Runner)
		}
	}
}
