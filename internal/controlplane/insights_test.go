package controlplane_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/store"
)

// Insights put a period beside the one before it, find the job whose
// median run time grew week over week, list the longest runs, and keep a
// scoped token to its orgs.
func TestInsightsAPI(t *testing.T) {
	r := newRig(t, rigOptions{noHosts: true, configure: func(c *controlplane.Config) {
		c.APITokens = append(c.APITokens, controlplane.APIToken{Secret: "bob-read-token-0123456789", Orgs: []string{"bob"}})
	}})
	now := time.Now()
	id := int64(5000)
	add := func(repo, name string, daysAgo float64, run time.Duration, conclusion string) {
		id++
		end := now.Add(-time.Duration(daysAgo * float64(24*time.Hour)))
		start := end.Add(-run)
		org, _, _ := strings.Cut(repo, "/")
		j := store.Job{ID: id, Org: org, Repo: repo, Workflow: "CI", Name: name, Arch: "amd64", VCPUs: 2, MemoryMiB: 2048,
			State: store.JobCompleted, Conclusion: conclusion, CreatedAt: start.Add(-time.Minute), QueuedAt: start.Add(-time.Minute),
			StartedAt: start, CompletedAt: end, UpdatedAt: end}
		if err := r.st.Update(t.Context(), func(tx store.Tx) error { return tx.CreateJob(j, store.Event{}) }); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 4 {
		add("acme/app", "unit", 10+float64(i)*0.5, 100*time.Second, "success") // last week
		add("acme/app", "unit", 1+float64(i)*0.5, 200*time.Second, "success")  // this week: slower
		add("acme/app", "lint", 10+float64(i)*0.5, 60*time.Second, "success")
		add("acme/app", "lint", 1+float64(i)*0.5, 61*time.Second, "failure")
	}
	add("bob/lib", "unit", 1, time.Hour, "success")
	var v controlplane.InsightsView
	if code := r.call("GET", "/api/v1/insights?days=7&by=job", rigReadToken, &v); code != http.StatusOK {
		t.Fatalf("insights: %d", code)
	}
	// Times are kept in buckets about 9% wide (store.TimeBucket).
	bucket := func(s float64) float64 { return store.BucketTime(store.TimeBucket(s)) }
	if len(v.Rows) != 3 || len(v.Increases) != 1 || v.Increases[0].Name != "unit" || v.Increases[0].WasP50 != bucket(100) ||
		v.Increases[0].NowP50 != bucket(200) {
		t.Fatalf("insights %+v", v)
	}
	for _, row := range v.Rows {
		switch row.Name {
		case "lint":
			if row.Current.Jobs != 4 || row.Current.Succeeded != 0 || row.Previous == nil || row.Previous.Succeeded != 4 ||
				row.Current.QueueP50 != bucket(60) || row.Current.VCPUMinutes < 8.13 || row.Current.VCPUMinutes > 8.14 {
				t.Errorf("lint: %+v, previous %+v", row.Current, row.Previous)
			}
		case "unit":
			if row.Org == "bob" && row.Previous != nil {
				t.Errorf("bob's unit had no previous period: %+v", row.Previous)
			}
		}
	}
	if len(v.Slowest) == 0 || v.Slowest[0].Repo != "bob/lib" || v.Slowest[0].RunS != 3600 {
		t.Errorf("slowest %+v", v.Slowest)
	}
	var bob controlplane.InsightsView
	if code := r.call("GET", "/api/v1/insights?by=repo", "bob-read-token-0123456789", &bob); code != http.StatusOK ||
		len(bob.Rows) != 1 || bob.Rows[0].Org != "bob" || len(bob.Slowest) != 1 {
		t.Errorf("bob's view: %d %+v", code, bob)
	}
	for _, q := range []string{"days=3", "by=team", "days=x"} {
		if code := r.call("GET", "/api/v1/insights?"+q, rigReadToken, nil); code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", q, code)
		}
	}
}
