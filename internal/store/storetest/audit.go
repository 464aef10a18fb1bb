package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

// The audit log: appended in order, listed newest first, paged by Seq,
// kept by Prune; an entry without a time, actor or action is refused.
func testAudit(t *testing.T, s store.Store) {
	var seqs []int64
	for i := range 5 {
		e := store.AuditEntry{At: at(time.Duration(i) * time.Second), Actor: "token:1a2b3c4d",
			Action: "host.drain", Target: fmt.Sprintf("host-%d", i), Addr: "192.0.2.7:4242", Via: "dashboard",
			Result: "ok — 'quoted' \"text\""}
		update(t, s, func(tx store.Tx) error {
			seq, err := tx.AppendAudit(e)
			seqs = append(seqs, seq)
			return err
		})
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("audit seqs %v: not increasing", seqs)
		}
	}
	var all, page []store.AuditEntry
	view(t, s, func(tx store.ReadTx) (err error) {
		if all, err = tx.Audit(store.AuditFilter{}); err != nil {
			return err
		}
		page, err = tx.Audit(store.AuditFilter{Before: seqs[3], Limit: 2})
		return err
	})
	if len(all) != 5 {
		t.Fatalf("Audit: %d entries, want 5", len(all))
	}
	for i, e := range all {
		k := 4 - i
		want := store.AuditEntry{Seq: seqs[k], At: ms(at(time.Duration(k) * time.Second)), Actor: "token:1a2b3c4d",
			Action: "host.drain", Target: fmt.Sprintf("host-%d", k), Addr: "192.0.2.7:4242", Via: "dashboard",
			Result: "ok — 'quoted' \"text\""}
		same(t, fmt.Sprintf("audit entry %d", i), want, e)
	}
	if len(page) != 2 || page[0].Seq != seqs[2] || page[1].Seq != seqs[1] {
		t.Errorf("Audit(before %d, limit 2) = %+v, want seqs %d, %d", seqs[3], page, seqs[2], seqs[1])
	}

	for _, bad := range []store.AuditEntry{
		{Actor: "a", Action: "x"},
		{At: t0, Action: "x"},
		{At: t0, Actor: "a"},
	} {
		err := s.Update(testCtx(t), func(tx store.Tx) error { _, err := tx.AppendAudit(bad); return err })
		wantErr(t, fmt.Sprintf("AppendAudit(%+v)", bad), err, store.ErrInvalid)
	}
	err := s.View(testCtx(t), func(tx store.ReadTx) error { _, err := tx.Audit(store.AuditFilter{Limit: -1}); return err })
	wantErr(t, "Audit(limit -1)", err, store.ErrInvalid)

	if _, err := s.Prune(testCtx(t), at(time.Hour)); err != nil {
		t.Fatal(err)
	}
	view(t, s, func(tx store.ReadTx) (err error) {
		all, err = tx.Audit(store.AuditFilter{})
		return err
	})
	if len(all) != 5 {
		t.Errorf("after Prune: %d audit entries, want 5 (the log is kept)", len(all))
	}
}
