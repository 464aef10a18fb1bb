package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
)

// StatsLevel is how finely job statistics are grouped.
type StatsLevel string

// Levels, coarsest first: a job's key holds the fields of its level and
// the coarser ones.
const (
	ByOrg      StatsLevel = "org"
	ByRepo     StatsLevel = "repo"
	ByWorkflow StatsLevel = "workflow"
	ByJob      StatsLevel = "job"
)

// StatsLevels lists the levels, coarsest first.
var StatsLevels = []StatsLevel{ByOrg, ByRepo, ByWorkflow, ByJob}

// StatsFilter selects the jobs that ended (CompletedAt) on the UTC days
// from Since's to Until's, both included, grouped at Level and by
// architecture (statistics are kept per day). Org and Repo compare without
// case; Orgs, when not nil, keeps only those organisations' jobs.
type StatsFilter struct {
	Since, Until time.Time
	Level        StatsLevel
	Org          string
	Orgs         []string
	Repo         string
}

// StatsKey is a group of jobs: the fields of its level (and the coarser
// ones), and the architecture. Org and Repo are lower case.
type StatsKey struct {
	Org      string    `json:"org"`
	Repo     string    `json:"repo,omitempty"`
	Workflow string    `json:"workflow,omitempty"`
	Name     string    `json:"job,omitempty"`
	Arch     arch.Arch `json:"arch"`
}

// JobStats are a group's numbers over a period. Times are seconds; a
// percentile is the nearest rank's bucket (see TimeBucket; 0 when no job
// had the time).
type JobStats struct {
	StatsKey
	Jobs int `json:"jobs"` // ended in the period, in any terminal state
	// Ran counts those that ran (a runner took them); of those, Succeeded
	// the ones GitHub concluded success, Failed failure or timed_out
	// (ResultOf), Emulated those whose VM emulated the architecture.
	Ran         int     `json:"ran"`
	Succeeded   int     `json:"succeeded"`
	Failed      int     `json:"failed"`
	Emulated    int     `json:"emulated"`
	VCPUMinutes float64 `json:"vcpu_minutes"` // of the jobs that ran, by their size asked
	QueueP50    float64 `json:"queue_p50_s"`
	QueueP95    float64 `json:"queue_p95_s"`
	RunP50      float64 `json:"run_p50_s"`
	RunP95      float64 `json:"run_p95_s"`
	// Labels is the label key (Job.LabelKey) of the group's latest job.
	Labels string `json:"labels,omitempty"`
}

// SlowRun is one of a period's longest runs.
type SlowRun struct {
	JobID    int64     `json:"id"`
	Repo     string    `json:"repo"`
	Workflow string    `json:"workflow"`
	Name     string    `json:"job"`
	Arch     arch.Arch `json:"arch"`
	RunS     float64   `json:"run_s"`
	HTMLURL  string    `json:"html_url,omitempty"`
}

// Times are kept, for statistics, in buckets an eighth of a power of two
// wide (about 9%): bucket 0 holds times under a second, bucket b ≥ 1
// those in [2^((b-1)/8), 2^(b/8)) seconds. A percentile is its
// nearest-rank time's bucket, reported as the bucket's geometric middle:
// within about 4.5% of the time itself.
const bucketsPerDoubling = 8

// TimeBucket is the bucket of a time in seconds.
func TimeBucket(s float64) int {
	if !(s >= 1) { // NaN too
		return 0
	}
	return 1 + int(math.Floor(bucketsPerDoubling*math.Log2(s)))
}

// BucketTime is the time a bucket stands for: its geometric middle.
func BucketTime(b int) float64 {
	if b <= 0 {
		return 0.5
	}
	return math.Exp2((float64(b) - 0.5) / bucketsPerDoubling)
}

// Histogram counts times by bucket.
type Histogram map[int]int

// Add counts one time of s seconds, or takes one away (n = -1).
func (h Histogram) Add(s float64, n int) {
	b := TimeBucket(s)
	h[b] += n
	if h[b] <= 0 {
		delete(h, b)
	}
}

