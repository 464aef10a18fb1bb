package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

var errBoom = errors.New("boom")

// writeEverything writes one row of every kind, reading its own writes.
func writeEverything(tx store.Tx) error {
	if err := tx.CreateJob(fullJob(1, store.JobQueued), store.Event{Source: "t"}); err != nil {
		return err
	}
	if err := tx.UpdateJob(fullJob(1, store.JobScheduled), store.Event{Source: "t"}); err != nil {
		return err
	}
	if err := tx.PutRunner(fullRunner("r", store.RunnerIdle)); err != nil {
		return err
	}
	if err := tx.PutHost(fullHost("h")); err != nil {
		return err
	}
	if err := tx.TouchRepo("acme/widgets", 1, t0); err != nil {
		return err
	}
	if err := tx.AddCounter("n", 1); err != nil {
		return err
	}
	if err := tx.MarkDelivery("g", t0, ""); err != nil {
		return err
	}
	if err := tx.CreateEnrollToken(store.EnrollToken{Hash: "tok", CreatedAt: t0, ExpiresAt: at(time.Hour)}); err != nil {
		return err
	}
	if _, err := tx.UseEnrollToken("tok", "h", at(time.Second)); err != nil {
		return err
	}
	if err := tx.PutAgentCredential(store.AgentCredential{HostID: "h", Hash: "cred", CreatedAt: t0}); err != nil {
		return err
	}
	if err := tx.RevokeAgent("h", at(time.Minute)); err != nil {
		return err
	}
	if c, err := tx.AgentCredential("h"); err != nil || c.RevokedAt.IsZero() {
		return fmt.Errorf("own credential not visible: %+v %v", c, err)
	}
	if j, err := tx.Job(1); err != nil || j.State != store.JobScheduled {
		return fmt.Errorf("own write not visible: %v %v", j.State, err)
	}
	if evs, err := tx.JobEvents(1); err != nil || len(evs) != 2 {
		return fmt.Errorf("own events not visible: %d %v", len(evs), err)
	}
	return nil
}

// checkNothingWritten fails unless the store holds only delivery "g",
// pending, as written before writeEverything.
func checkNothingWritten(t *testing.T, s store.Store, what string) {
	t.Helper()
	view(t, s, func(tx store.ReadTx) error {
		if js, err := tx.Jobs(store.JobFilter{}); err != nil || len(js) != 0 {
			t.Errorf("%s: jobs %v (%v)", what, js, err)
		}
		if evs, err := tx.JobEvents(1); err != nil || len(evs) != 0 {
			t.Errorf("%s: events %v (%v)", what, evs, err)
		}
		if rs, err := tx.Runners(store.RunnerFilter{}); err != nil || len(rs) != 0 {
			t.Errorf("%s: runners %v (%v)", what, rs, err)
		}
		if hs, err := tx.Hosts(); err != nil || len(hs) != 0 {
			t.Errorf("%s: hosts %v (%v)", what, hs, err)
		}
		if rs, err := tx.Repos(time.Time{}); err != nil || len(rs) != 0 {
			t.Errorf("%s: repos %v (%v)", what, rs, err)
		}
		if c, err := tx.Counters(); err != nil || len(c) != 0 {
			t.Errorf("%s: counters %v (%v)", what, c, err)
		}
		if d, err := tx.Delivery("g"); err != nil || !d.ProcessedAt.IsZero() {
			t.Errorf("%s: delivery g processed at %v (%v)", what, d.ProcessedAt, err)
		}
		if ts, err := tx.EnrollTokens(); err != nil || len(ts) != 0 {
			t.Errorf("%s: enrolment tokens %v (%v)", what, ts, err)
		}
		if c, err := tx.AgentCredential("h"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s: credential %+v (%v)", what, c, err)
		}
		return nil
	})
}

