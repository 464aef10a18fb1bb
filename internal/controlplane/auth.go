package controlplane

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"
)

// APIToken is one token of the JSON API and what it may do. Every API
// request needs one: an admin token may do everything; a read token may
// only read, and a read token with Orgs sees only those organisations'
// jobs, runners, logs and egress records (multi-tenant: an org's
// maintainers). Fleet-wide views (hosts, reconcilers, images) are any
// reader's.
type APIToken struct {
	Secret string
	Admin  bool
	// Orgs are a read token's organisations (compared without case); nil:
	// every organisation.
	Orgs []string
}

// APITokens are the tokens the API accepts.
type APITokens []APIToken

// principal is who made an API request.
type principal struct {
	admin bool
	orgs  map[string]bool // lowercased; nil: every organisation
	label string          // TokenLabel of its token, for the audit log
}

// TokenLabel names a token in the audit log and the dashboard without
// revealing it: "token:" and the first 8 hex digits of its SHA-256.
func TokenLabel(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return "token:" + hex.EncodeToString(sum[:4])
}

// sees reports whether p may see org's data.
func (p principal) sees(org string) bool {
	return p.orgs == nil || p.orgs[strings.ToLower(org)]
}

// scope returns p's organisations for a store filter: nil for every one.
func (p principal) scope() []string {
	if p.orgs == nil {
		return nil
	}
	out := make([]string, 0, len(p.orgs))
	for o := range p.orgs {
		out = append(out, o)
	}
	return out
}

type principalKey struct{}

// who returns the principal guard put in r's context; a request that did
// not pass guard sees nothing.
func who(r *http.Request) principal {
	if p, ok := r.Context().Value(principalKey{}).(principal); ok {
		return p
	}
	return principal{orgs: map[string]bool{}}
}

// authenticate finds the token r carries. Every token is compared, in
// constant time, through its SHA-256, so neither the answer's time nor a
// token's length tells an attacker anything.
func (a *api) authenticate(r *http.Request) (principal, bool) {
	tok, ok := bearer(r)
	if !ok {
		return principal{}, false
	}
	return a.principalOf(tok)
}

// principalOf finds the token tok (as authenticate does).
func (a *api) principalOf(tok string) (principal, bool) {
	sum := sha256.Sum256([]byte(tok))
	var found *APIToken
	for i := range a.tokens {
		t := &a.tokens[i]
		ts := sha256.Sum256([]byte(t.Secret))
		if subtle.ConstantTimeCompare(sum[:], ts[:]) == 1 {
			found = t
		}
	}
	if found == nil {
		return principal{}, false
	}
	p := principal{admin: found.Admin, label: TokenLabel(found.Secret)}
	if !found.Admin && found.Orgs != nil {
		p.orgs = map[string]bool{}
		for _, o := range found.Orgs {
			p.orgs[strings.ToLower(o)] = true
		}
	}
	return p, true
}

// guard wraps an API handler: write says whether it changes anything.
func (a *api) guard(write bool, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := a.authenticate(r)
		switch {
		case !ok:
			w.Header().Set("WWW-Authenticate", `Bearer realm="tandem"`)
			httpError(w, http.StatusUnauthorized, "an API token is required (Authorization: Bearer TOKEN)")
		case write && !p.admin:
			httpError(w, http.StatusForbidden, "this token may only read: an admin token is required")
		default:
			h(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
		}
	}
}
