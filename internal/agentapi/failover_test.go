package agentapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/syncbuf"
)

// wait bounds every wait for something the client should do: generous,
// for a loaded CI machine, and never an assertion on how fast.
const wait = 20 * time.Second

// fakeCP is one control-plane replica's agent endpoints, enough for a
// Client: the stream (held open until hung up), reports and logs. Every
// replica of a test serves the same certificate, as real ones must.
type fakeCP struct {
	srv     *httptest.Server
	cred    string
	refuse  atomic.Bool  // 401 to everything
	down    atomic.Bool  // 503 to reports
	streams chan Hello   // a stream opened
	reports chan Report  // a report arrived
	logs    chan string  // a log chunk arrived
	cmds    chan Command // sent on the open stream
	hangup  chan struct{}
	quit    chan struct{}
}

func newFakeCP(t *testing.T, cert tls.Certificate, cred string) *fakeCP {
	f := &fakeCP{cred: cred, streams: make(chan Hello, 16), reports: make(chan Report, 1000),
		logs: make(chan string, 100), cmds: make(chan Command, 16), hangup: make(chan struct{}, 1),
		quit: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathStream, f.stream)
	mux.HandleFunc("POST "+PathReport, f.report)
	mux.HandleFunc("POST "+PathLogs, f.log)
	f.srv = httptest.NewUnstartedServer(f.auth(mux))
	f.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	f.srv.StartTLS()
	t.Cleanup(func() {
		close(f.quit) // ends held streams, for Close to return
		f.srv.Close()
	})
	return f
}

