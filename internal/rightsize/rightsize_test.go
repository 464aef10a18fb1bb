package rightsize

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/profile"
)

var t0 = time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)

func runs(n int, repo, name string, vcpus float64, mib int, sum func(i int) profile.Summary) []Run {
	var out []Run
	for i := range n {
		s := sum(i)
		s.Samples = 100
		if s.Seconds == 0 {
			s.Seconds = 600
		}
		out = append(out, Run{JobID: int64(i + 1), Repo: repo, Workflow: "CI", Name: name, Arch: arch.ARM64, Prefix: "tandem",
			VCPUs: vcpus, MemoryMiB: mib, EndedAt: t0.Add(time.Duration(i) * time.Hour), Summary: s})
	}
	return out
}

// The issue's own example: asked 8 vCPUs / 16 GB, used at most 1.4 / 3.1.
func TestSuggestsSmallerSize(t *testing.T) {
	rs := runs(23, "Etcd-io/etcd", "unit", 8, 16384, func(i int) profile.Summary {
		return profile.Summary{CPUPeak: 0.5 + float64(i%10)*0.1, MemPeak: int64(float64(2<<30) + float64(i)*float64(1<<30)/22)}
	})
	got := Analyze(rs, Options{})
	if len(got) != 1 {
		t.Fatalf("advice %+v", got)
	}
	a := got[0]
	if a.Runs != 23 || a.Suggest == nil || a.Suggest.Label != "tandem-arm64-2cpu-4gb" || a.FreesVCPUs != 6 || a.FreesMemoryMiB != 12288 ||
		a.Repo != "Etcd-io/etcd" || len(a.Warnings) != 0 {
		t.Fatalf("advice %+v (suggest %+v)", a, a.Suggest)
	}
	for _, want := range []string{"asked tandem-arm64-8cpu-16gb", "over 23 runs p95 peak was 1.4 vCPU / 3.0 GB", "→ tandem-arm64-2cpu-4gb frees 6 vCPU and 12.0 GB per run"} {
		if !strings.Contains(a.Evidence, want) {
			t.Errorf("evidence %q lacks %q", a.Evidence, want)
		}
	}
}

// The other way: memory near its limit, OOM kills, CPU saturated; no
// suggestion then. A size that fits says so. Too few runs say nothing.
func TestWarnings(t *testing.T) {
	var all []Run
	all = append(all, runs(10, "a/near", "build", 2, 4096, func(int) profile.Summary {
		return profile.Summary{CPUPeak: 0.5, MemPeak: 3900 << 20}
	})...)
	all = append(all, runs(10, "a/oom", "build", 2, 4096, func(i int) profile.Summary {
		s := profile.Summary{CPUPeak: 0.5, MemPeak: 1 << 30}
		if i == 3 {
			s.OOMKills = 2
		}
		return s
	})...)
	all = append(all, runs(10, "a/busy", "build", 4, 8192, func(int) profile.Summary {
		return profile.Summary{CPUPeak: 4, MemPeak: 1 << 30, CPUHighSeconds: 500}
	})...)
	all = append(all, runs(10, "a/fits", "build", 2, 4096, func(int) profile.Summary {
		return profile.Summary{CPUPeak: 1.9, MemPeak: 3 << 30}
	})...)
	all = append(all, runs(4, "a/few", "build", 8, 16384, func(int) profile.Summary { return profile.Summary{CPUPeak: 0.1} })...)
	got := map[string]Advice{}
	for _, a := range Analyze(all, Options{}) {
		got[a.Repo] = a
	}
	want := map[string]string{"a/near": "memory within 10% of its limit", "a/oom": "1 of 10 runs had processes killed", "a/busy": "CPU at 90% or more"}
	for repo, w := range want {
		a := got[repo]
		if a.Suggest != nil || len(a.Warnings) != 1 || !strings.Contains(a.Warnings[0], w) {
			t.Errorf("%s: %+v", repo, a)
		}
	}
	if a := got["a/fits"]; a.Suggest != nil || len(a.Warnings) != 0 || !strings.HasSuffix(a.Evidence, "the size fits") {
		t.Errorf("a/fits: %+v", a)
	}
	if _, ok := got["a/few"]; ok {
		t.Error("advice from 4 runs")
	}
}

// Only the latest size's runs count, at most MaxRuns of them; groups are
// per (repo, workflow, job, arch), the repository without case.
func TestGroups(t *testing.T) {
	old := runs(10, "o/r", "test", 8, 16384, func(int) profile.Summary { return profile.Summary{CPUPeak: 7, MemPeak: 15 << 30} })
	cur := runs(6, "O/R", "test", 2, 4096, func(int) profile.Summary { return profile.Summary{CPUPeak: 0.2, MemPeak: 100 << 20} })
	for i := range cur {
		cur[i].EndedAt = cur[i].EndedAt.Add(100 * time.Hour)
	}
	amd := runs(6, "o/r", "test", 2, 4096, func(int) profile.Summary { return profile.Summary{CPUPeak: 0.2, MemPeak: 100 << 20} })
	for i := range amd {
		amd[i].Arch = arch.AMD64
	}
	got := Analyze(slices.Concat(old, cur, amd), Options{MaxRuns: 5})
	if len(got) != 2 {
		t.Fatalf("advice %+v", got)
	}
	for _, a := range got {
		if a.Runs != 5 || a.Asked.VCPUs != 2 || a.Suggest == nil || a.Suggest.VCPUs != 1 || a.Suggest.MemoryMiB != 1024 {
			t.Errorf("advice %+v", a)
		}
	}
}

// P95 by nearest rank, against sorting by hand.
func TestQuantileBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for n := 1; n < 200; n++ {
		xs := make([]float64, n)
		for i := range xs {
			xs[i] = rng.Float64()
		}
		got := P95(xs)
		below := 0
		for _, x := range xs {
			if x <= got {
				below++
			}
		}
		// The smallest value with at least 95% at or below it.
		if float64(below) < 0.95*float64(n) {
			t.Fatalf("n=%d: %v has %d at or below", n, got, below)
		}
		for _, x := range xs {
			if x < got {
				c := 0
				for _, y := range xs {
					if y <= x {
						c++
					}
				}
				if float64(c) >= 0.95*float64(n) {
					t.Fatalf("n=%d: %v is smaller and has %d at or below", n, x, c)
				}
			}
		}
	}
	if P95(nil) != 0 {
		t.Error("P95 of nothing")
	}
}
