package controlplane_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/demo"
	"github.com/tandem-ci/tandem/internal/store"
)

// putDemoHistory stores a made-up history of days days ending now
// (internal/demo: containerd, etcd-io, falcosecurity and open-telemetry;
// etcd-io/etcd's integration job slower this week), without profiles.
func putDemoHistory(t *testing.T, r *rig, days, perDay int) demo.History {
	t.Helper()
	h := demo.Make(time.Now().UTC(), demo.Options{Days: days, PerDay: perDay, ProfileDays: -1, Seed: 14})
	err := r.st.Update(t.Context(), func(tx store.Tx) error {
		for _, j := range h.Jobs {
			if err := tx.CreateJob(j, store.Event{Source: "demo"}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// The Insights page, the overview's queue-time chart and a host's load
// charts on a real control plane and store: an admin sees every org's
// groups, a read:acme token none of them; the host page charts the
// records the control plane takes.
func TestDashboardInsightsQueueAndLoad(t *testing.T) {
	r := newRig(t, rigOptions{configure: func(c *controlplane.Config) {
		c.APITokens = append(c.APITokens, controlplane.APIToken{Secret: acmeReader, Orgs: []string{"acme"}})
		c.HostLoadEvery = 50 * time.Millisecond
	}})
	putDemoHistory(t, r, 14, 60)

	admin := newBrowser(t, r.web.URL)
	admin.login(rigAdminToken)
	code, page := admin.do("GET", "/insights?days=7&by=repo", nil)
	if code != http.StatusOK || !strings.Contains(page, `data-group="etcd-io/etcd"`) || !strings.Contains(page, `class="was">was `) {
		t.Fatalf("insights (%d):\n%s", code, page)
	}
	inc := page[strings.Index(page, `id="increases"`):]
	if !strings.Contains(inc[:strings.Index(inc, "</table>")], "integration (") {
		t.Errorf("etcd's integration job is not among the jobs slower this week:\n%s", inc)
	}
	if !strings.Contains(page, `<a href="/jobs/9`) {
		t.Errorf("the longest runs do not link to their jobs:\n%s", page)
	}
	if _, page := admin.do("GET", "/", nil); !strings.Contains(page, `id="chart-queue"`) || !strings.Contains(page, "<polyline") ||
		strings.Contains(page, ">0 jobs started") {
		t.Errorf("the overview has no queue times of the last day:\n%s", page)
	}

	acme := newBrowser(t, r.web.URL)
	acme.login(acmeReader)
	for _, p := range []string{"/insights?days=28&by=job", "/insights?org=etcd-io", "/"} {
		if code, page := acme.do("GET", p, nil); code != http.StatusOK || strings.Contains(page, "etcd-io/") || strings.Contains(page, "containerd/") {
			t.Errorf("%s for a read:acme token (%d) shows other orgs:\n%s", p, code, page)
		}
	}

	r.waitFor("two host load records", 5*time.Second, func() bool {
		var n int
		r.st.View(t.Context(), func(tx store.ReadTx) error {
			ls, err := tx.HostLoad("h1", time.Now().Add(-time.Hour))
			n = len(ls)
			return err
		})
		return n >= 2
	})
	if _, page := acme.do("GET", "/hosts/h1", nil); !strings.Contains(page, `id="chart-host-cpu"`) || !strings.Contains(page, "<polyline") ||
		!strings.Contains(page, "load records") {
		t.Errorf("h1's page has no load charts:\n%s", page)
	}
	if code, _ := acme.do("GET", "/hosts/nope", nil); code != http.StatusNotFound {
		t.Errorf("a host that is not there: %d", code)
	}
}
