package controlplane

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/github"
)

// groupsAPI answers ListRunnerGroups from a table and counts the calls;
// every other method of github.API is nil (a call would panic).
type groupsAPI struct {
	github.API
	all     []github.RunnerGroup
	visible map[string][]string // repository name → names of the groups it may use
	err     error
	calls   int
}

func (g *groupsAPI) ListRunnerGroups(_ context.Context, _ int64, _, repo string) ([]github.RunnerGroup, error) {
	g.calls++
	if g.err != nil {
		return nil, g.err
	}
	if repo == "" {
		return g.all, nil
	}
	var out []github.RunnerGroup
	for _, gr := range g.all {
		for _, n := range g.visible[repo] {
			if n == gr.Name {
				out = append(out, gr)
			}
		}
	}
	return out, nil
}

// The resolver finds groups by name without case, explains why a group
// cannot serve a job, asks GitHub once per groupTTL (sooner for a group it
// did not find), and forgets on request.
func TestGroupResolver(t *testing.T) {
	now := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	api := &groupsAPI{
		all: []github.RunnerGroup{{ID: 1, Name: "Default", Visibility: "all", Default: true},
			{ID: 5, Name: "Arm Fleet", Visibility: "selected"}, {ID: 6, Name: "Public", Visibility: "all", AllowsPublicRepos: true}},
		visible: map[string][]string{"app": {"Default", "Arm Fleet", "Public"}, "web": {"Default", "Public"}},
	}
	g := newGroupResolver(api, func() time.Time { return now })
	ctx := context.Background()
	resolve := func(repo string, public bool, name string) (int64, error) {
		return g.resolve(ctx, 9, "Acme", repo, public, name)
	}
	if id, err := resolve("acme/app", false, "arm fleet"); id != 5 || err != nil {
		t.Fatalf("arm fleet for acme/app: %d, %v", id, err)
	}
	if api.calls != 2 {
		t.Errorf("%d calls, want 2 (the groups, and those acme/app may use)", api.calls)
	}
	var nr *notRoutedError
	for _, c := range []struct {
		repo   string
		public bool
		name   string
		want   string
	}{
		{"acme/web", false, "Arm Fleet", `runner group "Arm Fleet" (visibility selected) does not allow repository acme/web`},
		{"acme/web", true, "default", `runner group "Default" does not allow public repositories, and acme/web is public`},
		{"acme/web", false, "gpu", `runner group "gpu" does not exist in Acme`},
	} {
		if _, err := resolve(c.repo, c.public, c.name); !errors.As(err, &nr) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %s: %v, want %q", c.repo, c.name, err, c.want)
		}
	}
	if id, err := resolve("acme/web", true, "PUBLIC"); id != 6 || err != nil {
		t.Errorf("a group that allows public repositories: %d, %v", id, err)
	}
	// One more: the groups acme/web may use. (gpu, not found, is looked
	// for again only once groupRecheck has passed.)
	calls := api.calls
	if calls != 3 {
		t.Errorf("%d calls, want 3", calls)
	}
	if _, err := resolve("acme/app", false, "Arm Fleet"); err != nil || api.calls != calls {
		t.Errorf("within the TTL: %v, %d calls", err, api.calls-calls)
	}
	// A group created meanwhile is found once groupRecheck has passed.
	api.all = append(api.all, github.RunnerGroup{ID: 7, Name: "gpu", Visibility: "all"})
	if _, err := resolve("acme/web", false, "gpu"); !errors.As(err, &nr) {
		t.Errorf("gpu before the recheck: %v", err)
	}
	now = now.Add(groupRecheck)
	if id, err := resolve("acme/web", false, "gpu"); id != 7 || err != nil {
		t.Errorf("gpu after the recheck: %d, %v", id, err)
	}
	// GitHub failing is not a verdict on the group.
	g.forget(9, "ACME")
	api.err = errors.New("github: 502")
	if _, err := resolve("acme/app", false, "Arm Fleet"); err == nil || errors.As(err, &nr) {
		t.Errorf("GitHub down: %v", err)
	}
}
