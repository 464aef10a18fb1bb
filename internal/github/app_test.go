package github

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
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

func TestParsePrivateKey(t *testing.T) {
	key := testKey(t)
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	der8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8 := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der8})

	for name, in := range map[string][]byte{"pkcs1": pkcs1, "pkcs8": pkcs8} {
		got, err := ParsePrivateKey(in)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !got.Equal(key) {
			t.Errorf("%s: parsed key differs", name)
		}
	}

	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalPKCS8PrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	corrupt := x509.MarshalPKCS1PrivateKey(key)
	corrupt = corrupt[:len(corrupt)/2]

	bad := map[string][]byte{
		"empty":     nil,
		"not pem":   []byte("hello"),
		"ec pkcs8":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER}),
		"1024 bits": pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(small)}),
		"truncated": pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: corrupt}),
		"garbage8":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: corrupt}),
		"cert type": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: corrupt}),
		"encrypted": pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: corrupt}),
	}
	for name, in := range bad {
		_, err := ParsePrivateKey(in)
		if err == nil {
			t.Errorf("%s: no error", name)
			continue
		}
		msg := err.Error()
		for _, frag := range []string{base64.StdEncoding.EncodeToString(corrupt)[:16], string(corrupt[:8])} {
			if strings.Contains(msg, frag) {
				t.Errorf("%s: error echoes key material: %q", name, msg)
			}
		}
	}
}

func newTestAuth(t *testing.T, srvURL string, clock *fakeClock, margin time.Duration) *Auth {
	t.Helper()
	a, err := NewAuth(AuthConfig{
		Credentials:   AppCredentials{AppID: testAppID, PrivateKey: testKey(t)},
		BaseURL:       srvURL,
		Now:           clock.Now,
		RefreshMargin: margin,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestNewAuthValidates(t *testing.T) {
	cases := map[string]AuthConfig{
		"no app id": {Credentials: AppCredentials{PrivateKey: testKey(t)}},
		"no key":    {Credentials: AppCredentials{AppID: 1}},
		"bad url":   {Credentials: AppCredentials{AppID: 1, PrivateKey: testKey(t)}, BaseURL: "ftp://x/"},
		"userinfo":  {Credentials: AppCredentials{AppID: 1, PrivateKey: testKey(t)}, BaseURL: "https://u:hunter2@x/"},
	}
	for name, cfg := range cases {
		_, err := NewAuth(cfg)
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want ErrInvalidArgument", name, err)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: error leaks password: %v", name, err)
		}
	}
}

func TestAppJWT(t *testing.T) {
	clock := newFakeClock()
	a := newTestAuth(t, "https://api.example.com/", clock, 0)
	start := clock.Now()

	tok, err := a.AppJWT()
	if err != nil {
		t.Fatal(err)
	}
	claims, err := verifyJWT(tok, &testKey(t).PublicKey, clock.Now)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if claims.Issuer != strconv.Itoa(testAppID) {
		t.Errorf("iss = %q", claims.Issuer)
	}
	if got, want := claims.IssuedAt.Time, start.Add(-60*time.Second); !got.Equal(want) {
		t.Errorf("iat = %v, want %v", got, want)
	}
	if got, want := claims.ExpiresAt.Time, start.Add(9*time.Minute); !got.Equal(want) {
		t.Errorf("exp = %v, want %v", got, want)
	}
	parsed, _, err := jwt.NewParser().ParseUnverified(tok, &jwt.RegisteredClaims{})
	if err != nil {
		t.Fatal(err)
	}
	if parsed.Header["alg"] != "RS256" {
		t.Errorf("alg = %v", parsed.Header["alg"])
	}
	// A signature by another key must not verify.
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifyJWT(tok, &other.PublicKey, clock.Now); err == nil {
		t.Error("JWT verified with the wrong key")
	}

	// Reused while more than a minute of validity remains.
	clock.Advance(7*time.Minute + 59*time.Second)
	again, err := a.AppJWT()
	if err != nil {
		t.Fatal(err)
	}
	if again != tok {
		t.Error("JWT not reused within its lifetime")
	}
	// Replaced within the last minute.
	clock.Advance(2 * time.Second)
	fresh, err := a.AppJWT()
	if err != nil {
		t.Fatal(err)
	}
	if fresh == tok {
		t.Error("JWT not renewed near expiry")
	}
	if _, err := verifyJWT(fresh, &testKey(t).PublicKey, clock.Now); err != nil {
		t.Errorf("renewed JWT: %v", err)
	}
}

// tokenServer serves installation tokens valid for one hour of the fake clock.
type tokenServer struct {
	t        *testing.T
	clock    *fakeClock
	requests atomic.Int64
	fail     atomic.Bool
	gate     chan struct{} // if non-nil, requests wait for it to close
	entered  chan struct{} // receives once per request, if non-nil
}

func (s *tokenServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/app/installations/77/access_tokens" {
		s.t.Errorf("unexpected %s %s", r.Method, r.URL.Path)
		http.NotFound(w, r)
		return
	}
	raw, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if _, err := verifyJWT(raw, &testKey(s.t).PublicKey, s.clock.Now); err != nil {
		s.t.Errorf("token request JWT: %v", err)
	}
	n := s.requests.Add(1)
	if s.entered != nil {
		s.entered <- struct{}{}
	}
	if s.gate != nil {
		<-s.gate
	}
	if s.fail.Load() {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"message": "boom"})
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{
		"token":      "ghs_tok" + strconv.FormatInt(n, 10),
		"expires_at": s.clock.Now().Add(time.Hour).Format(time.RFC3339),
	})
}

