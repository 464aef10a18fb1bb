package github

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const testInst = 77

func TestGenerateJITConfig(t *testing.T) {
	cases := []struct {
		name     string
		scope    Scope
		req      JITRequest
		path     string
		wantBody map[string]any
	}{
		{
			name:  "repo default group",
			scope: Scope{Owner: "acme", Repo: "widgets"},
			req:   JITRequest{Name: "tandem-abc", Labels: []string{"self-hosted", "tandem-4cpu-8gb"}},
			path:  "/repos/acme/widgets/actions/runners/generate-jitconfig",
			wantBody: map[string]any{
				"name": "tandem-abc", "runner_group_id": float64(1),
				"labels": []any{"self-hosted", "tandem-4cpu-8gb"},
			},
		},
		{
			name:  "org explicit group and folder",
			scope: Scope{Owner: "acme"},
			req:   JITRequest{Name: "tandem-xyz", RunnerGroupID: 7, Labels: []string{"tandem-arm64-2cpu-4gb"}, WorkFolder: "/w"},
			path:  "/orgs/acme/actions/runners/generate-jitconfig",
			wantBody: map[string]any{
				"name": "tandem-xyz", "runner_group_id": float64(7),
				"labels": []any{"tandem-arm64-2cpu-4gb"}, "work_folder": "/w",
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPost || r.URL.Path != tc.path {
					t.Errorf("got %s %s, want POST %s", r.Method, r.URL.Path, tc.path)
				}
				if !h.requireInstallation(w, r, testInst) {
					return
				}
				var body map[string]any
				if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
					t.Errorf("decode body: %v", err)
				}
				if !reflect.DeepEqual(body, tc.wantBody) {
					t.Errorf("body = %v, want %v", body, tc.wantBody)
				}
				writeJSON(w, http.StatusCreated, map[string]any{
					"runner": map[string]any{
						"id": 23, "name": tc.req.Name, "os": "unknown", "status": "offline", "busy": false,
						"labels": []map[string]any{{"id": 1, "name": "self-hosted", "type": "read-only"}},
					},
					"encoded_jit_config": "ENCODED-SECRET-" + tc.req.Name,
				})
			})
			got, err := h.client.GenerateJITConfig(context.Background(), testInst, tc.scope, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			want := JITConfig{RunnerID: 23, RunnerName: tc.req.Name, EncodedConfig: "ENCODED-SECRET-" + tc.req.Name}
			if got != want {
				t.Errorf("got %+v", got)
			}
		})
	}
}

func TestGenerateJITConfigErrors(t *testing.T) {
	h := newHarness(t)
	var requests atomic.Int64
	h.mux.HandleFunc("POST /repos/acme/widgets/actions/runners/generate-jitconfig", func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		writeJSON(w, http.StatusConflict, map[string]string{"message": "Already exists - A runner with the name already exists."})
	})
	h.mux.HandleFunc("POST /repos/acme/empty/actions/runners/generate-jitconfig", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusCreated, map[string]any{"runner": map[string]any{"id": 5}})
	})
	ctx := context.Background()
	good := JITRequest{Name: "r1", Labels: []string{"a"}}

	_, err := h.client.GenerateJITConfig(ctx, testInst, Scope{Owner: "acme", Repo: "widgets"}, good)
	if !errors.Is(err, ErrConflict) {
		t.Errorf("409: err = %v, want ErrConflict", err)
	}
	var se *StatusError
	if !errors.As(err, &se) || se.Method != http.MethodPost || se.Path != "/repos/acme/widgets/actions/runners/generate-jitconfig" ||
		!strings.Contains(se.Message, "Already exists") {
		t.Errorf("StatusError = %+v", se)
	}

	_, err = h.client.GenerateJITConfig(ctx, testInst, Scope{Owner: "acme", Repo: "empty"}, good)
	if err == nil || !strings.Contains(err.Error(), "lacks") {
		t.Errorf("response without config: err = %v", err)
	}

	requests.Store(0)
	invalid := []struct {
		inst  int64
		scope Scope
		req   JITRequest
	}{
		{0, Scope{Owner: "acme", Repo: "widgets"}, good},
		{testInst, Scope{}, good},
		{testInst, Scope{Owner: "acme/evil"}, good},
		{testInst, Scope{Owner: "acme", Repo: "widgets?x=1"}, good},
		{testInst, Scope{Owner: "acme", Repo: ".."}, good},
		{testInst, Scope{Owner: "acme", Repo: "widgets"}, JITRequest{Labels: []string{"a"}}},
		{testInst, Scope{Owner: "acme", Repo: "widgets"}, JITRequest{Name: "r"}},
		{testInst, Scope{Owner: "acme", Repo: "widgets"}, JITRequest{Name: "r", Labels: []string{""}}},
		{testInst, Scope{Owner: "acme", Repo: "widgets"}, JITRequest{Name: "r", Labels: make([]string, 101)}},
		{testInst, Scope{Owner: "acme", Repo: "widgets"}, JITRequest{Name: "r", Labels: []string{"a"}, RunnerGroupID: -1}},
	}
	for i, tc := range invalid {
		if _, err := h.client.GenerateJITConfig(ctx, tc.inst, tc.scope, tc.req); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("case %d: err = %v, want ErrInvalidArgument", i, err)
		}
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("invalid input reached the server %d times", n)
	}
}

