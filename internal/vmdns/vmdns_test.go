package vmdns

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tandem-ci/tandem/internal/egress"
)

// upstream is a resolver on loopback with fixed answers.
type upstream struct {
	addr    string
	queries chan string
	hold    chan struct{} // when not nil, answers wait for it
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{queries: make(chan string, 100)}
	zone := map[string][]string{
		"allowed.example.":     {"allowed.example. 120 IN A 198.51.100.7", "allowed.example. 120 IN A 198.51.100.9"},
		"short.example.":       {"short.example. 5 IN A 198.51.100.10"},
		"www.allowed.example.": {"www.allowed.example. 600 IN CNAME edge.cdn.example.", "edge.cdn.example. 60 IN A 203.0.113.4"},
		"other.example.":       {"other.example. 300 IN A 203.0.113.9"},
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		u.queries <- q.Question[0].Name
		if u.hold != nil {
			<-u.hold
		}
		r := new(dns.Msg)
		r.SetReply(q)
		recs, ok := zone[strings.ToLower(q.Question[0].Name)]
		if !ok {
			r.Rcode = dns.RcodeNameError
		}
		if q.Question[0].Qtype == dns.TypeA {
			for _, s := range recs {
				rr, err := dns.NewRR(s)
				if err != nil {
					panic(err)
				}
				r.Answer = append(r.Answer, rr)
			}
		}
		w.WriteMsg(r)
	})
	// UDP and TCP on one port, as the forwarder binds them (the port UDP
	// got may be taken for TCP: listen tries again).
	pc, ln, err := listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	us, ts := &dns.Server{PacketConn: pc, Handler: h}, &dns.Server{Listener: ln, Handler: h}
	go us.ActivateAndServe()
	go ts.ActivateAndServe()
	t.Cleanup(func() { us.Shutdown(); ts.Shutdown() })
	u.addr = pc.LocalAddr().String()
	return u
}

type pin struct {
	vm    string
	addrs []netip.Addr
	ttl   time.Duration
}

// rig is a forwarder whose "VM" is 127.0.0.1 (vm-00000000a1) with policy
// pol; 127.0.0.2 holds no lease.
type rig struct {
	s    *Server
	up   *upstream
	mu   sync.Mutex
	pins []pin
	err  error // Pin's answer
}

func newRig(t *testing.T, pol egress.Policy, upstreams ...string) *rig {
	t.Helper()
	r := &rig{up: startUpstream(t)}
	if len(upstreams) == 0 {
		upstreams = []string{r.up.addr}
	}
	s, err := Start(Config{
		Listen:    "127.0.0.1:0",
		Upstreams: upstreams,
		Timeout:   time.Second,
		Lookup: func(a netip.Addr) (string, egress.Policy, bool) {
			if a == netip.MustParseAddr("127.0.0.1") {
				return "vm-00000000a1", pol, true
			}
			return "", egress.Policy{}, false
		},
		Pin: func(_ context.Context, vm string, addrs []netip.Addr, ttl time.Duration) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.pins = append(r.pins, pin{vm, addrs, ttl})
			return r.err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	r.s = s
	return r
}

// ask sends a query from src over network and returns the answer.
func (r *rig) ask(t *testing.T, network, src, name string) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 3 * time.Second}
	if network == "udp" {
		c.Dialer = &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(src)}}
	} else {
		c.Dialer = &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	}
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	resp, _, err := c.Exchange(q, r.s.Addr())
	if err != nil {
		t.Fatalf("query %s over %s: %v", name, network, err)
	}
	return resp
}

