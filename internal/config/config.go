// Package config is Tandem's configuration file: typed, strictly decoded
// (an unknown or misspelt key is an error, not a silent default), defaulted
// and validated in one place. Secrets are never in the file itself: it names
// files that hold them, read by Load and kept out of every String and log.
package config

import (
	"bytes"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/egress"
	"github.com/tandem-ci/tandem/internal/github"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/parity"
	"github.com/tandem-ci/tandem/internal/vm"
)

// Config is the whole file.
type Config struct {
	// Listen is the control plane's HTTP address: webhook, API, metrics.
	Listen string `yaml:"listen"`
	// DataDir holds the database, images and VM state; "" means the
	// command's --data-dir.
	DataDir string `yaml:"data_dir"`
	// Database is the store: a SQLite file ("" means <data_dir>/tandem.db)
	// or a PostgreSQL URL (postgres://USER@HOST[:PORT]/DB[?…], also
	// postgresql://), whose password, TLS and pool are in Postgres.
	Database string `yaml:"database"`
	// Postgres is how to reach a PostgreSQL database; only with one.
	Postgres  Postgres  `yaml:"postgres"`
	GitHub    GitHub    `yaml:"github"`
	Labels    Labels    `yaml:"labels"`
	Runner    Runner    `yaml:"runner"`
	Scheduler Scheduler `yaml:"scheduler"`
	Reconcile Reconcile `yaml:"reconcile"`
	Agent     Agent     `yaml:"agent"`
	// Egress is each job's egress policy: a default and overrides by
	// organisation and repository (internal/egress).
	Egress egress.Config `yaml:"egress"`
	Agents Agents        `yaml:"agents"`
	API    API           `yaml:"api"`
	// Parity is the Arm64/x86 parity policy: its period, flaky margin,
	// support tiers and badges (internal/parity).
	Parity parity.Policy `yaml:"parity"`
	// Pools are warm pools: VMs booted ahead of the jobs that will claim
	// them (pools.go).
	Pools []Pool `yaml:"pools"`
	// Debug says who may open debug sessions in jobs' VMs, and which
	// failed jobs' VMs are kept for them (debug.go).
	Debug Debug `yaml:"debug"`
	// Retry says which jobs lost to Tandem or its hosts are re-run on
	// GitHub (retry.go).
	Retry Retry `yaml:"retry"`

	// Secrets read from the files named above.
	AppKey        *rsa.PrivateKey `yaml:"-"`
	WebhookSecret Secret          `yaml:"-"`
	APITokens     []APIToken      `yaml:"-"`
	// MirrorPassword is agent.mirror.password_file's content.
	MirrorPassword Secret `yaml:"-"`
}

// Postgres configures the connection to a PostgreSQL database (database:
// postgres://…). Its password is never in the URL but in PasswordFile, so
// that the config file may be readable by more people than the database's
// secret. Relative paths are from the config file's directory: Load makes
// them absolute, having checked that each file reads and holds what it
// should.
type Postgres struct {
	// PasswordFile holds the password, on one line.
	PasswordFile string `yaml:"password_file"`
	// CAFile makes the connection TLS, verifying the server's certificate
	// and name against these roots (sslmode=verify-full).
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate, for servers that ask
	// for one: both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// MaxConns caps the connection pool (default 16, 1 to 1000).
	MaxConns int `yaml:"max_conns"`
	// Replica names this `tandem server` among the replicas that share
	// the database (default: the machine's host name): /healthz, the
	// logs and the hosts' records say which replica leads and which holds
	// each agent. Letters, digits, '.', '_' and '-', at most 63; replicas
	// must not share a name.
	Replica string `yaml:"replica"`
}

// Agents configures the TLS listener remote hosts' agents dial (and that
// also serves the API). Empty Listen: no remote agents.
type Agents struct {
	Listen string `yaml:"listen"`
	// TLSCertFile and TLSKeyFile default to <data_dir>/tls/{cert,key}.pem,
	// made (self-signed, for TLSHosts) when absent. Agents pin the
	// certificate's fingerprint, which enrolment tokens carry.
	TLSCertFile string   `yaml:"tls_cert_file"`
	TLSKeyFile  string   `yaml:"tls_key_file"`
	TLSHosts    []string `yaml:"tls_hosts"`
	// HeartbeatTimeout: a host silent this long is offline (default 15s).
	HeartbeatTimeout Duration `yaml:"heartbeat_timeout"`
	// MaxImageTransfers bounds the image files sent to agents at once
	// (default 4); more wait, then are told to come back.
	MaxImageTransfers int `yaml:"max_image_transfers"`
	// ServeAPI also serves the JSON API (and webhooks) on this listener,
	// for operators who reach the control plane only there. Off by
	// default: the agent listener faces every host.
	ServeAPI bool `yaml:"serve_api"`
	// MaxConnsPerSource caps the connections from one address (default
	// 64: an agent holds a few; raise it for many hosts behind one NAT).
	MaxConnsPerSource int `yaml:"max_conns_per_source"`
}

