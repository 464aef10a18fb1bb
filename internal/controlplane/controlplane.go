// Package controlplane turns GitHub's workflow_job webhooks into runner VMs.
//
// The flow, and who owns each step:
//
//   - ingest (ingest.go): POST /webhook verifies the signature before it
//     parses anything, stores the delivery durably and answers 202; a
//     duplicate delivery is answered and dropped.
//   - apply (apply.go): one goroutine applies stored deliveries to the job
//     state machine in the store, in batches, one transaction each. GitHub
//     gives a queued job to ANY idle runner with matching labels, so runners
//     are accounted by demand: one runner VM per queued job of a label set,
//     and the in_progress webhook's runner_name ties a job to the runner that
//     actually took it (swapping bindings when a runner took another job).
//   - dispatch (dispatch.go): one goroutine places queued jobs on hosts
//     (placement.go decides, through internal/scheduler), launches their
//     VMs through the hosts' agents, fetches each runner's JIT config while
//     its VM boots, and turns agent events into runner and job transitions.
//   - reconcile (reconcile.go): periodic passes make lost webhooks, failed
//     deliveries, orphaned runners and stuck jobs harmless; each action is
//     counted in the store and logged.
//   - api (api.go): health, Prometheus metrics, and a JSON API of jobs,
//     hosts, runners and reconciler counters.
package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/parity"
	"github.com/tandem-ci/tandem/internal/scheduler"
	"github.com/tandem-ci/tandem/internal/store"

	"github.com/tandem-ci/tandem/internal/egress"
)

// HostAgent is the control plane's handle on one host's agent: in-process
// for `tandem up`, a remote connection for a fleet. Calls must not block for
// long; outcomes come back through Server.HostEvent.
type HostAgent interface {
	Launch(agentapi.Assignment) error
	Configure(runner string, env map[string]string) error
	Stop(runner, reason string) error
}

// RunnerSpec says what to run in each VM.
type RunnerSpec struct {
	Scope string // "repo" or "org"
	// GroupID is the runner group organisation runners join, by id, when
	// Group and Groups name none (1: GitHub's Default group).
	GroupID int64
	// Group names the group organisation runners join, and Groups names
	// one per organisation ("ORG") or repository ("ORG/REPO"), looked up
	// in GitHub by name (GroupFor, groups.go).
	Group         string
	Groups        map[string]string
	NamePrefix    string
	Images        map[arch.Arch]string
	Command       []string // none: the image's runner
	User          string
	WorkFolder    string
	MaxJobTime    time.Duration
	IdleTimeout   time.Duration
	ConfigTimeout time.Duration

	// LabelImages names other images for some runs-on labels (label →
	// ref or id), e.g. tandem-arm64-4cpu-8gb: runner-arm64 (images.go).
	LabelImages map[string]string
	// DiskPerVCPU (MiB) is what a VM may write to its disk per vCPU: the
	// VM is stopped past it, and placement counts it against each host's
	// disk. 0: neither (a VM may fill its disk, which is the image's size).
	DiskPerVCPU int
}

// Intervals of the reconcilers; a negative one is off.
type Intervals struct {
	MissedWebhooks   time.Duration
	FailedDeliveries time.Duration
	Orphans          time.Duration
	ActiveRepoWindow time.Duration
	LostAfter        time.Duration
}

