package ociimage

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
)

// Reference syntax, after distribution's reference grammar (lower-case
// path components, an optional registry host with port, a tag).
var (
	domainRe = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?(:[0-9]+)?$`)
	pathRe   = regexp.MustCompile(`^[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$`)
	tagRe    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// splitRepoTag parses "name[:tag]"; the tag defaults to latest.
func splitRepoTag(s string) (name, tag string, err error) {
	name, tag = s, "latest"
	if i := strings.LastIndex(s, ":"); i > strings.LastIndex(s, "/") {
		name, tag = s[:i], s[i+1:]
	}
	p := name
	// A first component with a dot or a port, or "localhost", is a registry host.
	if dom, rest, ok := strings.Cut(name, "/"); ok && (strings.ContainsAny(dom, ".:") || dom == "localhost") {
		if !domainRe.MatchString(dom) {
			return "", "", fmt.Errorf("ociimage: bad registry host %q", dom)
		}
		p = rest
	}
	if !pathRe.MatchString(p) || len(name) > 255 {
		return "", "", fmt.Errorf("ociimage: bad repository name %q", name)
	}
	if !tagRe.MatchString(tag) {
		return "", "", fmt.Errorf("ociimage: bad tag %q", tag)
	}
	return name, tag, nil
}

// WriteDockerArchive writes the image in the format of `docker save`, which
// `docker load -i` reads: manifest.json, the config as <hex>.json, each
// layer as <hex>/layer.tar (uncompressed), and the legacy repositories
// file. repoTag is "name:tag" (":latest" if the tag is left out).
func (im *Image) WriteDockerArchive(w io.Writer, repoTag string) error {
	name, tag, err := splitRepoTag(repoTag)
	if err != nil {
		return err
	}
	hexOf := func(b []byte) string { return strings.TrimPrefix(digest(b), "sha256:") }
	configName := hexOf(im.Config) + ".json"
	var layerNames []string
	tw := tar.NewWriter(w)
	put := func(name string, body []byte) error {
		h := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body)),
			ModTime: Created, Uname: "root", Gname: "root"}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	if err := put(configName, im.Config); err != nil {
		return fmt.Errorf("ociimage: archive: %w", err)
	}
	for _, l := range im.Layers {
		id := hexOf(l)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: id + "/", Mode: 0o755, ModTime: Created}); err != nil {
			return fmt.Errorf("ociimage: archive: %w", err)
		}
		if err := put(id+"/VERSION", []byte("1.0")); err != nil {
			return fmt.Errorf("ociimage: archive: %w", err)
		}
		if err := put(id+"/layer.tar", l); err != nil {
			return fmt.Errorf("ociimage: archive: %w", err)
		}
		layerNames = append(layerNames, id+"/layer.tar")
	}
	manifest, err := json.Marshal([]struct {
		Config   string
		RepoTags []string
		Layers   []string
	}{{configName, []string{name + ":" + tag}, layerNames}})
	if err != nil {
		return err
	}
	if err := put("manifest.json", manifest); err != nil {
		return fmt.Errorf("ociimage: archive: %w", err)
	}
	top := strings.TrimSuffix(layerNames[len(layerNames)-1], "/layer.tar")
	repos, err := json.Marshal(map[string]map[string]string{name: {tag: top}})
	if err != nil {
		return err
	}
	if err := put("repositories", repos); err != nil {
		return fmt.Errorf("ociimage: archive: %w", err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("ociimage: archive: %w", err)
	}
	return nil
}

// Push uploads the image to a registry (registry HTTP API v2, no
// authentication) as repo:tag: each blob not already there by a monolithic
// upload (POST, then PUT with its digest), then the manifest. registryURL
// is the registry's root, e.g. http://127.0.0.1:5000.
func (im *Image) Push(ctx context.Context, client *http.Client, registryURL, repo, tag string) error {
	if client == nil {
		client = http.DefaultClient
	}
	base, err := url.Parse(strings.TrimRight(registryURL, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return fmt.Errorf("ociimage: push: registry URL %q: want http(s)://HOST[:PORT]", registryURL)
	}
	if _, _, err := splitRepoTag(repo + ":" + tag); err != nil || strings.Contains(repo, ":") {
		return fmt.Errorf("ociimage: push: bad repository or tag %q:%q", repo, tag)
	}
	p := &pusher{ctx: ctx, client: client, base: base, repo: repo}
	blobs := append([][]byte{im.Config}, im.CompressedLayers...)
	for _, b := range blobs {
		if err := p.blob(b); err != nil {
			return fmt.Errorf("ociimage: push %s: %w", repo, err)
		}
	}
	resp, err := p.do(http.MethodPut, p.url("/v2/"+repo+"/manifests/"+tag), MediaTypeManifest, im.Manifest)
	if err != nil {
		return fmt.Errorf("ociimage: push %s:%s: manifest: %w", repo, tag, err)
	}
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("ociimage: push %s:%s: manifest: %s", repo, tag, p.status(resp))
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != im.Digest() {
		return fmt.Errorf("ociimage: push %s:%s: the registry names the manifest %s, not %s", repo, tag, got, im.Digest())
	}
	return nil
}

type pusher struct {
	ctx    context.Context
	client *http.Client
	base   *url.URL
	repo   string
}

func (p *pusher) url(path string) string { return p.base.String() + path }

// do makes one request and reads the response body (kept in the
// response's Body as a buffer).
func (p *pusher) do(method, u, contentType string, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(p.ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return resp, nil
}

func (p *pusher) status(resp *http.Response) string {
	b, _ := io.ReadAll(resp.Body)
	msg := strings.TrimSpace(string(b))
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	return fmt.Sprintf("%s %s %s: %s", resp.Request.Method, resp.Request.URL.Path, resp.Status, msg)
}

// blob uploads one blob unless the registry has it.
func (p *pusher) blob(b []byte) error {
	d := digest(b)
	resp, err := p.do(http.MethodHead, p.url("/v2/"+p.repo+"/blobs/"+d), "", nil)
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	resp, err = p.do(http.MethodPost, p.url("/v2/"+p.repo+"/blobs/uploads/"), "", nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("start upload: %s", p.status(resp))
	}
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil || resp.Header.Get("Location") == "" {
		return fmt.Errorf("start upload: no usable Location (%q)", resp.Header.Get("Location"))
	}
	q := loc.Query()
	q.Set("digest", d)
	loc.RawQuery = q.Encode()
	resp, err = p.do(http.MethodPut, loc.String(), "application/octet-stream", b)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("upload %s: %s", d, p.status(resp))
	}
	return nil
}
