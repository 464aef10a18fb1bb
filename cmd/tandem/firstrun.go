package main

import (
	"errors"
	"fmt"

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
	return fmt.Errorf("no config file at %s. To make one:\n"+
		"  tandem init --config %s      # asks for your GitHub App's ID, key and webhook secret, and writes the file\n"+
		"or try Tandem first without GitHub:\n"+
		"  tandem up --demo               # a local emulated GitHub, a test image, and jobs to run\n"+
		"or point at another file with --config FILE: %w", nf.Path, nf.Path, err)
}
