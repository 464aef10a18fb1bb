package github

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// rlFixture is a RateLimitTransport in front of a scripted server: response
// n (0-based) is produced by script(n, w, r).
type rlFixture struct {
	t      *testing.T
	srv    *httptest.Server
	clock  *fakeClock
	sleeps *sleepRecorder
	rt     *RateLimitTransport
	hc     *http.Client
	hits   atomic.Int64
	bodies recorder
}

func newRLFixture(t *testing.T, script func(n int, w http.ResponseWriter, r *http.Request)) *rlFixture {
	t.Helper()
	f := &rlFixture{t: t, clock: newFakeClock()}
	f.sleeps = &sleepRecorder{clock: f.clock}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.bodies.Add(string(b))
		script(int(f.hits.Add(1)-1), w, r)
	}))
	t.Cleanup(f.srv.Close)
	f.rt = &RateLimitTransport{Base: f.srv.Client().Transport, Now: f.clock.Now, Sleep: f.sleeps.Sleep}
	f.hc = &http.Client{Transport: f.rt}
	return f
}

func (f *rlFixture) do(ctx context.Context, method, body, auth string) (*http.Response, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, f.srv.URL+"/x", rd)
	if err != nil {
		f.t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := f.hc.Do(req)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp, err
}

func (f *rlFixture) epoch(d time.Duration) string {
	return strconv.FormatInt(f.clock.Now().Add(d).Unix(), 10)
}

func TestRateLimit429RetryAfter(t *testing.T) {
	f := newRLFixture(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 0 {
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	resp, err := f.do(context.Background(), http.MethodPost, `{"a":1}`, "Bearer t")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("resp %v, err %v", resp, err)
	}
	if got := f.sleeps.Waits(); !slices.Equal(got, []time.Duration{7 * time.Second}) {
		t.Errorf("waits = %v", got)
	}
	// The POST body was replayed on the retry.
	if got := f.bodies.Items(); !slices.Equal(got, []string{`{"a":1}`, `{"a":1}`}) {
		t.Errorf("bodies = %q", got)
	}
	s := f.rt.Stats.Snapshot()
	if s.Requests != 2 || s.RateLimited != 1 || s.Retries != 1 || s.Waits != 1 || s.WaitTime != 7*time.Second {
		t.Errorf("stats = %+v", s)
	}
}

func TestRateLimit403PrimaryWaitsForReset(t *testing.T) {
	var f *rlFixture
	f = newRLFixture(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 0 {
			w.Header().Set("X-RateLimit-Remaining", "0")
			w.Header().Set("X-RateLimit-Reset", f.epoch(30*time.Second))
			w.WriteHeader(http.StatusForbidden)
			return
		}
		w.Header().Set("X-RateLimit-Remaining", "4999")
		w.WriteHeader(http.StatusOK)
	})
	resp, err := f.do(context.Background(), http.MethodGet, "", "Bearer t")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("resp %v, err %v", resp, err)
	}
	if got := f.sleeps.Waits(); !slices.Equal(got, []time.Duration{30 * time.Second}) {
		t.Errorf("waits = %v, want [30s]", got)
	}
	// The quota is back: no more holding.
	if _, err := f.do(context.Background(), http.MethodGet, "", "Bearer t"); err != nil {
		t.Fatal(err)
	}
	if n := len(f.sleeps.Waits()); n != 1 {
		t.Errorf("%d waits, want 1", n)
	}
}