func testUpdateAtomic(t *testing.T, s store.Store) {
	insert(t, s, delivery("g", 10))
	err := s.Update(testCtx(t), func(tx store.Tx) error {
		if err := writeEverything(tx); err != nil {
			t.Errorf("writes inside the failing transaction: %v", err)
		}
		return errBoom
	})
	if err != errBoom { //nolint:errorlint // fn's error must come back as is
		t.Errorf("Update returned %v, want fn's error as is", err)
	}
	checkNothingWritten(t, s, "after fn failed")

	// The same writes commit when fn succeeds.
	update(t, s, writeEverything)
	if c := counters(t, s); c["n"] != 1 {
		t.Errorf("counters after commit: %v", c)
	}
}

func testUpdateReturnsFnError(t *testing.T, s store.Store) {
	wrapped := fmt.Errorf("handler: %w", store.ErrNotFound)
	err := s.Update(testCtx(t), func(store.Tx) error { return wrapped })
	if !errors.Is(err, store.ErrNotFound) || !errors.Is(err, wrapped) {
		t.Errorf("Update returned %v, want %v", err, wrapped)
	}
	err = s.View(testCtx(t), func(store.ReadTx) error { return errBoom })
	wantErr(t, "View", err, errBoom)
}

func testContextCancelled(t *testing.T, s store.Store) {
	insert(t, s, delivery("g", 10))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	err := s.Update(ctx, writeEverything)
	wantErr(t, "Update with a cancelled context", err, context.Canceled)
	checkNothingWritten(t, s, "Update with a cancelled context")

	// Cancelled while fn runs: fn succeeds, the commit must not happen.
	ctx2, cancel2 := context.WithCancel(context.Background())
	err = s.Update(ctx2, func(tx store.Tx) error {
		if err := writeEverything(tx); err != nil {
			return err
		}
		cancel2()
		return nil
	})
	if err == nil {
		t.Error("Update whose context ended before commit succeeded")
	}
	checkNothingWritten(t, s, "Update cancelled before commit")

	ok, err := s.InsertDelivery(ctx, delivery("late", 10))
	wantErr(t, "InsertDelivery with a cancelled context", err, context.Canceled)
	if ok {
		t.Error("InsertDelivery with a cancelled context: inserted = true")
	}
	if _, err := getDelivery(t, s, "late"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("delivery inserted with a cancelled context was stored (%v)", err)
	}

	called := false
	err = s.View(ctx, func(store.ReadTx) error { called = true; return nil })
	if err == nil && called {
		t.Error("View with a cancelled context ran fn and succeeded")
	}
	_, err = s.PendingDeliveries(ctx, 0, 10)
	wantErr(t, "PendingDeliveries with a cancelled context", err, context.Canceled)

	update(t, s, func(tx store.Tx) error { return tx.MarkDelivery("g", t0, "") })
	_, err = s.Prune(ctx, at(time.Hour))
	wantErr(t, "Prune with a cancelled context", err, context.Canceled)
	if _, err := getDelivery(t, s, "g"); err != nil {
		t.Errorf("Prune with a cancelled context removed a delivery (%v)", err)
	}
}

