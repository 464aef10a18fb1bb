package config

// Retry says which jobs Tandem asks GitHub to run again.
type Retry struct {
	// InfraLosses: a job of these organisations or repositories that
	// Tandem or its host lost while it ran (its host died or left, its VM
	// crashed or hung, its agent lost it: failure.Kind.Infrastructure),
	// never one that failed by itself, is re-run on GitHub once GitHub
	// has failed it, at most once per cause. By "ORG/REPO", "ORG", or "*"
	// for every other one; the most specific key wins. Off by default:
	// the GitHub App then needs "Actions: write".
	InfraLosses map[string]bool `yaml:"infra_losses"`
}

// RetriesInfraLosses reports whether a job of org/repo lost to Tandem or
// its host is re-run.
func (r Retry) RetriesInfraLosses(org, repo string) bool {
	v, _ := forScope(r.InfraLosses, org, repo)
	return v
}

func (r Retry) validate() []error {
	return scopeKeyErrors("retry.infra_losses", r.InfraLosses)
}
