package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ci/tandem/internal/github/ghfake"
	"github.com/tandem-ci/tandem/internal/syncbuf"
)

// serverProc is a `tandem server` process.
type serverProc struct {
	url, data string
	secret    []byte
	log       *syncbuf.Buffer
}

// startServer runs `tandem server` with extra appended to a minimal config.
func startServer(t *testing.T, extra string) *serverProc {
	t.Helper()
	dir := t.TempDir()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("server-test-webhook-secret-0123")
	os.WriteFile(filepath.Join(dir, "app.pem"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600)
	os.WriteFile(filepath.Join(dir, "webhook-secret"), secret, 0o600)
	gh := httptest.NewServer(ghfake.New(ghfake.Config{AppID: 7, AppPublicKey: &key.PublicKey}).Handler())
	t.Cleanup(gh.Close)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf("listen: %s\ngithub: {api_url: %s/, app_id: 7, private_key_file: app.pem, webhook_secret_file: webhook-secret}\n%s",
		addr, gh.URL, extra)
	os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(cfg), 0o600)
	cmd := exec.Command(binary(t), "--data-dir", dir, "--log-level", "info", "server", "--config", filepath.Join(dir, "config.yaml"))
	var log syncbuf.Buffer // written by exec's copier while the test reads it
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("tandem server's log:\n%s", log.String())
		}
	})
	p := &serverProc{url: "http://" + addr, data: dir, secret: secret, log: &log}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if resp, err := http.Get(p.url + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		select {
		case <-done:
			t.Fatalf("tandem server exited:\n%s", log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("tandem server did not answer within 30 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// TestServerSlowClients: 64 connections from one address that never finish
// their requests hold no more than that address's share of the webhook
// listener, so GitHub's deliveries and /healthz from elsewhere are answered
// at once; past its share, that address's connections are closed.
func TestServerSlowClients(t *testing.T) {
	s := startServer(t, "")
	host := strings.TrimPrefix(s.url, "http://")
	var slow []net.Conn
	for range 64 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
		c, err := d.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		// Half a request: the headers never end.
		fmt.Fprintf(c, "POST /webhook HTTP/1.1\r\nHost: %s\r\nContent-Length: 100\r\n", host)
		slow = append(slow, c)
	}
	time.Sleep(300 * time.Millisecond)

	client := &http.Client{Timeout: 3 * time.Second}
	start := time.Now()
	resp, err := client.Get(s.url + "/healthz")
	if err != nil {
		t.Fatalf("/healthz while one address holds 64 half-sent requests: %v", err)
	}
	resp.Body.Close()
	body := []byte(`{"zen":"Keep it logically awesome.","hook_id":1}`)
	m := hmac.New(sha256.New, s.secret)
	m.Write(body)
	req, _ := http.NewRequest("POST", s.url+"/webhook", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-GitHub-Event", "ping")
	req.Header.Set("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
	req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(m.Sum(nil)))
	resp, err = client.Do(req)
	if err != nil {
		t.Fatalf("a delivery while one address holds 64 half-sent requests: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("ping delivery: %s", resp.Status)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("healthz and a delivery took %v", d)
	}
	closed := 0
	for _, c := range slow {
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err == io.EOF || err != nil && !isTimeout(err) {
			closed++
		}
	}
	if closed < 48 {
		t.Errorf("%d of the address's 64 connections were closed, want at least 48 (it may hold 16)", closed)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestServerAPINeedsAToken: `tandem server` serves no API read without a
// token, makes an admin token of its own when none is configured, and
// serves the API on the agents' listener only when asked.
func TestServerAPINeedsAToken(t *testing.T) {
	s := startServer(t, "agents: {listen: '127.0.0.1:0', tls_hosts: [127.0.0.1]}\n")
	resp, err := http.Get(s.url + "/api/v1/jobs")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("/api/v1/jobs without a token: %s", resp.Status)
	}
	tok, err := os.ReadFile(filepath.Join(s.data, "api-admin-token"))
	if err != nil {
		t.Fatalf("no admin token of its own: %v", err)
	}
	req, _ := http.NewRequest("GET", s.url+"/api/v1/jobs", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/api/v1/jobs with its admin token: %s", resp.Status)
	}
	// The agents' listener, without serve_api: agents only.
	var agents string
	for deadline := time.Now().Add(10 * time.Second); agents == "" && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, rest, ok := strings.Cut(s.log.String(), "tandem: agents on https://"); ok {
			agents, _, _ = strings.Cut(rest, " ")
		}
	}
	if agents == "" {
		t.Fatalf("no agents' listener announced:\n%s", s.log.String())
	}
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // its certificate is self-signed
	req, _ = http.NewRequest("GET", "https://"+agents+"/api/v1/jobs", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	if resp, err = insecure.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("the API on the agents' listener, not asked for: %s", resp.Status)
	}
}
