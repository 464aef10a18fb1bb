// Package vmdns is the DNS forwarder a host's VMs resolve through. It
// listens on the VM bridge's gateway address (UDP and TCP, port 53), the
// only resolver VMs may reach (internal/hostnet drops ports 53 and 853 to
// anywhere else), and forwards queries to the host's own resolvers.
//
// It carries out each VM's egress policy (internal/egress):
//
//   - A query from an address no VM holds is refused.
//   - In allowlist mode, a name the policy does not allow gets NXDOMAIN with
//     the Extended DNS Error "Blocked", and is remembered as refused. For an
//     allowed name, the IPv4 addresses of the answer are pinned into the
//     VM's nftables set (Pin) for the records' TTL — at least MinPin, at
//     most MaxPin — before the answer goes back, so the VM's connection
//     that follows is let through. If pinning fails the VM gets SERVFAIL,
//     never an answer it could not use.
//   - Where the policy records flows (audit, allowlist), it remembers, per
//     VM, which name each address was an answer for, so that the flows can
//     say what they were for.
//
// What a VM can make it do is bounded: a query of a VM waits for at most
// MaxPerVM others of the same VM, memory per VM is capped (MaxNames), and
// answers are capped at the sizes DNS allows.
package vmdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/tandem-ci/tandem/internal/egress"
)

// Bounds.
const (
	MinPin   = 30 * time.Second
	MaxPin   = time.Hour
	MaxPerVM = 32   // queries of one VM in flight
	MaxNames = 4096 // remembered names per VM
)

// Lookup says which VM holds addr, under which policy.
type Lookup func(addr netip.Addr) (vmID string, pol egress.Policy, ok bool)

// PinFunc lets vmID reach addrs for ttl.
type PinFunc func(ctx context.Context, vmID string, addrs []netip.Addr, ttl time.Duration) error

// Config configures a Server.
type Config struct {
	// Listen is the address to serve on, gateway:53.
	Listen string
	// Upstreams are the resolvers queries go to, host:port, tried in
	// order; empty: the nameservers of /etc/resolv.conf.
	Upstreams []string
	Lookup    Lookup
	Pin       PinFunc
	// Timeout bounds one upstream exchange (default 2 s).
	Timeout time.Duration
	Logger  *slog.Logger
}

// Server is a running forwarder.
type Server struct {
	cfg      Config
	udp, tcp *dns.Server

	mu       sync.Mutex
	names    map[string]map[netip.Addr]string // vm → address → name
	refused  map[string]map[string]int        // vm → name → queries refused
	inflight map[string]int                   // vm → queries in flight
	// pinned is when each VM's pins run out, as this server set them:
	// an answer whose addresses are pinned for at least half its TTL
	// more costs no nftables transaction.
	pinned map[string]map[netip.Addr]time.Time
}

// ErrInUse: another process serves DNS on the address already (another
// Tandem process on the same bridge, which reads the same leases).
var ErrInUse = errors.New("dns address in use")

var errAddrInUse = syscall.EADDRINUSE

// Start listens and serves until Close. A port 0 in Listen picks one port
// for UDP and TCP alike.
func Start(cfg Config) (*Server, error) {
	if cfg.Lookup == nil || cfg.Pin == nil {
		return nil, errors.New("vmdns: Lookup and Pin are required")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if len(cfg.Upstreams) == 0 {
		ups, err := resolvConf("/etc/resolv.conf")
		if err != nil {
			return nil, err
		}
		cfg.Upstreams = ups
	}
	s := &Server{cfg: cfg, names: map[string]map[netip.Addr]string{}, refused: map[string]map[string]int{}, inflight: map[string]int{},
		pinned: map[string]map[netip.Addr]time.Time{}}
	pc, ln, err := listen(cfg.Listen)
	if err != nil {
		if errors.Is(err, errAddrInUse) {
			return nil, fmt.Errorf("%w: %s", ErrInUse, cfg.Listen)
		}
		return nil, fmt.Errorf("dns forwarder: %w", err)
	}
	s.cfg.Listen = pc.LocalAddr().String()
	s.udp = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.serve)}
	s.tcp = &dns.Server{Listener: ln, Handler: dns.HandlerFunc(s.serve),
		ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, IdleTimeout: func() time.Duration { return 10 * time.Second },
		MaxTCPQueries: 128}
	started := make(chan struct{}, 2)
	s.udp.NotifyStartedFunc = func() { started <- struct{}{} }
	s.tcp.NotifyStartedFunc = func() { started <- struct{}{} }
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	<-started
	<-started
	return s, nil
}