func aRecords(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

func TestForwardsAndRemembers(t *testing.T) {
	r := newRig(t, egress.Policy{Mode: egress.Audit})
	for _, network := range []string{"udp", "tcp"} {
		m := r.ask(t, network, "127.0.0.1", "Allowed.Example")
		if m.Rcode != dns.RcodeSuccess || strings.Join(aRecords(m), " ") != "198.51.100.7 198.51.100.9" {
			t.Errorf("%s: %v", network, m)
		}
	}
	if m := r.ask(t, "udp", "127.0.0.1", "nowhere.example"); m.Rcode != dns.RcodeNameError {
		t.Errorf("a name upstream does not know: %v", dns.RcodeToString[m.Rcode])
	}
	r.mu.Lock()
	if len(r.pins) != 0 {
		t.Errorf("audit mode pinned %v", r.pins)
	}
	r.mu.Unlock()
	names := r.s.Names("vm-00000000a1")
	if names[netip.MustParseAddr("198.51.100.7")] != "allowed.example" || len(names) != 2 {
		t.Errorf("names %v", names)
	}
	r.s.Forget("vm-00000000a1")
	if len(r.s.Names("vm-00000000a1")) != 0 {
		t.Error("Forget kept names")
	}
	// An open policy records nothing, so nothing is remembered.
	open := newRig(t, egress.Policy{Mode: egress.Open})
	if m := open.ask(t, "udp", "127.0.0.1", "allowed.example"); len(aRecords(m)) != 2 {
		t.Errorf("open: %v", m)
	}
	if n := open.s.Names("vm-00000000a1"); len(n) != 0 {
		t.Errorf("open mode remembered %v", n)
	}
}

func TestRefusesStrangers(t *testing.T) {
	r := newRig(t, egress.Policy{Mode: egress.Open})
	if m := r.ask(t, "udp", "127.0.0.2", "allowed.example"); m.Rcode != dns.RcodeRefused {
		t.Errorf("a query from no VM: %s", dns.RcodeToString[m.Rcode])
	}
	select {
	case q := <-r.up.queries:
		t.Errorf("a stranger's query reached the upstream: %s", q)
	default:
	}
}

func TestAllowlist(t *testing.T) {
	pol, err := egress.Rule{Mode: "allowlist", Allow: []string{"allowed.example", "*.allowed.example", "short.example"}, Base: new(bool)}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, pol)
	m := r.ask(t, "udp", "127.0.0.1", "allowed.example")
	if m.Rcode != dns.RcodeSuccess || len(aRecords(m)) != 2 {
		t.Fatalf("allowed name: %v", m)
	}
	m = r.ask(t, "tcp", "127.0.0.1", "www.allowed.example") // a CNAME to a name not on the list
	if len(aRecords(m)) != 1 || aRecords(m)[0] != "203.0.113.4" {
		t.Fatalf("CNAME chain: %v", m)
	}
	r.ask(t, "udp", "127.0.0.1", "short.example")
	r.mu.Lock()
	pins := append([]pin(nil), r.pins...)
	r.mu.Unlock()
	want := []pin{
		{"vm-00000000a1", []netip.Addr{netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("198.51.100.9")}, 120 * time.Second},
		{"vm-00000000a1", []netip.Addr{netip.MustParseAddr("203.0.113.4")}, 60 * time.Second}, // the chain's smallest TTL
		{"vm-00000000a1", []netip.Addr{netip.MustParseAddr("198.51.100.10")}, MinPin},
	}
	if len(pins) != len(want) {
		t.Fatalf("pins %v, want %v", pins, want)
	}
	for i := range want {
		if pins[i].vm != want[i].vm || pins[i].ttl != want[i].ttl || len(pins[i].addrs) != len(want[i].addrs) || pins[i].addrs[0] != want[i].addrs[0] {
			t.Errorf("pin %d: %v, want %v", i, pins[i], want[i])
		}
	}

	// Not on the list: NXDOMAIN saying why, and upstream never asked.
	for len(r.up.queries) > 0 {
		<-r.up.queries
	}
	m = r.ask(t, "udp", "127.0.0.1", "other.example")
	if m.Rcode != dns.RcodeNameError || len(m.Answer) != 0 {
		t.Errorf("a name not on the list: %v", m)
	}
	var ede *dns.EDNS0_EDE
	if opt := m.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if e, ok := o.(*dns.EDNS0_EDE); ok {
				ede = e
			}
		}
	}
	if ede == nil || ede.InfoCode != dns.ExtendedErrorCodeBlocked {
		t.Errorf("no Extended DNS Error \"Blocked\": %v", m)
	}
	if len(r.up.queries) != 0 {
		t.Errorf("a refused name reached the upstream")
	}
	r.ask(t, "tcp", "127.0.0.1", "OTHER.example.")
	if got := r.s.Refused("vm-00000000a1"); got["other.example"] != 2 || len(got) != 1 {
		t.Errorf("refused %v", got)
	}

	// Asked again while its pin has more than half its TTL to run: no
	// second pin (each is an nftables transaction).
	r.ask(t, "udp", "127.0.0.1", "allowed.example")
	r.mu.Lock()
	if len(r.pins) != len(want) {
		t.Errorf("a name still pinned was pinned again: %v", r.pins[len(want):])
	}
	r.mu.Unlock()

	// A pin that fails: SERVFAIL, not an answer the VM could not use.
	r.s.Forget("vm-00000000a1")
	r.mu.Lock()
	r.err = context.DeadlineExceeded
	r.mu.Unlock()
	if m := r.ask(t, "udp", "127.0.0.1", "allowed.example"); m.Rcode != dns.RcodeServerFailure || len(m.Answer) != 0 {
		t.Errorf("after a failed pin: %v", m)
	}
}

