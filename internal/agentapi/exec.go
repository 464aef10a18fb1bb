package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"

	"github.com/coder/websocket"
)

// Exec sessions (`tandem ssh`): a shell or a command in a running job's VM,
// carried CLI → control plane → agent → guest over connections that exist
// or that the agent opens itself: no SSH daemon, nothing listening on the
// VM's network.
//
// Each hop is a WebSocket of binary messages, the first byte of each its
// kind (ExecMsg*), the rest its payload. The client (the CLI; the control
// plane towards an agent) sends ExecMsgOpen first, then input, resizes and
// end of input; the far end sends output and, last, ExecMsgExit. Either
// side closing the WebSocket ends the session (its processes are killed).
//
// Towards a remote agent: the control plane sends CmdExec (Command.Exec)
// on the agent's stream; the agent dials back to the address that stream
// came from, GET PathExec+SESSION with its credentials, and the control
// plane joins that WebSocket to the CLI's. A session id is good for one
// dial, by the host it was sent to, within ExecDialTimeout.

// PathExec is where an agent dials back for an exec session: + session id.
const PathExec = "/agent/v1/exec/"

// Message kinds. Values are part of the wire format: never renumber.
const (
	ExecMsgOpen   byte = 1 // JSON ExecOpen; the first message, client → far end
	ExecMsgStdin  byte = 2 // raw input
	ExecMsgResize byte = 3 // JSON ExecSize
	ExecMsgEOF    byte = 4 // end of input (with a terminal: ^D)
	ExecMsgStdout byte = 5 // raw output (all of a terminal's)
	ExecMsgStderr byte = 6 // raw output
	ExecMsgExit   byte = 7 // JSON ExecResult; the last message, far end → client
)

// ExecMaxMessage bounds one message.
const ExecMaxMessage = 1 << 20

// ExecOpen opens a session: Argv (none: the job's user's login shell), with
// a terminal of Rows×Cols and TERM=Term when TTY.
type ExecOpen struct {
	Argv []string `json:"argv,omitempty"`
	TTY  bool     `json:"tty"`
	Rows uint16   `json:"rows,omitempty"`
	Cols uint16   `json:"cols,omitempty"`
	Term string   `json:"term,omitempty"`
}

// ExecSize is a terminal's new size.
type ExecSize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// ExecResult is how a session ended: the exit code (128+n and Signal when
// signal n killed it), or Error when it could not run at all.
type ExecResult struct {
	Code   int    `json:"code"`
	Signal string `json:"signal,omitempty"`
	Error  string `json:"error,omitempty"`
}

// ExecCommand is CmdExec's: dial back for session Session, to run in
// Runner's VM.
type ExecCommand struct {
	Session string `json:"session"`
	Runner  string `json:"runner"`
}

// ExecConn is one hop of an exec session.
type ExecConn interface {
	// Read returns the next message's kind and payload.
	Read(ctx context.Context) (kind byte, p []byte, err error)
	// Write sends one message; safe from several goroutines.
	Write(ctx context.Context, kind byte, p []byte) error
	// Close ends the hop; reason says why, to the far end (short).
	Close(reason string) error
}

// ErrExecMessage is a message that breaks the session's protocol.
var ErrExecMessage = errors.New("exec session: bad message")

// WS makes a WebSocket one hop of an exec session.
func WS(c *websocket.Conn) ExecConn {
	c.SetReadLimit(ExecMaxMessage + 1)
	return &wsConn{c: c}
}

type wsConn struct {
	c  *websocket.Conn
	mu sync.Mutex
}

func (w *wsConn) Read(ctx context.Context) (byte, []byte, error) {
	typ, p, err := w.c.Read(ctx)
	if err != nil {
		return 0, nil, err
	}
	if typ != websocket.MessageBinary || len(p) == 0 {
		return 0, nil, fmt.Errorf("%w: want a binary message with a kind", ErrExecMessage)
	}
	return p[0], p[1:], nil
}

func (w *wsConn) Write(ctx context.Context, kind byte, p []byte) error {
	if len(p) > ExecMaxMessage {
		return fmt.Errorf("%w: %d bytes", ErrExecMessage, len(p))
	}
	b := make([]byte, 1+len(p))
	b[0] = kind
	copy(b[1:], p)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.c.Write(ctx, websocket.MessageBinary, b)
}

func (w *wsConn) Close(reason string) error {
	if len(reason) > 120 {
		reason = reason[:120]
	}
	return w.c.Close(websocket.StatusNormalClosure, reason)
}

// WriteJSON sends a JSON message.
func WriteJSON(ctx context.Context, c ExecConn, kind byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.Write(ctx, kind, b)
}

// ExecWriter writes to c as messages of one kind (a session's stdout).
type ExecWriter struct {
	Ctx  context.Context
	Conn ExecConn
	Kind byte
}

func (w ExecWriter) Write(p []byte) (int, error) {
	const chunk = 32 << 10
	n := 0
	for len(p) > 0 {
		k := min(len(p), chunk)
		if err := w.Conn.Write(w.Ctx, w.Kind, p[:k]); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

var _ io.Writer = ExecWriter{}

// Bridge copies messages both ways between the client's hop a and the far
// end's hop b until either ends, then closes both. It is how the control
// plane joins the CLI to an agent.
func Bridge(ctx context.Context, a, b ExecConn) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	copyAll := func(dst, src ExecConn) {
		defer cancel()
		for {
			k, p, err := src.Read(ctx)
			if err != nil {
				return
			}
			if err := dst.Write(ctx, k, p); err != nil {
				return
			}
		}
	}
	go copyAll(b, a)
	copyAll(a, b)
	<-ctx.Done()
	a.Close("session over")
	b.Close("session over")
}

// DialExec dials back to the control plane at addr for exec session
// session (CmdExec), with the client's credentials and pinned TLS.
func (c *Client) DialExec(ctx context.Context, addr, session string) (ExecConn, error) {
	h := http.Header{}
	h.Set(HeaderVersion, fmt.Sprint(Version))
	h.Set(HeaderHost, c.cred.HostID)
	h.Set("Authorization", "Bearer "+c.cred.Credential)
	ws, resp, err := websocket.Dial(ctx, addr+PathExec+session, &websocket.DialOptions{HTTPClient: c.long, HTTPHeader: h})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("exec session %s: %s: %w", session, resp.Status, err)
		}
		return nil, fmt.Errorf("exec session %s: %w", session, err)
	}
	return WS(ws), nil
}

// StreamAddr is the address the client's stream last opened to: where
// CmdExec came from, and so where to dial back.
func (c *Client) StreamAddr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connected
}
