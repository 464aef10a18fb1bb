package storetest

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/store"
)

// Samples arrive in batches and come back in order, across runners kept
// apart; a profile replaces its runner's samples; a rollback keeps neither.
func testProfiles(t *testing.T, s store.Store) {
	smp := func(sec int, cpu float64) profile.Sample {
		return profile.Sample{At: at(time.Duration(sec) * time.Second), CPUSeconds: cpu, RSS: 1 << 30, GuestOK: true,
			GuestCPUSeconds: cpu * 2, MemTotal: 2 << 30, MemAvailable: 1 << 30, Procs: 7, NetRx: 1 << 40}
	}
	update(t, s, func(tx store.Tx) error {
		for _, b := range [][]profile.Sample{{smp(0, 0), smp(1, 0.5)}, {smp(2, 1.5)}} {
			if err := tx.AddProfileSamples("r1", at(0), b); err != nil {
				return err
			}
		}
		if err := tx.AddProfileSamples("r2", at(0), []profile.Sample{smp(9, 9)}); err != nil {
			return err
		}
		return tx.AddProfileSamples("r1", at(0), nil)
	})
	var got []profile.Sample
	view(t, s, func(tx store.ReadTx) error {
		var err error
		got, err = tx.ProfileSamples("r1")
		return err
	})
	same(t, "samples of r1", []profile.Sample{smp(0, 0), smp(1, 0.5), smp(2, 1.5)}, got)

	p := store.Profile{Runner: "r1", JobID: 1 << 40, EndedAt: at(time.Minute), Profile: profile.Build(got, 2, 2<<30, 0)}
	update(t, s, func(tx store.Tx) error { return tx.PutProfile(p) })
	view(t, s, func(tx store.ReadTx) error {
		stored, err := tx.Profile("r1")
		noErr(t, "Profile", err)
		same(t, "profile of r1", p, stored)
		if left, err := tx.ProfileSamples("r1"); err != nil || len(left) != 0 {
			t.Errorf("samples left after the profile: %d, %v", len(left), err)
		}
		if left, err := tx.ProfileSamples("r2"); err != nil || len(left) != 1 {
			t.Errorf("another runner's samples: %d, %v", len(left), err)
		}
		if _, err := tx.Profile("r2"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Profile of a runner without one: %v", err)
		}
		return nil
	})
	boom := errors.New("boom")
	err := s.Update(testCtx(t), func(tx store.Tx) error {
		if err := tx.AddProfileSamples("r3", at(0), []profile.Sample{smp(1, 1)}); err != nil {
			return err
		}
		if err := tx.PutProfile(store.Profile{Runner: "r3", Profile: profile.Build(nil, 1, 1, 0)}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update: %v", err)
	}
	view(t, s, func(tx store.ReadTx) error {
		if ss, _ := tx.ProfileSamples("r3"); len(ss) != 0 {
			t.Error("samples of a rolled-back update kept")
		}
		if _, err := tx.Profile("r3"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("profile of a rolled-back update: %v", err)
		}
		return nil
	})
	update(t, s, func(tx store.Tx) error {
		if err := tx.AddProfileSamples("", at(0), []profile.Sample{smp(1, 1)}); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("samples without a runner: %v", err)
		}
		if err := tx.PutProfile(store.Profile{}); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("a profile without a runner: %v", err)
		}
		return nil
	})
}

