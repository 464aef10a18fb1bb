package controlplane

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/store"
)

// Job resource profiles. Agents sample each running VM (internal/jobvm)
// and send the samples with their heartbeats; the control plane keeps them
// in memory for up to profileFlush and then writes each runner's batch in
// one transaction for all. When the VM ends, its samples become one
// profile (internal/profile: a summary and at most 600 chart points), kept
// with the job the runner ran.
//
// Samples come from agents, which are trusted only for their own host: a
// batch for another host's runner, for an ended runner, or beyond the
// bounds below is dropped (and counted).

// profileFlush is how often buffered samples are written.
const profileFlush = 2 * time.Second

// Bounds on what the control plane buffers: per runner (a minute at 1 Hz
// ten times over), and in all.
const (
	maxBufferedPerRunner = 600
	maxBufferedSamples   = 200_000
)

// profileIngest buffers the samples hosts send until the next flush.
type profileIngest struct {
	mu      sync.Mutex
	pending map[string]*hostSamples // guarded by mu: by runner
	total   int                     // guarded by mu: samples in pending
	dropped int64                   // guarded by mu: samples dropped for the bounds, ever
}

type hostSamples struct {
	host    string
	samples []profile.Sample
}

func newProfileIngest() *profileIngest {
	return &profileIngest{pending: map[string]*hostSamples{}}
}

// add buffers a host's batches, within the bounds.
func (p *profileIngest) add(host string, batch []agentapi.RunnerSamples) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, rs := range batch {
		if rs.Runner == "" || len(rs.Samples) == 0 {
			continue
		}
		hs := p.pending[rs.Runner]
		if hs == nil {
			hs = &hostSamples{host: host}
			p.pending[rs.Runner] = hs
		}
		if hs.host != host {
			p.dropped += int64(len(rs.Samples)) // two hosts claim one runner: keep the first's
			continue
		}
		room := max(maxBufferedSamples-p.total, 0)
		add := rs.Samples[max(len(rs.Samples)-min(room, maxBufferedPerRunner), 0):]
		p.dropped += int64(len(rs.Samples) - len(add))
		hs.samples = append(hs.samples, add...)
		p.total += len(add)
		if over := len(hs.samples) - maxBufferedPerRunner; over > 0 {
			hs.samples = hs.samples[over:]
			p.total -= over
			p.dropped += int64(over)
		}
	}
}

// take empties the buffer.
func (p *profileIngest) take() map[string]*hostSamples {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.pending
	p.pending, p.total = map[string]*hostSamples{}, 0
	return out
}

// takeRunner removes one runner's buffered samples.
func (p *profileIngest) takeRunner(runner string) *hostSamples {
	p.mu.Lock()
	defer p.mu.Unlock()
	hs := p.pending[runner]
	if hs != nil {
		delete(p.pending, runner)
		p.total -= len(hs.samples)
	}
	return hs
}

// HostSamples takes running VMs' resource samples from a host: a remote
// agent's report, or the local agent of `tandem up`.
func (s *Server) HostSamples(host string, batch []agentapi.RunnerSamples) {
	s.profiles.add(host, batch)
}

// profileLoop writes buffered samples every profileFlush.
func (s *Server) profileLoop(ctx context.Context) {
	s.periodically(ctx, profileFlush, "writing profile samples", s.flushProfiles)
}

// periodically runs fn every d until ctx ends, and logs its failures.
func (s *Server) periodically(ctx context.Context, d time.Duration, what string, fn func(context.Context) error) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := fn(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn(what, "err", err)
		}
	}
}

// flushProfiles writes what is buffered, in one transaction.
func (s *Server) flushProfiles(ctx context.Context) error {
	pending := s.profiles.take()
	if len(pending) == 0 {
		return nil
	}
	written := 0
	err := s.update(ctx, func(tx store.Tx, fx *afterCommit) error {
		written = 0
		now := s.now().UTC()
		for _, name := range slices.Sorted(maps.Keys(pending)) {
			hs := pending[name]
			r, err := tx.Runner(name)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			// Its own host's live runners only: an ended runner's profile
			// is made already.
			if r.HostID != hs.host || r.State == store.RunnerEnded {
				continue
			}
			if err := tx.AddProfileSamples(name, now, hs.samples); err != nil {
				return err
			}
			written += len(hs.samples)
		}
		return nil
	})
	if err == nil {
		s.metrics.profileSamples(written)
	}
	return err
}

// makeProfile turns an ended runner's samples (and those still buffered,
// taken out before the transaction) into its profile.
func makeProfile(tx store.Tx, r store.Runner, buffered *hostSamples, now time.Time) error {
	samples, err := tx.ProfileSamples(r.Name)
	if err != nil {
		return err
	}
	if buffered != nil && buffered.host == r.HostID {
		samples = append(samples, buffered.samples...)
	}
	if len(samples) == 0 {
		return nil
	}
	return tx.PutProfile(store.Profile{Runner: r.Name, JobID: r.JobID, EndedAt: now,
		Profile: profile.Build(samples, r.VCPUs, int64(r.MemoryMiB)<<20, 0)})
}

// ProfileView is a job's resource profile as the API shows it.
type ProfileView struct {
	Job    int64  `json:"job"`
	Runner string `json:"runner"`
	// Live: the VM still runs; the profile is made from what it has sent
	// so far.
	Live      bool    `json:"live"`
	VCPUs     float64 `json:"vcpus"`
	MemoryMiB int     `json:"memory_mib"`
	profile.Profile
}

// errNoProfile: the job's runner sent no samples (it has not run, or ran
// where profiles are not taken).
var errNoProfile = errors.New("no profile")

// jobProfile returns job id's profile, store.ErrNotFound if p may not see
// the job, errNoProfile if there is none.
func (a *api) jobProfile(ctx context.Context, p principal, id int64) (ProfileView, error) {
	var v ProfileView
	err := a.st.View(ctx, func(tx store.ReadTx) error {
		j, err := tx.Job(id)
		if err != nil {
			return err
		}
		if !p.sees(j.Org) {
			return store.ErrNotFound
		}
		v = ProfileView{Job: j.ID, Runner: j.RunnerName, VCPUs: j.VCPUs, MemoryMiB: j.MemoryMiB}
		if j.RunnerName == "" {
			return errNoProfile
		}
		stored, err := tx.Profile(j.RunnerName)
		if err == nil {
			v.Profile = stored.Profile
			return nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		samples, err := tx.ProfileSamples(j.RunnerName)
		if err != nil {
			return err
		}
		if len(samples) == 0 {
			return errNoProfile
		}
		r, err := tx.Runner(j.RunnerName)
		if err == nil {
			v.VCPUs, v.MemoryMiB = r.VCPUs, r.MemoryMiB
		}
		v.Live = true
		v.Profile = profile.Build(samples, v.VCPUs, int64(v.MemoryMiB)<<20, 0)
		return nil
	})
	return v, err
}

// handleJobProfile serves GET /api/v1/jobs/{id}/profile.
func (a *api) handleJobProfile(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		httpError(w, http.StatusBadRequest, "job id: want a positive integer")
		return
	}
	v, err := a.jobProfile(r.Context(), who(r), id)
	if errors.Is(err, errNoProfile) {
		httpError(w, http.StatusNotFound, "no profile for this job: its VM sent no samples (it has not run on a Tandem VM yet)")
		return
	}
	if storeFailed(w, err, "no such job") {
		return
	}
	writeJSON(w, http.StatusOK, v)
}
