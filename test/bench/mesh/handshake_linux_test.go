package mesh

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/pki/pkitest"
	"github.com/sluice-mesh/sluice/proxy/detect"
	"github.com/sluice-mesh/sluice/proxy/mtls"
)

// fixedIdentity is a proxy identity with a certificate that does not change.
type fixedIdentity struct {
	name string
	cert *tls.Certificate
}

func (f fixedIdentity) Name() string                  { return f.name }
func (f fixedIdentity) Certificate() *tls.Certificate { return f.cert }

// measureHandshakes runs complete mutual-TLS handshakes with the proxy's
// own code (proxy/mtls: Connect on one side, DetectTLS and Accept on the
// other, certificates checked against the anchors and the identity) over
// loopback TCP, first one at a time, then with parallel clients, each for
// d, and returns what they cost. The client reads one byte the server
// writes after Accept, so a handshake counts once both sides are done.
func measureHandshakes(tb testing.TB, d time.Duration, parallel int) Handshakes {
	tb.Helper()
	ca := pkitest.New(tb)
	side := func(sa string) *mtls.TLS {
		id := meshmeta.IdentityName(sa, namespace, meshmeta.DefaultTrustDomain)
		cert := ca.Valid(tb, id)
		m, err := mtls.New(mtls.Options{Local: fixedIdentity{id, cert}, Roots: ca.Roots, TrustDomain: meshmeta.DefaultTrustDomain})
		if err != nil {
			tb.Fatal(err)
		}
		return m
	}
	client, server := side("client"), side("web")

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	var serverErrs atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, dc, err := detect.DetectTLS(c, 5*time.Second)
				if err == nil {
					var a mtls.Accepted
					if a, err = server.Accept(dc, 5*time.Second); err == nil && a.Terminated {
						_, err = a.Conn.Write([]byte{1})
					} else if err == nil {
						err = errors.New("not terminated")
					}
				}
				if err != nil {
					serverErrs.Add(1)
				}
			}()
		}
	}()
	once := func() error {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tc, err := client.Connect(ctx, c, server.Name(), mtls.ALPNHTTP2)
		if err != nil {
			return err
		}
		_, err = io.ReadFull(tc, make([]byte, 1))
		return err
	}
	// Warm up: the first handshakes fill caches (certificate parsing, the
	// runtime's heap).
	for range 50 {
		if err := once(); err != nil {
			tb.Fatalf("mutual TLS handshake: %v", err)
		}
	}
	run := func(clients int) HandshakeRun {
		var n, failed atomic.Int64
		cpu0 := processCPU(tb)
		start := time.Now()
		deadline := start.Add(d)
		var cw sync.WaitGroup
		for range clients {
			cw.Add(1)
			go func() {
				defer cw.Done()
				for time.Now().Before(deadline) {
					if once() != nil {
						failed.Add(1)
					} else {
						n.Add(1)
					}
				}
			}()
		}
		cw.Wait()
		wall := time.Since(start)
		return HandshakeRun{Clients: clients, Handshakes: n.Load(), Failed: failed.Load(), Wall: wall, CPU: processCPU(tb) - cpu0}
	}
	h := Handshakes{Runs: []HandshakeRun{run(1), run(parallel)}}
	l.Close()
	if n := serverErrs.Load(); n > 0 {
		tb.Errorf("mutual TLS handshakes: the server side failed %d times", n)
	}
	for _, r := range h.Runs {
		if r.Handshakes == 0 || r.Failed > 0 {
			tb.Errorf("mutual TLS handshakes with %d clients: %d done, %d failed", r.Clients, r.Handshakes, r.Failed)
		}
	}
	return h
}

// processCPU is this process's CPU time so far, user and system.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(fmt.Errorf("getrusage: %w", err))
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
