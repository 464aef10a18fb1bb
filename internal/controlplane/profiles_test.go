package controlplane_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/store"
)

// A running job's samples are kept and shown live; when its VM ends they
// become its profile. Samples a host sends for another host's runner, or
// for a runner that has ended, are dropped; another org's token sees no
// profile.
func TestJobProfile(t *testing.T) {
	r := newRig(t, rigOptions{configure: func(c *controlplane.Config) {
		c.APITokens = append(c.APITokens, controlplane.APIToken{Secret: "bob-read-token-0123456789", Orgs: []string{"bob"}})
	}})
	r.gh.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	id := r.queue("acme/app", "tandem-2cpu-1gb", "sleep 4")
	r.waitStates([]int64{id}, 20*time.Second, store.JobRunning)
	j, _ := r.job(id)
	t0 := time.Now()
	smp := func(sec int, guestCPU float64, mem int64) profile.Sample {
		return profile.Sample{At: t0.Add(time.Duration(sec) * time.Second), GuestOK: true, GuestCPUSeconds: guestCPU,
			CPUSeconds: guestCPU, MemTotal: 1 << 30, MemAvailable: 1<<30 - mem, RSS: 300 << 20}
	}
	r.cp.HostSamples("h1", []agentapi.RunnerSamples{{Runner: j.RunnerName,
		Samples: []profile.Sample{smp(0, 0, 100<<20), smp(1, 2, 950<<20), smp(2, 3, 200<<20)}}})
	r.cp.HostSamples("h9", []agentapi.RunnerSamples{{Runner: j.RunnerName, Samples: []profile.Sample{smp(3, 100, 1<<30)}}})
	path := "/api/v1/jobs/" + strconv.FormatInt(id, 10) + "/profile"
	var v controlplane.ProfileView
	r.waitFor("the samples to be written", 10*time.Second, func() bool {
		return r.call("GET", path, rigReadToken, &v) == http.StatusOK
	})
	if !v.Live || v.Runner != j.RunnerName || v.Summary.Samples != 3 || v.Summary.CPUPeak != 2 || v.Summary.MemPeak != 950<<20 ||
		v.Summary.MemHighSeconds != 1 || v.VCPUs != 2 || v.MemoryMiB != 1024 {
		t.Fatalf("live profile: %+v", v)
	}
	r.waitStates([]int64{id}, 20*time.Second, store.JobCompleted)
	r.waitFor("the runner to end", 10*time.Second, func() bool { return len(r.liveRunners()) == 0 })
	// Late samples for the ended runner change nothing.
	r.cp.HostSamples("h1", []agentapi.RunnerSamples{{Runner: j.RunnerName, Samples: []profile.Sample{smp(9, 50, 1<<30)}}})
	time.Sleep(3 * time.Second) // a flush
	var done controlplane.ProfileView
	if code := r.call("GET", path, rigReadToken, &done); code != http.StatusOK || done.Live || done.Summary != v.Summary {
		t.Errorf("profile after the end: %d %+v, want the live one's summary %+v", code, done, v.Summary)
	}
	if code := r.call("GET", path, "bob-read-token-0123456789", nil); code != http.StatusNotFound {
		t.Errorf("another org's token: %d, want 404", code)
	}
	none := r.queue("acme/app", "tandem-64cpu", "true") // unschedulable: never runs
	r.waitStates([]int64{none}, 10*time.Second, store.JobUnschedulable)
	if code := r.call("GET", "/api/v1/jobs/"+strconv.FormatInt(none, 10)+"/profile", rigReadToken, nil); code != http.StatusNotFound {
		t.Errorf("a job that never ran: %d, want 404", code)
	}
}

// Right-sizing reads the profiles of recent runs, per logical job, within
// the token's orgs.
func TestRightsizeAPI(t *testing.T) {
	r := newRig(t, rigOptions{noHosts: true, configure: func(c *controlplane.Config) {
		c.APITokens = append(c.APITokens, controlplane.APIToken{Secret: "bob-read-token-0123456789", Orgs: []string{"bob"}})
	}})
	now := time.Now()
	err := r.st.Update(t.Context(), func(tx store.Tx) error {
		for i := range 6 {
			for _, repo := range []string{"acme/app", "bob/lib"} {
				id := int64(1000 + 10*i)
				if repo == "bob/lib" {
					id++
				}
				org, _, _ := strings.Cut(repo, "/")
				j := store.Job{ID: id, Org: org, Repo: repo, Workflow: "CI", Name: "unit", Labels: []string{"tandem-arm64-8cpu-16gb"},
					Arch: "arm64", VCPUs: 8, MemoryMiB: 16384, State: store.JobCompleted, UpdatedAt: now, QueuedAt: now}
				if err := tx.CreateJob(j, store.Event{}); err != nil {
					return err
				}
				if err := tx.PutProfile(store.Profile{Runner: "r" + strconv.FormatInt(id, 10), JobID: id, EndedAt: now,
					Profile: profile.Profile{Summary: profile.Summary{Samples: 60, Seconds: 60, CPUPeak: 1.2, MemPeak: 3 << 30}}}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var v controlplane.RightsizeView
	if code := r.call("GET", "/api/v1/rightsize", rigReadToken, &v); code != http.StatusOK || v.Runs != 12 || len(v.Advice) != 2 {
		t.Fatalf("rightsize: %d %+v", code, v)
	}
	a := v.Advice[0]
	if a.Suggest == nil || a.Suggest.Label != "tandem-arm64-2cpu-4gb" || a.FreesVCPUs != 6 || a.Runs != 6 {
		t.Errorf("advice %+v", a)
	}
	var bob controlplane.RightsizeView
	if code := r.call("GET", "/api/v1/rightsize?repo=acme/app", "bob-read-token-0123456789", &bob); code != http.StatusOK || bob.Runs != 0 {
		t.Errorf("bob's token on acme's repository: %d %+v", code, bob)
	}
	if code := r.call("GET", "/api/v1/rightsize?days=90", rigReadToken, nil); code != http.StatusBadRequest {
		t.Errorf("days=90: %d", code)
	}
}
