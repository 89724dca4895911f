// Package version holds the version that Sluice's binaries report and that
// the injector and installer stamp on what they create. Release builds set
// it with -ldflags "-X github.com/sluice-mesh/sluice/internal/version.Version=v1.2.3".
package version

// Version is the build's version; "dev" for a build from a checkout.
var Version = "dev"