// API configures who may use the JSON API: files holding one token per
// line (at least 16 characters; # starts a comment). Admin tokens may do
// everything. A line of the read token file is a token and optionally its
// scope: "read" (every organisation, the default) or "read:ORG[,ORG]" (only
// those organisations' jobs, logs and egress records). Every request needs
// a token.
type API struct {
	AdminTokenFile string `yaml:"admin_token_file"`
	ReadTokenFile  string `yaml:"read_token_file"`
}

// APIToken is one API token and its scope.
type APIToken struct {
	Secret Secret
	Admin  bool
	Orgs   []string // a read token's organisations; nil: every one
}

// GitHub is the GitHub App Tandem acts as.
type GitHub struct {
	// APIURL is the REST API root: https://api.github.com/ or, for GitHub
	// Enterprise Server, https://HOST/api/v3/.
	APIURL            string `yaml:"api_url"`
	AppID             int64  `yaml:"app_id"`
	PrivateKeyFile    string `yaml:"private_key_file"`
	WebhookSecretFile string `yaml:"webhook_secret_file"`
	// AllowPublic lists orgs and repositories ("owner/name") whose public
	// repositories' jobs Tandem runs. Every other public repository's job
	// is refused: anyone who can open a pull request could run code.
	AllowPublic []string `yaml:"allow_public"`
	// WebhookMaxBody caps a webhook's body (MiB); default 25, GitHub's own
	// cap on the payloads it sends.
	WebhookMaxBody Size `yaml:"webhook_max_body"`
}

// Labels configure which runs-on labels are Tandem's.
type Labels struct {
	Prefix        string  `yaml:"prefix"`
	DefaultVCPUs  float64 `yaml:"default_vcpus"`
	DefaultMemory Size    `yaml:"default_memory"`
}

// Runner configures the runners Tandem registers and the VMs they run in.
type Runner struct {
	// Scope registers each runner to the job's repository ("repo") or to
	// its organisation ("org").
	Scope string `yaml:"scope"`
	// GroupID is the runner group runners join, by id (default 1,
	// GitHub's "Default"), when Group and Groups do not name one.
	GroupID int64 `yaml:"group_id"`
	// Group names the runner group every organisation runner joins (it
	// is looked up by name in each organisation), and Groups overrides it
	// per organisation ("ORG") or repository ("ORG/REPO"). GitHub does not
	// say which group a queued job targets, so a job whose workflow asks
	// for another group (runs-on: {group: NAME}) is never given to
	// Tandem's runners: the one VM booted for it is stopped at
	// idle_timeout and the job is shown as unmatched. Both need
	// scope: org (repository runners are in no group).
	Group      string            `yaml:"group"`
	Groups     map[string]string `yaml:"groups"`
	NamePrefix string            `yaml:"name_prefix"`
	ImageAMD64 string            `yaml:"image_amd64"`
	ImageARM64 string            `yaml:"image_arm64"`
	// Images names the image of some runs-on labels instead of their
	// architecture's: label → image ref or id, for example
	// tandem-arm64-4cpu-8gb: runner-arm64. The label must be one
	// architecture's (not "any"), and the image of that architecture.
	Images map[string]string `yaml:"images"`
	// Command is the runner program in the guest, run as User (""
	// root). Empty (the default): the image's own runner, as its manifest
	// names it (tandem-fakerunner in test images; GitHub's runner, or
	// tandem-fakerunner, as the `runner` account in runner images).
	Command       []string `yaml:"command"`
	User          string   `yaml:"user"`
	WorkFolder    string   `yaml:"work_folder"`
	MaxJobTime    Duration `yaml:"max_job_duration"`
	IdleTimeout   Duration `yaml:"idle_timeout"`
	ConfigTimeout Duration `yaml:"config_timeout"`
	// DiskPerVCPU is what a VM may write to its disk per vCPU (a 4-vCPU
	// label gets four times as much): past it the job fails with "disk-full"
	// and the host is untouched; placement counts it against each host's
	// disk. 0 (the default): a VM may fill its disk, the image's size.
	DiskPerVCPU Size `yaml:"disk_per_vcpu"`
}

