// Package mirror runs a host's Docker Hub pull-through cache: a registry
// mirror the host's VMs reach at the bridge address, so that an image one
// job pulled is served from the host's disk to every later job instead of
// from the upstream registry.
//
// The cache is the CNCF distribution registry ("docker-registry" in Debian,
// version 2.8) in its proxy mode, run as a child process with a config this
// package writes. It is the reference implementation of the registry API,
// Debian packages it (apt-get install docker-registry), so no registry code
// and no dependency tree of its own enter Tandem's binary, and its proxy mode
// is exactly a pull-through cache: blobs and manifests are fetched from the
// upstream once, verified by digest, stored and then served locally.
//
// What the cache does and does not save, measured against distribution
// 2.8.2's proxy (see the tests):
//
//   - A blob (layer or image config) is fetched from the upstream on its
//     first request only; later requests, by any VM, are served from disk.
//     The first miss of a blob fetches it twice upstream (once to stream to
//     the client, once to store), and until that store completes a second
//     request for the same blob goes upstream again.
//   - A manifest by digest is served locally once cached.
//   - A manifest by tag is always re-validated: the proxy asks the upstream
//     what the tag points at (one HEAD request) and serves the cached
//     manifest if the digest is unchanged; with the upstream unreachable it
//     falls back to the tag it last saw.
//   - Cached content expires after seven days (distribution 2.8's fixed
//     proxy TTL); deleting is enabled in the storage config only so that the
//     proxy's expiry scheduler can remove it. Clients cannot push or delete:
//     a proxy registry refuses both.
//   - distribution 2.8 contacts the upstream once at start-up (GET /v2/, to
//     learn its token endpoint) and exits if it cannot: a mirror cannot be
//     started while its upstream is unreachable. Start reports that with the
//     registry's own words; a running mirror keeps serving its cache when
//     the upstream goes away, and is restarted with back-off if it dies.
//
// Upstream credentials (Username, Password) are written only into the
// registry's config file (mode 0600, in CacheDir) and never logged. Images
// pulled with them are then served to every VM on the host without
// credentials: configure an account that may only read what every job may.
package mirror

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tandem-ci/tandem/internal/fsutil"
)

// DefaultPort is the port a host's mirror listens on by default.
const DefaultPort = 5000

// BinaryName is the registry's executable as Debian installs it.
const BinaryName = "docker-registry"

// ErrConfig marks a Config that Start refuses before starting anything: a
// bad address or URL, a missing binary. Callers may treat it as permanent
// and other Start errors as transient.
var ErrConfig = errors.New("bad mirror config")

// binaryFallback is where Debian installs the registry, for a PATH
// without /usr/bin; a variable for tests.
var binaryFallback = "/usr/bin/" + BinaryName

// Timeouts; variables so that tests can shorten them.
var (
	readyTimeout = 15 * time.Second // start → GET /v2/ answers
	stopGrace    = 10 * time.Second // SIGTERM → SIGKILL
	minBackoff   = time.Second      // first restart delay
	maxBackoff   = 30 * time.Second // restart delays double up to this
	stableAfter  = 30 * time.Second // a child up this long resets the back-off
)

// Config describes one mirror.
type Config struct {
	// Listen is host:port, the host an IP address (the bridge's, e.g.
	// 172.30.0.1:5000). Port 0 picks a free port (tests).
	Listen string
	// Upstream is the registry mirrored, an http(s) URL without a path:
	// for a Docker Hub cache, Docker Hub's registry API endpoint. There is
	// no default: the operator names the registry.
	Upstream string
	// InsecureUpstream allows an http:// upstream: images, and any
	// credentials, then travel unencrypted. Off, only https:// is taken.
	InsecureUpstream bool
	// Username and Password, if set, authenticate to the upstream.
	Username, Password string
	// CacheMaxBytes caps the cache's blobs: past it the least recently
	// used are evicted (the mirror fetches them again when asked). 0: no
	// cap.
	CacheMaxBytes int64
	// CacheDir holds the cache and the registry's config file.
	CacheDir string
	// Binary is the registry executable (default: docker-registry on PATH).
	Binary string
	// Logger receives the registry's log: debug, and warnings and errors at
	// warn. Nil discards it.
	Logger *slog.Logger
}

