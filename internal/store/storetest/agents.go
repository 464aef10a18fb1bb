package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// fullToken returns an unused enrolment token with every settable field set.
func fullToken(hash string, created time.Time) store.EnrollToken {
	return store.EnrollToken{
		Hash:      hash,
		CreatedAt: created,
		ExpiresAt: created.Add(time.Hour + 1),
		Comment:   "rack 4 — ünïcode, 'quotes'",
	}
}

func createToken(t *testing.T, s store.Store, e store.EnrollToken) {
	t.Helper()
	update(t, s, func(tx store.Tx) error { return tx.CreateEnrollToken(e) })
}

func tokens(t *testing.T, s store.Store) []store.EnrollToken {
	t.Helper()
	var ts []store.EnrollToken
	view(t, s, func(tx store.ReadTx) error {
		var err error
		ts, err = tx.EnrollTokens()
		return err
	})
	return ts
}

// useToken spends a token in a transaction that commits even when the use
// failed, so that a failed use that wrote something would show.
func useToken(t *testing.T, s store.Store, hash, host string, now time.Time) error {
	t.Helper()
	var useErr error
	update(t, s, func(tx store.Tx) error {
		_, useErr = tx.UseEnrollToken(hash, host, now)
		return nil
	})
	return useErr
}

func credential(t *testing.T, s store.Store, host string) (store.AgentCredential, error) {
	t.Helper()
	var c store.AgentCredential
	err := s.View(testCtx(t), func(tx store.ReadTx) error {
		var err error
		c, err = tx.AgentCredential(host)
		return err
	})
	return c, err
}

func testEnrollTokenRoundTrip(t *testing.T, s store.Store) {
	tok := fullToken("aa11", t0)
	createToken(t, s, tok)
	ts := tokens(t, s)
	if len(ts) != 1 {
		t.Fatalf("tokens %+v, want 1", ts)
	}
	same(t, "new token", tok, ts[0])

	noErr(t, "UseEnrollToken", useToken(t, s, tok.Hash, "host-a", at(time.Minute+1)))
	tok.UsedAt, tok.UsedBy = at(time.Minute+1), "host-a"
	ts = tokens(t, s)
	if len(ts) != 1 {
		t.Fatalf("tokens %+v, want 1", ts)
	}
	same(t, "used token", tok, ts[0])
}

func testEnrollTokenList(t *testing.T, s store.Store) {
	if ts := tokens(t, s); len(ts) != 0 {
		t.Errorf("tokens of an empty store: %+v", ts)
	}
	// Created out of order; two at the same time.
	for _, e := range []store.EnrollToken{
		fullToken("b", at(time.Second)),
		fullToken("c", at(3*time.Second)),
		fullToken("a", at(time.Second)),
		fullToken("d", at(2*time.Second)),
	} {
		createToken(t, s, e)
	}
	var got []string
	for _, e := range tokens(t, s) {
		got = append(got, e.Hash)
	}
	if fmt.Sprint(got) != "[c d a b]" && fmt.Sprint(got) != "[c d b a]" {
		t.Errorf("tokens %v, want newest first: c d, then a and b", got)
	}

	dup := fullToken("c", at(time.Hour))
	dup.Comment = "other"
	err := s.Update(testCtx(t), func(tx store.Tx) error { return tx.CreateEnrollToken(dup) })
	wantErr(t, "CreateEnrollToken of a known hash", err, store.ErrExists)
	if ts := tokens(t, s); len(ts) != 4 || ts[0].Hash != "c" || ts[0].Comment == "other" {
		t.Errorf("a duplicate changed the tokens: %+v", ts)
	}
}

func testEnrollTokenInvalid(t *testing.T, s store.Store) {
	for name, e := range map[string]store.EnrollToken{
		"no hash":                 {CreatedAt: t0, ExpiresAt: at(time.Hour)},
		"no creation time":        {Hash: "x", ExpiresAt: at(time.Hour)},
		"no expiry":               {Hash: "x", CreatedAt: t0},
		"expiring before created": {Hash: "x", CreatedAt: t0, ExpiresAt: at(-time.Millisecond)},
	} {
		err := s.Update(testCtx(t), func(tx store.Tx) error { return tx.CreateEnrollToken(e) })
		wantErr(t, "CreateEnrollToken, "+name, err, store.ErrInvalid)
	}
	if ts := tokens(t, s); len(ts) != 0 {
		t.Errorf("invalid tokens stored: %+v", ts)
	}

	createToken(t, s, fullToken("x", t0))
	wantErr(t, "UseEnrollToken without a hash", useToken(t, s, "", "host-a", t0), store.ErrInvalid)
	wantErr(t, "UseEnrollToken without a host", useToken(t, s, "x", "", t0), store.ErrInvalid)
	if ts := tokens(t, s); len(ts) != 1 || !ts[0].UsedAt.IsZero() || ts[0].UsedBy != "" {
		t.Errorf("an invalid use changed the token: %+v", ts)
	}
}