// Scheduler configures placement.
type Scheduler struct {
	MaxLaunchAttempts int                 `yaml:"max_launch_attempts"`
	Default           OrgLimit            `yaml:"default_limit"`
	Orgs              map[string]OrgLimit `yaml:"org_limits"`
}

// OrgLimit caps what one organisation may run at once; 0 is unlimited.
type OrgLimit struct {
	MaxVMs   int     `yaml:"max_vms"`
	MaxVCPUs float64 `yaml:"max_vcpus"`
}

// Reconcile sets how often each reconciler runs; 0 takes the default and a
// negative value turns it off.
type Reconcile struct {
	MissedWebhooks   Duration `yaml:"missed_webhooks"`
	FailedDeliveries Duration `yaml:"failed_deliveries"`
	Orphans          Duration `yaml:"orphans"`
	// ActiveRepoWindow is how long after its last job a repository is
	// still polled for queued jobs whose webhook was lost.
	ActiveRepoWindow Duration `yaml:"active_repo_window"`
	// LostAfter is how long a running job whose VM ended may wait for
	// GitHub to report its end before it is marked lost.
	LostAfter Duration `yaml:"lost_after"`
}

// Agent configures the local agent of `tandem up`.
type Agent struct {
	HostID string `yaml:"host_id"`
	// VCPUs and Memory are what VMs may use in all; 0 means the whole host
	// (memory less 1 GiB for the host itself).
	VCPUs  float64 `yaml:"vcpus"`
	Memory Size    `yaml:"memory"`
	// Emulate lists foreign architectures this host offers under TCG.
	Emulate []string `yaml:"emulate"`
	Bridge  string   `yaml:"bridge"`
	Subnet  string   `yaml:"subnet"`
	// Mirror is the Docker Hub pull-through cache the host's VMs use.
	Mirror Mirror `yaml:"mirror"`
	// Network is what the host's VMs may reach beyond their isolation.
	Network Network `yaml:"network"`
	// AllowUncapped runs VMs though cgroups cannot cap their memory or
	// tasks here (no memory or pids controller): off, the agent refuses to.
	AllowUncapped bool `yaml:"allow_uncapped"`
	// SampleEvery is how often a running job's VM is sampled for its
	// resource profile (default 1s, at least 100ms).
	SampleEvery Duration `yaml:"sample_every"`
	// IOPerVCPU caps each VM's disk I/O, per vCPU (a 4-vCPU VM gets four
	// times as much); zero fields: uncapped.
	IOPerVCPU IOPerVCPU `yaml:"io_per_vcpu"`
	// ReturnWithin is how long the host's VMs wait for the agent to come
	// back after it went (a restart, an upgrade, a crash) before a
	// watchdog stops them (default 10m, at least 10s).
	ReturnWithin Duration `yaml:"return_within"`
}

// IOPerVCPU is a VM's disk I/O cap per vCPU.
type IOPerVCPU struct {
	ReadMBps  int64 `yaml:"read_mbps"`
	WriteMBps int64 `yaml:"write_mbps"`
	ReadIOPS  int64 `yaml:"read_iops"`
	WriteIOPS int64 `yaml:"write_iops"`
}

// Limits returns the cap in bytes and operations per second.
func (l IOPerVCPU) Limits() vm.IOLimits {
	return vm.IOLimits{ReadBPS: l.ReadMBps << 20, WriteBPS: l.WriteMBps << 20, ReadIOPS: l.ReadIOPS, WriteIOPS: l.WriteIOPS}
}

// Secret is a byte string that never prints.
type Secret []byte

func (Secret) String() string   { return "[redacted]" }
func (Secret) GoString() string { return "[redacted]" }

// Size is an amount of memory in MiB, written as 4096, "512MiB", "8GiB"
// (also MB/GB/M/G, all binary).
type Size int

// UnmarshalYAML parses a size.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*s = v
	return nil
}

