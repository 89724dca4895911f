package destinationtest_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mesh/sluice/controlplane/api/destination"
	"github.com/sluice-mesh/sluice/proxy/discovery"
	"github.com/sluice-mesh/sluice/test/destinationtest"
)

const hang = 20 * time.Second

// get opens a raw Get stream for path; it ends with the test.
func get(t *testing.T, addr netip.AddrPort, path string) grpc.ServerStreamingClient[destination.Update] {
	t.Helper()
	cc, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), hang)
	t.Cleanup(cancel)
	st, err := destination.NewDestinationClient(cc).Get(ctx, &destination.GetDestination{Scheme: "k8s", Path: path, ContextToken: `{"ns":"default"}`})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// expect receives the next update and compares it with want, in text form.
func expect(t *testing.T, st grpc.ServerStreamingClient[destination.Update], want string) {
	t.Helper()
	u, err := st.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	w := &destination.Update{}
	if err := prototext.Unmarshal([]byte(want), w); err != nil {
		t.Fatalf("bad want %q: %v", want, err)
	}
	if !proto.Equal(u, w) {
		t.Fatalf("update = %v\nwant %v", prototext.Format(u), prototext.Format(w))
	}
}

func ep(addr string, labels ...string) discovery.Endpoint {
	e := discovery.Endpoint{Addr: netip.MustParseAddrPort(addr)}
	for i := 0; i+1 < len(labels); i += 2 {
		if e.Labels == nil {
			e.Labels = map[string]string{}
		}
		e.Labels[labels[i]] = labels[i+1]
	}
	return e
}

func TestServerSendsChanges(t *testing.T) {
	srv := destinationtest.Start(t)
	const path = "web.default.svc.cluster.local:8080"
	st := get(t, srv.Addr(), path)
	expect(t, st, `no_endpoints: {exists: false}`)
	if n := srv.Streams(path); n != 1 {
		t.Errorf("Streams = %d, want 1", n)
	}
	if tok := srv.ContextToken(path); tok != `{"ns":"default"}` {
		t.Errorf("ContextToken = %q", tok)
	}

	a := ep("10.0.0.1:8080", "namespace", "default", "service", "web", "pod", "web-1")
	b := ep("10.0.0.2:8080", "namespace", "default", "service", "web", "pod", "web-2")
	b.Weight, b.H2, b.Identity = 5, true, "web.default.serviceaccount.identity.sluice.cluster.local"
	srv.Set(path, b, a)
	// Shared labels go to the set, addresses sorted.
	expect(t, st, `add: {
		metric_labels: {key: "namespace" value: "default"}
		metric_labels: {key: "service" value: "web"}
		addrs: {addr: {ip: "\x0a\x00\x00\x01" port: 8080} metric_labels: {key: "pod" value: "web-1"}}
		addrs: {addr: {ip: "\x0a\x00\x00\x02" port: 8080} weight: 5 metric_labels: {key: "pod" value: "web-2"}
			tls_identity: {dns_like_identity: "web.default.serviceaccount.identity.sluice.cluster.local"}
			protocol_hint: {h2: {}}}
	}`)

	// Unchanged b is not resent; new c is added before a is removed.
	c := ep("[2001:db8::3]:8080", "namespace", "default", "service", "web", "pod", "web-3")
	c.Opaque = true
	srv.Set(path, b, c)
	expect(t, st, `add: {
		metric_labels: {key: "namespace" value: "default"}
		metric_labels: {key: "service" value: "web"}
		metric_labels: {key: "pod" value: "web-3"}
		addrs: {addr: {ip: "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03" port: 8080} protocol_hint: {opaque: {}}}
	}`)
	expect(t, st, `remove: {addrs: {ip: "\x0a\x00\x00\x01" port: 8080}}`)

	srv.Set(path)
	expect(t, st, `no_endpoints: {exists: true}`)
	srv.Set(path) // no change, no update
	srv.Set(path, a)
	expect(t, st, `add: {
		metric_labels: {key: "namespace" value: "default"}
		metric_labels: {key: "service" value: "web"}
		metric_labels: {key: "pod" value: "web-1"}
		addrs: {addr: {ip: "\x0a\x00\x00\x01" port: 8080}}
	}`)
	srv.Delete(path)
	expect(t, st, `no_endpoints: {exists: false}`)
	srv.Delete(path) // no change, no update
	srv.Set("other.default.svc.cluster.local:80", a)
	srv.Set(path, b) // alone, all its labels are the set's
	expect(t, st, `add: {
		metric_labels: {key: "namespace" value: "default"}
		metric_labels: {key: "service" value: "web"}
		metric_labels: {key: "pod" value: "web-2"}
		addrs: {addr: {ip: "\x0a\x00\x00\x02" port: 8080} weight: 5
			tls_identity: {dns_like_identity: "web.default.serviceaccount.identity.sluice.cluster.local"}
			protocol_hint: {h2: {}}}
	}`)
}

