package github

import (
	"github.com/tandem-ci/tandem/internal/syncbuf"

	"context"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestSecretsNeverLeak drives successful and failing calls and checks that no
// installation token, App JWT, encoded JIT config or private key material
// shows up in any error string or log record.
func TestSecretsNeverLeak(t *testing.T) {
	const encoded = "ZW5jb2RlZC1qaXQtY29uZmlnLXNlY3JldA=="
	h := newHarness(t, func(c *Config) { c.MaxRetries = 1 })
	var jitCalls, tokenFail atomic.Int64
	h.mux.HandleFunc("POST /repos/acme/widgets/actions/runners/generate-jitconfig", func(w http.ResponseWriter, r *http.Request) {
		switch jitCalls.Add(1) {
		case 1:
			writeJSON(w, http.StatusCreated, map[string]any{"runner": map[string]any{"id": 1, "name": "r1"}, "encoded_jit_config": encoded})
		case 2:
			writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"message": "Validation Failed"})
		case 3:
			writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Bad credentials"})
		default:
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusTooManyRequests, map[string]string{"message": "slow down"})
		}
	})
	// A token endpoint for installation 99 that fails, as for a revoked app.
	h.mux.HandleFunc("POST /app/installations/99/access_tokens", func(w http.ResponseWriter, r *http.Request) {
		tokenFail.Add(1)
		_ = h.checkJWT(r) // records the JWT as a secret
		writeJSON(w, http.StatusForbidden, map[string]string{"message": "This installation has been suspended"})
	})
	h.mux.HandleFunc("GET /app/installations", func(w http.ResponseWriter, r *http.Request) {
		_ = h.checkJWT(r)
		writeJSON(w, http.StatusInternalServerError, map[string]string{"message": "oops"})
	})

	ctx := context.Background()
	scope := Scope{Owner: "acme", Repo: "widgets"}
	req := JITRequest{Name: "r1", Labels: []string{"tandem"}}
	var errs []error
	jit, err := h.client.GenerateJITConfig(ctx, testInst, scope, req)
	if err != nil || jit.EncodedConfig != encoded {
		t.Fatalf("jit %v, err %v", jit, err)
	}
	h.client.log.Info("created runner", "jit", jit) // as a careless caller might
	h.client.log.Info(fmt.Sprintf("created %v %+v %#v", jit, jit, jit))
	for range 3 {
		_, err := h.client.GenerateJITConfig(ctx, testInst, scope, req)
		errs = append(errs, err)
	}
	_, err = h.client.GenerateJITConfig(ctx, 99, scope, req)
	errs = append(errs, err)
	_, err = h.client.ListInstallations(ctx)
	errs = append(errs, err)
	h.clock.Advance(2 * time.Hour) // everything expired: fresh JWT and token
	_, err = h.client.ListRunners(ctx, testInst, scope)
	errs = append(errs, err)

	var texts []string
	for i, err := range errs {
		if err == nil {
			t.Fatalf("call %d unexpectedly succeeded", i)
		}
		texts = append(texts, err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err))
	}
	logs := h.logs.String()
	texts = append(texts, logs)
	if !strings.Contains(logs, "created runner") || !strings.Contains(logs, "rate limited") {
		t.Fatalf("expected log records missing:\n%s", logs)
	}

	keyDER := base64.StdEncoding.EncodeToString(x509.MarshalPKCS1PrivateKey(testKey(t)))
	secrets := append(h.secrets(), encoded, keyDER[:40])
	if len(secrets) < 4 || tokenFail.Load() == 0 {
		t.Fatalf("test did not exercise enough secrets: %d", len(secrets))
	}
	for _, s := range secrets {
		for _, text := range texts {
			if strings.Contains(text, s) {
				t.Errorf("secret %.12q… leaked in %q", s, text)
			}
		}
	}

	// Redaction of the value types themselves.
	creds := AppCredentials{AppID: 1, PrivateKey: testKey(t)}
	var sb syncbuf.Buffer
	slog.New(slog.NewJSONHandler(&sb, nil)).Info("x", "jit", jit, "creds", creds)
	formatted := fmt.Sprintf("%v %+v %#v %s %v %+v %#v", jit, jit, jit, jit, creds, creds, creds) + sb.String()
	if strings.Contains(formatted, encoded) || strings.Contains(formatted, testKey(t).D.String()) {
		t.Errorf("formatting leaks a secret: %s", formatted)
	}
	if !strings.Contains(formatted, "REDACTED") || !strings.Contains(formatted, "r1") {
		t.Errorf("redacted output lost its useful fields: %s", formatted)
	}
}
