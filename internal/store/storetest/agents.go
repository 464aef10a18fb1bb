package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

var at0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC) // whole milliseconds, as stores keep

func testEnrollTokens(t *testing.T, s store.Store) {
	tok := store.EnrollToken{Hash: "h1", CreatedAt: at0, ExpiresAt: at0.Add(time.Hour), Comment: "rack 4"}
	update(t, s, func(tx store.Tx) error { return tx.CreateEnrollToken(tok) })
	update(t, s, func(tx store.Tx) error {
		return tx.CreateEnrollToken(store.EnrollToken{Hash: "h2", CreatedAt: at0.Add(time.Minute), ExpiresAt: at0.Add(2 * time.Minute)})
	})
	err := s.Update(context.Background(), func(tx store.Tx) error { return tx.CreateEnrollToken(tok) })
	if !errors.Is(err, store.ErrExists) {
		t.Errorf("duplicate token: %v, want ErrExists", err)
	}
	err = s.Update(context.Background(), func(tx store.Tx) error {
		return tx.CreateEnrollToken(store.EnrollToken{Hash: "h3", CreatedAt: at0, ExpiresAt: at0.Add(-time.Second)})
	})
	if !errors.Is(err, store.ErrInvalid) {
		t.Errorf("token expiring before creation: %v, want ErrInvalid", err)
	}
	use := func(hash, host string, at time.Time) error {
		return s.Update(context.Background(), func(tx store.Tx) error { return tx.UseEnrollToken(hash, host, at) })
	}
	if err := use("h1", "host-a", at0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := use("h1", "host-b", at0.Add(2*time.Minute)); !errors.Is(err, store.ErrTokenSpent) {
		t.Errorf("second use: %v, want ErrTokenSpent", err)
	}
	if err := use("h2", "host-c", at0.Add(2*time.Minute)); !errors.Is(err, store.ErrTokenSpent) {
		t.Errorf("expired token: %v, want ErrTokenSpent", err)
	}
	if err := use("nope", "host-c", at0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown token: %v, want ErrNotFound", err)
	}
	// A use inside a failing transaction leaves the token unused.
	s.Update(context.Background(), func(tx store.Tx) error {
		tx.CreateEnrollToken(store.EnrollToken{Hash: "h4", CreatedAt: at0, ExpiresAt: at0.Add(time.Hour)})
		return errors.New("rolled back")
	})
	view(t, s, func(tx store.ReadTx) error {
		ts, err := tx.EnrollTokens()
		if err != nil {
			return err
		}
		if len(ts) != 2 || ts[0].Hash != "h2" || ts[1].Hash != "h1" {
			t.Errorf("tokens %+v: want h2, h1 (newest first)", ts)
		}
		if got := ts[1]; got.UsedBy != "host-a" || !got.UsedAt.Equal(at0.Add(time.Minute)) || got.Comment != "rack 4" ||
			!got.ExpiresAt.Equal(at0.Add(time.Hour)) || !got.CreatedAt.Equal(at0) {
			t.Errorf("used token %+v", got)
		}
		return nil
	})
}

func testEnrollTokenRace(t *testing.T, s store.Store) {
	update(t, s, func(tx store.Tx) error {
		return tx.CreateEnrollToken(store.EnrollToken{Hash: "race", CreatedAt: at0, ExpiresAt: at0.Add(time.Hour)})
	})
	var ok atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.Update(context.Background(), func(tx store.Tx) error {
				return tx.UseEnrollToken("race", fmt.Sprintf("host-%d", i), at0.Add(time.Second))
			})
			if err == nil {
				ok.Add(1)
			} else if !errors.Is(err, store.ErrTokenSpent) {
				t.Errorf("use: %v", err)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 1 {
		t.Errorf("%d uses of one token succeeded, want 1", ok.Load())
	}
}

func testAgentCredentials(t *testing.T, s store.Store) {
	c := store.AgentCredential{HostID: "h1", Hash: "abc", CreatedAt: at0}
	update(t, s, func(tx store.Tx) error { return tx.PutAgentCredential(c) })
	get := func() store.AgentCredential {
		var got store.AgentCredential
		view(t, s, func(tx store.ReadTx) error {
			var err error
			got, err = tx.AgentCredential("h1")
			return err
		})
		return got
	}
	if got := get(); got.Hash != "abc" || !got.CreatedAt.Equal(at0) || !got.RevokedAt.IsZero() {
		t.Errorf("credential %+v", got)
	}
	update(t, s, func(tx store.Tx) error { return tx.RevokeAgent("h1", at0.Add(time.Hour)) })
	update(t, s, func(tx store.Tx) error { return tx.RevokeAgent("h1", at0.Add(2*time.Hour)) })
	if got := get(); !got.RevokedAt.Equal(at0.Add(time.Hour)) {
		t.Errorf("revoked at %v, want the first revocation", got.RevokedAt)
	}
	// Enrolling again replaces the credential, revocation included.
	update(t, s, func(tx store.Tx) error {
		return tx.PutAgentCredential(store.AgentCredential{HostID: "h1", Hash: "def", CreatedAt: at0.Add(3 * time.Hour)})
	})
	if got := get(); got.Hash != "def" || !got.RevokedAt.IsZero() {
		t.Errorf("re-enrolled credential %+v", got)
	}
	if err := s.Update(context.Background(), func(tx store.Tx) error { return tx.RevokeAgent("nobody", at0) }); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoke unknown: %v", err)
	}
	if err := s.View(context.Background(), func(tx store.ReadTx) error { _, err := tx.AgentCredential("nobody"); return err }); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown credential: %v", err)
	}
	if err := s.Update(context.Background(), func(tx store.Tx) error {
		return tx.PutAgentCredential(store.AgentCredential{HostID: "h2", CreatedAt: at0})
	}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("credential without a hash: %v", err)
	}
}
