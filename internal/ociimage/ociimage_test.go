package ociimage

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/tandem-ci/tandem/internal/testenv"
)

func hostBusybox(t *testing.T) ([]byte, string) {
	t.Helper()
	b, arch, err := HostBusybox()
	if err != nil {
		t.Fatal(err)
	}
	return b, arch
}

func build(t *testing.T, extra map[string][]byte) *Image {
	t.Helper()
	bb, arch := hostBusybox(t)
	im, err := Busybox(bb, arch, extra)
	if err != nil {
		t.Fatal(err)
	}
	return im
}

// readTar returns a tar's entries by name.
func readTar(t *testing.T, b []byte) (map[string]*tar.Header, map[string][]byte, []string) {
	t.Helper()
	hdrs, bodies := map[string]*tar.Header{}, map[string][]byte{}
	var order []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		hdrs[name], bodies[name] = h, body
		order = append(order, name)
	}
	return hdrs, bodies, order
}

func TestBusyboxLayerAndConfig(t *testing.T) {
	bb, arch := hostBusybox(t)
	im, err := Busybox(bb, arch, map[string][]byte{"/usr/bin/job": []byte("#!/bin/sh\necho job\n"), "opt/deep/x.txt": []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Layers) != 1 || len(im.CompressedLayers) != 1 || im.Arch != arch {
		t.Fatalf("layers %d/%d arch %s", len(im.Layers), len(im.CompressedLayers), im.Arch)
	}
	hdrs, bodies, _ := readTar(t, im.Layers[0])
	if !bytes.Equal(bodies["bin/busybox"], bb) || hdrs["bin/busybox"].Mode != 0o755 {
		t.Error("bin/busybox missing or wrong")
	}
	for _, a := range []string{"sh", "wget", "echo", "cat"} {
		if h := hdrs["bin/"+a]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
			t.Errorf("bin/%s: %+v", a, h)
		}
	}
	if h := hdrs["tmp"]; h == nil || h.Mode != 0o1777 {
		t.Errorf("tmp: %+v", h)
	}
	if string(bodies["usr/bin/job"]) != "#!/bin/sh\necho job\n" || hdrs["usr/bin/job"].Mode != 0o755 {
		t.Error("extra file usr/bin/job missing")
	}
	if hdrs["opt"] == nil || hdrs["opt/deep"] == nil || hdrs["opt/deep"].Typeflag != tar.TypeDir {
		t.Error("parents of an extra file not made")
	}
	for name, h := range hdrs {
		if !h.ModTime.Equal(Created) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d", name, h.ModTime, h.Uid, h.Gid)
		}
	}

	var cfg struct {
		Architecture, OS string
		Config           struct{ Cmd []string }
		RootFS           struct {
			Type    string
			DiffIDs []string `json:"diff_ids"`
		}
	}
	if err := json.Unmarshal(im.Config, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Architecture != arch || cfg.OS != "linux" || len(cfg.Config.Cmd) != 1 || cfg.Config.Cmd[0] != "/bin/sh" ||
		cfg.RootFS.Type != "layers" || len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != digest(im.Layers[0]) {
		t.Errorf("config: %s", im.Config)
	}
	var man struct {
		SchemaVersion int
		MediaType     string
		Config        struct{ MediaType, Digest string }
		Layers        []struct {
			MediaType, Digest string
			Size              int
		}
	}
	if err := json.Unmarshal(im.Manifest, &man); err != nil {
		t.Fatal(err)
	}
	if man.SchemaVersion != 2 || man.MediaType != MediaTypeManifest || man.Config.Digest != im.ConfigDigest() ||
		len(man.Layers) != 1 || man.Layers[0].Digest != digest(im.CompressedLayers[0]) ||
		man.Layers[0].Size != len(im.CompressedLayers[0]) || man.Layers[0].MediaType != MediaTypeLayer {
		t.Errorf("manifest: %s", im.Manifest)
	}
}

