package github

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	headerRemaining  = "X-RateLimit-Remaining"
	headerLimit      = "X-RateLimit-Limit"
	headerReset      = "X-RateLimit-Reset"
	headerRetryAfter = "Retry-After"

	// DefaultMaxRetries is the default number of retries of a rate-limited request.
	DefaultMaxRetries = 3
	// DefaultMaxWait is the default cap on a single wait.
	DefaultMaxWait = 60 * time.Second
	// DefaultServerErrorRetries is the default number of retries of an
	// idempotent request answered 502, 503 or 504.
	DefaultServerErrorRetries = 2
	// DefaultReserve is the share of a credential's hourly quota that
	// background requests leave to the others (RateLimitTransport.Reserve).
	DefaultReserve = 0.2

	defaultBaseBackoff = time.Second
	// secondaryLimitWait is GitHub's advice for a secondary rate limit that
	// names no wait: "wait for at least one minute before retrying".
	secondaryLimitWait = time.Minute
	// peekBytes bounds how much of a 403 body is read to look for a
	// secondary-rate-limit message, and how much is drained before a retry.
	peekBytes = 64 << 10
)

// TransportStats counts what RateLimitTransport did, for metrics. All fields
// are updated atomically and may be read at any time.
type TransportStats struct {
	Requests           atomic.Int64 // requests sent, retries included
	RateLimited        atomic.Int64 // rate-limit responses received
	Retries            atomic.Int64 // retries of any kind
	ServerErrorRetries atomic.Int64 // retries after 502/503/504
	Waits              atomic.Int64 // sleeps before a request or retry
	WaitNanos          atomic.Int64 // total time slept
	Exhausted          atomic.Int64 // requests failed with ErrRateLimited
	Reserved           atomic.Int64 // background requests refused to keep the reserve (also in Exhausted)
}

// StatsSnapshot is a point-in-time copy of TransportStats.
type StatsSnapshot struct {
	Requests, RateLimited, Retries, ServerErrorRetries, Waits, Exhausted, Reserved int64
	WaitTime                                                                       time.Duration
}

// Snapshot returns the current counter values.
func (s *TransportStats) Snapshot() StatsSnapshot {
	return StatsSnapshot{
		Requests:           s.Requests.Load(),
		RateLimited:        s.RateLimited.Load(),
		Retries:            s.Retries.Load(),
		ServerErrorRetries: s.ServerErrorRetries.Load(),
		Waits:              s.Waits.Load(),
		Exhausted:          s.Exhausted.Load(),
		Reserved:           s.Reserved.Load(),
		WaitTime:           time.Duration(s.WaitNanos.Load()),
	}
}

// RateLimitTransport is an http.RoundTripper that honours GitHub's rate
// limiting:
//
//   - A rate-limited response — 429; 403 with x-ratelimit-remaining: 0; any
//     other 4xx with retry-after; a 403 whose body reports a secondary rate
//     limit — is retried after retry-after seconds, else at x-ratelimit-reset,
//     else after exponential backoff with jitter from one second. Any method is
//     retried, since GitHub rejected the request without acting on it.
//   - 502, 503 and 504 are retried for idempotent methods (GET, HEAD, OPTIONS,
//     DELETE) only, honouring retry-after if present.
//   - Whenever a response reports x-ratelimit-remaining: 0, later requests
//     with the same credential (Authorization header) wait until the reset.
//   - A background request (Background: reconcilers' polling) is refused
//     with ErrRateLimited, unsent, while its credential's last response
//     left less than Reserve of the limit until the reset: what remains is
//     kept for the requests that launch runners.
//
// Retrying a 2xx or 3xx is never done, even with retry-after, since the
// request has taken effect. Waits are bounded by the request's context; a wait
// longer than MaxWait, or running out of retries, fails the request with an
// error wrapping ErrRateLimited. A request whose body cannot be replayed
// (no GetBody) is not retried; its response is returned as is.
//
// Use it through a pointer; the zero value (plus Base) is ready to use.
type RateLimitTransport struct {
	// Base sends the requests; default http.DefaultTransport.
	Base http.RoundTripper
	// MaxRetries bounds retries of a rate-limited request: 0 means
	// DefaultMaxRetries, negative means none.
	MaxRetries int
	// ServerErrorRetries bounds retries after 502/503/504: 0 means
	// DefaultServerErrorRetries, negative means none.
	ServerErrorRetries int
	// MaxWait caps one wait; 0 means DefaultMaxWait.
	MaxWait time.Duration
	// BaseBackoff is the first backoff step; 0 means one second.
	BaseBackoff time.Duration
	// AttemptTimeout bounds each attempt, from sending the request to closing
	// the response body; 0 means no per-attempt bound. Unlike
	// http.Client.Timeout it does not count the waits between attempts.
	AttemptTimeout time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Sleep waits for d or until ctx is done, returning ctx.Err() in the
	// latter case; default a timer. Tests inject a fake.
	Sleep  func(ctx context.Context, d time.Duration) error
	Logger *slog.Logger
	// Reserve is the share of each credential's quota that background
	// requests leave to the others: 0 means DefaultReserve, negative none.
	Reserve float64

	Stats TransportStats

	mu     sync.Mutex
	holds  map[string]time.Time // credential key → quota reset time
	quotas map[string]quota     // credential key → its quota as last reported
}

