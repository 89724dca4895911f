package meshctl

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sluice-mesh/sluice/cli/internal/golden"
	apinet "github.com/sluice-mesh/sluice/controlplane/api/net"
	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
)

// tcpAddr is s ("ip:port") as a TcpAddress, IPv4 in 4 bytes.
func tcpAddr(s string) *apinet.TcpAddress {
	ap := netip.MustParseAddrPort(s)
	return &apinet.TcpAddress{Ip: ap.Addr().AsSlice(), Port: uint32(ap.Port())}
}

// tapEvent is an event of an HTTP request between src and dst as a proxy
// on side dir saw it, with the TLS label where that side puts it.
func tapEvent(dir tappb.TapEvent_ProxyDirection, src, dst, tls string, h *tappb.TapEvent_Http) *tappb.TapEvent {
	ev := &tappb.TapEvent{
		Source:         tcpAddr(src),
		Destination:    tcpAddr(dst),
		ProxyDirection: dir,
		Event:          &tappb.TapEvent_Http_{Http: h},
	}
	meta := &tappb.TapEvent_EndpointMeta{Labels: map[string]string{"tls": tls}}
	if dir == tappb.TapEvent_INBOUND {
		meta.Labels["client_id"] = "client.demo.serviceaccount.identity.sluice.cluster.local"
		ev.SourceMeta = meta
		ev.DestinationMeta = &tappb.TapEvent_EndpointMeta{Labels: map[string]string{"namespace": "demo", "pod": "web-1", "deployment": "web"}}
	} else {
		meta.Labels["service"] = "api"
		ev.DestinationMeta = meta
	}
	return ev
}

func streamID(base uint32, stream uint64) *tappb.TapEvent_Http_StreamId {
	return &tappb.TapEvent_Http_StreamId{Base: base, Stream: stream}
}

func requestInit(id *tappb.TapEvent_Http_StreamId, method, authority, path string) *tappb.TapEvent_Http {
	return &tappb.TapEvent_Http{Event: &tappb.TapEvent_Http_RequestInit_{RequestInit: &tappb.TapEvent_Http_RequestInit{
		Id: id, Method: method, Scheme: "http", Authority: authority, Path: path}}}
}

func responseInit(id *tappb.TapEvent_Http_StreamId, status uint32, latency time.Duration) *tappb.TapEvent_Http {
	return &tappb.TapEvent_Http{Event: &tappb.TapEvent_Http_ResponseInit_{ResponseInit: &tappb.TapEvent_Http_ResponseInit{
		Id: id, HttpStatus: status, SinceRequestInit: durationpb.New(latency)}}}
}

func responseEnd(id *tappb.TapEvent_Http_StreamId, sinceRequest, sinceResponse time.Duration, bytes uint64, eos *tappb.Eos) *tappb.TapEvent_Http {
	return &tappb.TapEvent_Http{Event: &tappb.TapEvent_Http_ResponseEnd_{ResponseEnd: &tappb.TapEvent_Http_ResponseEnd{
		Id: id, SinceRequestInit: durationpb.New(sinceRequest), SinceResponseInit: durationpb.New(sinceResponse),
		ResponseBytes: bytes, Eos: eos}}}
}

// tapEvents are the events of an inbound HTTP/1 request, an outbound gRPC
// call over IPv6, a reset stream, and an event of each kind a tap line
// cannot show well: no direction, no address, no TLS label, no HTTP.
func tapEvents() []*tappb.TapEvent {
	in, out := tappb.TapEvent_INBOUND, tappb.TapEvent_OUTBOUND
	const client, web = "10.42.0.7:51234", "10.42.0.9:8080"
	const app, api = "[fd00::7]:40000", "[fd00::12]:9090"
	grpcOK := &tappb.Eos{End: &tappb.Eos_GrpcStatusCode{GrpcStatusCode: 0}}
	reset := &tappb.Eos{End: &tappb.Eos_ResetErrorCode{ResetErrorCode: 8}}
	noTLS := tapEvent(out, "10.42.0.9:40100", "10.43.0.1:80", "", requestInit(streamID(3, 1), "POST", "legacy", "/"))
	delete(noTLS.DestinationMeta.Labels, "tls")
	unknown := tapEvent(out, client, web, "true", responseInit(streamID(4, 1), 503, 0))
	unknown.ProxyDirection = tappb.TapEvent_UNKNOWN
	unknown.Source = nil
	return []*tappb.TapEvent{
		tapEvent(in, client, web, "true", requestInit(streamID(0, 1), "GET", "web.demo:80", "/api/items?page=2")),
		tapEvent(in, client, web, "true", responseInit(streamID(0, 1), 200, 1250*time.Microsecond)),
		tapEvent(in, client, web, "true", responseEnd(streamID(0, 1), 1330*time.Microsecond, 80*time.Microsecond, 12, nil)),
		tapEvent(out, app, api, "no_identity", requestInit(streamID(1, 42), "POST", "api.demo.svc.cluster.local:9090", "/pkg.Svc/Get")),
		tapEvent(out, app, api, "no_identity", responseInit(streamID(1, 42), 200, 2*time.Second)),
		tapEvent(out, app, api, "no_identity", responseEnd(streamID(1, 42), 2*time.Second, 3*time.Millisecond, 0, grpcOK)),
		tapEvent(in, client, web, "true", responseEnd(streamID(2, 7), time.Second, 0, 1<<20, reset)),
		noTLS,
		unknown,
		{Source: tcpAddr(client), Destination: tcpAddr(web)}, // not HTTP: not shown
	}
}

func TestRenderTap(t *testing.T) {
	for _, output := range []string{outputText, outputJSON} {
		t.Run(output, func(t *testing.T) {
			var b bytes.Buffer
			for _, ev := range tapEvents() {
				if err := renderTapEvent(&b, ev, output); err != nil {
					t.Fatal(err)
				}
			}
			golden.Assert(t, "render/tap_"+output, b.Bytes())
		})
	}
}

// TestRenderTapJSONLines checks that every JSON line decodes alone.
func TestRenderTapJSONLines(t *testing.T) {
	for _, ev := range tapEvents() {
		var b bytes.Buffer
		if err := renderTapEvent(&b, ev, outputJSON); err != nil {
			t.Fatal(err)
		}
		if b.Len() == 0 {
			continue
		}
		var v tapEventJSON
		if err := json.Unmarshal(b.Bytes(), &v); err != nil || bytes.Count(b.Bytes(), []byte("\n")) != 1 {
			t.Errorf("line %q: %v", b.String(), err)
		}
	}
}
