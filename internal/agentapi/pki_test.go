package agentapi

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCertIsMadeOnceAndKept(t *testing.T) {
	dir := t.TempDir()
	cf, kf := filepath.Join(dir, "tls", "cert.pem"), filepath.Join(dir, "tls", "key.pem")
	c1, err := LoadOrCreateCert(cf, kf, []string{"10.0.0.1", "cp.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	c2, err := LoadOrCreateCert(cf, kf, nil)
	if err != nil {
		t.Fatal(err)
	}
	if Fingerprint(c1.Certificate[0]) != Fingerprint(c2.Certificate[0]) {
		t.Error("the certificate changed on the second load")
	}
	if st, _ := os.Stat(kf); st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v", st.Mode().Perm())
	}
	os.WriteFile(kf, []byte("garbage"), 0o600)
	if _, err := LoadOrCreateCert(cf, kf, nil); err == nil {
		t.Error("a damaged key pair was replaced or accepted")
	}
}

func TestPinnedTLS(t *testing.T) {
	dir := t.TempDir()
	cert, err := LoadOrCreateCert(filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	defer srv.Close()
	good := &http.Client{Transport: &http.Transport{TLSClientConfig: PinnedTLS(Fingerprint(cert.Certificate[0]))}}
	if resp, err := good.Get(srv.URL); err != nil {
		t.Fatalf("pinned client: %v", err)
	} else {
		resp.Body.Close()
	}
	bad := &http.Client{Transport: &http.Transport{TLSClientConfig: PinnedTLS(strings.Repeat("0", 64))}}
	if _, err := bad.Get(srv.URL); err == nil || !strings.Contains(err.Error(), "pinned") {
		t.Errorf("wrong pin: %v", err)
	}
}

func TestEnrollTokenFormat(t *testing.T) {
	pin := strings.Repeat("ab", 32)
	tok, hash, err := NewEnrollToken(pin)
	if err != nil {
		t.Fatal(err)
	}
	secret, gotPin, err := ParseEnrollToken(" " + tok + "\n")
	if err != nil || gotPin != pin || HashSecret(secret) != hash {
		t.Errorf("round trip: %q %q %v", secret, gotPin, err)
	}
	for _, bad := range []string{"", "tdm1", "tdm1.x.y", "tdm2." + secret + "." + pin, "tdm1." + secret + "." + strings.Repeat("zz", 32)} {
		if _, _, err := ParseEnrollToken(bad); err != ErrBadToken {
			t.Errorf("ParseEnrollToken(%q) = %v", bad, err)
		}
	}
}

func TestCredentialsFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "creds.json")
	c := Credentials{Server: "https://10.0.0.1:8443", Pin: strings.Repeat("cd", 32), HostID: "h1", Credential: "s3cr3t-value"}
	if err := c.Save(p); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode().Perm())
	}
	got, err := LoadCredentials(p)
	if err != nil || got != c {
		t.Errorf("load: %+v %v", got, err)
	}
	if strings.Contains(c.String(), "s3cr3t") {
		t.Error("String shows the credential")
	}
	os.WriteFile(p, []byte(`{"server":"x"}`), 0o600)
	if _, err := LoadCredentials(p); err == nil {
		t.Error("incomplete credentials loaded")
	}
}
