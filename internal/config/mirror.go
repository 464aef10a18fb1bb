package config

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tandem-ci/tandem/internal/mirror"
)

// Mirror configures the host's Docker Hub pull-through cache (registry
// mirror): a docker-registry the agent runs on the bridge address, which
// the VMs' Docker daemons pull through (see internal/mirror).
type Mirror struct {
	// Enabled defaults to true when an upstream is given (the mirror is
	// off without one); enabled: false turns a configured mirror off.
	Enabled *bool `yaml:"enabled"`
	// Port on the bridge's address (default 5000).
	Port int `yaml:"port"`
	// Upstream is the registry mirrored: for a Docker Hub cache, Docker
	// Hub's registry API endpoint. No default: Tandem names no registry.
	Upstream string `yaml:"upstream"`
	// InsecureUpstream allows an http:// upstream (images and credentials
	// then travel unencrypted); by default only https:// is taken.
	InsecureUpstream bool `yaml:"insecure_upstream"`
	// Username and PasswordFile, if set, authenticate to the upstream (for
	// Docker Hub's higher pull limits). Every job on the host can then pull
	// through the mirror what this account may pull.
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	// CacheDir holds the cache; "" means <data_dir>/mirror.
	CacheDir string `yaml:"cache_dir"`
	// CacheMax caps the cache (default 20GiB): past it the least recently
	// used layers are evicted, and fetched again when asked for.
	CacheMax Size `yaml:"cache_max"`
}

// DefaultMirrorCacheMax caps a mirror's cache unless configured.
const DefaultMirrorCacheMax = Size(20 << 10)

// On reports whether the mirror runs: an upstream is given and the mirror
// is not turned off (or it is turned on, which then needs an upstream).
func (m Mirror) On() bool {
	if m.Enabled != nil {
		return *m.Enabled
	}
	return m.Upstream != ""
}

// Explicit reports whether the operator configured the mirror (an upstream,
// or enabled either way): then a mirror that cannot run is an error, not a
// warning.
func (m Mirror) Explicit() bool { return m.Enabled != nil || m.Upstream != "" }

// CachePath is the cache directory, given the data directory in use.
func (m Mirror) CachePath(dataDir string) string {
	if m.CacheDir != "" {
		return m.CacheDir
	}
	return filepath.Join(dataDir, "mirror")
}

func (m *Mirror) applyDefaults() {
	if m.Port == 0 {
		m.Port = mirror.DefaultPort
	}
	if m.CacheMax == 0 {
		m.CacheMax = DefaultMirrorCacheMax
	}
}

// validate reports the section's problems (prefix names it in messages).
func (m *Mirror) validate(prefix string) []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(prefix+format, a...)) }
	if m.Port < 1 || m.Port > 65535 {
		bad(".port %d: want 1 to 65535", m.Port)
	}
	switch {
	case m.Upstream == "" && m.On():
		bad(".upstream: required when the mirror is enabled (the registry to mirror, e.g. Docker Hub's registry API endpoint)")
	case m.Upstream != "":
		if err := mirror.CheckUpstream(m.Upstream, m.InsecureUpstream); err != nil {
			bad(": %v", err)
		}
	}
	if (m.Username == "") != (m.PasswordFile == "") {
		bad(": give both username and password_file, or neither")
	}
	if m.CacheDir != "" && !filepath.IsAbs(m.CacheDir) {
		bad(".cache_dir %q: want an absolute path", m.CacheDir)
	}
	return errs
}

// readPassword reads the upstream password file (relative to dir) of an
// enabled mirror that has one.
func (m *Mirror) readPassword(dir, prefix string) (Secret, error) {
	if !m.On() || m.PasswordFile == "" {
		return nil, nil
	}
	p := m.PasswordFile
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, secretFileError(prefix+".password_file", p, err,
			"write the upstream registry's password to that file, on one line, mode 0600, or point "+prefix+".password_file at it")
	}
	b = bytes.TrimRight(b, "\r\n")
	if len(b) == 0 {
		return nil, fmt.Errorf("config: %s.password_file %s: empty", prefix, m.PasswordFile)
	}
	if bytes.ContainsAny(b, "\r\n") {
		return nil, fmt.Errorf("config: %s.password_file %s: more than one line", prefix, m.PasswordFile)
	}
	return Secret(b), nil
}
