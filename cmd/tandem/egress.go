package main

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/apiclient"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/termtext"
)

func egressCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "egress",
		Short: "Egress policies: GitHub's base list, and allowlists suggested from recorded jobs",
	}
	base := &cobra.Command{
		Use:   "base",
		Short: "Print the hosts GitHub's runner needs, which every allowlist includes (unless base: false)",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, args []string) {
			for _, n := range egress.Base {
				fmt.Fprintln(cmd.OutOrStdout(), n)
			}
		},
	}
	o := &apiOptions{}
	var repo string
	var last int
	suggest := &cobra.Command{
		Use:   "suggest --repo OWNER/NAME",
		Short: "Print an allowlist that would have let the recorded flows of a repository's last jobs through",
		Long: `Print an allowlist, ready to paste into the config, that would have let
through every flow recorded for a repository's last jobs (those that ran
under an audit or allowlist policy): the DNS name of each destination when
the host's DNS forwarder gave one, else its address and port, and every
name an allowlist refused. GitHub's own hosts (tandem egress base) are left
out: every allowlist has them.`,
		Args: cobra.NoArgs,
	}
	suggest.RunE = opsRun(g, o, func(cmd *cobra.Command, c *apiclient.Client, args []string) error {
		var v controlplane.SuggestView
		q := url.Values{"repo": {repo}, "last": {strconv.Itoa(last)}}
		if printed, err := o.call(cmd, c, http.MethodGet, "/api/v1/egress/suggest", q, nil, &v); printed || err != nil {
			return err
		}
		return printSuggestion(cmd.OutOrStdout(), v)
	})
	o.register(suggest, true)
	suggest.Flags().StringVar(&repo, "repo", "", "the repository, OWNER/NAME")
	suggest.Flags().IntVar(&last, "last", 20, "how many of its last finished jobs to look at")
	suggest.MarkFlagRequired("repo")
	cmd.AddCommand(base, suggest)
	return cmd
}

func printSuggestion(w io.Writer, v controlplane.SuggestView) error {
	fmt.Fprintf(w, "# egress allowlist for %s, from its last %d jobs (%d recorded under audit or allowlist)\n", termtext.Clean(v.Repo), v.Jobs, v.Recorded)
	if v.Recorded == 0 {
		fmt.Fprintf(w, "# nothing recorded: run its jobs under mode audit first (egress.overrides.%s: {mode: audit})\n", termtext.Clean(v.Repo))
		return nil
	}
	fmt.Fprintf(w, "egress:\n  overrides:\n    %s:\n      mode: allowlist\n      allow:\n", termtext.Clean(v.Repo))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, s := range v.Suggestions {
		note := fmt.Sprintf("# %d of %d jobs, %d connections", s.Jobs, v.Recorded, s.Connections)
		if s.Blocked {
			note += ", some blocked"
		}
		if s.NoName {
			note += ", no DNS name seen"
		}
		fmt.Fprintf(tw, "        - %q\t%s\n", termtext.Clean(s.Entry), note)
	}
	return tw.Flush()
}

// printEgress prints a job's egress: its policy, then each recorded flow.
func printEgress(w io.Writer, v controlplane.EgressView) error {
	fmt.Fprintf(w, "egress policy: %s", v.Policy.Mode)
	if v.Policy.Mode == egress.Allowlist {
		fmt.Fprintf(w, " (%d names, %d networks)", len(v.Policy.Names), len(v.Policy.Nets))
	}
	fmt.Fprintln(w)
	if v.Record == nil {
		if v.Policy.Mode.Records() {
			fmt.Fprintln(w, "no record (the VM has not ended, or its host could not read it)")
		}
		return nil
	}
	tb := termtext.NewTable(w, "DESTINATION", "PORT", "NAME", "CONNECTIONS", "VERDICT")
	for _, f := range v.Record.Flows {
		verdict := "allowed"
		if !f.Allowed {
			verdict = "BLOCKED"
		}
		tb.Row(f.Addr.String(), fmt.Sprintf("%s/%d", f.Proto, f.Port), f.Name, strconv.FormatInt(f.Count, 10), verdict)
	}
	if err := tb.Flush(); err != nil {
		return err
	}
	if len(v.Record.Refused) > 0 {
		names := slices.Sorted(maps.Keys(v.Record.Refused))
		fmt.Fprintln(w, "DNS names refused:")
		for _, n := range names {
			fmt.Fprintf(w, "  %s (%d)\n", termtext.Clean(n), v.Record.Refused[n])
		}
	}
	if v.Record.Dropped > 0 {
		fmt.Fprintf(w, "(%d more flows and names not kept: the busiest are)\n", v.Record.Dropped)
	}
	return nil
}
