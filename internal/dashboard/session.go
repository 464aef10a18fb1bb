package dashboard

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// cookieName is the session cookie's name.
const cookieName = "tandem_session"

// maxSessions bounds the sessions kept; the oldest go first. Only a valid
// token makes a session, so this only bounds a token holder's mistakes.
const maxSessions = 10000

// session is one login: the token's scope (never the token) and the CSRF
// token its forms carry.
type session struct {
	scope   Scope
	csrf    string
	expires time.Time
}

// checkCSRF compares a form's CSRF token with the session's in constant
// time.
func (s *session) checkCSRF(got string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.csrf)) == 1
}

// sessions maps session ids (by their SHA-256: a dump of the map does not
// hold a usable cookie) to sessions.
type sessions struct {
	lifetime time.Duration
	now      func() time.Time
	mu       sync.Mutex
	byID     map[[32]byte]*session
}

func newSessions(lifetime time.Duration, now func() time.Time) *sessions {
	return &sessions{lifetime: lifetime, now: now, byID: map[[32]byte]*session{}}
}

// randomToken returns 32 random bytes, base64url.
func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// create starts a session for scope and returns its id.
func (ss *sessions) create(scope Scope) (string, *session) {
	id := randomToken()
	s := &session{scope: scope, csrf: randomToken(), expires: ss.now().Add(ss.lifetime)}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	now := ss.now()
	for k, v := range ss.byID {
		if !now.Before(v.expires) {
			delete(ss.byID, k)
		}
	}
	for len(ss.byID) >= maxSessions { // drop the one closest to expiry
		var oldest [32]byte
		var t time.Time
		for k, v := range ss.byID {
			if t.IsZero() || v.expires.Before(t) {
				oldest, t = k, v.expires
			}
		}
		delete(ss.byID, oldest)
	}
	ss.byID[sha256.Sum256([]byte(id))] = s
	return id, s
}

// fromRequest returns r's live session, or nil.
func (ss *sessions) fromRequest(r *http.Request) *session {
	c, err := r.Cookie(cookieName)
	if err != nil || c.Value == "" {
		return nil
	}
	key := sha256.Sum256([]byte(c.Value))
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.byID[key]
	if !ok {
		return nil
	}
	if !ss.now().Before(s.expires) {
		delete(ss.byID, key)
		return nil
	}
	return s
}

// end forgets r's session.
func (ss *sessions) end(r *http.Request) {
	if c, err := r.Cookie(cookieName); err == nil {
		ss.mu.Lock()
		delete(ss.byID, sha256.Sum256([]byte(c.Value)))
		ss.mu.Unlock()
	}
}

// sessionCookie is the cookie of session id: HttpOnly, SameSite=Strict,
// Secure over TLS, for the whole site, expiring with the session (maxAge
// < 0 deletes it).
func sessionCookie(r *http.Request, id string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: cookieName, Value: id, Path: "/", MaxAge: maxAge, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil}
}

type loginData struct {
	Next  string
	Error string
}

func (d *Dashboard) loginPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	d.render(w, r, nil, http.StatusOK, "login", loginData{Next: safeNext(r.URL.Query().Get("next"))})
}

// login checks a pasted token and starts a session. In order: the request
// must come from this site; the token must be one the API accepts; then a
// new session id (never the token) goes into the cookie.
func (d *Dashboard) login(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if !sameOrigin(r) {
		http.Error(w, "cross-site request refused", http.StatusForbidden)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	next := safeNext(r.PostFormValue("next"))
	scope, ok := d.be.Authenticate(strings.TrimSpace(r.PostFormValue("token")))
	if !ok {
		d.log.Info("dashboard login refused", "addr", r.RemoteAddr)
		d.render(w, r, nil, http.StatusUnauthorized, "login", loginData{Next: next, Error: "That token is not valid."})
		return
	}
	d.sessions.end(r) // a new login replaces the old session (no fixation)
	id, _ := d.sessions.create(scope)
	http.SetCookie(w, sessionCookie(r, id, int(d.sessions.lifetime/time.Second)))
	d.log.Info("dashboard login", "token", scope.Label, "addr", r.RemoteAddr)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (d *Dashboard) logout(w http.ResponseWriter, r *http.Request, s *session) {
	d.sessions.end(r)
	http.SetCookie(w, sessionCookie(r, "", -1))
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// safeNext returns next if it is a path on this site, else "/": a login
// must not send anyone elsewhere.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") ||
		strings.ContainsAny(next, "\r\n\t") {
		return "/"
	}
	u, err := url.Parse(next)
	if err != nil || u.Host != "" || u.Scheme != "" {
		return "/"
	}
	q := u.Query()
	q.Del("fragment")
	u.RawQuery = q.Encode()
	return u.RequestURI()
}

func urlQueryEscape(s string) string { return url.QueryEscape(s) }