// Config wires a Server.
type Config struct {
	Store         store.Store
	GitHub        github.API
	WebhookSecret []byte
	// AllowPublic lists the orgs and repositories ("owner/name") whose
	// public repositories' jobs Tandem runs; every other public
	// repository's job is refused. Compared without case.
	AllowPublic []string
	// AppID is the GitHub App's id: a webhook whose
	// X-GitHub-Hook-Installation-Target-ID names another is refused (0:
	// not checked).
	AppID       int64
	Labels      *labels.Parser
	Runner      RunnerSpec
	Limits      scheduler.Limits
	MaxAttempts int
	Reconcile   Intervals
	// LogDir keeps runner logs that remote agents ship ("" drops them).
	LogDir string
	// HeartbeatTimeout is how long a remote host may stay silent before it
	// is offline (default 3 heartbeats).
	HeartbeatTimeout time.Duration
	// Images is the control plane's own image store: the configured refs
	// are resolved against it to ids, and agents fetch those from it (nil:
	// assignments carry the refs, and hosts resolve them; images.go).
	Images *image.Store
	// MaxImageTransfers bounds the image files sent to agents at once
	// (default 4).
	MaxImageTransfers int
	// AgentPin is the fingerprint of the agent listener's TLS certificate,
	// written into enrolment tokens.
	AgentPin string
	// APITokens guard the JSON API (see api.go).
	APITokens APITokens
	// Egress gives each runner's VM its egress policy (nil: open).
	Egress *egress.Policies
	// HostLoadEvery is how often each host's load is recorded (default a
	// minute; negative: never).
	HostLoadEvery time.Duration
	// Parity is the Arm64/x86 parity policy (zero: parity's defaults);
	// ParityEvery how often each repository's tier is recorded (default
	// 10 minutes; negative: never).
	Parity      parity.Policy
	ParityEvery time.Duration
	// MaxBody caps a webhook's body. Default 25 MiB: GitHub caps the
	// payloads it sends at 25 MB; workflow_job payloads are a few KiB, but
	// a valid one is never refused for its size.
	MaxBody int64
	// Replica names this control-plane process among those that share
	// the store (replicas.go); default "local". Names must differ.
	Replica string
	// Pools are the warm pools (pools.go).
	Pools []PoolSpec
	// DebugOrgs are the organisations whose read tokens scoped to them may
	// open debug sessions in their jobs' VMs (debug.go); admin tokens may
	// in any job's.
	DebugOrgs []string
	// KeepFailed is how long a failed job's VM is kept for debugging, by
	// its organisation and repository (nil or 0: not); KeepFailedAny says
	// whether any is ever kept (a warm pool's VM, whose job is not known
	// at its launch, may then be).
	KeepFailed    func(org, repo string) time.Duration
	KeepFailedAny bool
	// RetryInfraLosses says whether a job of org/repo that Tandem or its
	// host lost while it ran is re-run on GitHub once GitHub has failed
	// it (retries.go; nil: none is).
	RetryInfraLosses func(org, repo string) bool
	Logger           *slog.Logger
	Now              func() time.Time
}

// maxGitHubConcurrency bounds JIT config requests in flight.
const maxGitHubConcurrency = 16

// Server is the control plane. It wires the parts, and each part that
// holds state guards it with its own lock: links (the agents attached),
// marks (runner bookkeeping that is not in the store), events (host
// events in arrival order), place (placement), rec (the reconcilers and
// what they remember). The JSON API (api) holds no state: it reads these
// and the store. The store holds the rest; Server's own fields are set by
// New and not changed after, but for images (imgMu).
type Server struct {
	cfg     Config
	st      store.Store
	gh      github.API
	log     *slog.Logger
	now     func() time.Time
	metrics *metrics

	applyKick    chan struct{}
	dispatchKick chan struct{}
	retryKick    chan struct{} // pending retries of lost jobs to look at (retries.go)

	// Replicas (replicas.go): the store's notifications (nil for a store
	// of one process), the kicks to pass on to the other replicas by
	// topic, this replica's standing, and the context of Run, which
	// outlives any term as leader.
	notifier store.Notifier
	tell     map[string]chan struct{}
	lead     leadership
	runCtx   context.Context
	endRun   context.CancelFunc // ends runCtx when Run's context ends

	links  *links         // the agents attached: connections and heartbeats
	marks  *marks         // runners being stopped, configured, held busy
	events *eventQueue    // host events, until applied in order by eventLoop
	place  *placer        // where queued jobs go, and why the others wait
	rec    *reconcilers   // the reconciler passes and what they remember
	groups *groupResolver // runner groups by name, as GitHub last said
	// profiles buffers VMs' resource samples until they are written.
	profiles *profileIngest
	statuses *statusPoster // commits whose GitHub status may have changed (parity_status.go)
	pools    *pools        // warm pools (pools.go)
	execWait *execWaits    // debug sessions waiting for, or joined to, their agents (debug.go)
	api      *api          // the JSON API (api.go, ops.go, egress.go)

	ghSlots chan struct{} // bounds concurrent JIT config requests

	wg sync.WaitGroup

	imgMu    sync.RWMutex  // images; held (read) from choosing a launch's image to sending it
	images   ImageSet      // what the control plane names (images.go)
	imgSlots chan struct{} // bounds image files being sent
}