// listen binds UDP and TCP on addr; with port 0, on one port free for both
// (tried a few times: the port UDP got may be taken for TCP).
func listen(addr string) (net.PacketConn, net.Listener, error) {
	_, port, _ := net.SplitHostPort(addr)
	for try := 0; ; try++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if port != "0" || try == 10 || !errors.Is(err, errAddrInUse) {
			return nil, nil, err
		}
	}
}

// Addr returns the address served.
func (s *Server) Addr() string { return s.cfg.Listen }

// Close stops serving.
func (s *Server) Close() error {
	return errors.Join(s.udp.Shutdown(), s.tcp.Shutdown())
}

// Names returns, for vmID, the name each address was an answer for.
func (s *Server) Names(vmID string) map[netip.Addr]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[netip.Addr]string, len(s.names[vmID]))
	for a, n := range s.names[vmID] {
		out[a] = n
	}
	return out
}

// Refused returns the names vmID asked for and its allowlist refused, with
// how often.
func (s *Server) Refused(vmID string) map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.refused[vmID]))
	for n, c := range s.refused[vmID] {
		out[n] = c
	}
	return out
}

// Forget drops what was remembered of vmID (when the VM is gone).
func (s *Server) Forget(vmID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.names, vmID)
	delete(s.refused, vmID)
	delete(s.pinned, vmID)
}

// needsPin reports whether addrs must be pinned for vmID to reach them for
// ttl: some are not pinned for at least ttl/2 more.
func (s *Server) needsPin(vmID string, addrs []netip.Addr, ttl time.Duration, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range addrs {
		if until, ok := s.pinned[vmID][a]; !ok || until.Sub(now) < ttl/2 {
			return true
		}
	}
	return false
}

// pinnedAt records that addrs were pinned for vmID at now for ttl.
func (s *Server) pinnedAt(vmID string, addrs []netip.Addr, now time.Time, ttl time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pinned[vmID] == nil {
		s.pinned[vmID] = map[netip.Addr]time.Time{}
	}
	m := s.pinned[vmID]
	if len(m) >= MaxNames {
		// Bounded: forget what has run out, else everything (the next
		// answers are pinned again, which is only slower).
		for a, u := range m {
			if u.Before(now) {
				delete(m, a)
			}
		}
		if len(m) >= MaxNames {
			clear(m)
		}
	}
	for _, a := range addrs {
		m[a] = now.Add(ttl)
	}
}

func (s *Server) serve(w dns.ResponseWriter, q *dns.Msg) {
	resp := s.answer(w, q)
	if resp != nil {
		w.WriteMsg(resp)
	}
}

