// Command sluice-dest-static serves the destination API (Destination/Get)
// from a JSON file, for benchmarks and tests that want proxies to resolve
// names without a Kubernetes cluster. It reloads the file on SIGHUP and
// sends the differences to open streams; a file that does not load is
// reported and the table kept. It prints "READY <addr>" on stdout once
// serving and stops on SIGTERM or SIGINT.
//
//	sluice-dest-static -listen 127.0.0.1:8086 -config table.json
//
// The file maps each path to its endpoints:
//
//	{"paths": {"web.default.svc.cluster.local:8080": [
//	    {"addr": "10.0.0.2:8080", "weight": 1, "h2": true,
//	     "identity": "web.default.serviceaccount.identity.sluice.cluster.local",
//	     "labels": {"pod": "web-1", "namespace": "default", "service": "web"}}]}}
//
// A path with an empty list exists without endpoints; paths not in the file
// do not exist.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/sluice-mesh/sluice/proxy/discovery"
	"github.com/sluice-mesh/sluice/test/destinationtest"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `Usage: sluice-dest-static [-listen ADDR] -config FILE

Serves the Sluice destination API from a JSON file of paths and endpoints,
reloaded on SIGHUP. Prints "READY <addr>" on stdout once serving.

Flags:
`

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sluice-dest-static", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	listen := fs.String("listen", "127.0.0.1:8086", "`address` to serve gRPC on (port 0: any free port)")
	file := fs.String("config", "", "JSON `file` with the paths and their endpoints (required)")
	printUsage := func(w io.Writer) {
		fmt.Fprint(w, usage)
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout)
			return 0
		}
		fmt.Fprintf(stderr, "sluice-dest-static: %v\n", err)
		printUsage(stderr)
		return 2
	}
	if *file == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "sluice-dest-static: need -config FILE and no arguments")
		printUsage(stderr)
		return 2
	}
	addr, err := netip.ParseAddrPort(*listen)
	if err != nil {
		fmt.Fprintf(stderr, "sluice-dest-static: parse -listen: %v\n", err)
		return 2
	}
	table, err := loadConfig(*file)
	if err != nil {
		fmt.Fprintf(stderr, "sluice-dest-static: %v\n", err)
		return 1
	}
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("component", "sluice-dest-static")

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	srv, err := destinationtest.New(destinationtest.Options{Addr: addr, Logger: log})
	if err != nil {
		fmt.Fprintf(stderr, "sluice-dest-static: %v\n", err)
		return 1
	}
	defer srv.Close()
	srv.Replace(table)
	log.Info("serving", "addr", srv.Addr(), "paths", len(table))
	fmt.Fprintf(stdout, "READY %s\n", srv.Addr())

	for sig := range sigs {
		if sig != syscall.SIGHUP {
			log.Info("stopping", "signal", sig.String())
			return 0
		}
		table, err := loadConfig(*file)
		if err != nil {
			log.Error("reload failed; keeping the table", "err", err)
			continue
		}
		srv.Replace(table)
		log.Info("reloaded", "paths", len(table))
	}
	return 0
}

// config is the JSON file.
type config struct {
	Paths map[string][]endpointConfig `json:"paths"`
}

// endpointConfig is one endpoint in the file.
type endpointConfig struct {
	Addr     string            `json:"addr"`
	Weight   uint32            `json:"weight"`
	Labels   map[string]string `json:"labels"`
	Identity string            `json:"identity"`
	H2       bool              `json:"h2"`
	Opaque   bool              `json:"opaque"`
}

// loadConfig reads the table from the JSON file at name.
func loadConfig(name string) (map[string][]discovery.Endpoint, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	table, err := parseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("parse config %s: %w", name, err)
	}
	return table, nil
}

// parseConfig parses the JSON table, rejecting unknown fields, invalid
// or duplicate addresses and endpoints that are both h2 and opaque.
func parseConfig(b []byte) (map[string][]discovery.Endpoint, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c config
	if err := dec.Decode(&c); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("text after the JSON object")
	}
	if c.Paths == nil {
		return nil, errors.New(`no "paths" object`)
	}
	table := make(map[string][]discovery.Endpoint, len(c.Paths))
	for path, eps := range c.Paths {
		if path == "" {
			return nil, errors.New("empty path")
		}
		table[path] = make([]discovery.Endpoint, 0, len(eps))
		seen := map[netip.AddrPort]bool{}
		for i, e := range eps {
			addr, err := netip.ParseAddrPort(e.Addr)
			if err != nil || addr.Port() == 0 || addr.Addr().Zone() != "" {
				return nil, fmt.Errorf("%s: endpoint %d: invalid addr %q (want IP:port)", path, i, e.Addr)
			}
			addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
			if seen[addr] {
				return nil, fmt.Errorf("%s: endpoint %d: duplicate addr %s", path, i, addr)
			}
			seen[addr] = true
			if e.H2 && e.Opaque {
				return nil, fmt.Errorf("%s: endpoint %d: both h2 and opaque", path, i)
			}
			table[path] = append(table[path], discovery.Endpoint{
				Addr: addr, Weight: e.Weight, Labels: e.Labels,
				Identity: e.Identity, H2: e.H2, Opaque: e.Opaque,
			})
		}
	}
	return table, nil
}