// Mirror is a running registry mirror.
type Mirror struct {
	cfg     Config
	addr    string // host:port, port resolved
	cfgPath string
	log     *slog.Logger
	tail    *tailBuffer

	stopOnce sync.Once
	stop     chan struct{} // closed by Stop
	done     chan struct{} // closed when the supervisor has ended

	mu       sync.Mutex
	proc     *os.Process // the current child, nil between children
	ready    bool        // Start succeeded: the supervisor restarts children
	failed   bool        // the first child ended before Start saw it ready
	restarts int
}

// CheckUpstream reports whether s is usable as an upstream registry URL:
// http or https, a host, no credentials, query or path.
func CheckUpstream(s string, insecure bool) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("upstream %q: %w", s, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("upstream %q: want an http or https URL", s)
	case u.Scheme == "http" && !insecure:
		return fmt.Errorf("upstream %q: http sends images and credentials unencrypted: use https, or allow it explicitly (insecure_upstream)", s)
	case u.Host == "" || u.Opaque != "":
		return fmt.Errorf("upstream %q: no host", s)
	case u.User != nil:
		return fmt.Errorf("upstream %q: give credentials as username and password, not in the URL", s)
	case u.RawQuery != "" || u.Fragment != "" || strings.Trim(u.Path, "/") != "":
		return fmt.Errorf("upstream %q: want a registry's root URL, with no path or query", s)
	}
	return nil
}

// checkListen validates host:port and returns the address and port.
func checkListen(s string) (netip.Addr, int, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("listen %q: want IP:PORT, e.g. 172.30.0.1:%d", s, DefaultPort)
	}
	a, err := netip.ParseAddr(host)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, 0, fmt.Errorf("listen %q: %q is not an IP address", s, host)
	}
	if a.IsUnspecified() {
		return netip.Addr{}, 0, fmt.Errorf("listen %q: want the address VMs reach (the bridge's), not %s", s, a)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return netip.Addr{}, 0, fmt.Errorf("listen %q: bad port %q", s, port)
	}
	return a, p, nil
}

// FindBinary returns the registry executable: bin if set, else
// docker-registry on PATH or in /usr/bin.
func FindBinary(bin string) (string, error) {
	if bin != "" {
		p, err := exec.LookPath(bin)
		if err != nil {
			return "", fmt.Errorf("registry binary %s: %w", bin, err)
		}
		return p, nil
	}
	for _, b := range []string{BinaryName, binaryFallback} {
		if p, err := exec.LookPath(b); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: apt-get install docker-registry", BinaryName)
}

// validate checks cfg, fills its defaults and resolves port 0.
func (cfg *Config) validate() (addr string, err error) {
	var errs []error
	a, port, err := checkListen(cfg.Listen)
	if err != nil {
		errs = append(errs, err)
	}
	if cfg.Upstream == "" {
		errs = append(errs, errors.New("no upstream registry given"))
	} else if err := CheckUpstream(cfg.Upstream, cfg.InsecureUpstream); err != nil {
		errs = append(errs, err)
	}
	cfg.Upstream = strings.TrimRight(cfg.Upstream, "/")
	if (cfg.Username == "") != (cfg.Password == "") {
		errs = append(errs, errors.New("give both username and password for the upstream, or neither"))
	}
	if cfg.CacheMaxBytes < 0 {
		errs = append(errs, errors.New("cache cap must not be negative"))
	}
	if cfg.CacheDir == "" {
		errs = append(errs, errors.New("no cache directory"))
	} else if cfg.CacheDir, err = filepath.Abs(cfg.CacheDir); err != nil {
		errs = append(errs, fmt.Errorf("cache directory: %w", err))
	}
	if cfg.Binary, err = FindBinary(cfg.Binary); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return "", fmt.Errorf("%w: %w", ErrConfig, errors.Join(errs...))
	}
	if port == 0 {
		if port, err = freePort(a); err != nil {
			return "", fmt.Errorf("mirror: %w", err)
		}
	}
	return net.JoinHostPort(a.String(), strconv.Itoa(port)), nil
}

