package e2e

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// upstreamRegistry is a plain docker-registry (Debian's CNCF distribution)
// on this namespace's loopback, behind a proxy that counts what reaches it:
// the upstream a host's registry mirror caches.
type upstreamRegistry struct {
	url string // the counting proxy's, as the mirror is given it
	reg string // the registry's own, for pushing

	mu   sync.Mutex
	reqs []string // "METHOD path"
}

func startUpstreamRegistry(t *testing.T) *upstreamRegistry {
	t.Helper()
	if _, err := exec.LookPath("docker-registry"); err != nil {
		t.Fatalf("docker-registry: %v (scripts/install-deps.sh installs it)", err)
	}
	dir := t.TempDir()
	port := freePort(t)
	cfg := filepath.Join(dir, "config.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("version: 0.1\nlog: {level: warn}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%d}\n", dir, port)), 0o600)
	cmd := exec.Command("docker-registry", "serve", cfg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	u := &upstreamRegistry{reg: fmt.Sprintf("http://127.0.0.1:%d", port)}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(u.reg + "/v2/"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("upstream registry did not start: %s", out.String())
		}
	}
	target, _ := url.Parse(u.reg)
	proxy := httputil.NewSingleHostReverseProxy(target)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.reqs = append(u.reqs, r.Method+" "+r.URL.Path)
		u.mu.Unlock()
		proxy.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	u.url = "http://" + ln.Addr().String()
	return u
}

// take returns the requests that reached the upstream since the last take.
func (u *upstreamRegistry) take() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	r := u.reqs
	u.reqs = nil
	return r
}

func blobGets(reqs []string) []string {
	var b []string
	for _, r := range reqs {
		if strings.HasPrefix(r, "GET ") && strings.Contains(r, "/blobs/") {
			b = append(b, r)
		}
	}
	return b
}