// testViewSnapshot commits a change while a View is open: the View keeps
// seeing the state of its first read.
func testViewSnapshot(t *testing.T, s store.Store) {
	createJobs(t, s, fullJob(1, store.JobQueued))
	update(t, s, func(tx store.Tx) error { return tx.AddCounter("n", 1) })
	ctx := testCtx(t)
	view(t, s, func(tx store.ReadTx) error {
		before, err := tx.Counters()
		if err != nil {
			return err
		}
		done := make(chan error, 1)
		go func() {
			done <- s.Update(ctx, func(tx store.Tx) error {
				if err := tx.AddCounter("n", 1); err != nil {
					return err
				}
				if err := tx.UpdateJob(fullJob(1, store.JobScheduled), store.Event{}); err != nil {
					return err
				}
				return tx.CreateJob(fullJob(2, store.JobQueued), store.Event{})
			})
		}()
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("concurrent update: %w", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("an Update could not commit while a View was open")
		}
		after, err := tx.Counters()
		if err != nil {
			return err
		}
		if before["n"] != 1 || after["n"] != 1 {
			t.Errorf("counter inside one View: %d then %d, want 1 and 1", before["n"], after["n"])
		}
		j, err := tx.Job(1)
		if err != nil {
			return err
		}
		if j.State != store.JobQueued {
			t.Errorf("job state inside the View: %s, want queued", j.State)
		}
		if _, err := tx.Job(2); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("job created after the View's first read is visible (%v)", err)
		}
		if evs, err := tx.JobEvents(1); err != nil || len(evs) != 1 {
			t.Errorf("events inside the View: %d (%v), want 1", len(evs), err)
		}
		return nil
	})
	if c := counters(t, s); c["n"] != 2 {
		t.Errorf("counter after the View: %d, want 2", c["n"])
	}
	if _, err := getJob(t, s, 2); err != nil {
		t.Errorf("job 2 after the View: %v", err)
	}
}

// testConcurrentUpdates runs transactions that read, then write what they
// read, from many goroutines at once, alongside webhook inserts. No update
// may be lost and no job moved twice.
func testConcurrentUpdates(t *testing.T, s store.Store) {
	const (
		workers = 20
		rounds  = 10
		nJobs   = workers * rounds / 2
	)
	var js []store.Job
	for i := range nJobs {
		js = append(js, minJob(int64(i+1), store.JobQueued))
	}
	createJobs(t, s, js...)

	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers*rounds)
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				if _, err := s.InsertDelivery(ctx, delivery(fmt.Sprintf("w%d-r%d", w, r), 64)); err != nil {
					errs <- err
				}
				err := s.Update(ctx, func(tx store.Tx) error {
					if err := tx.AddCounter("ops", 1); err != nil {
						return err
					}
					queued, err := tx.Jobs(store.JobFilter{States: []store.JobState{store.JobQueued}, Limit: 1})
					if err != nil || len(queued) == 0 {
						return err
					}
					j := queued[0]
					j.State, j.RunnerName, j.UpdatedAt = store.JobScheduled, fmt.Sprintf("w%d", w), at(time.Minute)
					if err := tx.UpdateJob(j, store.Event{Source: "scheduler"}); err != nil {
						return err
					}
					return tx.AddCounter("moved", 1)
				})
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent write: %v", err)
	}
	c := counters(t, s)
	if c["ops"] != workers*rounds || c["moved"] != nJobs {
		t.Errorf("counters ops=%d moved=%d, want %d and %d", c["ops"], c["moved"], workers*rounds, nJobs)
	}
	view(t, s, func(tx store.ReadTx) error {
		counts, err := tx.CountJobs()
		if err != nil {
			return err
		}
		if counts[store.JobScheduled] != nJobs || counts[store.JobQueued] != 0 {
			t.Errorf("CountJobs = %v, want %d scheduled", counts, nJobs)
		}
		for _, j := range js {
			evs, err := tx.JobEvents(j.ID)
			if err != nil {
				return err
			}
			if len(evs) != 2 {
				t.Errorf("job %d: %d events, want 2 (moved once)", j.ID, len(evs))
			}
		}
		return nil
	})
	if ds := pending(t, s, 0, 10*workers*rounds); len(ds) != workers*rounds {
		t.Errorf("%d deliveries stored, want %d", len(ds), workers*rounds)
	}
}

