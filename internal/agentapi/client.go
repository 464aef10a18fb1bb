package agentapi

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tandem-ci/tandem/internal/fsutil"
)

// Sentinel errors of the agent's side.
var (
	// ErrRevoked: the control plane refuses this agent's credential.
	ErrRevoked = errors.New("the control plane refused this agent's credential (revoked, or enrolled again elsewhere): enrol again with a new token")
	// ErrVersion: the control plane does not speak this agent's protocol.
	ErrVersion = errors.New("protocol version refused by the control plane")
)

// Credentials are what an enrolled agent keeps (0600 in its data dir).
type Credentials struct {
	Server string `json:"server"` // https://host:port
	// Servers are the control plane's other addresses (its replicas on
	// one database), tried in order after Server. Every replica serves
	// the same certificate, so Pin holds for each, and checks the
	// credential against the same database.
	Servers    []string `json:"servers,omitempty"`
	Pin        string   `json:"pin"` // the control plane's certificate fingerprint
	HostID     string   `json:"host_id"`
	Credential string   `json:"credential"`
}

// Addrs returns Server and then Servers: the order a client tries them in.
func (c Credentials) Addrs() []string {
	return append([]string{c.Server}, c.Servers...)
}

// String never shows the credential.
func (c Credentials) String() string {
	return fmt.Sprintf("agent %s of %s (pin %s…)", c.HostID, strings.Join(c.Addrs(), ", "), c.Pin[:min(12, len(c.Pin))])
}

// Save writes the credentials atomically, readable by root only.
func (c Credentials) Save(path string) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path, b, 0o600)
}

// LoadCredentials reads credentials written by Save.
func LoadCredentials(path string) (Credentials, error) {
	var c Credentials
	b, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	if c.Server == "" || c.HostID == "" || c.Credential == "" || len(c.Pin) != 64 {
		return c, fmt.Errorf("%s: incomplete agent credentials", path)
	}
	if err := c.checkServers(); err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// checkServers checks Servers as ParseAddr does, and that no address is
// given twice. Server is left as it was always taken (a file written
// before Servers, from whatever --server said then, keeps loading).
func (c Credentials) checkServers() error {
	seen := map[string]bool{CanonAddr(c.Server): true}
	for _, s := range c.Servers {
		a, err := ParseAddr(s)
		if err != nil {
			return err
		}
		if seen[a] {
			return fmt.Errorf("control-plane address %q is given twice", s)
		}
		seen[a] = true
	}
	return nil
}

// ParseAddr checks a control-plane address, https://HOST:PORT and nothing
// more, and returns it as credentials keep it: lower case, with no
// trailing slash.
func ParseAddr(s string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("control-plane address %q: %s", s, why)
	}
	u, err := url.Parse(strings.TrimRight(strings.TrimSpace(s), "/"))
	if err != nil {
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err
		}
		return bad(err.Error())
	}
	switch {
	case u.Scheme != "https":
		return bad("not https://HOST:PORT")
	case u.User != nil:
		return bad("has a user name")
	case u.Opaque != "" || u.Path != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return bad("has a path, query or fragment")
	case u.Hostname() == "":
		return bad("has no host")
	case u.Port() == "":
		return bad("has no port")
	}
	if p, err := strconv.Atoi(u.Port()); err != nil || p < 1 || p > 65535 {
		return bad("port out of range")
	}
	return "https://" + strings.ToLower(u.Host), nil
}

// ParseAddrs parses each address (ParseAddr), refusing one given twice.
func ParseAddrs(list []string) ([]string, error) {
	var out []string
	for _, s := range list {
		a, err := ParseAddr(s)
		if err != nil {
			return nil, err
		}
		if slices.Contains(out, a) {
			return nil, fmt.Errorf("control-plane address %q is given twice", s)
		}
		out = append(out, a)
	}
	return out, nil
}

// CanonAddr is s as ParseAddr returns it, or s without trailing slashes
// when ParseAddr refuses it (an address kept from before it checked).
func CanonAddr(s string) string {
	if a, err := ParseAddr(s); err == nil {
		return a
	}
	return strings.TrimRight(s, "/")
}

// Enroll exchanges a one-time token for this host's credentials.
func Enroll(ctx context.Context, server, token, hostID string) (Credentials, error) {
	return EnrollFirst(ctx, []string{strings.TrimRight(server, "/")}, token, hostID)
}

// EnrollRetryFor bounds how long enrolment tries again while no control
// plane answers at all; enrollRetryFirst is its first wait, doubled after
// each try up to 10 s.
var (
	EnrollRetryFor   = 2 * time.Minute
	enrollRetryFirst = time.Second
)

