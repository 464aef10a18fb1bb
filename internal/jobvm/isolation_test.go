package jobvm_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/testenv"
	"github.com/tandem-ci/tandem/internal/testenv/testhost"
	"github.com/tandem-ci/tandem/internal/testenv/testimages"
	"github.com/tandem-ci/tandem/internal/vm"
	"github.com/tandem-ci/tandem/internal/vm/qemu"
)

// The isolation conformance suite on real VMs: what a job's VM may reach
// on an agent's network (jobvm.Host.SetUpNetwork, as `tandem agent` and
// `tandem up` set it up), and everything it may not. Every server counts
// who reached it: a probe the guest reports as blocked must also have left
// the server untouched. (internal/hostnet's suite checks the same rules,
// and the layer-2 ones — spoofed ARP, MAC and source — on stand-in VMs.)

const (
	isoMirrorPort = 5000
	isoHostPort   = 18080 // a host service on 0.0.0.0
	isoLANPort    = 8080
	isoVMPort     = 8000
	isoWebPort    = 8088 // on the internet
)

var (
	isoSubnet  = netip.MustParsePrefix("172.30.40.0/24")
	isoGateway = netip.MustParseAddr("172.30.40.1")
	isoLANHost = netip.MustParsePrefix("10.66.0.1/24") // the host's own LAN address
	isoLANPeer = netip.MustParsePrefix("10.66.0.2/24")
	isoMeta    = netip.MustParseAddr("169.254.169.254")
)

// hits counts the connections a listener accepted, by source address.
type hits struct {
	mu   sync.Mutex
	from []string
}

func (h *hits) add(a string) { h.mu.Lock(); h.from = append(h.from, a); h.mu.Unlock() }

func (h *hits) list() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.from...)
}

// count serves ln: each connection is told its source address, counted,
// and closed.
func count(ln net.Listener) *hits {
	h := &hits{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			src := c.RemoteAddr().(*net.TCPAddr).IP.String()
			h.add(src)
			fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s\n", len(src)+1, src)
			c.Close()
		}
	}()
	return h
}

// isoRig is an agent's host with its isolated network, the test's
// internet (with a DNS server that knows allowed.test and blocked.test)
// and a LAN peer that routes the VM subnet through the host.
type isoRig struct {
	h                 *jobvm.Host
	host, mirror, lan *hits
	web, web2         *hits   // 198.51.100.2 and .3
	directDNS         []*hits // TCP 53 and 853 on the internet
	dnsQueries        *hits
	lanPeer           *testenv.Peer
}

