package ghfake_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/github/ghfake/runnerapi"
)

const (
	appID      = 4242
	hookSecret = "It's a Secret to Everybody"
)

var testKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

// clock is real time plus an adjustable offset.
type clock struct{ off atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *clock) Advance(d time.Duration) { c.off.Add(int64(d)) }

// hook is a received webhook.
type hook struct {
	Header http.Header
	Body   []byte
}

// sink is a webhook receiver.
type sink struct {
	*httptest.Server
	status atomic.Int32
	delay  atomic.Int64
	mu     sync.Mutex
	got    []hook
}

func newSink(t *testing.T) *sink {
	s := &sink{}
	s.status.Store(http.StatusOK)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if d := time.Duration(s.delay.Load()); d > 0 {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
			}
		}
		s.mu.Lock()
		s.got = append(s.got, hook{Header: r.Header.Clone(), Body: body})
		s.mu.Unlock()
		w.WriteHeader(int(s.status.Load()))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *sink) hooks() []hook {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]hook(nil), s.got...)
}

// byGUID counts received webhooks per delivery guid.
func (s *sink) byGUID() map[string]int {
	n := map[string]int{}
	for _, h := range s.hooks() {
		n[h.Header.Get("X-GitHub-Delivery")]++
	}
	return n
}

// jobHook is the part of a workflow_job payload tests look at.
type jobHook struct {
	Action      string `json:"action"`
	WorkflowJob struct {
		ID              int64    `json:"id"`
		RunID           int64    `json:"run_id"`
		RunAttempt      int      `json:"run_attempt"`
		Status          string   `json:"status"`
		Conclusion      *string  `json:"conclusion"`
		Labels          []string `json:"labels"`
		RunnerID        *int64   `json:"runner_id"`
		RunnerName      *string  `json:"runner_name"`
		RunnerGroupID   *int64   `json:"runner_group_id"`
		RunnerGroupName *string  `json:"runner_group_name"`
	} `json:"workflow_job"`
}

func (s *sink) jobHooks(t *testing.T) []jobHook {
	t.Helper()
	var out []jobHook
	for _, h := range s.hooks() {
		var jh jobHook
		if err := json.Unmarshal(h.Body, &jh); err != nil {
			t.Fatalf("webhook body: %v", err)
		}
		out = append(out, jh)
	}
	return out
}

// fixture is a ghfake behind httptest with a webhook sink.
type fixture struct {
	t     *testing.T
	clock *clock
	srv   *ghfake.Server
	api   *httptest.Server
	sink  *sink
}

func newFixture(t *testing.T, tweak ...func(*ghfake.Config)) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: &clock{}, sink: newSink(t)}
	cfg := ghfake.Config{
		AppID: appID, AppPublicKey: &testKey().PublicKey, WebhookURL: f.sink.URL,
		WebhookSecret: []byte(hookSecret), Seed: 1, Now: f.clock.Now,
	}
	for _, fn := range tweak {
		fn(&cfg)
	}
	f.srv = ghfake.New(cfg)
	f.api = httptest.NewServer(f.srv.Handler())
	t.Cleanup(func() {
		f.srv.Close() // ends long polls, which api.Close would wait for
		f.api.Close()
	})
	return f
}

