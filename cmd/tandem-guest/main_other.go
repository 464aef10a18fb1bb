//go:build !linux

package main

import (
	"fmt"
	"os"
)

func boot() {
	fmt.Fprintln(os.Stderr, "tandem-guest: runs inside a Linux VM only")
	os.Exit(1)
}
