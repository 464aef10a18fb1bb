package hostnet

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/egress"
)

// BenchmarkAttachDetach200 times one VM's Attach and Detach (its TAP, its
// lease, its rules, each applied as one nft transaction) on a network that
// already holds 200 VMs' leases and rules, each with an allowlist policy,
// and reports the p50 and p99 of each.
//
//	go test -run '^$' -bench AttachDetach200 -benchtime 200x ./internal/hostnet
func BenchmarkAttachDetach200(b *testing.B) {
	n := ensured(b, func(c *Config) {
		c.Subnet = mustPrefix("172.30.0.0/23")
		c.HostPorts = []HostPort{{"tcp", 5000}, {"udp", 53}, {"tcp", 53}}
	})
	ctx := context.Background()
	pol, err := egress.Rule{Mode: "allowlist", Allow: []string{"proxy.golang.org", "*.docker.io", "10.9.0.0/16:443"}}.Compile()
	if err != nil {
		b.Fatal(err)
	}
	for i := range 200 {
		id := fmt.Sprintf("vm-%010x", 0xb000000000+i)
		if _, err := n.Attach(ctx, id, pol); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { n.Detach(context.Background(), id) })
	}
	var attach, detach []time.Duration
	b.ResetTimer()
	for i := range b.N {
		id := fmt.Sprintf("vm-%010x", 0xc000000000+i)
		t0 := time.Now()
		if _, err := n.Attach(ctx, id, pol); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := n.Detach(ctx, id); err != nil {
			b.Fatal(err)
		}
		attach, detach = append(attach, t1.Sub(t0)), append(detach, time.Since(t1))
	}
	b.StopTimer()
	for name, d := range map[string][]time.Duration{"attach": attach, "detach": detach} {
		slices.Sort(d)
		b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, name+"-p50-ms")
		b.ReportMetric(float64(d[len(d)*99/100].Microseconds())/1000, name+"-p99-ms")
	}
}