// ParseSize parses a memory size into MiB.
func ParseSize(s string) (Size, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1.0
	for _, u := range []struct {
		suffix string
		mult   float64
	}{{"gib", 1024}, {"gb", 1024}, {"g", 1024}, {"mib", 1}, {"mb", 1}, {"m", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || f*mult > 1<<30 {
		return 0, fmt.Errorf("bad size %q (want e.g. 512MiB or 8GiB)", s)
	}
	mib := f * mult
	if mib != float64(int(mib)) {
		return 0, fmt.Errorf("size %q is not a whole number of MiB", s)
	}
	return Size(mib), nil
}

// DefaultReturnWithin and MinReturnWithin bound agent.return_within (and
// tandem agent --return-within).
const (
	DefaultReturnWithin = 10 * time.Minute
	MinReturnWithin     = 10 * time.Second
)

// Duration is a time.Duration written as "90s", "5m", "6h".
type Duration time.Duration

// UnmarshalYAML parses a duration.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(strings.TrimSpace(n.Value))
	if err != nil {
		return fmt.Errorf("line %d: bad duration %q (want e.g. 90s, 5m, 6h)", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Defaults.
const (
	DefaultListen      = "127.0.0.1:8080"
	DefaultAPIURL      = "https://api.github.com/"
	DefaultMaxAttempts = 3
	// DefaultPostgresMaxConns is postgres.max_conns unless configured.
	DefaultPostgresMaxConns = 16
)

// Parse decodes a config strictly and applies defaults. It neither reads
// secret files nor validates: Load does both.
func Parse(b []byte) (*Config, error) {
	c := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) { // an empty file is all defaults
		return nil, fmt.Errorf("config: %w", err)
	}
	c.applyDefaults()
	return c, nil
}

func (c *Config) applyDefaults() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&c.Listen, DefaultListen)
	if c.IsPostgres() && c.Postgres.MaxConns == 0 {
		c.Postgres.MaxConns = DefaultPostgresMaxConns
	}
	def(&c.GitHub.APIURL, DefaultAPIURL)
	def(&c.Labels.Prefix, labels.DefaultPrefix)
	if c.Labels.DefaultVCPUs == 0 {
		c.Labels.DefaultVCPUs = labels.DefaultVCPUs
	}
	if c.GitHub.WebhookMaxBody == 0 {
		c.GitHub.WebhookMaxBody = 25
	}
	if c.Labels.DefaultMemory == 0 {
		c.Labels.DefaultMemory = labels.DefaultMemoryMiB
	}
	def(&c.Runner.Scope, "repo")
	if c.Runner.GroupID == 0 && c.Runner.Group == "" {
		c.Runner.GroupID = 1 // GitHub's "Default" runner group
	}
	def(&c.Runner.NamePrefix, "tandem")
	def(&c.Runner.ImageAMD64, "test-amd64")
	def(&c.Runner.ImageARM64, "test-arm64")
	defDur := func(p *Duration, v time.Duration) {
		if *p == 0 {
			*p = Duration(v)
		}
	}
	defDur(&c.Runner.MaxJobTime, 6*time.Hour)
	defDur(&c.Runner.IdleTimeout, 10*time.Minute)
	defDur(&c.Runner.ConfigTimeout, 2*time.Minute)
	if c.Scheduler.MaxLaunchAttempts == 0 {
		c.Scheduler.MaxLaunchAttempts = DefaultMaxAttempts
	}
	defDur(&c.Reconcile.MissedWebhooks, time.Minute)
	defDur(&c.Reconcile.FailedDeliveries, 5*time.Minute)
	defDur(&c.Reconcile.Orphans, 2*time.Minute)
	defDur(&c.Reconcile.ActiveRepoWindow, 24*time.Hour)
	defDur(&c.Reconcile.LostAfter, 2*time.Minute)
	if c.Agents.MaxConnsPerSource == 0 {
		c.Agents.MaxConnsPerSource = 64
	}
	defDur(&c.Agent.SampleEvery, time.Second)
	defDur(&c.Agent.ReturnWithin, DefaultReturnWithin)
	def(&c.Agent.Bridge, "tandem0")
	def(&c.Agent.Subnet, "172.30.0.0/24")
	c.Agent.Mirror.applyDefaults()
	c.Parity.Defaults()
	c.poolDefaults()
}

// IsPostgres reports whether the database is PostgreSQL (database: is a
// postgres:// or postgresql:// URL) rather than a SQLite file.
func (c *Config) IsPostgres() bool {
	return strings.HasPrefix(c.Database, "postgres://") || strings.HasPrefix(c.Database, "postgresql://")
}

// DatabasePath is the SQLite file, given the data directory in use; "" when
// the database is PostgreSQL (IsPostgres), which has no file.
func (c *Config) DatabasePath(dataDir string) string {
	if c.IsPostgres() {
		return ""
	}
	if c.Database != "" {
		return c.Database
	}
	return filepath.Join(dataDir, "tandem.db")
}

// Load reads, decodes, validates a config file and reads the secrets it
// names. Relative secret paths are taken from the config file's directory.
// A file that is not there is a *NotFoundError; every other error names the
// file, the line and the key of each problem, and its fix (locate.go).
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &NotFoundError{Path: path}
	}
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, locate(path, b, err)
	}
	if err := c.Validate(); err != nil {
		return nil, locate(path, b, err)
	}
	if err := c.readSecrets(filepath.Dir(path)); err != nil {
		return nil, locate(path, b, err)
	}
	return c, nil
}

