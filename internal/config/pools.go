package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/pool"
)

// Pool is a warm pool: VMs of one runs-on label booted before any job asks,
// each waiting for the runner config of the job that claims it.
type Pool struct {
	// Labels is the Tandem label of the pool's VMs (tandem-arm64-2cpu-4gb).
	// Any job whose Tandem label means the same VM (the same canonical
	// label, whatever GitHub labels stand beside it) may claim one.
	Labels string `yaml:"labels"`
	// MinIdle is how many booted VMs wait for jobs; MaxIdle caps them
	// (default MinIdle). Past MaxIdle, idle VMs are stopped.
	MinIdle int `yaml:"min_idle"`
	MaxIdle int `yaml:"max_idle"`
	// MaxAge recycles a VM that no job has claimed (default 30m).
	MaxAge Duration `yaml:"max_age"`
	// Schedule is when the pool is kept (internal/pool.ParseSchedule):
	// "Mon-Fri 07:00-20:00 Europe/Berlin"; "" always. Outside it the
	// pool's idle VMs are stopped.
	Schedule string `yaml:"schedule"`
	// Demand sizes the pool from the arrival rate of its jobs over the
	// last ten minutes (the jobs expected while a VM boots), with MinIdle
	// as its floor and MaxIdle as its cap.
	Demand bool `yaml:"demand"`
}

// DefaultPoolMaxAge is a pool's max_age unless configured.
const DefaultPoolMaxAge = 30 * time.Minute

// Sizing is the pool's sizing for internal/pool; the schedule was checked
// by Validate.
func (p Pool) Sizing() pool.Sizing {
	sch, _ := pool.ParseSchedule(p.Schedule)
	return pool.Sizing{MinIdle: p.MinIdle, MaxIdle: p.MaxIdle, Demand: p.Demand, Schedule: sch}
}

func (c *Config) poolDefaults() {
	for i := range c.Pools {
		p := &c.Pools[i]
		if p.MaxIdle == 0 && !p.Demand {
			p.MaxIdle = p.MinIdle
		}
		if p.MaxAge == 0 {
			p.MaxAge = Duration(DefaultPoolMaxAge)
		}
	}
}

// validatePools checks each pool, and that no two are for the same VM.
func (c *Config) validatePools() []error {
	var errs []error
	parser, err := c.ParserFor()
	if err != nil {
		return nil // labels: reported by Validate
	}
	seen := map[string]int{}
	for i, p := range c.Pools {
		bad := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("pools[%d]: "+format, append([]any{i}, a...)...))
		}
		req, ok, err := parser.Parse([]string{p.Labels})
		switch {
		case err != nil:
			bad("labels %q: %v", p.Labels, err)
			continue
		case !ok || strings.Contains(p.Labels, ","):
			bad("labels %q: want one Tandem label, such as %s-arm64-2cpu-4gb", p.Labels, parser.LabelPrefix())
			continue
		}
		key := req.Canonical()
		if j, dup := seen[key]; dup {
			bad("labels %q: the same VM as pools[%d] (%s)", p.Labels, j, key)
		}
		seen[key] = i
		if p.MinIdle < 0 || p.MaxIdle < 0 {
			bad("min_idle and max_idle must not be negative")
		}
		if p.MaxIdle < p.MinIdle {
			bad("max_idle %d is below min_idle %d", p.MaxIdle, p.MinIdle)
		}
		if p.Demand && p.MaxIdle == 0 {
			bad("demand: give max_idle, the most idle VMs the pool may hold")
		}
		if p.MaxAge.D() < time.Minute {
			bad("max_age %s: at least 1m (a VM must boot before it can wait)", p.MaxAge.D())
		}
		if _, err := pool.ParseSchedule(p.Schedule); err != nil {
			bad("%v", err)
		}
	}
	return errs
}
