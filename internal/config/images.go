package config

import (
	"fmt"
	"maps"
	"regexp"
	"slices"

	"github.com/tandem-ci/tandem/internal/arch"
)

// imageNameRE is what an image ref or id may look like (image.Store.Resolve).
var imageNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

// validateImages checks runner.image_* and runner.images as far as the file
// can tell; that the images exist, are intact and of the right
// architecture is checked against the image store when the control plane
// starts.
func (c *Config) validateImages() []error {
	var errs []error
	for key, ref := range map[string]string{"image_amd64": c.Runner.ImageAMD64, "image_arm64": c.Runner.ImageARM64} {
		if !imageNameRE.MatchString(ref) {
			errs = append(errs, fmt.Errorf("runner.%s %q: want an image ref (test-amd64) or id", key, ref))
		}
	}
	p, err := c.ParserFor()
	if err != nil {
		return errs // reported as labels: ...
	}
	keys := slices.Sorted(maps.Keys(c.Runner.Images))
	seen := map[string]string{}
	for _, label := range keys {
		ref := c.Runner.Images[label]
		req, ok, err := p.Parse([]string{label})
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("runner.images: %w", err))
			continue
		case !ok:
			errs = append(errs, fmt.Errorf("runner.images: %q is not a %s label", label, p.Prefix))
			continue
		case req.Arch == arch.Any:
			errs = append(errs, fmt.Errorf("runner.images: %q may run on either architecture and an image is for one: name one per architecture", label))
			continue
		}
		if prev, dup := seen[req.Canonical()]; dup {
			errs = append(errs, fmt.Errorf("runner.images: %q and %q are the same label (%s)", prev, label, req.Canonical()))
		}
		seen[req.Canonical()] = label
		if !imageNameRE.MatchString(ref) {
			errs = append(errs, fmt.Errorf("runner.images: %s: %q: want an image ref (runner-arm64) or id", label, ref))
		}
	}
	return errs
}
