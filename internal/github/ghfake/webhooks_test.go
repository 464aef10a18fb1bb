package ghfake_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
)

func TestWebhookHeadersAndPayload(t *testing.T) {
	f := newFixture(t)
	orgInst := f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	userInst := f.srv.AddInstallation("bob", ghfake.AccountUser, "bob/lib")
	tok := f.token(orgInst)
	jobID, runID := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"tandem-arm64"}, Name: "build"})
	f.srv.QueueJob(ghfake.JobSpec{Repo: "bob/lib", Labels: []string{"x"}})
	f.srv.QueueJob(ghfake.JobSpec{Repo: "carol/uninstalled", Labels: []string{"x"}}) // no webhook
	sess := f.session(f.jit(tok, "/repos/acme/app", "vm-7", "tandem-arm64").EncodedJITConfig)
	f.acquire(sess, time.Second)
	f.srv.Quiesce()

	hooks := f.sink.hooks()
	if len(hooks) != 3 {
		t.Fatalf("got %d webhooks, want 3 (queued ×2, in_progress)", len(hooks))
	}
	for _, h := range hooks {
		verifySignatures(t, h)
		for k, want := range map[string]string{
			"X-GitHub-Event": "workflow_job", "Content-Type": "application/json",
			"X-GitHub-Hook-Installation-Target-Type": "integration",
			"X-GitHub-Hook-Installation-Target-ID":   strconv.Itoa(appID),
		} {
			if got := h.Header.Get(k); got != want {
				t.Errorf("%s = %q, want %q", k, got, want)
			}
		}
		if !strings.HasPrefix(h.Header.Get("User-Agent"), "GitHub-Hookshot/") ||
			h.Header.Get("X-GitHub-Hook-ID") == "" || len(h.Header.Get("X-GitHub-Delivery")) != 36 {
			t.Errorf("headers = %v", h.Header)
		}
	}

	type account struct {
		Login string `json:"login"`
		ID    int64  `json:"id"`
		Type  string `json:"type"`
	}
	var p struct {
		Action      string `json:"action"`
		WorkflowJob struct {
			ID              int64    `json:"id"`
			RunID           int64    `json:"run_id"`
			RunAttempt      int      `json:"run_attempt"`
			RunURL          string   `json:"run_url"`
			HTMLURL         string   `json:"html_url"`
			NodeID          string   `json:"node_id"`
			HeadSHA         string   `json:"head_sha"`
			HeadBranch      string   `json:"head_branch"`
			Status          string   `json:"status"`
			Conclusion      *string  `json:"conclusion"`
			CreatedAt       string   `json:"created_at"`
			StartedAt       string   `json:"started_at"`
			CompletedAt     *string  `json:"completed_at"`
			Name            string   `json:"name"`
			WorkflowName    string   `json:"workflow_name"`
			Steps           []any    `json:"steps"`
			Labels          []string `json:"labels"`
			RunnerID        *int64   `json:"runner_id"`
			RunnerName      *string  `json:"runner_name"`
			RunnerGroupID   *int64   `json:"runner_group_id"`
			RunnerGroupName *string  `json:"runner_group_name"`
		} `json:"workflow_job"`
		Repository struct {
			ID       int64   `json:"id"`
			NodeID   string  `json:"node_id"`
			Name     string  `json:"name"`
			FullName string  `json:"full_name"`
			Private  bool    `json:"private"`
			Owner    account `json:"owner"`
		} `json:"repository"`
		Organization *account `json:"organization"`
		Installation struct {
			ID     int64  `json:"id"`
			NodeID string `json:"node_id"`
		} `json:"installation"`
		Sender account `json:"sender"`
	}
	// Which webhook is which depends on delivery order: find them.
	var queuedOrg, queuedUser, started []byte
	for _, h := range hooks {
		var probe struct {
			Action     string `json:"action"`
			Repository struct {
				FullName string `json:"full_name"`
			} `json:"repository"`
		}
		if err := json.Unmarshal(h.Body, &probe); err != nil {
			t.Fatal(err)
		}
		switch {
		case probe.Action == "in_progress":
			started = h.Body
		case probe.Repository.FullName == "acme/app":
			queuedOrg = h.Body
		default:
			queuedUser = h.Body
		}
	}

	if err := json.Unmarshal(queuedOrg, &p); err != nil {
		t.Fatal(err)
	}
	wj := p.WorkflowJob
	if p.Action != "queued" || wj.ID != jobID || wj.RunID != runID || wj.Status != "queued" || wj.Conclusion != nil ||
		wj.CompletedAt != nil || wj.RunnerName != nil || wj.RunnerID != nil || wj.Steps == nil || wj.Name != "build" ||
		len(wj.Labels) != 1 || wj.Labels[0] != "tandem-arm64" || wj.RunAttempt != 1 || wj.HeadSHA == "" ||
		wj.NodeID == "" || wj.CreatedAt == "" || wj.StartedAt == "" || wj.WorkflowName == "" ||
		!strings.Contains(wj.RunURL, fmt.Sprint(runID)) || !strings.Contains(wj.HTMLURL, fmt.Sprint(jobID)) {
		t.Errorf("queued workflow_job = %+v", wj)
	}
	if _, err := time.Parse(time.RFC3339, wj.CreatedAt); err != nil {
		t.Errorf("created_at %q: %v", wj.CreatedAt, err)
	}
	if p.Repository.FullName != "acme/app" || p.Repository.Name != "app" || p.Repository.ID == 0 ||
		p.Repository.Owner.Login != "acme" || p.Repository.Owner.Type != "Organization" || p.Repository.NodeID == "" {
		t.Errorf("repository = %+v", p.Repository)
	}
	if p.Organization == nil || p.Organization.Login != "acme" || p.Organization.ID != p.Repository.Owner.ID {
		t.Errorf("organization = %+v", p.Organization)
	}
	if p.Installation.ID != orgInst || p.Installation.NodeID == "" || p.Sender.Login == "" || p.Sender.Type == "" {
		t.Errorf("installation = %+v, sender = %+v", p.Installation, p.Sender)
	}

	p.Organization = nil
	if err := json.Unmarshal(queuedUser, &p); err != nil {
		t.Fatal(err)
	}
	if p.Organization != nil || p.Installation.ID != userInst || p.Repository.Owner.Type != "User" {
		t.Errorf("user repo webhook: organization %+v, installation %d, owner %+v", p.Organization, p.Installation.ID, p.Repository.Owner)
	}

	if err := json.Unmarshal(started, &p); err != nil {
		t.Fatal(err)
	}
	wj = p.WorkflowJob
	if p.Action != "in_progress" || wj.Status != "in_progress" || wj.RunnerName == nil || *wj.RunnerName != "vm-7" ||
		wj.RunnerID == nil || wj.RunnerGroupID == nil || *wj.RunnerGroupID != 1 || wj.RunnerGroupName == nil ||
		*wj.RunnerGroupName != "Default" {
		t.Errorf("in_progress workflow_job = %+v", wj)
	}
}

