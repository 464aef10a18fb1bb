package agentapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
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
	Server     string `json:"server"` // https://host:port
	Pin        string `json:"pin"`    // the control plane's certificate fingerprint
	HostID     string `json:"host_id"`
	Credential string `json:"credential"`
}

// String never shows the credential.
func (c Credentials) String() string {
	return fmt.Sprintf("agent %s of %s (pin %s…)", c.HostID, c.Server, c.Pin[:min(12, len(c.Pin))])
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
	return c, nil
}

// Enroll exchanges a one-time token for this host's credentials.
func Enroll(ctx context.Context, server, token, hostID string) (Credentials, error) {
	secret, pin, err := ParseEnrollToken(token)
	if err != nil {
		return Credentials{}, err
	}
	c := &Client{cred: Credentials{Server: strings.TrimRight(server, "/"), Pin: pin, HostID: hostID}}
	c.init()
	var resp EnrollResponse
	if err := c.call(ctx, PathEnroll, EnrollRequest{Token: secret, HostID: hostID}, &resp); err != nil {
		return Credentials{}, fmt.Errorf("enrol with %s: %w", server, err)
	}
	c.cred.Credential = resp.Credential
	return c.cred, nil
}

// Client talks to the control plane for one enrolled agent.
type Client struct {
	cred Credentials
	http *http.Client // requests with a deadline
	long *http.Client // the stream
}

// NewClient returns a client for enrolled credentials.
func NewClient(c Credentials) *Client {
	cl := &Client{cred: c}
	cl.init()
	return cl
}

func (c *Client) init() {
	tr := &http.Transport{TLSClientConfig: PinnedTLS(c.cred.Pin), ForceAttemptHTTP2: false,
		MaxIdleConnsPerHost: 4, IdleConnTimeout: time.Minute, TLSHandshakeTimeout: 10 * time.Second,
		ResponseHeaderTimeout: 20 * time.Second}
	c.http = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	c.long = &http.Client{Transport: tr}
}

func (c *Client) request(ctx context.Context, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.cred.Server+path, body)
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
	req, err := c.request(ctx, path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := statusError(resp); err != nil {
		return err
	}
	if out != nil {
		return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out)
	}
	return nil
}

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
	return fmt.Errorf("control plane: %s: %s", resp.Status, eb.Error)
}

// Report sends a heartbeat and/or events.
func (c *Client) Report(ctx context.Context, r Report) error {
	return c.call(ctx, PathReport, r, nil)
}

// Log appends a chunk to a runner's log on the control plane.
func (c *Client) Log(ctx context.Context, runner string, chunk []byte) error {
	req, err := c.request(ctx, PathLogs+"?runner="+url.QueryEscape(runner), bytes.NewReader(chunk))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return statusError(resp)
}

// Stream opens the command stream with hello and calls handle for each
// command, in order, until the stream ends, ctx ends, or nothing (not even
// a ping) arrives for StreamIdle. It always returns an error saying why.
func (c *Client) Stream(ctx context.Context, hello Hello, handle func(Command)) error {
	b, err := json.Marshal(hello)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := c.request(sctx, PathStream, bytes.NewReader(b))
	if err != nil {
		return err
	}
	resp, err := c.long.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := statusError(resp); err != nil {
		return err
	}
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
			return fmt.Errorf("stream: bad command: %w", err)
		}
		if cmd.Type != CmdPing {
			handle(cmd)
		}
	}
	if err := sc.Err(); err != nil {
		if ctx.Err() == nil && sctx.Err() != nil {
			return fmt.Errorf("stream silent for %s", StreamIdle)
		}
		return fmt.Errorf("stream: %w", err)
	}
	return errors.New("stream closed by the control plane")
}
