//go:build !linux

package main

import (
	"fmt"
	"os"
)

func run(string, []string) int {
	fmt.Fprintln(os.Stderr, "steerbench: Linux only")
	return 2
}
