package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// qmp is a minimal client of the QEMU Machine Protocol: capability
// negotiation, commands, and the events that say how a VM stopped.
type qmp struct {
	conn net.Conn

	mu      sync.Mutex // one command at a time
	replies chan qmpMessage

	evMu     sync.Mutex
	shutdown *qmpShutdown // the SHUTDOWN event, once seen
	closed   chan struct{}
}

type qmpMessage struct {
	Return json.RawMessage `json:"return,omitempty"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error,omitempty"`
	Event string          `json:"event,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
	QMP   json.RawMessage `json:"QMP,omitempty"`
}

type qmpShutdown struct {
	Guest  bool   `json:"guest"`
	Reason string `json:"reason"`
}

// dialQMP connects to a QMP socket, retrying until ctx ends (QEMU creates the
// socket during start-up), and negotiates capabilities.
func dialQMP(ctx context.Context, path string) (*qmp, error) {
	var conn net.Conn
	var err error
	for {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "unix", path)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect qmp: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	q := &qmp{conn: conn, replies: make(chan qmpMessage, 1), closed: make(chan struct{})}
	r := bufio.NewReader(conn)
	// The greeting comes first and alone.
	if dl, ok := ctx.Deadline(); ok {
		conn.SetReadDeadline(dl)
	}
	line, err := r.ReadBytes('\n')
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	var greet qmpMessage
	if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp greeting: unexpected %q", line)
	}
	conn.SetReadDeadline(time.Time{})
	go q.readLoop(r)
	if _, err := q.execute(ctx, "qmp_capabilities", nil); err != nil {
		q.close()
		return nil, err
	}
	return q, nil
}

func (q *qmp) readLoop(r *bufio.Reader) {
	defer close(q.closed)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var m qmpMessage
		if json.Unmarshal(line, &m) != nil {
			continue
		}
		if m.Event != "" {
			if m.Event == "SHUTDOWN" {
				var s qmpShutdown
				if json.Unmarshal(m.Data, &s) == nil {
					q.evMu.Lock()
					q.shutdown = &s
					q.evMu.Unlock()
				}
			}
			continue
		}
		select {
		case q.replies <- m:
		default: // a reply nobody waits for (its caller gave up)
		}
	}
}

// errQMPClosed is returned when QEMU closed the connection, which it does when it exits.
var errQMPClosed = errors.New("qmp connection closed")

func (q *qmp) execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case m := <-q.replies:
		if m.Error != nil {
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, m.Error.Class, m.Error.Desc)
		}
		return m.Return, nil
	case <-q.closed:
		return nil, fmt.Errorf("qmp %s: %w", cmd, errQMPClosed)
	case <-ctx.Done():
		return nil, fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

// shutdownReason returns the reason of the SHUTDOWN event, if one came.
func (q *qmp) shutdownReason() string {
	q.evMu.Lock()
	defer q.evMu.Unlock()
	if q.shutdown == nil {
		return ""
	}
	return q.shutdown.Reason
}

func (q *qmp) close() { q.conn.Close() }