func TestRateLimitExhaustedRetries(t *testing.T) {
	f := newRLFixture(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	f.rt.MaxRetries = 2
	_, err := f.do(context.Background(), http.MethodGet, "", "Bearer t")
	if !errors.Is(err, ErrRateLimited) {
		t.Fatalf("err = %v, want ErrRateLimited", err)
	}
	if n := f.hits.Load(); n != 3 {
		t.Errorf("%d requests, want 3", n)
	}
	if s := f.rt.Stats.Snapshot(); s.Exhausted != 1 || s.Retries != 2 {
		t.Errorf("stats = %+v", s)
	}

	f.rt.MaxRetries = -1 // no retries at all
	f.hits.Store(0)
	if _, err := f.do(context.Background(), http.MethodGet, "", "Bearer t"); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("err = %v", err)
	}
	if n := f.hits.Load(); n != 1 {
		t.Errorf("%d requests with retries disabled, want 1", n)
	}
}

func TestRateLimitWaitOverCap(t *testing.T) {
	f := newRLFixture(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "3600")
		w.WriteHeader(http.StatusForbidden)
	})
	_, err := f.do(context.Background(), http.MethodGet, "", "Bearer t")
	if !errors.Is(err, ErrRateLimited) {
		t.Fatalf("err = %v, want ErrRateLimited", err)
	}
	if w := f.sleeps.Waits(); len(w) != 0 {
		t.Errorf("slept %v despite the cap", w)
	}
}