func TestUpstreams(t *testing.T) {
	// A dead upstream first: the next one answers.
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	up := startUpstream(t)
	r := newRig(t, egress.Policy{Mode: egress.Open}, dead.LocalAddr().String(), up.addr)
	if m := r.ask(t, "udp", "127.0.0.1", "allowed.example"); m.Rcode != dns.RcodeSuccess {
		t.Errorf("with the first upstream dead: %v", m)
	}
	// None alive: SERVFAIL.
	r = newRig(t, egress.Policy{Mode: egress.Open}, dead.LocalAddr().String())
	if m := r.ask(t, "udp", "127.0.0.1", "allowed.example"); m.Rcode != dns.RcodeServerFailure {
		t.Errorf("with no upstream: %s", dns.RcodeToString[m.Rcode])
	}
}

func TestBoundsQueriesPerVM(t *testing.T) {
	r := newRig(t, egress.Policy{Mode: egress.Open})
	r.up.hold = make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	fails := 0
	for range MaxPerVM + 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
			q := new(dns.Msg)
			q.SetQuestion("allowed.example.", dns.TypeA)
			m, _, err := c.Exchange(q, r.s.Addr())
			if err == nil && m.Rcode == dns.RcodeServerFailure {
				mu.Lock()
				fails++
				mu.Unlock()
			}
		}()
	}
	// Release the upstream once every query has arrived or been turned away.
	deadline := time.After(5 * time.Second)
	for got := 0; got < MaxPerVM; {
		select {
		case <-r.up.queries:
			got++
		case <-deadline:
			t.Fatalf("only %d queries reached the upstream", got)
		}
	}
	time.Sleep(200 * time.Millisecond)
	close(r.up.hold)
	wg.Wait()
	if fails != 8 {
		t.Errorf("%d queries over the bound failed, want 8", fails)
	}
}

func TestResolvConf(t *testing.T) {
	p := t.TempDir() + "/resolv.conf"
	writeFile(t, p, "# comment\nnameserver 192.0.2.53\nsearch example\nnameserver 2001:db8::53\nnameserver bogus\n")
	got, err := resolvConf(p)
	if err != nil || strings.Join(got, " ") != "192.0.2.53:53 [2001:db8::53]:53" {
		t.Errorf("resolvConf = %v, %v", got, err)
	}
	writeFile(t, p, "search example\n")
	if _, err := resolvConf(p); err == nil {
		t.Error("a resolv.conf without nameservers was accepted")
	}
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}
