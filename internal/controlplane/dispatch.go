package controlplane

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/failure"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/lifecycle"
	"github.com/tandem-ci/tandem/internal/scheduler"
	"github.com/tandem-ci/tandem/internal/store"
)

// jitEnv is the variable that hands the runner its JIT config. The official
// runner reads every command-line input from ACTIONS_RUNNER_INPUT_<NAME>, so
// the config never appears in a process list; the guest passes it to the
// runner only.
const jitEnv = "ACTIONS_RUNNER_INPUT_JITCONFIG"

// dispatchLoop runs a placement pass whenever something changed, and every
// few seconds regardless. A pass reads every queued job, so under a burst
// of webhooks passes are spaced at least twice their own duration apart:
// the dispatcher never takes more than about a third of the store's time.
func (s *Server) dispatchLoop(ctx context.Context) {
	wake := s.subscribe(ctx, topicDispatch)
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		start := time.Now()
		if err := s.dispatch(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("placement pass", "err", err)
		}
		if gap := 2 * time.Since(start); gap > time.Millisecond {
			select {
			case <-ctx.Done():
				return
			case <-time.After(gap):
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.dispatchKick:
		case <-wake:
		case <-t.C:
		}
	}
}

// launch is one runner to start after the pass's transaction commits.
type launch struct {
	runner store.Runner
	job    store.Job
	claim  bool // a warm pool's VM, booted already: configure it only
	routed bool // queued for the replica that holds its host (routeLaunches)
}

// dispatch is one placement pass: spare runners first go to queued jobs of
// their label set, the rest are stopped; then the placer places the
// remaining queued jobs, on warm pools' VMs or new ones, and their runners
// are launched (or, warm, configured); last the pools are tended
// (pools.go).
func (s *Server) dispatch(ctx context.Context) error {
	start := time.Now()
	now := s.now().UTC()
	var stops []store.Runner
	var poolStops []poolStop
	launched := 0
	err := s.update(ctx, func(tx store.Tx, fx *afterCommit) error {
		stops, poolStops, launched = nil, nil, 0
		queued, err := tx.Jobs(store.JobFilter{States: []store.JobState{store.JobQueued}})
		if err != nil {
			return err
		}
		live, err := tx.Runners(store.RunnerFilter{Live: true})
		if err != nil {
			return err
		}
		s.marks.retain(live)
		var warmKeys map[int64]string
		if s.pools.on() {
			// Every queued job is an arrival for demand mode, whether a
			// spare runner, a warm VM or a new one serves it.
			warmKeys = s.pools.observe(queued, s.cfg.Labels, s.place.policyFor, now)
		}
		queued, stops, err = s.giveSpares(tx, fx, queued, live, now)
		if err != nil {
			return err
		}
		hosts, err := tx.Hosts()
		if err != nil {
			return err
		}
		connected := s.reachable(hosts, now)
		var warm []scheduler.Warm
		if s.pools.on() {
			warm = warmVMs(live, func(r store.Runner) bool { return s.marks.isStopping(r.Name) })
		}
		plan := s.place.plan(hosts, connected, live, queued, warm, warmKeys)
		byID := map[int64]store.Job{}
		for _, j := range queued {
			byID[j.ID] = j
		}
		var liveByName map[string]store.Runner
		if len(warm) > 0 {
			liveByName = make(map[string]store.Runner, len(live))
			for _, r := range live {
				liveByName[r.Name] = r
			}
		}
		claimed := map[string]bool{}
		var placed []store.Runner
		for _, p := range plan.Placements {
			j := byID[p.JobID]
			if p.Warm != "" {
				if err := s.claim(tx, fx, liveByName[p.Warm], j, now); err != nil {
					return err
				}
				claimed[p.Warm] = true
				continue
			}
			if k := warmKeys[j.ID]; k != "" {
				fx.do(func() { s.metrics.poolClaimed(k, false, 0) })
				if err := s.count(tx, "pools/"+k+"/misses", 1); err != nil {
					return err
				}
			}
			r := s.place.newRunner(j, p, now)
			placed = append(placed, r)
			if err := tx.PutRunner(r); err != nil {
				return err
			}
			j.RunnerName, j.HostID = r.Name, r.HostID
			if _, err := s.move(fx, &j, jobStep{ev: lifecycle.Placed, run: r}, now); err != nil {
				return err
			}
			launched++
			j.Reason = fmt.Sprintf("placed on %s (attempt %d)", p.HostID, j.Attempts)
			if p.Emulated {
				j.Reason += ", emulated " + string(p.Arch)
			}
			if err := tx.UpdateJob(j, store.Event{Source: "scheduler", Reason: j.Reason}); err != nil {
				return err
			}
		}
		for _, d := range plan.Unschedulable {
			j := byID[d.JobID]
			if _, err := s.move(fx, &j, jobStep{ev: lifecycle.NoHostFits}, now); err != nil {
				return err
			}
			j.Reason = d.Reason
			if err := tx.UpdateJob(j, store.Event{Source: "scheduler", Reason: d.Reason}); err != nil {
				return err
			}
		}
		if !s.pools.on() {
			return nil
		}
		var waiting []store.Job
		for _, d := range plan.Waiting {
			if !d.Limited {
				waiting = append(waiting, byID[d.JobID])
			}
		}
		poolStops, err = s.tendPools(tx, fx, hosts, connected, live, placed, claimed, waiting, now)
		return err
	})
	if err != nil {
		return err
	}
	s.metrics.placement(time.Since(start), launched)
	for _, ps := range poolStops {
		// Marked now, so that the next pass hands it to no job.
		s.marks.stop(ps.runner.Name)
		s.metrics.poolRecycled(ps.runner.Pool, ps.cause)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.noteRunner(ctx, ps.runner.Name, ps.reason, 0); err != nil {
				s.log.Warn("recording why a pool VM stops", "runner", ps.runner.Name, "err", err)
			}
			s.stopRunner(ps.runner.HostID, ps.runner.Name, ps.reason)
		}()
	}
	for _, r := range stops {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.retire(ctx, r, "spare: no queued job needs it", "dispatch/spare-runners-stopped")
		}()
	}
	return nil
}

