// Package storetest is the conformance suite for store.Store
// implementations. Every implementation runs it from its own tests:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store { return openFresh(t) })
//	}
//
// Besides what store.go documents, the suite pins down these semantics:
//   - times come back in UTC with millisecond precision (truncated), the
//     zero time as the zero time;
//   - empty and nil slices are interchangeable (either may come back);
//   - a delivery needs a GUID, an event and a receive time, a counter a name
//     and a repository a name (store.ErrInvalid otherwise);
//   - PendingDeliveries needs a positive limit (store.ErrInvalid otherwise);
//   - delivery sequence numbers are never reused, even after Prune removed
//     the newest one;
//   - a runner that ended may be put again only as ended;
//   - JobEvents of a job without events (or unknown) is empty, not an error;
//   - a View sees one snapshot from its first read on;
//   - an enrolment token needs a hash, a creation time and an expiry not
//     before it; enrolment tokens created at the same time are listed in
//     either order; a token is expired from its ExpiresAt on (using it at
//     exactly ExpiresAt gives ErrTokenSpent);
//   - UseEnrollToken needs a hash and a host id, an agent credential a host
//     id, a hash and a creation time (store.ErrInvalid otherwise);
//   - PutAgentCredential stores RevokedAt as given (a new credential has it
//     zero).
package storetest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/store"

	"github.com/tandem-ci/tandem/internal/egress"
)

// Run runs the conformance suite. open must return a new, empty store for
// each call and close it when t ends; closing a store twice must be
// harmless (one test closes it itself).
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"DeliveryRoundTrip", testDeliveryRoundTrip},
		{"DeliveryInvalid", testDeliveryInvalid},
		{"DeliveryDedupe", testDeliveryDedupe},
		{"DeliveryDedupeConcurrent", testDeliveryDedupeConcurrent},
		{"PendingDeliveries", testPendingDeliveries},
		{"DeliverySeqNotReused", testDeliverySeqNotReused},
		{"JobRoundTrip", testJobRoundTrip},
		{"CreateJobEvent", testCreateJobEvent},
		{"CreateJobTwice", testCreateJobTwice},
		{"JobTransitions", testJobTransitions},
		{"JobEventsOrder", testJobEventsOrder},
		{"JobInvalid", testJobInvalid},
		{"JobFilters", testJobFilters},
		{"CountJobs", testCountJobs},
		{"RunnerRoundTrip", testRunnerRoundTrip},
		{"RunnerEndedStaysEnded", testRunnerEnded},
		{"RunnerInvalid", testRunnerInvalid},
		{"RunnerFilters", testRunnerFilters},
		{"HostRoundTrip", testHostRoundTrip},
		{"HostInvalid", testHostInvalid},
		{"Repos", testRepos},
		{"Installations", testInstallations},
		{"Counters", testCounters},
		{"NotFound", testNotFound},
		{"UpdateAtomic", testUpdateAtomic},
		{"UpdateReturnsFnError", testUpdateReturnsFnError},
		{"ContextCancelled", testContextCancelled},
		{"ViewSnapshot", testViewSnapshot},
		{"ConcurrentUpdates", testConcurrentUpdates},
		{"Prune", testPrune},
		{"Closed", testClosed},
		{"EnrollTokenRoundTrip", testEnrollTokenRoundTrip},
		{"EnrollTokenList", testEnrollTokenList},
		{"EnrollTokenInvalid", testEnrollTokenInvalid},
		{"EnrollTokenUse", testEnrollTokenUse},
		{"EnrollTokenHost", testEnrollTokenHost},
		{"EnrollTokenExpiry", testEnrollTokenExpiry},
		{"EnrollTokenRace", testEnrollTokenRace},
		{"AgentCredentials", testAgentCredentials},
		{"AgentCredentialInvalid", testAgentCredentialInvalid},
		{"AgentsRollback", testAgentsRollback},
		{"Audit", testAudit},
		{"Profiles", testProfiles},
		{"PruneProfiles", testPruneProfiles},
		{"ProfiledRuns", testProfiledRuns},
		{"JobStats", testJobStats},
		{"ParityCommits", testParityCommits},
		{"RepoTiers", testRepoTiers},
		{"CountQueuedSince", testCountQueuedSince},
		{"HostLoad", testHostLoad},
		{"TouchHosts", testTouchHosts},
		{"RunnerCommands", testRunnerCommands},
		{"Retries", testRetries},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

