// Command sluice-agent is Sluice's node agent: it loads the eBPF steering
// programs and enrolls pods. See `sluice-agent --help`.
package main

import (
	"os"

	"github.com/sluice-mesh/sluice/agent/command"
)

func main() {
	if err := command.NewRoot().Execute(); err != nil {
		os.Exit(1)
	}
}