// newTokenRig serves installation tokens on a fake clock to an Auth that
// refreshes them margin before they expire.
func newTokenRig(t *testing.T, margin time.Duration) (*fakeClock, *tokenServer, *Auth) {
	clock := newFakeClock()
	ts := &tokenServer{t: t, clock: clock}
	srv := httptest.NewServer(ts)
	t.Cleanup(srv.Close)
	return clock, ts, newTestAuth(t, srv.URL, clock, margin)
}

func TestInstallationTokenCachedAndRefreshed(t *testing.T) {
	clock, ts, a := newTokenRig(t, 0)
	ctx := context.Background()

	first, err := a.InstallationToken(ctx, 77)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(54 * time.Minute) // 6 minutes left: still cached
	again, err := a.InstallationToken(ctx, 77)
	if err != nil {
		t.Fatal(err)
	}
	if again != first || ts.requests.Load() != 1 {
		t.Fatalf("token not cached: %q vs %q, %d requests", again, first, ts.requests.Load())
	}
	clock.Advance(2 * time.Minute) // 4 minutes left: refresh
	fresh, err := a.InstallationToken(ctx, 77)
	if err != nil {
		t.Fatal(err)
	}
	if fresh == first || ts.requests.Load() != 2 {
		t.Fatalf("token not refreshed: %q, %d requests", fresh, ts.requests.Load())
	}

	a.InvalidateInstallationToken(77)
	if _, err := a.InstallationToken(ctx, 77); err != nil {
		t.Fatal(err)
	}
	if ts.requests.Load() != 3 {
		t.Errorf("invalidated token not refetched")
	}
}

func TestInstallationTokenMarginConfigurable(t *testing.T) {
	clock, ts, a := newTokenRig(t, 30*time.Minute)
	ctx := context.Background()
	if _, err := a.InstallationToken(ctx, 77); err != nil {
		t.Fatal(err)
	}
	clock.Advance(29 * time.Minute)
	if _, err := a.InstallationToken(ctx, 77); err != nil {
		t.Fatal(err)
	}
	if n := ts.requests.Load(); n != 1 {
		t.Fatalf("%d requests before margin", n)
	}
	clock.Advance(2 * time.Minute)
	if _, err := a.InstallationToken(ctx, 77); err != nil {
		t.Fatal(err)
	}
	if n := ts.requests.Load(); n != 2 {
		t.Fatalf("%d requests after margin, want 2", n)
	}
}

func TestInstallationTokenConcurrentCallersShareOneRequest(t *testing.T) {
	clock := newFakeClock()
	ts := &tokenServer{t: t, clock: clock, gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	srv := httptest.NewServer(ts)
	defer srv.Close()
	a := newTestAuth(t, srv.URL, clock, 0)

	const callers = 20
	var wg sync.WaitGroup
	tokens := make([]string, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tokens[i], errs[i] = a.InstallationToken(context.Background(), 77)
		}()
	}
	<-ts.entered
	time.Sleep(50 * time.Millisecond) // let the other callers pile up behind the request
	close(ts.gate)
	wg.Wait()

	if n := ts.requests.Load(); n != 1 {
		t.Fatalf("%d token requests, want 1", n)
	}
	for i := range callers {
		if errs[i] != nil || tokens[i] != "ghs_tok1" {
			t.Errorf("caller %d: %q, %v", i, tokens[i], errs[i])
		}
	}
}

func TestInstallationTokenRefreshFailureReturned(t *testing.T) {
	clock, ts, a := newTokenRig(t, 0)
	ctx := context.Background()

	old, err := a.InstallationToken(ctx, 77)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(57 * time.Minute)
	ts.fail.Store(true)
	tok, err := a.InstallationToken(ctx, 77)
	if err == nil {
		t.Fatalf("refresh failure swallowed; got token %q", tok)
	}
	var se *StatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusInternalServerError {
		t.Errorf("err = %v, want StatusError 500", err)
	}
	if strings.Contains(err.Error(), old) {
		t.Errorf("error leaks old token: %v", err)
	}
	// Failures are not cached: the next call tries again and succeeds.
	ts.fail.Store(false)
	if _, err := a.InstallationToken(ctx, 77); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	if n := ts.requests.Load(); n != 3 {
		t.Errorf("%d requests, want 3", n)
	}
}

func TestInstallationTokenWaiterCancellation(t *testing.T) {
	clock := newFakeClock()
	ts := &tokenServer{t: t, clock: clock, gate: make(chan struct{}), entered: make(chan struct{}, 10)}
	srv := httptest.NewServer(ts)
	defer srv.Close()
	a := newTestAuth(t, srv.URL, clock, 0)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := a.InstallationToken(ctx, 77)
		done <- err
	}()
	<-ts.entered
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	// The request carries on for other callers despite the first giving up.
	close(ts.gate)
	tok, err := a.InstallationToken(context.Background(), 77)
	if err != nil || tok != "ghs_tok1" {
		t.Fatalf("got %q, %v", tok, err)
	}
	if n := ts.requests.Load(); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

func TestInstallationTokenInvalidID(t *testing.T) {
	a := newTestAuth(t, "https://api.example.com/", newFakeClock(), 0)
	if _, err := a.InstallationToken(context.Background(), 0); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("err = %v", err)
	}
}
