package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/tandem-ci/tandem/internal/config"
)

// firstRun turns a config file that is not there, the first thing a new
// operator meets, into what to do about it; other errors pass unchanged
// (config.Load already names the file, line, key and fix of each problem).
func firstRun(err error) error {
	var nf *config.NotFoundError
	if !errors.As(err, &nf) {
		return err
	}
	return fmt.Errorf("no config file at %s. To make one, with a GitHub App made for it:\n"+
		"  tandem init --org ORG --webhook-url https://THIS-HOST/webhook --config-dir %s\n"+
		"or try Tandem first without GitHub:\n"+
		"  tandem up --demo     # an emulated GitHub in this process, and a job on each architecture\n"+
		"or point at another file with --config FILE: %w", nf.Path, filepath.Dir(nf.Path), err)
}
