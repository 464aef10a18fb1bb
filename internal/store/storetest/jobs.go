package storetest

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/store"
)

func getJob(t *testing.T, s store.Store, id int64) (j store.Job, err error) {
	t.Helper()
	view(t, s, func(tx store.ReadTx) error {
		j, err = tx.Job(id)
		return nil
	})
	return j, err
}

func jobEvents(t *testing.T, s store.Store, id int64) []store.JobEvent {
	t.Helper()
	var evs []store.JobEvent
	view(t, s, func(tx store.ReadTx) (err error) {
		evs, err = tx.JobEvents(id)
		return err
	})
	return evs
}

func createJobs(t *testing.T, s store.Store, js ...store.Job) {
	t.Helper()
	update(t, s, func(tx store.Tx) error {
		for _, j := range js {
			if err := tx.CreateJob(j, store.Event{Source: "webhook", Reason: "queued"}); err != nil {
				return err
			}
		}
		return nil
	})
}

// checkEvent compares an event with the one a change of j from `from`
// under ev must have recorded.
func checkEvent(t *testing.T, what string, got store.JobEvent, from store.JobState, j store.Job, ev store.Event) {
	t.Helper()
	want := store.JobEvent{Seq: got.Seq, JobID: j.ID, At: j.UpdatedAt, From: from, To: j.State,
		Source: ev.Source, Reason: ev.Reason, Runner: j.RunnerName, Host: j.HostID}
	same(t, what, want, got)
	if got.Seq <= 0 {
		t.Errorf("%s: Seq = %d, want > 0", what, got.Seq)
	}
}

func testJobRoundTrip(t *testing.T, s store.Store) {
	full, minimal := fullJob(1, store.JobRunning), minJob(2, store.JobQueued)
	empty := minJob(3, store.JobQueued)
	empty.Labels, empty.AvoidHosts = []string{}, []string{}
	createJobs(t, s, full, minimal, empty)
	for _, want := range []store.Job{full, minimal, empty} {
		got, err := getJob(t, s, want.ID)
		noErr(t, "Job", err)
		same(t, fmt.Sprintf("job %d", want.ID), want, got)
	}
	var all []store.Job
	view(t, s, func(tx store.ReadTx) (err error) {
		all, err = tx.Jobs(store.JobFilter{})
		return err
	})
	same(t, "Jobs", []store.Job{full, minimal, empty}, all)

	// UpdateJob replaces every field.
	next := fullJob(2, store.JobScheduled)
	next.Labels, next.LabelKey = []string{"tandem-any-2cpu-4gb"}, "tandem-any-2cpu-4gb"
	update(t, s, func(tx store.Tx) error { return tx.UpdateJob(next, store.Event{Source: "scheduler"}) })
	got, err := getJob(t, s, 2)
	noErr(t, "Job", err)
	same(t, "updated job", next, got)
	// And back to zero values.
	back := minJob(2, store.JobScheduled)
	update(t, s, func(tx store.Tx) error { return tx.UpdateJob(back, store.Event{}) })
	got, err = getJob(t, s, 2)
	noErr(t, "Job", err)
	same(t, "job updated to zero values", back, got)
}

func testCreateJobEvent(t *testing.T, s store.Store) {
	j := fullJob(7, store.JobQueued)
	ev := store.Event{Source: "webhook", Reason: "queued by GitHub"}
	update(t, s, func(tx store.Tx) error { return tx.CreateJob(j, ev) })
	evs := jobEvents(t, s, 7)
	if len(evs) != 1 {
		t.Fatalf("%d events after CreateJob, want 1", len(evs))
	}
	checkEvent(t, "creation event", evs[0], "", j, ev)
}