// giveSpares binds each spare runner that is not being stopped to the
// queued job the placer matches it with, and returns the jobs still queued
// and the runners to stop because no job needs them.
func (s *Server) giveSpares(tx store.Tx, fx *afterCommit, queued []store.Job, live []store.Runner, now time.Time) ([]store.Job, []store.Runner, error) {
	pairs, rest, unneeded := s.place.matchSpares(queued, live, func(r store.Runner) bool {
		return s.marks.isStopping(r.Name) || s.marks.held(r.Name, now)
	})
	for _, m := range pairs {
		r, j := m.runner, m.job
		r.JobID, r.UpdatedAt = j.ID, now
		if err := tx.PutRunner(r); err != nil {
			return nil, nil, err
		}
		j.RunnerName, j.HostID = r.Name, r.HostID
		if _, err := s.move(fx, &j, jobStep{ev: lifecycle.GivenSpare, facts: lifecycle.Facts{Registered: registered(r)}}, now); err != nil {
			return nil, nil, err
		}
		j.Reason = "given spare runner " + r.Name
		if err := tx.UpdateJob(j, store.Event{Source: "scheduler", Reason: j.Reason}); err != nil {
			return nil, nil, err
		}
	}
	if err := s.count(tx, "dispatch/spare-runners-reused", int64(len(pairs))); err != nil {
		return nil, nil, err
	}
	return rest, unneeded, nil
}

// runnerScope is where a runner is registered on GitHub: its repository,
// or its organisation.
func runnerScope(r store.Runner) github.Scope {
	if r.Repo != "" {
		owner, name, _ := strings.Cut(r.Repo, "/")
		return github.Scope{Owner: owner, Repo: name}
	}
	return github.Scope{Owner: r.Org}
}