func TestServerInitialState(t *testing.T) {
	srv := destinationtest.Start(t)
	srv.Set("empty:80")
	srv.Set("one:80", ep("10.0.0.1:80"))
	srv.Set("gone:80", ep("10.0.0.1:80"))
	srv.Delete("gone:80")
	tests := []struct{ path, want string }{
		{"empty:80", `no_endpoints: {exists: true}`},
		{"one:80", `add: {addrs: {addr: {ip: "\x0a\x00\x00\x01" port: 80}}}`},
		{"gone:80", `no_endpoints: {exists: false}`},
		{"never:80", `no_endpoints: {exists: false}`},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			expect(t, get(t, srv.Addr(), tt.path), tt.want)
		})
	}
}

func TestServerRejectsBadRequests(t *testing.T) {
	srv := destinationtest.Start(t)
	cc, err := grpc.NewClient(srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	for _, req := range []*destination.GetDestination{{Scheme: "dns", Path: "web:80"}, {Scheme: "k8s"}} {
		st, err := destination.NewDestinationClient(cc).Get(t.Context(), req)
		if err == nil {
			_, err = st.Recv()
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("Get(%v) = %v, want InvalidArgument", req, err)
		}
	}
}

func TestServerReplace(t *testing.T) {
	srv := destinationtest.Start(t)
	a, b := ep("10.0.0.1:80"), ep("10.0.0.2:80")
	srv.Set("keep:80", a)
	srv.Set("drop:80", a)
	keep, drop := get(t, srv.Addr(), "keep:80"), get(t, srv.Addr(), "drop:80")
	expect(t, keep, `add: {addrs: {addr: {ip: "\x0a\x00\x00\x01" port: 80}}}`)
	expect(t, drop, `add: {addrs: {addr: {ip: "\x0a\x00\x00\x01" port: 80}}}`)
	srv.Replace(map[string][]discovery.Endpoint{"keep:80": {b}, "new:80": {a}})
	expect(t, keep, `add: {addrs: {addr: {ip: "\x0a\x00\x00\x02" port: 80}}}`)
	expect(t, keep, `remove: {addrs: {ip: "\x0a\x00\x00\x01" port: 80}}`)
	expect(t, drop, `no_endpoints: {exists: false}`)
	expect(t, get(t, srv.Addr(), "new:80"), `add: {addrs: {addr: {ip: "\x0a\x00\x00\x01" port: 80}}}`)
}

func TestServerStopAndRestart(t *testing.T) {
	srv := destinationtest.Start(t)
	addr := srv.Addr()
	srv.Set("web:80", ep("10.0.0.1:80"))
	st := get(t, addr, "web:80")
	expect(t, st, `add: {addrs: {addr: {ip: "\x0a\x00\x00\x01" port: 80}}}`)

	srv.Stop()
	if _, err := st.Recv(); err == nil {
		t.Fatal("stream still open after Stop")
	}
	if n := srv.Streams("web:80"); n != 0 {
		t.Errorf("Streams after Stop = %d, want 0", n)
	}
	srv.Set("web:80", ep("10.0.0.2:80"))
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if srv.Addr() != addr {
		t.Fatalf("address after Restart = %v, want %v", srv.Addr(), addr)
	}
	expect(t, get(t, addr, "web:80"), `add: {addrs: {addr: {ip: "\x0a\x00\x00\x02" port: 80}}}`)
}

func TestNewOnBusyAddress(t *testing.T) {
	srv := destinationtest.Start(t)
	if s, err := destinationtest.New(destinationtest.Options{Addr: srv.Addr()}); err == nil {
		s.Close()
		t.Fatalf("New on the busy address %v succeeded", srv.Addr())
	}
}