func TestWebhookUnsigned(t *testing.T) {
	f := newFixture(t, func(c *ghfake.Config) { c.WebhookSecret = nil })
	f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"}})
	f.srv.Quiesce()
	h := f.sink.hooks()
	if len(h) != 1 || h[0].Header.Get("X-Hub-Signature-256") != "" || h[0].Header.Get("X-Hub-Signature") != "" {
		t.Fatalf("unsigned webhook: %+v", h)
	}
}

// queueN queues n single-job runs in acme/app.
func queueN(f *fixture, n int) []int64 {
	var ids []int64
	for range n {
		id, _ := f.srv.QueueJob(ghfake.JobSpec{Repo: "acme/app", Labels: []string{"x"}})
		ids = append(ids, id)
	}
	return ids
}

func TestFaultLose(t *testing.T) {
	f := newFixture(t)
	f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	f.srv.SetFaults(ghfake.Faults{Lose: 1})
	queueN(f, 3)
	f.srv.Flush()
	if n := len(f.sink.hooks()); n != 0 {
		t.Errorf("%d lost webhooks arrived", n)
	}
	if d := f.srv.Deliveries(); len(d) != 0 {
		t.Errorf("lost webhooks are in the log: %+v", d)
	}
	// Half lost: some arrive, some not, all decided by the seed.
	f.srv.SetFaults(ghfake.Faults{Lose: 0.5})
	queueN(f, 20)
	f.srv.Quiesce()
	if n := len(f.sink.hooks()); n == 0 || n == 20 || n != len(f.srv.Deliveries()) {
		t.Errorf("Lose 0.5: %d of 20 arrived, %d logged", n, len(f.srv.Deliveries()))
	}
}

