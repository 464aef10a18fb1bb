package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeSecrets(t *testing.T, dir string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(filepath.Join(dir, "app.pem"), pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("a-webhook-secret-of-some-length\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

const minimal = `
github:
  app_id: 7
  private_key_file: app.pem
  webhook_secret_file: secret
`

func load(t *testing.T, body string) (*Config, error) {
	t.Helper()
	dir := t.TempDir()
	writeSecrets(t, dir)
	p := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return Load(p)
}

func TestLoadDefaults(t *testing.T) {
	c, err := load(t, minimal)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != DefaultListen || c.GitHub.APIURL != DefaultAPIURL || c.Labels.Prefix != "tandem" ||
		c.Labels.DefaultMemory != 4096 || c.GitHub.WebhookMaxBody != 25 || c.Runner.Scope != "repo" || c.Runner.GroupID != 1 ||
		c.Runner.IdleTimeout.D() != 10*time.Minute || c.Scheduler.MaxLaunchAttempts != DefaultMaxAttempts {
		t.Errorf("defaults not applied: %+v", c)
	}
	if c.AppKey == nil {
		t.Error("app key not read")
	}
	if string(c.WebhookSecret) != "a-webhook-secret-of-some-length" {
		t.Error("webhook secret not read, or its newline kept")
	}
	if got := c.DatabasePath("/d"); got != "/d/tandem.db" {
		t.Errorf("database path %q", got)
	}
}

func TestLoadFull(t *testing.T) {
	c, err := load(t, minimal+`
listen: 0.0.0.0:9090
labels: {prefix: ci, default_vcpus: 0.5, default_memory: 1.5GiB}
runner: {scope: org, group_id: 3, idle_timeout: 90s, command: [/home/runner/run.sh]}
scheduler:
  max_launch_attempts: 5
  default_limit: {max_vms: 10}
  org_limits: {etcd-io: {max_vms: 4, max_vcpus: 16}}
agent: {vcpus: 8, memory: 16GiB, emulate: [arm64]}
`)
	if err != nil {
		t.Fatal(err)
	}
	if c.Labels.DefaultMemory != 1536 || c.Labels.DefaultVCPUs != 0.5 || c.Runner.Scope != "org" ||
		c.Runner.IdleTimeout.D() != 90*time.Second || c.Scheduler.Orgs["etcd-io"].MaxVCPUs != 16 ||
		c.Agent.Memory != 16384 || c.Runner.Command[0] != "/home/runner/run.sh" {
		t.Errorf("values not decoded: %+v", c)
	}
	p, err := c.ParserFor()
	if err != nil {
		t.Fatal(err)
	}
	if r, ok, err := p.Parse([]string{"ci-arm64"}); err != nil || !ok || r.VCPUs != 0.5 || r.MemoryMiB != 1536 {
		t.Errorf("parser from config: %+v %v %v", r, ok, err)
	}
}

func TestLoadRejects(t *testing.T) {
	for name, tc := range map[string]struct{ body, want string }{
		"unknown key":   {minimal + "listne: x\n", "listne"},
		"nested typo":   {minimal + "runner: {scoep: repo}\n", "scoep"},
		"bad duration":  {minimal + "runner: {idle_timeout: soon}\n", "bad duration"},
		"bad size":      {minimal + "agent: {memory: lots}\n", "bad size"},
		"no app id":     {"github: {private_key_file: app.pem, webhook_secret_file: secret}\n", "app_id"},
		"bad scope":     {minimal + "runner: {scope: team}\n", "runner.scope"},
		"bad prefix":    {minimal + "labels: {prefix: Tandem_CI}\n", "prefix"},
		"bad listen":    {minimal + "listen: nowhere\n", "listen"},
		"bad emulate":   {minimal + "agent: {emulate: [riscv64]}\n", "riscv64"},
		"bad api url":   {"github: {api_url: 'ftp://x', app_id: 1, private_key_file: app.pem, webhook_secret_file: secret}\n", "api_url"},
		"repeated key":  {minimal + "github: {app_id: 2}\n", "already defined"},
		"neg limit":     {minimal + "scheduler: {org_limits: {x: {max_vms: -1}}}\n", "negative"},
		"limit twice":   {minimal + "scheduler: {org_limits: {Acme: {max_vms: 1}, acme: {max_vms: 2}}}\n", "Acme and acme are one organisation"},
		"body limit":    {minimal + "  webhook_max_body: 2GiB\n", "webhook_max_body 2048MiB"},
		"allow public":  {minimal + "  allow_public: [acme, acme/app/x]\n", `"acme/app/x": want ORG or ORG/REPO`},
		"group and id":  {minimal + "runner: {scope: org, group: ci, group_id: 2}\n", "group (a name) or group_id, not both"},
		"group, repo":   {minimal + "runner: {group: ci}\n", "need runner.scope: org"},
		"groups, repo":  {minimal + "runner: {groups: {acme: ci}}\n", "need runner.scope: org"},
		"group twice":   {minimal + "runner: {scope: org, groups: {Acme/App: a, acme/app: b}}\n", "Acme/App and acme/app are one"},
		"group key":     {minimal + "runner: {scope: org, groups: {acme/app/x: a}}\n", `"acme/app/x": want ORG or ORG/REPO`},
		"group name":    {minimal + "runner: {scope: org, groups: {acme: \"a\\tb\"}}\n", "want a runner group's name"},
		"empty group":   {minimal + "runner: {scope: org, group: \" \"}\n", "want a runner group's name"},
		"sample fast":   {minimal + "agent: {sample_every: 10ms}\n", "agent.sample_every 10ms: at least 100ms"},
		"return fast":   {minimal + "agent: {return_within: 2s}\n", "agent.return_within 2s: at least 10s"},
		"parity days":   {minimal + "parity: {days: 365}\n", "parity.days 365: want 1 to 90"},
		"parity tiers":  {minimal + "parity: {tiers: [{name: gold, min_success: 95}, {name: rest, arm64_runs: true}]}\n", "parity.tiers[0].min_success 95"},
		"parity last":   {minimal + "parity: {tiers: [{name: gold}, {name: rest, arm64_runs: true}]}\n", "the last tier must have no conditions"},
		"parity typo":   {minimal + "parity: {tiers: [{name: gold, min_sucess: 0.9}, {name: rest}]}\n", "min_sucess"},
		"pool label":    {minimal + "pools: [{labels: ubuntu-latest, min_idle: 1}]\n", `pools[0]: labels "ubuntu-latest": want one Tandem label`},
		"pool bad size": {minimal + "pools: [{labels: tandem-arm64-0cpu-4gb, min_idle: 1}]\n", `pools[0]: labels "tandem-arm64-0cpu-4gb"`},
		"pool twice":    {minimal + "pools: [{labels: tandem-2cpu-4gb}, {labels: tandem-amd64-2cpu-4GB}]\n", "pools[1]: labels \"tandem-amd64-2cpu-4GB\": the same VM as pools[0] (tandem-amd64-2cpu-4gb)"},
		"pool idle":     {minimal + "pools: [{labels: tandem-2cpu-4gb, min_idle: 3, max_idle: 2}]\n", "pools[0]: max_idle 2 is below min_idle 3"},
		"pool demand":   {minimal + "pools: [{labels: tandem-2cpu-4gb, demand: true}]\n", "pools[0]: demand: give max_idle"},
		"pool age":      {minimal + "pools: [{labels: tandem-2cpu-4gb, max_age: 10s}]\n", "pools[0]: max_age 10s: at least 1m"},
		"pool schedule": {minimal + "pools: [{labels: tandem-2cpu-4gb, schedule: \"Mon-Fri 7am-8pm\"}]\n", `pools[0]: schedule "Mon-Fri 7am-8pm"`},
		"debug org":     {minimal + "debug: {orgs: [\"a b\"]}\n", `debug.orgs: "a b"`},
		"debug key":     {minimal + "debug: {keep_failed: {a/b/c: 1m}}\n", `debug.keep_failed: key "a/b/c"`},
		"debug long":    {minimal + "debug: {keep_failed: {acme: 48h}}\n", "debug.keep_failed.acme: 48h0m0s: want 0 to 24h0m0s"},
		"retry key":     {minimal + "retry: {infra_losses: {\"acme/\": true}}\n", `retry.infra_losses: key "acme/"`},
		"retry value":   {minimal + "retry: {infra_losses: {acme: 2}}\n", ":6: retry.infra_losses.acme: cannot unmarshal !!int `2` into bool (want true or false)"},
		"not yaml":      {"{{{", "config"},
		"wrong type":    {minimal + "labels: {default_vcpus: many}\n", ":6: labels.default_vcpus: cannot unmarshal !!str `many` into float64 (want a number)"},
		"two documents": {minimal + "---\nlisten: x\n", ""},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := load(t, tc.body)
			if tc.want == "" {
				return // accepted or refused: only must not panic
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestPools(t *testing.T) {
	c, err := load(t, minimal+`pools:
  - {labels: tandem-arm64-2cpu-4gb, min_idle: 2, max_idle: 8, max_age: 45m, schedule: "Mon-Fri 07:00-20:00 Europe/Berlin"}
  - {labels: tandem-4cpu-8gb, min_idle: 1}
  - {labels: tandem-arm64-8cpu-16gb, demand: true, max_idle: 4}
`)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Pools) != 3 {
		t.Fatalf("pools %+v", c.Pools)
	}
	if p := c.Pools[0]; p.MaxIdle != 8 || p.MaxAge.D() != 45*time.Minute || p.Sizing().Schedule.String() != "Mon-Fri 07:00-20:00 Europe/Berlin" {
		t.Errorf("pools[0] %+v", p)
	}
	if p := c.Pools[1]; p.MaxIdle != 1 || p.MaxAge.D() != DefaultPoolMaxAge || p.Sizing().Schedule.String() != "always" {
		t.Errorf("pools[1]: want max_idle = min_idle and the default max_age, got %+v", p)
	}
	if p := c.Pools[2]; p.MinIdle != 0 || p.MaxIdle != 4 || !p.Sizing().Demand {
		t.Errorf("pools[2] %+v", p)
	}
}

func TestDebugKeepFailed(t *testing.T) {
	c, err := load(t, minimal+"debug: {orgs: [acme], keep_failed: {\"*\": 5m, Acme: 15m, acme/App: 30m, initech/api: 0s}}\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		org, repo string
		want      time.Duration
	}{
		{"acme", "acme/app", 30 * time.Minute},
		{"ACME", "acme/other", 15 * time.Minute},
		{"initech", "initech/api", 0},
		{"initech", "initech/web", 5 * time.Minute},
	} {
		if got := c.Debug.KeepFailedFor(tc.org, tc.repo); got != tc.want {
			t.Errorf("%s: keep %s, want %s", tc.repo, got, tc.want)
		}
	}
}

// retry.infra_losses: the most specific key wins; off when none says.
func TestRetryInfraLosses(t *testing.T) {
	c, err := load(t, minimal+"retry: {infra_losses: {Acme: true, acme/Legacy: false, \"*\": false, initech/api: true}}\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		org, repo string
		want      bool
	}{
		{"acme", "acme/app", true},
		{"ACME", "acme/legacy", false},
		{"initech", "initech/api", true},
		{"initech", "initech/web", false},
	} {
		if got := c.Retry.RetriesInfraLosses(tc.org, tc.repo); got != tc.want {
			t.Errorf("%s: retries %v, want %v", tc.repo, got, tc.want)
		}
	}
	if c, err := load(t, minimal); err != nil || c.Retry.RetriesInfraLosses("acme", "acme/app") {
		t.Errorf("default: %v, %v", err, c.Retry)
	}
}

// The parity policy: defaults, and tiers of one's own.
func TestParityPolicy(t *testing.T) {
	c, err := load(t, minimal)
	if err != nil {
		t.Fatal(err)
	}
	if c.Parity.Days != 14 || c.Parity.FlakyMargin != 0.05 || len(c.Parity.Tiers) != 3 || c.Parity.Tiers[0].MinRuns != 10 || c.Parity.PublicBadges {
		t.Errorf("defaults: %+v", c.Parity)
	}
	c, err = load(t, minimal+"parity: {days: 7, public_badges: true, tiers: [{name: first-class, every_job_on_both: true, min_success: 0.99}, {name: other}]}\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Parity.Days != 7 || !c.Parity.PublicBadges || len(c.Parity.Tiers) != 2 || c.Parity.Tiers[0].Name != "first-class" || c.Parity.Tiers[0].MinSuccess != 0.99 {
		t.Errorf("parity: %+v", c.Parity)
	}
}

func TestRunnerGroups(t *testing.T) {
	c, err := load(t, minimal+`
runner:
  scope: org
  group: Tandem VMs
  groups: {etcd-io: Arm Fleet, etcd-io/etcd: etcd only}
`)
	if err != nil {
		t.Fatal(err)
	}
	if c.Runner.GroupID != 0 || c.Runner.Group != "Tandem VMs" || c.Runner.Groups["etcd-io/etcd"] != "etcd only" {
		t.Errorf("runner groups: %+v", c.Runner)
	}
}

func TestSecretsNeverPrint(t *testing.T) {
	c, err := load(t, minimal)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{fmt.Sprint(c.WebhookSecret), fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c.WebhookSecret)} {
		if strings.Contains(s, "a-webhook-secret") {
			t.Errorf("secret printed: %s", s)
		}
	}
}

func TestSecretFileProblems(t *testing.T) {
	dir := t.TempDir()
	writeSecrets(t, dir)
	os.WriteFile(filepath.Join(dir, "secret"), []byte("short\n"), 0o600)
	p := filepath.Join(dir, "c.yaml")
	os.WriteFile(p, []byte(minimal), 0o600)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "shorter than 16") {
		t.Errorf("short secret: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "app.pem"), []byte("not a key"), 0o600)
	os.WriteFile(filepath.Join(dir, "secret"), []byte("long-enough-secret-here"), 0o600)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "private_key_file") {
		t.Errorf("bad key: %v", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("missing file loaded")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]Size{"4096": 4096, "512MiB": 512, "8GiB": 8192, "1.5gb": 1536, "2G": 2048, "64m": 64} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1G", "1.3M", "x", "1e20G"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

func TestAgentsAndAPITokens(t *testing.T) {
	dir := t.TempDir()
	writeSecrets(t, dir)
	os.WriteFile(filepath.Join(dir, "admin"), []byte("admin-token-0123456789\n\nsecond-admin-token-xyz\n"), 0o600)
	p := filepath.Join(dir, "c.yaml")
	os.WriteFile(p, []byte(minimal+"agents: {listen: '0.0.0.0:8443', heartbeat_timeout: 20s}\napi: {admin_token_file: admin}\n"), 0o600)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.APITokens) != 2 || string(c.APITokens[1].Secret) != "second-admin-token-xyz" || !c.APITokens[1].Admin ||
		c.Agents.HeartbeatTimeout.D() != 20*time.Second {
		t.Errorf("agents/api: %+v %d tokens", c.Agents, len(c.APITokens))
	}
	os.WriteFile(filepath.Join(dir, "read"), []byte("# maintainers\nread-all-token-0123456789\nread-too-token-0123456789 read\nacme-only-token-0123456789 read:acme,Octo-Cat # two orgs\n"), 0o600)
	os.WriteFile(p, []byte(minimal+"api: {admin_token_file: admin, read_token_file: read}\n"), 0o600)
	if c, err = Load(p); err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(len(c.APITokens), c.APITokens[2].Admin, c.APITokens[2].Orgs, c.APITokens[3].Orgs, c.APITokens[4].Orgs)
	if got != "5 false [] [] [acme Octo-Cat]" {
		t.Errorf("scoped tokens: %s", got)
	}
	for body, want := range map[string]string{
		"tok-tok-tok-tok-tok read:":           "want read or read:ORG",
		"tok-tok-tok-tok-tok write":           "want read or read:ORG",
		"tok-tok-tok-tok-tok read:acme,-x":    "not an organisation name",
		"tok-tok-tok-tok-tok read:acme extra": "at most its scope",
	} {
		os.WriteFile(filepath.Join(dir, "read"), []byte(body+"\n"), 0o600)
		if _, err := Load(p); err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "tok-tok") {
			t.Errorf("read token file %q: %v (want %q, and no token in the message)", body, err, want)
		}
	}
	os.WriteFile(filepath.Join(dir, "read"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, "admin"), []byte("admin-token-0123456789 read:acme\n"), 0o600)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "admin tokens have no scope") {
		t.Errorf("a scoped admin token: %v", err)
	}
	if strings.Contains(fmt.Sprintf("%v %+v", c, c), "admin-token-0123456789") {
		t.Error("an API token printed")
	}
	os.WriteFile(filepath.Join(dir, "admin"), []byte("short\n"), 0o600)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "shorter than 16") {
		t.Errorf("short API token: %v", err)
	}
	os.WriteFile(p, []byte(minimal+"agents: {listen: nowhere}\n"), 0o600)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "agents.listen") {
		t.Errorf("bad agents.listen: %v", err)
	}
	os.WriteFile(p, []byte(minimal+"agents: {tls_cert_file: c.pem}\n"), 0o600)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "tls_key_file") {
		t.Errorf("cert without key: %v", err)
	}
}

