package github

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	// jwtBackdate is how far iat is set in the past, for clock drift.
	jwtBackdate = 60 * time.Second
	// jwtLifetime is the App JWT's lifetime from now; GitHub allows at most 10m.
	jwtLifetime = 9 * time.Minute
	// jwtReuseMargin: a cached JWT is replaced this long before it expires.
	jwtReuseMargin = time.Minute
	// DefaultTokenRefreshMargin: an installation token is refreshed when less
	// than this remains before its expiry.
	DefaultTokenRefreshMargin = 5 * time.Minute
	// tokenFetchTimeout bounds one installation token request, which runs
	// detached from any single caller's context.
	tokenFetchTimeout = 2 * time.Minute
	// minKeyBits is the smallest RSA key accepted; GitHub issues 2048-bit keys.
	minKeyBits = 2048
	// maxResponseBytes bounds responses read without go-github.
	maxResponseBytes = 1 << 20

	apiVersion = "2022-11-28"
)

// AppCredentials identify a GitHub App.
type AppCredentials struct {
	AppID      int64
	PrivateKey *rsa.PrivateKey
}

// LogValue keeps the private key out of logs.
func (c AppCredentials) LogValue() slog.Value {
	return slog.GroupValue(slog.Int64("app_id", c.AppID), slog.String("private_key", "[REDACTED]"))
}

// String keeps the private key out of formatted output.
func (c AppCredentials) String() string {
	return fmt.Sprintf("AppCredentials{AppID:%d PrivateKey:[REDACTED]}", c.AppID)
}

// GoString keeps the private key out of %#v output.
func (c AppCredentials) GoString() string { return c.String() }

func (c AppCredentials) validate() error {
	if c.AppID <= 0 {
		return fmt.Errorf("github: %w: app id must be positive", ErrInvalidArgument)
	}
	if c.PrivateKey == nil {
		return fmt.Errorf("github: %w: app private key is required", ErrInvalidArgument)
	}
	if c.PrivateKey.N.BitLen() < minKeyBits {
		return fmt.Errorf("github: %w: app private key is %d bits, need at least %d",
			ErrInvalidArgument, c.PrivateKey.N.BitLen(), minKeyBits)
	}
	return nil
}

// ParsePrivateKey parses a GitHub App private key in PEM form, PKCS#1
// ("RSA PRIVATE KEY", as GitHub issues them) or PKCS#8 ("PRIVATE KEY").
// Errors describe the problem without echoing any key material.
func ParsePrivateKey(pemBytes []byte) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("github: parse private key: no PEM block found")
	}
	if _, encrypted := block.Headers["Proc-Type"]; encrypted {
		return nil, errors.New("github: parse private key: encrypted PEM keys are not supported")
	}
	var key *rsa.PrivateKey
	switch block.Type {
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, errors.New("github: parse private key: invalid PKCS#1 RSA key")
		}
		key = k
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, errors.New("github: parse private key: invalid PKCS#8 key")
		}
		rk, ok := k.(*rsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("github: parse private key: PKCS#8 key is %T, want RSA", k)
		}
		key = rk
	default:
		return nil, fmt.Errorf("github: parse private key: unsupported PEM block type %q", block.Type)
	}
	if err := key.Validate(); err != nil {
		return nil, errors.New("github: parse private key: RSA key fails validation")
	}
	if key.N.BitLen() < minKeyBits {
		return nil, fmt.Errorf("github: parse private key: key is %d bits, need at least %d", key.N.BitLen(), minKeyBits)
	}
	return key, nil
}

// AuthConfig configures Auth.
type AuthConfig struct {
	Credentials AppCredentials
	// BaseURL is the API root, e.g. "https://api.github.com/".
	BaseURL string
	// HTTPClient sends token requests; Client passes one with its rate-limit
	// transport. Default: a client with a 30s timeout.
	HTTPClient *http.Client
	UserAgent  string
	Logger     *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// RefreshMargin: refresh a token when less than this remains before it
	// expires. Default DefaultTokenRefreshMargin.
	RefreshMargin time.Duration
}

// Auth issues the App JWT and installation access tokens, caching both.
// It is safe for concurrent use.
type Auth struct {
	creds  AppCredentials
	base   *url.URL
	hc     *http.Client
	ua     string
	log    *slog.Logger
	now    func() time.Time
	margin time.Duration

	jwtMu  sync.Mutex
	jwt    string
	jwtExp time.Time

	mu       sync.Mutex
	tokens   map[int64]installationToken
	inflight map[int64]*tokenCall
}

type installationToken struct {
	token     string
	expiresAt time.Time
}

// tokenCall is one in-flight token request shared by concurrent callers.
type tokenCall struct {
	done  chan struct{}
	token string
	err   error
}