func TestFaultFailAndRedeliver(t *testing.T) {
	f := newFixture(t)
	f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	f.srv.SetFaults(ghfake.Faults{Fail: 1})
	queueN(f, 2)
	f.srv.Quiesce()
	if n := len(f.sink.hooks()); n != 0 {
		t.Fatalf("%d failed webhooks arrived", n)
	}
	log := f.srv.Deliveries()
	if len(log) != 2 {
		t.Fatalf("log has %d entries, want 2", len(log))
	}
	for _, d := range log {
		if d.Status == "OK" || d.StatusCode != 0 || d.Redelivery || d.GUID == "" {
			t.Errorf("failed delivery = %+v", d)
		}
	}
	f.srv.SetFaults(ghfake.Faults{Fail: 1}) // redeliveries are not subject to faults
	if err := f.srv.Redeliver(log[0].ID); err != nil {
		t.Fatal(err)
	}
	f.srv.Quiesce()
	got := f.sink.byGUID()
	if len(got) != 1 || got[log[0].GUID] != 1 {
		t.Fatalf("after redelivery the receiver got %v, want %s once", got, log[0].GUID)
	}
	log = f.srv.Deliveries()
	last := log[len(log)-1]
	if len(log) != 3 || !last.Redelivery || last.GUID != log[0].GUID || last.Status != "OK" || last.StatusCode != 200 {
		t.Errorf("redelivery logged as %+v", last)
	}
	verifySignatures(t, f.sink.hooks()[0])
}

func TestFaultDuplicate(t *testing.T) {
	f := newFixture(t)
	f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	f.srv.SetFaults(ghfake.Faults{Duplicate: 1})
	queueN(f, 3)
	f.srv.Quiesce()
	got := f.sink.byGUID()
	if len(got) != 3 {
		t.Fatalf("%d distinct guids, want 3", len(got))
	}
	for guid, n := range got {
		if n != 2 {
			t.Errorf("guid %s arrived %d times, want 2", guid, n)
		}
	}
	if n := len(f.srv.Deliveries()); n != 6 {
		t.Errorf("%d deliveries logged, want 6", n)
	}
}

func TestFaultReorder(t *testing.T) {
	f := newFixture(t)
	f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	f.srv.SetFaults(ghfake.Faults{Reorder: 1})
	ids := queueN(f, 2)
	f.srv.Quiesce()
	order := func() []int64 {
		var out []int64
		for _, h := range f.sink.jobHooks(t) {
			out = append(out, h.WorkflowJob.ID)
		}
		return out
	}
	if got := order(); len(got) != 2 || got[0] != ids[1] || got[1] != ids[0] {
		t.Fatalf("arrival order %v, want %v reversed", got, ids)
	}
	// The third is held back until something follows it, or Flush.
	third := queueN(f, 1)[0]
	f.srv.Quiesce()
	if got := order(); len(got) != 2 {
		t.Fatalf("held webhook arrived early: %v", got)
	}
	f.srv.Flush()
	if got := order(); len(got) != 3 || got[2] != third {
		t.Fatalf("after Flush: %v", got)
	}
}

func TestFaultMaxDelay(t *testing.T) {
	f := newFixture(t)
	f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	f.srv.SetFaults(ghfake.Faults{MaxDelay: 400 * time.Millisecond})
	start := time.Now()
	queueN(f, 6)
	f.srv.Quiesce()
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Errorf("6 webhooks with up to 400ms delay all arrived in %s", d)
	}
	if n := len(f.sink.byGUID()); n != 6 {
		t.Errorf("%d webhooks arrived, want 6", n)
	}
}

