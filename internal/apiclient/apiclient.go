// Package apiclient talks to a Tandem control plane's JSON API
// (/api/v1/...), as the operator commands and scripts do.
//
// The token travels only in the Authorization header: it is never part of a
// URL or an error, and redirects, which would carry it elsewhere, are not
// followed (the API never sends one). An https server is verified by its
// certificate's SHA-256 pin when one is given, else by the system's CAs.
package apiclient

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/termtext"
)

const (
	// Timeout bounds one JSON call, and a streamed answer until its first
	// byte (a log may be long).
	Timeout = 30 * time.Second
	// MaxJSON is the largest JSON answer read.
	MaxJSON = 64 << 20
)

// ErrBadServer: the server's URL is not one a client may use.
var ErrBadServer = errors.New("bad server URL")

// ErrUnreachable: the control plane did not answer at all.
var ErrUnreachable = errors.New("cannot reach the control plane")

// Error is a non-2xx answer; its text is the server's message.
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

// Options say which control plane, and how to reach it.
type Options struct {
	Server    string // http://HOST:PORT or https://HOST:PORT
	Token     string // "" sends none; the server then says what it wants
	Pin       string // for https: 64 hex digits of the certificate's SHA-256; "" trusts the system's CAs
	UserAgent string
}

// Client talks to one control plane.
type Client struct {
	server string // as given, for messages
	base   *url.URL
	token  string
	agent  string
	hc     *http.Client
}

// New checks the options and returns a client. It makes no call.
func New(o Options) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(o.Server, "/"))
	switch {
	case err == nil && u.User != nil:
		return nil, fmt.Errorf("%w: no credentials in the URL: give a token instead", ErrBadServer)
	case err == nil && (u.RawQuery != "" || u.Fragment != "" || u.ForceQuery):
		return nil, fmt.Errorf("%w: no query or fragment in the URL", ErrBadServer)
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "":
		return nil, fmt.Errorf("%w %q: want http://HOST:PORT or https://HOST:PORT", ErrBadServer, o.Server)
	}
	token := strings.TrimSpace(o.Token)
	if strings.ContainsFunc(token, func(r rune) bool { return r < 0x21 || r == 0x7f }) {
		return nil, errors.New("the API token contains spaces or control characters")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ResponseHeaderTimeout = Timeout
	if o.Pin != "" {
		if u.Scheme != "https" {
			return nil, errors.New("a certificate pin needs an https server")
		}
		pin, err := ParsePin(o.Pin)
		if err != nil {
			return nil, fmt.Errorf("certificate pin: %w", err)
		}
		tr.TLSClientConfig = agentapi.PinnedTLS(pin)
	}
	ua := o.UserAgent
	if ua == "" {
		ua = "tandem"
	}
	return &Client{server: u.String(), base: u, token: token, agent: ua, hc: &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}, nil
}

// Server is the control plane's URL.
func (c *Client) Server() string { return c.server }

// HTTPS reports whether the client talks TLS.
func (c *Client) HTTPS() bool { return c.base.Scheme == "https" }

// TokenInClear reports whether the token would cross a network
// unencrypted: plain http to anything but loopback.
func (c *Client) TokenInClear() bool {
	if c.token == "" || c.HTTPS() {
		return false
	}
	host := c.base.Hostname()
	if host == "localhost" {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsLoopback()
}

// Do sends a request (body, when not nil, as JSON) and returns a 2xx
// response, whose body the caller closes. Any other answer is an *Error,
// and no answer an ErrUnreachable. path is already escaped.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, body any) (*http.Response, error) {
	target := c.base.String() + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.agent)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.unreachable(err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, c.statusError(resp)
}

// Call sends in (when not nil) as JSON, decodes the answer into out and
// returns it raw too (to print as it came).
func (c *Client) Call(ctx context.Context, method, path string, query url.Values, in, out any) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	resp, err := c.Do(ctx, method, path, query, in)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxJSON+1))
	if err != nil {
		return nil, c.unreachable(err)
	}
	if len(b) > MaxJSON {
		return nil, fmt.Errorf("%s: answer over %d MiB", path, MaxJSON>>20)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return nil, fmt.Errorf("%s: bad answer from the control plane: %w", path, err)
	}
	return b, nil
}

func (c *Client) unreachable(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // its text repeats the URL
	}
	var ua x509.UnknownAuthorityError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w at %s: connection refused (is it running? --server or $TANDEM_SERVER names it)",
			ErrUnreachable, c.server)
	case errors.As(err, &ua):
		return fmt.Errorf("%w at %s: %w (give --pin, the sha256 `tandem server` prints, or $TANDEM_PIN)",
			ErrUnreachable, c.server, err)
	}
	return fmt.Errorf("%w at %s: %w", ErrUnreachable, c.server, err)
}

func (c *Client) statusError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var eb struct {
		Error string `json:"error"`
	}
	msg := resp.Status
	if json.Unmarshal(b, &eb) == nil && eb.Error != "" {
		msg = eb.Error
	} else if t := strings.TrimSpace(string(b)); t != "" {
		msg += ": " + termtext.Cut(t, 200)
	}
	if resp.StatusCode == http.StatusUnauthorized && c.token == "" {
		msg += " (no API token: give --token, $TANDEM_TOKEN or --token-file)"
	}
	// The server's text goes to a terminal.
	return &Error{Status: resp.StatusCode, Msg: termtext.Clean(msg)}
}

// ParsePin checks a certificate pin, the SHA-256 of its DER in hex (any
// case), and returns it in lower case.
func ParsePin(s string) (string, error) {
	pin := strings.ToLower(strings.TrimSpace(s))
	if len(pin) != 64 || strings.Trim(pin, "0123456789abcdef") != "" {
		return "", errors.New("want the 64 hex digits of the certificate's SHA-256")
	}
	return pin, nil
}

// PinOfCertFile is the pin of the first certificate in a PEM file
// (a control plane's tls/cert.pem); "" and no error if there is no file.
func PinOfCertFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("certificate pin: %w", err)
	}
	for rest := b; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			return "", fmt.Errorf("certificate pin: %s holds no certificate", path)
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return "", fmt.Errorf("certificate pin: %s: %w", path, err)
		}
		return agentapi.Fingerprint(blk.Bytes), nil
	}
}