func runnerJSON(id int) map[string]any {
	return map[string]any{
		"id": id, "name": fmt.Sprintf("r%d", id), "os": "linux", "status": "online", "busy": id%2 == 0,
		"labels": []map[string]any{{"name": "self-hosted"}, {"name": "tandem"}},
	}
}

func TestListRunnersPaginated(t *testing.T) {
	for _, scope := range []Scope{{Owner: "acme"}, {Owner: "acme", Repo: "widgets"}} {
		t.Run(scope.String(), func(t *testing.T) {
			h := newHarness(t)
			path := "/orgs/acme/actions/runners"
			if scope.Repo != "" {
				path = "/repos/acme/widgets/actions/runners"
			}
			const total = 250
			var calls atomic.Int64
			h.mux.HandleFunc("GET "+path, func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				if !h.requireInstallation(w, r, testInst) {
					return
				}
				if pp := r.URL.Query().Get("per_page"); pp != "100" {
					t.Errorf("per_page = %q", pp)
				}
				page := pageOf(t, r)
				var rs []map[string]any
				for id := (page-1)*100 + 1; id <= min(page*100, total); id++ {
					rs = append(rs, runnerJSON(id))
				}
				if page*100 < total {
					setNextLink(w, r, h.srv.URL, page+1)
				}
				writeJSON(w, http.StatusOK, map[string]any{"total_count": total, "runners": rs})
			})
			got, err := h.client.ListRunners(context.Background(), testInst, scope)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != total || calls.Load() != 3 {
				t.Fatalf("got %d runners in %d calls", len(got), calls.Load())
			}
			for i, r := range got {
				id := int64(i + 1)
				want := Runner{ID: id, Name: fmt.Sprintf("r%d", id), Status: "online", Busy: id%2 == 0, Labels: []string{"self-hosted", "tandem"}}
				if !reflect.DeepEqual(r, want) {
					t.Fatalf("runner %d = %+v, want %+v", i, r, want)
				}
			}
		})
	}
}

func TestDeleteRunner(t *testing.T) {
	h := newHarness(t)
	var deleted recorder
	h.mux.HandleFunc("DELETE /repos/acme/widgets/actions/runners/{id}", func(w http.ResponseWriter, r *http.Request) {
		if !h.requireInstallation(w, r, testInst) {
			return
		}
		if r.PathValue("id") != "5" {
			writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
			return
		}
		deleted.Add(r.URL.Path)
		w.WriteHeader(http.StatusNoContent)
	})
	h.mux.HandleFunc("DELETE /orgs/acme/actions/runners/{id}", func(w http.ResponseWriter, r *http.Request) {
		if !h.requireInstallation(w, r, testInst) {
			return
		}
		deleted.Add(r.URL.Path)
		w.WriteHeader(http.StatusNoContent)
	})
	ctx := context.Background()
	repo := Scope{Owner: "acme", Repo: "widgets"}
	if err := h.client.DeleteRunner(ctx, testInst, repo, 5); err != nil {
		t.Fatal(err)
	}
	if err := h.client.DeleteRunner(ctx, testInst, Scope{Owner: "acme"}, 9); err != nil {
		t.Fatal(err)
	}
	want := []string{"/repos/acme/widgets/actions/runners/5", "/orgs/acme/actions/runners/9"}
	if !slices.Equal(deleted.Items(), want) {
		t.Errorf("deleted %v", deleted.Items())
	}
	err := h.client.DeleteRunner(ctx, testInst, repo, 6)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	var se *StatusError
	if !errors.As(err, &se) || se.StatusCode != 404 || se.Path != "/repos/acme/widgets/actions/runners/6" {
		t.Errorf("StatusError = %+v", se)
	}
}

