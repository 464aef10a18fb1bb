package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFirstRunErrors pins what each first-run mistake says: the file, the
// line and the key of the problem, and its fix.
func TestFirstRunErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		body string
		want []string // each must appear in the message
	}{
		"empty file": {"", []string{
			"3 problems in", "config.yaml: github.app_id: required (the App's ID", "`tandem init`",
			"config.yaml: github.private_key_file: required (a file holding the App's private key",
			"config.yaml: github.webhook_secret_file: required (a file holding",
		}},
		"no app id": {"github:\n  private_key_file: app.pem\n  webhook_secret_file: secret\n", []string{
			"config.yaml:1: github.app_id: required (the App's ID",
		}},
		"top-level typo": {minimal + "listne: 127.0.0.1:8080\n", []string{
			"config.yaml:6: listne: unknown key (did you mean listen?)",
		}},
		"nested typo": {minimal + "runner:\n  idle_timout: 5m\n", []string{
			"config.yaml:7: runner.idle_timout: unknown key (did you mean runner.idle_timeout?)",
		}},
		"nothing close": {minimal + "labels:\n  zzzzzzzz: 1\n", []string{
			"config.yaml:7: labels.zzzzzzzz: unknown key (remove it; the keys here are prefix, default_vcpus, default_memory)",
		}},
		"validate line": {minimal + "listen: 127.0.0.1:8080\nrunner:\n  name_prefix: ci\n  scope: team\n", []string{
			"config.yaml:9: runner.scope \"team\": want repo or org",
		}},
		"two problems": {minimal + "runner:\n  scope: team\nscheduler:\n  max_launch_attempts: 1000\n", []string{
			"2 problems in", "config.yaml:7: runner.scope", "config.yaml:9: scheduler.max_launch_attempts 1000: want 1 to 100",
		}},
		"list item": {minimal + "pools:\n  - labels: tandem-2cpu-4gb\n  - labels: ubuntu-latest\n", []string{
			"config.yaml:8: pools[1]: labels \"ubuntu-latest\"",
		}},
		"bad duration": {minimal + "runner:\n  idle_timeout: soon\n", []string{
			"config.yaml:7: runner.idle_timeout: bad duration \"soon\" (want e.g. 90s, 5m, 6h)",
		}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := load(t, tc.body)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

func TestMissingConfigFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "config.yaml"))
	var nf *NotFoundError
	if !errors.As(err, &nf) || !errors.Is(err, fs.ErrNotExist) || !strings.HasSuffix(nf.Path, "config.yaml") {
		t.Fatalf("error %v (%T), want a *NotFoundError", err, err)
	}
}

// TestMissingSecretFiles: a secret file that is not there is named by its
// key and its resolved path, with the fix.
func TestMissingSecretFiles(t *testing.T) {
	for _, tc := range []struct{ remove, key, fix string }{
		{"app.pem", "github.private_key_file", "Generate a private key"},
		{"secret", "github.webhook_secret_file", "openssl rand -hex 32"},
	} {
		dir := t.TempDir()
		writeSecrets(t, dir)
		os.Remove(filepath.Join(dir, tc.remove))
		p := filepath.Join(dir, "config.yaml")
		if err := os.WriteFile(p, []byte(minimal), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(p)
		want := p + ":"
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), tc.key+": "+filepath.Join(dir, tc.remove)+": no such file or directory") ||
			!strings.Contains(err.Error(), tc.fix) {
			t.Errorf("missing %s: %v", tc.remove, err)
		}
	}
	// An API token file too.
	_, err := load(t, minimal+"api:\n  admin_token_file: admin-tokens\n")
	if err == nil || !strings.Contains(err.Error(), ":7: api.admin_token_file: ") || !strings.Contains(err.Error(), "admin-tokens: no such file") ||
		!strings.Contains(err.Error(), "one token per line") {
		t.Errorf("missing token file: %v", err)
	}
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"listen", "listne", 2}, {"port", "prot", 2}, {"abc", "", 3}, {"kitten", "sitting", 3}} {
		if got := editDistance(tc.a, tc.b); got != tc.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.d)
		}
	}
}
