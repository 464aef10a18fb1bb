package jobvm_test

import (
	"context"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/profile"
)

// BenchmarkProfileOverhead runs a CPU-bound job with and without the
// host's sampling, in turn, and reports the ratio of their run times
// (job sent to exit reported). The guest sends its stats with every
// heartbeat either way; what sampling adds is the host's side, read at
// each heartbeat.
//
//	go test -run '^$' -bench ProfileOverhead -benchtime 4x ./internal/jobvm
func BenchmarkProfileOverhead(b *testing.B) {
	h := newHost(b)
	run := func(sampled bool) time.Duration {
		r := req()
		r.Argv = []string{"sh", "-c", `i=0; while [ $i -lt 150000 ]; do i=$((i+1)); done`}
		n := 0
		if sampled {
			r.OnSample = func(profile.Sample) { n++ }
		}
		res, err := h.Run(context.Background(), r)
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("run: %+v, %v", res, err)
		}
		if sampled && n == 0 {
			b.Fatal("no samples")
		}
		return time.Duration(res.Timings.Run) * time.Millisecond
	}
	var with, without time.Duration
	for i := range b.N {
		if i%2 == 0 {
			without += run(false)
			with += run(true)
		} else {
			with += run(true)
			without += run(false)
		}
	}
	b.ReportMetric(without.Seconds()/float64(b.N), "s-unsampled")
	b.ReportMetric(with.Seconds()/float64(b.N), "s-sampled")
	b.ReportMetric(with.Seconds()/without.Seconds(), "ratio")
}
