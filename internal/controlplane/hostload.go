package controlplane

import (
	"context"
	"net/http"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/store"
)

// Host load history: once a minute the control plane records each host's
// capacity, what its VMs are allocated, its VMs, and what its agent's last
// heartbeat said of the machine (load, memory available, how long ago),
// and keeps a day of it and a little more (hostLoadKeep).

const (
	defaultHostLoadEvery = time.Minute
	hostLoadKeep         = 26 * time.Hour
)

// HostHeartbeat records a heartbeat of a host whose agent runs in this
// process (`tandem up`): its load and memory, as a remote agent's report
// carries them. Remote hosts' heartbeats come through their reports.
func (s *Server) HostHeartbeat(id string, hb agentapi.Heartbeat) {
	s.links.heard(id, hb, s.now())
}

// hostLoadLoop records the hosts' load every cfg.HostLoadEvery.
func (s *Server) hostLoadLoop(ctx context.Context) {
	if s.cfg.HostLoadEvery > 0 {
		s.periodically(ctx, s.cfg.HostLoadEvery, "recording host load", s.recordHostLoad)
	}
}

// recordHostLoad records every host's load now, and forgets what is older
// than hostLoadKeep.
func (s *Server) recordHostLoad(ctx context.Context) error {
	now := s.now().UTC()
	return s.update(ctx, func(tx store.Tx, fx *afterCommit) error {
		hosts, err := tx.Hosts()
		if err != nil {
			return err
		}
		live, err := tx.Runners(store.RunnerFilter{Live: true})
		if err != nil {
			return err
		}
		loads := make([]store.HostLoad, 0, len(hosts))
		leading := s.leading()
		for _, h := range hosts {
			// Each replica records the hosts it holds (it has their
			// heartbeats); the leader also those no replica holds.
			if h.Replica != s.cfg.Replica && !(leading && (h.Replica == "" || h.State == store.HostOffline)) {
				continue
			}
			l := store.HostLoad{Host: h.ID, At: now, State: h.State, VCPUs: h.VCPUs, MemoryMiB: h.MemoryMiB}
			if s.place.diskPerVCPU > 0 {
				l.DiskMiB = int64(h.DiskMiB)
			}
			for _, r := range live {
				if r.HostID == h.ID {
					l.VMs++
					l.AllocVCPUs += r.VCPUs
					l.AllocMemoryMiB += r.MemoryMiB
					l.AllocDiskMiB += int64(s.place.diskFor(r.VCPUs))
				}
			}
			seen, hb, beat := s.links.seen(h.ID)
			if beat {
				l.Load1, l.MemAvailableMiB = hb.Load1, hb.MemAvailableMiB
			}
			if !seen.IsZero() {
				l.HeartbeatAge = max(now.Sub(seen).Seconds(), 0)
			}
			loads = append(loads, l)
		}
		if err := tx.AddHostLoad(loads); err != nil {
			return err
		}
		_, err = tx.PruneHostLoad(now.Add(-hostLoadKeep))
		return err
	})
}

// handleHostLoad serves GET /api/v1/hosts/{id}/load?hours=24.
func (a *api) handleHostLoad(w http.ResponseWriter, r *http.Request) {
	hours, err := intParam(r.URL.Query().Get("hours"), 24, 1, 26)
	if err != nil {
		httpError(w, http.StatusBadRequest, "hours: "+err.Error())
		return
	}
	id := r.PathValue("id")
	loads, err := a.hostLoad(r.Context(), id, a.now().Add(-time.Duration(hours)*time.Hour))
	if storeFailed(w, err, "no such host") {
		return
	}
	if loads == nil {
		loads = []store.HostLoad{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"host": id, "hours": hours, "load": loads})
}

// hostLoad returns host id's load records since, oldest first
// (store.ErrNotFound for no such host).
func (a *api) hostLoad(ctx context.Context, id string, since time.Time) ([]store.HostLoad, error) {
	var loads []store.HostLoad
	err := a.st.View(ctx, func(tx store.ReadTx) error {
		if _, err := tx.Host(id); err != nil {
			return err
		}
		var err error
		loads, err = tx.HostLoad(id, since)
		return err
	})
	return loads, err
}
