package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-ci/tandem/internal/arch"
	"github.com/tandem-ci/tandem/internal/controlplane"
	"github.com/tandem-ci/tandem/internal/image"
	"github.com/tandem-ci/tandem/internal/image/imagetest"
	"github.com/tandem-ci/tandem/internal/labels"
)

func TestOpsImages(t *testing.T) {
	r := newOpsRig(t)
	st, err := image.Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	amd := imagetest.Add(t, st, imagetest.Options{Seed: 1, Ref: "test-amd64"})
	arm := imagetest.Add(t, st, imagetest.Options{Seed: 2, Arch: "arm64", Kind: "runner", Ref: "runner-arm64"})
	parser, _ := labels.NewParser("tandem", 2, 4096)
	set, err := controlplane.ResolveImages(st, parser, map[arch.Arch]string{arch.AMD64: "test-amd64", arch.ARM64: "test-arm64"},
		map[string]string{"tandem-arm64-4cpu-8gb": "runner-arm64"})
	if err != nil {
		t.Fatal(err)
	}
	r.cp.SetImages(set)
	out := r.ok(r.as(opsRead, "images")).stdout
	if row := rowOf(t, out, "arch"); row[1] != "amd64" || row[2] != "test-amd64" || row[3] != amd.ID || row[4] != "test" {
		t.Errorf("amd64 row %q", row)
	}
	if row := rowOf(t, out, "tandem-arm64-4cpu-8gb"); row[1] != "runner-arm64" || row[2] != arm.ID || row[3] != "runner" {
		t.Errorf("label row %q", row)
	}
	if !strings.Contains(out, "not in the store") {
		t.Errorf("the unbuilt test-arm64 is not shown as such:\n%s", out)
	}
	var res struct{ Images []controlplane.NamedImage }
	if err := json.Unmarshal([]byte(r.ok(r.as(opsRead, "images", "--json")).stdout), &res); err != nil || len(res.Images) != 3 {
		t.Errorf("images --json: %+v %v", res, err)
	}
	// A label's image must be of the label's architecture.
	_, err = controlplane.ResolveImages(st, parser, nil, map[string]string{"tandem-amd64": "runner-arm64"})
	if err == nil || !strings.Contains(err.Error(), "is for arm64, not amd64") {
		t.Errorf("an arm64 image for an amd64 label: %v", err)
	}
}