// NotFoundError is Load's error for a config file that does not exist.
type NotFoundError struct{ Path string }

func (e *NotFoundError) Error() string {
	return "config: " + e.Path + ": no such file"
}

func (e *NotFoundError) Unwrap() error { return fs.ErrNotExist }

// secretFileError says what is wrong with the secret file that key names
// (at the path resolved) and how to put it right.
func secretFileError(key, resolved string, err error, fix string) error {
	problem := err.Error()
	var pe *fs.PathError
	if errors.As(err, &pe) {
		problem = resolved + ": " + pe.Err.Error()
	}
	return &FieldError{Key: key, Problem: problem, Fix: fix}
}

// The fixes for each secret file.
const (
	fixPrivateKey = "download the App's private key (GitHub: Settings → Developer settings → GitHub Apps → the App → " +
		"Private keys → Generate a private key) to that path, mode 0600, or point github.private_key_file at it"
	fixWebhookSecret = "write the App's webhook secret, at least 16 characters, to that path, mode 0600 " +
		"(e.g. `openssl rand -hex 32`, the same value in the App's settings), or point github.webhook_secret_file at it"
	fixTokenFile = "write one token per line (at least 16 characters, e.g. `openssl rand -hex 24`), mode 0600, or remove the key"
)

func (c *Config) readSecrets(dir string) error {
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	key, err := os.ReadFile(abs(c.GitHub.PrivateKeyFile))
	if err != nil {
		return secretFileError("github.private_key_file", abs(c.GitHub.PrivateKeyFile), err, fixPrivateKey)
	}
	if c.AppKey, err = github.ParsePrivateKey(key); err != nil {
		return secretFileError("github.private_key_file", abs(c.GitHub.PrivateKeyFile),
			fmt.Errorf("%s: %w", abs(c.GitHub.PrivateKeyFile), err), fixPrivateKey)
	}
	for _, f := range []struct {
		key   string
		path  string
		admin bool
	}{{"api.admin_token_file", c.API.AdminTokenFile, true}, {"api.read_token_file", c.API.ReadTokenFile, false}} {
		if f.path == "" {
			continue
		}
		b, err := os.ReadFile(abs(f.path))
		if err != nil {
			return secretFileError(f.key, abs(f.path), err, fixTokenFile)
		}
		toks, err := parseTokens(b, f.admin)
		if err != nil {
			return &FieldError{Key: f.key, Problem: fmt.Sprintf("api token file %s: %v", abs(f.path), err)}
		}
		c.APITokens = append(c.APITokens, toks...)
	}
	sec, err := os.ReadFile(abs(c.GitHub.WebhookSecretFile))
	if err != nil {
		return secretFileError("github.webhook_secret_file", abs(c.GitHub.WebhookSecretFile), err, fixWebhookSecret)
	}
	sec = bytes.TrimRight(sec, "\r\n")
	if len(sec) < 16 {
		return &FieldError{Key: "github.webhook_secret_file", Problem: abs(c.GitHub.WebhookSecretFile) + ": the secret is shorter than 16 bytes", Fix: fixWebhookSecret}
	}
	c.WebhookSecret = Secret(sec)
	if c.MirrorPassword, err = c.Agent.Mirror.readPassword(dir, "agent.mirror"); err != nil {
		return err
	}
	return c.Postgres.checkFiles(dir)
}

