package controlplane

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/store"
)

// Several replicas of the control plane may share one store (PostgreSQL:
// a store.Elector and a store.Notifier). Every replica takes webhooks,
// serves the API and the dashboard, holds agents' streams, applies their
// events and carries out the runner commands of the hosts it holds. One,
// the leader, also applies deliveries, places jobs, reconciles and polls
// GitHub, under a store.Fence: once its term is over, nothing it decided
// is written. With a store of one process (SQLite) the one replica leads
// for as long as it runs.
//
// How a decision reaches a host: the leader writes a placement and, when
// another replica holds the host's agent (store.Host.Replica), a runner
// command in the same transaction; that replica takes it and launches.
// A host's holder keeps its LastSeen fresh; the leader takes a host whose
// LastSeen is older than the heartbeat timeout out of the fleet, as it
// does a silent one of its own.

// Topics the replicas wake each other on (store.Notifier).
const (
	topicApply    = "apply"    // deliveries stored: the leader applies them
	topicDispatch = "dispatch" // something placement depends on changed
	topicCommands = "commands" // runner commands queued for a host's holder
)

// commandPoll is how often a replica looks for runner commands when no
// notification comes (a lost one, or a store without notifications).
const commandPoll = 2 * time.Second

// commandBatch bounds the commands taken in one transaction.
const commandBatch = 200

// leadership is this replica's standing.
type leadership struct {
	mu      sync.Mutex
	leading bool      // guarded by mu
	epoch   int64     // guarded by mu: the term's, while leading
	since   time.Time // guarded by mu: when the term began
}

func (l *leadership) begin(epoch int64, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.leading, l.epoch, l.since = true, epoch, at
}

func (l *leadership) end() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.leading = false
}

// get says whether this replica leads, and since when.
func (l *leadership) get() (leading bool, epoch int64, since time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.leading, l.epoch, l.since
}

// shared says whether other replicas may share the store (PostgreSQL);
// with SQLite this process is the only one.
func (s *Server) shared() bool { return s.notifier != nil }

func (s *Server) leading() bool {
	l, _, _ := s.lead.get()
	return l
}

// campaign runs the leader's loops for each term this replica wins, until
// ctx ends.
func (s *Server) campaign(ctx context.Context, loops []func(context.Context)) {
	el, ok := s.st.(store.Elector)
	if !ok {
		s.serveTerm(ctx, 0, nil, loops)
		return
	}
	for ctx.Err() == nil {
		term, err := el.Campaign(ctx, s.cfg.Replica)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, store.ErrClosed) {
				return
			}
			s.log.Error("campaigning for the lead", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		s.serveTerm(store.Fence(ctx, term.Epoch), term.Epoch, term.Lost, loops)
		term.Resign()
	}
}