func signJWT(t *testing.T, key *rsa.PrivateKey, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodRS256, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// jwt returns a valid App JWT.
func (f *fixture) jwt() string {
	now := f.clock.Now()
	return signJWT(f.t, testKey(), jwt.MapClaims{
		"iat": now.Add(-30 * time.Second).Unix(), "exp": now.Add(9 * time.Minute).Unix(),
		"iss": strconv.Itoa(appID),
	})
}

// do sends a request and returns the answer with its body read.
func (f *fixture) do(method, path, auth string, body any) (*http.Response, []byte) {
	f.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			f.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, f.api.URL+path, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := f.api.Client().Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	return resp, b
}

// expect sends a request, checks the status and decodes the body into out.
func (f *fixture) expect(code int, method, path, auth string, body, out any) *http.Response {
	f.t.Helper()
	resp, b := f.do(method, path, auth, body)
	if resp.StatusCode != code {
		f.t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, code, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			f.t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
	return resp
}

// token returns an installation token.
func (f *fixture) token(inst int64) string {
	f.t.Helper()
	var tok struct {
		Token     string    `json:"token"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	f.expect(http.StatusCreated, "POST", fmt.Sprintf("/app/installations/%d/access_tokens", inst), "Bearer "+f.jwt(), nil, &tok)
	if tok.Token == "" {
		f.t.Fatal("empty installation token")
	}
	return "token " + tok.Token
}

type jitAnswer struct {
	Runner struct {
		ID     int64  `json:"id"`
		Name   string `json:"name"`
		OS     string `json:"os"`
		Status string `json:"status"`
		Busy   bool   `json:"busy"`
		Labels []struct {
			ID   int64  `json:"id"`
			Name string `json:"name"`
			Type string `json:"type"`
		} `json:"labels"`
	} `json:"runner"`
	EncodedJITConfig string `json:"encoded_jit_config"`
}

// jit registers a JIT runner at scopePath ("/repos/o/r" or "/orgs/o").
func (f *fixture) jit(tok, scopePath, name string, labels ...string) jitAnswer {
	f.t.Helper()
	var a jitAnswer
	f.expect(http.StatusCreated, "POST", scopePath+"/actions/runners/generate-jitconfig", tok,
		map[string]any{"name": name, "runner_group_id": 1, "labels": labels}, &a)
	return a
}

// session opens a runner session directly with the protocol.
func (f *fixture) session(encoded string) string {
	f.t.Helper()
	cfg, err := runnerapi.DecodeJITConfig(encoded)
	if err != nil {
		f.t.Fatal(err)
	}
	var s runnerapi.Session
	f.expect(http.StatusOK, "POST", runnerapi.PathSession, runnerapi.SchemeRunnerToken+" "+cfg.Token, nil, &s)
	return runnerapi.SchemeRunnerSession + " " + s.Token
}

// acquire long-polls once; it returns the job id, or 0 for 204.
func (f *fixture) acquire(sess string, wait time.Duration) int64 {
	f.t.Helper()
	resp, b := f.do("POST", runnerapi.PathAcquire+"?wait="+wait.String(), sess, nil)
	switch resp.StatusCode {
	case http.StatusNoContent:
		return 0
	case http.StatusOK:
		var j runnerapi.Job
		if err := json.Unmarshal(b, &j); err != nil {
			f.t.Fatal(err)
		}
		return j.ID
	}
	f.t.Fatalf("acquire: status %d: %s", resp.StatusCode, b)
	return 0
}

func (f *fixture) complete(sess string, job int64, conclusion string) {
	f.t.Helper()
	f.expect(http.StatusNoContent, "POST", fmt.Sprintf("%s%d/complete", runnerapi.PathJobs, job), sess,
		runnerapi.Completion{Conclusion: conclusion}, nil)
}

func (f *fixture) job(id int64) ghfake.JobInfo {
	f.t.Helper()
	j, ok := f.srv.Job(id)
	if !ok {
		f.t.Fatalf("job %d not found", id)
	}
	return j
}

// verifySignatures checks both signatures of a received webhook.
func verifySignatures(t *testing.T, h hook) {
	t.Helper()
	m256 := hmac.New(sha256.New, []byte(hookSecret))
	m256.Write(h.Body)
	if got, want := h.Header.Get("X-Hub-Signature-256"), "sha256="+hex.EncodeToString(m256.Sum(nil)); !hmac.Equal([]byte(got), []byte(want)) {
		t.Errorf("X-Hub-Signature-256 = %q, want %q", got, want)
	}
	m1 := hmac.New(sha1.New, []byte(hookSecret))
	m1.Write(h.Body)
	if got, want := h.Header.Get("X-Hub-Signature"), "sha1="+hex.EncodeToString(m1.Sum(nil)); got != want {
		t.Errorf("X-Hub-Signature = %q, want %q", got, want)
	}
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
