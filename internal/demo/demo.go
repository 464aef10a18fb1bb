// Package demo makes a realistic history of jobs, with their resource
// profiles, for a store: several organisations of the kind Tandem is for,
// commits that run each logical job on both architectures (named in the
// matrix styles people use; a lint job on amd64 only), failures (more of
// them on arm64 where a project is still porting), queue times with rush hours, a job that grew
// slower this week, jobs that ask for far more than they use and one that
// is short of memory. `tandem dev seed` writes it into a new install's
// database so that the dashboard, `tandem insights` and `tandem rightsize`
// are worth looking at; the dashboard's benchmark fills a store with it.
//
// Everything is derived from the seed: the same seed and options make the
// same history.
package demo

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/store"
)

// FirstID is the first job id a history uses: far above GitHub's ids of
// today (and ghfake's), so that seeded jobs never meet real ones.
const FirstID = 9_000_000_000_000

// Options size a history.
type Options struct {
	Days   int // default 28
	PerDay int // jobs a day, on average (default 300)
	// Profiles: the last ProfileDays days of runs get a profile (default
	// 7; 0 keeps the default, a negative value makes none).
	ProfileDays int
	// Points is each profile's chart points (default 40).
	Points int
	Seed   uint64
}

// History is a generated history.
type History struct {
	Jobs     []store.Job
	Profiles []store.Profile
}

// job templates: what a logical job asks and uses.
type jobKind struct {
	org, repo, workflow, name string
	vcpus                     float64
	memMiB                    int
	runMin                    float64   // median minutes on amd64
	cpuUse, memUse            float64   // share of the size used at peak
	failAMD, failARM          float64   // failure rates
	armFactor                 float64   // arm64's run time against amd64's
	slowerThisWeek            float64   // run time factor in the last 7 days (1: none)
	style                     nameStyle // how the matrix names the architecture
}

// nameStyle is how a workflow names a matrix job by architecture: the
// styles people use, which parity matches into one logical job.
type nameStyle int

const (
	parenArch  nameStyle = iota // "build (arm64)"
	osAndArch                   // "unit (ubuntu-24.04, x64)", "unit (ubuntu-24.04, arm64)"
	suffixArch                  // "build-x86_64", "build-aarch64"
	amd64Only                   // "lint": runs on amd64 only
)

// jobName is the name of k's job on a.
func (k jobKind) jobName(a arch.Arch) string {
	switch k.style {
	case osAndArch:
		return k.name + " (ubuntu-24.04, " + map[arch.Arch]string{arch.AMD64: "x64", arch.ARM64: "arm64"}[a] + ")"
	case suffixArch:
		return k.name + "-" + map[arch.Arch]string{arch.AMD64: "x86_64", arch.ARM64: "aarch64"}[a]
	case amd64Only:
		return k.name
	}
	return k.name + " (" + string(a) + ")"
}

