package apiclient

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"

	"github.com/coder/websocket"

	"github.com/tandem-ci/tandem/internal/agentapi"
)

// Dial opens a WebSocket to path (already escaped) for an exec session
// (agentapi's exec.go), with the token in its Authorization header. A
// refusal is an *Error with the server's message.
func (c *Client) Dial(ctx context.Context, path string) (agentapi.ExecConn, error) {
	// WebSockets need HTTP/1.1: a transport of the client's (its pin) that
	// does not offer HTTP/2.
	tr := c.hc.Transport.(*http.Transport).Clone()
	tr.ForceAttemptHTTP2 = false
	tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	hc := &http.Client{Transport: tr, CheckRedirect: c.hc.CheckRedirect}
	h := http.Header{}
	h.Set("User-Agent", c.agent)
	if c.token != "" {
		h.Set("Authorization", "Bearer "+c.token)
	}
	ws, resp, err := websocket.Dial(ctx, c.base.String()+path, &websocket.DialOptions{HTTPClient: hc, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			if resp.Body == nil {
				resp.Body = io.NopCloser(http.NoBody)
			}
			return nil, c.statusError(resp)
		}
		return nil, c.unreachable(err)
	}
	return agentapi.WS(ws), nil
}