// pgFiles writes, beside a config, what the postgres section names: a
// password file, a CA and a client certificate with its key (and a key
// that is not the certificate's).
func pgFiles(t *testing.T, dir string) {
	t.Helper()
	cert := func(cn string) (certPEM, keyPEM []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	}
	ca, _ := cert("postgres-ca")
	client, clientKey := cert("tandem")
	_, otherKey := cert("other")
	for name, b := range map[string][]byte{"pg-password": []byte("pg-s3cret-pw\n"), "pg-ca.pem": ca,
		"pg-client.pem": client, "pg-client-key.pem": clientKey, "pg-other-key.pem": otherKey,
		"pg-empty": []byte("\n"), "pg-two-lines": []byte("pg-s3cret-pw\nmore\n")} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// loadPG loads a config with the postgres section's files beside it.
func loadPG(t *testing.T, body string) (*Config, string, error) {
	t.Helper()
	dir := t.TempDir()
	writeSecrets(t, dir)
	pgFiles(t, dir)
	p := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	return c, dir, err
}

func TestPostgres(t *testing.T) {
	c, dir, err := loadPG(t, minimal+`
database: postgres://tandem@db.example.internal:5432/tandem?application_name=tandem
postgres:
  password_file: pg-password
  ca_file: pg-ca.pem
  cert_file: pg-client.pem
  key_file: pg-client-key.pem
`)
	if err != nil {
		t.Fatal(err)
	}
	want := Postgres{PasswordFile: filepath.Join(dir, "pg-password"), CAFile: filepath.Join(dir, "pg-ca.pem"),
		CertFile: filepath.Join(dir, "pg-client.pem"), KeyFile: filepath.Join(dir, "pg-client-key.pem"), MaxConns: DefaultPostgresMaxConns}
	if !c.IsPostgres() || c.Postgres != want || c.DatabasePath("/d") != "" {
		t.Errorf("postgres: %v %+v %q; want the paths made absolute and max_conns 16", c.IsPostgres(), c.Postgres, c.DatabasePath("/d"))
	}
	if s := fmt.Sprintf("%v %+v %#v", c, c, c); strings.Contains(s, "pg-s3cret-pw") {
		t.Error("the PostgreSQL password prints")
	}

	// The least: a URL; absolute paths stay; postgresql:// too.
	c, err = load(t, minimal+"database: 'postgresql:///tandem?host=/run/postgresql'\npostgres: {max_conns: 1000, ca_file: /nonexistent/ca.pem}\n")
	if err == nil || !strings.Contains(err.Error(), "postgres.ca_file: /nonexistent/ca.pem: no such file or directory (put the PEM certificate(s)") {
		t.Errorf("a missing ca_file: %v", err)
	}
	if c, err = load(t, minimal+"database: 'postgresql:///tandem?host=/run/postgresql&sslmode=disable'\npostgres: {max_conns: 1000, replica: cp-2.eu_west}\n"); err != nil {
		t.Fatal(err)
	}
	if !c.IsPostgres() || c.Postgres != (Postgres{MaxConns: 1000, Replica: "cp-2.eu_west"}) {
		t.Errorf("postgresql://: %+v", c.Postgres)
	}

	// SQLite stays the default, and takes a path.
	for body, want := range map[string]string{minimal: "/d/tandem.db", minimal + "database: /srv/tandem.db\n": "/srv/tandem.db"} {
		if c, err := load(t, body); err != nil || c.IsPostgres() || c.DatabasePath("/d") != want || c.Postgres != (Postgres{}) {
			t.Errorf("%q: %v, want SQLite at %s", body, err, want)
		}
	}
}

// Every refusal names the key and the fix, and never the password: not
// the URL's, not the password file's.
func TestPostgresRejects(t *testing.T) {
	const pg = "database: postgres://tandem@db/tandem\n"
	for name, tc := range map[string]struct{ body, want string }{
		"password in url": {"database: 'postgres://tandem:pg-s3cret-pw@db/tandem'\n",
			`database "postgres://tandem:xxxxx@db/tandem": the URL holds a password: put it in a file (mode 0600) named by postgres.password_file`},
		"empty password":    {"database: 'postgres://tandem:@db/tandem'\n", "named by postgres.password_file"},
		"password in query": {"database: 'postgres://tandem@db/tandem?sslmode=verify-full&password=pg-s3cret-pw'\n", `?sslmode=verify-full&password=xxxxx": the URL holds a password`},
		"unparsable":        {"database: 'postgres://db:port/tandem'\n", `database "postgres://db:port/tandem": not a valid URL: invalid port ":port" after host (want postgres://USER@HOST[:PORT]/DB)`},
		"unparsable, password": {"database: 'postgres://tandem:pg-s3cret-pw/x@db/tandem'\n",
			`database "postgres://tandem:xxxxx@db/tandem": not a valid URL (want postgres://USER@HOST[:PORT]/DB, the password in postgres.password_file)`},
		"unparsable, query password": {"database: 'postgres://db:port/tandem?password=pg-s3cret-pw'\n", `database "postgres://db:port/tandem?password=xxxxx": not a valid URL`},
		"mysql":                      {"database: 'mysql://tandem:pg-s3cret-pw@db/tandem'\n", `database "mysql://tandem:xxxxx@db/tandem": want a SQLite file's path or a PostgreSQL URL (postgres://`},
		"capitals":                   {"database: 'Postgres://db/tandem'\n", "want a SQLite file's path or a PostgreSQL URL"},
		"tls in url":                 {"database: 'postgres://db/tandem?sslrootcert=/etc/ca.pem'\n", "TLS files go in postgres.ca_file, postgres.cert_file and postgres.key_file"},
		"key password in url":        {"database: 'postgres://db/tandem?sslpassword=pg-s3cret-pw'\n", "sslpassword=xxxxx\": TLS files go in postgres.ca_file"},
		"section with sqlite":        {"postgres: {max_conns: 4}\n", "postgres: only for a PostgreSQL database (database: postgres://"},
		"section with sqlite file":   {"database: /srv/tandem.db\npostgres: {password_file: pg-password}\n", "postgres: only for a PostgreSQL database"},
		"cert without key":           {pg + "postgres: {cert_file: pg-client.pem}\n", "postgres: give both cert_file and key_file, or neither"},
		"key without cert":           {pg + "postgres: {key_file: pg-client-key.pem}\n", "postgres: give both cert_file and key_file, or neither"},
		"too many conns":             {pg + "postgres: {max_conns: 2000}\n", "postgres.max_conns 2000: want 1 to 1000"},
		"negative conns":             {pg + "postgres: {max_conns: -1}\n", "postgres.max_conns -1: want 1 to 1000"},
		"replica with a space":       {pg + "postgres: {replica: 'cp 1'}\n", `postgres.replica "cp 1": want letters, digits`},
		"replica too long":           {pg + "postgres: {replica: " + strings.Repeat("a", 64) + "}\n", "at most 63"},
		"sslmode and ca":             {"database: 'postgres://db/tandem?sslmode=require'\npostgres: {ca_file: pg-ca.pem}\n", "postgres.ca_file: the server is verified (sslmode=verify-full), but database asks for sslmode=require: drop sslmode"},
		"typo":                       {pg + "postgres: {max_con: 4}\n", "max_con"},
		"no password file":           {pg + "postgres: {password_file: nowhere}\n", "nowhere: no such file or directory (write the database user's password"},
		"empty password file":        {pg + "postgres: {password_file: pg-empty}\n", "postgres.password_file pg-empty: empty"},
		"two-line password file":     {pg + "postgres: {password_file: pg-two-lines}\n", "postgres.password_file pg-two-lines: more than one line"},
		"ca not pem":                 {pg + "postgres: {ca_file: pg-password}\n", "postgres.ca_file pg-password: no PEM certificate in it"},
		"key not the cert's":         {pg + "postgres: {cert_file: pg-client.pem, key_file: pg-other-key.pem}\n", "postgres.cert_file pg-client.pem, postgres.key_file pg-other-key.pem: tls: private key does not match public key"},
		"key missing":                {pg + "postgres: {cert_file: pg-client.pem, key_file: nokey.pem}\n", "postgres.key_file nokey.pem: open "},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := loadPG(t, minimal+tc.body)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one mentioning %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "pg-s3cret-pw") {
				t.Errorf("the password is in the error: %v", err)
			}
		})
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://db/tandem":                          "postgres://db/tandem",
		"postgres://tandem@db/tandem":                   "postgres://tandem@db/tandem",
		"postgres://tandem:pw@db/tandem":                "postgres://tandem:xxxxx@db/tandem",
		"postgres://tandem:p@w:d@db/tandem":             "postgres://tandem:xxxxx@db/tandem",
		"postgres://tandem:pa/ss@db":                    "postgres://tandem:xxxxx@db",
		"postgres://db/t?sslmode=require&Password=pw#x": "postgres://db/t?sslmode=require&Password=xxxxx#x",
		"postgres://db/t?sslpassword=pw&password=pw":    "postgres://db/t?sslpassword=xxxxx&password=xxxxx",
		"postgres://db:5432/t?application_name=a@b":     "postgres://db:xxxxx@b", // more hidden than need be, never less
		"/srv/tandem.db":                                "/srv/tandem.db",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
