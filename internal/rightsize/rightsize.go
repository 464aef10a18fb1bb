// Package rightsize says, from the resource profiles of a job's recent
// runs, whether the VM size its workflow asks for fits what it uses: a
// smaller size that would free capacity, with its evidence, or a warning
// that the job is short of memory or CPU.
//
// Runs are grouped by (repository, workflow, job name, architecture): one
// logical job. For each group with at least MinRuns profiled runs of one
// size, the p95 (nearest rank) of the runs' CPU peaks and memory peaks
// decides:
//
//   - a suggestion: the smallest size on the ladder (vCPUs 1, 2, 4, 8, …;
//     memory 1, 2, 4, 8, … GiB) that holds the p95 peak with headroom
//     (CPUHeadroom, MemHeadroom), when it is smaller than the size asked;
//   - warnings, the other way: p95 memory peak within 10% of the limit,
//     any OOM kill, CPU at or above 90% of the VM for most of the typical
//     (median) run.
//
// A group whose runs asked for different sizes is judged on its latest
// size's runs only. Everything here is pure and deterministic: the caller
// reads the runs from the store.
package rightsize

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/profile"
)

// Defaults.
const (
	MinRuns     = 5
	DefaultRuns = 30 // runs looked at per logical job
	// CPUHeadroom and MemHeadroom are the room a suggested size leaves
	// above the p95 peak.
	CPUHeadroom = 1.25
	MemHeadroom = 1.25
	// NearLimit is the share of memory from which a p95 peak is "within
	// 10% of the limit".
	NearLimit = 0.9
)

// Run is one profiled run of a job.
type Run struct {
	JobID     int64
	Repo      string
	Workflow  string
	Name      string
	Arch      arch.Arch
	Prefix    string // its label's prefix, for the suggested label
	VCPUs     float64
	MemoryMiB int
	EndedAt   time.Time
	Summary   profile.Summary
}

// Key is one logical job.
type Key struct {
	Repo     string    `json:"repo"`
	Workflow string    `json:"workflow"`
	Name     string    `json:"job"`
	Arch     arch.Arch `json:"arch"`
}

// Size is a VM size.
type Size struct {
	VCPUs     float64 `json:"vcpus"`
	MemoryMiB int     `json:"memory_mib"`
	Label     string  `json:"label"`
}

// Advice is what the runs of one logical job say.
type Advice struct {
	Key
	Runs       int     `json:"runs"` // of the size asked
	Asked      Size    `json:"asked"`
	P95CPUPeak float64 `json:"p95_cpu_peak"`    // vCPUs
	P95MemPeak int64   `json:"p95_memory_peak"` // bytes
	// Suggest is a smaller size that holds the p95 peaks with headroom;
	// nil when the size asked is right, or when there are warnings.
	Suggest *Size `json:"suggest,omitempty"`
	// FreesVCPUs and FreesMemoryMiB are what Suggest frees per run.
	FreesVCPUs     float64  `json:"frees_vcpus,omitempty"`
	FreesMemoryMiB int      `json:"frees_memory_mib,omitempty"`
	Warnings       []string `json:"warnings,omitempty"`
	// Evidence says it in one sentence, with the numbers.
	Evidence string `json:"evidence"`
}

// Options bound the analysis.
type Options struct {
	MinRuns int // default MinRuns
	MaxRuns int // the latest runs per logical job; default DefaultRuns
}

// Analyze groups runs by logical job and advises on each group with enough
// runs, in order of what a suggestion frees (most first), then warnings,
// then by key.
func Analyze(runs []Run, o Options) []Advice {
	if o.MinRuns <= 0 {
		o.MinRuns = MinRuns
	}
	if o.MaxRuns <= 0 {
		o.MaxRuns = DefaultRuns
	}
	groups := map[Key][]Run{}
	for _, r := range runs {
		if r.VCPUs <= 0 || r.MemoryMiB <= 0 || r.Summary.Samples < 2 {
			continue // nothing to judge by
		}
		k := Key{Repo: strings.ToLower(r.Repo), Workflow: r.Workflow, Name: r.Name, Arch: r.Arch}
		groups[k] = append(groups[k], r)
	}
	var out []Advice
	for k, rs := range groups {
		// Newest first; keep the latest size's runs, at most MaxRuns.
		slices.SortFunc(rs, func(a, b Run) int { return cmp.Or(b.EndedAt.Compare(a.EndedAt), cmp.Compare(b.JobID, a.JobID)) })
		latest := rs[0]
		same := rs[:0:0]
		for _, r := range rs {
			if r.VCPUs == latest.VCPUs && r.MemoryMiB == latest.MemoryMiB && len(same) < o.MaxRuns {
				same = append(same, r)
			}
		}
		if len(same) < o.MinRuns {
			continue
		}
		k.Repo = latest.Repo // as GitHub spells it
		out = append(out, advise(k, latest, same))
	}
	slices.SortFunc(out, func(a, b Advice) int {
		fa, fb := a.FreesVCPUs+float64(a.FreesMemoryMiB)/4096, b.FreesVCPUs+float64(b.FreesMemoryMiB)/4096
		return cmp.Or(cmp.Compare(fb, fa), cmp.Compare(len(b.Warnings), len(a.Warnings)),
			cmp.Compare(a.Repo, b.Repo), cmp.Compare(a.Workflow, b.Workflow), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Arch, b.Arch))
	})
	return out
}