// answer decides the response to q from w's peer.
func (s *Server) answer(w dns.ResponseWriter, q *dns.Msg) *dns.Msg {
	src, ok := peerAddr(w.RemoteAddr())
	if !ok {
		return fail(q, dns.RcodeRefused)
	}
	vmID, pol, ok := s.cfg.Lookup(src)
	if !ok {
		return fail(q, dns.RcodeRefused)
	}
	if q.Opcode != dns.OpcodeQuery || len(q.Question) != 1 || q.Question[0].Qclass != dns.ClassINET {
		return fail(q, dns.RcodeNotImplemented)
	}
	name := egress.NormaliseName(q.Question[0].Name)
	if !pol.AllowsName(name) {
		s.remember(vmID, func() {
			if s.refused[vmID] == nil {
				s.refused[vmID] = map[string]int{}
			}
			if _, have := s.refused[vmID][name]; have || len(s.refused[vmID]) < MaxNames {
				s.refused[vmID][name]++
			}
		})
		r := fail(q, dns.RcodeNameError)
		opt := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: dns.DefaultMsgSize}}
		opt.Option = append(opt.Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeBlocked, ExtraText: "not on this job's egress allowlist"})
		r.Extra = append(r.Extra, opt)
		return r
	}
	if !s.enter(vmID) {
		return fail(q, dns.RcodeServerFailure)
	}
	defer s.leave(vmID)
	network := "udp"
	if _, isTCP := w.RemoteAddr().(*net.TCPAddr); isTCP {
		network = "tcp"
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout*time.Duration(len(s.cfg.Upstreams)))
	defer cancel()
	r, err := s.forward(ctx, network, q)
	if err != nil {
		s.cfg.Logger.Debug("dns forward failed", "vm", vmID, "name", name, "err", err)
		return fail(q, dns.RcodeServerFailure)
	}
	addrs, ttl := answers(r)
	if len(addrs) > 0 && pol.Mode.Records() {
		if now := time.Now(); pol.Mode == egress.Allowlist && s.needsPin(vmID, addrs, ttl, now) {
			if err := s.cfg.Pin(ctx, vmID, addrs, ttl); err != nil {
				s.cfg.Logger.Warn("dns: pinning an allowed name's addresses failed; answering SERVFAIL", "vm", vmID, "name", name, "err", err)
				return fail(q, dns.RcodeServerFailure)
			}
			s.pinnedAt(vmID, addrs, now, ttl)
		}
		s.remember(vmID, func() {
			if s.names[vmID] == nil {
				s.names[vmID] = map[netip.Addr]string{}
			}
			for _, a := range addrs {
				if _, have := s.names[vmID][a]; have || len(s.names[vmID]) < MaxNames {
					s.names[vmID][a] = name
				}
			}
		})
	}
	r.Id = q.Id
	return r
}

func (s *Server) remember(vmID string, f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

func (s *Server) enter(vmID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight[vmID] >= MaxPerVM {
		return false
	}
	s.inflight[vmID]++
	return true
}

func (s *Server) leave(vmID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight[vmID]--; s.inflight[vmID] <= 0 {
		delete(s.inflight, vmID)
	}
}

// forward asks the upstreams in turn.
func (s *Server) forward(ctx context.Context, network string, q *dns.Msg) (*dns.Msg, error) {
	c := &dns.Client{Net: network, Timeout: s.cfg.Timeout}
	var errs []error
	for _, up := range s.cfg.Upstreams {
		r, _, err := c.ExchangeContext(ctx, q.Copy(), up)
		if err == nil {
			return r, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", up, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// answers returns the IPv4 addresses an answer gives and how long they
// may be used: the smallest TTL of the chain that led to them, within
// [MinPin, MaxPin].
func answers(r *dns.Msg) ([]netip.Addr, time.Duration) {
	var addrs []netip.Addr
	ttl := uint32(MaxPin / time.Second)
	for _, rr := range r.Answer {
		switch v := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(v.A); ok {
				addrs = append(addrs, a.Unmap())
			}
		case *dns.CNAME:
		default:
			continue
		}
		ttl = min(ttl, rr.Header().Ttl)
	}
	d := max(time.Duration(ttl)*time.Second, MinPin)
	return addrs, min(d, MaxPin)
}

func fail(q *dns.Msg, rcode int) *dns.Msg {
	r := new(dns.Msg)
	r.SetRcode(q, rcode)
	return r
}

func peerAddr(a net.Addr) (netip.Addr, bool) {
	switch v := a.(type) {
	case *net.UDPAddr:
		return v.AddrPort().Addr().Unmap(), true
	case *net.TCPAddr:
		return v.AddrPort().Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

// resolvConf returns the nameservers of a resolv.conf, as host:53.
func resolvConf(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("dns forwarder: the host's resolvers: %w", err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil {
				out = append(out, netip.AddrPortFrom(a.WithZone(""), 53).String())
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("dns forwarder: no nameserver in %s", path)
	}
	return out, nil
}
