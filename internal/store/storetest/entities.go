package storetest

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/store"
)

func getRunner(t *testing.T, s store.Store, name string) (r store.Runner, err error) {
	t.Helper()
	view(t, s, func(tx store.ReadTx) error {
		r, err = tx.Runner(name)
		return nil
	})
	return r, err
}

func putRunners(t *testing.T, s store.Store, rs ...store.Runner) {
	t.Helper()
	update(t, s, func(tx store.Tx) error {
		for _, r := range rs {
			if err := tx.PutRunner(r); err != nil {
				return err
			}
		}
		return nil
	})
}

func testRunnerRoundTrip(t *testing.T, s store.Store) {
	full := fullRunner("r-full", store.RunnerBusy)
	minimal := store.Runner{Name: "r-min", HostID: "h", State: store.RunnerAssigned}
	putRunners(t, s, minimal, full)
	for _, want := range []store.Runner{full, minimal} {
		got, err := getRunner(t, s, want.Name)
		noErr(t, "Runner", err)
		same(t, "runner "+want.Name, want, got)
	}
	// Replace with other values, then with zero values.
	next := fullRunner("r-min", store.RunnerIdle)
	next.Emulated, next.Labels, next.ExitCode = false, []string{"a", "b"}, 3
	putRunners(t, s, next)
	got, err := getRunner(t, s, "r-min")
	noErr(t, "Runner", err)
	same(t, "replaced runner", next, got)
	zero := store.Runner{Name: "r-full", HostID: "h2", State: store.RunnerBooting}
	putRunners(t, s, zero)
	got, err = getRunner(t, s, "r-full")
	noErr(t, "Runner", err)
	same(t, "runner replaced by zero values", zero, got)
}

func testRunnerEnded(t *testing.T, s store.Store) {
	ended := fullRunner("r", store.RunnerEnded)
	putRunners(t, s, ended)
	for _, st := range store.RunnerStates {
		if st == store.RunnerEnded {
			continue
		}
		back := fullRunner("r", st)
		var err error
		update(t, s, func(tx store.Tx) error {
			err = tx.PutRunner(back)
			return nil
		})
		wantErr(t, "ended runner put as "+string(st), err, store.ErrBadTransition)
	}
	got, err := getRunner(t, s, "r")
	noErr(t, "Runner", err)
	same(t, "ended runner after refused revivals", ended, got)
	again := ended
	again.Reason, again.EndedAt = "reaped", at(time.Hour)
	putRunners(t, s, again)
	got, err = getRunner(t, s, "r")
	noErr(t, "Runner", err)
	same(t, "ended runner put as ended again", again, got)
}

func testRunnerInvalid(t *testing.T, s store.Store) {
	for name, r := range map[string]store.Runner{
		"no name":       {HostID: "h", State: store.RunnerIdle},
		"no host":       {Name: "r", State: store.RunnerIdle},
		"unknown state": {Name: "r", HostID: "h", State: "zombie"},
		"no state":      {Name: "r", HostID: "h"},
	} {
		var err error
		update(t, s, func(tx store.Tx) error {
			err = tx.PutRunner(r)
			return nil
		})
		wantErr(t, "PutRunner "+name, err, store.ErrInvalid)
	}
	var rs []store.Runner
	view(t, s, func(tx store.ReadTx) (err error) {
		rs, err = tx.Runners(store.RunnerFilter{})
		return err
	})
	if len(rs) != 0 {
		t.Errorf("invalid runners were stored: %v", rs)
	}
}

// filterRunners is the reference implementation of RunnerFilter.
func filterRunners(rs []store.Runner, f store.RunnerFilter) []string {
	var out []string
	for _, r := range rs { // rs is in name order
		if (len(f.Names) == 0 || slices.Contains(f.Names, r.Name)) &&
			(len(f.States) == 0 || slices.Contains(f.States, r.State)) &&
			(f.HostID == "" || r.HostID == f.HostID) && (f.JobID == 0 || r.JobID == f.JobID) &&
			(f.LabelKey == "" || r.LabelKey == f.LabelKey) && (f.Pool == "" || r.Pool == f.Pool) && (!f.Live || r.State != store.RunnerEnded) {
			out = append(out, r.Name)
		}
	}
	if f.Limit > 0 && len(out) > f.Limit {
		out = out[:f.Limit]
	}
	return out
}