func testCreateJobTwice(t *testing.T, s store.Store) {
	j := fullJob(5, store.JobQueued)
	createJobs(t, s, j)
	other := fullJob(5, store.JobRunning)
	other.Name = "impostor"
	var inTx error
	update(t, s, func(tx store.Tx) error {
		inTx = tx.CreateJob(other, store.Event{Source: "webhook"})
		return nil
	})
	wantErr(t, "second CreateJob", inTx, store.ErrExists)
	err := s.Update(testCtx(t), func(tx store.Tx) error { return tx.CreateJob(other, store.Event{}) })
	wantErr(t, "Update returning CreateJob's error", err, store.ErrExists)
	got, err := getJob(t, s, 5)
	noErr(t, "Job", err)
	same(t, "job after a second CreateJob", j, got)
	if evs := jobEvents(t, s, 5); len(evs) != 1 {
		t.Errorf("%d events, want 1", len(evs))
	}
}

// testJobTransitions tries every pair of states. The fn that tried an
// illegal one commits anyway: the failed UpdateJob must have written nothing.
func testJobTransitions(t *testing.T, s store.Store) {
	type pair struct{ from, to store.JobState }
	var (
		pairs []pair
		jobs  []store.Job
	)
	for _, from := range store.JobStates {
		for _, to := range store.JobStates {
			id := int64(len(pairs) + 1)
			pairs = append(pairs, pair{from, to})
			jobs = append(jobs, fullJob(id, from))
		}
	}
	createJobs(t, s, jobs...)
	for i, p := range pairs {
		before := jobs[i]
		next := before
		next.State, next.Reason = p.to, "moved"
		next.RunnerName, next.HostID = "runner-new", "host-new"
		next.Attempts++
		next.UpdatedAt = before.UpdatedAt.Add(time.Minute + 7*time.Millisecond)
		ev := store.Event{Source: "reconciler/test", Reason: fmt.Sprintf("%s to %s", p.from, p.to)}
		var err error
		update(t, s, func(tx store.Tx) error {
			err = tx.UpdateJob(next, ev)
			return nil
		})
		name := fmt.Sprintf("%s → %s", p.from, p.to)
		got, gerr := getJob(t, s, before.ID)
		noErr(t, "Job", gerr)
		evs := jobEvents(t, s, before.ID)
		if store.CanTransition(p.from, p.to) {
			if err != nil {
				t.Errorf("%s: UpdateJob: %v", name, err)
				continue
			}
			same(t, name+": job", next, got)
			if len(evs) != 2 {
				t.Errorf("%s: %d events, want 2", name, len(evs))
				continue
			}
			checkEvent(t, name+": event", evs[1], p.from, next, ev)
			if evs[1].Seq <= evs[0].Seq {
				t.Errorf("%s: event seq %d after %d", name, evs[1].Seq, evs[0].Seq)
			}
			continue
		}
		wantErr(t, name, err, store.ErrBadTransition)
		same(t, name+": job after a refused transition", before, got)
		if len(evs) != 1 {
			t.Errorf("%s: refused, yet %d events, want 1", name, len(evs))
		}
	}
}

func testJobEventsOrder(t *testing.T, s store.Store) {
	j := fullJob(1, store.JobQueued)
	createJobs(t, s, j, fullJob(2, store.JobQueued))
	states := []store.JobState{store.JobScheduled, store.JobLaunching, store.JobLaunching,
		store.JobQueued, store.JobScheduled, store.JobRunning, store.JobCompleted}
	froms := []store.JobState{""}
	for i, st := range states {
		froms = append(froms, j.State)
		j.State, j.UpdatedAt = st, j.UpdatedAt.Add(time.Second)
		j.RunnerName = fmt.Sprintf("r-%d", i)
		update(t, s, func(tx store.Tx) error {
			// Interleave another job's events.
			other := fullJob(2, store.JobQueued)
			other.UpdatedAt = j.UpdatedAt
			if err := tx.UpdateJob(other, store.Event{Source: "noise"}); err != nil {
				return err
			}
			return tx.UpdateJob(j, store.Event{Source: "test", Reason: fmt.Sprint(i)})
		})
	}
	evs := jobEvents(t, s, 1)
	if len(evs) != len(states)+1 {
		t.Fatalf("%d events, want %d", len(evs), len(states)+1)
	}
	for i, e := range evs {
		if e.JobID != 1 || e.From != froms[i] {
			t.Errorf("event %d: job %d from %q, want job 1 from %q", i, e.JobID, e.From, froms[i])
		}
		if i > 0 && (e.Seq <= evs[i-1].Seq || e.To != states[i-1]) {
			t.Errorf("event %d: seq %d (previous %d) to %q, want increasing seq to %q",
				i, e.Seq, evs[i-1].Seq, e.To, states[i-1])
		}
	}
	if evs := jobEvents(t, s, 999); len(evs) != 0 {
		t.Errorf("events of an unknown job: %v", evs)
	}
}