func TestDeliveryFailures(t *testing.T) {
	t.Run("non-2xx", func(t *testing.T) {
		f := newFixture(t)
		f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
		f.sink.status.Store(http.StatusServiceUnavailable)
		queueN(f, 1)
		f.srv.Quiesce()
		d := f.srv.Deliveries()
		if len(d) != 1 || d[0].StatusCode != 503 || d[0].Status == "OK" || len(f.sink.hooks()) != 1 {
			t.Fatalf("deliveries = %+v", d)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		f := newFixture(t, func(c *ghfake.Config) { c.WebhookTimeout = 100 * time.Millisecond })
		f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
		f.sink.delay.Store(int64(2 * time.Second))
		queueN(f, 1)
		f.srv.Quiesce()
		d := f.srv.Deliveries()
		if len(d) != 1 || d[0].StatusCode != 0 || d[0].Status != "timed out" || d[0].Duration > time.Second {
			t.Fatalf("deliveries = %+v", d)
		}
	})
	t.Run("connection refused", func(t *testing.T) {
		dead := httptest.NewServer(http.NotFoundHandler())
		dead.Close()
		f := newFixture(t, func(c *ghfake.Config) { c.WebhookURL = dead.URL })
		f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
		queueN(f, 1)
		f.srv.Quiesce()
		d := f.srv.Deliveries()
		if len(d) != 1 || d[0].StatusCode != 0 || d[0].Status != "failed to connect to host" {
			t.Fatalf("deliveries = %+v", d)
		}
	})
}

func TestDeliveriesAPI(t *testing.T) {
	f := newFixture(t)
	f.srv.AddInstallation("acme", ghfake.AccountOrganization, "acme/app")
	f.sink.status.Store(http.StatusInternalServerError)
	queueN(f, 5)
	f.srv.Quiesce()
	auth := "Bearer " + f.jwt()

	type delivery struct {
		ID             int64           `json:"id"`
		GUID           string          `json:"guid"`
		DeliveredAt    time.Time       `json:"delivered_at"`
		Redelivery     bool            `json:"redelivery"`
		Duration       float64         `json:"duration"`
		Status         string          `json:"status"`
		StatusCode     int             `json:"status_code"`
		Event          string          `json:"event"`
		Action         string          `json:"action"`
		InstallationID int64           `json:"installation_id"`
		RepositoryID   int64           `json:"repository_id"`
		Request        json.RawMessage `json:"request"`
	}
	var all []delivery
	next := "/app/hook/deliveries?per_page=2"
	for pages := 0; next != ""; pages++ {
		if pages > 3 {
			t.Fatal("too many pages")
		}
		var page []delivery
		resp := f.expect(200, "GET", next, auth, nil, &page)
		all = append(all, page...)
		next = ""
		if link := resp.Header.Get("Link"); link != "" {
			if !strings.HasSuffix(link, `rel="next"`) || !strings.Contains(link, "cursor=") {
				t.Fatalf("Link = %q", link)
			}
			next = strings.TrimPrefix(strings.Trim(strings.Split(link, ";")[0], "<>"), f.api.URL)
		}
	}
	if len(all) != 5 {
		t.Fatalf("listed %d deliveries, want 5", len(all))
	}
	for i, d := range all {
		if i > 0 && d.ID >= all[i-1].ID {
			t.Errorf("not newest first: %d after %d", d.ID, all[i-1].ID)
		}
		if d.Event != "workflow_job" || d.Action != "queued" || d.StatusCode != 500 || d.Status == "OK" ||
			d.InstallationID == 0 || d.RepositoryID == 0 || d.DeliveredAt.IsZero() || d.Request != nil {
			t.Errorf("delivery = %+v", d)
		}
	}
	f.expect(422, "GET", "/app/hook/deliveries?cursor=bogus", auth, nil, nil)
	f.expect(401, "GET", "/app/hook/deliveries", "", nil, nil)

	var full struct {
		delivery
		Request struct {
			Headers map[string]string `json:"headers"`
			Payload struct {
				Action string `json:"action"`
			} `json:"payload"`
		} `json:"request"`
		Response struct {
			Headers map[string]string `json:"headers"`
			Payload *string           `json:"payload"`
		} `json:"response"`
	}
	f.expect(200, "GET", fmt.Sprintf("/app/hook/deliveries/%d", all[0].ID), auth, nil, &full)
	if full.GUID != all[0].GUID || full.Request.Headers["X-GitHub-Delivery"] != full.GUID ||
		full.Request.Payload.Action != "queued" || full.Response.Payload == nil {
		t.Errorf("full delivery = %+v", full)
	}
	f.expect(404, "GET", "/app/hook/deliveries/12345", auth, nil, nil)
	f.expect(404, "POST", "/app/hook/deliveries/12345/attempts", auth, nil, nil)

	// Redeliver once the receiver is healthy again.
	f.sink.status.Store(http.StatusOK)
	f.expect(202, "POST", fmt.Sprintf("/app/hook/deliveries/%d/attempts", all[2].ID), auth, nil, nil)
	f.srv.Quiesce()
	var latest []delivery
	f.expect(200, "GET", "/app/hook/deliveries?per_page=1", auth, nil, &latest)
	if len(latest) != 1 || !latest[0].Redelivery || latest[0].GUID != all[2].GUID || latest[0].Status != "OK" ||
		latest[0].ID <= all[0].ID {
		t.Errorf("redelivery = %+v", latest)
	}
	if got := f.sink.byGUID()[all[2].GUID]; got != 2 {
		t.Errorf("receiver saw guid %d times, want 2", got)
	}
}