func testRunnerFilters(t *testing.T, s store.Store) {
	var rs []store.Runner
	for i := range 25 {
		r := fullRunner(fmt.Sprintf("runner-%02d", i), store.RunnerStates[i%len(store.RunnerStates)])
		r.HostID = fmt.Sprintf("host-%d", i%3)
		r.JobID = int64(i % 4)
		r.LabelKey = []string{"k1", "k2"}[i%2]
		r.Pool = []string{"", "k1", "k2"}[i%3]
		rs = append(rs, r)
	}
	// Put them out of name order.
	for _, i := range []int{3, 1, 4, 0, 2} {
		for j := i; j < len(rs); j += 5 {
			putRunners(t, s, rs[j])
		}
	}
	byName := map[string]store.Runner{}
	for _, r := range rs {
		byName[r.Name] = r
	}
	filters := []store.RunnerFilter{
		{},
		{Names: []string{"runner-07", "runner-02", "nope"}},
		{States: []store.RunnerState{store.RunnerIdle}},
		{States: []store.RunnerState{store.RunnerBooting, store.RunnerEnded}},
		{HostID: "host-1"},
		{JobID: 2},
		{LabelKey: "k2"},
		{Live: true},
		{Live: true, States: []store.RunnerState{store.RunnerEnded, store.RunnerIdle}},
		{Live: true, HostID: "host-0", LabelKey: "k1"},
		{Pool: "k2"},
		{Live: true, Pool: "k1"},
		{Limit: 4},
		{Live: true, Limit: 6},
		{HostID: "host-9"},
	}
	for _, f := range filters {
		want := filterRunners(rs, f)
		var got []store.Runner
		view(t, s, func(tx store.ReadTx) (err error) {
			got, err = tx.Runners(f)
			return err
		})
		names := make([]string, len(got))
		for i, r := range got {
			names[i] = r.Name
			same(t, fmt.Sprintf("Runners(%+v): %s", f, r.Name), byName[r.Name], r)
		}
		if fmt.Sprint(names) != fmt.Sprint(want) {
			t.Errorf("Runners(%+v) = %v, want %v", f, names, want)
		}
	}
}

func testHostRoundTrip(t *testing.T, s store.Store) {
	full, minimal := fullHost("host-b"), store.Host{ID: "host-a", State: store.HostOnline}
	update(t, s, func(tx store.Tx) error {
		if err := tx.PutHost(full); err != nil {
			return err
		}
		return tx.PutHost(minimal)
	})
	var hs []store.Host
	view(t, s, func(tx store.ReadTx) (err error) {
		hs, err = tx.Hosts()
		return err
	})
	same(t, "Hosts", []store.Host{minimal, full}, hs)
	replaced := fullHost("host-a")
	replaced.State, replaced.Arches = store.HostCordoned, replaced.Arches[1:]
	update(t, s, func(tx store.Tx) error { return tx.PutHost(replaced) })
	var got store.Host
	view(t, s, func(tx store.ReadTx) (err error) {
		got, err = tx.Host("host-a")
		return err
	})
	same(t, "replaced host", replaced, got)
}

func testHostInvalid(t *testing.T, s store.Store) {
	for name, h := range map[string]store.Host{
		"no id":         {State: store.HostOnline},
		"unknown state": {ID: "h", State: "melting"},
		"no state":      {ID: "h"},
	} {
		var err error
		update(t, s, func(tx store.Tx) error {
			err = tx.PutHost(h)
			return nil
		})
		wantErr(t, "PutHost "+name, err, store.ErrInvalid)
	}
	var hs []store.Host
	view(t, s, func(tx store.ReadTx) (err error) {
		hs, err = tx.Hosts()
		return err
	})
	if len(hs) != 0 {
		t.Errorf("invalid hosts were stored: %v", hs)
	}
}

func testRepos(t *testing.T, s store.Store) {
	t1, t2 := at(time.Hour), at(2*time.Hour+1)
	update(t, s, func(tx store.Tx) error {
		for _, c := range []struct {
			repo string
			inst int64
			t    time.Time
		}{
			{"acme/a", 1, t1},
			{"acme/a", 2, t0}, // older: ignored
			{"zeta/z", 5, t0},
			{"acme/b", 3, t1},
			{"acme/b", 4, t2}, // newer: wins
		} {
			if err := tx.TouchRepo(c.repo, c.inst, c.t); err != nil {
				return err
			}
		}
		return nil
	})
	update(t, s, func(tx store.Tx) error { return tx.TouchRepo("acme/a", 9, t0.Add(-time.Hour)) })
	a := store.Repo{FullName: "acme/a", Installation: 1, LastActive: t1}
	b := store.Repo{FullName: "acme/b", Installation: 4, LastActive: t2}
	z := store.Repo{FullName: "zeta/z", Installation: 5, LastActive: t0}
	for _, c := range []struct {
		since time.Time
		want  []store.Repo
	}{
		{time.Time{}, []store.Repo{a, b, z}},
		{t0, []store.Repo{a, b, z}},
		{t0.Add(time.Millisecond), []store.Repo{a, b}},
		{t1, []store.Repo{a, b}},
		{t2, []store.Repo{b}},
		{t2.Add(time.Millisecond), nil},
	} {
		var got []store.Repo
		view(t, s, func(tx store.ReadTx) (err error) {
			got, err = tx.Repos(c.since)
			return err
		})
		same(t, fmt.Sprintf("Repos(%v)", c.since), c.want, got)
	}
	err := s.Update(testCtx(t), func(tx store.Tx) error { return tx.TouchRepo("", 1, t0) })
	wantErr(t, "TouchRepo without a name", err, store.ErrInvalid)
}