func testJobInvalid(t *testing.T, s store.Store) {
	good := minJob(1, store.JobQueued)
	createJobs(t, s, good)
	bad := map[string]store.Job{}
	for name, mod := range map[string]func(*store.Job){
		"zero id":        func(j *store.Job) { j.ID = 0 },
		"negative id":    func(j *store.Job) { j.ID = -1 },
		"unknown state":  func(j *store.Job) { j.State = "bogus" },
		"no state":       func(j *store.Job) { j.State = "" },
		"repo no owner":  func(j *store.Job) { j.Repo = "widgets" },
		"no update time": func(j *store.Job) { j.UpdatedAt = time.Time{} },
	} {
		j := minJob(2, store.JobQueued)
		mod(&j)
		bad["create "+name] = j
		j2 := good
		mod(&j2)
		if j2.ID == good.ID {
			bad["update "+name] = j2
		}
	}
	for name, j := range bad {
		var err error
		update(t, s, func(tx store.Tx) error {
			if strings.HasPrefix(name, "create") {
				err = tx.CreateJob(j, store.Event{})
			} else {
				err = tx.UpdateJob(j, store.Event{})
			}
			return nil
		})
		wantErr(t, name, err, store.ErrInvalid)
	}
	var all []store.Job
	view(t, s, func(tx store.ReadTx) (err error) {
		all, err = tx.Jobs(store.JobFilter{})
		return err
	})
	same(t, "jobs after invalid writes", []store.Job{good}, all)
	if evs := jobEvents(t, s, 1); len(evs) != 1 {
		t.Errorf("%d events after refused updates, want 1", len(evs))
	}
}

// filterJobs is the reference implementation of JobFilter.
func filterJobs(js []store.Job, f store.JobFilter) []int64 {
	var out []store.Job
	for _, j := range js {
		if (len(f.IDs) == 0 || slices.Contains(f.IDs, j.ID)) &&
			(len(f.States) == 0 || slices.Contains(f.States, j.State)) &&
			(f.Org == "" || strings.EqualFold(j.Org, f.Org)) && (f.Repo == "" || strings.EqualFold(j.Repo, f.Repo)) &&
			(f.Orgs == nil || slices.ContainsFunc(f.Orgs, func(o string) bool { return strings.EqualFold(o, j.Org) })) &&
			(f.RunnerName == "" || j.RunnerName == f.RunnerName) &&
			(f.LabelKey == "" || j.LabelKey == f.LabelKey) && (f.Arch == "" || j.Arch == f.Arch) &&
			(f.QueuedSince.IsZero() || !ms(j.QueuedAt).Before(ms(f.QueuedSince))) {
			out = append(out, j)
		}
	}
	sort.Slice(out, func(a, b int) bool {
		if f.Newest {
			qa, qb := ms(out[a].QueuedAt), ms(out[b].QueuedAt)
			if !qa.Equal(qb) {
				return qa.After(qb)
			}
			return out[a].ID > out[b].ID
		}
		return out[a].ID < out[b].ID
	})
	out = out[min(f.Offset, len(out)):]
	if f.Limit > 0 && len(out) > f.Limit {
		out = out[:f.Limit]
	}
	ids := make([]int64, len(out))
	for i, j := range out {
		ids[i] = j.ID
	}
	return ids
}

