package controlplane_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/controlplane/cptest"
	"github.com/tandem-ci/tandem/internal/demo"
	"github.com/tandem-ci/tandem/internal/store"
)

// BenchmarkDashboardPages fills a store with 100,000 jobs of a four-week
// history (internal/demo, two days of it profiled), 500 hosts and 1,000
// live runners, then asks each dashboard page and the API calls behind it
// 20 times, logged in, and reports each one's p95 in milliseconds.
//
//	go test -run '^$' -bench DashboardPages -benchtime 1x -timeout 30m ./internal/controlplane
func BenchmarkDashboardPages(b *testing.B) {
	const token = "bench-admin-token-0123456789"
	sys := cptest.Start(b, 1, func(c *controlplane.Config) {
		c.APITokens = controlplane.APITokens{{Secret: token, Admin: true}}
		c.HostLoadEvery = -1
	})
	now := time.Now().UTC()
	h := demo.Make(now, demo.Options{Days: 28, PerDay: 3600, ProfileDays: 2, Seed: 7})
	b.Logf("%d jobs, %d profiles", len(h.Jobs), len(h.Profiles))
	put := func(fn func(tx store.Tx) error) {
		if err := sys.Store.Update(b.Context(), fn); err != nil {
			b.Fatal(err)
		}
	}
	for lo := 0; lo < len(h.Jobs); lo += 2000 {
		put(func(tx store.Tx) error {
			for _, j := range h.Jobs[lo:min(lo+2000, len(h.Jobs))] {
				if err := tx.CreateJob(j, store.Event{Source: "demo"}); err != nil {
					return err
				}
			}
			return nil
		})
	}
	for lo := 0; lo < len(h.Profiles); lo += 2000 {
		put(func(tx store.Tx) error {
			for _, p := range h.Profiles[lo:min(lo+2000, len(h.Profiles))] {
				if err := tx.PutProfile(p); err != nil {
					return err
				}
			}
			return nil
		})
	}
	put(func(tx store.Tx) error {
		for i := range 500 {
			id := fmt.Sprintf("host-%03d", i)
			if err := tx.PutHost(store.Host{ID: id, State: store.HostOnline, VCPUs: 64, MemoryMiB: 256 << 10,
				Arches: []store.ArchSupport{{Arch: arch.AMD64}}, CreatedAt: now, LastSeen: now}); err != nil {
				return err
			}
			for k := range 2 {
				if err := tx.PutRunner(store.Runner{Name: fmt.Sprintf("tandem-%03d%d", i, k), HostID: id, State: store.RunnerBusy,
					VCPUs: 4, MemoryMiB: 8192, Org: "acme", CreatedAt: now, UpdatedAt: now}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: time.Minute}
	base := sys.Web.URL
	req, _ := http.NewRequest("POST", base+"/login", strings.NewReader(url.Values{"token": {token}, "next": {"/"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", base)
	resp, err := c.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	job := h.Jobs[len(h.Jobs)-1].ID
	targets := []struct{ name, path string }{
		{"overview", "/"}, {"queue", "/queue"}, {"jobs", "/jobs"}, {"jobs-filtered", "/jobs?org=etcd-io&state=completed"},
		{"job", fmt.Sprintf("/jobs/%d", job)}, {"hosts", "/hosts"}, {"host", "/hosts/host-042"}, {"rightsize", "/rightsize"},
		{"insights-7d-job", "/insights?days=7&by=job"}, {"insights-28d-repo", "/insights?days=28&by=repo"},
		{"api-jobs", "/api/v1/jobs"}, {"api-hosts", "/api/v1/hosts"}, {"api-job-profile", fmt.Sprintf("/api/v1/jobs/%d/profile", job)},
		{"api-insights-7d", "/api/v1/insights?days=7&by=job"}, {"api-insights-28d", "/api/v1/insights?days=28&by=repo"},
		{"api-rightsize", "/api/v1/rightsize"},
	}
	b.ResetTimer()
	for range b.N {
		for _, tg := range targets {
			var took []time.Duration
			for range 20 {
				req, _ := http.NewRequest("GET", base+tg.path, nil)
				if strings.HasPrefix(tg.path, "/api/") {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				t0 := time.Now()
				resp, err := c.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				took = append(took, time.Since(t0))
				if resp.StatusCode != http.StatusOK && !(tg.name == "api-job-profile" && resp.StatusCode == http.StatusNotFound) {
					b.Fatalf("%s: %s", tg.path, resp.Status)
				}
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[18].Microseconds())/1000, "ms-p95-"+tg.name)
		}
	}
}
