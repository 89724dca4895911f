// Package taptest runs the tap service in process for unit tests: fake
// proxies that serve the Tap gRPC API and send the events a test gives
// them, a certificate authority for the front proxy's client certificate,
// meshed pods for a fake clientset, and a stand-in for the API server's
// aggregator that authenticates users by bearer token and forwards their
// taps as the real one does. It is for tests only; the real API server's
// behaviour is for end-to-end tests.
package taptest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	apinet "github.com/sluice-mesh/sluice/controlplane/api/net"
	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// CA is a certificate authority that issues client certificates, such as
// the API server's request-header CA.
type CA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewCA returns a CA named cn, valid for a day around now.
func NewCA(t testing.TB, cn string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate CA key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("create CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parse CA certificate: %v", err)
	}
	return &CA{Cert: cert, key: key}
}

// PEM returns the CA's certificate in PEM.
func (ca *CA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// Pool returns a pool holding the CA's certificate.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

var serial struct {
	mu sync.Mutex
	n  int64
}

func nextSerial() *big.Int {
	serial.mu.Lock()
	defer serial.mu.Unlock()
	serial.n++
	return big.NewInt(serial.n + 1)
}

// ClientCert issues a client certificate with common name cn.
func (ca *CA) ClientCert(t testing.TB, cn string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate client key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("create client certificate: %v", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parse client certificate: %v", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// Pod returns a running pod with the IP ip, meshed (labelled as the
// injector does, with the owner label deployment=<app> when labels has
// "app") or not.
func Pod(ns, name, ip string, meshed bool, labels map[string]string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{}},
		Spec:       corev1.PodSpec{ServiceAccountName: labels["app"]},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
	for k, v := range labels {
		p.Labels[k] = v
	}
	if meshed {
		p.Labels[meshmeta.LabelControlPlaneNS] = meshmeta.DefaultNamespace
		p.Labels[meshmeta.LabelWorkloadNS] = ns
		if app := labels["app"]; app != "" {
			p.Labels[meshmeta.LabelProxyDeployment] = app
		}
	}
	return p
}

// Proxy is a fake proxy's tap server: each Observe call becomes a Stream
// the test drives.
type Proxy struct {
	lis     *bufconn.Listener
	srv     *grpc.Server
	streams chan *Stream
	dials   atomic.Int32
}

// NewProxy starts a fake proxy, stopped when the test ends.
func NewProxy(t testing.TB) *Proxy {
	p := &Proxy{lis: bufconn.Listen(1 << 20), srv: grpc.NewServer(), streams: make(chan *Stream, 16)}
	tappb.RegisterTapServer(p.srv, &proxyServer{p: p})
	go p.srv.Serve(p.lis)
	t.Cleanup(p.srv.Stop)
	return p
}

// NextStream waits for the next Observe call, failing the test after 10s.
func (p *Proxy) NextStream(t testing.TB) *Stream {
	t.Helper()
	select {
	case s := <-p.streams:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no Observe call reached the proxy within 10s")
		return nil
	}
}

// Dial connects to the proxy.
func (p *Proxy) Dial(ctx context.Context) (net.Conn, error) {
	p.dials.Add(1)
	return p.lis.DialContext(ctx)
}

// Dials returns how many connections were made to the proxy. The tap
// service connects before it answers, so once a tap's response arrived
// this says whether the proxy is one of its pods'.
func (p *Proxy) Dials() int { return int(p.dials.Load()) }

// Dialer returns a tap.Config.Dial that reaches the proxies by pod IP;
// other addresses are refused.
func Dialer(proxies map[netip.Addr]*Proxy) func(context.Context, netip.AddrPort) (net.Conn, error) {
	return func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
		p, ok := proxies[addr.Addr()]
		if !ok {
			return nil, fmt.Errorf("dial %s: connection refused", addr)
		}
		return p.Dial(ctx)
	}
}

// Stream is one Observe call on a fake proxy.
type Stream struct {
	// Request is what the tap service asked for.
	Request *tappb.ObserveRequest
	events  chan *tappb.TapEvent
	end     chan error
	done    chan struct{}
}

// ErrStreamEnded is returned by Send on a stream that ended.
var ErrStreamEnded = errors.New("observe stream ended")

// Send sends ev on the stream; it returns ErrStreamEnded when the stream
// ended first (the tap service cancelled it).
func (s *Stream) Send(ev *tappb.TapEvent) error {
	select {
	case s.events <- ev:
		return nil
	case <-s.done:
		return ErrStreamEnded
	}
}

// End ends the stream with err (nil: OK, as a proxy whose limit was
// reached).
func (s *Stream) End(err error) {
	select {
	case s.end <- err:
	case <-s.done:
	}
}

// Done is closed when the stream ended, by End or by the client.
func (s *Stream) Done() <-chan struct{} { return s.done }

// WaitDone waits for the stream to end, failing the test after 10s.
func (s *Stream) WaitDone(t testing.TB) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the proxy's Observe stream did not end within 10s")
	}
}

type proxyServer struct {
	tappb.UnimplementedTapServer
	p *Proxy
}

func (ps *proxyServer) Observe(req *tappb.ObserveRequest, stream tappb.Tap_ObserveServer) error {
	s := &Stream{Request: req, events: make(chan *tappb.TapEvent), end: make(chan error), done: make(chan struct{})}
	defer close(s.done)
	ctx := stream.Context()
	select {
	case ps.p.streams <- s:
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case err := <-s.end:
			return err
		case ev := <-s.events:
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
	}
}

// RequestInit returns a request-init event of request n (of proxy base),
// seen in direction dir from src to dst.
func RequestInit(base uint32, n uint64, dir tappb.TapEvent_ProxyDirection, src, dst netip.AddrPort, method, authority, path string) *tappb.TapEvent {
	return event(dir, src, dst, &tappb.TapEvent_Http{Event: &tappb.TapEvent_Http_RequestInit_{RequestInit: &tappb.TapEvent_Http_RequestInit{
		Id: &tappb.TapEvent_Http_StreamId{Base: base, Stream: n}, Method: method, Scheme: "http", Authority: authority, Path: path,
	}}})
}

// ResponseEnd returns the response-end event of request n (of proxy base).
func ResponseEnd(base uint32, n uint64, dir tappb.TapEvent_ProxyDirection, src, dst netip.AddrPort) *tappb.TapEvent {
	return event(dir, src, dst, &tappb.TapEvent_Http{Event: &tappb.TapEvent_Http_ResponseEnd_{ResponseEnd: &tappb.TapEvent_Http_ResponseEnd{
		Id: &tappb.TapEvent_Http_StreamId{Base: base, Stream: n},
	}}})
}

func event(dir tappb.TapEvent_ProxyDirection, src, dst netip.AddrPort, h *tappb.TapEvent_Http) *tappb.TapEvent {
	return &tappb.TapEvent{
		Source:         tcpAddr(src),
		Destination:    tcpAddr(dst),
		ProxyDirection: dir,
		Event:          &tappb.TapEvent_Http_{Http: h},
	}
}

func tcpAddr(ap netip.AddrPort) *apinet.TcpAddress {
	if !ap.IsValid() {
		return nil
	}
	return &apinet.TcpAddress{Ip: ap.Addr().AsSlice(), Port: uint32(ap.Port())}
}