// launch starts a placed runner: the host boots its VM while the JIT config
// is fetched from GitHub, and the config follows as soon as it arrives.
func (s *Server) launch(ctx context.Context, l launch) {
	r := l.runner
	log := s.log.With("runner", r.Name, "job", l.job.ID, "host", r.HostID)
	a, ok := s.links.agent(r.HostID)
	if !ok {
		s.HostEvent(agentapi.Event{Host: r.HostID, Runner: r.Name, Kind: agentapi.EventEnded,
			Failure: failure.Launch, Detail: "host disconnected before the launch"})
		return
	}
	if r.Pool != "" && r.ClaimedAt.IsZero() {
		s.startVM(a, r, s.cfg.KeepFailedAny) // a warm pool's: it waits for a job to claim it
		return
	}
	gid, err := s.runnerGroupID(ctx, r, l.job)
	var nr *notRoutedError
	if errors.As(err, &nr) {
		s.notRouted(ctx, r, l.job.ID, nr.why)
		return
	}
	if err != nil {
		log.Warn("looking up the runner group", "group", r.Group, "err", err)
		s.HostEvent(agentapi.Event{Host: r.HostID, Runner: r.Name, Kind: agentapi.EventEnded,
			Failure: failure.Launch, Detail: fmt.Sprintf("looking up runner group %q: %v", r.Group, err)})
		return
	}
	if !l.claim && !s.startVM(a, r, s.keepFor(l.job.Org, l.job.Repo) > 0) {
		return
	}
	s.configure(ctx, r, gid)
}

// startVM asks r's host to boot its VM, and says whether it took the
// assignment; if not, r has ended. mayKeep: the VM may be kept after its
// job for debugging (debug.go).
func (s *Server) startVM(a HostAgent, r store.Runner, mayKeep bool) bool {
	// The image is chosen and the launch queued under imgMu: a host hears
	// of a newly named image only after the launches of the old one.
	s.imgMu.RLock()
	img := s.imageFor(r)
	asg := agentapi.Assignment{
		Runner: r.Name, Arch: r.Arch, VCPUs: r.VCPUs, MemoryMiB: r.MemoryMiB, Image: img,
		Command: s.cfg.Runner.Command, User: s.cfg.Runner.User, Timeout: s.cfg.Runner.MaxJobTime, ConfigTimeout: s.cfg.Runner.ConfigTimeout,
		Env: map[string]string{"TANDEM_RUNNER_NAME": r.Name}, Egress: r.Egress, DiskMiB: s.place.diskFor(r.VCPUs),
		MayKeep: mayKeep,
	}
	if r.Pool != "" {
		// It waits for a job as long as its pool keeps it, and a little
		// longer: the pool recycles it first, and a control plane that is
		// gone leaves no VM waiting for ever.
		asg.Pool = r.Pool
		if wp := s.pools.byKey[r.Pool]; wp != nil {
			asg.ConfigTimeout = wp.spec.MaxAge + time.Minute
		}
	}
	err := a.Launch(asg)
	s.imgMu.RUnlock()
	if err != nil {
		s.HostEvent(agentapi.Event{Host: r.HostID, Runner: r.Name, Kind: agentapi.EventEnded,
			Failure: failure.Launch, Detail: err.Error()})
		return false
	}
	return true
}

// configure fetches r's JIT config from GitHub (for runner group gid) and
// hands it to its VM, which boots meanwhile or, warm, waits for it. The
// config goes through the link the host's agent has when it arrives: an
// agent that reconnected meanwhile has a new one, and one that is not
// connected gets it from whichever replica it reaches next, which hears
// from its hello that the VM still waits (reconfigure).
func (s *Server) configure(ctx context.Context, r store.Runner, gid int64) {
	if !s.marks.beginConfigure(r.Name, nil) {
		return // being configured already, or stopped
	}
	s.handConfig(ctx, r, gid)
}

// reconfigure hands a runner its config again, in the background: the
// host's agent, which has just attached through link a, says that its VM
// still waits for one. j is the runner's job (zero: none now).
func (s *Server) reconfigure(r store.Runner, j store.Job, a HostAgent) {
	if !s.marks.beginConfigure(r.Name, a) {
		return // being configured already, or the config went through a
	}
	s.log.Info("runner VM still waits for its config; handing it over again", "runner", r.Name, "host", r.HostID)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		gid, err := s.runnerGroupID(s.runCtx, r, j)
		if err != nil {
			s.marks.endConfigure(r.Name)
			s.log.Warn("looking up the runner group; stopping the runner", "runner", r.Name, "group", r.Group, "err", err)
			s.stopRunner(r.HostID, r.Name, fmt.Sprintf("no runner config: looking up runner group %q: %v", r.Group, err))
			return
		}
		s.handConfig(s.runCtx, r, gid)
	}()
}

