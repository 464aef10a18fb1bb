package jobvm

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
	"github.com/tandem-ci/tandem/internal/profile"
	"github.com/tandem-ci/tandem/internal/vm"
)

// selfUsage is an Instance whose Usage reads the files QEMU's does, for
// this process: the same work as sampling a VM.
type selfUsage struct{ vm.Instance }

func (selfUsage) Usage() (vm.Usage, error) {
	var u vm.Usage
	for _, f := range []string{"/proc/self/stat", "/proc/self/status", "/proc/self/io"} {
		b, err := os.ReadFile(f)
		if err != nil {
			return u, err
		}
		if strings.HasSuffix(f, "stat") {
			u.CPUSeconds = float64(len(b))
		}
	}
	var st os.FileInfo
	st, _ = os.Stat("/proc/self/exe")
	if st != nil {
		u.DiskAlloc = st.Size()
	}
	return u, nil
}

// BenchmarkSampler is the agent's cost of one sample of one VM: the host's
// files, a TAP's counters, the guest's stats decoded. At 1 Hz, a core's
// share per 10 VMs is 10 × ns/op / 1e9.
//
//	go test -run '^$' -bench Sampler ./internal/jobvm
func BenchmarkSampler(b *testing.B) {
	payload, _ := json.Marshal(guest.Stats{CPUSeconds: 123.4, Load1: 2, MemTotal: 8 << 30, MemAvailable: 5 << 30,
		DiskTotal: 20 << 30, DiskUsed: 6 << 30, Procs: 180})
	n := 0
	s := &sampler{inst: selfUsage{}, tap: "lo", every: time.Second, emit: func(profile.Sample) { n++ }}
	t0 := time.Now()
	b.ResetTimer()
	for i := range b.N {
		now := t0.Add(time.Duration(i) * time.Second)
		s.heartbeat(now, payload)
		s.take(now)
	}
	b.StopTimer()
	if n != b.N {
		b.Fatalf("%d samples of %d", n, b.N)
	}
	per := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(100*10*per/1e9, "%core/10VMs@1Hz")
}