// Prune lets samples go with the runners' week, and profiles only
// ProfileExtraRetention later.
func testPruneProfiles(t *testing.T, s store.Store) {
	cut := at(30 * 24 * time.Hour)
	update(t, s, func(tx store.Tx) error {
		if err := tx.AddProfileSamples("old", cut.Add(-time.Millisecond), []profile.Sample{{At: at(0)}}); err != nil {
			return err
		}
		if err := tx.AddProfileSamples("new", cut, []profile.Sample{{At: at(0)}}); err != nil {
			return err
		}
		for name, ended := range map[string]time.Time{
			"week-old":   cut.Add(-time.Hour),
			"too-old":    cut.Add(-store.ProfileExtraRetention - time.Millisecond),
			"just-young": cut.Add(-store.ProfileExtraRetention),
		} {
			if err := tx.PutProfile(store.Profile{Runner: name, EndedAt: ended}); err != nil {
				return err
			}
		}
		return nil
	})
	n, err := s.Prune(testCtx(t), cut)
	noErr(t, "Prune", err)
	if n != 2 {
		t.Errorf("Prune removed %d rows, want 2 (a batch of samples, a profile)", n)
	}
	view(t, s, func(tx store.ReadTx) error {
		for runner, kept := range map[string]bool{"old": false, "new": true} {
			if ss, _ := tx.ProfileSamples(runner); (len(ss) > 0) != kept {
				t.Errorf("samples of %s kept=%v, want %v", runner, len(ss) > 0, kept)
			}
		}
		for runner, kept := range map[string]bool{"week-old": true, "too-old": false, "just-young": true} {
			if _, err := tx.Profile(runner); (err == nil) != kept {
				t.Errorf("profile %s kept=%v (%v), want %v", runner, err == nil, err, kept)
			}
		}
		return nil
	})
}

// ProfiledRuns joins profiles with their jobs, newest profile first, and
// filters by time, org (without case), an org scope, repository and limit.
func testProfiledRuns(t *testing.T, s store.Store) {
	full := fullJob(1, store.JobCompleted) // acme/widgets
	other := minJob(2, store.JobCompleted)
	other.Org, other.Repo = "Bob", "Bob/lib"
	update(t, s, func(tx store.Tx) error {
		for _, j := range []store.Job{full, other, minJob(3, store.JobQueued)} {
			if err := tx.CreateJob(j, store.Event{}); err != nil {
				return err
			}
		}
		for i, p := range []store.Profile{
			{Runner: "ra", JobID: 1, EndedAt: at(time.Hour), Profile: profile.Profile{Summary: profile.Summary{Samples: 10, CPUPeak: 1.5}}},
			{Runner: "rb", JobID: 2, EndedAt: at(2 * time.Hour), Profile: profile.Profile{Summary: profile.Summary{Samples: 20}}},
			{Runner: "rc", JobID: 0, EndedAt: at(3 * time.Hour)},  // ran no job
			{Runner: "rd", JobID: 99, EndedAt: at(3 * time.Hour)}, // a job Tandem does not have
		} {
			if err := tx.PutProfile(p); err != nil {
				t.Errorf("profile %d: %v", i, err)
			}
		}
		return nil
	})
	ids := func(f store.ProfiledRunFilter) []int64 {
		var out []int64
		view(t, s, func(tx store.ReadTx) error {
			rs, err := tx.ProfiledRuns(f)
			noErr(t, "ProfiledRuns", err)
			for _, r := range rs {
				out = append(out, r.ID)
			}
			return nil
		})
		return out
	}
	for name, c := range map[string]struct {
		f    store.ProfiledRunFilter
		want []int64
	}{
		"all":         {store.ProfiledRunFilter{}, []int64{2, 1}},
		"since":       {store.ProfiledRunFilter{Since: at(90 * time.Minute)}, []int64{2}},
		"org":         {store.ProfiledRunFilter{Org: "BOB"}, []int64{2}},
		"repo":        {store.ProfiledRunFilter{Repo: "ACME/Widgets"}, []int64{1}},
		"scope":       {store.ProfiledRunFilter{Orgs: []string{"acme"}}, []int64{1}},
		"empty scope": {store.ProfiledRunFilter{Orgs: []string{}}, nil},
		"limit":       {store.ProfiledRunFilter{Limit: 1}, []int64{2}},
	} {
		if got := ids(c.f); !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", name, got, c.want)
		}
	}
	view(t, s, func(tx store.ReadTx) error {
		rs, err := tx.ProfiledRuns(store.ProfiledRunFilter{Repo: "acme/widgets"})
		noErr(t, "ProfiledRuns", err)
		if len(rs) == 1 {
			same(t, "profiled run's job", full, rs[0].Job)
			if rs[0].Summary.CPUPeak != 1.5 || !rs[0].EndedAt.Equal(at(time.Hour).Truncate(time.Millisecond)) {
				t.Errorf("profiled run %+v", rs[0])
			}
		}
		if _, err := tx.ProfiledRuns(store.ProfiledRunFilter{Limit: -1}); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("negative limit: %v", err)
		}
		return nil
	})
}