// Merge adds o's counts to h.
func (h Histogram) Merge(o Histogram) {
	for b, n := range o {
		h[b] += n
	}
}

// MergeJSON adds the counts of a histogram in its JSON form, an object of
// bucket → count ({"12":3,"40":1}), to h, without making a map of it
// first: insights merge thousands of them per query.
func (h Histogram) MergeJSON(b []byte) error {
	if !h.mergeFast(b) {
		var o Histogram
		if err := json.Unmarshal(b, &o); err != nil {
			return fmt.Errorf("histogram: %w", err)
		}
		h.Merge(o)
	}
	return nil
}

// mergeFast merges b when it is in the form json.Marshal writes (no
// spaces, decimal integers that fit an int, keys in ascending order as
// strings, hence none twice), and reports whether it was; it changes h
// only then.
func (h Histogram) mergeFast(b []byte) bool {
	if len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
		return false
	}
	type pair struct{ k, v int }
	var buf [32]pair
	pairs := buf[:0]
	var prev []byte
	i := 1
	for i < len(b)-1 {
		if len(pairs) > 0 {
			if b[i] != ',' {
				return false
			}
			i++
		}
		if i >= len(b) || b[i] != '"' {
			return false
		}
		k, n := parseInt(b[i+1:])
		key := b[i+1 : i+1+n]
		i += 1 + n
		if n == 0 || i >= len(b) || b[i] != '"' || i+1 >= len(b) || b[i+1] != ':' ||
			prev != nil && bytes.Compare(prev, key) >= 0 {
			return false
		}
		prev = key
		i += 2
		v, n := parseInt(b[i:])
		if n == 0 {
			return false
		}
		i += n
		pairs = append(pairs, pair{k, v})
	}
	if i != len(b)-1 {
		return false
	}
	for _, p := range pairs {
		h[p.k] += p.v
	}
	return true
}

// parseInt reads a decimal integer (an optional minus and up to 18
// digits, no leading zeros but for 0 itself) at the start of b and says
// how many bytes it took; 0 when there is none.
func parseInt(b []byte) (int, int) {
	i, neg := 0, false
	if len(b) > 0 && b[0] == '-' {
		neg, i = true, 1
	}
	start, v := i, 0
	for i < len(b) && b[i] >= '0' && b[i] <= '9' && i-start < 18 {
		v = v*10 + int(b[i]-'0')
		i++
	}
	switch {
	case i == start, i-start > 1 && b[start] == '0', i < len(b) && b[i] >= '0' && b[i] <= '9':
		return 0, 0
	case neg:
		return -v, i
	}
	return v, i
}

// Quantile is the nearest-rank q-quantile's bucket time (0 when empty).
func (h Histogram) Quantile(q float64) float64 {
	total := 0
	for _, n := range h {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := int(math.Ceil(q * float64(total)))
	bs := slices.Sorted(maps.Keys(h))
	seen := 0
	for _, b := range bs {
		seen += h[b]
		if seen >= rank {
			return BucketTime(b)
		}
	}
	return BucketTime(bs[len(bs)-1])
}

// RunTimes are a job's run and queue times in seconds, as statistics count
// them (GitHub's times where it gave them, else Tandem's), and whether
// each is known.
func (j Job) RunTimes() (run, queue float64, ran, queued bool) {
	st, en, cr := j.StartedAt, j.CompletedAt, j.CreatedAt
	if !j.GitHubStartedAt.IsZero() {
		st = j.GitHubStartedAt
	}
	if !j.GitHubCompletedAt.IsZero() {
		en = j.GitHubCompletedAt
	}
	if cr.IsZero() {
		cr = j.QueuedAt
	}
	if st.IsZero() || en.Before(st) {
		return 0, 0, false, false
	}
	run = float64(en.UnixMilli()-st.UnixMilli()) / 1000
	if !cr.IsZero() && !st.Before(cr) {
		queue, queued = float64(st.UnixMilli()-cr.UnixMilli())/1000, true
	}
	return run, queue, true, queued
}
