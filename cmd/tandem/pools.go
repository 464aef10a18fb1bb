package main

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/apiclient"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/termtext"
)

func poolsCmd(g *globals) *cobra.Command {
	o := &apiOptions{}
	var vms bool
	cmd := &cobra.Command{
		Use:   "pools [--vms]",
		Short: "List warm pools: idle VMs, target, hits and misses",
		Long: "List the warm pools (the config's pools:): for each, the VMs booted ahead of\n" +
			"any job (ready, and still booting), how many it aims to hold now, and how many\n" +
			"jobs of its label were placed on a warm VM (hits) or had to boot one (misses).\n" +
			"--vms lists each idle VM, with when it is recycled unless a job claims it.",
		Args: cobra.NoArgs,
	}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiclient.Client, args []string) error {
		var res struct {
			Pools []controlplane.PoolView `json:"pools"`
		}
		if printed, err := o.call(cmd, c, http.MethodGet, "/api/v1/pools", nil, nil, &res); printed || err != nil {
			return err
		}
		if len(res.Pools) == 0 {
			fmt.Fprintln(cmd.ErrOrStderr(), "no warm pools: add some under pools: in the config, e.g.\n"+
				"  pools: [{labels: tandem-arm64-2cpu-4gb, min_idle: 2, max_idle: 8, max_age: 30m}]")
			return nil
		}
		now := time.Now()
		tb := termtext.NewTable(cmd.OutOrStdout(), "POOL", "READY", "BOOTING", "TARGET", "MIN", "MAX", "MAX-AGE",
			"SCHEDULE", "HITS", "MISSES", "HIT-RATE", "BOOT-P50")
		for _, p := range res.Pools {
			target := strconv.Itoa(p.Target)
			if !p.Active {
				target += " (off)"
			} else if p.Demand {
				target += fmt.Sprintf(" (demand: %d jobs/10m)", p.Arrivals)
			}
			rate := "-"
			if n := p.Hits + p.Misses; n > 0 {
				rate = fmt.Sprintf("%.0f%%", 100*float64(p.Hits)/float64(n))
			}
			boot := "-"
			if p.BootP50 > 0 {
				boot = (time.Duration(p.BootP50*1000) * time.Millisecond).String()
			}
			tb.Row(p.Label, strconv.Itoa(p.Ready), strconv.Itoa(p.Booting), target, strconv.Itoa(p.MinIdle),
				strconv.Itoa(p.MaxIdle), p.MaxAge, p.Schedule, strconv.FormatInt(p.Hits, 10),
				strconv.FormatInt(p.Misses, 10), rate, boot)
		}
		if err := tb.Flush(); err != nil {
			return err
		}
		if !vms {
			return nil
		}
		fmt.Fprintln(cmd.OutOrStdout())
		tb = termtext.NewTable(cmd.OutOrStdout(), "POOL", "RUNNER", "HOST", "STATE", "BOOTED", "RECYCLED-IN")
		for _, p := range res.Pools {
			for _, v := range p.VMs {
				tb.Row(p.Label, v.Runner, v.Host, v.State, termtext.Ago(now, v.CreatedAt),
					max(time.Until(v.ExpiresAt), 0).Round(time.Second).String())
			}
		}
		return tb.Flush()
	})
	o.register(cmd, true)
	cmd.Flags().BoolVar(&vms, "vms", false, "also list each idle VM")
	return cmd
}
