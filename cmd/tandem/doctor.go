package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/config"
	"github.com/tandem-ci/tandem/internal/doctor"
)

func doctorCmd(g *globals) *cobra.Command {
	var cfgPath string
	var jsonOut, quick bool
	var only, emulate, servers []string
	cmd := &cobra.Command{
		Use:   "doctor [--config FILE] [--json]",
		Short: "Check that this host (and with --config, GitHub and the control plane) can run Tandem's jobs, and say how to fix what cannot",
		Long: "Check this host for what Tandem's VMs need: KVM (by a probe boot, as the agent does) or the\n" +
			"cost of running without it, cgroups, QEMU, images, disk, memory, TUN, bridges, nftables,\n" +
			"IP forwarding and a host firewall that drops forwarded traffic. With --config, also the\n" +
			"control plane, GitHub, the App's permissions and events, and its last webhook deliveries;\n" +
			"for an agent, its enrolled control plane and certificate pin (or --server).\n\n" +
			"Each check prints ✓ (ok), ! (warning: jobs run, worse) or ✗ (jobs cannot run), with its fix.\n" +
			"--json prints [{check, status: ok|warn|fail, detail, fix}]. Exit status: 1 if a check\n" +
			"fails, 0 with only warnings.\n\nThe checks: " + strings.Join(doctor.Names(), ", "),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			env := doctorEnv(g, nil, g.dataDir, emulate)
			env.Servers = servers
			var results []doctor.Result
			if cfgPath != "" {
				cfg, dataDir, err := loadConfig(g, cfgPath)
				if err != nil {
					// The host checks still run; the config's problems
					// come first, each with its fix.
					results = append(results, doctor.Result{Check: "config", Status: doctor.Fail, Detail: err.Error(),
						Fix: "correct each problem as it says, then run tandem doctor --config " + cfgPath + " again"})
				} else {
					env = doctorEnv(g, cfg, dataDir, emulate)
					env.Servers = servers
					results = append(results, doctor.Result{Check: "config", Status: doctor.OK, Detail: cfgPath + " loads"})
				}
			}
			rs, err := doctor.Run(cmd.Context(), env, only, quick)
			if err != nil {
				return err
			}
			results = append(results, rs...)
			if jsonOut {
				if err := doctor.WriteJSON(cmd.OutOrStdout(), results); err != nil {
					return err
				}
			} else {
				doctor.WriteText(cmd.OutOrStdout(), results)
			}
			if doctor.Failed(results) {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", "", "also check what this configuration file names: GitHub, the App, the control plane")
	f.BoolVar(&jsonOut, "json", false, "print the results as JSON: [{check, status, detail, fix}]")
	f.BoolVar(&quick, "quick", false, "only the quick, local checks: no probe boot, no network")
	f.StringSliceVar(&only, "check", nil, "run only these checks (repeatable, or comma-separated)")
	f.StringSliceVar(&emulate, "emulate", nil, "foreign architectures this host offers under TCG, as tandem agent --emulate")
	f.StringSliceVar(&servers, "server", nil, "an agent's control plane address, https://HOST:PORT (the enrolled ones are checked anyway)")
	return cmd
}

// doctorEnv is what doctor's checks look at on this host.
func doctorEnv(g *globals, cfg *config.Config, dataDir string, emulate []string) *doctor.Env {
	return &doctor.Env{
		DataDir: dataDir, Config: cfg, Emulate: emulate,
		CredentialsFile: filepath.Join(dataDir, "agent", "credentials.json"),
		MemAvailableMiB: memAvailable,
		MemTotalMiB: func() int {
			l, err := hostLimits()
			if err != nil {
				return 0
			}
			return l.MemoryMiB
		},
		Root:   os.Geteuid() == 0,
		Logger: g.log,
	}
}

// startupDoctor logs one line per problem the quick checks find, as
// `tandem up` and `tandem agent` start; it never stops them (what would,
// stops them later, as before). Without an agent here, there is nothing
// of this host to check.
func startupDoctor(ctx context.Context, g *globals, cfg *config.Config, dataDir string, emulate []string, withAgent bool) {
	if withAgent {
		runStartupDoctor(ctx, g, doctorEnv(g, cfg, dataDir, emulate))
	}
}

// agentStartupDoctor is startupDoctor for tandem agent, whose VM network is
// its flags'.
func agentStartupDoctor(ctx context.Context, g *globals, nf *hostFlags, emulate []string) {
	env := doctorEnv(g, nil, g.dataDir, emulate)
	env.Bridge, env.HostFirewall = nf.bridge, nf.network.HostFirewall
	runStartupDoctor(ctx, g, env)
}

// runStartupDoctor runs the quick checks and logs their problems. A
// remote agent's images come from its control plane, so their absence at
// start is no problem: without a config, images are not checked.
func runStartupDoctor(ctx context.Context, g *globals, env *doctor.Env) {
	var only []string
	for _, n := range doctor.Names() {
		if n != "images" || env.Config != nil {
			only = append(only, n)
		}
	}
	rs, err := doctor.Run(ctx, env, only, true)
	if err != nil {
		g.log.Warn("doctor", "err", err)
		return
	}
	doctor.Log(g.log, rs)
	if slices.ContainsFunc(rs, func(r doctor.Result) bool { return r.Status != doctor.OK }) {
		g.log.Warn("run `tandem doctor` for the whole report, with fixes")
	}
}
