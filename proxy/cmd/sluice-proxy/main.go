// Command sluice-proxy is the Sluice sidecar proxy; see proxy/README.md.
package main

import (
	"os"

	"github.com/sluice-mesh/sluice/proxy/command"
)

func main() { os.Exit(command.Main(os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr)) }
