package config

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Debug says who may open debug sessions (`tandem ssh`) in jobs' VMs, and
// which failed jobs' VMs are kept for them.
type Debug struct {
	// Orgs are the organisations whose read tokens scoped to them
	// (read:ORG) may open sessions in their own jobs. Admin tokens may in
	// any job; unscoped read tokens in none.
	Orgs []string `yaml:"orgs"`
	// KeepFailed keeps the VM of a job that failed for this long after
	// its end, its runner gone and its capacity still counted, so that
	// someone can look around in it: by "ORG/REPO", "ORG", or "*" for
	// every other one (the most specific key wins; 0 keeps none).
	KeepFailed map[string]Duration `yaml:"keep_failed"`
}

// MaxKeepFailed bounds debug.keep_failed.
const MaxKeepFailed = 24 * time.Hour

// KeepFailedFor is how long a failed job of org/repo keeps its VM.
func (d Debug) KeepFailedFor(org, repo string) time.Duration {
	find := func(k string) (time.Duration, bool) {
		for key, v := range d.KeepFailed {
			if strings.EqualFold(key, k) {
				return v.D(), true
			}
		}
		return 0, false
	}
	if repo != "" {
		if v, ok := find(repo); ok {
			return v
		}
	}
	if v, ok := find(org); ok {
		return v
	}
	v, _ := find("*")
	return v
}

// KeepsAny reports whether any failed job's VM may be kept.
func (d Debug) KeepsAny() bool {
	for _, v := range d.KeepFailed {
		if v > 0 {
			return true
		}
	}
	return false
}

func (d Debug) validate() []error {
	var errs []error
	for _, o := range d.Orgs {
		if !githubName(o) {
			errs = append(errs, fmt.Errorf("debug.orgs: %q is not an organisation's name", o))
		}
	}
	keys := make([]string, 0, len(d.KeepFailed))
	for k := range d.KeepFailed {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		owner, repo, hasRepo := strings.Cut(k, "/")
		if k != "*" && (!githubName(owner) || hasRepo && !githubName(repo)) {
			errs = append(errs, fmt.Errorf("debug.keep_failed: key %q: want ORG, ORG/REPO or *", k))
		}
		if v := d.KeepFailed[k].D(); v < 0 || v > MaxKeepFailed {
			errs = append(errs, fmt.Errorf("debug.keep_failed.%s: %s: want 0 to %s", k, v, MaxKeepFailed))
		}
	}
	return errs
}