// handConfig is configure once marks.beginConfigure said yes.
func (s *Server) handConfig(ctx context.Context, r store.Runner, gid int64) {
	defer s.marks.endConfigure(r.Name)
	log := s.log.With("runner", r.Name, "job", r.JobID, "host", r.HostID)
	jctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	// GitHub asks integrators not to send many requests at once (its
	// secondary rate limits); a burst of placements queues here instead.
	select {
	case s.ghSlots <- struct{}{}:
	case <-jctx.Done():
		s.stopRunner(r.HostID, r.Name, "no runner config: "+jctx.Err().Error())
		return
	}
	jit, err := s.jitConfig(jctx, r, gid)
	<-s.ghSlots
	if err != nil {
		if errors.Is(err, github.ErrNotFound) && r.Group != "" {
			s.groups.forget(r.Installation, r.Org) // the group may be gone: ask GitHub next time
		}
		log.Warn("runner config from GitHub failed; stopping its VM", "err", err)
		s.noteRunner(ctx, r.Name, "runner config from GitHub failed: "+err.Error(), 0)
		s.stopRunner(r.HostID, r.Name, "no runner config")
		return
	}
	if err := s.noteRunner(ctx, r.Name, "", jit.RunnerID); err != nil {
		log.Warn("recording runner id", "err", err)
	}
	a, connected := s.links.agent(r.HostID)
	// A runner being retired must not get its config: it could take a job
	// just before its VM is stopped.
	if !s.marks.configure(r.Name, a) {
		if err := s.gh.DeleteRunner(jctx, r.Installation, runnerScope(r), jit.RunnerID); err != nil && !errors.Is(err, github.ErrNotFound) {
			log.Warn("deleting a retired runner's registration (the orphan reconciler will retry)", "err", err)
		}
		return
	}
	if !connected {
		log.Info("host disconnected before its runner's config could be handed over; it goes when the agent is back")
		return
	}
	if err := a.Configure(r.Name, map[string]string{jitEnv: jit.EncodedConfig}); err != nil {
		log.Warn("handing the runner its config", "err", err)
	}
}

// jitConfig registers r with GitHub and returns its JIT config. A runner
// of r's name registered already is an earlier attempt's for this same
// VM (names are unique per VM) whose config never reached it: its replica
// died, or the stream it went into broke. GitHub refuses a second one of
// the name (409), so that registration is deleted and the config asked
// for once more.
func (s *Server) jitConfig(ctx context.Context, r store.Runner, gid int64) (github.JITConfig, error) {
	req := github.JITRequest{Name: r.Name, RunnerGroupID: gid, Labels: r.Labels, WorkFolder: s.cfg.Runner.WorkFolder}
	scope := runnerScope(r)
	jit, err := s.gh.GenerateJITConfig(ctx, r.Installation, scope, req)
	if !errors.Is(err, github.ErrConflict) {
		return jit, err
	}
	runners, lerr := s.gh.ListRunners(ctx, r.Installation, scope)
	if lerr != nil {
		return jit, fmt.Errorf("%w (and listing the runners to find the earlier one: %v)", err, lerr)
	}
	i := slices.IndexFunc(runners, func(g github.Runner) bool { return g.Name == r.Name })
	if i < 0 {
		return jit, err
	}
	if derr := s.gh.DeleteRunner(ctx, r.Installation, scope, runners[i].ID); derr != nil && !errors.Is(derr, github.ErrNotFound) {
		return jit, fmt.Errorf("%w (and deleting the earlier registration: %v)", err, derr)
	}
	s.log.Info("runner registered by an earlier attempt whose config never reached its VM; registering it again",
		"runner", r.Name, "github_id", runners[i].ID)
	return s.gh.GenerateJITConfig(ctx, r.Installation, scope, req)
}

