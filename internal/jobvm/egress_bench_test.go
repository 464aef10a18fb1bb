package jobvm_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/vm"
)

// BenchmarkEgress measures what a job sees of the internet under each
// egress policy, in the same run: a VM makes 100 TCP connections one
// after another to a server on the test's internet, then downloads 64 MiB
// from it. The server times both (the first to the last accept, and the
// transfer), so the guest's clock, slow under TCG, plays no part. The
// allowlist names the server (allowed.test); audit records every flow.
// Each policy goes first in turn; the figures are means over -benchtime.
//
//	go test -run '^$' -bench Egress -benchtime 1x ./internal/jobvm
func BenchmarkEgress(b *testing.B) {
	r := newIsoRig(b)
	const conns, bulk = 100, 64 << 20
	connLn := testenv.Internet(b).ListenOn(b, netip.AddrPortFrom(testenv.InternetAddr, 9001))
	bulkLn := testenv.Internet(b).ListenOn(b, netip.AddrPortFrom(testenv.InternetAddr, 9002))
	var mu sync.Mutex
	var accepts []time.Time
	go func() {
		for {
			c, err := connLn.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			accepts = append(accepts, time.Now())
			mu.Unlock()
			c.Close()
		}
	}()
	bulkTook := make(chan time.Duration, 1)
	go func() {
		payload := bytes.Repeat([]byte("x"), 1<<20)
		for {
			c, err := bulkLn.Accept()
			if err != nil {
				return
			}
			t0 := time.Now()
			io.Copy(io.Discard, io.LimitReader(c, 1)) // the request's first byte
			fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n", bulk)
			for range bulk / len(payload) {
				if _, err := c.Write(payload); err != nil {
					break
				}
			}
			c.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, c) // until the client closes: it has it all
			c.Close()
			bulkTook <- time.Since(t0)
		}
	}()
	allow, err := egress.Rule{Mode: "allowlist", Allow: []string{"allowed.test"}}.Compile()
	if err != nil {
		b.Fatal(err)
	}
	script := fmt.Sprintf(`i=0; while [ $i -lt %d ]; do nc -w 2 allowed.test 9001 </dev/null >/dev/null; i=$((i+1)); done
wget -q -O /dev/null http://allowed.test:9002/bulk`, conns)
	policies := []egress.Policy{{Mode: egress.Open}, {Mode: egress.Audit}, allow}
	connect, mibps := map[egress.Mode]float64{}, map[egress.Mode]float64{}
	for i := range b.N {
		for j := range policies {
			pol := policies[(i+j)%len(policies)] // each goes first in turn
			mu.Lock()
			accepts = nil
			mu.Unlock()
			var out bytes.Buffer
			res, err := r.h.Run(context.Background(), jobvm.Request{Arch: arch.AMD64, VCPUs: 1, MemoryMiB: 256, Accel: vm.AccelAuto,
				Owner: vm.ProcessOwner(), DieWithOwner: true, Egress: pol, Timeout: 5 * time.Minute,
				Argv: []string{"sh", "-c", script}, Stdout: &out, Stderr: &out})
			if err != nil || res.Failure != "" || res.ExitCode != 0 {
				b.Fatalf("%s: %v %+v %s", pol.Mode, err, res, out.String())
			}
			mu.Lock()
			n := len(accepts)
			per := accepts[n-1].Sub(accepts[0]) / time.Duration(n-1)
			mu.Unlock()
			if n != conns {
				b.Fatalf("%s: %d connections arrived, want %d", pol.Mode, n, conns)
			}
			took := <-bulkTook
			connect[pol.Mode] += float64(per.Microseconds()) / 1000
			mibps[pol.Mode] += float64(bulk>>20) / took.Seconds()
		}
	}
	for _, pol := range policies {
		b.ReportMetric(connect[pol.Mode]/float64(b.N), string(pol.Mode)+"-connect-ms")
		b.ReportMetric(mibps[pol.Mode]/float64(b.N), string(pol.Mode)+"-MiB/s")
	}
}
