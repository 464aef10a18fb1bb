package ghfake

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	docsURL       = "https://docs.github.com/rest"
	jwtSkew       = 60 * time.Second
	jwtMaxLife    = 10 * time.Minute
	maxBody       = 1 << 20
	defaultLimit  = 5000
	defaultPage   = 30
	maxPerPage    = 100
	primaryDocURL = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-primary-rate-limits"
	secondaryDocs = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
)

// RateLimitMode selects how rate-limited requests fail.
type RateLimitMode int

const (
	// RateLimitPrimary fails with 403, x-ratelimit-remaining: 0 and an
	// x-ratelimit-reset a few seconds ahead (primary rate limit).
	RateLimitPrimary RateLimitMode = iota
	// RateLimitSecondary fails with 429 and retry-after: 1 (secondary rate
	// limit).
	RateLimitSecondary
)

type rateState struct {
	used     int
	reset    time.Time
	failNext int
	mode     RateLimitMode
}

// RateLimit makes the next n API requests (not runner or control requests)
// fail as rate limited, in the given mode.
func (s *Server) RateLimit(n int, mode RateLimitMode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rate.failNext = max(n, 0)
	s.rate.mode = mode
}

// apiError is GitHub's error body.
type apiError struct {
	Message          string `json:"message"`
	DocumentationURL string `json:"documentation_url"`
	Status           string `json:"status"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, apiError{Message: msg, DocumentationURL: docsURL, Status: strconv.Itoa(code)})
}

func notFound(w http.ResponseWriter) { writeError(w, http.StatusNotFound, "Not Found") }

// decodeBody reads a JSON request body into v.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("decode body: %w", err)
	}
	return nil
}

// rateLimited applies the rate-limit switch and sets the x-ratelimit-*
// headers. It reports whether the request was refused.
func (s *Server) rateLimited(w http.ResponseWriter) bool {
	s.mu.Lock()
	now := s.now()
	if !now.Before(s.rate.reset) {
		s.rate.used = 0
		s.rate.reset = now.Add(time.Hour)
	}
	refuse := s.rate.failNext > 0
	mode := s.rate.mode
	if refuse {
		s.rate.failNext--
	} else {
		s.rate.used++
	}
	used, reset := s.rate.used, s.rate.reset
	s.mu.Unlock()

	h := w.Header()
	h.Set("X-RateLimit-Limit", strconv.Itoa(defaultLimit))
	h.Set("X-RateLimit-Resource", "core")
	if refuse && mode == RateLimitPrimary {
		used, reset = defaultLimit, now.Add(2*time.Second)
	}
	h.Set("X-RateLimit-Remaining", strconv.Itoa(max(defaultLimit-used, 0)))
	h.Set("X-RateLimit-Used", strconv.Itoa(used))
	h.Set("X-RateLimit-Reset", strconv.FormatInt(reset.Unix()+1, 10))
	if !refuse {
		return false
	}
	if mode == RateLimitSecondary {
		h.Set("Retry-After", "1")
		writeJSON(w, http.StatusTooManyRequests, apiError{
			Message:          "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
			DocumentationURL: secondaryDocs, Status: "429",
		})
		return true
	}
	writeJSON(w, http.StatusForbidden, apiError{
		Message: "API rate limit exceeded.", DocumentationURL: primaryDocURL, Status: "403",
	})
	return true
}

// bearer returns the credential of an Authorization header with one of the
// given schemes (compared case-insensitively).
func bearer(r *http.Request, schemes ...string) (string, bool) {
	scheme, cred, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok {
		return "", false
	}
	for _, sc := range schemes {
		if strings.EqualFold(scheme, sc) {
			cred = strings.TrimSpace(cred)
			return cred, cred != ""
		}
	}
	return "", false
}

// appHandler wraps a handler that needs the App's JWT.
func (s *Server) appHandler(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.rateLimited(w) {
			return
		}
		raw, ok := bearer(r, "Bearer")
		if !ok {
			writeError(w, http.StatusUnauthorized, "A JSON web token could not be decoded")
			return
		}
		if msg := s.verifyJWT(raw); msg != "" {
			s.log.Debug("ghfake: jwt refused", "reason", msg)
			writeError(w, http.StatusUnauthorized, msg)
			return
		}
		h(w, r)
	}
}

// verifyJWT checks an App JWT and returns "" or the reason it is refused.
func (s *Server) verifyJWT(raw string) string {
	s.mu.Lock()
	appID, key := s.app.id, s.app.key
	s.mu.Unlock()
	if key == nil {
		return "A JSON web token could not be decoded"
	}
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(raw, claims,
		func(*jwt.Token) (any, error) { return key, nil },
		jwt.WithValidMethods([]string{"RS256"}), jwt.WithLeeway(jwtSkew),
		jwt.WithTimeFunc(s.cfg.Now), jwt.WithExpirationRequired(), jwt.WithIssuedAt())
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"
	case err != nil:
		return "A JSON web token could not be decoded"
	}
	iat, err := claims.GetIssuedAt()
	if err != nil || iat == nil {
		return "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"
	}
	exp, _ := claims.GetExpirationTime() // required and checked by the parser
	if exp.Sub(iat.Time) > jwtMaxLife || exp.Sub(s.cfg.Now()) > jwtMaxLife+jwtSkew {
		return "'Expiration time' claim ('exp') is too far in the future"
	}
	var iss int64
	switch v := claims["iss"].(type) {
	case string:
		iss, err = strconv.ParseInt(v, 10, 64)
	case float64:
		iss = int64(v)
		if float64(iss) != v {
			err = errors.New("not an integer")
		}
	default:
		err = errors.New("missing")
	}
	if err != nil || iss != appID {
		return "'Issuer' claim ('iss') must be an Integer"
	}
	return ""
}

// instHandler wraps a handler that needs an installation token.
func (s *Server) instHandler(h func(http.ResponseWriter, *http.Request, *installation)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.rateLimited(w) {
			return
		}
		tok, ok := bearer(r, "Bearer", "token")
		if !ok {
			writeError(w, http.StatusUnauthorized, "Requires authentication")
			return
		}
		s.mu.Lock()
		t, ok := s.tokens[tok]
		if ok && !s.now().Before(t.expires) {
			delete(s.tokens, tok)
			ok = false
		}
		var inst *installation
		if ok {
			inst = s.installations[t.installID]
			if inst != nil && inst.suspended {
				inst = nil
			}
		}
		s.mu.Unlock()
		if inst == nil {
			writeError(w, http.StatusUnauthorized, "Bad credentials")
			return
		}
		h(w, r, inst)
	}
}

// page is a request's page/per_page, GitHub style.
type page struct{ num, per int }

// paginate returns the request's page of all (?page, ?per_page) and sets
// the Link header GitHub's list endpoints send.
func paginate[T any](w http.ResponseWriter, r *http.Request, all []T) []T {
	p := pageOf(r)
	lo, hi := p.bounds(len(all))
	setLinks(w, r, p, len(all))
	return all[lo:hi]
}

func pageOf(r *http.Request) page {
	p := page{num: 1, per: defaultPage}
	if v, err := strconv.Atoi(r.URL.Query().Get("page")); err == nil && v > 0 {
		p.num = v
	}
	if v, err := strconv.Atoi(r.URL.Query().Get("per_page")); err == nil && v > 0 {
		p.per = min(v, maxPerPage)
	}
	return p
}

// bounds returns the slice bounds of the page within n items.
func (p page) bounds(n int) (lo, hi int) {
	lo = min((p.num-1)*p.per, n)
	return lo, min(lo+p.per, n)
}

// setLinks sets the Link header for page p of n items as GitHub does:
// prev/next/last/first, each only where it applies.
func setLinks(w http.ResponseWriter, r *http.Request, p page, n int) {
	last := max((n+p.per-1)/p.per, 1)
	var links []string
	add := func(num int, rel string) {
		q := r.URL.Query()
		q.Set("page", strconv.Itoa(num))
		q.Set("per_page", strconv.Itoa(p.per))
		links = append(links, fmt.Sprintf("<%s>; rel=%q", selfURL(r, q), rel))
	}
	if p.num > 1 {
		add(min(p.num-1, last), "prev")
	}
	if p.num < last {
		add(p.num+1, "next")
		add(last, "last")
	}
	if p.num > 1 {
		add(1, "first")
	}
	if len(links) > 0 {
		w.Header().Set("Link", strings.Join(links, ", "))
	}
}

// selfURL is the absolute URL of the request's path with query q.
func selfURL(r *http.Request, q url.Values) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	u := url.URL{Scheme: scheme, Host: r.Host, Path: r.URL.Path, RawQuery: q.Encode()}
	return u.String()
}