func testPrune(t *testing.T, s store.Store) {
	cut := at(time.Hour)
	old, recent := at(time.Hour-time.Millisecond), at(time.Hour)
	for _, d := range []struct {
		guid string
		at   time.Time
	}{{"old-done", old}, {"old-pending", old}, {"new-done", recent}} {
		dd := delivery(d.guid, 8)
		dd.ReceivedAt = d.at
		insert(t, s, dd)
	}
	j := minJob(1, store.JobQueued)
	j.UpdatedAt = old
	update(t, s, func(tx store.Tx) error {
		if err := tx.MarkDelivery("old-done", recent, ""); err != nil {
			return err
		}
		if err := tx.MarkDelivery("new-done", recent, ""); err != nil {
			return err
		}
		if err := tx.CreateJob(j, store.Event{}); err != nil { // old event
			return err
		}
		j.State, j.UpdatedAt = store.JobScheduled, recent
		if err := tx.UpdateJob(j, store.Event{}); err != nil { // recent event
			return err
		}
		for _, r := range []store.Runner{
			{Name: "ended-old", HostID: "h", State: store.RunnerEnded, EndedAt: old},
			{Name: "ended-new", HostID: "h", State: store.RunnerEnded, EndedAt: recent},
			{Name: "live-old", HostID: "h", State: store.RunnerIdle, CreatedAt: old, UpdatedAt: old},
		} {
			if err := tx.PutRunner(r); err != nil {
				return err
			}
		}
		for _, c := range []store.RunnerCommand{
			{HostID: "h", Runner: "gone", Kind: store.CommandLaunch, At: old},
			{HostID: "h", Runner: "live-old", Kind: store.CommandStop, At: recent},
		} {
			if err := tx.AddRunnerCommand(c); err != nil {
				return err
			}
		}
		return nil
	})
	n, err := s.Prune(testCtx(t), cut)
	noErr(t, "Prune", err)
	if n != 4 {
		t.Errorf("Prune removed %d rows, want 4 (a delivery, an event, a runner, a runner command)", n)
	}
	update(t, s, func(tx store.Tx) error {
		cmds, err := tx.TakeRunnerCommands([]string{"h"}, 10)
		if len(cmds) != 1 || cmds[0].Runner != "live-old" {
			t.Errorf("runner commands after Prune: %+v, want only the recent one", cmds)
		}
		return err
	})
	view(t, s, func(tx store.ReadTx) error {
		for guid, kept := range map[string]bool{"old-done": false, "old-pending": true, "new-done": true} {
			if _, err := tx.Delivery(guid); (err == nil) != kept {
				t.Errorf("delivery %s: kept=%v (%v), want kept=%v", guid, err == nil, err, kept)
			}
		}
		for name, kept := range map[string]bool{"ended-old": false, "ended-new": true, "live-old": true} {
			if _, err := tx.Runner(name); (err == nil) != kept {
				t.Errorf("runner %s: kept=%v (%v), want kept=%v", name, err == nil, err, kept)
			}
		}
		evs, err := tx.JobEvents(1)
		if err != nil {
			return err
		}
		if len(evs) != 1 || evs[0].To != store.JobScheduled {
			t.Errorf("events after Prune: %v, want only the recent one", evs)
		}
		if _, err := tx.Job(1); err != nil {
			t.Errorf("Prune removed a job: %v", err)
		}
		return nil
	})
	if n, err := s.Prune(testCtx(t), cut); err != nil || n != 0 {
		t.Errorf("second Prune: %d rows (%v), want 0", n, err)
	}
}

func testClosed(t *testing.T, s store.Store) {
	insert(t, s, delivery("g", 1))
	noErr(t, "Close", s.Close())
	ctx := testCtx(t)
	_, err := s.InsertDelivery(ctx, delivery("h", 1))
	wantErr(t, "InsertDelivery after Close", err, store.ErrClosed)
	_, err = s.PendingDeliveries(ctx, 0, 1)
	wantErr(t, "PendingDeliveries after Close", err, store.ErrClosed)
	_, err = s.Prune(ctx, t0)
	wantErr(t, "Prune after Close", err, store.ErrClosed)
	called := false
	err = s.Update(ctx, func(store.Tx) error { called = true; return nil })
	wantErr(t, "Update after Close", err, store.ErrClosed)
	err = s.View(ctx, func(store.ReadTx) error { called = true; return nil })
	wantErr(t, "View after Close", err, store.ErrClosed)
	if called {
		t.Error("fn ran after Close")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
