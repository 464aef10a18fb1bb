package config

import (
	"fmt"
	"maps"
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
	v, _ := forScope(d.KeepFailed, org, repo)
	return v.D()
}

// forScope is m's value for a job of org and repo ("owner/name"): the
// most specific of the keys "ORG/REPO", "ORG" and "*", compared without
// case, as GitHub's names are; ok is false when none is there.
func forScope[V any](m map[string]V, org, repo string) (v V, ok bool) {
	find := func(k string) (V, bool) {
		for key, v := range m {
			if strings.EqualFold(key, k) {
				return v, true
			}
		}
		var zero V
		return zero, false
	}
	if repo != "" {
		if v, ok := find(repo); ok {
			return v, true
		}
	}
	if v, ok := find(org); ok {
		return v, true
	}
	return find("*")
}

// scopeKeyErrors checks the keys of a map that forScope reads: each ORG,
// ORG/REPO or *, in the order of the sorted keys.
func scopeKeyErrors[V any](field string, m map[string]V) []error {
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(m)) {
		owner, repo, hasRepo := strings.Cut(k, "/")
		if k != "*" && (!githubName(owner) || hasRepo && !githubName(repo)) {
			errs = append(errs, fmt.Errorf("%s: key %q: want ORG, ORG/REPO or *", field, k))
		}
	}
	return errs
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
	errs = append(errs, scopeKeyErrors("debug.keep_failed", d.KeepFailed)...)
	for _, k := range slices.Sorted(maps.Keys(d.KeepFailed)) {
		if v := d.KeepFailed[k].D(); v < 0 || v > MaxKeepFailed {
			errs = append(errs, fmt.Errorf("debug.keep_failed.%s: %s: want 0 to %s", k, v, MaxKeepFailed))
		}
	}
	return errs
}