// noteRunner records a runner's GitHub id (moving its job to launching) or,
// with a reason, why it is being stopped.
func (s *Server) noteRunner(ctx context.Context, name, reason string, githubID int64) error {
	now := s.now().UTC()
	return s.update(ctx, func(tx store.Tx, fx *afterCommit) error {
		r, err := tx.Runner(name)
		if err != nil {
			return err
		}
		if r.State == store.RunnerEnded {
			return nil
		}
		if reason != "" {
			r.Reason = reason
		}
		if githubID != 0 {
			r.GitHubID = githubID
		}
		r.UpdatedAt = now
		if err := tx.PutRunner(r); err != nil {
			return err
		}
		if githubID == 0 || r.JobID == 0 {
			return nil
		}
		j, err := tx.Job(r.JobID)
		if err != nil {
			return err
		}
		if j.RunnerName != name {
			return nil // it has moved on to another runner
		}
		rule, err := s.move(fx, &j, jobStep{ev: lifecycle.Registered}, now)
		if err != nil || rule.To == lifecycle.Unchanged {
			return err
		}
		j.Reason = fmt.Sprintf("VM booting on %s; runner %s registered with GitHub", r.HostID, name)
		return tx.UpdateJob(j, store.Event{Source: "scheduler", Reason: j.Reason})
	})
}

// busyRecheck is how long a runner GitHub reports busy is left alone before
// it may be retired again (its in_progress webhook is on the way).
const busyRecheck = 10 * time.Second

// retire stops a runner that should take no job. A runner that has its JIT
// config may already have taken one whose in_progress webhook has not
// arrived: its GitHub registration is deleted first, which GitHub refuses
// (422) for a busy runner, and then it is left running. Only a runner that
// can no longer take a job is stopped. count names the counter to add to.
func (s *Server) retire(ctx context.Context, r store.Runner, reason, count string) bool {
	first, configured := s.marks.retiring(r.Name)
	if !first {
		return false
	}
	return s.finishRetire(ctx, r, configured, reason, count)
}

// beginRetire marks a runner as being retired; see marks.retiring.
func (s *Server) beginRetire(name string) (first, configured bool) { return s.marks.retiring(name) }

// finishRetire is retire once the runner is marked as being retired
// (marks.retiring said first): no placement pass hands it to a job from
// then on.
func (s *Server) finishRetire(ctx context.Context, r store.Runner, configured bool, reason, count string) bool {
	if configured {
		cur, err := s.runnerRecord(ctx, r.Name)
		if err == nil && cur.GitHubID != 0 {
			err = s.gh.DeleteRunner(ctx, cur.Installation, runnerScope(cur), cur.GitHubID)
			if errors.Is(err, github.ErrNotFound) {
				err = nil // gone already: it ran its job, or never registered
			}
		}
		if err != nil {
			s.marks.busy(r.Name, s.now().Add(busyRecheck))
			if errors.Is(err, github.ErrUnprocessable) {
				s.log.Info("not retiring a runner GitHub reports busy", "runner", r.Name, "why", reason)
				verifyRunnerJob := r.JobID
				if verifyRunnerJob != 0 {
					s.rec.verify(verifyRunnerJob)
				}
			} else {
				s.log.Warn("retiring runner: deleting its GitHub registration", "runner", r.Name, "err", err)
			}
			return false
		}
	}
	if err := s.noteRunner(ctx, r.Name, reason, 0); err != nil {
		s.log.Warn("retiring runner", "runner", r.Name, "err", err)
	}
	if count != "" {
		if err := s.st.Update(ctx, func(tx store.Tx) error { return s.count(tx, count, 1) }); err != nil {
			s.log.Warn("counting", "counter", count, "err", err)
		}
	}
	s.stopRunner(r.HostID, r.Name, reason)
	return true
}

func (s *Server) runnerRecord(ctx context.Context, name string) (store.Runner, error) {
	var r store.Runner
	err := s.st.View(ctx, func(tx store.ReadTx) error {
		var err error
		r, err = tx.Runner(name)
		return err
	})
	return r, err
}

