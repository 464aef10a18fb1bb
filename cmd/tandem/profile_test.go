package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/store"
)

// `tandem job ID --profile` prints the summary and a sparkline per series;
// `tandem rightsize` the advice per logical job.
func TestProfileAndRightsizeCLI(t *testing.T) {
	r := newOpsRig(t)
	now := time.Now()
	var samples []profile.Sample
	for i := range 120 {
		cpu := 0.5
		if i >= 60 && i < 70 {
			cpu = 2
		}
		prev := 0.0
		if len(samples) > 0 {
			prev = samples[len(samples)-1].GuestCPUSeconds
		}
		samples = append(samples, profile.Sample{At: now.Add(time.Duration(i) * time.Second), GuestOK: true,
			GuestCPUSeconds: prev + cpu, CPUSeconds: prev + cpu, MemTotal: 4 << 30, MemAvailable: 3 << 30, DiskUsed: 1 << 30, Procs: 40})
	}
	err := r.st.Update(t.Context(), func(tx store.Tx) error {
		for i := range 5 {
			id := int64(500 + i)
			j := store.Job{ID: id, Org: "acme", Repo: "acme/app", Workflow: "CI", Name: "unit", Labels: []string{"tandem-8cpu-16gb"},
				Arch: "amd64", VCPUs: 8, MemoryMiB: 16384, State: store.JobCompleted, RunnerName: fmt.Sprintf("tandem-r%d", i),
				UpdatedAt: now, QueuedAt: now}
			if err := tx.CreateJob(j, store.Event{}); err != nil {
				return err
			}
			if err := tx.PutProfile(store.Profile{Runner: j.RunnerName, JobID: id, EndedAt: now,
				Profile: profile.Build(samples, 8, 16<<30, 0)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	out := r.ok(r.as(opsRead, "job", "500", "--profile")).stdout
	t.Logf("tandem job 500 --profile:\n%s", out)
	for _, want := range []string{"job 500, runner tandem-r0 (ended)", "CPU (vCPUs)", "2.00 (25%)", "memory", "1.0 GiB (6%)",
		"processes", "40", "CPU  ", "▁", "█", "0-8 vCPUs"} {
		if !strings.Contains(out, want) {
			t.Errorf("job --profile: no %q in:\n%s", want, out)
		}
	}
	out = r.ok(r.as(opsRead, "rightsize")).stdout
	for _, want := range []string{"acme/app", "unit", "tandem-amd64-8cpu-16gb", "→ tandem-amd64-4cpu-2gb (frees 4 vCPU, 14.0 GiB)"} {
		if !strings.Contains(out, want) {
			t.Errorf("rightsize: no %q in:\n%s", want, out)
		}
	}
	fails(t, r.as(opsRead, "rightsize", "--org", "a", "--repo", "a/b"), "give --org or --repo, not both")
	if out := r.ok(r.as(opsRead, "rightsize", "--org", "bob")).stdout; !strings.Contains(out, "no job has 5 profiled runs") {
		t.Errorf("rightsize --org bob: %q", out)
	}
}

func TestInsightsCLI(t *testing.T) {
	r := newOpsRig(t)
	now := time.Now()
	err := r.st.Update(t.Context(), func(tx store.Tx) error {
		for i, run := range []time.Duration{90 * time.Second, 100 * time.Second, 200 * time.Second, 210 * time.Second} {
			end := now.Add(-time.Duration(10-7*(i/2)) * 24 * time.Hour) // two last week, two this week
			j := store.Job{ID: int64(900 + i), Org: "acme", Repo: "acme/app", Workflow: "CI", Name: "unit", Arch: "arm64",
				VCPUs: 4, MemoryMiB: 4096, State: store.JobCompleted, Conclusion: "success", QueuedAt: end.Add(-run - time.Minute),
				StartedAt: end.Add(-run), CompletedAt: end, UpdatedAt: end}
			if err := tx.CreateJob(j, store.Event{}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	out := r.ok(r.as(opsRead, "insights", "--by", "job")).stdout
	for _, want := range []string{"the last 7 days, by job", "acme/app CI / unit", "arm64", "2 (2)", "100%", "slower this week than last",
		"1m27s", "3m26s", "longest runs:", "3m30s"} { // percentiles in buckets (store.TimeBucket)
		if !strings.Contains(out, want) {
			t.Errorf("insights: no %q in:\n%s", want, out)
		}
	}
	fails(t, r.as(opsRead, "insights", "--days", "3"), "days: want 1, 7, 14 or 28")
}