// serveTerm runs loops until the term is lost or ctx ends.
func (s *Server) serveTerm(ctx context.Context, epoch int64, lost <-chan struct{}, loops []func(context.Context)) {
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.lead.begin(epoch, s.now())
	s.metrics.leading(true, epoch)
	s.log.Info("leading the control plane", "replica", s.cfg.Replica, "epoch", epoch)
	var wg sync.WaitGroup
	for _, l := range loops {
		wg.Go(func() { l(tctx) })
	}
	kick(s.applyKick)
	kick(s.dispatchKick)
	select {
	case <-lost:
		s.log.Warn("lost the lead: the database lost touch with this replica", "replica", s.cfg.Replica, "epoch", epoch)
	case <-ctx.Done():
	}
	// No longer leading from now on (the followers' duties resume at
	// once), though the loops may take a moment to end.
	s.lead.end()
	s.metrics.leading(false, epoch)
	cancel()
	wg.Wait()
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// subscribe is the store's notifications of topic, or nil (a channel that
// never receives) for a store of one process.
func (s *Server) subscribe(ctx context.Context, topic string) <-chan struct{} {
	if s.notifier == nil {
		return nil
	}
	return s.notifier.Subscribe(ctx, topic)
}

// kickApply asks for the stored deliveries to be applied soon: here, and
// by the leader if another replica leads.
func (s *Server) kickApply() {
	kick(s.applyKick)
	if s.notifier != nil {
		kick(s.tell[topicApply])
	}
}

// kickPlacement asks for a placement pass soon, wherever the leader is.
func (s *Server) kickPlacement() {
	kick(s.dispatchKick)
	if s.notifier != nil {
		kick(s.tell[topicDispatch])
	}
}

// notifyLoop passes kicks on to the other replicas: one notification for
// any number of kicks since the last (apply and dispatch only when
// another replica leads; commands always).
func (s *Server) notifyLoop(ctx context.Context) {
	if s.notifier == nil {
		return
	}
	for {
		var topic string
		select {
		case <-ctx.Done():
			return
		case <-s.tell[topicApply]:
			topic = topicApply
		case <-s.tell[topicDispatch]:
			topic = topicDispatch
		case <-s.tell[topicCommands]:
			topic = topicCommands
		}
		if topic != topicCommands && s.leading() {
			continue // its own kick did it
		}
		if err := s.notifier.Notify(ctx, topic); err != nil && ctx.Err() == nil {
			// The others poll: this only costs them time.
			s.log.Warn("waking the other replicas", "topic", topic, "err", err)
		}
	}
}

// routeLaunches queues, in the transaction that placed them, a launch
// command for each runner to launch whose host another replica holds;
// those are not launched here. A host nobody holds is left to launch,
// which reports it disconnected.
func (s *Server) routeLaunches(tx store.Tx, fx *afterCommit) error {
	if !s.shared() {
		return nil // one replica: a host not attached here is attached nowhere
	}
	for i, l := range fx.launches {
		if _, local := s.links.agent(l.runner.HostID); local {
			continue
		}
		h, err := tx.Host(l.runner.HostID)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if h.Replica == "" || h.Replica == s.cfg.Replica {
			continue
		}
		kind := store.CommandLaunch
		if l.claim {
			kind = store.CommandClaim
		}
		if err := tx.AddRunnerCommand(store.RunnerCommand{HostID: h.ID, Runner: l.runner.Name,
			Kind: kind, At: s.now().UTC()}); err != nil {
			return err
		}
		fx.launches[i].routed = true
	}
	return nil
}

// stopElsewhere queues a stop for a runner whose host's agent another
// replica holds, and says whether it did.
func (s *Server) stopElsewhere(ctx context.Context, hostID, name, reason string) bool {
	if !s.shared() {
		return false // one replica: a host not attached here is attached nowhere
	}
	queued := false
	err := s.st.Update(ctx, func(tx store.Tx) error {
		queued = false
		h, err := tx.Host(hostID)
		if err != nil || h.Replica == "" || h.Replica == s.cfg.Replica || h.State == store.HostOffline {
			return err
		}
		queued = true
		return tx.AddRunnerCommand(store.RunnerCommand{HostID: hostID, Runner: name, Kind: store.CommandStop,
			Reason: reason, At: s.now().UTC()})
	})
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			s.log.Warn("asking the replica that holds its host to stop a runner", "runner", name, "host", hostID, "err", err)
		}
		return false
	}
	if queued {
		kick(s.tell[topicCommands])
	}
	return queued
}

// commandLoop carries out the runner commands queued for the hosts this
// replica holds.
func (s *Server) commandLoop(ctx context.Context) {
	wake := s.subscribe(ctx, topicCommands)
	t := time.NewTicker(commandPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-t.C:
		}
		for {
			n, err := s.takeCommands(ctx)
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, store.ErrClosed) {
					s.log.Error("taking runner commands", "err", err)
				}
				break
			}
			if n < commandBatch {
				break
			}
		}
	}
}