var kinds = []jobKind{
	{"containerd", "containerd/containerd", "CI", "build", 4, 8192, 7, 0.92, 0.45, 0.02, 0.03, 1.15, 1, parenArch},
	{"containerd", "containerd/containerd", "CI", "unit", 8, 16384, 9, 0.17, 0.19, 0.03, 0.04, 1.2, 1, parenArch},
	{"containerd", "containerd/containerd", "CI", "integration", 4, 8192, 24, 0.7, 0.93, 0.06, 0.09, 1.3, 1, parenArch},
	{"containerd", "containerd/nerdctl", "test", "test-rootless", 2, 4096, 16, 0.8, 0.6, 0.05, 0.07, 1.25, 1, parenArch},
	{"etcd-io", "etcd-io/etcd", "Tests", "unit", 4, 8192, 11, 0.6, 0.4, 0.02, 0.03, 1.1, 1, osAndArch},
	{"etcd-io", "etcd-io/etcd", "Tests", "integration", 4, 8192, 21, 0.75, 0.5, 0.04, 0.05, 1.15, 1.6, osAndArch},
	{"etcd-io", "etcd-io/bbolt", "CI", "test", 2, 4096, 6, 0.5, 0.3, 0.01, 0.02, 1.05, 1, parenArch},
	{"falcosecurity", "falcosecurity/libs", "CI build", "build-libs", 8, 16384, 19, 0.95, 0.55, 0.03, 0.17, 1.35, 1, parenArch},
	{"falcosecurity", "falcosecurity/falco", "CI", "build", 4, 8192, 14, 0.9, 0.45, 0.02, 0.04, 1.2, 1, suffixArch},
	{"open-telemetry", "open-telemetry/opentelemetry-collector", "build-and-test", "unittest", 4, 8192, 13, 0.85, 0.35, 0.04, 0.06, 1.1, 1, parenArch},
	{"open-telemetry", "open-telemetry/opentelemetry-collector", "build-and-test", "lint", 2, 4096, 5, 0.45, 0.3, 0.01, 0.01, 1.05, 1, amd64Only},
}

// Make makes a history ending at now.
func Make(now time.Time, o Options) History {
	if o.Days <= 0 {
		o.Days = 28
	}
	if o.PerDay <= 0 {
		o.PerDay = 300
	}
	switch {
	case o.ProfileDays == 0:
		o.ProfileDays = 7
	case o.ProfileDays < 0:
		o.ProfileDays = 0
	}
	if o.Points <= 0 {
		o.Points = 40
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x74616e64656d))
	var h History
	id := int64(FirstID)
	start := now.Add(-time.Duration(o.Days) * 24 * time.Hour)
	total := o.Days * o.PerDay
	for made := 0; made < total; {
		// A commit runs a logical job on both architectures (on amd64
		// only, for some), spread over the period, more on weekdays and
		// in working hours.
		at := start.Add(time.Duration(rng.Float64() * float64(now.Sub(start))))
		if busy(at) < rng.Float64() {
			at = start.Add(time.Duration(float64(made) / float64(total) * float64(now.Sub(start))))
		}
		k := kinds[rng.IntN(len(kinds))]
		sha := fmt.Sprintf("%016x%016x%08x", rng.Uint64(), rng.Uint64(), rng.Uint32())
		archs := arch.Machines
		if k.style == amd64Only {
			archs = archs[:1]
		}
		for _, a := range archs {
			id++
			made++
			j, p := k.run(rng, id, a, at, now, o)
			if j.CompletedAt.After(now) {
				continue // still running at now: not history
			}
			j.HeadSHA = sha
			h.Jobs = append(h.Jobs, j)
			if p != nil {
				h.Profiles = append(h.Profiles, *p)
			}
		}
	}
	return h
}

// busy is how busy the fleet is at t, from 0.2 (nights, weekends) to 1.
func busy(t time.Time) float64 {
	t = t.UTC()
	b := 0.3 + 0.7*math.Max(0, math.Sin(math.Pi*float64(t.Hour()-6)/14))
	if t.Weekday() == time.Saturday || t.Weekday() == time.Sunday {
		b *= 0.4
	}
	return math.Max(b, 0.2)
}

