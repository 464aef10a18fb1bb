package controlplane

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/tandem-ci/tandem/internal/agentapi"
	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/labels"
	"github.com/tandem-ci/tandem/internal/store"
)

// The control plane names the image version each runner VM boots: the
// configured refs (runner.image_amd64/arm64, and runner.images per runs-on
// label) are resolved against its own image store to immutable ids when it
// starts (and on SetImages), assignments carry the id, and agents fetch
// the named ids from it over the agent protocol (sparse, sha256-checked),
// prefetch them when they are named, and remove fetched ones no longer
// named (see agent.Images).

// NamedImage is an image the control plane names: an architecture's
// default, or a runs-on label's own.
type NamedImage struct {
	Label   string    `json:"label,omitempty"` // canonical runs-on label; "" for an architecture's default
	Arch    arch.Arch `json:"arch"`
	Ref     string    `json:"ref"`          // as configured
	ID      string    `json:"id,omitempty"` // "": not resolved (an optional default not built; agents resolve Ref)
	Kind    string    `json:"kind,omitempty"`
	Created string    `json:"created,omitempty"`
	Size    int64     `json:"size,omitempty"` // bytes of its files, holes included
}

// name is what an assignment carries: the id, or the ref left to the host.
func (n NamedImage) name() string {
	if n.ID != "" {
		return n.ID
	}
	return n.Ref
}

// ImageSet is every image the control plane names.
type ImageSet struct {
	Arch   map[arch.Arch]NamedImage
	Labels map[string]NamedImage // by canonical runs-on label
}

// List returns the set's images, architecture defaults first.
func (set ImageSet) List() []NamedImage {
	var out []NamedImage
	for _, a := range []arch.Arch{arch.AMD64, arch.ARM64} {
		if n, ok := set.Arch[a]; ok {
			out = append(out, n)
		}
	}
	var ls []NamedImage
	for _, n := range set.Labels {
		ls = append(ls, n)
	}
	sort.Slice(ls, func(i, j int) bool { return ls[i].Label < ls[j].Label })
	return append(out, ls...)
}