func testEnrollTokenUse(t *testing.T, s store.Store) {
	tok := fullToken("once", t0)
	createToken(t, s, tok)
	noErr(t, "first use", useToken(t, s, "once", "host-a", at(time.Minute)))

	err := useToken(t, s, "once", "host-b", at(2*time.Minute))
	wantErr(t, "second use", err, store.ErrTokenSpent)
	ts := tokens(t, s)
	if len(ts) != 1 || ts[0].UsedBy != "host-a" || !ts[0].UsedAt.Equal(ms(at(time.Minute))) {
		t.Errorf("after a second use: %+v, want used by host-a at %v", ts, ms(at(time.Minute)))
	}

	wantErr(t, "unknown token", useToken(t, s, "nope", "host-a", t0), store.ErrNotFound)
}

// testEnrollTokenHost: a token issued for one host enrols that host and no
// other, and says so; using it returns it whole.
func testEnrollTokenHost(t *testing.T, s store.Store) {
	tok := fullToken("bound", t0)
	tok.HostID, tok.Readmit = "host-a", true
	createToken(t, s, tok)
	wantErr(t, "another host", useToken(t, s, "bound", "host-b", at(time.Minute)), store.ErrTokenHost)
	var got store.EnrollToken
	update(t, s, func(tx store.Tx) (err error) {
		got, err = tx.UseEnrollToken("bound", "host-a", at(2*time.Minute))
		return err
	})
	want := tok
	want.UsedAt, want.UsedBy = at(2*time.Minute), "host-a"
	same(t, "token used", want, got)
	same(t, "token listed", want, tokens(t, s)[0])
	wantErr(t, "its host again", useToken(t, s, "bound", "host-a", at(3*time.Minute)), store.ErrTokenSpent)
	bad := fullToken("readmit-nobody", t0)
	bad.Readmit = true
	err := s.Update(testCtx(t), func(tx store.Tx) error { return tx.CreateEnrollToken(bad) })
	wantErr(t, "a re-admitting token without a host", err, store.ErrInvalid)
}

func testEnrollTokenExpiry(t *testing.T, s store.Store) {
	// Whole milliseconds, so that "at expiry" is exact in every store.
	created := ms(t0)
	expires := created.Add(time.Hour)
	createToken(t, s, store.EnrollToken{Hash: "late", CreatedAt: created, ExpiresAt: expires})
	createToken(t, s, store.EnrollToken{Hash: "just", CreatedAt: created, ExpiresAt: expires})

	wantErr(t, "use at expiry", useToken(t, s, "late", "host-a", expires), store.ErrTokenSpent)
	wantErr(t, "use after expiry", useToken(t, s, "late", "host-a", expires.Add(time.Hour)), store.ErrTokenSpent)
	noErr(t, "use just before expiry", useToken(t, s, "just", "host-b", expires.Add(-time.Millisecond)))

	for _, e := range tokens(t, s) {
		switch {
		case e.Hash == "late" && (!e.UsedAt.IsZero() || e.UsedBy != ""):
			t.Errorf("expired token changed: %+v", e)
		case e.Hash == "just" && e.UsedBy != "host-b":
			t.Errorf("token used before expiry: %+v", e)
		}
	}
}

// testEnrollTokenRace has 20 hosts race to use one token: exactly one wins,
// and the token names it.
func testEnrollTokenRace(t *testing.T, s store.Store) {
	createToken(t, s, fullToken("race", t0))
	const n = 20
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Update(testCtx(t), func(tx store.Tx) error {
				_, err := tx.UseEnrollToken("race", fmt.Sprintf("host-%d", i), at(time.Second))
				return err
			})
		}()
	}
	wg.Wait()
	winner := ""
	for i, err := range errs {
		switch {
		case err == nil && winner != "":
			t.Errorf("host-%d used the token too (after %s)", i, winner)
		case err == nil:
			winner = fmt.Sprintf("host-%d", i)
		case !errors.Is(err, store.ErrTokenSpent):
			t.Errorf("host-%d: %v, want ErrTokenSpent", i, err)
		}
	}
	if winner == "" {
		t.Fatal("no use of the token succeeded")
	}
	if ts := tokens(t, s); len(ts) != 1 || ts[0].UsedBy != winner {
		t.Errorf("token %+v, want used by %s", ts, winner)
	}
}

