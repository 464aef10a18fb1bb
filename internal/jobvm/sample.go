package jobvm

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/vm"
)

// DefaultSampleEvery is how often a running job's VM is sampled when
// Request.SampleEvery is zero.
const DefaultSampleEvery = time.Second

// sampler reads a running VM's profile samples (internal/profile): the
// host's side from the driver (vm.UsageReader) and the VM's TAP device,
// every `every` on the host's own clock, so that a guest too busy to send
// its heartbeats is still sampled; the guest's side from the stats its
// last heartbeat carried, while they are fresh.
type sampler struct {
	inst  vm.Instance
	tap   string // "" when the VM has no NIC
	every time.Duration
	emit  func(profile.Sample)

	stats   guest.Stats // the guest's, from its last heartbeat
	statsAt time.Time   // zero: none yet
}

// staleStats is how old the guest's stats may be and still go into a
// sample: a guest that cannot send them for that long is not reporting.
const staleStats = 3 * time.Second

// heartbeat keeps the stats a heartbeat carries (guest.Stats; empty from
// an older guest).
func (s *sampler) heartbeat(now time.Time, payload []byte) {
	if s == nil || len(payload) == 0 {
		return
	}
	var st guest.Stats
	if guest.Decode(guest.FrameHeartbeat, payload, &st) == nil {
		s.stats, s.statsAt = st, now
	}
}

// take emits a sample of now.
func (s *sampler) take(now time.Time) {
	smp := profile.Sample{At: now}
	if ur, ok := s.inst.(vm.UsageReader); ok {
		// A partial reading is still a reading: what could not be read
		// stays zero.
		u, _ := ur.Usage()
		smp.CPUSeconds, smp.RSS, smp.DiskAlloc, smp.DiskRead, smp.DiskWrite = u.CPUSeconds, u.RSS, u.DiskAlloc, u.DiskRead, u.DiskWrite
	}
	if s.tap != "" {
		// The TAP's transmit is what the guest receives, and the reverse.
		smp.NetRx = netCounter(s.tap, "tx_bytes")
		smp.NetTx = netCounter(s.tap, "rx_bytes")
	}
	if !s.statsAt.IsZero() && now.Sub(s.statsAt) <= staleStats {
		st := s.stats
		smp.GuestOK = true
		smp.GuestCPUSeconds, smp.GuestCPUTotal, smp.GuestAt = st.CPUSeconds, st.CPUTotalSeconds, s.statsAt
		smp.Load1, smp.MemTotal, smp.MemAvailable, smp.OOMKills = st.Load1, st.MemTotal, st.MemAvailable, st.OOMKills
		smp.DiskUsed, smp.DiskTotal, smp.Procs = st.DiskUsed, st.DiskTotal, st.Procs
	}
	s.emit(smp)
}

// netCounter reads one of a network device's statistics; 0 when it cannot.
func netCounter(dev, name string) int64 {
	b, err := os.ReadFile(filepath.Join("/sys/class/net", dev, "statistics", name))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// profile sets the session up to sample its VM, if its request asks.
func (s *session) profile() {
	if s.r.OnSample == nil {
		return
	}
	every := s.r.SampleEvery
	if every <= 0 {
		every = DefaultSampleEvery
	}
	s.sample = &sampler{inst: s.inst, every: every, emit: s.r.OnSample}
	if nic := s.inst.Info().Spec.NIC; nic != nil {
		s.sample.tap = nic.TAP
	}
}