// Validate checks every field and reports all problems at once.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen %q: %v", c.Listen, err)
	}
	if u, err := url.Parse(c.GitHub.APIURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		bad("github.api_url %q: want an http(s) URL", c.GitHub.APIURL)
	}
	if c.GitHub.AppID <= 0 {
		bad("github.app_id: required (the App's ID, on its settings page: GitHub → Settings → Developer settings → GitHub Apps; `tandem init` writes a config with it)")
	}
	if c.GitHub.PrivateKeyFile == "" {
		bad("github.private_key_file: required (a file holding the App's private key, as GitHub's \"Generate a private key\" downloads it)")
	}
	if c.GitHub.WebhookSecretFile == "" {
		bad("github.webhook_secret_file: required (a file holding the App's webhook secret, at least 16 characters)")
	}
	if _, err := labels.NewParser(c.Labels.Prefix, c.Labels.DefaultVCPUs, int(c.Labels.DefaultMemory)); err != nil {
		bad("labels: %v", err)
	}
	if c.Runner.Scope != "repo" && c.Runner.Scope != "org" {
		bad("runner.scope %q: want repo or org", c.Runner.Scope)
	}
	errs = append(errs, c.validateGroups()...)
	errs = append(errs, c.validateDatabase()...)
	if err := c.Parity.Validate("parity"); err != nil {
		errs = append(errs, err)
	}
	if !validName(c.Runner.NamePrefix) {
		bad("runner.name_prefix %q: want [a-z0-9-]", c.Runner.NamePrefix)
	}
	if c.Runner.MaxJobTime < 0 || c.Runner.IdleTimeout < 0 || c.Runner.ConfigTimeout < 0 {
		bad("runner: durations must not be negative")
	}
	if c.GitHub.WebhookMaxBody < 1 || c.GitHub.WebhookMaxBody > 1024 {
		bad("github.webhook_max_body %dMiB: want 1MiB to 1GiB", c.GitHub.WebhookMaxBody)
	}
	if c.Scheduler.MaxLaunchAttempts < 1 || c.Scheduler.MaxLaunchAttempts > 100 {
		bad("scheduler.max_launch_attempts %d: want 1 to 100", c.Scheduler.MaxLaunchAttempts)
	}
	for _, a := range c.GitHub.AllowPublic {
		owner, repo, hasRepo := strings.Cut(a, "/")
		if !githubName(owner) || (hasRepo && !githubName(repo)) {
			bad("github.allow_public: %q: want ORG or ORG/REPO", a)
		}
	}
	folded := map[string]string{}
	for _, org := range slices.Sorted(maps.Keys(c.Scheduler.Orgs)) {
		if l := c.Scheduler.Orgs[org]; l.MaxVMs < 0 || l.MaxVCPUs < 0 {
			bad("scheduler.org_limits.%s: limits must not be negative", org)
		}
		if prev, dup := folded[strings.ToLower(org)]; dup {
			bad("scheduler.org_limits: %s and %s are one organisation (GitHub's names are not case-sensitive)", prev, org)
		}
		folded[strings.ToLower(org)] = org
	}
	if c.Scheduler.Default.MaxVMs < 0 || c.Scheduler.Default.MaxVCPUs < 0 {
		bad("scheduler.default_limit: limits must not be negative")
	}
	if l := c.Agent.IOPerVCPU; l.ReadMBps < 0 || l.WriteMBps < 0 || l.ReadIOPS < 0 || l.WriteIOPS < 0 {
		bad("agent.io_per_vcpu: caps must not be negative")
	}
	if _, err := c.Agent.Network.Compile(); err != nil {
		bad("agent.network: %v", err)
	}
	if _, err := c.Egress.Compile(); err != nil {
		bad("%v", err)
	}
	if c.Runner.Scope == "org" {
		for k := range c.Egress.Overrides {
			if strings.Contains(k, "/") {
				bad("egress.overrides.%s: a repository's own policy needs runner.scope: repo (an organisation's runner may take any of its repositories' jobs)", k)
			}
		}
	}
	for _, a := range c.Agent.Emulate {
		if a != string(arch.AMD64) && a != string(arch.ARM64) {
			bad("agent.emulate: %q is not amd64 or arm64", a)
		}
	}
	if c.Agents.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Agents.Listen); err != nil {
			bad("agents.listen %q: %v", c.Agents.Listen, err)
		}
	}
	if (c.Agents.TLSCertFile == "") != (c.Agents.TLSKeyFile == "") {
		bad("agents: give both tls_cert_file and tls_key_file, or neither")
	}
	if c.Agents.MaxConnsPerSource < 0 {
		bad("agents.max_conns_per_source: must not be negative")
	}
	if c.Agents.MaxImageTransfers < 0 {
		bad("agents.max_image_transfers: must not be negative")
	}
	if c.Agents.HeartbeatTimeout < 0 {
		bad("agents.heartbeat_timeout: must not be negative")
	}
	if c.Agent.VCPUs < 0 {
		bad("agent.vcpus: must not be negative")
	}
	if c.Agent.SampleEvery.D() < 100*time.Millisecond {
		bad("agent.sample_every %s: at least 100ms", c.Agent.SampleEvery.D())
	}
	if c.Agent.ReturnWithin.D() < MinReturnWithin {
		bad("agent.return_within %s: at least %s (the agent must have time to start again)", c.Agent.ReturnWithin.D(), MinReturnWithin)
	}
	errs = append(errs, c.Agent.Mirror.validate("agent.mirror")...)
	errs = append(errs, c.validateImages()...)
	errs = append(errs, c.validatePools()...)
	errs = append(errs, c.Debug.validate()...)
	errs = append(errs, c.Retry.validate()...)
	if len(errs) > 0 {
		return fmt.Errorf("config: %w", errors.Join(errs...))
	}
	return nil
}