// EnrollFirst enrols at the first of servers (replicas of one control
// plane) that answers; the credentials keep that one as Server and the
// others, in order, as Servers. While none answers, it tries again, for
// up to EnrollRetryFor.
func EnrollFirst(ctx context.Context, servers []string, token, hostID string) (Credentials, error) {
	if len(servers) == 0 {
		return Credentials{}, errors.New("enrol: no control-plane address")
	}
	secret, pin, err := ParseEnrollToken(token)
	if err != nil {
		return Credentials{}, err
	}
	c := NewClient(Credentials{Server: servers[0], Servers: servers[1:], Pin: pin, HostID: hostID})
	var resp EnrollResponse
	start, wait := time.Now(), enrollRetryFirst
	for {
		err := c.call(ctx, PathEnroll, EnrollRequest{Token: secret, HostID: hostID}, &resp)
		if err == nil {
			break
		}
		// No control plane answered (not up yet, the network not yet
		// there, a packet lost in the TLS handshake): try again for a
		// while. An answer, or the wrong certificate, is final.
		if !unreachable(err) || errors.Is(err, ErrPinMismatch) || ctx.Err() != nil || time.Since(start)+wait > EnrollRetryFor {
			return Credentials{}, fmt.Errorf("enrolling: %w", err)
		}
		slog.Warn("enrolling: no control plane answered; trying again", "in", wait, "err", err)
		select {
		case <-ctx.Done():
			return Credentials{}, fmt.Errorf("enrolling: %w", err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
	at := c.addrs[c.current()]
	creds := Credentials{Server: at, Pin: pin, HostID: hostID, Credential: resp.Credential}
	for _, s := range servers {
		if s != at {
			creds.Servers = append(creds.Servers, s)
		}
	}
	return creds, nil
}

// Client talks to the control plane for one enrolled agent. It keeps a
// current address among the credentials' Addrs: a stream that cannot be
// opened or ends moves it on to the next, round robin; a request that
// cannot reach it tries the others. An answer (ErrRevoked, ErrVersion, any
// other refusal) moves nothing: every replica shares one database and
// would answer the same.
type Client struct {
	// Logger, if set before the first Stream, gets a line whenever the
	// stream opens at another address than before (default slog.Default).
	Logger *slog.Logger

	cred  Credentials
	addrs []string     // cred.Addrs()
	http  *http.Client // requests with a deadline
	long  *http.Client // the stream

	mu        sync.Mutex
	cur       int    // index in addrs of the current address
	connected string // where the last stream opened
}

// NewClient returns a client for enrolled credentials.
func NewClient(c Credentials) *Client {
	// A dead replica's address must fail within a bound, not after the
	// kernel gives up on SYNs, for the next address to get its turn.
	dial := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{TLSClientConfig: PinnedTLS(c.Pin), ForceAttemptHTTP2: false, DialContext: dial.DialContext,
		MaxIdleConnsPerHost: 4, IdleConnTimeout: time.Minute, TLSHandshakeTimeout: 10 * time.Second,
		ResponseHeaderTimeout: 20 * time.Second}
	return &Client{cred: c, addrs: c.Addrs(),
		http: &http.Client{Transport: tr, Timeout: 30 * time.Second},
		long: &http.Client{Transport: tr}}
}

// Addrs returns the addresses the client uses, in order.
func (c *Client) Addrs() []string { return slices.Clone(c.addrs) }

func (c *Client) current() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// moveTo makes addrs[to] current if addrs[from] still is: of the stream
// and the requests that fail at one address together, one moves it on.
func (c *Client) moveTo(from, to int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == from {
		c.cur = to
	}
}

// opened logs the stream's address when it is not where the last opened.
func (c *Client) opened(addr string) {
	c.mu.Lock()
	changed := addr != c.connected
	c.connected = addr
	c.mu.Unlock()
	if changed {
		cmp.Or(c.Logger, slog.Default()).Info("connected to control plane", "addr", addr)
	}
}

func (c *Client) request(ctx context.Context, addr, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, addr+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderVersion, strconv.Itoa(Version))
	if c.cred.Credential != "" {
		req.Header.Set(HeaderHost, c.cred.HostID)
		req.Header.Set("Authorization", "Bearer "+c.cred.Credential)
	}
	return req, nil
}

func (c *Client) call(ctx context.Context, path string, in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	resp, err := c.post(ctx, path, "application/json", b)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out != nil {
		return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out)
	}
	return nil
}

// post sends body to path at the current address and, when that cannot be
// reached (unreachable), at each other address once, in order; the first
// that answers becomes current. The response is a 2xx one.
func (c *Client) post(ctx context.Context, path, contentType string, body []byte) (*http.Response, error) {
	first := c.current()
	var errs []error
	for k := range c.addrs {
		i := (first + k) % len(c.addrs)
		resp, err := c.postTo(ctx, c.addrs[i], path, contentType, body)
		if err == nil {
			c.moveTo(first, i)
			return resp, nil
		}
		if !unreachable(err) || ctx.Err() != nil {
			return nil, err
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

func (c *Client) postTo(ctx context.Context, addr, path, contentType string, body []byte) (*http.Response, error) {
	req, err := c.request(ctx, addr, path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if err := statusError(resp); err != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	return resp, nil
}

// statusErr is a control plane's non-2xx answer other than ErrRevoked and
// ErrVersion.
type statusErr struct {
	code        int
	status, msg string
}

func (e *statusErr) Error() string { return fmt.Sprintf("control plane: %s: %s", e.status, e.msg) }

func statusError(resp *http.Response) error {
	if resp.StatusCode/100 == 2 {
		return nil
	}
	var eb ErrorBody
	json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&eb)
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		return fmt.Errorf("%w: %s", ErrRevoked, eb.Error)
	case http.StatusUpgradeRequired:
		return fmt.Errorf("%w: %s", ErrVersion, eb.Error)
	}
	return &statusErr{code: resp.StatusCode, status: resp.Status, msg: eb.Error}
}

// unreachable tells an address that failed (no connection, TLS, a 5xx, a
// timeout or too many requests) from an answer (ErrRevoked, ErrVersion,
// another 4xx), which every replica would give alike.
func unreachable(err error) bool {
	if errors.Is(err, ErrRevoked) || errors.Is(err, ErrVersion) {
		return false
	}
	if se := (*statusErr)(nil); errors.As(err, &se) {
		return se.code/100 == 5 || se.code == http.StatusRequestTimeout || se.code == http.StatusTooManyRequests
	}
	return true
}

// Report sends a heartbeat and/or events.
func (c *Client) Report(ctx context.Context, r Report) error {
	return c.call(ctx, PathReport, r, nil)
}

// Log appends a chunk to a runner's log on the control plane.
func (c *Client) Log(ctx context.Context, runner string, chunk []byte) error {
	resp, err := c.post(ctx, PathLogs+"?runner="+url.QueryEscape(runner), "application/octet-stream", chunk)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// Stream opens the command stream with hello at the current address and
// calls handle for each command, in order, until the stream ends, ctx
// ends, or nothing (not even a ping) arrives for StreamIdle. It always
// returns an error saying why. Unless the error is an answer (ErrRevoked,
// ErrVersion) or ctx ended, the next address becomes current: the next
// Stream tries it.
func (c *Client) Stream(ctx context.Context, hello Hello, handle func(Command)) error {
	i := c.current()
	err := c.streamFrom(ctx, c.addrs[i], hello, handle)
	if ctx.Err() == nil && !errors.Is(err, ErrRevoked) && !errors.Is(err, ErrVersion) {
		c.moveTo(i, (i+1)%len(c.addrs))
	}
	return err
}

func (c *Client) streamFrom(ctx context.Context, addr string, hello Hello, handle func(Command)) error {
	b, err := json.Marshal(hello)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := c.request(sctx, addr, PathStream, bytes.NewReader(b))
	if err != nil {
		return err
	}
	resp, err := c.long.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := statusError(resp); err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	c.opened(addr)
	// A watchdog ends a stream that fell silent (a dead peer or path).
	alive := make(chan struct{}, 1)
	go func() {
		t := time.NewTimer(StreamIdle)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-alive:
				t.Reset(StreamIdle)
			case <-t.C:
				cancel()
				return
			}
		}
	}()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		select {
		case alive <- struct{}{}:
		default:
		}
		var cmd Command
		if err := json.Unmarshal(sc.Bytes(), &cmd); err != nil {
			return fmt.Errorf("stream from %s: bad command: %w", addr, err)
		}
		if cmd.Type != CmdPing {
			handle(cmd)
		}
	}
	if err := sc.Err(); err != nil {
		if ctx.Err() == nil && sctx.Err() != nil {
			return fmt.Errorf("stream from %s silent for %s", addr, StreamIdle)
		}
		return fmt.Errorf("stream from %s: %w", addr, err)
	}
	return fmt.Errorf("stream from %s closed by the control plane", addr)
}
