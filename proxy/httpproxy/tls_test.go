package httpproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/proxy/metrics"
	"github.com/sluice-mesh/sluice/proxy/mtls"
	"github.com/sluice-mesh/sluice/proxy/netx"
)

// fakeTLS stands for mutual TLS: it records each handshake and either
// fails it with the error for its server identity or hands the plain
// connection back.
type fakeTLS struct {
	mu    sync.Mutex
	calls []string // "serverID alpn"
	errs  map[string]error
}

func (f *fakeTLS) Connect(_ context.Context, c net.Conn, serverID, alpn string) (net.Conn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, serverID+" "+alpn)
	if err := f.errs[serverID]; err != nil {
		return nil, err
	}
	if serverID == refuserID {
		return refusedConn{c}, nil
	}
	return c, nil
}

// refuserID is a server identity whose peer refuses the handshake after the
// client's side completed, as a TLS 1.3 server that rejects the client's
// certificate does: the first read fails with its alert.
const refuserID = "refuser.id"

type refusedConn struct{ net.Conn }

func (c refusedConn) Read([]byte) (int, error) {
	return 0, &net.OpError{Op: "remote error", Err: errors.New("tls: bad certificate")}
}

func (f *fakeTLS) handshakes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// idRouter sends requests to one address over mutual TLS to the identity
// in the request's x-server-id header ("" for plaintext).
type idRouter struct {
	reg *metrics.Registry
	to  netip.AddrPort
}

func (r *idRouter) Route(req *http.Request, ci *ConnInfo) (*Target, error) {
	t := &Target{Addr: r.to, Series: r.Series(req, ci)}
	if req.ProtoMajor == 2 || req.Header.Get("x-h2") != "" {
		t.Proto = H2
	}
	if id := req.Header.Get("x-server-id"); id != "" {
		t.TLS = metrics.TLS{Status: "true", ServerID: id}
	}
	return t, nil
}

func (r *idRouter) Series(req *http.Request, ci *ConnInfo) *metrics.HTTPSeries {
	return r.reg.HTTP(metrics.Target{Direction: ci.Direction, Authority: req.Host, Addr: r.to})
}

func startTLS(t *testing.T, r Router, reg *metrics.Registry, f *fakeTLS) netip.AddrPort {
	t.Helper()
	p := New(Options{Direction: "outbound", Router: r, Network: netx.Kernel{}, ConnectTimeout: time.Second, Metrics: reg, TLS: f})
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.ServeConn(c, &ConnInfo{Direction: "outbound", Client: netx.AddrPortOf(c.RemoteAddr())})
		}
	}()
	t.Cleanup(func() {
		l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})
	return netip.MustParseAddrPort(l.Addr().String())
}

// Connections to a target that asks for mutual TLS are secured with its
// identity and the ALPN of the protocol, and pooled per identity: requests
// for one identity share a connection, another identity or plaintext at
// the same address gets its own.
func TestTLSOriginationPooledPerIdentity(t *testing.T) {
	reg := metrics.New(metrics.Options{})
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Proto) }))
	f := &fakeTLS{}
	addr := startTLS(t, &idRouter{reg: reg, to: up}, reg, f)
	send := func(id string, h2 bool) string {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+addr.String()+"/", nil)
		req.Header.Set("x-server-id", id)
		if h2 {
			req.Header.Set("x-h2", "1")
		}
		resp, err := h1Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get(ErrorHeader))
		}
		return string(b)
	}
	for range 3 {
		if p := send("a.id", true); p != "HTTP/2.0" {
			t.Errorf("to a.id over h2: upstream saw %s", p)
		}
	}
	send("b.id", true)
	send("a.id", false)
	send("", true)
	want := []string{"a.id h2", "b.id h2", "a.id http/1.1"}
	if got := f.handshakes(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("handshakes %q, want %q", got, want)
	}
}

// A refused handshake answers 502 (504 for a timeout) with the reason in
// sluice-proxy-error and the error label, and gRPC clients get UNAVAILABLE
// (DEADLINE_EXCEEDED for a timeout). A peer's refusal that arrives at the
// first read (TLS 1.3) is a 502 that says so.
func TestTLSOriginationErrors(t *testing.T) {
	mismatch := &mtls.Error{Direction: "outbound", Reason: mtls.ReasonIdentityMismatch}
	stranger := &mtls.Error{Direction: "outbound", Reason: mtls.ReasonUnknownAuthority}
	expired := &mtls.Error{Direction: "outbound", Reason: mtls.ReasonExpired}
	slow := &mtls.Error{Direction: "outbound", Reason: mtls.ReasonTimeout}
	f := &fakeTLS{errs: map[string]error{"mismatch.id": mismatch, "stranger.id": stranger, "expired.id": expired, "slow.id": slow}}
	cases := []struct {
		id     string // the server identity whose handshake fails so
		want   string // in sluice-proxy-error
		status int
		label  string
		grpc   string
	}{
		{"mismatch.id", mismatch.Error(), 502, "tls_identity_mismatch", "14"},
		{"stranger.id", stranger.Error(), 502, "tls_unknown_authority", "14"},
		{"expired.id", expired.Error(), 502, "tls_expired", "14"},
		{"slow.id", slow.Error(), 504, "tls_timeout", "4"},
		{refuserID, "refused the connection: tls: bad certificate", 502, "tls_peer_refused", "14"},
	}
	reg := metrics.New(metrics.Options{})
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	addr := startTLS(t, &idRouter{reg: reg, to: up}, reg, f)
	h1, h2 := h1Client(), h2cClient()
	for _, tc := range cases {
		t.Run(tc.label, func(t *testing.T) {
			for _, viaH2 := range []bool{false, true} {
				req, _ := http.NewRequest("GET", "http://"+addr.String()+"/", nil)
				req.Header.Set("x-server-id", tc.id)
				if viaH2 {
					req.Header.Set("x-h2", "1")
				}
				resp, err := h1.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != tc.status || !strings.Contains(resp.Header.Get(ErrorHeader), tc.want) {
					t.Errorf("h2 upstream %v: %d %q; want %d with %q", viaH2, resp.StatusCode, resp.Header.Get(ErrorHeader), tc.status, tc.want)
				}
			}
			if m := gather(t, reg); !strings.Contains(m, `error="`+tc.label+`"`) {
				t.Errorf("metrics lack error=%q", tc.label)
			}
			req, _ := http.NewRequest("POST", "http://"+addr.String()+"/svc/M", strings.NewReader(""))
			req.Header.Set("Content-Type", "application/grpc")
			req.Header.Set("x-server-id", tc.id)
			resp, err := h2.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.Header.Get("Grpc-Status") != tc.grpc {
				t.Errorf("grpc-status %q, want %s", resp.Header.Get("Grpc-Status"), tc.grpc)
			}
		})
	}
	h1.CloseIdleConnections()
	h2.CloseIdleConnections()
}
