// Package ghfaketest helps tests talk to a ghfake server as Tandem's
// control plane does: through its REST API, as a GitHub App.
package ghfaketest

import (
	"bytes"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// RegisterRunner asks the ghfake at baseURL for a JIT runner config, as App
// appID (signing with key) for installation inst: an installation token,
// then generate-jitconfig under scope ("orgs/ORG" or "repos/OWNER/REPO").
// It returns the encoded config.
func RegisterRunner(t testing.TB, baseURL string, key *rsa.PrivateKey, appID, inst int64, scope, name string, labels ...string) string {
	t.Helper()
	now := time.Now()
	appJWT, err := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"iat": now.Add(-time.Minute).Unix(), "exp": now.Add(5 * time.Minute).Unix(), "iss": strconv.FormatInt(appID, 10),
	}).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		Token string `json:"token"`
	}
	post(t, fmt.Sprintf("%s/app/installations/%d/access_tokens", baseURL, inst), "Bearer "+appJWT, nil, &tok)
	var out struct {
		EncodedJITConfig string `json:"encoded_jit_config"`
	}
	post(t, baseURL+"/"+scope+"/actions/runners/generate-jitconfig", "token "+tok.Token,
		map[string]any{"name": name, "runner_group_id": 1, "labels": labels}, &out)
	return out.EncodedJITConfig
}

// post sends an authorized JSON POST and decodes a 201 answer into out.
func post(t testing.TB, url, auth string, body, out any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, err := http.NewRequest("POST", url, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", auth)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST %s: status %d", url, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
}
