package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ci/tandem/internal/config"
	"github.com/tandem-ci/tandem/internal/jobvm"
	"github.com/tandem-ci/tandem/internal/mirror"
)

// mirrorFlags configure the host's registry mirror where there is no
// config file (tandem agent, tandem run); tandem up reads agent.mirror.
type mirrorFlags struct {
	cmd                                        *cobra.Command
	enabled                                    bool
	port                                       int
	upstream, username, passwordFile, cacheDir string
	cacheMax                                   string
	insecure                                   bool
}

func (f *mirrorFlags) add(cmd *cobra.Command, enabled bool) {
	f.cmd = cmd
	fl := cmd.Flags()
	fl.BoolVar(&f.enabled, "mirror", enabled, "run a pull-through cache (docker-registry) of --mirror-upstream on the bridge address for the VMs' Docker daemons")
	fl.IntVar(&f.port, "mirror-port", mirror.DefaultPort, "the mirror's port on the bridge address")
	fl.StringVar(&f.upstream, "mirror-upstream", "", "the registry the mirror caches, e.g. Docker Hub's registry API endpoint (none: no mirror)")
	fl.StringVar(&f.username, "mirror-username", "", "user name for the upstream registry (with --mirror-password-file)")
	fl.StringVar(&f.passwordFile, "mirror-password-file", "", "file holding the upstream registry's password or access token")
	fl.StringVar(&f.cacheDir, "mirror-cache-dir", "", "the mirror's cache (default <data-dir>/mirror)")
	fl.StringVar(&f.cacheMax, "mirror-cache-max", "20GiB", "cap of the mirror's cache: past it the least recently used layers are evicted")
	fl.BoolVar(&f.insecure, "mirror-insecure-upstream", false, "allow an http:// upstream (images and credentials travel unencrypted)")
}

// config checks the flags and returns them as agent.mirror would be.
func (f *mirrorFlags) config() (config.Mirror, config.Secret, error) {
	enabled := f.enabled
	m := config.Mirror{Port: f.port, Upstream: f.upstream, Username: f.username, PasswordFile: f.passwordFile, CacheDir: f.cacheDir,
		InsecureUpstream: f.insecure}
	if f.cacheMax != "" {
		size, err := config.ParseSize(f.cacheMax)
		if err != nil || size <= 0 {
			return m, nil, fmt.Errorf("--mirror-cache-max %q: want a size, e.g. 20GiB", f.cacheMax)
		}
		m.CacheMax = size
	}
	if !enabled || f.cmd != nil && f.cmd.Flags().Changed("mirror") {
		m.Enabled = &enabled // set by the operator (or off): explicit
	}
	if !m.On() {
		return m, nil, nil
	}
	if f.upstream == "" {
		return m, nil, errors.New("--mirror needs --mirror-upstream: the registry to cache (Tandem names none by default)")
	}
	if f.port < 1 || f.port > 65535 {
		return m, nil, fmt.Errorf("--mirror-port %d: want 1 to 65535", f.port)
	}
	if err := mirror.CheckUpstream(f.upstream, f.insecure); err != nil {
		return m, nil, fmt.Errorf("--mirror-upstream: %w", err)
	}
	if (f.username == "") != (f.passwordFile == "") {
		return m, nil, errors.New("give both --mirror-username and --mirror-password-file, or neither")
	}
	if f.cacheDir != "" && !filepath.IsAbs(f.cacheDir) {
		return m, nil, fmt.Errorf("--mirror-cache-dir %q: want an absolute path", f.cacheDir)
	}
	if f.passwordFile == "" {
		return m, nil, nil
	}
	b, err := os.ReadFile(f.passwordFile)
	if err != nil {
		return m, nil, fmt.Errorf("--mirror-password-file: %w", err)
	}
	if pw := strings.TrimRight(string(b), "\r\n"); pw != "" && !strings.ContainsAny(pw, "\r\n") {
		return m, config.Secret(pw), nil
	}
	return m, nil, fmt.Errorf("--mirror-password-file %s: want one line", f.passwordFile)
}

// Restart delays of a mirror that could not start (its upstream
// unreachable at boot, say); variables for tests.
var (
	mirrorRetryMin = 10 * time.Second
	mirrorRetryMax = 5 * time.Minute
)

// startMirror runs the host's registry mirror on the bridge's address and
// points h's VMs at it. The returned function stops it (call it after the
// VMs are gone). With the mirror off, or no VM network, it does nothing.
//
// A mirror that cannot run at all (bad settings, no docker-registry
// installed, its port taken) fails the command if the operator enabled it
// explicitly, and is a warning if it was on by default. One that fails to
// start for other reasons — distribution 2.8 exits when its upstream is
// unreachable at start-up — is retried in the background if retry is set;
// meanwhile the VMs are pointed at it all the same: Docker falls back to
// the registry itself when a mirror does not answer.
func startMirror(ctx context.Context, g *globals, h *jobvm.Host, mc config.Mirror, password config.Secret,
	dataDir string, retry bool) (stop func(), err error) {
	noop := func() {}
	if !mc.On() {
		return noop, nil
	}
	if h.Net == nil {
		if mc.Explicit() {
			return noop, errors.New("the registry mirror needs the VM network (no --no-network)")
		}
		return noop, nil
	}
	cfg := mirror.Config{
		Listen:   net.JoinHostPort(h.Net.Gateway().String(), strconv.Itoa(mc.Port)),
		Upstream: mc.Upstream, InsecureUpstream: mc.InsecureUpstream, Username: mc.Username, Password: string(password),
		CacheDir: mc.CachePath(dataDir), CacheMaxBytes: int64(mc.CacheMax) << 20, Logger: g.log,
	}
	m, err := mirror.Start(ctx, cfg)
	switch {
	case err == nil:
		h.Mirror = m.URL()
		return m.Stop, nil
	case errors.Is(err, mirror.ErrConfig) || errors.Is(err, syscall.EADDRINUSE) || !retry:
		if mc.Explicit() {
			return noop, err
		}
		g.log.Warn("registry mirror off: VMs pull from the registry directly", "err", err)
		return noop, nil
	}
	g.log.Warn("registry mirror did not start: retrying in the background; until then VMs pull from the registry directly",
		"err", err, "retry_in", mirrorRetryMin)
	h.Mirror = "http://" + cfg.Listen
	rctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var running *mirror.Mirror
	done := make(chan struct{})
	go func() {
		defer close(done)
		for wait := mirrorRetryMin; ; wait = min(2*wait, mirrorRetryMax) {
			select {
			case <-rctx.Done():
				return
			case <-time.After(wait):
			}
			m, err := mirror.Start(rctx, cfg)
			if err == nil {
				mu.Lock()
				running = m
				mu.Unlock()
				return
			}
			if rctx.Err() != nil {
				return
			}
			g.log.Warn("registry mirror still not started", "err", err, "retry_in", min(2*wait, mirrorRetryMax))
		}
	}()
	return func() {
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		if running != nil {
			running.Stop()
		}
	}, nil
}
