package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/tandem-ci/tandem/internal/apiclient"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/termtext"
)

// sparkWidth is the sparklines' width in characters.
const sparkWidth = 60

// printProfile prints a job's resource profile: the summary, then one
// sparkline per series over the run.
func printProfile(w io.Writer, v controlplane.ProfileView) error {
	s := v.Summary
	state := "ended"
	if v.Live {
		state = "running: so far"
	}
	mem := int64(v.MemoryMiB) << 20
	fmt.Fprintf(w, "job %d, runner %s (%s), %s of %d samples\n", v.Job, termtext.Clean(v.Runner), state,
		(time.Duration(s.Seconds) * time.Second).String(), s.Samples)
	fmt.Fprintf(w, "size asked: %s\n\n", termtext.Size(v.VCPUs, v.MemoryMiB))
	tb := termtext.NewTable(w, "", "PEAK", "AVERAGE", "ABOVE 90%")
	pct := func(x, of float64) string {
		if of <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.0f%%", 100*x/of)
	}
	tb.Row("CPU (vCPUs)", fmt.Sprintf("%.2f (%s)", s.CPUPeak, pct(s.CPUPeak, s.VCPUs)),
		fmt.Sprintf("%.2f (%s)", s.CPUAvg, pct(s.CPUAvg, s.VCPUs)), seconds(s.CPUHighSeconds))
	if s.Guest {
		tb.Row("memory", fmt.Sprintf("%s (%s)", termtext.Bytes(s.MemPeak), pct(float64(s.MemPeak), float64(mem))),
			fmt.Sprintf("%s (%s)", termtext.Bytes(s.MemAvg), pct(float64(s.MemAvg), float64(mem))), seconds(s.MemHighSeconds))
		tb.Row("disk used", termtext.Bytes(s.DiskPeak), "", "")
		tb.Row("processes", fmt.Sprint(s.ProcsPeak), "", "")
		tb.Row("load (1 min)", fmt.Sprintf("%.2f", s.LoadPeak), "", "")
	}
	tb.Row("host CPU (hypervisor)", "", fmt.Sprintf("%.2f", s.HostCPUAvg), "")
	tb.Row("hypervisor memory", termtext.Bytes(s.RSSPeak), "", "")
	tb.Row("disk on the host", termtext.Bytes(s.AllocPeak), "", "")
	if err := tb.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nread %s, wrote %s; network in %s, out %s\n", termtext.Bytes(s.ReadBytes), termtext.Bytes(s.WriteBytes),
		termtext.Bytes(s.RxBytes), termtext.Bytes(s.TxBytes))
	if s.OOMKills > 0 {
		fmt.Fprintf(w, "the guest kernel killed %d processes for lack of memory (OOM)\n", s.OOMKills)
	}
	if !s.Guest {
		fmt.Fprintln(w, "the guest did not report its side (memory, disk, processes): an image from before profiles")
	}
	if len(v.Points) == 0 {
		return nil
	}
	series := func(f func(profile.Point) float64) []float64 {
		out := make([]float64, len(v.Points))
		for i, p := range v.Points {
			out[i] = f(p)
		}
		return out
	}
	fmt.Fprintln(w)
	st := termtext.NewTable(w)
	st.Row("CPU", termtext.Sparkline(series(func(p profile.Point) float64 { return p.CPUPeak }), sparkWidth, v.VCPUs),
		fmt.Sprintf("0-%g vCPUs", v.VCPUs))
	if s.Guest {
		st.Row("memory", termtext.Sparkline(series(func(p profile.Point) float64 { return float64(p.Mem) }), sparkWidth, float64(mem)),
			"0-"+termtext.Bytes(mem))
		st.Row("disk", termtext.Sparkline(series(func(p profile.Point) float64 { return float64(p.Disk) }), sparkWidth, 0),
			"0-"+termtext.Bytes(s.DiskPeak))
	}
	st.Row("disk I/O", termtext.Sparkline(series(func(p profile.Point) float64 { return p.Read + p.Write }), sparkWidth, 0), "")
	st.Row("network", termtext.Sparkline(series(func(p profile.Point) float64 { return p.Rx + p.Tx }), sparkWidth, 0), "")
	return st.Flush()
}

func seconds(s float64) string {
	if s <= 0 {
		return "-"
	}
	return (time.Duration(s) * time.Second).String()
}

func rightsizeCmd(g *globals) *cobra.Command {
	o := &apiOptions{}
	var org, repo string
	var days, runs int
	cmd := &cobra.Command{
		Use:   "rightsize [--org ORG | --repo OWNER/NAME] [--days N] [--runs N]",
		Short: "Compare each job's VM size with what its recent runs used, and suggest a better one",
		Long: "For each logical job (repository, workflow, job name, architecture) with at least 5\n" +
			"profiled runs of its current size: the p95 of its runs' CPU and memory peaks, a smaller\n" +
			"size when one holds them with room to spare, and warnings the other way (memory near\n" +
			"its limit, OOM kills, CPU saturated).",
		Args: cobra.NoArgs,
	}
	cmd.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiclient.Client, args []string) error {
		if org != "" && repo != "" {
			return errors.New("give --org or --repo, not both")
		}
		q := url.Values{"days": {strconv.Itoa(days)}, "runs": {strconv.Itoa(runs)}}
		if org != "" {
			q.Set("org", org)
		}
		if repo != "" {
			q.Set("repo", repo)
		}
		var v controlplane.RightsizeView
		if printed, err := o.call(cmd, c, http.MethodGet, "/api/v1/rightsize", q, nil, &v); printed || err != nil {
			return err
		}
		return printRightsize(cmd.OutOrStdout(), v)
	})
	o.register(cmd, true)
	f := cmd.Flags()
	f.StringVar(&org, "org", "", "only this organisation's jobs")
	f.StringVar(&repo, "repo", "", "only this repository's jobs (owner/name)")
	f.IntVar(&days, "days", 28, "profiles of the last N days (at most 28)")
	f.IntVar(&runs, "runs", 30, "at most the latest N runs of each job")
	return cmd
}

func printRightsize(w io.Writer, v controlplane.RightsizeView) error {
	if len(v.Advice) == 0 {
		_, err := fmt.Fprintf(w, "no job has 5 profiled runs of one size in the last %d days (%d runs looked at)\n", v.Days, v.Runs)
		return err
	}
	tb := termtext.NewTable(w, "REPO", "WORKFLOW", "JOB", "ARCH", "RUNS", "ASKED", "P95 CPU", "P95 MEMORY", "ADVICE")
	for _, a := range v.Advice {
		advice := "fits"
		switch {
		case len(a.Warnings) > 0:
			advice = "warning: " + a.Warnings[0]
		case a.Suggest != nil:
			advice = fmt.Sprintf("→ %s (frees %g vCPU, %s)", a.Suggest.Label, a.FreesVCPUs, termtext.Bytes(int64(a.FreesMemoryMiB)<<20))
		}
		tb.Row(a.Repo, termtext.Cut(a.Workflow, 30), termtext.Cut(a.Name, 30), string(a.Arch), strconv.Itoa(a.Runs), a.Asked.Label,
			fmt.Sprintf("%.1f", a.P95CPUPeak), termtext.Bytes(a.P95MemPeak), termtext.Cut(advice, 80))
	}
	if err := tb.Flush(); err != nil {
		return err
	}
	if v.Partial {
		fmt.Fprintln(w, "\n(only the newest runs were read: narrow it with --org or --repo)")
	}
	return nil
}
