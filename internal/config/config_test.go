package config

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
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
		"parity days":   {minimal + "parity: {days: 365}\n", "parity.days 365: want 1 to 90"},
		"parity tiers":  {minimal + "parity: {tiers: [{name: gold, min_success: 95}, {name: rest, arm64_runs: true}]}\n", "parity.tiers[0].min_success 95"},
		"parity last":   {minimal + "parity: {tiers: [{name: gold}, {name: rest, arm64_runs: true}]}\n", "the last tier must have no conditions"},
		"parity typo":   {minimal + "parity: {tiers: [{name: gold, min_sucess: 0.9}, {name: rest}]}\n", "min_sucess"},
		"not yaml":      {"{{{", "config"},
		"wrong type":    {minimal + "labels: {default_vcpus: many}\n", "line 6"},
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