func jobJSON(id, run int64, status string) map[string]any {
	j := map[string]any{
		"id": id, "run_id": run, "run_attempt": 1, "status": status, "conclusion": nil,
		"name": fmt.Sprintf("job%d", id), "workflow_name": "CI", "labels": []string{"tandem-4cpu-8gb"},
		"runner_id": nil, "runner_name": nil, "runner_group_id": nil,
		"created_at": "2026-01-02T03:00:00Z", "started_at": "2026-01-02T03:00:01Z", "completed_at": nil,
	}
	if status == "in_progress" {
		j["runner_id"], j["runner_name"], j["runner_group_id"] = 9, "tandem-9", 1
	}
	return j
}

func TestListQueuedJobs(t *testing.T) {
	h := newHarness(t)
	// Queued runs 1..120 (two pages) and in-progress runs 200 and 5 (5 is
	// listed twice, as if it changed status between the listings).
	runs := map[string][]int64{"in_progress": {200, 5}}
	for id := int64(1); id <= 120; id++ {
		runs["queued"] = append(runs["queued"], id)
	}
	h.mux.HandleFunc("GET /repos/acme/widgets/actions/runs", func(w http.ResponseWriter, r *http.Request) {
		if !h.requireInstallation(w, r, testInst) {
			return
		}
		ids, ok := runs[r.URL.Query().Get("status")]
		if !ok {
			t.Errorf("unexpected status filter %q", r.URL.Query().Get("status"))
		}
		page := pageOf(t, r)
		lo, hi := (page-1)*100, min(page*100, len(ids))
		var out []map[string]any
		for _, id := range ids[lo:hi] {
			out = append(out, map[string]any{"id": id, "status": r.URL.Query().Get("status")})
		}
		if hi < len(ids) {
			setNextLink(w, r, h.srv.URL, page+1)
		}
		writeJSON(w, http.StatusOK, map[string]any{"total_count": len(ids), "workflow_runs": out})
	})
	var jobCalls recorder
	h.mux.HandleFunc("GET /repos/acme/widgets/actions/runs/{run}/jobs", func(w http.ResponseWriter, r *http.Request) {
		if !h.requireInstallation(w, r, testInst) {
			return
		}
		if f := r.URL.Query().Get("filter"); f != "latest" {
			t.Errorf("filter = %q", f)
		}
		run, _ := strconv.ParseInt(r.PathValue("run"), 10, 64)
		jobCalls.Add(r.PathValue("run"))
		var jobs []map[string]any
		switch {
		case run == 200 && pageOf(t, r) == 1:
			jobs = []map[string]any{jobJSON(2001, 200, "in_progress"), jobJSON(2002, 200, "queued")}
			setNextLink(w, r, h.srv.URL, 2)
		case run == 200:
			jobs = []map[string]any{jobJSON(2003, 200, "queued"), jobJSON(2004, 200, "completed")}
		case run == 7:
			writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"}) // deleted meanwhile
			return
		case run%2 == 0:
			jobs = []map[string]any{jobJSON(run*10, run, "queued")}
		default:
			jobs = []map[string]any{jobJSON(run*10, run, "waiting")}
		}
		writeJSON(w, http.StatusOK, map[string]any{"total_count": len(jobs), "jobs": jobs})
	})

	got, err := h.client.ListQueuedJobs(context.Background(), testInst, "acme/widgets")
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, j := range got {
		ids = append(ids, j.ID)
		if j.Repo != "acme/widgets" || j.Status != "queued" {
			t.Errorf("job %+v", j)
		}
	}
	var want []int64
	for run := int64(2); run <= 120; run += 2 {
		want = append(want, run*10)
	}
	want = append(want, 2002, 2003)
	if !slices.Equal(ids, want) {
		t.Errorf("job ids = %v\nwant %v", ids, want)
	}
	if n := jobCalls.Count("5"); n != 1 {
		t.Errorf("run 5 listed %d times, want once", n)
	}
	j := got[len(got)-1]
	wantJob := Job{
		ID: 2003, RunID: 200, RunAttempt: 1, Repo: "acme/widgets", Name: "job2003", WorkflowName: "CI",
		Status: "queued", Labels: []string{"tandem-4cpu-8gb"},
		CreatedAt: time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC), StartedAt: time.Date(2026, 1, 2, 3, 0, 1, 0, time.UTC),
	}
	if !reflect.DeepEqual(j, wantJob) {
		t.Errorf("job = %+v\nwant %+v", j, wantJob)
	}

	for _, bad := range []string{"", "acme", "acme/", "/widgets", "a/b/c", "acme/wid gets"} {
		if _, err := h.client.ListQueuedJobs(context.Background(), testInst, bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("repo %q: err = %v", bad, err)
		}
	}
}