// New checks cfg and returns a Server; Run starts its loops.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.GitHub == nil || cfg.Labels == nil {
		return nil, errors.New("controlplane: Store, GitHub and Labels are required")
	}
	if len(cfg.WebhookSecret) == 0 {
		return nil, errors.New("controlplane: no webhook secret")
	}
	if cfg.Runner.Scope == "" {
		cfg.Runner.Scope = "repo"
	}
	if cfg.Runner.NamePrefix == "" {
		cfg.Runner.NamePrefix = "tandem"
	}
	if cfg.Runner.IdleTimeout == 0 {
		cfg.Runner.IdleTimeout = 10 * time.Minute
	}
	cfg.Parity.Defaults()
	if err := cfg.Parity.Validate("parity"); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	if cfg.ParityEvery == 0 {
		cfg.ParityEvery = defaultParityEvery
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 3
	}
	if cfg.HeartbeatTimeout <= 0 {
		cfg.HeartbeatTimeout = 3 * agentapi.HeartbeatInterval
	}
	if cfg.HostLoadEvery == 0 {
		cfg.HostLoadEvery = defaultHostLoadEvery
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 25 << 20
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.Reconcile.MissedWebhooks, time.Minute)
	def(&cfg.Reconcile.FailedDeliveries, 5*time.Minute)
	def(&cfg.Reconcile.Orphans, 2*time.Minute)
	def(&cfg.Reconcile.ActiveRepoWindow, 24*time.Hour)
	def(&cfg.Reconcile.LostAfter, 2*time.Minute)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Replica == "" {
		cfg.Replica = "local"
	}
	s := &Server{
		cfg: cfg, st: cfg.Store, gh: cfg.GitHub, log: cfg.Logger, now: cfg.Now,
		applyKick:    make(chan struct{}, 1),
		dispatchKick: make(chan struct{}, 1),
		retryKick:    make(chan struct{}, 1),
		events:       newEventQueue(),
		ghSlots:      make(chan struct{}, maxGitHubConcurrency),
		links:        newLinks(),
		marks:        newMarks(),
		groups:       newGroupResolver(cfg.GitHub, cfg.Now),
		profiles:     newProfileIngest(),
		execWait:     newExecWaits(),
		tell: map[string]chan struct{}{topicApply: make(chan struct{}, 1), topicDispatch: make(chan struct{}, 1),
			topicCommands: make(chan struct{}, 1)},
	}
	s.notifier, _ = cfg.Store.(store.Notifier)
	s.runCtx, s.endRun = context.WithCancel(context.Background())
	if _, shared := cfg.Store.(store.Elector); !shared {
		s.lead.begin(0, cfg.Now()) // the one replica of its store leads
	}
	s.place = newPlacer(cfg, s.newRunnerName)
	var err error
	if s.pools, err = newPools(cfg); err != nil {
		return nil, err
	}
	s.metrics = newMetrics(s)
	s.statuses = newStatusPoster(cfg.Parity.CommitStatus)
	s.api = newAPI(s)
	s.rec = newReconcilers(s)
	if err := s.initImages(); err != nil {
		return nil, err
	}
	return s, nil
}

// Run runs the control plane's loops until ctx ends, then waits for them:
// those of every replica, and those of the leader while this replica
// leads (replicas.go). Call it once.
func (s *Server) Run(ctx context.Context) error {
	leader := []func(context.Context){s.applyLoop, s.dispatchLoop, s.rec.verifyLoop, s.parityLoop, s.statusLoop, s.retryLoop}
	for _, r := range s.rec.list() {
		if r.every > 0 {
			leader = append(leader, func(ctx context.Context) { s.rec.loop(ctx, r) })
		}
	}
	loops := []func(context.Context){s.eventLoop, s.hostMonitor, s.profileLoop, s.hostLoadLoop, s.commandLoop, s.notifyLoop,
		func(ctx context.Context) { s.campaign(ctx, leader) }}
	for _, l := range loops {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			l(ctx)
		}()
	}
	<-ctx.Done()
	s.endRun()
	s.wg.Wait()
	return nil
}

func kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// AttachHost records a host as online with its capacity and connects its
// agent. inv is what the agent still runs: every live runner the store
// places on this host and the agent does not run has ended, every runner
// the agent runs that the store does not want is stopped, and every one
// whose VM still waits for its runner config is handed it (a warm pool's
// unclaimed VMs wait on).
func (s *Server) AttachHost(ctx context.Context, h store.Host, a HostAgent, inv agentapi.Inventory) error {
	now := s.now().UTC()
	h.State, h.LastSeen, h.Reason, h.Replica = store.HostOnline, now, "", s.cfg.Replica
	if err := h.Validate(); err != nil {
		return err
	}
	runningSet := map[string]bool{}
	for _, r := range inv.Running {
		runningSet[r] = true
	}
	type waiting struct {
		r store.Runner
		j store.Job
	}
	var gone []store.Runner
	var unwanted []string
	var unconfigured []waiting
	err := s.st.Update(ctx, func(tx store.Tx) error {
		gone, unwanted, unconfigured = nil, nil, nil
		old, err := tx.Host(h.ID)
		if err == nil {
			h.CreatedAt = old.CreatedAt
			if old.State == store.HostDraining || old.State == store.HostCordoned {
				h.State = old.State // an operator's decision outlives a reconnect
			}
		} else if errors.Is(err, store.ErrNotFound) {
			h.CreatedAt = now
		} else {
			return err
		}
		if err := tx.PutHost(h); err != nil {
			return err
		}
		live, err := tx.Runners(store.RunnerFilter{HostID: h.ID, Live: true})
		if err != nil {
			return err
		}
		known := map[string]bool{}
		for _, r := range live {
			known[r.Name] = true
			switch {
			case !runningSet[r.Name]:
				gone = append(gone, r)
			case !slices.Contains(inv.AwaitingConfig, r.Name) || r.Pool != "" && r.ClaimedAt.IsZero():
			default:
				w := waiting{r: r}
				if r.JobID != 0 {
					if w.j, err = tx.Job(r.JobID); err != nil && !errors.Is(err, store.ErrNotFound) {
						return err
					}
				}
				unconfigured = append(unconfigured, w)
			}
		}
		for name := range runningSet {
			if !known[name] {
				unwanted = append(unwanted, name)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("attach host %s: %w", h.ID, err)
	}
	s.links.attach(h.ID, a)
	for _, r := range gone {
		s.HostEvent(agentapi.Event{Host: h.ID, Runner: r.Name, Kind: agentapi.EventEnded, At: now,
			Failure: failure.VMGone, Detail: "the host's agent no longer runs this VM (agent or control plane restarted)"})
	}
	for _, name := range unwanted {
		a.Stop(name, "the control plane does not know this runner")
	}
	for _, w := range unconfigured {
		s.reconfigure(w.r, w.j, a)
	}
	s.log.Info("host attached", "host", h.ID, "vcpus", h.VCPUs, "memory_mib", h.MemoryMiB,
		"arches", h.Arches, "ended", len(gone), "stopped", len(unwanted), "configuring", len(unconfigured),
		"replica", s.cfg.Replica)
	s.kickPlacement()
	return nil
}

// DetachHost disconnects a host's agent; it stays in the store, offline.
func (s *Server) DetachHost(ctx context.Context, id, reason string) error {
	s.links.detach(id)
	_, err := s.detach(ctx, id, reason, nil)
	return err
}

// detach marks host id offline, if cond (nil: always) holds for its
// record when the transaction reads it, and says whether it did.
func (s *Server) detach(ctx context.Context, id, reason string, cond func(store.Host) bool) (bool, error) {
	did := false
	err := s.st.Update(ctx, func(tx store.Tx) error {
		did = false
		h, err := tx.Host(id)
		if err != nil {
			return err
		}
		if cond != nil && !cond(h) {
			return nil
		}
		did = true
		h.State, h.Reason = store.HostOffline, reason
		return tx.PutHost(h)
	})
	return did, err
}

// newRunnerName returns "<prefix>-<12 hex>": unique, and recognisably
// Tandem's, so the orphan reconciler can tell our runners from others.
func (s *Server) newRunnerName() string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return s.cfg.Runner.NamePrefix + "-" + hex.EncodeToString(b[:])
}

// isOurRunnerName reports whether a GitHub runner name is one Tandem makes.
func (s *Server) isOurRunnerName(name string) bool {
	p := s.cfg.Runner.NamePrefix + "-"
	if len(name) != len(p)+12 || name[:len(p)] != p {
		return false
	}
	_, err := hex.DecodeString(name[len(p):])
	return err == nil
}

// count adds n to a named counter inside tx (the API shows them).
func (s *Server) count(tx store.Tx, name string, n int64) error {
	if n == 0 {
		return nil
	}
	return tx.AddCounter(name, n)
}
