package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/tandem-ci/tandem/internal/agent"
	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/config"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/fsutil"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/scheduler"
	"github.com/tandem-ci/tandem/internal/store"
)

func serverCmd(g *globals) *cobra.Command {
	var cfgPath string
	var check bool
	cmd := &cobra.Command{
		Use:   "server --config FILE",
		Short: "Run the control plane: webhooks, job queue, placement, reconcilers, API",
		Long: "Run the control plane alone. Hosts join it as agents; for one machine,\n" +
			"`tandem up` runs the control plane and this host's agent together.\n\n" +
			"With --check-db, only check the configured database: print which it is and\n" +
			"its schema version beside this binary's, migrating nothing, and exit 0 if\n" +
			"the server could use it, 1 if not.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if check {
				return checkDB(cmd.Context(), cmd.OutOrStdout(), g, cfgPath)
			}
			return serve(cmd.Context(), g, cfgPath, false)
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "/etc/tandem/config.yaml", "configuration file")
	cmd.Flags().BoolVar(&check, "check-db", false, "check the database and exit (0: usable)")
	return cmd
}

func upCmd(g *globals) *cobra.Command {
	var cfgPath string
	var demoMode, demoExit bool
	cmd := &cobra.Command{
		Use:   "up --config FILE | --demo",
		Short: "Run everything on this machine: control plane, SQLite, and this host's agent",
		Long: `Run everything on this machine: the control plane, its SQLite database, and
this host's agent.

With --demo, Tandem runs against ghfake, a GitHub emulator in this process,
with no GitHub account, App or config: it builds the test images it lacks,
fills the dashboard with four weeks of made-up history, queues a job on each
architecture, prints what each job's VM printed and the dashboard's address,
and keeps running until Ctrl-C (--demo-exit: exits once the jobs are done).
The emulated GitHub and the control plane are on addresses of this machine
alone (198.51.100.1-2, in a network namespace of the demo's); the demo's
files are in <data-dir>/demo, made anew at each start.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireRoot("tandem up"); err != nil {
				return err
			}
			if demoMode {
				if cmd.Flags().Changed("config") {
					return errors.New("--demo makes its own config: give --config or --demo, not both")
				}
				return runDemo(cmd.Context(), g, demoExit)
			}
			if demoExit {
				return errors.New("--demo-exit is for --demo")
			}
			return serve(cmd.Context(), g, cfgPath, true)
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "/etc/tandem/config.yaml", "configuration file")
	cmd.Flags().BoolVar(&demoMode, "demo", false, "try Tandem without GitHub: against an emulator, with a job on each architecture")
	cmd.Flags().BoolVar(&demoExit, "demo-exit", false, "with --demo: exit once the demo's jobs are done (non-zero if one failed)")
	return cmd
}

// serve runs the control plane, and with withAgent this host's agent, until
// SIGINT or SIGTERM.
func serve(parent context.Context, g *globals, cfgPath string, withAgent bool) error {
	cfg, dataDir, err := loadConfig(g, cfgPath)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	startupDoctor(ctx, g, cfg, dataDir, nil, withAgent)

	st, err := openStore(ctx, cfg, dataDir, g.log)
	if err != nil {
		return err
	}
	defer st.Close()
	gh, err := github.New(github.Config{BaseURL: cfg.GitHub.APIURL, AppID: cfg.GitHub.AppID,
		PrivateKey: cfg.AppKey, Logger: g.log, UserAgent: "tandem/" + version})
	if err != nil {
		return err
	}
	parser, err := cfg.ParserFor()
	if err != nil {
		return err
	}
	egressPolicies, err := cfg.Egress.Compile()
	if err != nil {
		return err
	}
	// Every API request needs a token. Without an admin token file, an
	// admin token of the data dir's own serves the local CLI, which finds
	// it there by itself.
	var tokens controlplane.APITokens
	for _, t := range cfg.APITokens {
		tokens = append(tokens, controlplane.APIToken{Secret: string(t.Secret), Admin: t.Admin, Orgs: t.Orgs})
	}
	if cfg.API.AdminTokenFile == "" {
		t, err := loadOrCreateSecret(filepath.Join(dataDir, "api-admin-token"))
		if err != nil {
			return err
		}
		tokens = append(tokens, controlplane.APIToken{Secret: t, Admin: true})
	}
	var agentTLS *tls.Config
	pin := ""
	if cfg.Agents.Listen != "" {
		certFile, keyFile := cfg.Agents.TLSCertFile, cfg.Agents.TLSKeyFile
		if certFile == "" {
			certFile, keyFile = filepath.Join(dataDir, "tls", "cert.pem"), filepath.Join(dataDir, "tls", "key.pem")
		}
		cert, err := agentapi.LoadOrCreateCert(certFile, keyFile, cfg.Agents.TLSHosts)
		if err != nil {
			return err
		}
		pin = agentapi.Fingerprint(cert.Certificate[0])
		agentTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	images, err := image.Open(filepath.Join(dataDir, "images"))
	if err != nil {
		return err
	}
	cp, err := controlplane.New(controlplane.Config{
		Store: st, GitHub: gh, WebhookSecret: cfg.WebhookSecret, Labels: parser,
		MaxBody: int64(cfg.GitHub.WebhookMaxBody) << 20, AppID: cfg.GitHub.AppID, AllowPublic: cfg.GitHub.AllowPublic,
		Runner: controlplane.RunnerSpec{
			Scope: cfg.Runner.Scope, GroupID: cfg.Runner.GroupID, Group: cfg.Runner.Group, Groups: cfg.Runner.Groups,
			NamePrefix: cfg.Runner.NamePrefix, Command: cfg.Runner.Command, User: cfg.Runner.User,
			Images:     map[arch.Arch]string{arch.AMD64: cfg.Runner.ImageAMD64, arch.ARM64: cfg.Runner.ImageARM64},
			WorkFolder: cfg.Runner.WorkFolder, MaxJobTime: cfg.Runner.MaxJobTime.D(),
			IdleTimeout: cfg.Runner.IdleTimeout.D(), ConfigTimeout: cfg.Runner.ConfigTimeout.D(),
			LabelImages: cfg.Runner.Images, DiskPerVCPU: int(cfg.Runner.DiskPerVCPU),
		},
		Images: images, MaxImageTransfers: cfg.Agents.MaxImageTransfers, Egress: egressPolicies, Parity: cfg.Parity,
		Limits:      schedulerLimits(cfg),
		MaxAttempts: cfg.Scheduler.MaxLaunchAttempts,
		Reconcile: controlplane.Intervals{
			MissedWebhooks: cfg.Reconcile.MissedWebhooks.D(), FailedDeliveries: cfg.Reconcile.FailedDeliveries.D(),
			Orphans: cfg.Reconcile.Orphans.D(), ActiveRepoWindow: cfg.Reconcile.ActiveRepoWindow.D(),
			LostAfter: cfg.Reconcile.LostAfter.D(),
		},
		LogDir:           filepath.Join(dataDir, "logs", "runners"),
		HeartbeatTimeout: cfg.Agents.HeartbeatTimeout.D(),
		AgentPin:         pin,
		APITokens:        tokens,
		Replica:          replicaName(cfg),
		Pools:            poolSpecs(cfg),
		DebugOrgs:        cfg.Debug.Orgs,
		KeepFailed:       cfg.Debug.KeepFailedFor,
		KeepFailedAny:    cfg.Debug.KeepsAny(),
		RetryInfraLosses: retryInfraLosses(cfg.Retry),
		Logger:           g.log,
	})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dataDir, "logs", "runners"), 0o700); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	// Webhook bursts arrive one connection each: take a bounded number at
	// a time, at most 16 from one address, and let idle keep-alive
	// connections go soon so they hold no slot (see
	// controlplane.LimitListener).
	ln = controlplane.LimitListener(ln, 64, 16)
	srv := &http.Server{Handler: cp.Handler(), ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: 5 * time.Second}
	go reloadImagesOnHangup(ctx, g, cfgPath, cp, images, parser)
	// Lifetimes: the listeners serve until ctx ends or one of them fails
	// (servers); then webhooks stop, this host's VMs end while the control
	// plane still records their ends, and the control plane stops last.
	cpCtx, cpCancel := context.WithCancel(context.Background())
	cpDone := make(chan error, 1)
	go func() { cpDone <- cp.Run(cpCtx) }()
	stopCP := func() error {
		cpCancel()
		return <-cpDone
	}
	servers, sctx := errgroup.WithContext(ctx)
	servers.Go(func() error { return served("webhook and API listener", srv.Serve(ln)) })
	var asrv *http.Server
	if agentTLS != nil {
		aln, err := net.Listen("tcp", cfg.Agents.Listen)
		if err != nil {
			srv.Close()
			servers.Wait()
			stopCP()
			return err
		}
		aln = controlplane.LimitListener(aln, 4096, cfg.Agents.MaxConnsPerSource)
		mux := http.NewServeMux()
		mux.Handle("/agent/", cp.AgentHandler())
		if cfg.Agents.ServeAPI {
			mux.Handle("/", cp.Handler())
		}
		// No server-wide read or write timeout: agent streams stay open;
		// every other route has its own read deadline, and each write of a
		// stream its own write deadline.
		asrv = &http.Server{Handler: mux, TLSConfig: agentTLS, ReadHeaderTimeout: 10 * time.Second}
		servers.Go(func() error { return served("agent listener", asrv.ServeTLS(aln, "", "")) })
		what := "agents"
		if cfg.Agents.ServeAPI {
			what = "agents and API"
		}
		fmt.Fprintf(os.Stderr, "tandem: %s on https://%s (certificate sha256 %s)\n", what, aln.Addr(), pin)
	}
	closeServers := func() error {
		srv.Close()
		if asrv != nil {
			asrv.Close()
		}
		return servers.Wait()
	}

	var ha *hostAgent
	if withAgent {
		if ha, err = startLocalAgent(ctx, g, cfg, dataDir, cp); err != nil {
			closeServers()
			stopCP()
			return err
		}
	}
	g.log.Info("tandem is up", "listen", ln.Addr().String(), "agent", withAgent, "data_dir", dataDir)
	fmt.Fprintf(os.Stderr, "tandem: listening on %s (webhook: POST /webhook, API: /api/v1/jobs)\n", ln.Addr())

	<-sctx.Done() // a signal, or a listener failed
	shctx, shcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer shcancel()
	srv.Shutdown(shctx) // webhooks in flight are answered
	if asrv != nil {
		asrv.Close() // agent streams never end by themselves
	}
	err = servers.Wait()
	if ha != nil {
		// The jobs run on for the next tandem up; the VMs that were
		// still booting stop, their ends recorded before the store closes.
		ha.detach()
		cp.FlushEvents(shctx)
	}
	return errors.Join(err, stopCP())
}

// served turns a listener's end into Run's error: nil for a listener that
// was shut down.
func served(what string, err error) error {
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

func schedulerLimits(cfg *config.Config) scheduler.Limits {
	l := scheduler.Limits{Default: scheduler.OrgLimit{MaxVMs: cfg.Scheduler.Default.MaxVMs, MaxVCPUs: cfg.Scheduler.Default.MaxVCPUs},
		Org: map[string]scheduler.OrgLimit{}}
	for org, ol := range cfg.Scheduler.Orgs {
		l.Org[org] = scheduler.OrgLimit{MaxVMs: ol.MaxVMs, MaxVCPUs: ol.MaxVCPUs}
	}
	return l
}

// startLocalAgent runs this host's agent in process and attaches it, after
// it has taken over the jobs an earlier tandem up left running.
func startLocalAgent(ctx context.Context, g *globals, cfg *config.Config, dataDir string, cp *controlplane.Server) (_ *hostAgent, err error) {
	gg := *g
	gg.dataDir = dataDir
	hostID := cfg.Agent.HostID
	if hostID == "" {
		if hostID, err = defaultHostID(); err != nil {
			return nil, err
		}
	}
	var rec store.Host
	ha, err := startHostAgent(ctx, &gg, hostSetup{
		net: &hostFlags{bridge: cfg.Agent.Bridge, subnet: cfg.Agent.Subnet, network: cfg.Agent.Network, own: true,
			allowUncapped: cfg.Agent.AllowUncapped, ioPerVCPU: cfg.Agent.IOPerVCPU},
		mirror: cfg.Agent.Mirror, mirrorPassword: cfg.MirrorPassword,
		vcpus: cfg.Agent.VCPUs, memoryMiB: int(cfg.Agent.Memory), emulate: cfg.Agent.Emulate,
	}, cfg.Agent.ReturnWithin.D(), func(h *runningHost) agent.Config {
		rec = controlplane.HostRecord(hostID, version, h.capacity())
		return agent.Config{HostID: hostID, Sink: func(e agentapi.Event) <-chan struct{} { return cp.HostEvents(e) },
			SampleSink: func(runner string, s profile.Sample) {
				cp.HostSamples(hostID, []agentapi.RunnerSamples{{Runner: runner, Samples: []profile.Sample{s}}})
			},
			SampleEvery: cfg.Agent.SampleEvery.D()}
	})
	if err != nil {
		return nil, err
	}
	if err := cp.AttachHost(ctx, rec, ha.Agent, agentapi.InventoryOf(ha.Agent)); err != nil {
		ha.detach()
		return nil, err
	}
	g.log.Info("local agent attached", "host", hostID, "vcpus", rec.VCPUs, "memory_mib", rec.MemoryMiB,
		"arches", rec.Arches)
	// The machine's load and memory, as a remote agent's heartbeats say.
	go func() {
		t := time.NewTicker(agentapi.HeartbeatInterval)
		defer t.Stop()
		for {
			cp.HostHeartbeat(hostID, agentapi.Heartbeat{Load1: loadAvg(), MemAvailableMiB: memAvailable()})
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return ha, nil
}

// loadOrCreateSecret returns the secret in path (its line ending trimmed,
// as config files' secrets are read), creating a random one (0600) if the
// file is absent: tandem up's API token, ghfake's webhook secret.
func loadOrCreateSecret(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimRight(string(b), "\r\n"), nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	t, _, err := agentapi.NewCredential()
	if err != nil {
		return "", err
	}
	return t, fsutil.WriteFileAtomic(path, []byte(t+"\n"), 0o600)
}

// replicaName is this control plane's name among the replicas that share
// its database: the configured one, else the machine's host name (its
// first label, tamed to what postgres.replica takes).
func replicaName(cfg *config.Config) string {
	if cfg.Postgres.Replica != "" {
		return cfg.Postgres.Replica
	}
	host, _ := os.Hostname()
	host, _, _ = strings.Cut(host, ".")
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' {
			return r
		}
		return -1
	}, host)
	if len(name) > 63 {
		name = name[:63]
	}
	if name == "" {
		name = "local"
	}
	return name
}

// poolSpecs are the configured warm pools, for the control plane.
func poolSpecs(cfg *config.Config) []controlplane.PoolSpec {
	var out []controlplane.PoolSpec
	for _, p := range cfg.Pools {
		out = append(out, controlplane.PoolSpec{Label: p.Labels, Sizing: p.Sizing(), MaxAge: p.MaxAge.D()})
	}
	return out
}

// retryInfraLosses is the control plane's retry.infra_losses: nil when no
// organisation or repository asks for it, so that no retry loop runs.
func retryInfraLosses(r config.Retry) func(org, repo string) bool {
	if len(r.InfraLosses) == 0 {
		return nil
	}
	return r.RetriesInfraLosses
}