func TestGetJob(t *testing.T) {
	h := newHarness(t)
	h.mux.HandleFunc("GET /repos/acme/widgets/actions/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		if !h.requireInstallation(w, r, testInst) {
			return
		}
		if r.PathValue("id") != "31" {
			writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
			return
		}
		writeJSON(w, http.StatusOK, jobJSON(31, 3, "in_progress"))
	})
	j, err := h.client.GetJob(context.Background(), testInst, "acme/widgets", 31)
	if err != nil {
		t.Fatal(err)
	}
	if j.ID != 31 || j.RunID != 3 || j.Status != "in_progress" || j.RunnerID != 9 || j.RunnerName != "tandem-9" || j.RunnerGroupID != 1 {
		t.Errorf("job = %+v", j)
	}
	if _, err := h.client.GetJob(context.Background(), testInst, "acme/widgets", 32); !errors.Is(err, ErrNotFound) {
		t.Errorf("err = %v, want ErrNotFound", err)
	}
}

func TestListInstallations(t *testing.T) {
	h := newHarness(t)
	h.mux.HandleFunc("GET /app/installations", func(w http.ResponseWriter, r *http.Request) {
		if !h.requireApp(w, r) {
			return
		}
		if pageOf(t, r) == 1 {
			setNextLink(w, r, h.srv.URL, 2)
			writeJSON(w, http.StatusOK, []map[string]any{
				{"id": 1, "account": map[string]any{"login": "acme", "type": "Organization"}, "target_type": "Organization"},
			})
			return
		}
		writeJSON(w, http.StatusOK, []map[string]any{
			{"id": 2, "account": map[string]any{"login": "bob"}, "target_type": "User"},
		})
	})
	got, err := h.client.ListInstallations(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []Installation{{ID: 1, Account: "acme", AccountType: "Organization"}, {ID: 2, Account: "bob", AccountType: "User"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v", got)
	}
}

func TestListInstallationRepos(t *testing.T) {
	h := newHarness(t)
	h.mux.HandleFunc("GET /installation/repositories", func(w http.ResponseWriter, r *http.Request) {
		if !h.requireInstallation(w, r, testInst) {
			return
		}
		page := pageOf(t, r)
		if page == 1 {
			setNextLink(w, r, h.srv.URL, 2)
		}
		writeJSON(w, http.StatusOK, map[string]any{"total_count": 2, "repositories": []map[string]any{{
			"id": page, "name": fmt.Sprintf("r%d", page), "full_name": fmt.Sprintf("acme/r%d", page),
			"private": page == 2, "owner": map[string]any{"login": "acme"},
		}}})
	})
	got, err := h.client.ListInstallationRepos(context.Background(), testInst)
	if err != nil {
		t.Fatal(err)
	}
	want := []Repository{
		{ID: 1, FullName: "acme/r1", Owner: "acme", Name: "r1", Visibility: "public"},
		{ID: 2, FullName: "acme/r2", Owner: "acme", Name: "r2", Visibility: "private"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v", got)
	}
}

func TestListDeliveries(t *testing.T) {
	h := newHarness(t)
	base := time.Date(2026, 1, 2, 12, 0, 0, 0, time.UTC)
	// Newest first: deliveries 10..1, one minute apart; three per page.
	delivery := func(id int) map[string]any {
		return map[string]any{
			"id": id, "guid": fmt.Sprintf("g-%d", id), "delivered_at": base.Add(time.Duration(id) * time.Minute).Format(time.RFC3339),
			"redelivery": id == 9, "duration": 0.1, "status": "OK", "status_code": 200, "event": "workflow_job",
			"action": "queued", "installation_id": testInst, "repository_id": 3,
		}
	}
	var pages recorder
	h.mux.HandleFunc("GET /app/hook/deliveries", func(w http.ResponseWriter, r *http.Request) {
		if !h.requireApp(w, r) {
			return
		}
		cursor := r.URL.Query().Get("cursor")
		pages.Add(cursor)
		start := 10
		if cursor != "" {
			start, _ = strconv.Atoi(strings.TrimPrefix(cursor, "c"))
		}
		var out []map[string]any
		for id := start; id > start-3 && id > 0; id-- {
			out = append(out, delivery(id))
		}
		if next := start - 3; next > 0 {
			w.Header().Set("Link", fmt.Sprintf(`<%s/app/hook/deliveries?per_page=100&cursor=c%d>; rel="next"`, h.srv.URL, next))
		}
		writeJSON(w, http.StatusOK, out)
	})

	got, err := h.client.ListDeliveries(context.Background(), base.Add(5*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for _, d := range got {
		ids = append(ids, d.ID)
	}
	if !slices.Equal(ids, []int64{10, 9, 8, 7, 6, 5}) {
		t.Errorf("ids = %v", ids)
	}
	if !slices.Equal(pages.Items(), []string{"", "c7", "c4"}) {
		t.Errorf("pages fetched = %v (should stop once older than since)", pages.Items())
	}
	want := Delivery{
		ID: 9, GUID: "g-9", DeliveredAt: base.Add(9 * time.Minute), Redelivery: true, Status: "OK", StatusCode: 200,
		Event: "workflow_job", Action: "queued", InstallationID: testInst, RepositoryID: 3,
	}
	if !reflect.DeepEqual(got[1], want) {
		t.Errorf("delivery = %+v\nwant %+v", got[1], want)
	}

	pages.Reset()
	all, err := h.client.ListDeliveries(context.Background(), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 10 || len(pages.Items()) != 4 {
		t.Errorf("zero since: %d deliveries over %d pages", len(all), len(pages.Items()))
	}
}

func TestRedeliver(t *testing.T) {
	h := newHarness(t)
	var got recorder
	h.mux.HandleFunc("POST /app/hook/deliveries/{id}/attempts", func(w http.ResponseWriter, r *http.Request) {
		if !h.requireApp(w, r) {
			return
		}
		if r.PathValue("id") != "12" {
			writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
			return
		}
		got.Add(r.PathValue("id"))
		writeJSON(w, http.StatusAccepted, map[string]any{})
	})
	if err := h.client.Redeliver(context.Background(), 12); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Items(), []string{"12"}) {
		t.Errorf("redelivered %v", got.Items())
	}
	if err := h.client.Redeliver(context.Background(), 13); !errors.Is(err, ErrNotFound) {
		t.Errorf("err = %v, want ErrNotFound", err)
	}
}

func TestUnauthorizedInvalidatesToken(t *testing.T) {
	h := newHarness(t)
	var calls atomic.Int64
	h.mux.HandleFunc("GET /repos/acme/widgets/actions/runners", func(w http.ResponseWriter, r *http.Request) {
		switch calls.Add(1) {
		case 1:
			writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Bad credentials"})
		case 2:
			writeJSON(w, http.StatusForbidden, map[string]string{"message": "Resource not accessible by integration"})
		default:
			writeJSON(w, http.StatusOK, map[string]any{"total_count": 0, "runners": []any{}})
		}
	})
	ctx := context.Background()
	scope := Scope{Owner: "acme", Repo: "widgets"}
	if _, err := h.client.ListRunners(ctx, testInst, scope); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("401: err = %v", err)
	}
	if _, err := h.client.ListRunners(ctx, testInst, scope); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("403: err = %v", err)
	}
	if n := h.tokenRequests.Load(); n != 2 {
		t.Errorf("%d token requests, want 2 (the 401 drops the cached token)", n)
	}
	if _, err := h.client.ListRunners(ctx, testInst, scope); err != nil {
		t.Fatal(err)
	}
}

func TestEnterpriseBaseURLPathKept(t *testing.T) {
	var paths recorder
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths.Add(r.Method + " " + r.URL.Path)
		switch r.URL.Path {
		case "/api/v3/app/installations/77/access_tokens":
			writeJSON(w, http.StatusCreated, map[string]any{"token": "ghs_x", "expires_at": time.Now().Add(time.Hour).Format(time.RFC3339)})
		case "/api/v3/repos/acme/widgets/actions/jobs/1":
			writeJSON(w, http.StatusOK, jobJSON(1, 1, "queued"))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	c, err := New(Config{BaseURL: srv.URL + "/api/v3", AppID: testAppID, PrivateKey: testKey(t), HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetJob(context.Background(), testInst, "acme/widgets", 1); err != nil {
		t.Fatal(err)
	}
	want := []string{"POST /api/v3/app/installations/77/access_tokens", "GET /api/v3/repos/acme/widgets/actions/jobs/1"}
	if !slices.Equal(paths.Items(), want) {
		t.Errorf("paths = %v", paths.Items())
	}
}

func TestCredentialsOnlySentToAPIHost(t *testing.T) {
	var leaked atomic.Value
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked.Store(r.Header.Get("Authorization"))
		_, _ = io.WriteString(w, "{}")
	}))
	defer other.Close()
	h := newHarness(t)
	req, err := http.NewRequestWithContext(asInstallation(context.Background(), testInst), http.MethodGet, other.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := h.client.gh.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if v, _ := leaked.Load().(string); v != "" {
		t.Errorf("credential sent to a foreign host: %q", v)
	}
}

func TestListRunnerGroups(t *testing.T) {
	h := newHarness(t)
	const total = 130
	var calls atomic.Int64
	h.mux.HandleFunc("GET /orgs/acme/actions/runner-groups", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if !h.requireInstallation(w, r, testInst) {
			return
		}
		if v := r.URL.Query().Get("visible_to_repository"); v != "widgets" {
			t.Errorf("visible_to_repository = %q", v)
		}
		page := pageOf(t, r)
		var gs []map[string]any
		for id := (page-1)*100 + 1; id <= min(page*100, total); id++ {
			gs = append(gs, map[string]any{"id": id, "name": fmt.Sprintf("g%d", id), "visibility": "selected",
				"default": id == 1, "allows_public_repositories": id%2 == 0, "restricted_to_workflows": id == 3,
				"inherited": false, "selected_workflows": []string{}})
		}
		if page*100 < total {
			setNextLink(w, r, h.srv.URL, page+1)
		}
		writeJSON(w, http.StatusOK, map[string]any{"total_count": total, "runner_groups": gs})
	})
	got, err := h.client.ListRunnerGroups(context.Background(), testInst, "acme", "widgets")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != total || calls.Load() != 2 {
		t.Fatalf("got %d groups in %d calls", len(got), calls.Load())
	}
	want := RunnerGroup{ID: 3, Name: "g3", Visibility: "selected", RestrictedToWorkflows: true}
	if got[2] != want || !got[0].Default || !got[1].AllowsPublicRepos {
		t.Errorf("groups %+v %+v %+v", got[0], got[1], got[2])
	}
	for _, bad := range []struct{ org, repo string }{{"", ""}, {"acme/x", ""}, {"acme", "../x"}} {
		if _, err := h.client.ListRunnerGroups(context.Background(), testInst, bad.org, bad.repo); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("ListRunnerGroups(%q, %q) = %v", bad.org, bad.repo, err)
		}
	}
}

// A commit status with a bad argument is refused before any request.
func TestCreateCommitStatusInvalid(t *testing.T) {
	h := newHarness(t)
	sha := strings.Repeat("a", 40)
	ok := CommitStatus{State: "success", Context: "tandem/parity"}
	for _, c := range []struct {
		inst      int64
		repo, sha string
		st        CommitStatus
	}{
		{0, "acme/app", sha, ok}, {testInst, "acme", sha, ok}, {testInst, "acme/app", "abc", ok},
		{testInst, "acme/app", strings.ToUpper(sha), ok}, {testInst, "acme/app", sha, CommitStatus{State: "done", Context: "c"}},
		{testInst, "acme/app", sha, CommitStatus{State: "success"}},
	} {
		if err := h.client.CreateCommitStatus(context.Background(), c.inst, c.repo, c.sha, c.st); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%+v: %v", c, err)
		}
	}
}