// NewAuth validates cfg and returns an Auth.
func NewAuth(cfg AuthConfig) (*Auth, error) {
	if err := cfg.Credentials.validate(); err != nil {
		return nil, err
	}
	base, err := parseBaseURL(cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	a := &Auth{
		creds:    cfg.Credentials,
		base:     base,
		hc:       cfg.HTTPClient,
		ua:       cfg.UserAgent,
		log:      cfg.Logger,
		now:      cfg.Now,
		margin:   cfg.RefreshMargin,
		tokens:   make(map[int64]installationToken),
		inflight: make(map[int64]*tokenCall),
	}
	if a.hc == nil {
		a.hc = &http.Client{Timeout: 30 * time.Second}
	}
	if a.ua == "" {
		a.ua = defaultUserAgent
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.margin <= 0 {
		a.margin = DefaultTokenRefreshMargin
	}
	return a, nil
}

// AppJWT returns a JWT authenticating as the App itself, reusing the cached
// one until a minute before it expires.
func (a *Auth) AppJWT() (string, error) {
	now := a.now()
	a.jwtMu.Lock()
	defer a.jwtMu.Unlock()
	if a.jwt != "" && now.Before(a.jwtExp.Add(-jwtReuseMargin)) {
		return a.jwt, nil
	}
	exp := now.Add(jwtLifetime)
	claims := jwt.RegisteredClaims{
		Issuer:    strconv.FormatInt(a.creds.AppID, 10),
		IssuedAt:  jwt.NewNumericDate(now.Add(-jwtBackdate)),
		ExpiresAt: jwt.NewNumericDate(exp),
	}
	signed, err := jwt.NewWithClaims(jwt.SigningMethodRS256, claims).SignedString(a.creds.PrivateKey)
	if err != nil {
		return "", fmt.Errorf("github: sign app jwt: %w", err)
	}
	a.jwt, a.jwtExp = signed, exp
	return signed, nil
}

// invalidateJWT drops the cached JWT, e.g. after GitHub rejected it.
func (a *Auth) invalidateJWT() {
	a.jwtMu.Lock()
	a.jwt, a.jwtExp = "", time.Time{}
	a.jwtMu.Unlock()
}

// InstallationToken returns an access token for the installation. A cached
// token is reused until less than the refresh margin remains; otherwise one
// request is made, shared by all concurrent callers for that installation. A
// failed refresh is returned to every waiting caller and not cached.
func (a *Auth) InstallationToken(ctx context.Context, installationID int64) (string, error) {
	if installationID <= 0 {
		return "", fmt.Errorf("github: %w: installation id must be positive", ErrInvalidArgument)
	}
	a.mu.Lock()
	if t, ok := a.tokens[installationID]; ok && a.now().Add(a.margin).Before(t.expiresAt) {
		a.mu.Unlock()
		return t.token, nil
	}
	call, ok := a.inflight[installationID]
	if !ok {
		call = &tokenCall{done: make(chan struct{})}
		a.inflight[installationID] = call
		// Detached from ctx so that one caller giving up does not fail the
		// others waiting for the same token.
		go a.fetch(context.WithoutCancel(ctx), installationID, call)
	}
	a.mu.Unlock()

	select {
	case <-call.done:
		return call.token, call.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// InvalidateInstallationToken drops the cached token for an installation,
// e.g. after GitHub answered 401 to it.
func (a *Auth) InvalidateInstallationToken(installationID int64) {
	a.mu.Lock()
	delete(a.tokens, installationID)
	a.mu.Unlock()
}

func (a *Auth) fetch(ctx context.Context, installationID int64, call *tokenCall) {
	ctx, cancel := context.WithTimeout(ctx, tokenFetchTimeout)
	defer cancel()
	tok, err := a.requestToken(ctx, installationID)

	a.mu.Lock()
	delete(a.inflight, installationID)
	if err == nil {
		a.tokens[installationID] = tok
	}
	a.mu.Unlock()

	if err != nil {
		a.log.Warn("github installation token request failed", "installation", installationID, "err", err)
	} else {
		a.log.Debug("github installation token refreshed", "installation", installationID, "expires_at", tok.expiresAt)
	}
	call.token, call.err = tok.token, err
	close(call.done)
}

// requestToken performs POST app/installations/{id}/access_tokens.
func (a *Auth) requestToken(ctx context.Context, installationID int64) (installationToken, error) {
	op := fmt.Sprintf("create installation %d token", installationID)
	appJWT, err := a.AppJWT()
	if err != nil {
		return installationToken{}, err
	}
	u := a.base.JoinPath("app", "installations", strconv.FormatInt(installationID, 10), "access_tokens")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), http.NoBody)
	if err != nil {
		return installationToken{}, fmt.Errorf("github: %s: %w", op, err)
	}
	req.Header.Set("Accept", "application/vnd.github+json")
	req.Header.Set("X-GitHub-Api-Version", apiVersion)
	req.Header.Set("User-Agent", a.ua)
	req.Header.Set("Authorization", "Bearer "+appJWT)

	resp, err := a.hc.Do(req)
	if err != nil {
		return installationToken{}, fmt.Errorf("github: %s: %w", op, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return installationToken{}, fmt.Errorf("github: %s: read response: %w", op, err)
	}
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		if resp.StatusCode == http.StatusUnauthorized {
			a.invalidateJWT()
		}
		var e struct {
			Message string `json:"message"`
		}
		_ = json.Unmarshal(body, &e) // best effort: the status alone is enough
		return installationToken{}, fmt.Errorf("github: %s: %w", op, newStatusError(resp, e.Message, nil))
	}
	var out struct {
		Token     string    `json:"token"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		// Not wrapped: a JSON error could quote part of the body, which holds the token.
		return installationToken{}, fmt.Errorf("github: %s: response is not valid JSON", op)
	}
	if out.Token == "" || out.ExpiresAt.IsZero() {
		return installationToken{}, fmt.Errorf("github: %s: response lacks token or expires_at", op)
	}
	return installationToken{token: out.Token, expiresAt: out.ExpiresAt}, nil
}

// parseBaseURL parses the API root, ensuring a trailing slash.
func parseBaseURL(s string) (*url.URL, error) {
	if s == "" {
		s = DefaultBaseURL
	}
	u, err := url.Parse(s)
	if err != nil {
		// Not wrapped: url.Error quotes the URL, which could hold credentials.
		return nil, fmt.Errorf("github: %w: base url is not a valid URL", ErrInvalidArgument)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("github: %w: base url must not carry credentials, query or fragment", ErrInvalidArgument)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("github: %w: base url must be absolute http(s), got %q", ErrInvalidArgument, u.Redacted())
	}
	if len(u.Path) == 0 || u.Path[len(u.Path)-1] != '/' {
		u.Path += "/"
	}
	return u, nil
}