func TestRateLimitContextCancelledDuringWait(t *testing.T) {
	f := newRLFixture(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	f.rt.Sleep = nil // really sleep, so cancellation must cut it short
	f.rt.Now = nil
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := f.do(ctx, http.MethodGet, "", "Bearer t")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v; cancellation did not interrupt the wait", d)
	}
	if n := f.hits.Load(); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

func TestServerErrorRetriedForIdempotentOnly(t *testing.T) {
	fail := func(times int) func(int, http.ResponseWriter, *http.Request) {
		return func(n int, w http.ResponseWriter, r *http.Request) {
			if n < times {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			w.WriteHeader(http.StatusOK)
		}
	}

	f := newRLFixture(t, fail(1))
	resp, err := f.do(context.Background(), http.MethodGet, "", "Bearer t")
	if err != nil || resp.StatusCode != http.StatusOK || f.hits.Load() != 2 {
		t.Fatalf("GET: resp %v err %v hits %d", resp, err, f.hits.Load())
	}
	if w := f.sleeps.Waits(); len(w) != 1 || w[0] < 500*time.Millisecond || w[0] > time.Second {
		t.Errorf("backoff waits = %v, want one in [0.5s, 1s]", w)
	}
	if s := f.rt.Stats.Snapshot(); s.ServerErrorRetries != 1 {
		t.Errorf("stats = %+v", s)
	}

	f = newRLFixture(t, fail(1))
	resp, err = f.do(context.Background(), http.MethodDelete, "", "Bearer t")
	if err != nil || resp.StatusCode != http.StatusOK || f.hits.Load() != 2 {
		t.Fatalf("DELETE: resp %v err %v hits %d", resp, err, f.hits.Load())
	}

	f = newRLFixture(t, fail(1))
	resp, err = f.do(context.Background(), http.MethodPost, "{}", "Bearer t")
	if err != nil || resp.StatusCode != http.StatusServiceUnavailable || f.hits.Load() != 1 {
		t.Fatalf("POST: resp %v err %v hits %d", resp, err, f.hits.Load())
	}

	f = newRLFixture(t, fail(100))
	resp, err = f.do(context.Background(), http.MethodGet, "", "Bearer t")
	if err != nil || resp.StatusCode != http.StatusServiceUnavailable || f.hits.Load() != 3 {
		t.Fatalf("persistent 503: resp %v err %v hits %d (want 503 after 3 tries)", resp, err, f.hits.Load())
	}
}

func TestRateLimitProactiveHold(t *testing.T) {
	var f *rlFixture
	var arrivals recorder
	f = newRLFixture(t, func(n int, w http.ResponseWriter, r *http.Request) {
		arrivals.Add(f.clock.Now().Format(time.TimeOnly) + " " + r.Header.Get("Authorization"))
		if n == 0 {
			w.Header().Set("X-RateLimit-Remaining", "0")
			w.Header().Set("X-RateLimit-Reset", f.epoch(20*time.Second))
		}
		w.WriteHeader(http.StatusOK)
	})
	start := f.clock.Now()
	ctx := context.Background()
	if _, err := f.do(ctx, http.MethodGet, "", "Bearer a"); err != nil {
		t.Fatal(err)
	}
	// Another credential is not held.
	if _, err := f.do(ctx, http.MethodGet, "", "Bearer b"); err != nil {
		t.Fatal(err)
	}
	if w := f.sleeps.Waits(); len(w) != 0 {
		t.Fatalf("other credential waited %v", w)
	}
	// The exhausted credential waits for the reset before its next request.
	if _, err := f.do(ctx, http.MethodGet, "", "Bearer a"); err != nil {
		t.Fatal(err)
	}
	if w := f.sleeps.Waits(); !slices.Equal(w, []time.Duration{20 * time.Second}) {
		t.Errorf("waits = %v, want [20s]", w)
	}
	want := []string{
		start.Format(time.TimeOnly) + " Bearer a",
		start.Format(time.TimeOnly) + " Bearer b",
		start.Add(20*time.Second).Format(time.TimeOnly) + " Bearer a",
	}
	if got := arrivals.Items(); !slices.Equal(got, want) {
		t.Errorf("arrivals = %v\nwant %v", got, want)
	}
}

func TestRateLimitHoldBeyondCapFailsFast(t *testing.T) {
	var f *rlFixture
	f = newRLFixture(t, func(n int, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-RateLimit-Remaining", "0")
		w.Header().Set("X-RateLimit-Reset", f.epoch(30*time.Minute))
		w.WriteHeader(http.StatusOK)
	})
	if _, err := f.do(context.Background(), http.MethodGet, "", "Bearer a"); err != nil {
		t.Fatal(err)
	}
	_, err := f.do(context.Background(), http.MethodPost, "{}", "Bearer a")
	if !errors.Is(err, ErrRateLimited) {
		t.Fatalf("err = %v, want ErrRateLimited", err)
	}
	if n := f.hits.Load(); n != 1 {
		t.Errorf("held request reached the server (%d hits)", n)
	}
}

func TestRateLimitSecondaryWithoutHeaders(t *testing.T) {
	f := newRLFixture(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 0 {
			writeJSON(w, http.StatusForbidden, map[string]string{
				"message":           "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
				"documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
			})
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	resp, err := f.do(context.Background(), http.MethodGet, "", "Bearer t")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("resp %v err %v", resp, err)
	}
	if w := f.sleeps.Waits(); !slices.Equal(w, []time.Duration{time.Minute}) {
		t.Errorf("waits = %v, want [1m]", w)
	}
}

func TestPlain403NotRetried(t *testing.T) {
	f := newRLFixture(t, func(n int, w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusForbidden, map[string]string{"message": "Resource not accessible by integration"})
	})
	resp, err := f.do(context.Background(), http.MethodGet, "", "Bearer t")
	if err != nil || resp.StatusCode != http.StatusForbidden || f.hits.Load() != 1 {
		t.Fatalf("resp %v err %v hits %d", resp, err, f.hits.Load())
	}
}

func TestRateLimitBackoffWithoutHints(t *testing.T) {
	f := newRLFixture(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n < 3 {
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	if _, err := f.do(context.Background(), http.MethodGet, "", "Bearer t"); err != nil {
		t.Fatal(err)
	}
	w := f.sleeps.Waits()
	if len(w) != 3 {
		t.Fatalf("waits = %v", w)
	}
	for i, d := range w {
		lo, hi := time.Second<<i/2, time.Second<<i
		if d < lo || d > hi {
			t.Errorf("wait %d = %v, want in [%v, %v]", i, d, lo, hi)
		}
	}
}

func TestClientRateLimitedError(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxRetries = 1 })
	var calls atomic.Int64
	h.mux.HandleFunc("GET /orgs/acme/actions/runners", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Retry-After", "2")
		writeJSON(w, http.StatusTooManyRequests, map[string]string{"message": "slow down"})
	})
	_, err := h.client.ListRunners(context.Background(), testInst, Scope{Owner: "acme"})
	if !errors.Is(err, ErrRateLimited) {
		t.Fatalf("err = %v, want ErrRateLimited", err)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("%d calls, want 2", n)
	}
	if s := h.client.Stats().Snapshot(); s.Exhausted != 1 || s.RateLimited != 2 {
		t.Errorf("stats = %+v", s)
	}
}

func TestAttemptTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	f := newRLFixture(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if n == 0 {
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		_, _ = io.WriteString(w, strings.Repeat("x", 1<<16))
	})
	f.rt.AttemptTimeout = 100 * time.Millisecond
	start := time.Now()
	_, err := f.do(context.Background(), http.MethodGet, "", "Bearer t")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("attempt not bounded: %v", d)
	}
	// The timeout covers the attempt, not the caller's later body read.
	f.rt.AttemptTimeout = time.Second
	req, _ := http.NewRequest(http.MethodGet, f.srv.URL, nil)
	resp, err := f.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || len(b) != 1<<16 {
		t.Fatalf("read %d bytes, err %v", len(b), err)
	}
}