func testAgentCredentials(t *testing.T, s store.Store) {
	c := store.AgentCredential{HostID: "h1", Hash: "abc", CreatedAt: t0}
	update(t, s, func(tx store.Tx) error { return tx.PutAgentCredential(c) })
	got, err := credential(t, s, "h1")
	noErr(t, "AgentCredential", err)
	same(t, "credential", c, got)

	// Revoking twice keeps the first time.
	update(t, s, func(tx store.Tx) error { return tx.RevokeAgent("h1", at(time.Hour)) })
	update(t, s, func(tx store.Tx) error { return tx.RevokeAgent("h1", at(2*time.Hour)) })
	c.RevokedAt = at(time.Hour)
	got, err = credential(t, s, "h1")
	noErr(t, "AgentCredential", err)
	same(t, "revoked credential", c, got)

	// Enrolling again replaces the credential, revocation included.
	c2 := store.AgentCredential{HostID: "h1", Hash: "def", CreatedAt: at(3 * time.Hour)}
	update(t, s, func(tx store.Tx) error { return tx.PutAgentCredential(c2) })
	got, err = credential(t, s, "h1")
	noErr(t, "AgentCredential", err)
	same(t, "replaced credential", c2, got)

	// Every field round-trips, a revocation time included.
	c3 := store.AgentCredential{HostID: "h-ü 2", Hash: "0123abcd", CreatedAt: at(-time.Hour), RevokedAt: at(time.Second + 1)}
	update(t, s, func(tx store.Tx) error { return tx.PutAgentCredential(c3) })
	got, err = credential(t, s, c3.HostID)
	noErr(t, "AgentCredential", err)
	same(t, "full credential", c3, got)
	if got, err := credential(t, s, "h1"); err != nil || got.Hash != "def" {
		t.Errorf("another host's credential changed: %+v (%v)", got, err)
	}

	err = s.Update(testCtx(t), func(tx store.Tx) error { return tx.RevokeAgent("nobody", t0) })
	wantErr(t, "RevokeAgent of an unknown host", err, store.ErrNotFound)
	_, err = credential(t, s, "nobody")
	wantErr(t, "AgentCredential of an unknown host", err, store.ErrNotFound)
}

func testAgentCredentialInvalid(t *testing.T, s store.Store) {
	for name, c := range map[string]store.AgentCredential{
		"no host":          {Hash: "abc", CreatedAt: t0},
		"no hash":          {HostID: "h", CreatedAt: t0},
		"no creation time": {HostID: "h", Hash: "abc"},
	} {
		err := s.Update(testCtx(t), func(tx store.Tx) error { return tx.PutAgentCredential(c) })
		wantErr(t, "PutAgentCredential, "+name, err, store.ErrInvalid)
	}
	if _, err := credential(t, s, "h"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("invalid credential stored (%v)", err)
	}
}

// testAgentsRollback changes existing tokens and credentials in a
// transaction that fails: none of it stays.
func testAgentsRollback(t *testing.T, s store.Store) {
	createToken(t, s, fullToken("t1", t0))
	c := store.AgentCredential{HostID: "h1", Hash: "abc", CreatedAt: t0}
	update(t, s, func(tx store.Tx) error { return tx.PutAgentCredential(c) })
	before := tokens(t, s)

	err := s.Update(testCtx(t), func(tx store.Tx) error {
		_, useErr := tx.UseEnrollToken("t1", "host-a", at(time.Second))
		for _, err := range []error{
			useErr,
			tx.CreateEnrollToken(fullToken("t2", t0)),
			tx.RevokeAgent("h1", at(time.Second)),
			tx.PutAgentCredential(store.AgentCredential{HostID: "h2", Hash: "x", CreatedAt: t0}),
		} {
			if err != nil {
				t.Errorf("write inside the failing transaction: %v", err)
			}
		}
		return errBoom
	})
	wantErr(t, "Update", err, errBoom)

	same(t, "tokens after a rollback", before, tokens(t, s))
	got, err := credential(t, s, "h1")
	noErr(t, "AgentCredential", err)
	same(t, "credential after a rollback", c, got)
	_, err = credential(t, s, "h2")
	wantErr(t, "credential put in a rolled-back transaction", err, store.ErrNotFound)
}
