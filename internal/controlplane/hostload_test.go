package controlplane_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/store"
)

// Each host's load is recorded: capacity, what its VMs are allocated, its
// VMs, and the machine's load and memory from its agent's heartbeat.
func TestHostLoadHistory(t *testing.T) {
	r := newRig(t, rigOptions{vcpus: 4, configure: func(c *controlplane.Config) { c.HostLoadEvery = 200 * time.Millisecond }})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	r.cp.HostHeartbeat("h1", agentapi.Heartbeat{Load1: 1.25, MemAvailableMiB: 3000})
	id := r.queue("acme/app", "tandem-2cpu-1gb", "sleep 3")
	r.waitStates([]int64{id}, 20*time.Second, store.JobRunning)
	var v struct {
		Host string           `json:"host"`
		Load []store.HostLoad `json:"load"`
	}
	r.waitFor("a record with the job's VM", 10*time.Second, func() bool {
		if r.call("GET", "/api/v1/hosts/h1/load?hours=1", rigReadToken, &v) != http.StatusOK {
			return false
		}
		for _, l := range v.Load {
			if l.VMs == 1 {
				return true
			}
		}
		return false
	})
	for _, l := range v.Load {
		if l.VMs == 1 && (l.AllocVCPUs != 2 || l.AllocMemoryMiB != 1024 || l.VCPUs != 4 || l.Load1 != 1.25 ||
			l.MemAvailableMiB != 3000 || l.State != store.HostOnline || l.Host != "h1") {
			t.Errorf("record %+v", l)
		}
	}
	for i := 1; i < len(v.Load); i++ {
		if v.Load[i].At.Before(v.Load[i-1].At) {
			t.Errorf("records out of order at %d", i)
		}
	}
	if code := r.call("GET", "/api/v1/hosts/nope/load", rigReadToken, nil); code != http.StatusNotFound {
		t.Errorf("an unknown host: %d", code)
	}
	if code := r.call("GET", "/api/v1/hosts/h1/load?hours=48", rigReadToken, nil); code != http.StatusBadRequest {
		t.Errorf("hours=48: %d", code)
	}
}