func validName(s string) bool {
	if s == "" || len(s) > 40 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// ParserFor returns the label parser the config describes.
func (c *Config) ParserFor() (*labels.Parser, error) {
	return labels.NewParser(c.Labels.Prefix, c.Labels.DefaultVCPUs, int(c.Labels.DefaultMemory))
}

// parseTokens reads a token file. Errors name the line, never the token.
func parseTokens(b []byte, admin bool) ([]APIToken, error) {
	var out []APIToken
	for i, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		t := APIToken{Secret: Secret(f[0]), Admin: admin}
		if len(f[0]) < 16 {
			return nil, fmt.Errorf("line %d: a token shorter than 16 characters", i+1)
		}
		switch {
		case len(f) > 2:
			return nil, fmt.Errorf("line %d: want a token and at most its scope", i+1)
		case len(f) == 2 && admin:
			return nil, fmt.Errorf("line %d: admin tokens have no scope (read scopes go in read_token_file)", i+1)
		case len(f) == 2 && f[1] == "read":
		case len(f) == 2:
			orgs, ok := strings.CutPrefix(f[1], "read:")
			if !ok || orgs == "" {
				return nil, fmt.Errorf("line %d: scope %q: want read or read:ORG[,ORG]", i+1, f[1])
			}
			for _, o := range strings.Split(orgs, ",") {
				if !validOrgName(o) {
					return nil, fmt.Errorf("line %d: scope %q: %q is not an organisation name", i+1, f[1], o)
				}
				t.Orgs = append(t.Orgs, o)
			}
		}
		out = append(out, t)
	}
	return out, nil
}