// stopRunner asks a runner's host to end its VM. The runner is bound to no
// job from now on; its "ended" event finishes the story.
func (s *Server) stopRunner(hostID, name, reason string) {
	s.marks.stop(name)
	a, ok := s.links.agent(hostID)
	if !ok {
		// Another replica may hold the host's agent; else a disconnected
		// host's runners end when it reattaches.
		s.stopElsewhere(s.runCtx, hostID, name, reason)
		return
	}
	if err := a.Stop(name, reason); err != nil {
		s.log.Warn("stopping runner", "runner", name, "host", hostID, "err", err)
	}
}

// HostEvent takes a report from an agent. It never blocks: events are
// applied in order by eventLoop.
func (s *Server) HostEvent(e agentapi.Event) { s.HostEvents(e) }

// HostEvents takes reports from an agent, as HostEvent does, and returns a
// channel closed once all of them are applied: in the store, where a
// control plane that restarts finds them. An agent forgets a runner's end
// only then.
func (s *Server) HostEvents(evs ...agentapi.Event) <-chan struct{} {
	now := s.now()
	for i := range evs {
		if evs[i].At.IsZero() {
			evs[i].At = now
		}
	}
	return s.events.put(evs...)
}

func (s *Server) eventLoop(ctx context.Context) {
	for {
		n, err := s.drainEvents(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, store.ErrClosed) {
				return
			}
			s.log.Error("applying host event", "err", err)
			time.Sleep(100 * time.Millisecond) // the rest were put back: retry
			kick(s.events.kick)
		}
		if n > 0 {
			s.kickPlacement()
		}
		select {
		case <-ctx.Done():
			return
		case <-s.events.kick:
		}
	}
}

// drainEvents applies the queued host events in order. On an error the
// unapplied ones go back to the head of the queue.
func (s *Server) drainEvents(ctx context.Context) (int, error) {
	return s.events.drain(func(e agentapi.Event) error { return s.applyHostEvent(ctx, e) })
}

// FlushEvents applies every host event reported so far (a shutting-down
// `tandem up` calls it after its agent has stopped every VM).
func (s *Server) FlushEvents(ctx context.Context) error {
	for {
		n, err := s.drainEvents(ctx)
		if err != nil || n == 0 {
			return err
		}
	}
}

// applyHostEvent moves a runner, and the job bound to it, as its host reports.
func (s *Server) applyHostEvent(ctx context.Context, e agentapi.Event) error {
	now := e.At.UTC()
	var buffered *hostSamples // an ended VM's last samples, not yet written
	if e.Kind == agentapi.EventEnded {
		buffered = s.profiles.takeRunner(e.Runner)
	}
	err := s.update(ctx, func(tx store.Tx, fx *afterCommit) error {
		r, err := tx.Runner(e.Runner)
		if errors.Is(err, store.ErrNotFound) {
			return nil // not ours (or pruned): nothing to record
		}
		if err != nil {
			return err
		}
		if r.State == store.RunnerEnded {
			return nil
		}
		if e.Host != "" && r.HostID != e.Host {
			fx.do(func() {
				s.log.Warn("host reported on another host's runner; ignored", "host", e.Host, "runner", r.Name, "owner", r.HostID)
			})
			return nil
		}
		r.UpdatedAt = now
		if e.VMID != "" {
			r.VMID = e.VMID
		}
		switch e.Kind {
		case agentapi.EventBooting:
			if _, err := moveRunner(&r, lifecycle.VMBooting); err != nil {
				return err
			}
			return tx.PutRunner(r)
		case agentapi.EventReady:
			if r.ReadyAt.IsZero() {
				r.ReadyAt = now
				if r.Pool != "" && !r.CreatedAt.IsZero() && now.After(r.CreatedAt) {
					fx.do(func() {
						s.pools.ready(r.Pool, now.Sub(r.CreatedAt))
						s.metrics.poolReady(r.Pool, now.Sub(r.CreatedAt))
					})
				}
			}
			return tx.PutRunner(r)
		case agentapi.EventStarted:
			if _, err := moveRunner(&r, lifecycle.RunnerStarted); err != nil {
				return err
			}
			if r.StartedAt.IsZero() { // once: the runner may be busy already (its job's in_progress came first)
				fx.do(func() { s.metrics.vmBooted(r, now) })
			}
			r.StartedAt = now
			if r.JobID != 0 {
				if j, err := tx.Job(r.JobID); err == nil {
					if since := queuedSince(j, now); !since.IsZero() {
						fx.do(func() { s.metrics.runnerStarted(now.Sub(since)) })
					}
				}
			}
			return tx.PutRunner(r)
		case agentapi.EventEnded:
			if r.Idle() {
				fx.do(func() { s.pools.ended(r, e, now, s.log) })
			}
			return s.runnerEnded(tx, fx, r, e, buffered, now)
		}
		// A newer agent's event this control plane does not know: kept
		// out of the store, and not retried (it would block the queue).
		fx.do(func() {
			s.log.Warn("host event of an unknown kind ignored", "host", e.Host, "runner", e.Runner, "kind", e.Kind)
		})
		return nil
	})
	if err == nil && e.Kind == agentapi.EventEnded {
		s.marks.ended(e.Runner)
	}
	return err
}