// t0 has nanoseconds and a zone other than UTC, so that round trips check
// the millisecond truncation and the conversion to UTC.
var t0 = time.Date(2025, 3, 14, 15, 9, 26, 535_897_932, time.FixedZone("UTC+3", 3*3600))

// at returns t0 plus d.
func at(d time.Duration) time.Time { return t0.Add(d) }

// ms is t as the store keeps it: UTC, truncated to the millisecond.
func ms(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return time.UnixMilli(t.UnixMilli()).UTC()
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func update(t *testing.T, s store.Store, fn func(store.Tx) error) {
	t.Helper()
	if err := s.Update(testCtx(t), fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

func view(t *testing.T, s store.Store, fn func(store.ReadTx) error) {
	t.Helper()
	if err := s.View(testCtx(t), fn); err != nil {
		t.Fatalf("View: %v", err)
	}
}

// wantErr fails unless err is (wraps) target.
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: error %v, want %v", what, err, target)
	}
}

// noErr fails the test on err.
func noErr(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// same reports differences between want (as written) and got (as read back),
// field by field, allowing for the store's time precision and for empty
// slices coming back nil.
func same(t *testing.T, what string, want, got any) {
	t.Helper()
	var diffs []string
	compare("", reflect.ValueOf(want), reflect.ValueOf(got), &diffs)
	if len(diffs) > 0 {
		t.Errorf("%s differs:\n  %s", what, strings.Join(diffs, "\n  "))
	}
}

var timeType = reflect.TypeFor[time.Time]()

func compare(path string, want, got reflect.Value, diffs *[]string) {
	if want.Type() != got.Type() {
		*diffs = append(*diffs, fmt.Sprintf("%s: type %s, want %s", path, got.Type(), want.Type()))
		return
	}
	switch {
	case want.Type() == timeType:
		w, g := ms(want.Interface().(time.Time)), got.Interface().(time.Time)
		switch {
		case !g.Equal(w):
			*diffs = append(*diffs, fmt.Sprintf("%s: %v, want %v", path, g, w))
		case g.Location() != time.UTC:
			*diffs = append(*diffs, fmt.Sprintf("%s: %v is not in UTC", path, g))
		}
	case want.Kind() == reflect.Struct && !exported(want.Type()):
		// Another package's value type (netip.Addr): compared whole.
		if !reflect.DeepEqual(want.Interface(), got.Interface()) {
			*diffs = append(*diffs, fmt.Sprintf("%s: %v, want %v", path, got.Interface(), want.Interface()))
		}
	case want.Kind() == reflect.Struct:
		for i := range want.NumField() {
			compare(path+"."+want.Type().Field(i).Name, want.Field(i), got.Field(i), diffs)
		}
	case want.Kind() == reflect.Slice:
		if want.Len() != got.Len() {
			*diffs = append(*diffs, fmt.Sprintf("%s: %v (len %d), want %v (len %d)",
				path, got.Interface(), got.Len(), want.Interface(), want.Len()))
			return
		}
		for i := range want.Len() {
			compare(fmt.Sprintf("%s[%d]", path, i), want.Index(i), got.Index(i), diffs)
		}
	default:
		if !reflect.DeepEqual(want.Interface(), got.Interface()) {
			*diffs = append(*diffs, fmt.Sprintf("%s: %#v, want %#v", path, got.Interface(), want.Interface()))
		}
	}
}

// exported reports whether every field of struct type t is exported.
func exported(t reflect.Type) bool {
	for i := range t.NumField() {
		if !t.Field(i).IsExported() {
			return false
		}
	}
	return true
}

// fullJob returns a job with every field set.
func fullJob(id int64, state store.JobState) store.Job {
	ls := []string{"tandem-arm64-4cpu-8gb", "Self-Hosted"}
	return store.Job{
		ID:                id,
		RunID:             id*10 + 1,
		RunAttempt:        2,
		Installation:      4242,
		Org:               "acme",
		Repo:              "acme/widgets",
		Name:              "build — ünïcode, 'quotes' \"and\" ,commas",
		Workflow:          ".github/workflows/ci.yml",
		Labels:            ls,
		LabelKey:          store.LabelKey(ls),
		Arch:              arch.ARM64,
		VCPUs:             4.5,
		MemoryMiB:         8192,
		State:             state,
		Reason:            "placed on host-a",
		RunnerName:        fmt.Sprintf("tandem-%d-abc", id),
		HostID:            "host-a",
		Attempts:          3,
		Reopens:           1,
		HeadBranch:        "release/1.2",
		HeadSHA:           "3f786850e387550fdab836ed7e6dc881de23001b",
		HTMLURL:           "https://github.com/acme/widgets/actions/runs/1/job/2",
		Sender:            "octocat",
		Public:            true,
		GitHubStartedAt:   at(3 * time.Second),
		GitHubCompletedAt: at(time.Hour),
		AvoidHosts:        []string{"host-b", "host-c"},
		Conclusion:        "success",
		CreatedAt:         at(-time.Minute),
		QueuedAt:          at(1500 * time.Millisecond),
		UpdatedAt:         at(2*time.Second + 123_456_789),
		StartedAt:         at(3*time.Second + 999_999_999),
		CompletedAt:       at(time.Hour + 1),
	}
}

// minJob returns a valid job with as few fields set as possible.
func minJob(id int64, state store.JobState) store.Job {
	return store.Job{ID: id, State: state, Repo: "o/r", UpdatedAt: t0}
}

// fullRunner returns a runner with every field set.
func fullRunner(name string, state store.RunnerState) store.Runner {
	ls := []string{"tandem-4cpu-8gb"}
	return store.Runner{
		Name:         name,
		HostID:       "host-a",
		JobID:        991,
		Installation: 4242,
		Org:          "acme",
		Repo:         "acme/widgets",
		Group:        "Arm Fleet",
		Labels:       ls,
		LabelKey:     store.LabelKey(ls),
		Arch:         arch.AMD64,
		Emulated:     true,
		VCPUs:        0.5,
		MemoryMiB:    1024,
		State:        state,
		Reason:       "vm exited",
		GitHubID:     1 << 40,
		VMID:         "vm-" + name,
		ExitCode:     -1,
		Pool:         store.LabelKey(ls),
		Image:        "img-" + name,
		CreatedAt:    at(0),
		UpdatedAt:    at(time.Second),
		ReadyAt:      at(1500 * time.Millisecond),
		ClaimedAt:    at(1700 * time.Millisecond),
		KeptUntil:    at(15 * time.Minute),
		StartedAt:    at(2 * time.Second),
		BusyAt:       at(3 * time.Second),
		EndedAt:      at(4 * time.Second),
		Egress: egress.Policy{Mode: egress.Allowlist, Names: []string{"*.example.org", "github.com"},
			Nets: []egress.Net{{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Port: 443}}},
		EgressRecord: &egress.Record{Mode: egress.Allowlist, Refused: map[string]int{"evil.example": 2},
			Flows: []egress.Flow{{Addr: netip.MustParseAddr("198.51.100.7"), Proto: "tcp", Port: 443, Name: "a.example.org", Allowed: true, Count: 9}}},
	}
}

// fullHost returns a host with every field set.
func fullHost(id string) store.Host {
	return store.Host{
		ID: id,
		Arches: []store.ArchSupport{
			{Arch: arch.AMD64},
			{Arch: arch.ARM64, Emulated: true},
		},
		VCPUs:     63.5,
		MemoryMiB: 256 << 10,
		DiskMiB:   900 << 10,
		State:     store.HostDraining,
		Reason:    "kernel upgrade",
		Version:   "v1.2.3",
		LastSeen:  at(10 * time.Second),
		CreatedAt: at(-24 * time.Hour),
		Replica:   "cp-1",
	}
}

// delivery returns a delivery with a payload of n bytes.
func delivery(guid string, n int) store.Delivery {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7 + len(guid)) // includes zero bytes
	}
	return store.Delivery{GUID: guid, Event: "workflow_job", Payload: p, ReceivedAt: t0}
}

func insert(t *testing.T, s store.Store, d store.Delivery) bool {
	t.Helper()
	ok, err := s.InsertDelivery(testCtx(t), d)
	noErr(t, "InsertDelivery "+d.GUID, err)
	return ok
}