func (f *fakeCP) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.refuse.Load() || r.Header.Get("Authorization") != "Bearer "+f.cred {
			w.WriteHeader(http.StatusUnauthorized)
			json.NewEncoder(w).Encode(ErrorBody{Error: "revoked"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (f *fakeCP) stream(w http.ResponseWriter, r *http.Request) {
	var h Hello
	if err := json.NewDecoder(r.Body).Decode(&h); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	f.streams <- h
	enc := json.NewEncoder(w)
	for {
		select {
		case c := <-f.cmds:
			enc.Encode(c)
			w.(http.Flusher).Flush()
		case <-f.hangup:
			return
		case <-r.Context().Done():
			return
		case <-f.quit:
			return
		}
	}
}

func (f *fakeCP) report(w http.ResponseWriter, r *http.Request) {
	if f.down.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	var rep Report
	if err := json.NewDecoder(r.Body).Decode(&rep); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	select {
	case f.reports <- rep:
	default: // heartbeats nobody waits for
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeCP) log(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	f.logs <- r.URL.Query().Get("runner") + ":" + string(b)
	w.WriteHeader(http.StatusNoContent)
}

// replicas starts n fake replicas sharing one certificate and returns
// them with credentials naming them all, in order.
func replicas(t *testing.T, n int) ([]*fakeCP, Credentials) {
	dir := t.TempDir()
	cert, err := LoadOrCreateCert(filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	creds := Credentials{Pin: Fingerprint(cert.Certificate[0]), HostID: "h1", Credential: "s3cr3t-credential"}
	var cps []*fakeCP
	for range n {
		f := newFakeCP(t, cert, creds.Credential)
		cps = append(cps, f)
		creds.Servers = append(creds.Servers, f.srv.URL)
	}
	creds.Server, creds.Servers = creds.Servers[0], creds.Servers[1:]
	return cps, creds
}

// refusedAddr is an https address where nothing listens any more.
func refusedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := "https://" + l.Addr().String()
	l.Close()
	return addr
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(wait):
		t.Fatalf("no %s within %s", what, wait)
		panic("unreachable")
	}
}

// streamAsync runs one Client.Stream, its commands and its end sent on.
func streamAsync(ctx context.Context, c *Client) (<-chan Command, <-chan error) {
	cmds, done := make(chan Command, 16), make(chan error, 1)
	go func() { done <- c.Stream(ctx, Hello{AgentVersion: "test"}, func(cmd Command) { cmds <- cmd }) }()
	return cmds, done
}

// The first address refuses connections: the stream fails there, and the
// next one opens at the second address, which is current from then on.
func TestClientStreamsFromTheNextAddress(t *testing.T) {
	cps, creds := replicas(t, 1)
	creds.Servers = []string{creds.Server}
	creds.Server = refusedAddr(t)
	c := NewClient(creds)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	if err := c.Stream(ctx, Hello{}, func(Command) {}); err == nil || errors.Is(err, ErrRevoked) {
		t.Fatalf("stream from a closed port: %v", err)
	}
	cmds, done := streamAsync(ctx, c)
	recv(t, cps[0].streams, "stream at the second address")
	cps[0].cmds <- Command{Type: CmdStop, Runner: "r1"}
	if got := recv(t, cmds, "command"); got.Runner != "r1" {
		t.Errorf("command %+v", got)
	}
	if err := c.Report(ctx, Report{Events: []Event{{Runner: "r1", Kind: EventEnded}}}); err != nil {
		t.Fatalf("report: %v", err)
	}
	if got := recv(t, cps[0].reports, "report"); len(got.Events) != 1 {
		t.Errorf("report %+v", got)
	}
	cancel()
	recv(t, done, "stream's end")
}

// Lost streams move the client round robin: a, b, c, a, …
func TestClientRoundRobin(t *testing.T) {
	cps, creds := replicas(t, 3)
	c := NewClient(creds)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, i := range []int{0, 1, 2, 0} {
		_, done := streamAsync(ctx, c)
		recv(t, cps[i].streams, "stream at replica "+string(rune('a'+i)))
		cps[i].hangup <- struct{}{}
		if err := recv(t, done, "stream's end"); !strings.Contains(err.Error(), "closed by the control plane") {
			t.Fatalf("replica %d: %v", i, err)
		}
	}
}

// The current replica ends the stream: the daemon opens one at the next
// at once (one replica gone is no reason to back off), and its events and
// logs reach that one. The move is logged, without the credential.
func TestDaemonFailsOver(t *testing.T) {
	cps, creds := replicas(t, 2)
	var logBuf syncbuf.Buffer
	d := &Daemon{Client: NewClient(creds), AgentVersion: "test", Capacity: func() Capacity { return Capacity{} },
		HeartbeatInterval: time.Hour, Logger: slog.New(slog.NewTextHandler(&logBuf, nil))}
	d.Bind(fakeRunner(nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); recv(t, done, "daemon's end") }()

	recv(t, cps[0].streams, "stream at the first replica")
	cps[0].hangup <- struct{}{}
	recv(t, cps[1].streams, "stream at the second replica")
	d.Log("r1", []byte("hello"))
	d.Event(Event{Runner: "r1", Kind: EventEnded})
	for {
		rep := recv(t, cps[1].reports, "the event at the second replica")
		if len(rep.Events) == 1 && rep.Events[0].Runner == "r1" {
			break
		}
	}
	if got := recv(t, cps[1].logs, "the log at the second replica"); got != "r1:hello" {
		t.Errorf("log %q", got)
	}
	logs := logBuf.String()
	for _, addr := range []string{creds.Server, creds.Servers[0]} {
		if !strings.Contains(logs, `msg="connected to control plane" addr=`+addr) {
			t.Errorf("no connection to %s logged:\n%s", addr, logs)
		}
	}
	if strings.Contains(logs, creds.Credential) {
		t.Errorf("the credential was logged:\n%s", logs)
	}
}

// A runner that ends while its end cannot be reported is named running in
// the next hello, so that the control plane waits for that end, with its
// exit, rather than end the runner as gone with the agent; once the end is
// reported, the hello names it no more, and Send's channel says so.
func TestHelloNamesRunnersWhoseEndIsQueued(t *testing.T) {
	cps, creds := replicas(t, 1)
	cp := cps[0]
	d := &Daemon{Client: NewClient(creds), AgentVersion: "test", Capacity: func() Capacity { return Capacity{} },
		HeartbeatInterval: time.Hour, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	d.Bind(fakeRunner{"r1"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); recv(t, done, "daemon's end") }()

	if h := recv(t, cp.streams, "the first stream"); !slices.Equal(h.Running, []string{"r1"}) {
		t.Fatalf("first hello runs %v, want r1", h.Running)
	}
	cp.down.Store(true)
	reported := d.Send(Event{Runner: "r2", Kind: EventEnded, ExitCode: 3})
	cp.hangup <- struct{}{}
	if h := recv(t, cp.streams, "the stream again"); !slices.Equal(h.Running, []string{"r1", "r2"}) {
		t.Errorf("hello with r2's end queued runs %v, want r1 and r2", h.Running)
	}
	select {
	case <-reported:
		t.Fatal("Send says r2's end was reported while the control plane refused reports")
	default:
	}
	cp.down.Store(false)
	for {
		rep := recv(t, cp.reports, "r2's end")
		if len(rep.Events) == 1 && rep.Events[0].Runner == "r2" && rep.Events[0].ExitCode == 3 {
			break
		}
	}
	// (The fake answers just after it hands the report on.)
	recv(t, reported, "Send's word that r2's end was reported")
	cp.hangup <- struct{}{}
	if h := recv(t, cp.streams, "the third stream"); !slices.Equal(h.Running, []string{"r1"}) {
		t.Errorf("hello after r2's end was reported runs %v, want r1", h.Running)
	}
}

// A 401 is an answer, not a failure of the address: the client does not
// try the other replica, for the stream or for a report.
func TestClientRevokedDoesNotFailOver(t *testing.T) {
	cps, creds := replicas(t, 2)
	cps[0].refuse.Store(true)
	c := NewClient(creds)
	ctx := context.Background()
	if err := c.Stream(ctx, Hello{}, func(Command) {}); !errors.Is(err, ErrRevoked) {
		t.Fatalf("stream: %v", err)
	}
	if err := c.Report(ctx, Report{Heartbeat: &Heartbeat{}}); !errors.Is(err, ErrRevoked) {
		t.Fatalf("report: %v", err)
	}
	if err := c.Log(ctx, "r1", []byte("x")); !errors.Is(err, ErrRevoked) {
		t.Fatalf("log: %v", err)
	}
	select {
	case <-cps[1].streams:
		t.Error("the stream failed over on a 401")
	case <-cps[1].reports:
		t.Error("the report failed over on a 401")
	case <-cps[1].logs:
		t.Error("the log failed over on a 401")
	default:
	}

	d := &Daemon{Client: c, Capacity: func() Capacity { return Capacity{} }, HeartbeatInterval: time.Hour,
		Logger: slog.New(slog.DiscardHandler)}
	d.Bind(fakeRunner(nil))
	if err := d.Run(ctx); !errors.Is(err, ErrRevoked) {
		t.Errorf("daemon: %v", err)
	}
}

// A report whose address is unreachable or failing (5xx) tries the others
// once, and the one that answers becomes current; when all fail, the error
// names each.
func TestClientReportFailsOver(t *testing.T) {
	cps, creds := replicas(t, 1)
	broken := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		json.NewEncoder(w).Encode(ErrorBody{Error: "store unavailable"})
	}))
	broken.TLS = &tls.Config{Certificates: cps[0].srv.TLS.Certificates} // the replicas' one
	broken.StartTLS()
	defer broken.Close()
	down := refusedAddr(t)
	creds.Server, creds.Servers = down, []string{broken.URL, creds.Server}
	c := NewClient(creds)
	ctx := context.Background()
	if err := c.Report(ctx, Report{Heartbeat: &Heartbeat{Load1: 1}}); err != nil {
		t.Fatalf("report: %v", err)
	}
	recv(t, cps[0].reports, "report")
	if got := c.addrs[c.current()]; got != cps[0].srv.URL {
		t.Errorf("current address %s, want %s", got, cps[0].srv.URL)
	}
	if err := c.Log(ctx, "r1", []byte("x")); err != nil {
		t.Fatalf("log: %v", err)
	}
	recv(t, cps[0].logs, "log")

	c = NewClient(Credentials{Server: down, Servers: []string{broken.URL}, Pin: creds.Pin, HostID: "h1", Credential: "x"})
	err := c.Report(ctx, Report{})
	if err == nil || !strings.Contains(err.Error(), down) || !strings.Contains(err.Error(), "store unavailable") {
		t.Errorf("all unreachable: %v", err)
	}
}

// enrollServer is an unstarted control plane that enrols any host as
// "cred-<host>", with its certificate.
func enrollServer(t *testing.T) (*httptest.Server, tls.Certificate) {
	dir := t.TempDir()
	cert, err := LoadOrCreateCert(filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem"), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req EnrollRequest
		json.NewDecoder(r.Body).Decode(&req)
		json.NewEncoder(w).Encode(EnrollResponse{HostID: req.HostID, Credential: "cred-" + req.HostID})
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	return srv, cert
}

// Enrolment takes the first address that answers; the others are kept.
func TestEnrollFirst(t *testing.T) {
	srv, cert := enrollServer(t)
	srv.StartTLS()
	defer srv.Close()
	tok, _, err := NewEnrollToken(Fingerprint(cert.Certificate[0]))
	if err != nil {
		t.Fatal(err)
	}
	a, c := refusedAddr(t), refusedAddr(t)
	creds, err := EnrollFirst(context.Background(), []string{a, srv.URL, c}, tok, "h1")
	if err != nil {
		t.Fatal(err)
	}
	if creds.Server != srv.URL || !slices.Equal(creds.Servers, []string{a, c}) || creds.Credential != "cred-h1" {
		t.Errorf("credentials %+v", creds)
	}
}

// Enrolment tries again while no control plane answers: one that starts
// listening a moment later enrols the host. The wrong certificate fails at
// once, and so does a control plane that stays away past EnrollRetryFor.
func TestEnrollWaitsForTheControlPlane(t *testing.T) {
	enrolled, cert := enrollServer(t)
	addr := refusedAddr(t) // nothing listens there yet
	go func() {
		time.Sleep(1500 * time.Millisecond)
		l, err := net.Listen("tcp", strings.TrimPrefix(addr, "https://"))
		if err != nil {
			t.Error(err)
			return
		}
		enrolled.Listener = l
		enrolled.StartTLS()
	}()
	t.Cleanup(func() {
		if enrolled.Listener != nil {
			enrolled.Close()
		}
	})
	tok, _, err := NewEnrollToken(Fingerprint(cert.Certificate[0]))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	creds, err := Enroll(context.Background(), addr, tok, "h1")
	if err != nil || creds.Credential != "cred-h1" {
		t.Fatalf("enrol while the control plane comes up: %+v, %v", creds, err)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("enrolled after %s, before the control plane listened", d)
	}

	// A token of another control plane: the certificate is not pinned.
	other, _, err := NewEnrollToken(strings.Repeat("ab", 32))
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if _, err := Enroll(context.Background(), addr, other, "h2"); !errors.Is(err, ErrPinMismatch) || time.Since(start) > time.Second {
		t.Errorf("wrong pin: %v after %s, want ErrPinMismatch at once", err, time.Since(start))
	}

	// Nobody, for longer than the wait.
	defer func(d time.Duration) { EnrollRetryFor = d }(EnrollRetryFor)
	EnrollRetryFor = 2 * time.Second
	start = time.Now()
	if _, err := Enroll(context.Background(), refusedAddr(t), tok, "h3"); err == nil || time.Since(start) > 5*time.Second {
		t.Errorf("no control plane: %v after %s", err, time.Since(start))
	}
}

func TestParseAddrs(t *testing.T) {
	got, err := ParseAddrs([]string{" https://CP1.example.test:8443/", "https://[::1]:8443", "https://10.0.0.1:443"})
	want := []string{"https://cp1.example.test:8443", "https://[::1]:8443", "https://10.0.0.1:443"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("ParseAddrs = %q, %v", got, err)
	}
	if _, err := ParseAddrs([]string{"https://a.test:1", "https://A.test:1/"}); err == nil || !strings.Contains(err.Error(), `"https://A.test:1/" is given twice`) {
		t.Errorf("duplicate: %v", err)
	}
	if _, err := ParseAddrs([]string{"https://a.test:1", "cp.example.test:8443"}); err == nil || !strings.Contains(err.Error(), `"cp.example.test:8443"`) {
		t.Errorf("no scheme: %v", err)
	}
}

// fakeRunner runs the runners it names, and does nothing.
type fakeRunner []string

func (fakeRunner) Launch(Assignment) error                   { return nil }
func (fakeRunner) Configure(string, map[string]string) error { return nil }
func (fakeRunner) Stop(string, string) error                 { return nil }
func (f fakeRunner) Runners() []string                       { return slices.Clone(f) }