func (k jobKind) run(rng *rand.Rand, id int64, a arch.Arch, created, now time.Time, o Options) (store.Job, *store.Profile) {
	owner, repoName := k.org, k.repo[len(k.org)+1:]
	req := labels.Request{Arch: a, VCPUs: k.vcpus, MemoryMiB: k.memMiB}
	ls := []string{req.Canonical()}
	queue := time.Duration(rng.ExpFloat64()*20*busy(created)*float64(time.Second)) + 3*time.Second
	run := k.runMin * math.Exp(rng.NormFloat64()*0.15)
	if a == arch.ARM64 {
		run *= k.armFactor
	}
	if now.Sub(created) < 7*24*time.Hour {
		run *= k.slowerThisWeek
	}
	started := created.Add(queue)
	ended := started.Add(time.Duration(run * float64(time.Minute)))
	fail := k.failAMD
	if a == arch.ARM64 {
		fail = k.failARM
	}
	conclusion, state := "success", store.JobCompleted
	switch r := rng.Float64(); {
	case r < fail:
		conclusion = "failure"
	case r < fail+0.01:
		conclusion, state = "cancelled", store.JobCancelled
	}
	runner := fmt.Sprintf("tandem-demo%09d", id%1_000_000_000)
	j := store.Job{
		ID: id, RunID: id/4*10 + 7, RunAttempt: 1, Installation: 1, Org: owner, Repo: k.repo,
		Name: k.jobName(a), Workflow: k.workflow, Labels: ls, LabelKey: store.LabelKey(ls),
		Arch: a, VCPUs: k.vcpus, MemoryMiB: k.memMiB, State: state, Conclusion: conclusion,
		Reason: "completed: " + conclusion, RunnerName: runner, HostID: fmt.Sprintf("%s-%02d", a, rng.IntN(6)+1),
		Attempts: 1, HeadBranch: []string{"main", "main", "main", "release-1.7", "pr-" + fmt.Sprint(rng.IntN(900)+100)}[rng.IntN(5)],
		HTMLURL:   fmt.Sprintf("https://github.com/%s/%s/actions/runs/%d/job/%d", owner, repoName, id/4*10+7, id),
		Sender:    []string{"dependabot[bot]", "maintainer-a", "maintainer-b", "contributor-c"}[rng.IntN(4)],
		CreatedAt: created, QueuedAt: created.Add(time.Second), UpdatedAt: ended,
		StartedAt: started, CompletedAt: ended, GitHubStartedAt: started, GitHubCompletedAt: ended,
	}
	if state == store.JobCancelled {
		j.Reason = "cancelled on GitHub"
	}
	if o.ProfileDays <= 0 || now.Sub(ended) > time.Duration(o.ProfileDays)*24*time.Hour {
		return j, nil
	}
	// Samples shaped like a CI job: set-up, a busy middle, a tail.
	n := o.Points + 1
	step := ended.Sub(started) / time.Duration(n-1)
	var ss []profile.Sample
	cpuTotal := 0.0
	memTotal := int64(k.memMiB) << 20
	oom := int64(0)
	for i := range n {
		phase := float64(i) / float64(n-1)
		shape := math.Sin(math.Pi * phase)
		cpu := k.vcpus * k.cpuUse * (0.3 + 0.7*shape) * (0.9 + 0.2*rng.Float64())
		mem := float64(memTotal) * k.memUse * (0.4 + 0.6*shape) * (0.95 + 0.05*rng.Float64())
		if k.memUse > 0.9 && rng.IntN(40) == 0 {
			oom++
		}
		if i > 0 {
			cpuTotal += cpu * step.Seconds()
		}
		const gib, mib = 1 << 30, 1 << 20
		ss = append(ss, profile.Sample{At: started.Add(time.Duration(i) * step), CPUSeconds: cpuTotal * 1.05,
			GuestCPUSeconds: cpuTotal, RSS: int64(mem) + 200*mib, DiskAlloc: int64(phase * 3 * gib),
			DiskRead: int64(phase * 2 * gib), DiskWrite: int64(phase * 5 * gib), NetRx: int64(phase * 1500 * mib),
			NetTx: int64(phase * 40 * mib), GuestOK: true, Load1: cpu * 1.1, MemTotal: memTotal,
			MemAvailable: memTotal - int64(mem), OOMKills: oom, DiskUsed: 4*gib + int64(phase*6*gib), DiskTotal: 40 * gib,
			Procs: 80 + int(120*shape)})
	}
	return j, &store.Profile{Runner: runner, JobID: id, EndedAt: ended,
		Profile: profile.Build(ss, k.vcpus, memTotal, o.Points)}
}