// Background requests leave the last fifth of a credential's quota to the
// others: once a response reports less, a background request is refused
// unsent (other credentials and foreground requests go on) until the
// reset, or until a response reports more again.
func TestRateLimitReserveKeptFromBackground(t *testing.T) {
	var f *rlFixture
	remaining := 1200
	f = newRLFixture(t, func(n int, w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "Bearer a" {
			w.Header().Set("X-RateLimit-Limit", "5000")
			w.Header().Set("X-RateLimit-Remaining", strconv.Itoa(remaining))
			w.Header().Set("X-RateLimit-Reset", f.epoch(10*time.Minute))
		}
		w.WriteHeader(http.StatusOK)
	})
	bg := Background(context.Background())
	if _, err := f.do(bg, http.MethodGet, "", "Bearer a"); err != nil {
		t.Fatalf("the first background request: %v", err)
	}
	// 1200 of 5000 left: over a fifth.
	if _, err := f.do(bg, http.MethodGet, "", "Bearer a"); err != nil {
		t.Fatalf("background with 1200 of 5000 left: %v", err)
	}
	remaining = 999
	if _, err := f.do(context.Background(), http.MethodPost, "{}", "Bearer a"); err != nil {
		t.Fatal(err)
	}
	hits := f.hits.Load()
	_, err := f.do(bg, http.MethodGet, "", "Bearer a")
	if !errors.Is(err, ErrRateLimited) || !strings.Contains(err.Error(), "999 of 5000") || f.hits.Load() != hits {
		t.Fatalf("background with 999 of 5000 left: %v (%d hits, want %d: unsent)", err, f.hits.Load(), hits)
	}
	if _, err := f.do(context.Background(), http.MethodPost, "{}", "Bearer a"); err != nil {
		t.Errorf("foreground under the reserve: %v", err)
	}
	if _, err := f.do(bg, http.MethodGet, "", "Bearer b"); err != nil {
		t.Errorf("background of another credential: %v", err)
	}
	if s := f.rt.Stats.Snapshot(); s.Reserved != 1 {
		t.Errorf("stats %+v, want 1 reserved", s)
	}
	// After the reset, background work goes again.
	f.clock.Advance(11 * time.Minute)
	if _, err := f.do(bg, http.MethodGet, "", "Bearer a"); err != nil {
		t.Errorf("background after the reset: %v", err)
	}
	// Reserve < 0: none kept.
	f.rt.Reserve = -1
	if _, err := f.do(bg, http.MethodGet, "", "Bearer a"); err != nil {
		t.Errorf("background with no reserve: %v", err)
	}
}