// freePort asks the kernel for a free TCP port on a. Another process may
// take it before the registry binds it; that fails Start, and a test
// simply retries.
func freePort(a netip.Addr) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(a.String(), "0"))
	if err != nil {
		return 0, fmt.Errorf("free port on %s: %w", a, err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// registryConfig is the part of distribution's configuration we write.
type registryConfig struct {
	Version string `yaml:"version"`
	Log     struct {
		Level     string            `yaml:"level"`
		Formatter string            `yaml:"formatter"`
		Fields    map[string]string `yaml:"fields"`
		AccessLog struct {
			Disabled bool `yaml:"disabled"`
		} `yaml:"accesslog"`
	} `yaml:"log"`
	Storage struct {
		Filesystem struct {
			RootDirectory string `yaml:"rootdirectory"`
		} `yaml:"filesystem"`
		Delete struct {
			Enabled bool `yaml:"enabled"`
		} `yaml:"delete"`
		Cache struct {
			BlobDescriptor string `yaml:"blobdescriptor,omitempty"`
		} `yaml:"cache,omitempty"`
	} `yaml:"storage"`
	HTTP struct {
		Addr         string              `yaml:"addr"`
		Secret       string              `yaml:"secret"`
		DrainTimeout string              `yaml:"draintimeout"`
		Headers      map[string][]string `yaml:"headers"`
	} `yaml:"http"`
	Health struct {
		StorageDriver struct {
			Enabled   bool   `yaml:"enabled"`
			Interval  string `yaml:"interval"`
			Threshold int    `yaml:"threshold"`
		} `yaml:"storagedriver"`
	} `yaml:"health"`
	Proxy *struct {
		RemoteURL string `yaml:"remoteurl"`
		Username  string `yaml:"username,omitempty"`
		Password  string `yaml:"password,omitempty"`
	} `yaml:"proxy,omitempty"`
}

// instanceHeader carries a random value on every response of one mirror,
// so that Start knows it is talking to its own registry and not to another
// service on the same port.
const instanceHeader = "X-Tandem-Mirror"

// renderConfig returns the registry's config file. upstream "" makes a
// plain registry (tests use one as the upstream).
func renderConfig(addr, root, upstream, user, password, instance string) ([]byte, error) {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	var c registryConfig
	c.Version = "0.1"
	c.Log.Level = "info"
	c.Log.Formatter = "json"
	c.Log.Fields = map[string]string{"service": "tandem-mirror"}
	c.Log.AccessLog.Disabled = true // the JSON log has a line per request
	c.Storage.Filesystem.RootDirectory = root
	c.Storage.Delete.Enabled = true // the proxy's expiry deletes through it
	// No cache of blob descriptors: the evictor removes blobs under the
	// registry, which then finds them gone and fetches them upstream again.
	c.Storage.Cache.BlobDescriptor = ""
	c.HTTP.Addr = addr
	c.HTTP.Secret = hex.EncodeToString(secret) // one instance: any secret will do, but set one so it does not warn
	c.HTTP.DrainTimeout = "5s"
	c.HTTP.Headers = map[string][]string{"X-Content-Type-Options": {"nosniff"}}
	if instance != "" {
		c.HTTP.Headers[instanceHeader] = []string{instance}
	}
	c.Health.StorageDriver.Enabled = true
	c.Health.StorageDriver.Interval = "10s"
	c.Health.StorageDriver.Threshold = 3
	if upstream != "" {
		c.Proxy = &struct {
			RemoteURL string `yaml:"remoteurl"`
			Username  string `yaml:"username,omitempty"`
			Password  string `yaml:"password,omitempty"`
		}{upstream, user, password}
	}
	return yaml.Marshal(&c)
}

// Start writes the registry's config, starts it and waits until it answers
// GET /v2/ (15 s at most). ctx bounds the start only: the mirror then runs
// until Stop, restarted with back-off whenever it dies. It never outlives
// this process (it gets SIGKILL when its parent thread dies).
func Start(ctx context.Context, cfg Config) (*Mirror, error) {
	addr, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.CacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("mirror: %w", err)
	}
	// Refuse a port something else holds, rather than mirror through it.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("mirror: %w (another service on this port? Debian's own docker-registry service listens on :5000: systemctl disable --now docker-registry)", err)
	}
	ln.Close()
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("mirror: %w", err)
	}
	instance := hex.EncodeToString(nonce)
	body, err := renderConfig(addr, cfg.CacheDir, cfg.Upstream, cfg.Username, cfg.Password, instance)
	if err != nil {
		return nil, fmt.Errorf("mirror: config: %w", err)
	}
	cfgPath := filepath.Join(cfg.CacheDir, "config.yml")
	if err := fsutil.WriteFileAtomic(cfgPath, body, 0o600); err != nil {
		return nil, fmt.Errorf("mirror: write config: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Mirror{cfg: cfg, addr: addr, cfgPath: cfgPath, log: log.With("mirror", addr),
		tail: newTailBuffer(40), stop: make(chan struct{}), done: make(chan struct{})}
	started := make(chan error, 1)
	firstExit := make(chan struct{})
	go m.supervise(started, firstExit)
	if err := <-started; err != nil {
		return nil, fmt.Errorf("mirror: %w", err)
	}
	if err := m.waitReady(ctx, firstExit, instance); err != nil {
		m.Stop()
		return nil, err
	}
	m.log.Info("registry mirror ready", "upstream", cfg.Upstream, "cache", cfg.CacheDir)
	if cfg.CacheMaxBytes > 0 {
		go m.evictLoop()
	}
	return m, nil
}