// runnerEnded records a runner's end, and tells the job bound to it
// (lifecycle.RunnerExited): a job still waiting for it goes back to the
// queue (another host is preferred) until its launches are spent.
func (s *Server) runnerEnded(tx store.Tx, fx *afterCommit, r store.Runner, e agentapi.Event, buffered *hostSamples, now time.Time) error {
	if _, err := moveRunner(&r, lifecycle.VMEnded); err != nil {
		return err
	}
	r.EndedAt, r.ExitCode = now, e.ExitCode
	if e.Egress != nil {
		r.EgressRecord = e.Egress
	}
	why := r.Reason
	if e.Failure != "" {
		why = strings.TrimSpace(string(e.Failure) + ": " + firstLine(e.Detail))
		if r.Reason != "" {
			why = r.Reason + " (" + why + ")"
		}
	}
	r.Reason = why
	if err := tx.PutRunner(r); err != nil {
		return err
	}
	if err := makeProfile(tx, r, buffered, now); err != nil {
		return err
	}
	if r.JobID == 0 {
		return nil
	}
	j, err := tx.Job(r.JobID)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if j.RunnerName != r.Name {
		return nil // the job has moved on to another runner
	}
	// An ephemeral runner exits cleanly after running one job: one that
	// ends cleanly without its job took another job of the same labels
	// whose in_progress webhook has not arrived (the table refunds the
	// attempt and asks GitHub).
	clean := e.Failure == failure.None && e.ExitCode == 0 && why == ""
	if j.State == store.JobRunning {
		// Lost while it ran, if that was Tandem's or its host's doing: to
		// be re-run, where its repository asks for it.
		if err := s.noteLoss(tx, fx, j, r, e.Failure, now); err != nil {
			return err
		}
	}
	rule, err := s.move(fx, &j, jobStep{ev: lifecycle.RunnerExited, host: r.HostID, facts: lifecycle.Facts{
		Clean: clean, HostLeft: e.Failure.HostLeft(), HostAtFault: e.Failure.HostAtFault()}}, now)
	if err != nil || rule.To == lifecycle.Unchanged {
		return err
	}
	if why == "" {
		why = fmt.Sprintf("runner exited (code %d) without taking the job", e.ExitCode)
	}
	switch {
	case j.State == store.JobLost:
		j.Reason = fmt.Sprintf("its host %s left the fleet while it ran: %s", r.HostID, firstLine(e.Detail))
	case j.State == store.JobFailed:
		j.Reason = fmt.Sprintf("gave up after %d launches; last on %s: %s", j.Attempts, r.HostID, why)
	case clean:
		j.Reason = fmt.Sprintf("runner %s ran another job; waiting for a new one", r.Name)
	default:
		j.Reason = fmt.Sprintf("launch %d on %s failed: %s", j.Attempts, r.HostID, why)
	}
	if j.State != store.JobLost {
		j.RunnerName, j.HostID = "", ""
	}
	return tx.UpdateJob(j, store.Event{Source: "agent", Reason: j.Reason})
}

func appendUnique(xs []string, x string) []string {
	for _, y := range xs {
		if y == x {
			return xs
		}
	}
	return append(xs, x)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	if len(line) > 300 {
		line = line[:300] + "…"
	}
	return line
}
