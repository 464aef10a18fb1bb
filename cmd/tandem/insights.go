package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/apiclient"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/store"
	"github.com/tandem-ci/tandem/internal/termtext"
)

func insightsCmd(g *globals) *cobra.Command {
	o := &apiOptions{}
	var org, repo, by string
	var days int
	cmd := &cobra.Command{
		Use:   "insights [--days 1|7|14|28] [--by org|repo|workflow|job] [--org ORG | --repo OWNER/NAME]",
		Short: "Jobs, vCPU-minutes, success, queue and run times of a period, against the period before",
		Args:  cobra.NoArgs,
	}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiclient.Client, args []string) error {
		if org != "" && repo != "" {
			return errors.New("give --org or --repo, not both")
		}
		q := url.Values{"days": {strconv.Itoa(days)}, "by": {by}}
		if org != "" {
			q.Set("org", org)
		}
		if repo != "" {
			q.Set("repo", repo)
		}
		var v controlplane.InsightsView
		if printed, err := o.call(cmd, c, http.MethodGet, "/api/v1/insights", q, nil, &v); printed || err != nil {
			return err
		}
		return printInsights(cmd.OutOrStdout(), v)
	})
	o.register(cmd, true)
	f := cmd.Flags()
	f.IntVar(&days, "days", 7, "the period: the last 1, 7, 14 or 28 days")
	f.StringVar(&by, "by", "repo", "group by org, repo, workflow or job")
	f.StringVar(&org, "org", "", "only this organisation's jobs")
	f.StringVar(&repo, "repo", "", "only this repository's jobs (owner/name)")
	return cmd
}

func printInsights(w io.Writer, v controlplane.InsightsView) error {
	fmt.Fprintf(w, "the last %d days, by %s, against the %d days before (in parentheses)\n\n", v.Days, v.By, v.Days)
	tb := termtext.NewTable(w, strings.ToUpper(string(v.By)), "ARCH", "JOBS", "SUCCESS", "VCPU-MIN", "QUEUE P50/P95", "RUN P50/P95")
	for _, r := range v.Rows {
		c, p := r.Current, r.Previous
		was := func(f func(store.JobStats) string) string {
			if p == nil {
				return ""
			}
			return " (" + f(*p) + ")"
		}
		jobs := func(s store.JobStats) string { return strconv.Itoa(s.Jobs) }
		success := func(s store.JobStats) string {
			if s.Ran == 0 {
				return "-"
			}
			return fmt.Sprintf("%.0f%%", 100*float64(s.Succeeded)/float64(s.Ran))
		}
		vcpu := func(s store.JobStats) string { return strconv.FormatFloat(s.VCPUMinutes, 'f', 0, 64) }
		queue := func(s store.JobStats) string { return dur(s.QueueP50) + "/" + dur(s.QueueP95) }
		run := func(s store.JobStats) string { return dur(s.RunP50) + "/" + dur(s.RunP95) }
		tb.Row(statsKey(r.StatsKey, v.By), string(r.Arch), jobs(c)+was(jobs), success(c)+was(success), vcpu(c)+was(vcpu),
			queue(c)+was(queue), run(c)+was(run))
	}
	if err := tb.Flush(); err != nil {
		return err
	}
	if len(v.Increases) > 0 {
		fmt.Fprintln(w, "\nslower this week than last (median run time):")
		it := termtext.NewTable(w, "JOB", "ARCH", "WAS", "NOW", "RUNS")
		for _, i := range v.Increases {
			it.Row(statsKey(i.StatsKey, store.ByJob), string(i.Arch), dur(i.WasP50), dur(i.NowP50), strconv.Itoa(i.Runs))
		}
		if err := it.Flush(); err != nil {
			return err
		}
	}
	if len(v.Slowest) > 0 {
		fmt.Fprintln(w, "\nlongest runs:")
		st := termtext.NewTable(w, "ID", "REPO", "WORKFLOW", "JOB", "ARCH", "RUN")
		for _, s := range v.Slowest {
			st.Row(strconv.FormatInt(s.JobID, 10), s.Repo, termtext.Cut(s.Workflow, 30), termtext.Cut(s.Name, 30), string(s.Arch), dur(s.RunS))
		}
		return st.Flush()
	}
	return nil
}

// statsKey names a group at its level.
func statsKey(k store.StatsKey, by store.StatsLevel) string {
	switch by {
	case store.ByOrg:
		return k.Org
	case store.ByRepo:
		return k.Repo
	case store.ByWorkflow:
		return k.Repo + " " + termtext.Cut(k.Workflow, 30)
	}
	return k.Repo + " " + termtext.Cut(k.Workflow, 30) + " / " + termtext.Cut(k.Name, 30)
}

// dur writes seconds as a short duration.
func dur(s float64) string {
	if s <= 0 {
		return "-"
	}
	return (time.Duration(s * float64(time.Second))).Round(time.Second).String()
}