// quota is a credential's rate limit as its last response reported it.
type quota struct {
	remaining, limit int
	reset            time.Time
}

type backgroundKey struct{}

// Background marks the requests made with ctx as background work, such as
// reconcilers' polling, that may wait for the next hour rather than spend
// the quota the requests launching runners need (RateLimitTransport).
func Background(ctx context.Context) context.Context {
	return context.WithValue(ctx, backgroundKey{}, true)
}

func isBackground(ctx context.Context) bool {
	b, _ := ctx.Value(backgroundKey{}).(bool)
	return b
}

// RoundTrip implements http.RoundTripper.
func (t *RateLimitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	key := credentialKey(req.Header.Get("Authorization"))
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	var limitRetries, serverRetries int

	for attempt := 0; ; attempt++ {
		if err := t.awaitHold(ctx, key); err != nil {
			closeBody(req)
			return nil, err
		}
		if isBackground(ctx) {
			if err := t.keepReserve(key); err != nil {
				closeBody(req)
				return nil, err
			}
		}
		r := req
		if attempt > 0 {
			var err error
			if r, err = rewind(req); err != nil {
				return nil, err
			}
		}
		t.Stats.Requests.Add(1)
		resp, err := t.send(r)
		if err != nil {
			return nil, err
		}
		t.observe(key, resp.Header)

		if wait, limited := t.rateLimitWait(resp, limitRetries); limited {
			t.Stats.RateLimited.Add(1)
			if !replayable {
				return resp, nil
			}
			if limitRetries >= t.maxRetries() {
				drain(resp)
				t.Stats.Exhausted.Add(1)
				return nil, fmt.Errorf("github: %w: gave up after %d retries (status %d)",
					ErrRateLimited, limitRetries, resp.StatusCode)
			}
			if wait > t.maxWait() {
				drain(resp)
				t.Stats.Exhausted.Add(1)
				return nil, fmt.Errorf("github: %w: asked to wait %s, over the %s limit",
					ErrRateLimited, wait.Round(time.Second), t.maxWait())
			}
			drain(resp)
			t.logger().Warn("github api rate limited; waiting",
				"method", req.Method, "path", req.URL.Path, "status", resp.StatusCode, "wait", wait, "retry", limitRetries+1)
			if err := t.sleep(ctx, wait); err != nil {
				closeBody(req)
				return nil, err
			}
			limitRetries++
			t.Stats.Retries.Add(1)
			continue
		}

		if isTransientStatus(resp.StatusCode) && isIdempotent(req.Method) && replayable &&
			serverRetries < t.serverErrorRetries() {
			wait, ok := parseRetryAfter(resp.Header.Get(headerRetryAfter), t.now())
			if !ok {
				wait = t.backoff(serverRetries)
			}
			if wait > t.maxWait() {
				return resp, nil
			}
			drain(resp)
			t.logger().Debug("github api transient error; retrying",
				"method", req.Method, "path", req.URL.Path, "status", resp.StatusCode, "wait", wait, "retry", serverRetries+1)
			if err := t.sleep(ctx, wait); err != nil {
				closeBody(req)
				return nil, err
			}
			serverRetries++
			t.Stats.Retries.Add(1)
			t.Stats.ServerErrorRetries.Add(1)
			continue
		}
		return resp, nil
	}
}