func newIsoRig(t testing.TB) *isoRig {
	t.Helper()
	testenv.RequireVM(t)
	ctx := context.Background()
	inet := testenv.Internet(t)
	r := &isoRig{dnsQueries: &hits{}}
	// The internet's DNS: the forwarder's upstream.
	pc := inet.ListenPacket(t, netip.AddrPortFrom(testenv.InternetAddr, 53))
	zone := map[string]netip.Addr{"allowed.test.": testenv.InternetAddr, "blocked.test.": testenv.InternetAddr2}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if len(q.Question) == 1 {
			r.dnsQueries.add(q.Question[0].Name)
			if a, ok := zone[q.Question[0].Name]; ok && q.Question[0].Qtype == dns.TypeA {
				rr, _ := dns.NewRR(fmt.Sprintf("%s 60 IN A %s", q.Question[0].Name, a))
				m.Answer = append(m.Answer, rr)
			} else if !ok {
				m.Rcode = dns.RcodeNameError
			}
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	r.web = count(inet.ListenOn(t, netip.AddrPortFrom(testenv.InternetAddr, isoWebPort)))
	r.web2 = count(inet.ListenOn(t, netip.AddrPortFrom(testenv.InternetAddr2, isoWebPort)))
	for _, port := range []uint16{53, 853} {
		r.directDNS = append(r.directDNS, count(inet.ListenOn(t, netip.AddrPortFrom(testenv.InternetAddr, port))))
	}

	// The LAN: the host's own address and a metadata address on its end,
	// a peer that routes the VM subnet back through the host.
	r.lanPeer = testenv.NewPeer(t, "tdmlan", isoLANHost, isoLANPeer)
	hostEnd, err := netlink.LinkByName("tdmlan0")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(hostEnd, &netlink.Addr{IPNet: &net.IPNet{IP: isoMeta.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := r.lanPeer.Do(func() error {
		_, dst, _ := net.ParseCIDR(isoSubnet.String())
		l, err := netlink.LinkByName("tdmlan1")
		if err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Gw: isoLANHost.Addr().AsSlice()})
	}); err != nil {
		t.Fatal(err)
	}
	r.lan = count(r.lanPeer.Listen(t, isoLANPort))

	// The host: QEMU, the test images, the network as an agent has it.
	state := testenv.ShortTempDir(t)
	drv, err := qemu.New(qemu.Config{StateDir: state, Limits: vm.Limits{VCPUs: 2, MemoryMiB: 4096}})
	if err != nil {
		t.Fatal(err)
	}
	r.h = &jobvm.Host{Driver: drv, Images: testimages.Store(t), Log: slog.Default(), StateDir: state}
	stop, err := r.h.SetUpNetwork(ctx, jobvm.Network{Bridge: "tdmiso0", Subnet: isoSubnet, StateDir: filepath.Join(state, "net"),
		Own: true, MirrorPort: isoMirrorPort, DNSUpstreams: []string{netip.AddrPortFrom(testenv.InternetAddr, 53).String()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stop()
		testhost.AssertEmpty(t, r.h)
		if err := r.h.Net.RemoveRules(context.Background()); err != nil {
			t.Errorf("remove rules: %v", err)
		}
		if l, err := netlink.LinkByName("tdmiso0"); err == nil {
			netlink.LinkDel(l)
		}
	})
	hostLn, err := net.Listen("tcp", fmt.Sprintf("0.0.0.0:%d", isoHostPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hostLn.Close() })
	r.host = count(hostLn)
	mirrorLn, err := net.Listen("tcp", netip.AddrPortFrom(isoGateway, isoMirrorPort).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mirrorLn.Close() })
	r.mirror = count(mirrorLn)
	return r
}

// probeScript defines p NAME ADDR PORT, which prints "NAME reached" or
// "NAME blocked" for a TCP connection, with busybox's nc (the test image)
// or bash (the runner image).
const probeScript = `
p() {
  if command -v nc >/dev/null; then nc -w 2 "$2" "$3" </dev/null >/dev/null 2>&1
  else timeout 3 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null; fi
  if [ $? = 0 ]; then echo "$1 reached"; else echo "$1 blocked"; fi
}
r() { # NAME: resolve through the VM's resolver
  if command -v nslookup >/dev/null; then nslookup "$1" >/dev/null 2>&1; else getent hosts "$1" >/dev/null; fi
  if [ $? = 0 ]; then echo "resolve $1 reached"; else echo "resolve $1 blocked"; fi
}
`

// runProbes runs script in a VM of image with policy pol and returns what
// each probe printed, by name.
func (r *isoRig) runProbes(t *testing.T, image string, pol egress.Policy, script string) (map[string]string, jobvm.Result) {
	t.Helper()
	var out, errOut bytes.Buffer
	req := jobvm.Request{Arch: arch.AMD64, VCPUs: 1, MemoryMiB: 512, Image: image, Accel: vm.AccelAuto,
		Owner: vm.ProcessOwner(), DieWithOwner: true, Egress: pol, Timeout: 4 * time.Minute,
		Argv: []string{"sh", "-c", probeScript + script}, Stdout: &out, Stderr: &errOut}
	res, err := r.h.Run(context.Background(), req)
	if err != nil || res.Failure != "" {
		t.Fatalf("%s VM: %v %+v\n%s", image, err, res, errOut.String())
	}
	got := map[string]string{}
	for _, line := range strings.Split(out.String(), "\n") {
		if i := strings.LastIndex(line, " "); i > 0 {
			got[line[:i]] = line[i+1:]
		}
	}
	t.Logf("%s VM (%s): %s", image, pol.Mode, strings.ReplaceAll(strings.TrimSpace(out.String()), "\n", "; "))
	return got, res
}

func expect(t *testing.T, got map[string]string, name, want string) {
	t.Helper()
	if got[name] != want {
		t.Errorf("%s: %q, want %s", name, got[name], want)
	}
}

func TestIsolationInVMs(t *testing.T) {
	r := newIsoRig(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// VM B serves on a port; the host (a positive control) reaches it.
	bDone := make(chan jobvm.Result, 1)
	bReady := make(chan struct{})
	go func() {
		res, _ := r.h.Run(ctx, jobvm.Request{Arch: arch.AMD64, VCPUs: 1, MemoryMiB: 256, Accel: vm.AccelAuto,
			Owner: vm.ProcessOwner(), DieWithOwner: true,
			Argv:    []string{"sh", "-c", fmt.Sprintf("while :; do echo b | nc -l -p %d; done", isoVMPort)},
			OnReady: func(vm.Instance) { close(bReady) }})
		bDone <- res
	}()
	select {
	case <-bReady:
	case <-time.After(3 * time.Minute):
		t.Fatal("VM B did not boot")
	}
	leases, err := r.h.Net.Leases()
	if err != nil || len(leases) != 1 {
		t.Fatalf("leases %v, %v", leases, err)
	}
	bAddr := netip.AddrPortFrom(leases[0].Addr, isoVMPort).String()
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := net.DialTimeout("tcp", bAddr, 2*time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the host cannot reach VM B's server at %s: %v", bAddr, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The LAN may not reach B, though it routes the subnet through the host.
	if err := r.lanPeer.Do(func() error {
		c, err := net.DialTimeout("tcp", bAddr, 3*time.Second)
		if err == nil {
			c.Close()
			return fmt.Errorf("the LAN reached VM B at %s", bAddr)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	probes := fmt.Sprintf(`
p mirror %[1]s %[2]d
p internet %[3]s %[4]d
r allowed.test
p gateway %[1]s %[5]d
p lan-host %[6]s %[5]d
p metadata %[7]s %[5]d
p lan-peer %[8]s %[9]d
p vm-b %[10]s %[11]d
p direct-dns %[3]s 53
p direct-dot %[3]s 853
`, isoGateway, isoMirrorPort, testenv.InternetAddr, isoWebPort, isoHostPort, isoLANHost.Addr(), isoMeta,
		isoLANPeer.Addr(), isoLANPort, leases[0].Addr, isoVMPort)
	for _, image := range []string{"test-amd64", "runner-amd64"} {
		if image == "runner-amd64" {
			if _, err := r.h.Images.Resolve(image); err != nil {
				t.Logf("no %s image here: the suite ran against the test image only (%v)", image, err)
				continue
			}
		}
		got, _ := r.runProbes(t, image, egress.Policy{Mode: egress.Open}, probes)
		for _, n := range []string{"mirror", "internet", "resolve allowed.test"} {
			expect(t, got, n, "reached")
		}
		for _, n := range []string{"gateway", "lan-host", "metadata", "lan-peer", "vm-b", "direct-dns", "direct-dot"} {
			expect(t, got, n, "blocked")
		}
	}
	// The servers' side: the internet saw the host's NAT address, the
	// mirror the VM's own; nothing else was reached.
	for _, from := range r.web.list() {
		if from != testenv.InternetGateway.String() {
			t.Errorf("the internet saw a connection from %s, want only the host's NAT address", from)
		}
	}
	for _, from := range r.mirror.list() {
		if !isoSubnet.Contains(netip.MustParseAddr(from)) {
			t.Errorf("the mirror saw %s, want a VM's address", from)
		}
	}
	if len(r.web.list()) == 0 || len(r.mirror.list()) == 0 {
		t.Errorf("internet hits %v, mirror hits %v: the allowed probes did not arrive", r.web.list(), r.mirror.list())
	}
	h := append(r.host.list(), r.lan.list()...)
	for _, d := range r.directDNS {
		h = append(h, d.list()...)
	}
	if len(h) > 0 {
		t.Errorf("blocked servers were reached from %v", h)
	}
	cancel()
	<-bDone
}

func TestEgressPoliciesInVMs(t *testing.T) {
	r := newIsoRig(t)
	base := false
	allow, err := egress.Rule{Mode: "allowlist", Allow: []string{"allowed.test"}, Base: &base}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`
r allowed.test
r blocked.test
p allowed allowed.test %[1]d
p bare-ip %[2]s %[1]d
`, isoWebPort, testenv.InternetAddr2)

	got, res := r.runProbes(t, "test-amd64", allow, script)
	expect(t, got, "resolve allowed.test", "reached")
	expect(t, got, "resolve blocked.test", "blocked")
	expect(t, got, "allowed", "reached")
	expect(t, got, "bare-ip", "blocked")
	if n := len(r.web2.list()); n != 0 {
		t.Errorf("an allowlist VM reached an address no allowed name gave (%d connections)", n)
	}
	if res.Egress == nil || res.Egress.Mode != egress.Allowlist {
		t.Fatalf("allowlist run recorded %+v", res.Egress)
	}
	checkFlow(t, res.Egress, testenv.InternetAddr, "allowed.test", true)
	checkFlow(t, res.Egress, testenv.InternetAddr2, "", false)
	if res.Egress.Refused["blocked.test"] == 0 {
		t.Errorf("refused names %v lack blocked.test", res.Egress.Refused)
	}

	got, res = r.runProbes(t, "test-amd64", egress.Policy{Mode: egress.Audit}, script)
	for _, n := range []string{"resolve allowed.test", "resolve blocked.test", "allowed", "bare-ip"} {
		expect(t, got, n, "reached")
	}
	if res.Egress == nil || res.Egress.Mode != egress.Audit {
		t.Fatalf("audit run recorded %+v", res.Egress)
	}
	checkFlow(t, res.Egress, testenv.InternetAddr, "allowed.test", true)
	checkFlow(t, res.Egress, testenv.InternetAddr2, "", true)
}

// checkFlow fails t unless rec has a TCP flow to addr:isoWebPort with
// that name (if not "") and verdict.
func checkFlow(t *testing.T, rec *egress.Record, addr netip.Addr, name string, allowed bool) {
	t.Helper()
	for _, f := range rec.Flows {
		if f.Addr == addr && f.Port == isoWebPort && f.Proto == "tcp" {
			if f.Allowed != allowed || name != "" && f.Name != name || f.Count < 1 {
				t.Errorf("flow %+v, want name %q allowed %v", f, name, allowed)
			}
			return
		}
	}
	t.Errorf("no flow to %s:%d in %+v", addr, isoWebPort, rec.Flows)
}