func TestDeterministic(t *testing.T) {
	a := build(t, map[string][]byte{"a": []byte("1"), "b/c": []byte("2")})
	b := build(t, map[string][]byte{"b/c": []byte("2"), "a": []byte("1")})
	if a.Digest() != b.Digest() || !bytes.Equal(a.Manifest, b.Manifest) || !bytes.Equal(a.Config, b.Config) {
		t.Errorf("same input, different images: %s vs %s", a.Digest(), b.Digest())
	}
	var wa, wb bytes.Buffer
	if err := a.WriteDockerArchive(&wa, "x/y:z"); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteDockerArchive(&wb, "x/y:z"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(wa.Bytes(), wb.Bytes()) {
		t.Error("same image, different archives")
	}
	if c := build(t, map[string][]byte{"a": []byte("other")}); c.Digest() == a.Digest() {
		t.Error("different input, same digest")
	}
	if !strings.HasPrefix(a.Digest(), "sha256:") || len(a.Digest()) != 71 {
		t.Errorf("digest %q", a.Digest())
	}
}

func TestBusyboxBadInput(t *testing.T) {
	bb, arch := hostBusybox(t)
	other := map[string]string{"amd64": "arm64", "arm64": "amd64"}[arch]
	for _, tc := range []struct {
		name  string
		bin   []byte
		arch  string
		extra map[string][]byte
		want  string
	}{
		{"arch", bb, "riscv64", nil, "want amd64 or arm64"},
		{"wrong arch", bb, other, nil, "is an " + arch + " binary"},
		{"not elf", []byte("#!/bin/sh\n"), arch, nil, "not an ELF"},
		{"empty", nil, arch, nil, "not an ELF"},
		{"dotdot", bb, arch, map[string][]byte{"../etc/x": nil}, "want a path"},
		{"root", bb, arch, map[string][]byte{"/": nil}, "want a path"},
		{"clash", bb, arch, map[string][]byte{"/bin/sh": nil}, "already has /bin/sh"},
		{"under a file", bb, arch, map[string][]byte{"etc/passwd/x": nil}, "not a directory"},
	} {
		if _, err := Busybox(tc.bin, tc.arch, tc.extra); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

// TestDockerArchive checks the archive as `docker load` reads it: the
// manifest.json entry names the config and layers, the layers' digests are
// the config's diff_ids, and repositories names the top layer.
func TestDockerArchive(t *testing.T) {
	im := build(t, nil)
	var buf bytes.Buffer
	if err := im.WriteDockerArchive(&buf, "library/tandem-busybox:v1"); err != nil {
		t.Fatal(err)
	}
	_, bodies, order := readTar(t, buf.Bytes())
	var man []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(bodies["manifest.json"], &man); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if len(man) != 1 || len(man[0].RepoTags) != 1 || man[0].RepoTags[0] != "library/tandem-busybox:v1" {
		t.Fatalf("manifest.json: %s", bodies["manifest.json"])
	}
	cfg, ok := bodies[man[0].Config]
	if !ok || !bytes.Equal(cfg, im.Config) || man[0].Config != strings.TrimPrefix(im.ConfigDigest(), "sha256:")+".json" {
		t.Fatalf("config %q not in the archive (entries %v)", man[0].Config, order)
	}
	var c struct {
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		}
	}
	json.Unmarshal(cfg, &c)
	if len(man[0].Layers) != len(c.RootFS.DiffIDs) {
		t.Fatalf("%d layers, %d diff_ids", len(man[0].Layers), len(c.RootFS.DiffIDs))
	}
	for i, l := range man[0].Layers {
		if digest(bodies[l]) != c.RootFS.DiffIDs[i] {
			t.Errorf("layer %s: digest %s, diff_id %s", l, digest(bodies[l]), c.RootFS.DiffIDs[i])
		}
		if hdrs, _, _ := readTar(t, bodies[l]); hdrs["bin/busybox"] == nil {
			t.Errorf("layer %s has no bin/busybox", l)
		}
	}
	var repos map[string]map[string]string
	if err := json.Unmarshal(bodies["repositories"], &repos); err != nil || repos["library/tandem-busybox"]["v1"] == "" {
		t.Errorf("repositories: %s (%v)", bodies["repositories"], err)
	}

	buf.Reset()
	if err := im.WriteDockerArchive(&buf, "busybox"); err != nil {
		t.Fatal(err)
	}
	_, bodies, _ = readTar(t, buf.Bytes())
	if !strings.Contains(string(bodies["manifest.json"]), `"busybox:latest"`) {
		t.Errorf("untagged name not given :latest: %s", bodies["manifest.json"])
	}
	for _, bad := range []string{"", "UPPER/case:x", "a b:c", "x:bad tag", "x:"} {
		if err := im.WriteDockerArchive(io.Discard, bad); err == nil {
			t.Errorf("WriteDockerArchive(%q) took a bad name", bad)
		}
	}
}

// TestRuns extracts the layer and runs its shell (root: chroot).
func TestRuns(t *testing.T) {
	testenv.RequireRoot(t) // chroot
	im := build(t, map[string][]byte{"usr/bin/job": []byte("#!/bin/sh\necho from-job \"$@\"\n")})
	dir := t.TempDir()
	tarCmd := exec.Command("tar", "-x", "-C", dir)
	tarCmd.Stdin = bytes.NewReader(im.Layers[0])
	if out, err := tarCmd.CombinedOutput(); err != nil {
		t.Fatalf("tar: %v: %s", err, out)
	}
	out, err := exec.Command("chroot", dir, "/bin/sh", "-c", "echo hi | cat; /usr/bin/job x; wget --help 2>&1 | head -1").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !strings.HasPrefix(string(out), "hi\nfrom-job x\nBusyBox") {
		t.Errorf("output %q", out)
	}
}

// fakeRegistry is the upload half of the registry API, strict about what a
// client must send.
type fakeRegistry struct {
	mu        sync.Mutex
	blobs     map[string][]byte
	manifests map[string][]byte
	ctype     map[string]string
}

func (f *fakeRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := r.URL.Path
	switch {
	case r.Method == http.MethodHead && strings.Contains(p, "/blobs/sha256:"):
		if _, ok := f.blobs[p[strings.LastIndex(p, "/")+1:]]; !ok {
			w.WriteHeader(http.StatusNotFound)
		}
	case r.Method == http.MethodPost && strings.HasSuffix(p, "/blobs/uploads/"):
		w.Header().Set("Location", p+"some-uuid?_state=abc")
		w.WriteHeader(http.StatusAccepted)
	case r.Method == http.MethodPut && strings.HasSuffix(p, "/blobs/uploads/some-uuid"):
		b, _ := io.ReadAll(r.Body)
		d := r.URL.Query().Get("digest")
		if r.URL.Query().Get("_state") != "abc" || d != digest(b) {
			http.Error(w, "bad upload", http.StatusBadRequest)
			return
		}
		f.blobs[d] = b
		w.WriteHeader(http.StatusCreated)
	case r.Method == http.MethodPut && strings.Contains(p, "/manifests/"):
		b, _ := io.ReadAll(r.Body)
		f.manifests[p], f.ctype[p] = b, r.Header.Get("Content-Type")
		w.Header().Set("Docker-Content-Digest", digest(b))
		w.WriteHeader(http.StatusCreated)
	default:
		http.Error(w, "unexpected "+r.Method+" "+p, http.StatusMethodNotAllowed)
	}
}

func TestPush(t *testing.T) {
	im := build(t, nil)
	f := &fakeRegistry{blobs: map[string][]byte{}, manifests: map[string][]byte{}, ctype: map[string]string{}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	ctx := context.Background()
	if err := im.Push(ctx, srv.Client(), srv.URL+"/", "library/bb", "v1"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f.blobs[im.ConfigDigest()], im.Config) || !bytes.Equal(f.blobs[im.LayerDigests()[0]], im.CompressedLayers[0]) {
		t.Error("blobs not uploaded as they are")
	}
	if !bytes.Equal(f.manifests["/v2/library/bb/manifests/v1"], im.Manifest) || f.ctype["/v2/library/bb/manifests/v1"] != MediaTypeManifest {
		t.Errorf("manifest: %q %q", f.manifests, f.ctype)
	}
	// Again: the blobs are there, only the manifest goes.
	if err := im.Push(ctx, srv.Client(), srv.URL, "library/bb", "v2"); err != nil {
		t.Fatal(err)
	}
	if err := im.Push(ctx, nil, "ftp://x", "a", "b"); err == nil {
		t.Error("pushed to an ftp URL")
	}
	if err := im.Push(ctx, nil, srv.URL, "Bad Repo", "b"); err == nil {
		t.Error("pushed to a bad repository name")
	}
	nf := httptest.NewServer(http.NotFoundHandler())
	defer nf.Close()
	if err := im.Push(ctx, nf.Client(), nf.URL, "a", "b"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("push to a non-registry: %v", err)
	}
}
