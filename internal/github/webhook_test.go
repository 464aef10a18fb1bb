package github

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func sign(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

func TestVerifySignature(t *testing.T) {
	secret := []byte("It's a Secret to Everybody")
	body := []byte("Hello, World!")
	// The example from GitHub's "Validating webhook deliveries" documentation.
	const documented = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
	if err := VerifySignature(secret, body, documented); err != nil {
		t.Fatalf("documented example: %v", err)
	}
	if err := VerifySignature(secret, body, sign(secret, body)); err != nil {
		t.Fatalf("good signature: %v", err)
	}

	// Each failure names its cause: a sender fixing its set-up needs to
	// know which, and none of them tells a forger anything of the secret.
	bad := map[string]struct {
		secret []byte
		body   []byte
		header string
		says   string
	}{
		"missing":       {secret, body, "", "missing X-Hub-Signature-256"},
		"no prefix":     {secret, body, strings.TrimPrefix(documented, "sha256="), `does not start with "sha256="`},
		"sha1 prefix":   {secret, body, "sha1=" + strings.TrimPrefix(documented, "sha256="), `unsupported algorithm "sha1"`},
		"short":         {secret, body, documented[:len(documented)-2], "malformed X-Hub-Signature-256: want 64 hex digits"},
		"not hex":       {secret, body, "sha256=" + strings.Repeat("zz", 32), "malformed X-Hub-Signature-256"},
		"wrong body":    {secret, []byte("Hello, World?"), documented, "signature does not match"},
		"wrong secret":  {[]byte("other"), body, documented, "signature does not match"},
		"no secret":     {nil, body, sign(nil, body), "no webhook secret configured"},
		"flipped digit": {secret, body, documented[:len(documented)-1] + "8", "signature does not match"},
	}
	for name, tc := range bad {
		err := VerifySignature(tc.secret, tc.body, tc.header)
		if !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s: err = %v, want ErrBadSignature", name, err)
		}
		if err != nil && !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: err = %v, want it to say %q", name, err, tc.says)
		}
		if err != nil && strings.Contains(err.Error(), string(secret)) {
			t.Errorf("%s: error leaks secret", name)
		}
	}
}

// sampleEvent is a workflow_job payload shaped like GitHub's documented
// example, trimmed, with the null fields GitHub sends for a queued job.
const sampleEvent = `{
  "action": "queued",
  "workflow_job": {
    "id": 2832853555, "run_id": 940463255, "workflow_name": "Build", "head_branch": "main",
    "run_url": "https://api.github.com/repos/octo-org/example-workflow/actions/runs/940463255",
    "run_attempt": 1, "node_id": "MDg6Q2hlY2tSdW4yODMyODUzNTU1",
    "head_sha": "e3103f8eb03e1ad7f2331c5446b23c070fc54055",
    "html_url": "https://github.com/octo-org/example-workflow/runs/2832853555",
    "status": "queued", "conclusion": null,
    "created_at": "2021-06-15T19:22:20Z", "started_at": "2021-06-15T19:22:27Z", "completed_at": null,
    "name": "Test workflow", "steps": [], "labels": ["self-hosted", "tandem-4cpu-8gb"],
    "runner_id": null, "runner_name": null, "runner_group_id": null, "runner_group_name": null
  },
  "repository": {
    "id": 376034443, "name": "example-workflow", "full_name": "octo-org/example-workflow", "private": true,
    "owner": {"login": "octo-org", "id": 33435682, "type": "Organization"}
  },
  "organization": {"login": "octo-org", "id": 33435682},
  "installation": {"id": 17, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMTc="},
  "sender": {"login": "octocat", "id": 319655, "type": "User"},
  "enterprise": {"slug": "ignored"}
}`

func TestParseWorkflowJobEvent(t *testing.T) {
	ev, err := ParseWorkflowJobEvent([]byte(sampleEvent))
	if err != nil {
		t.Fatal(err)
	}
	want := WorkflowJobEvent{
		Action: "queued",
		Job: Job{
			ID: 2832853555, RunID: 940463255, RunAttempt: 1, Repo: "octo-org/example-workflow",
			Name: "Test workflow", WorkflowName: "Build", Status: "queued",
			HeadBranch: "main", HeadSHA: "e3103f8eb03e1ad7f2331c5446b23c070fc54055",
			HTMLURL:   "https://github.com/octo-org/example-workflow/runs/2832853555",
			Labels:    []string{"self-hosted", "tandem-4cpu-8gb"},
			CreatedAt: time.Date(2021, 6, 15, 19, 22, 20, 0, time.UTC),
			StartedAt: time.Date(2021, 6, 15, 19, 22, 27, 0, time.UTC),
		},
		Repo:           Repository{ID: 376034443, FullName: "octo-org/example-workflow", Owner: "octo-org", Name: "example-workflow", Visibility: "private"},
		Org:            "octo-org",
		InstallationID: 17,
		Sender:         "octocat",
	}
	if !reflect.DeepEqual(ev, want) {
		t.Errorf("got  %+v\nwant %+v", ev, want)
	}

	completed := strings.NewReplacer(
		`"action": "queued"`, `"action": "completed"`,
		`"status": "queued", "conclusion": null`, `"status": "completed", "conclusion": "success"`,
		`"completed_at": null`, `"completed_at": "2021-06-15T19:23:00Z"`,
		`"runner_id": null, "runner_name": null, "runner_group_id": null`, `"runner_id": 3, "runner_name": "tandem-x", "runner_group_id": 1`,
		`"organization": {"login": "octo-org", "id": 33435682},`, ``,
	).Replace(sampleEvent)
	ev, err = ParseWorkflowJobEvent([]byte(completed))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Action != ActionCompleted || ev.Job.Conclusion != "success" || ev.Job.RunnerID != 3 ||
		ev.Job.RunnerName != "tandem-x" || ev.Job.RunnerGroupID != 1 || ev.Org != "" ||
		!ev.Job.CompletedAt.Equal(time.Date(2021, 6, 15, 19, 23, 0, 0, time.UTC)) {
		t.Errorf("completed event = %+v", ev)
	}
}

