package ebpfcheck

import "github.com/sluice-mesh/sluice/internal/nodefacts"

// Host is the machine the local kernel checks look at. Tests point its
// roots at fixture directories.
type Host = nodefacts.Host

// DefaultHost is the machine meshctl runs on.
func DefaultHost() Host { return nodefacts.DefaultHost() }
