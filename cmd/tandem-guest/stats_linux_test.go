//go:build linux

package main

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/guest"
)

// The stats are read from a /proc like the guest kernel's, and what cannot
// be read is zero, not an error.
func TestReadStats(t *testing.T) {
	proc := t.TempDir()
	files := map[string]string{
		"loadavg": "1.50 0.80 0.30 2/123 4567\n",
		"meminfo": "MemTotal:        2048000 kB\nMemFree:          100000 kB\nMemAvailable:    1024000 kB\n",
		"vmstat":  "nr_free_pages 25000\noom_kill 3\n",
		"stat":    "cpu  100 20 30 5000 40 5 5 7 0 0\ncpu0 100 20 30 5000 40 5 5 7 0 0\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(proc, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, pid := range []string{"1", "42", "self-not-a-pid"} {
		os.Mkdir(filepath.Join(proc, pid), 0o755)
	}
	s := readStats(proc)
	if s.CPUSeconds != 1.6 || s.CPUTotalSeconds != 52.07 || s.Load1 != 1.5 || s.MemTotal != 2048000*1024 || s.MemAvailable != 1024000*1024 || s.OOMKills != 3 || s.Procs != 2 ||
		s.DiskTotal <= 0 || s.DiskUsed <= 0 || s.DiskUsed > s.DiskTotal {
		t.Errorf("stats %+v", s)
	}
	if s := readStats(filepath.Join(proc, "nowhere")); s.Load1 != 0 || s.MemTotal != 0 || s.Procs != 0 {
		t.Errorf("stats of a missing /proc: %+v", s)
	}
}

// The "cpu" line is read as busy and total time; a line too short or
// unknown reads as none, and a negative count (a confused kernel) as 0.
func TestCPUSeconds(t *testing.T) {
	for _, c := range []struct {
		stat        string
		busy, total float64
	}{
		{"cpu  100 20 30 5000 40 5 5 7\n", 1.6, 52.07},
		{"cpu  100 20 30 5000 40 5 5 7 300 2\ncpu0 1 1 1 1 1 1 1 1\n", 1.6, 52.07},
		{"cpu  -100 0 0 100 0 0 0 0\n", 0, 1},
		{"cpu  100 20 30 5000 40 5 5\n", 0, 0},
		{"cpu0 100 20 30 5000 40 5 5 7\n", 0, 0},
		{"", 0, 0},
	} {
		if b, tot := cpuSeconds([]byte(c.stat)); b != c.busy || tot != c.total {
			t.Errorf("%q: busy %v total %v, want %v %v", c.stat, b, tot, c.busy, c.total)
		}
	}
}

// Heartbeats carry the stats.
func TestHeartbeatCarriesStats(t *testing.T) {
	gc, hc := net.Pipe()
	defer hc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		defer gc.Close()
		runSession(ctx, guest.NewConn(gc), sessionConfig{
			Hello:     guest.Hello{Version: guest.Version, Arch: runtime.GOARCH},
			Heartbeat: 10 * time.Millisecond, Runner: testRunner(), Con: newConsole(io.Discard, nil),
			Stats: func() guest.Stats { return guest.Stats{Procs: 42, MemTotal: 7} },
		})
	}()
	h := guest.NewConn(hc)
	hc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		typ, p, err := h.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if typ != guest.FrameHeartbeat {
			continue
		}
		var s guest.Stats
		if err := guest.Decode(typ, p, &s); err != nil || s.Procs != 42 || s.MemTotal != 7 {
			t.Fatalf("heartbeat payload %q: %+v, %v", p, s, err)
		}
		return
	}
}
