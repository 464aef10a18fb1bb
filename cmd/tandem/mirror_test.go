package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/config"
	"github.com/tandem-ci/tandem/internal/hostnet"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/mirror"
	"github.com/tandem-ci/tandem/internal/syncbuf"
	"github.com/tandem-ci/tandem/internal/testenv"
)

func TestMirrorFlags(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("token123\n"), 0o600)
	parse := func(def bool, args ...string) (*mirrorFlags, error) {
		f := &mirrorFlags{}
		cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
		f.add(cmd, def)
		cmd.SetArgs(args)
		return f, cmd.Execute()
	}

	// No upstream, no mirror: Tandem names no registry of its own.
	f, _ := parse(true)
	m, secret, err := f.config()
	if err != nil || m.On() || m.Explicit() || m.Port != 5000 || m.Upstream != "" || secret != nil {
		t.Errorf("agent defaults: %+v %v", m, err)
	}
	f, _ = parse(true, "--mirror-upstream", "https://registry.example")
	if m, _, err := f.config(); err != nil || !m.On() || !m.Explicit() {
		t.Errorf("an upstream turns it on: %+v %v", m, err)
	}
	f, _ = parse(false, "--mirror")
	if _, _, err := f.config(); err == nil || !strings.Contains(err.Error(), "--mirror-upstream") {
		t.Errorf("--mirror without an upstream: %v", err)
	}
	f, _ = parse(false)
	if m, _, err := f.config(); err != nil || m.On() {
		t.Errorf("run defaults: %+v %v", m, err)
	}
	f, _ = parse(false, "--mirror", "--mirror-upstream", "https://registry.example", "--mirror-port", "5001", "--mirror-username", "bot", "--mirror-password-file", pw)
	m, secret, err = f.config()
	if err != nil || !m.On() || !m.Explicit() || m.Port != 5001 || m.Username != "bot" || string(secret) != "token123" {
		t.Errorf("explicit: %+v %v", m, err)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--mirror-port", "0"}, "--mirror-port 0"},
		{[]string{"--mirror-upstream", "ftp://x"}, "--mirror-upstream"},
		{[]string{"--mirror-username", "u"}, "give both"},
		{[]string{"--mirror-cache-dir", "rel"}, "absolute path"},
		{[]string{"--mirror-username", "u", "--mirror-password-file", filepath.Join(dir, "none")}, "--mirror-password-file"},
	} {
		f, _ := parse(true, append([]string{"--mirror-upstream", "https://registry.example"}, tc.args...)...)
		if _, _, err := f.config(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want %q", tc.args, err, tc.want)
		}
	}
	// Bad mirror flags do not matter with the mirror off.
	f, _ = parse(true, "--mirror=false", "--mirror-port", "0")
	if _, _, err := f.config(); err != nil {
		t.Errorf("mirror off: %v", err)
	}
}

func TestStartMirrorWithoutNetwork(t *testing.T) {
	g := &globals{dataDir: t.TempDir(), log: slog.New(slog.DiscardHandler)}
	h := &jobvm.Host{}
	f := &mirrorFlags{}
	cmd := &cobra.Command{Use: "x"}
	f.add(cmd, true)
	m, pw, _ := f.config()
	stop, err := startMirror(context.Background(), g, h, m, pw, g.dataDir, true)
	if err != nil || h.Mirror != "" {
		t.Errorf("default mirror, no network: %v %q", err, h.Mirror)
	}
	stop()
	cmd.Flags().Set("mirror", "true")
	cmd.Flags().Set("mirror-upstream", "https://registry.example")
	m, pw, _ = f.config()
	if _, err := startMirror(context.Background(), g, h, m, pw, g.dataDir, true); err == nil || !strings.Contains(err.Error(), "needs the VM network") {
		t.Errorf("explicit mirror, no network: %v", err)
	}
}

// TestStartMirrorOnBridge: the mirror on a real host network's gateway,
// started while its upstream is down (so retried in the background), then
// up once the upstream is.
func TestStartMirrorOnBridge(t *testing.T) {
	testenv.RequireRoot(t)
	if testenv.NetnsName() == "" {
		t.Skip("changes the network: needs the private namespace the tests make without -short")
	}
	if _, err := mirror.FindBinary(""); err != nil {
		t.Fatal(err)
	}
	old := mirrorRetryMin
	mirrorRetryMin = 200 * time.Millisecond
	t.Cleanup(func() { mirrorRetryMin = old })

	n, err := hostnet.New(hostnet.Config{Bridge: "tdmmirt0", Subnet: netip.MustParsePrefix("10.231.201.0/24"), StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.RemoveRules(context.Background())
		exec.Command("ip", "link", "del", "tdmmirt0").Run()
	})
	if err := n.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upAddr := ln.Addr().String()
	ln.Close()
	var logs syncbuf.Buffer
	g := &globals{dataDir: t.TempDir(), log: slog.New(slog.NewTextHandler(&logs, nil))}
	mc := config.Mirror{Port: 5000, Upstream: "http://" + upAddr, InsecureUpstream: true}
	ctx := context.Background()

	// Explicitly enabled, no retry (tandem run --mirror): an error.
	on := true
	explicit := mc
	explicit.Enabled = &on
	if _, err := startMirror(ctx, g, &jobvm.Host{Net: n}, explicit, nil, g.dataDir, false); err == nil ||
		!strings.Contains(err.Error(), "connection refused") {
		t.Errorf("explicit mirror, upstream down: %v", err)
	}

	h := &jobvm.Host{Net: n}
	stop, err := startMirror(ctx, g, h, mc, nil, g.dataDir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if h.Mirror != "http://10.231.201.1:5000" {
		t.Errorf("VMs pointed at %q", h.Mirror)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yml")
	os.WriteFile(cfg, []byte("version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: "+dir+"}}\nhttp: {addr: "+upAddr+"}\n"), 0o600)
	up := exec.Command("docker-registry", "serve", cfg)
	up.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { up.Process.Kill(); up.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(h.Mirror + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the mirror never came up:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	if resp, err := http.Get(h.Mirror + "/v2/"); err == nil {
		resp.Body.Close()
		t.Error("the mirror answers after stop")
	}
	if !strings.Contains(logs.String(), "registry mirror did not start: retrying in the background") {
		t.Errorf("no warning:\n%s", logs.String())
	}
}
