package config

import (
	"strings"
	"testing"
)

func TestRunnerImages(t *testing.T) {
	c, err := load(t, minimal+`runner:
  image_arm64: runner-arm64
  images:
    tandem-arm64-4cpu-8gb: runner-arm64
    Tandem-X64: 0123456789abcdef
`)
	if err != nil {
		t.Fatal(err)
	}
	if c.Runner.ImageAMD64 != "test-amd64" || c.Runner.ImageARM64 != "runner-arm64" || len(c.Runner.Images) != 2 {
		t.Errorf("runner images %+v", c.Runner)
	}
	for body, want := range map[string]string{
		"images:\n    tandem-any-2cpu-4gb: runner-arm64":                    "either architecture",
		"images:\n    linux: runner-arm64":                                  `"linux" is not a tandem label`,
		"images:\n    tandem-arm64-3cpu: runner-arm64":                      "malformed",
		"images:\n    tandem-arm64: ''":                                     "want an image ref",
		"images:\n    tandem-arm64: ../x":                                   "want an image ref",
		"images:\n    tandem-arm64: a\n    tandem-aarch64-2cpu-4gb: b":      "are the same label",
		"image_amd64: 'Test AMD64'":                                         "runner.image_amd64",
		"images:\n    tandem-arm64: runner-arm64\n    tandem-any: runner-x": "either architecture",
	} {
		_, err := load(t, minimal+"runner:\n  "+body+"\n")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error containing %q", body, err, want)
		}
	}
}