// IDs returns the resolved ids of the images for the given architectures
// (all when arches is nil), sorted and without duplicates.
func (set ImageSet) IDs(arches []arch.Arch) []string {
	var ids []string
	for _, n := range set.List() {
		if n.ID != "" && (arches == nil || slices.Contains(arches, n.Arch)) {
			ids = append(ids, n.ID)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// ResolveImages resolves the configured images against the control plane's
// store st: archRefs are the architectures' defaults, labelRefs the
// per-label overrides (runs-on label → ref or id). Every image must exist,
// be intact and be of the right architecture, except that a default left
// at test-<arch> may be missing (the architecture's hosts then resolve the
// ref themselves, as before images were named). A label must be one of
// parser's for one architecture, not "any". With st nil nothing is
// resolved: assignments carry the refs.
func ResolveImages(st *image.Store, parser *labels.Parser, archRefs map[arch.Arch]string, labelRefs map[string]string) (ImageSet, error) {
	set := ImageSet{Arch: map[arch.Arch]NamedImage{}, Labels: map[string]NamedImage{}}
	var errs []error
	resolve := func(n NamedImage, optional bool) (NamedImage, error) {
		if st == nil {
			return n, nil
		}
		im, err := st.Resolve(n.Ref)
		if err != nil {
			if optional && errors.Is(err, image.ErrNotFound) {
				return n, nil
			}
			return n, err
		}
		if im.Manifest.Arch != string(n.Arch) {
			return n, fmt.Errorf("image %s (%s) is for %s, not %s", n.Ref, im.ID, im.Manifest.Arch, n.Arch)
		}
		if err := im.Verify(); err != nil {
			return n, err
		}
		n.ID, n.Kind, n.Created = im.ID, im.Manifest.Kind, im.Manifest.Created
		for _, f := range im.Manifest.Files {
			n.Size += f.Size
		}
		return n, nil
	}
	for _, a := range []arch.Arch{arch.AMD64, arch.ARM64} {
		ref := archRefs[a]
		if ref == "" {
			continue
		}
		n, err := resolve(NamedImage{Arch: a, Ref: ref}, ref == "test-"+string(a))
		if err != nil {
			errs = append(errs, fmt.Errorf("runner.image_%s: %w", a, err))
			continue
		}
		set.Arch[a] = n
	}
	keys := slices.Sorted(maps.Keys(labelRefs))
	for _, label := range keys {
		ref := labelRefs[label]
		req, ok, err := parser.Parse([]string{label})
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("runner.images: %w", err))
			continue
		case !ok:
			errs = append(errs, fmt.Errorf("runner.images: %q is not a %s label", label, parser.Prefix))
			continue
		case req.Arch == arch.Any:
			errs = append(errs, fmt.Errorf("runner.images: %q may run on either architecture, and an image is for one: name the image per architecture (%s-amd64…, %s-arm64…)",
				label, req.Prefix, req.Prefix))
			continue
		}
		key := req.Canonical()
		if prev, dup := set.Labels[key]; dup {
			errs = append(errs, fmt.Errorf("runner.images: %q and another label both mean %s (and name %s and %s)", label, key, prev.Ref, ref))
			continue
		}
		n, err := resolve(NamedImage{Label: key, Arch: req.Arch, Ref: ref}, false)
		if err != nil {
			errs = append(errs, fmt.Errorf("runner.images: %s: %w", label, err))
			continue
		}
		set.Labels[key] = n
	}
	if len(errs) > 0 {
		return set, fmt.Errorf("images: %w", errors.Join(errs...))
	}
	return set, nil
}

// initImages resolves the configured images (New).
func (s *Server) initImages() error {
	set, err := ResolveImages(s.cfg.Images, s.cfg.Labels, s.cfg.Runner.Images, s.cfg.Runner.LabelImages)
	if err != nil {
		return err
	}
	s.images = set
	n := s.cfg.MaxImageTransfers
	if n <= 0 {
		n = 4
	}
	s.imgSlots = make(chan struct{}, n)
	for _, ni := range set.List() {
		if ni.ID == "" && s.cfg.Images != nil {
			s.log.Warn("no image for an architecture: its hosts must have it themselves", "arch", ni.Arch, "ref", ni.Ref,
				"fix", fmt.Sprintf("tandem image build --kind test --arch %s", ni.Arch))
		}
	}
	return nil
}

// Images returns what the control plane names.
func (s *Server) Images() ImageSet {
	s.imgMu.RLock()
	defer s.imgMu.RUnlock()
	return s.images
}

// SetImages makes set (from ResolveImages) what the control plane names:
// launches from now on carry its ids, and every connected agent is told,
// so that it fetches the new ones and removes old ones once their VMs end.
// VMs already running are not disturbed.
func (s *Server) SetImages(set ImageSet) {
	s.imgMu.Lock()
	defer s.imgMu.Unlock()
	defer s.kickPlacement() // warm pools recycle VMs of replaced images
	old := s.images
	s.images = set
	for _, rh := range s.links.streams() {
		if err := rh.send(s.imagesCommand(rh.arches)); err != nil {
			s.log.Warn("telling an agent the named images", "host", rh.id, "err", err)
		}
	}
	for _, n := range set.List() {
		prev := old.Arch[n.Arch]
		if n.Label != "" {
			prev = old.Labels[n.Label]
		}
		if prev.name() != n.name() {
			s.log.Info("image named", "label", n.Label, "arch", n.Arch, "ref", n.Ref, "id", n.ID, "was", prev.name())
		}
	}
}

// imagesCommand tells an agent the ids it may be asked to boot: those of
// its architectures. Called with imgMu held.
func (s *Server) imagesCommand(arches []arch.Arch) agentapi.Command {
	ids := s.images.IDs(arches)
	if ids == nil {
		ids = []string{}
	}
	return agentapi.Command{Type: agentapi.CmdImages, Images: ids}
}

// imageFor is the image a runner's VM boots: its label's own, else its
// architecture's. Called with imgMu held (read).
func (s *Server) imageFor(r store.Runner) string {
	if len(s.images.Labels) > 0 {
		if req, ok, err := s.cfg.Labels.Parse(r.Labels); err == nil && ok {
			if n, ok := s.images.Labels[req.Canonical()]; ok && n.Arch == r.Arch {
				return n.name()
			}
		}
	}
	if n, ok := s.images.Arch[r.Arch]; ok {
		return n.name()
	}
	return s.cfg.Runner.Images[r.Arch]
}

// isNamed reports whether id is an image the control plane names (the
// only ones it serves).
func (s *Server) isNamed(id string) bool {
	if s.cfg.Images == nil || !image.IsID(id) {
		return false
	}
	return slices.Contains(s.Images().IDs(nil), id)
}

func (s *Server) handleImageManifest(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.authAgent(w, r); !ok {
		return
	}
	id := r.PathValue("id")
	if !s.isNamed(id) {
		httpError(w, http.StatusNotFound, fmt.Sprintf("image %q is not one this control plane names", id))
		return
	}
	raw, err := s.cfg.Images.RawManifest(id)
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(raw)
}

// imageSlotWait is how long a file request waits for one of the
// MaxImageTransfers slots before it is told to come back.
var imageSlotWait = 10 * time.Second

func (s *Server) handleImageFile(w http.ResponseWriter, r *http.Request) {
	host, ok := s.authAgent(w, r)
	if !ok {
		return
	}
	id, name := r.PathValue("id"), r.PathValue("name")
	offset, err := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
	if err != nil || offset < 0 {
		httpError(w, http.StatusBadRequest, "offset: want a byte offset")
		return
	}
	if !s.isNamed(id) {
		httpError(w, http.StatusNotFound, fmt.Sprintf("image %q is not one this control plane names", id))
		return
	}
	f, err := s.cfg.Images.OpenFile(id, name)
	if errors.Is(err, image.ErrNotFound) {
		httpError(w, http.StatusNotFound, err.Error())
		return
	}
	if err != nil {
		httpError(w, http.StatusInternalServerError, err.Error())
		return
	}
	defer f.Close()
	t := time.NewTimer(imageSlotWait)
	select {
	case s.imgSlots <- struct{}{}:
		t.Stop()
	case <-t.C:
		w.Header().Set("Retry-After", "5")
		httpError(w, http.StatusServiceUnavailable, fmt.Sprintf("%d image transfers in progress: try again", cap(s.imgSlots)))
		return
	case <-r.Context().Done():
		t.Stop()
		return
	}
	defer func() { <-s.imgSlots }()
	if fi, err := f.Stat(); err != nil || offset > fi.Size() {
		httpError(w, http.StatusBadRequest, "offset beyond the end of the file")
		return
	}
	start := time.Now()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	sent, err := image.WriteSparse(deadlineWriter{w: w, rc: http.NewResponseController(w)}, f, offset)
	log := s.log.With("host", host, "image", id, "file", name, "offset", offset, "data_bytes", sent,
		"ms", time.Since(start).Milliseconds())
	if err != nil {
		log.Warn("image file transfer broke off", "err", err)
		return
	}
	log.Info("image file sent")
}

// deadlineWriter gives each write to a slow agent a minute.
type deadlineWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (d deadlineWriter) Write(p []byte) (int, error) {
	d.rc.SetWriteDeadline(time.Now().Add(time.Minute))
	return d.w.Write(p)
}