// validOrgName accepts GitHub's account names: letters, digits and
// single hyphens, at most 39 characters.
func validOrgName(s string) bool {
	if s == "" || len(s) > 39 || s[0] == '-' || s[len(s)-1] == '-' || strings.Contains(s, "--") {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// githubName reports whether s could be a GitHub account or repository
// name: 1 to 100 letters, digits, '-', '_' and '.'.
func githubName(s string) bool {
	if s == "" || len(s) > 100 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// validateGroups checks runner.group_id, runner.group and runner.groups.
func (c *Config) validateGroups() []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	r := c.Runner
	switch {
	case r.Group != "" && r.GroupID != 0:
		bad("runner: give group (a name) or group_id, not both")
	case r.Group == "" && r.GroupID < 1:
		bad("runner.group_id: want a runner group id (1 is GitHub's Default group)")
	}
	if (r.Group != "" || len(r.Groups) > 0) && r.Scope != "org" {
		bad("runner.group, runner.groups: runner groups hold organisation runners: they need runner.scope: org (repository runners are in no group)")
	}
	if r.Group != "" && !groupName(r.Group) {
		bad("runner.group %q: want a runner group's name (1 to 100 characters, no control characters)", r.Group)
	}
	folded := map[string]string{}
	for _, k := range slices.Sorted(maps.Keys(r.Groups)) {
		owner, repo, hasRepo := strings.Cut(k, "/")
		if !githubName(owner) || (hasRepo && !githubName(repo)) {
			bad("runner.groups: %q: want ORG or ORG/REPO", k)
		}
		if !groupName(r.Groups[k]) {
			bad("runner.groups.%s %q: want a runner group's name (1 to 100 characters, no control characters)", k, r.Groups[k])
		}
		if prev, dup := folded[strings.ToLower(k)]; dup {
			bad("runner.groups: %s and %s are one (GitHub's names are not case-sensitive)", prev, k)
		}
		folded[strings.ToLower(k)] = k
	}
	return errs
}

// groupName reports whether s can be a runner group's name.
func groupName(s string) bool {
	if strings.TrimSpace(s) == "" || len(s) > 100 {
		return false
	}
	return !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// urlLike matches what starts as a URL does: SCHEME://.
var urlLike = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*://`)

// validateDatabase checks database and the postgres section. A URL in a
// message is redacted (redactURL): an error is logged, a password must not
// be.
func (c *Config) validateDatabase() []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	p := c.Postgres
	if !c.IsPostgres() {
		if urlLike.MatchString(c.Database) {
			bad("database %q: want a SQLite file's path or a PostgreSQL URL (postgres://USER@HOST[:PORT]/DB, or postgresql://)", redactURL(c.Database))
		}
		if p != (Postgres{}) {
			bad("postgres: only for a PostgreSQL database (database: postgres://USER@HOST[:PORT]/DB): the SQLite database takes none of it")
		}
		return errs
	}
	if u, err := checkPostgresURL(c.Database); err != nil {
		errs = append(errs, err)
	} else if m := u.Query().Get("sslmode"); p.CAFile != "" && m != "" && m != "verify-full" {
		bad("postgres.ca_file: the server is verified (sslmode=verify-full), but database asks for sslmode=%s: drop sslmode from the URL", m)
	}
	if (p.CertFile == "") != (p.KeyFile == "") {
		bad("postgres: give both cert_file and key_file, or neither")
	}
	if p.MaxConns < 1 || p.MaxConns > 1000 {
		bad("postgres.max_conns %d: want 1 to 1000", p.MaxConns)
	}
	if p.Replica != "" && !replicaName.MatchString(p.Replica) {
		bad("postgres.replica %q: want letters, digits, '.', '_' and '-', at most 63", p.Replica)
	}
	return errs
}

var replicaName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,63}$`)

// checkPostgresURL parses database's PostgreSQL URL and refuses what
// belongs in the postgres section: a password, TLS files.
func checkPostgresURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		// url.Parse's error quotes the URL, password and all: say what is
		// wrong with the redacted one, if that is wrong too.
		red, why, want := redactURL(s), "", "postgres://USER@HOST[:PORT]/DB"
		var ue *url.Error
		if _, err := url.Parse(red); errors.As(err, &ue) {
			why = ": " + ue.Err.Error()
		}
		if red != s {
			want += ", the password in postgres.password_file"
		}
		return nil, fmt.Errorf("database %q: not a valid URL%s (want %s)", red, why, want)
	}
	q := u.Query()
	_, inUser := u.User.Password()
	switch {
	case inUser || q.Has("password"):
		return nil, fmt.Errorf("database %q: the URL holds a password: put it in a file (mode 0600) named by postgres.password_file", redactURL(s))
	case q.Has("sslrootcert") || q.Has("sslcert") || q.Has("sslkey") || q.Has("sslpassword"):
		return nil, fmt.Errorf("database %q: TLS files go in postgres.ca_file, postgres.cert_file and postgres.key_file (an unencrypted key, mode 0600), not in the URL", redactURL(s))
	}
	return u, nil
}

// queryPassword matches a password (or a TLS key's) in a URL's query.
var queryPassword = regexp.MustCompile(`(?i)([?&](?:ssl)?password=)[^&#]*`)

// redactURL hides the password a URL holds, in its user info or its query,
// for a message. It works on the text, so that it redacts an unparsable URL
// too, erring towards hiding more than the password.
func redactURL(s string) string {
	s = queryPassword.ReplaceAllString(s, "${1}xxxxx")
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return s
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return s
	}
	user, _, hasPassword := strings.Cut(rest[:at], ":")
	if !hasPassword {
		return s
	}
	return scheme + "://" + user + ":xxxxx" + rest[at:]
}

// checkFiles makes the section's paths absolute (relative ones are from
// dir) and checks that each file reads and holds what it should. The
// password is read only to be checked, and never shown: the store reads it
// when it connects.
func (p *Postgres) checkFiles(dir string) error {
	abs := func(path string) string {
		if path == "" || filepath.IsAbs(path) {
			return path
		}
		return filepath.Join(dir, path)
	}
	if p.PasswordFile != "" {
		b, err := os.ReadFile(abs(p.PasswordFile))
		if err != nil {
			return secretFileError("postgres.password_file", abs(p.PasswordFile), err,
				"write the database user's password to that file, on one line, mode 0600, or point postgres.password_file at it")
		}
		b = bytes.TrimRight(b, "\r\n")
		if len(b) == 0 {
			return fmt.Errorf("config: postgres.password_file %s: empty", p.PasswordFile)
		}
		if bytes.ContainsAny(b, "\r\n") {
			return fmt.Errorf("config: postgres.password_file %s: more than one line", p.PasswordFile)
		}
	}
	if p.CAFile != "" {
		b, err := os.ReadFile(abs(p.CAFile))
		if err != nil {
			return secretFileError("postgres.ca_file", abs(p.CAFile), err,
				"put the PEM certificate(s) of the CA that signed the server's certificate there, or point postgres.ca_file at them")
		}
		if !x509.NewCertPool().AppendCertsFromPEM(b) {
			return fmt.Errorf("config: postgres.ca_file %s: no PEM certificate in it", p.CAFile)
		}
	}
	if p.CertFile != "" {
		if _, err := tls.LoadX509KeyPair(abs(p.CertFile), abs(p.KeyFile)); err != nil {
			return fmt.Errorf("config: postgres.cert_file %s, postgres.key_file %s: %w", p.CertFile, p.KeyFile, err)
		}
	}
	p.PasswordFile, p.CAFile, p.CertFile, p.KeyFile = abs(p.PasswordFile), abs(p.CAFile), abs(p.CertFile), abs(p.KeyFile)
	return nil
}