func TestParseWorkflowJobEventMalformed(t *testing.T) {
	cases := map[string]string{
		"not json":          `{`,
		"array":             `[]`,
		"trailing garbage":  sampleEvent + `x`,
		"unknown action":    strings.Replace(sampleEvent, `"action": "queued"`, `"action": "requested"`, 1),
		"no action":         strings.Replace(sampleEvent, `"action": "queued",`, ``, 1),
		"no job id":         strings.Replace(sampleEvent, `"id": 2832853555,`, ``, 1),
		"job id string":     strings.Replace(sampleEvent, `"id": 2832853555`, `"id": "2832853555"`, 1),
		"no workflow_job":   `{"action":"queued","repository":{"full_name":"a/b"},"installation":{"id":1}}`,
		"no full_name":      strings.Replace(sampleEvent, `"full_name": "octo-org/example-workflow",`, ``, 1),
		"bad full_name":     strings.Replace(sampleEvent, `"full_name": "octo-org/example-workflow"`, `"full_name": "octo-org"`, 1),
		"no installation":   strings.Replace(sampleEvent, `"installation": {"id": 17, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMTc="},`, ``, 1),
		"installation zero": strings.Replace(sampleEvent, `"installation": {"id": 17`, `"installation": {"id": 0`, 1),
		"bad time":          strings.Replace(sampleEvent, `"2021-06-15T19:22:20Z"`, `"yesterday"`, 1),
	}
	for name, body := range cases {
		if body == sampleEvent {
			t.Fatalf("%s: replacement did not apply", name)
		}
		if _, err := ParseWorkflowJobEvent([]byte(body)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
}

func FuzzParseWorkflowJobEvent(f *testing.F) {
	f.Add([]byte(sampleEvent))
	f.Add([]byte(`{"action":"waiting","workflow_job":{"id":1},"repository":{"full_name":"a/b"},"installation":{"id":1}}`))
	f.Add([]byte(`{"action":null,"workflow_job":null}`))
	f.Add([]byte(`null`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := ParseWorkflowJobEvent(body)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if ev.Job.ID <= 0 || ev.InstallationID <= 0 || ev.Job.Repo != ev.Repo.FullName || !strings.Contains(ev.Repo.FullName, "/") {
			t.Fatalf("accepted an invalid event: %+v", ev)
		}
	})
}

// Installation webhooks as GitHub documents them (trimmed): what happened,
// to which installation, and which repositories left it.
func TestParseInstallationEvent(t *testing.T) {
	ev, err := ParseInstallationEvent("installation", []byte(`{"action":"suspend",
		"installation":{"id":2,"account":{"login":"octo-org","type":"Organization"},"app_id":1},
		"sender":{"login":"octocat"}}`))
	if err != nil || ev.Action != "suspend" || ev.InstallationID != 2 || ev.Account != "octo-org" || ev.Sender != "octocat" {
		t.Errorf("installation suspend: %+v, %v", ev, err)
	}
	ev, err = ParseInstallationEvent("installation_repositories", []byte(`{"action":"removed",
		"installation":{"id":2,"account":{"login":"octo-org"}},"repository_selection":"selected",
		"repositories_added":[],"repositories_removed":[{"id":1,"name":"a","full_name":"octo-org/a","private":true}]}`))
	if err != nil || !slices.Equal(ev.Removed, []string{"octo-org/a"}) {
		t.Errorf("installation_repositories removed: %+v, %v", ev, err)
	}
	for name, c := range map[string]struct{ event, body string }{
		"not JSON":        {"installation", `{`},
		"no installation": {"installation", `{"action":"deleted"}`},
		"no action":       {"installation", `{"installation":{"id":2}}`},
		"bad repository":  {"installation_repositories", `{"action":"removed","installation":{"id":2},"repositories_removed":[{"full_name":"a/b/c"}]}`},
		"other event":     {"push", `{"action":"x","installation":{"id":2}}`},
	} {
		if _, err := ParseInstallationEvent(c.event, []byte(c.body)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

// A repository's visibility: its payload's visibility field, else its
// private flag, else not known.
func TestVisibility(t *testing.T) {
	yes, no := true, false
	for _, c := range []struct {
		v       string
		private *bool
		want    string
	}{{"public", &yes, "public"}, {"Internal", nil, "internal"}, {"", &yes, "private"}, {"", &no, "public"}, {"", nil, ""}, {"odd", nil, ""}} {
		if got := visibility(c.v, c.private); got != c.want {
			t.Errorf("visibility(%q, %v) = %q, want %q", c.v, c.private, got, c.want)
		}
	}
}