// takeCommands takes a batch of commands for the hosts attached here and
// carries them out, in order; it says how many it took. A launch whose
// runner is no longer waiting for one (it ended, or its host reattached
// elsewhere and reported it gone) is dropped.
func (s *Server) takeCommands(ctx context.Context) (int, error) {
	attached := s.links.attached()
	if len(attached) == 0 {
		return 0, nil
	}
	ids := make([]string, 0, len(attached))
	for id := range attached {
		ids = append(ids, id)
	}
	type todo struct {
		cmd    store.RunnerCommand
		launch launch
		ok     bool
	}
	var todos []todo
	err := s.st.Update(ctx, func(tx store.Tx) error {
		todos = todos[:0]
		cmds, err := tx.TakeRunnerCommands(ids, commandBatch)
		if err != nil {
			return err
		}
		for _, c := range cmds {
			td := todo{cmd: c, ok: true}
			if c.Kind == store.CommandLaunch || c.Kind == store.CommandClaim {
				r, err := tx.Runner(c.Runner)
				if errors.Is(err, store.ErrNotFound) {
					td.ok = false
				} else if err != nil {
					return err
				}
				if c.Kind == store.CommandClaim {
					// Its VM runs; it waits for the config once.
					td.ok = td.ok && r.State != store.RunnerEnded && !r.ClaimedAt.IsZero() && r.GitHubID == 0
				} else {
					td.ok = td.ok && r.State == store.RunnerAssigned
				}
				td.ok = td.ok && r.HostID == c.HostID
				td.launch.runner, td.launch.claim = r, c.Kind == store.CommandClaim
				if td.ok && r.JobID != 0 {
					if td.launch.job, err = tx.Job(r.JobID); err != nil && !errors.Is(err, store.ErrNotFound) {
						return err
					}
				}
			}
			todos = append(todos, td)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, td := range todos {
		c := td.cmd
		switch {
		case c.Kind == store.CommandStop:
			s.stopRunner(c.HostID, c.Runner, c.Reason)
		case !td.ok:
			s.log.Info("launch no longer wanted; dropped", "runner", c.Runner, "host", c.HostID)
		default:
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.launch(s.runCtx, td.launch)
			}()
		}
	}
	return len(todos), nil
}

// Health is what GET /healthz says of a replica whose store answers:
// which replica it is, and which leads.
type Health struct {
	Status  string `json:"status"`  // "ok"
	Replica string `json:"replica"` // this replica's name
	Leading bool   `json:"leading"` // whether this replica leads
	// Leader is the replica that leads, as the store says ("" when none
	// does: between terms); Epoch its term, Since when it began.
	Leader string    `json:"leader"`
	Epoch  int64     `json:"epoch,omitempty"`
	Since  time.Time `json:"since,omitzero"`
}

func (s *Server) health(ctx context.Context) Health {
	h := Health{Status: "ok", Replica: s.cfg.Replica}
	leading, epoch, since := s.lead.get()
	h.Leading = leading
	el, shared := s.st.(store.Elector)
	if !shared {
		h.Leader, h.Since = s.cfg.Replica, since.UTC()
		return h
	}
	if l, err := el.Leader(ctx); err == nil && l.Held {
		h.Leader, h.Epoch, h.Since = l.Holder, l.Epoch, l.Since.UTC()
	} else if leading {
		h.Leader, h.Epoch, h.Since = s.cfg.Replica, epoch, since.UTC()
	}
	return h
}

// reachable is the set of hosts placement may use now: those attached
// here, and those another replica holds that it touched within the
// heartbeat timeout.
func (s *Server) reachable(hosts []store.Host, now time.Time) map[string]bool {
	ok := s.links.attached()
	if !s.shared() {
		return ok // one replica (a host's record may name an earlier name of it)
	}
	for _, h := range hosts {
		if h.Replica != "" && h.Replica != s.cfg.Replica && h.State != store.HostOffline &&
			now.Sub(h.LastSeen) <= s.cfg.HeartbeatTimeout {
			ok[h.ID] = true
		}
	}
	return ok
}

// holder is the replica host h's record names, when replicas may share
// the store ("" with one process, or while none holds it).
func (s *Server) holder(h store.Host) string {
	if !s.shared() || h.State == store.HostOffline {
		return ""
	}
	return h.Replica
}

// touchHosts keeps LastSeen of the hosts whose agents this replica holds
// fresh (but for those silent past the timeout, which hostMonitor takes
// out of the fleet).
func (s *Server) touchHosts(ctx context.Context, silent []string) error {
	attached := s.links.attached()
	for _, id := range silent {
		delete(attached, id)
	}
	if len(attached) == 0 {
		return nil
	}
	ids := make([]string, 0, len(attached))
	for id := range attached {
		ids = append(ids, id)
	}
	return s.st.Update(ctx, func(tx store.Tx) error {
		_, err := tx.TouchHosts(s.cfg.Replica, ids, s.now().UTC())
		return err
	})
}

// staleHosts lists the hosts the leader takes out of the fleet: not
// offline, attached to no agent here, and not touched by the replica that
// holds them within the heartbeat timeout (counted from no earlier than
// the start of the term, so that the agents of a replica that just
// restarted have the time to come back).
// reconnectGrace is what a leader adds to the heartbeat timeout after it
// starts before it takes a silent host for gone: an agent's longest wait
// between attempts to reconnect, or the timeout itself if shorter (whoever
// set a timeout that short wants silent hosts gone fast, and gets twice
// it).
func reconnectGrace(heartbeatTimeout time.Duration) time.Duration {
	return min(heartbeatTimeout, agentapi.MaxReconnectBackoff)
}

func (s *Server) staleHosts(ctx context.Context, since time.Time) ([]string, error) {
	var hosts []store.Host
	if err := s.st.View(ctx, func(tx store.ReadTx) (err error) {
		hosts, err = tx.Hosts()
		return err
	}); err != nil {
		return nil, err
	}
	local := s.links.attached()
	cutoff := s.now().Add(-s.cfg.HeartbeatTimeout)
	// A leader that has just started (or taken over) has heard from no
	// host yet: their agents are still waiting out their reconnect
	// backoff (at most agentapi.MaxReconnectBackoff) after the outage.
	// Until they have had that and a heartbeat timeout, no host is taken
	// for gone: a restart of the control plane must not lose the jobs
	// that ran on through it.
	if !since.Before(cutoff.Add(-reconnectGrace(s.cfg.HeartbeatTimeout))) {
		return nil, nil
	}
	var ids []string
	for _, h := range hosts {
		if h.State != store.HostOffline && !local[h.ID] && h.LastSeen.Before(cutoff) {
			ids = append(ids, h.ID)
		}
	}
	return ids, nil
}