// send performs one attempt, bounded by AttemptTimeout.
func (t *RateLimitTransport) send(r *http.Request) (*http.Response, error) {
	if t.AttemptTimeout <= 0 {
		return t.base().RoundTrip(r)
	}
	ctx, cancel := context.WithTimeout(r.Context(), t.AttemptTimeout)
	resp, err := t.base().RoundTrip(r.WithContext(ctx))
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// cancelOnClose releases an attempt's context when its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// rateLimitWait reports whether resp is a rate-limit refusal, and how long to
// wait before retry number n (0-based).
func (t *RateLimitTransport) rateLimitWait(resp *http.Response, n int) (time.Duration, bool) {
	code := resp.StatusCode
	if code < 400 || code >= 500 {
		return 0, false
	}
	h := resp.Header
	now := t.now()
	retryAfter, hasRetryAfter := parseRetryAfter(h.Get(headerRetryAfter), now)
	primary := (code == http.StatusForbidden || code == http.StatusTooManyRequests) && h.Get(headerRemaining) == "0"
	secondary := code == http.StatusForbidden && !primary && !hasRetryAfter && mentionsSecondaryLimit(resp)
	if code != http.StatusTooManyRequests && !primary && !hasRetryAfter && !secondary {
		return 0, false
	}
	switch {
	case hasRetryAfter:
		return retryAfter, true
	case primary:
		if reset, ok := parseEpoch(h.Get(headerReset)); ok {
			return max(reset.Sub(now), 0), true
		}
	case secondary:
		return secondaryLimitWait, true
	}
	return t.backoff(n), true
}

// awaitHold waits while the credential's quota is known to be exhausted.
func (t *RateLimitTransport) awaitHold(ctx context.Context, key string) error {
	now := t.now()
	t.mu.Lock()
	until, ok := t.holds[key]
	if ok && !now.Before(until) {
		delete(t.holds, key)
		ok = false
	}
	t.mu.Unlock()
	if !ok {
		return nil
	}
	d := until.Sub(now)
	if d > t.maxWait() {
		t.Stats.Exhausted.Add(1)
		return fmt.Errorf("github: %w: rate limit quota exhausted until %s", ErrRateLimited, until.UTC().Format(time.RFC3339))
	}
	t.logger().Info("github api quota exhausted; holding request until reset", "wait", d)
	return t.sleep(ctx, d)
}

// keepReserve refuses a background request while the credential's quota
// is below the reserve.
func (t *RateLimitTransport) keepReserve(key string) error {
	reserve := t.Reserve
	if reserve == 0 {
		reserve = DefaultReserve
	}
	if reserve < 0 {
		return nil
	}
	now := t.now()
	t.mu.Lock()
	q, ok := t.quotas[key]
	t.mu.Unlock()
	if !ok || !now.Before(q.reset) || q.limit <= 0 || float64(q.remaining) >= reserve*float64(q.limit) {
		return nil
	}
	t.Stats.Reserved.Add(1)
	t.Stats.Exhausted.Add(1)
	return fmt.Errorf("github: %w: %d of %d requests left until %s are kept for launching runners; background work waits",
		ErrRateLimited, q.remaining, q.limit, q.reset.UTC().Format(time.RFC3339))
}

// observe records a credential's quota state from response headers.
func (t *RateLimitTransport) observe(key string, h http.Header) {
	remaining := h.Get(headerRemaining)
	if remaining == "" {
		return
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	left, errR := strconv.Atoi(remaining)
	limit, errL := strconv.Atoi(h.Get(headerLimit))
	if reset, ok := parseEpoch(h.Get(headerReset)); ok && errR == nil && errL == nil && reset.After(now) {
		if t.quotas == nil {
			t.quotas = make(map[string]quota)
		}
		if _, known := t.quotas[key]; !known {
			// Tokens rotate: a new one's first response drops the stale
			// entries (not every response: this is every request's path).
			for k, q := range t.quotas {
				if !now.Before(q.reset) {
					delete(t.quotas, k)
				}
			}
		}
		t.quotas[key] = quota{remaining: left, limit: limit, reset: reset}
	}
	if remaining != "0" {
		delete(t.holds, key)
		return
	}
	reset, ok := parseEpoch(h.Get(headerReset))
	if !ok || !reset.After(now) {
		return
	}
	if t.holds == nil {
		t.holds = make(map[string]time.Time)
	}
	for k, until := range t.holds { // tokens rotate: drop stale entries
		if !now.Before(until) {
			delete(t.holds, k)
		}
	}
	t.holds[key] = reset
}

func (t *RateLimitTransport) sleep(ctx context.Context, d time.Duration) error {
	t.Stats.Waits.Add(1)
	t.Stats.WaitNanos.Add(int64(d))
	if t.Sleep != nil {
		return t.Sleep(ctx, d)
	}
	return sleepContext(ctx, d)
}

// backoff returns the wait before retry n (0-based): BaseBackoff·2ⁿ, capped
// at MaxWait, with "equal jitter" (half fixed, half random).
func (t *RateLimitTransport) backoff(n int) time.Duration {
	base := t.BaseBackoff
	if base <= 0 {
		base = defaultBaseBackoff
	}
	d := base << min(n, 20)
	if d <= 0 || d > t.maxWait() {
		d = t.maxWait()
	}
	half := d / 2
	return half + rand.N(half+1)
}

func (t *RateLimitTransport) base() http.RoundTripper {
	if t.Base != nil {
		return t.Base
	}
	return http.DefaultTransport
}

func (t *RateLimitTransport) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

func (t *RateLimitTransport) logger() *slog.Logger {
	if t.Logger != nil {
		return t.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (t *RateLimitTransport) maxRetries() int { return orDefault(t.MaxRetries, DefaultMaxRetries) }

func (t *RateLimitTransport) serverErrorRetries() int {
	return orDefault(t.ServerErrorRetries, DefaultServerErrorRetries)
}

func (t *RateLimitTransport) maxWait() time.Duration {
	if t.MaxWait > 0 {
		return t.MaxWait
	}
	return DefaultMaxWait
}

// orDefault maps 0 to def and negative values to 0.
func orDefault(v, def int) int {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}

// credentialKey identifies a credential without keeping it in the clear.
func credentialKey(authorization string) string {
	if authorization == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(authorization))
	return hex.EncodeToString(sum[:16])
}

// rewind returns a copy of req with a fresh body for a retry.
func rewind(req *http.Request) (*http.Request, error) {
	r := req.Clone(req.Context())
	if req.Body == nil || req.Body == http.NoBody {
		return r, nil
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, fmt.Errorf("github: replay request body: %w", err)
	}
	r.Body = body
	return r, nil
}

// mentionsSecondaryLimit peeks at a 403 body for GitHub's secondary rate
// limit message, leaving the body readable.
func mentionsSecondaryLimit(resp *http.Response) bool {
	if resp.Body == nil || resp.Body == http.NoBody {
		return false
	}
	buf, err := io.ReadAll(io.LimitReader(resp.Body, peekBytes))
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(buf), resp.Body), resp.Body}
	if err != nil {
		return false
	}
	return bytes.Contains(bytes.ToLower(buf), []byte("secondary rate limit"))
}

// parseRetryAfter parses retry-after as seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		if secs > int64(24*time.Hour/time.Second) {
			secs = int64(24 * time.Hour / time.Second)
		}
		return time.Duration(secs) * time.Second, true
	}
	if at, err := http.ParseTime(v); err == nil {
		return max(at.Sub(now), 0), true
	}
	return 0, false
}

// parseEpoch parses x-ratelimit-reset, seconds since the Unix epoch.
func parseEpoch(v string) (time.Time, bool) {
	secs, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || secs <= 0 {
		return time.Time{}, false
	}
	return time.Unix(secs, 0), true
}

func isTransientStatus(code int) bool {
	return code == http.StatusBadGateway || code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout
}

func isIdempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodDelete:
		return true
	}
	return false
}

// drain discards a response before a retry so the connection can be reused.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, peekBytes))
	_ = resp.Body.Close()
}

// closeBody honours the RoundTripper contract of closing the request body.
func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

func sleepContext(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}