// jobFixtures returns 40 jobs with IDs in no particular order and repeated
// queue times, spread over orgs, repos, states, runners and label keys.
func jobFixtures() []store.Job {
	labelSets := [][]string{{"tandem-4cpu-8gb"}, {"tandem-arm64-2cpu-4gb"}, {"Tandem-4CPU-8GB", "linux"}}
	var js []store.Job
	for i := range 40 {
		j := fullJob(int64(1000+(i*37)%101), store.JobStates[i%len(store.JobStates)])
		j.Org = []string{"acme", "globex", "initech"}[i%3]
		j.Repo = j.Org + "/" + []string{"api", "web"}[i%2]
		j.RunnerName = ""
		if i%4 != 0 {
			j.RunnerName = fmt.Sprintf("runner-%d", i%4)
		}
		j.Labels = labelSets[i%3]
		j.LabelKey = store.LabelKey(j.Labels)
		j.Arch = []arch.Arch{arch.AMD64, arch.ARM64, arch.AMD64}[i%3]
		j.QueuedAt = at(time.Duration((i*7)%11) * time.Minute)
		js = append(js, j)
	}
	return js
}

func testJobFilters(t *testing.T, s store.Store) {
	js := jobFixtures()
	createJobs(t, s, js...)
	byID := map[int64]store.Job{}
	for _, j := range js {
		byID[j.ID] = j
	}
	filters := []store.JobFilter{
		{},
		{IDs: []int64{js[3].ID, js[17].ID, js[0].ID, 5}},
		{States: []store.JobState{store.JobQueued}},
		{States: []store.JobState{store.JobScheduled, store.JobLaunching, store.JobRunning}},
		{Org: "globex"},
		{Repo: "acme/web"},
		{RunnerName: "runner-2"},
		{LabelKey: store.LabelKey([]string{"tandem-4cpu-8gb"})},
		{LabelKey: store.LabelKey([]string{"linux", "tandem-4cpu-8gb"})},
		{Org: "acme", States: []store.JobState{store.JobQueued, store.JobCompleted, store.JobLost}},
		{Repo: "initech/api", RunnerName: "runner-1", LabelKey: js[0].LabelKey},
		{Newest: true},
		{Newest: true, Limit: 7},
		{Limit: 5},
		{Org: "acme", Newest: true, Limit: 3},
		{Org: "nobody"},
		{IDs: []int64{999_999}},
		{Org: "ACME"},
		{Repo: "Acme/Web"},
		{Orgs: []string{"acme", "Initech"}},
		{Orgs: []string{"GLOBEX"}, Newest: true, Limit: 4},
		{Orgs: []string{}},
		{Arch: arch.ARM64},
		{Arch: arch.AMD64, Org: "initech"},
		{QueuedSince: at(5 * time.Minute), Newest: true},
		{Newest: true, Limit: 7, Offset: 7},
		{Newest: true, Offset: 35},
		{Org: "acme", Newest: true, Limit: 5, Offset: 100},
	}
	for _, f := range filters {
		want := filterJobs(js, f)
		var got []store.Job
		view(t, s, func(tx store.ReadTx) (err error) {
			got, err = tx.Jobs(f)
			return err
		})
		ids := make([]int64, len(got))
		for i, j := range got {
			ids[i] = j.ID
		}
		if fmt.Sprint(ids) != fmt.Sprint(want) {
			t.Errorf("Jobs(%+v) = %v, want %v", f, ids, want)
			continue
		}
		for _, j := range got {
			same(t, fmt.Sprintf("Jobs(%+v): job %d", f, j.ID), byID[j.ID], j)
		}
	}
	if len(filterJobs(js, store.JobFilter{Org: "acme", States: []store.JobState{store.JobQueued, store.JobCompleted, store.JobLost}})) == 0 {
		t.Fatal("fixtures do not exercise combined filters")
	}
}

func testCountJobs(t *testing.T, s store.Store) {
	var counts map[store.JobState]int
	view(t, s, func(tx store.ReadTx) (err error) {
		counts, err = tx.CountJobs()
		return err
	})
	if len(counts) != 0 {
		t.Errorf("CountJobs of an empty store = %v", counts)
	}
	js := jobFixtures()[:23] // not a multiple of the number of states
	createJobs(t, s, js...)
	want := map[store.JobState]int{}
	for _, j := range js {
		want[j.State]++
	}
	view(t, s, func(tx store.ReadTx) (err error) {
		counts, err = tx.CountJobs()
		return err
	})
	if !maps.Equal(counts, want) {
		t.Errorf("CountJobs = %v, want %v", counts, want)
	}
}