func advise(k Key, latest Run, rs []Run) Advice {
	a := Advice{Key: k, Runs: len(rs), Asked: size(latest.Prefix, k.Arch, latest.VCPUs, latest.MemoryMiB)}
	cpus := make([]float64, len(rs))
	mems := make([]float64, len(rs))
	high := make([]float64, len(rs))
	oom := 0
	for i, r := range rs {
		cpus[i], mems[i] = r.Summary.CPUPeak, float64(r.Summary.MemPeak)
		if r.Summary.Seconds > 0 {
			high[i] = r.Summary.CPUHighSeconds / r.Summary.Seconds
		}
		if r.Summary.OOMKills > 0 {
			oom++
		}
	}
	a.P95CPUPeak, a.P95MemPeak = P95(cpus), int64(P95(mems))
	limit := float64(latest.MemoryMiB) * (1 << 20)
	if float64(a.P95MemPeak) >= NearLimit*limit {
		a.Warnings = append(a.Warnings, fmt.Sprintf("memory within 10%% of its limit: p95 peak %s of %s",
			gb(float64(a.P95MemPeak)), gb(limit)))
	}
	if oom > 0 {
		a.Warnings = append(a.Warnings, fmt.Sprintf("%d of %d runs had processes killed for lack of memory (OOM)", oom, len(rs)))
	}
	if m := median(high); m > 0.5 {
		a.Warnings = append(a.Warnings, fmt.Sprintf("CPU at 90%% or more of its %g vCPUs for %.0f%% of the typical run: a larger size may run it faster",
			latest.VCPUs, 100*m))
	}
	evidence := fmt.Sprintf("asked %s; over %d runs p95 peak was %.1f vCPU / %s", a.Asked.Label, len(rs), a.P95CPUPeak, gb(float64(a.P95MemPeak)))
	if len(a.Warnings) > 0 {
		a.Evidence = evidence + "; " + strings.Join(a.Warnings, "; ")
		return a
	}
	vcpus := ladderCPU(a.P95CPUPeak * CPUHeadroom)
	mem := ladderMem(float64(a.P95MemPeak) * MemHeadroom)
	vcpus, mem = min(vcpus, latest.VCPUs), min(mem, latest.MemoryMiB)
	if vcpus == latest.VCPUs && mem == latest.MemoryMiB {
		a.Evidence = evidence + ": the size fits"
		return a
	}
	s := size(latest.Prefix, k.Arch, vcpus, mem)
	a.Suggest, a.FreesVCPUs, a.FreesMemoryMiB = &s, latest.VCPUs-vcpus, latest.MemoryMiB-mem
	a.Evidence = fmt.Sprintf("%s → %s frees %g vCPU and %s per run", evidence, s.Label, a.FreesVCPUs, gb(float64(a.FreesMemoryMiB)*(1<<20)))
	return a
}

// P95 is the 95th percentile of xs by nearest rank (0 for none).
func P95(xs []float64) float64 { return Quantile(xs, 0.95) }

// Quantile is the q-quantile of xs by nearest rank: the smallest value
// with at least q of the values at or below it (0 for none).
func Quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(rank, 0), len(s)-1)]
}

func median(xs []float64) float64 { return Quantile(xs, 0.5) }

// ladderCPU is the smallest of 1, 2, 4, 8, … vCPUs holding v.
func ladderCPU(v float64) float64 {
	c := 1.0
	for c < v && c < labels.MaxVCPUs {
		c *= 2
	}
	return c
}

// ladderMem is the smallest of 1, 2, 4, 8, … GiB (in MiB) holding bytes.
func ladderMem(bytes float64) int {
	m := 1024
	for float64(m)*(1<<20) < bytes && m < labels.MaxMemoryMiB {
		m *= 2
	}
	return m
}

func size(prefix string, a arch.Arch, vcpus float64, mib int) Size {
	return Size{VCPUs: vcpus, MemoryMiB: mib,
		Label: labels.Request{Prefix: prefix, Arch: a, VCPUs: vcpus, MemoryMiB: mib}.Canonical()}
}

// gb writes bytes in GB with one decimal.
func gb(bytes float64) string {
	return strconv.FormatFloat(bytes/(1<<30), 'f', 1, 64) + " GB"
}