// waitReady polls GET /v2/ until this instance answers 200, the first
// child exits, the time is up or ctx ends.
func (m *Mirror) waitReady(ctx context.Context, firstExit <-chan struct{}, instance string) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	// A probe must not outlive the child: something that accepts
	// connections and never answers would hold it.
	pctx, pcancel := context.WithCancel(ctx)
	defer pcancel()
	go func() {
		select {
		case <-firstExit:
			pcancel()
		case <-pctx.Done():
		}
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if m.probe(pctx, instance) {
			m.mu.Lock()
			m.ready = !m.failed // from now on the supervisor restarts it
			ok := m.ready
			m.mu.Unlock()
			if ok {
				return nil
			}
		}
		select {
		case <-firstExit:
			// Let the output reach the tail before quoting it.
			time.Sleep(50 * time.Millisecond)
			return fmt.Errorf("mirror: %s exited at start: %s", filepath.Base(m.cfg.Binary), m.tail.String())
		default:
		}
		select {
		case <-firstExit:
		case <-ctx.Done():
			why := "did not answer GET /v2/ within " + readyTimeout.String()
			if errors.Is(ctx.Err(), context.Canceled) {
				why = "start cancelled"
			}
			return fmt.Errorf("mirror: %s on %s %s: %s", filepath.Base(m.cfg.Binary), m.addr, why, m.tail.String())
		case <-tick.C:
		}
	}
}

// probe reports whether GET /v2/ answers 200 with this instance's header.
func (m *Mirror) probe(ctx context.Context, instance string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.URL()+"/v2/", nil)
	if err != nil {
		return false
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK && resp.Header.Get(instanceHeader) == instance
}

// probeClient keeps no connections: each probe may meet a new process.
var probeClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}

// URL is the mirror's address as clients use it: http://HOST:PORT.
func (m *Mirror) URL() string { return "http://" + m.addr }

// Addr is the address the mirror listens on, host:port.
func (m *Mirror) Addr() string { return m.addr }

// Restarts is how many times the registry has been restarted after dying.
func (m *Mirror) Restarts() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.restarts
}

// Stop ends the registry: SIGTERM, and SIGKILL if it has not exited after
// a grace period. It waits for the process to be gone. Safe to call twice.
func (m *Mirror) Stop() {
	m.stopOnce.Do(func() {
		close(m.stop)
		m.signal(syscall.SIGTERM)
		select {
		case <-m.done:
		case <-time.After(stopGrace):
			m.log.Warn("registry mirror ignored SIGTERM: killing it", "grace", stopGrace)
			m.signal(syscall.SIGKILL)
			<-m.done
		}
	})
}

// signal sends sig to the current child's process group.
func (m *Mirror) signal(sig syscall.Signal) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc != nil {
		syscall.Kill(-m.proc.Pid, sig)
	}
}
