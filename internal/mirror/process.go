package mirror

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// supervise runs the registry until Stop, restarting it with back-off
// after Start has seen it ready. The first spawn's error goes to started;
// if the first child ends before Start saw it ready, firstExit is closed
// and supervise returns (Start reports it).
//
// The goroutine keeps its OS thread while it has a child: Pdeathsig fires
// when the thread that forked the child ends, and Go ends the thread of a
// goroutine that exits while locked to it; a thread reserved for us cannot
// be taken and ended by some other goroutine meanwhile. It unlocks the
// thread before it returns rather than let it end: the thread may have
// forked other processes with Pdeathsig (QEMU) before we locked it.
func (m *Mirror) supervise(started chan<- error, firstExit chan<- struct{}) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(m.done)
	backoff := minBackoff
	for first := true; ; first = false {
		cmd, err := m.spawn()
		if first {
			started <- err
			if err != nil {
				return
			}
		}
		if err != nil {
			select {
			case <-m.stop:
				return
			default:
			}
			m.log.Warn("registry mirror: restart failed", "err", err, "retry_in", backoff)
		} else {
			t0 := time.Now()
			err := cmd.Wait()
			m.mu.Lock()
			m.proc = nil
			if !m.ready {
				m.failed = true
				m.mu.Unlock()
				close(firstExit)
				return
			}
			m.mu.Unlock()
			select {
			case <-m.stop:
				m.log.Info("registry mirror stopped")
				return
			default:
			}
			if time.Since(t0) >= stableAfter {
				backoff = minBackoff
			}
			m.log.Warn("registry mirror exited: restarting", "err", err, "retry_in", backoff, "output", m.tail.String())
		}
		select {
		case <-m.stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
		m.mu.Lock()
		m.restarts++
		m.mu.Unlock()
	}
}

// spawn starts one registry process.
func (m *Mirror) spawn() (*exec.Cmd, error) {
	cmd := exec.Command(m.cfg.Binary, "serve", m.cfgPath)
	cmd.Dir = m.cfg.CacheDir
	cmd.Env = childEnv(os.Environ())
	cmd.Stdout = &lineWriter{m: m}
	cmd.Stderr = &lineWriter{m: m}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.stop:
		return nil, fmt.Errorf("stopped")
	default:
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", m.cfg.Binary, err)
	}
	m.proc = cmd.Process
	return cmd, nil
}

// childEnv is what the registry inherits: a PATH and the proxy and CA
// settings its HTTP client honours. Nothing else, in particular no
// REGISTRY_* variable, which would override the config we wrote.
func childEnv(env []string) []string {
	out := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR":
			out = append(out, kv)
		}
	}
	return out
}

// lineWriter splits the registry's output into lines, logs them and keeps
// the last ones for error messages.
type lineWriter struct {
	m   *Mirror
	buf []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.m.logLine(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 64<<10 { // a line without end: log what there is
		w.m.logLine(string(w.buf))
		w.buf = nil
	}
	return len(p), nil
}

// logLine forwards one line of the registry's output: its JSON log lines
// at debug (warnings and errors at warn), anything else (a panic) at warn.
func (m *Mirror) logLine(line string) {
	line = strings.TrimRight(line, "\r")
	if strings.TrimSpace(line) == "" {
		return
	}
	var rec map[string]any
	if json.Unmarshal([]byte(line), &rec) != nil {
		// Not the registry's log: Go's own words when it panics. The
		// first line says why; the stack trace after it is for debugging.
		if isTraceLine(line) {
			m.log.Debug("registry mirror: " + line)
			return
		}
		m.tail.add(line)
		m.log.Warn("registry mirror: " + line)
		return
	}
	msg, _ := rec["msg"].(string)
	level, _ := rec["level"].(string)
	if strings.HasPrefix(msg, "Registry does not implement R") {
		level = "debug" // every proxy says so at start: it cannot delete repositories, nor should it
	}
	m.tail.add(level + ": " + msg + errSuffix(rec))
	lv := slog.LevelDebug
	switch level {
	case "warning", "error", "fatal", "panic":
		lv = slog.LevelWarn
	}
	if !m.log.Enabled(context.Background(), lv) {
		return
	}
	keys := make([]string, 0, len(rec))
	for k := range rec {
		switch k {
		case "msg", "level", "time", "go.version", "instance.id", "service", "version":
		default:
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	attrs := make([]any, 0, 2*len(keys))
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, rec[k]))
	}
	m.log.Log(context.Background(), lv, "registry mirror: "+msg, attrs...)
}

// isTraceLine reports whether a line is part of a Go stack trace.
func isTraceLine(line string) bool {
	return strings.HasPrefix(line, "\t") || strings.HasPrefix(line, "goroutine ") ||
		strings.HasPrefix(line, "created by ") || strings.HasSuffix(line, ")") && !strings.Contains(line, ": ")
}

func errSuffix(rec map[string]any) string {
	for _, k := range []string{"err.message", "error"} {
		if v, ok := rec[k].(string); ok && v != "" {
			return " (" + v + ")"
		}
	}
	return ""
}

// tailBuffer keeps the last n lines.
type tailBuffer struct {
	mu    sync.Mutex
	n     int
	lines []string
}

func newTailBuffer(n int) *tailBuffer { return &tailBuffer{n: n} }

func (t *tailBuffer) add(line string) {
	if len(line) > 1000 {
		line = line[:1000] + "…"
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, line)
	if len(t.lines) > t.n {
		t.lines = t.lines[len(t.lines)-t.n:]
	}
}

// String is the last lines, or a note that there were none.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return "(no output)"
	}
	// The lines that say why are warnings, errors or a panic, near the end.
	var lines []string
	for _, l := range t.lines {
		if !strings.HasPrefix(l, "info: ") && !strings.HasPrefix(l, "debug: ") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		lines = t.lines
	}
	if len(lines) > 12 {
		lines = lines[len(lines)-12:]
	}
	return strings.Join(lines, " | ")
}
