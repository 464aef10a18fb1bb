package agentapi

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
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
	one := Credentials{Server: "https://10.0.0.1:8443", Pin: strings.Repeat("cd", 32), HostID: "h1", Credential: "s3cr3t-value"}
	many := one
	many.Servers = []string{"https://10.0.0.2:8443", "https://cp3.example.test:9443"}
	for _, c := range []Credentials{one, many} {
		if err := c.Save(p); err != nil {
			t.Fatal(err)
		}
		if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
			t.Errorf("mode %v", st.Mode().Perm())
		}
		got, err := LoadCredentials(p)
		if err != nil || !reflect.DeepEqual(got, c) {
			t.Errorf("load: %+v %v", got, err)
		}
		if strings.Contains(c.String(), "s3cr3t") {
			t.Error("String shows the credential")
		}
	}
	if b, _ := os.ReadFile(p); !strings.Contains(string(b), `"servers"`) {
		t.Errorf("servers not saved:\n%s", b)
	}
	// A file from before Servers, its server as --server gave it then.
	old := `{"server":"https://cp.example.test/","pin":"` + one.Pin + `","host_id":"h1","credential":"x"}`
	os.WriteFile(p, []byte(old), 0o600)
	if got, err := LoadCredentials(p); err != nil || got.Server != "https://cp.example.test/" || got.Servers != nil {
		t.Errorf("old file: %+v %v", got, err)
	}
	for bad, want := range map[string]string{
		`["http://10.0.0.2:8443"]`:                           `"http://10.0.0.2:8443": not https`,
		`["https://10.0.0.2:8443/agent"]`:                    `"https://10.0.0.2:8443/agent": has a path`,
		`["https://10.0.0.1:8443/"]`:                         `"https://10.0.0.1:8443/" is given twice`,
		`["https://b.test:1", "https://B.test:1"]`:           `"https://B.test:1" is given twice`,
		`["https://u:pw@b.test:1"]`:                          `"https://u:pw@b.test:1": has a user name`,
		`["https://b.test"]`:                                 `"https://b.test": has no port`,
		`["https://b.test:1?x=1"]`:                           `"https://b.test:1?x=1": has a path, query`,
		`["https://b.test:99999"]`:                           `"https://b.test:99999": port out of range`,
		`["https://:8443"]`:                                  `"https://:8443": has no host`,
		`["https://b.test:1", "https://b.test:x"]`:           `"https://b.test:x": invalid port`,
		`["https://b.test:1#frag"]`:                          `"https://b.test:1#frag": has a path, query`,
		`["https://b.test:1", "https://c.test:1", ""]`:       `"": not https`,
		`["https://b.test:1", "https://b.test:1", "https:"]`: `"https://b.test:1" is given twice`,
	} {
		f := `{"server":"https://10.0.0.1:8443","servers":` + bad + `,"pin":"` + one.Pin + `","host_id":"h1","credential":"x"}`
		os.WriteFile(p, []byte(f), 0o600)
		if _, err := LoadCredentials(p); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("servers %s: %v, want %q", bad, err, want)
		}
	}
	os.WriteFile(p, []byte(`{"server":"x"}`), 0o600)
	if _, err := LoadCredentials(p); err == nil {
		t.Error("incomplete credentials loaded")
	}
}