// An installation's state round-trips; repositories of one that is not
// active are not listed (nobody may act for them), and come back when it
// is active again; a removed repository is forgotten, without case.
func testInstallations(t *testing.T, s store.Store) {
	update(t, s, func(tx store.Tx) error {
		for _, r := range []struct {
			name string
			inst int64
		}{{"acme/a", 1}, {"acme/b", 1}, {"bob/c", 2}, {"Carol/D", 3}} {
			if err := tx.TouchRepo(r.name, r.inst, t0); err != nil {
				return err
			}
		}
		return nil
	})
	names := func() (out []string) {
		view(t, s, func(tx store.ReadTx) error {
			rs, err := tx.Repos(time.Time{})
			for _, r := range rs {
				out = append(out, r.FullName)
			}
			return err
		})
		return out
	}
	view(t, s, func(tx store.ReadTx) error {
		_, err := tx.Installation(1)
		wantErr(t, "an installation never heard of", err, store.ErrNotFound)
		return nil
	})
	sus := store.Installation{ID: 1, Account: "acme", State: store.InstallationSuspended, Reason: "suspended by octocat", UpdatedAt: at(time.Second)}
	update(t, s, func(tx store.Tx) error {
		if err := tx.PutInstallation(sus); err != nil {
			return err
		}
		if err := tx.PutInstallation(store.Installation{ID: 2, Account: "bob", State: store.InstallationRemoved, UpdatedAt: at(time.Second)}); err != nil {
			return err
		}
		return tx.RemoveRepo("carol/d")
	})
	same(t, "repos with installation 1 suspended and 2 removed", []string(nil), names())
	view(t, s, func(tx store.ReadTx) error {
		got, err := tx.Installation(1)
		sus.UpdatedAt = ms(sus.UpdatedAt)
		same(t, "installation 1", sus, got)
		return err
	})
	update(t, s, func(tx store.Tx) error {
		return tx.PutInstallation(store.Installation{ID: 1, Account: "acme", State: store.InstallationActive, UpdatedAt: at(time.Minute)})
	})
	same(t, "repos with installation 1 active again", []string{"acme/a", "acme/b"}, names())
	for _, bad := range []store.Installation{
		{ID: 0, State: store.InstallationActive, UpdatedAt: t0},
		{ID: 1, State: "paused", UpdatedAt: t0},
		{ID: 1, State: store.InstallationActive},
	} {
		err := s.Update(testCtx(t), func(tx store.Tx) error { return tx.PutInstallation(bad) })
		wantErr(t, fmt.Sprintf("installation %+v", bad), err, store.ErrInvalid)
	}
}

func counters(t *testing.T, s store.Store) map[string]int64 {
	t.Helper()
	var c map[string]int64
	view(t, s, func(tx store.ReadTx) (err error) {
		c, err = tx.Counters()
		return err
	})
	return c
}

func testCounters(t *testing.T, s store.Store) {
	if c := counters(t, s); len(c) != 0 {
		t.Errorf("counters of an empty store: %v", c)
	}
	update(t, s, func(tx store.Tx) error {
		for _, a := range []struct {
			name  string
			delta int64
		}{{"a", 1}, {"b", -2}, {"a", 5}, {"c", 0}, {"big", 1 << 62}} {
			if err := tx.AddCounter(a.name, a.delta); err != nil {
				return err
			}
		}
		return nil
	})
	update(t, s, func(tx store.Tx) error { return tx.AddCounter("a", 10) })
	want := map[string]int64{"a": 16, "b": -2, "c": 0, "big": 1 << 62}
	if c := counters(t, s); !maps.Equal(c, want) {
		t.Errorf("Counters = %v, want %v", c, want)
	}
	err := s.Update(testCtx(t), func(tx store.Tx) error { return tx.AddCounter("", 1) })
	wantErr(t, "AddCounter without a name", err, store.ErrInvalid)
}

func testNotFound(t *testing.T, s store.Store) {
	view(t, s, func(tx store.ReadTx) error {
		_, err := tx.Job(1)
		wantErr(t, "Job", err, store.ErrNotFound)
		_, err = tx.Runner("r")
		wantErr(t, "Runner", err, store.ErrNotFound)
		_, err = tx.Host("h")
		wantErr(t, "Host", err, store.ErrNotFound)
		_, err = tx.Delivery("g")
		wantErr(t, "Delivery", err, store.ErrNotFound)
		return nil
	})
	var errUpdate, errMark error
	update(t, s, func(tx store.Tx) error {
		errUpdate = tx.UpdateJob(minJob(1, store.JobQueued), store.Event{})
		errMark = tx.MarkDelivery("g", t0, "")
		return nil
	})
	wantErr(t, "UpdateJob", errUpdate, store.ErrNotFound)
	wantErr(t, "MarkDelivery", errMark, store.ErrNotFound)
	if _, err := getJob(t, s, 1); err == nil {
		t.Error("UpdateJob of an unknown job created it")
	}
}
