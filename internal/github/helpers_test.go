package github

import (
	"github.com/tandem-ci/tandem/internal/syncbuf"

	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const testAppID = 4242

var (
	testKeyOnce sync.Once
	testKeyVal  *rsa.PrivateKey
)

// testKey is one 2048-bit key shared by the package's tests.
func testKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	testKeyOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		testKeyVal = k
	})
	return testKeyVal
}

// fakeClock is a manually advanced clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// sleepRecorder is an injectable Sleep that records durations and advances
// the fake clock instead of sleeping.
type sleepRecorder struct {
	clock *fakeClock
	mu    sync.Mutex
	waits []time.Duration
}

func (s *sleepRecorder) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	s.waits = append(s.waits, d)
	s.mu.Unlock()
	s.clock.Advance(d)
	return nil
}

func (s *sleepRecorder) Waits() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.waits...)
}

// harness is a Client wired to an httptest server that serves installation
// tokens and whatever handlers a test registers on mux.
type harness struct {
	t      *testing.T
	mux    *http.ServeMux
	srv    *httptest.Server
	clock  *fakeClock
	sleeps *sleepRecorder
	logs   *syncbuf.Buffer
	client *Client

	tokenRequests atomic.Int64
	mu            sync.Mutex
	tokens        map[string]int64 // issued installation token → installation
	jwts          map[string]bool  // JWTs seen
}

type harnessOption func(*Config)

func newHarness(t *testing.T, opts ...harnessOption) *harness {
	t.Helper()
	h := &harness{
		t:      t,
		mux:    http.NewServeMux(),
		clock:  newFakeClock(),
		logs:   &syncbuf.Buffer{},
		tokens: make(map[string]int64),
		jwts:   make(map[string]bool),
	}
	h.sleeps = &sleepRecorder{clock: h.clock}
	h.mux.HandleFunc("POST /app/installations/{id}/access_tokens", h.serveToken)
	h.srv = httptest.NewServer(h.mux)
	t.Cleanup(h.srv.Close)

	cfg := Config{
		BaseURL:    h.srv.URL + "/",
		AppID:      testAppID,
		PrivateKey: testKey(t),
		HTTPClient: h.srv.Client(),
		Logger:     slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:        h.clock.Now,
		Sleep:      h.sleeps.Sleep,
	}
	for _, o := range opts {
		o(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.client = c
	return h
}

func (h *harness) serveToken(w http.ResponseWriter, r *http.Request) {
	if err := h.checkJWT(r); err != nil {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": err.Error()})
		return
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
		return
	}
	n := h.tokenRequests.Add(1)
	tok := fmt.Sprintf("ghs_inst%d_secret%d", id, n)
	h.mu.Lock()
	h.tokens[tok] = id
	h.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{
		"token":      tok,
		"expires_at": h.clock.Now().Add(time.Hour).Format(time.RFC3339),
	})
}

// checkJWT verifies the request's App JWT with the public key.
func (h *harness) checkJWT(r *http.Request) error {
	raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return fmt.Errorf("no bearer token")
	}
	claims, err := verifyJWT(raw, &testKey(h.t).PublicKey, h.clock.Now)
	if err != nil {
		return err
	}
	if claims.Issuer != strconv.Itoa(testAppID) {
		return fmt.Errorf("issuer %q", claims.Issuer)
	}
	h.mu.Lock()
	h.jwts[raw] = true
	h.mu.Unlock()
	return nil
}

// requireApp fails the request unless it carries a valid App JWT.
func (h *harness) requireApp(w http.ResponseWriter, r *http.Request) bool {
	if err := h.checkJWT(r); err != nil {
		h.t.Errorf("%s %s: bad app jwt: %v", r.Method, r.URL.Path, err)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Bad credentials"})
		return false
	}
	return true
}

// requireInstallation fails the request unless it carries a token issued for
// the installation.
func (h *harness) requireInstallation(w http.ResponseWriter, r *http.Request, id int64) bool {
	raw, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	h.mu.Lock()
	got, ok := h.tokens[raw]
	h.mu.Unlock()
	if !ok || got != id {
		h.t.Errorf("%s %s: authorization is not a token of installation %d", r.Method, r.URL.Path, id)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Bad credentials"})
		return false
	}
	return true
}

// secrets returns every token and JWT the server has issued or seen.
func (h *harness) secrets() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for tok := range h.tokens {
		out = append(out, tok)
	}
	for j := range h.jwts {
		out = append(out, j)
	}
	return out
}

func verifyJWT(raw string, pub *rsa.PublicKey, now func() time.Time) (*jwt.RegisteredClaims, error) {
	claims := &jwt.RegisteredClaims{}
	_, err := jwt.ParseWithClaims(raw, claims, func(tok *jwt.Token) (any, error) {
		return pub, nil
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithTimeFunc(now), jwt.WithIssuedAt(), jwt.WithExpirationRequired())
	if err != nil {
		return nil, err
	}
	return claims, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// setNextLink sets a Link header pointing at page next of the same request.
func setNextLink(w http.ResponseWriter, r *http.Request, base string, next int) {
	u := *r.URL
	q := u.Query()
	q.Set("page", strconv.Itoa(next))
	u.RawQuery = q.Encode()
	w.Header().Set("Link", fmt.Sprintf(`<%s%s>; rel="next"`, base, u.RequestURI()))
}

// pageOf returns the request's page number (1 if absent).
func pageOf(t *testing.T, r *http.Request) int {
	t.Helper()
	p := r.URL.Query().Get("page")
	if p == "" {
		return 1
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Errorf("bad page %q", p)
	}
	return n
}

// recorder is a goroutine-safe list of strings, for handlers to record what
// they saw.
type recorder struct {
	mu    sync.Mutex
	items []string
}

func (r *recorder) Add(s string) {
	r.mu.Lock()
	r.items = append(r.items, s)
	r.mu.Unlock()
}

func (r *recorder) Items() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.items...)
}

func (r *recorder) Reset() {
	r.mu.Lock()
	r.items = nil
	r.mu.Unlock()
}

func (r *recorder) Count(s string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, it := range r.items {
		if it == s {
			n++
		}
	}
	return n
}
