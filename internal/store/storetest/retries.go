package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/store"
)

// Retries of lost jobs: a round trip; one per job, and one per repository
// (without case), run, name and cause, the second refused without an
// error; the filters; PutRetry replaces and refuses an unknown job; an
// incomplete retry is refused.
func testRetries(t *testing.T, s store.Store) {
	r1 := store.Retry{JobID: 101, Installation: 7, Org: "acme", Repo: "acme/app", RunID: 9001, Name: "unit (arm64)",
		Cause: failure.HostOffline, State: store.RetryPending, Tries: 0, NextAt: at(time.Minute),
		CreatedAt: at(0), UpdatedAt: at(0)}
	added := func(r store.Retry) bool {
		t.Helper()
		var ok bool
		update(t, s, func(tx store.Tx) (err error) { ok, err = tx.AddRetry(r); return err })
		return ok
	}
	if !added(r1) {
		t.Fatal("AddRetry: the first retry of a job was not added")
	}
	dupJob := r1
	dupJob.Cause = failure.GuestCrash
	if added(dupJob) {
		t.Error("AddRetry: a second retry of job 101 (another cause) was added")
	}
	rerun := r1 // the re-run job, in the run's next attempt, lost for the same cause
	rerun.JobID, rerun.Repo = 102, "ACME/App"
	if added(rerun) {
		t.Error("AddRetry: the re-run job, lost for the same cause, was added")
	}
	other := rerun // ... and for another cause: retried
	other.Cause, other.CreatedAt, other.NextAt = failure.GuestCrash, at(time.Second), at(2*time.Minute)
	if !added(other) {
		t.Error("AddRetry: the re-run job, lost for another cause, was not added")
	}
	r3 := store.Retry{JobID: 201, Installation: 7, Org: "acme", Repo: "acme/web", RunID: 9002, Name: "lint",
		Cause: failure.VMGone, State: store.RetryRequested, Detail: "re-run requested", Tries: 1,
		CreatedAt: at(2 * time.Second), UpdatedAt: at(3 * time.Second)}
	if !added(r3) {
		t.Fatal("AddRetry: r3 not added")
	}

	list := func(f store.RetryFilter) []int64 {
		t.Helper()
		var rs []store.Retry
		view(t, s, func(tx store.ReadTx) (err error) { rs, err = tx.Retries(f); return err })
		var ids []int64
		for _, r := range rs {
			ids = append(ids, r.JobID)
		}
		return ids
	}
	for _, tc := range []struct {
		f    store.RetryFilter
		want []int64
	}{
		{store.RetryFilter{}, []int64{101, 102, 201}},
		{store.RetryFilter{States: []store.RetryState{store.RetryPending}}, []int64{101, 102}},
		{store.RetryFilter{States: []store.RetryState{store.RetryPending}, DueBy: at(time.Minute)}, []int64{101}},
		{store.RetryFilter{JobIDs: []int64{201, 102}}, []int64{102, 201}},
		{store.RetryFilter{Repo: "Acme/APP", RunID: 9001, Name: "unit (arm64)"}, []int64{101, 102}},
		{store.RetryFilter{Repo: "acme/app", RunID: 9001, Name: "lint"}, nil},
		{store.RetryFilter{Limit: 1}, []int64{101}},
	} {
		if got := list(tc.f); fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("Retries(%+v) = %v, want %v", tc.f, got, tc.want)
		}
	}

	var got []store.Retry
	view(t, s, func(tx store.ReadTx) (err error) {
		got, err = tx.Retries(store.RetryFilter{JobIDs: []int64{101}})
		return err
	})
	want := r1
	want.NextAt, want.CreatedAt, want.UpdatedAt = ms(r1.NextAt), ms(r1.CreatedAt), ms(r1.UpdatedAt)
	if len(got) != 1 {
		t.Fatalf("Retries(101) = %+v", got)
	}
	same(t, "retry 101", want, got[0])

	done := r1
	done.State, done.Detail, done.Tries, done.NextAt, done.UpdatedAt = store.RetryRequested, "GitHub: 201", 2, time.Time{}, at(time.Hour)
	update(t, s, func(tx store.Tx) error { return tx.PutRetry(done) })
	view(t, s, func(tx store.ReadTx) (err error) {
		got, err = tx.Retries(store.RetryFilter{JobIDs: []int64{101}})
		return err
	})
	want = done
	want.CreatedAt, want.UpdatedAt = ms(done.CreatedAt), ms(done.UpdatedAt)
	if len(got) != 1 {
		t.Fatalf("Retries(101) = %+v", got)
	}
	same(t, "retry 101 after PutRetry", want, got[0])

	unknown := r1
	unknown.JobID = 999
	wantErr(t, "PutRetry(unknown job)", s.Update(testCtx(t), func(tx store.Tx) error { return tx.PutRetry(unknown) }), store.ErrNotFound)
	for _, bad := range []store.Retry{
		{Repo: "a/b", RunID: 1, Cause: failure.VMGone, State: store.RetryPending},
		{JobID: 1, RunID: 1, Cause: failure.VMGone, State: store.RetryPending},
		{JobID: 1, Repo: "a/b", Cause: failure.VMGone, State: store.RetryPending},
		{JobID: 1, Repo: "a/b", RunID: 1, State: store.RetryPending},
		{JobID: 1, Repo: "a/b", RunID: 1, Cause: failure.VMGone, State: "later"},
	} {
		err := s.Update(testCtx(t), func(tx store.Tx) error { _, err := tx.AddRetry(bad); return err })
		wantErr(t, fmt.Sprintf("AddRetry(%+v)", bad), err, store.ErrInvalid)
	}
	err := s.View(testCtx(t), func(tx store.ReadTx) error { _, err := tx.Retries(store.RetryFilter{Limit: -1}); return err })
	wantErr(t, "Retries(limit -1)", err, store.ErrInvalid)
}
