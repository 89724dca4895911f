package server

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"

	"github.com/sluice-mesh/sluice/proxy/discovery"
	"github.com/sluice-mesh/sluice/proxy/httpproxy"
	"github.com/sluice-mesh/sluice/proxy/netx"
	"github.com/sluice-mesh/sluice/test/destinationtest"
)

// TestOutboundThroughDiscovery resolves a short service name through a
// real destination server, balances over its endpoints, carries HTTP/1
// over HTTP/2 to an endpoint marked as a Sluice proxy, labels metrics with
// the endpoint's labels, and answers 503 when the service has no endpoints.
func TestOutboundThroughDiscovery(t *testing.T) {
	dest := destinationtest.Start(t)
	mem := netx.NewMem()
	eps := []netip.AddrPort{netip.MustParseAddrPort("10.1.0.1:8080"), netip.MustParseAddrPort("10.1.0.2:8080")}
	seen := map[string]int{}
	protos := map[string]string{}
	for i, ep := range eps {
		serveHTTP(t, mem, ep, func(w http.ResponseWriter, r *http.Request) {
			seen[ep.String()]++
			protos[ep.String()] = r.Proto + " " + r.Header.Get(httpproxy.OrigProtoHeader)
			fmt.Fprintf(w, "pod-%d", i)
		})
	}
	path := "web.shop.svc.cluster.local:8080"
	dest.Set(path,
		discovery.Endpoint{Addr: eps[0], Labels: map[string]string{"namespace": "shop", "service": "web", "pod": "web-0"}},
		discovery.Endpoint{Addr: eps[1], Labels: map[string]string{"namespace": "shop", "service": "web", "pod": "web-1"}, H2: true},
	)
	s := run(t, mem, map[string]string{
		"REQUIRE_STEERING": "false",
		"DESTINATION_ADDR": dest.Addr().String(),
		"POD_NAMESPACE":    "shop",
	})
	// The app connects to the service's cluster IP; the Host header names it.
	clusterIP := netip.MustParseAddrPort("10.96.0.10:8080")
	c := client(mem, appSrc, netip.MustParseAddrPort("127.0.0.1:4140"), clusterIP)
	for i := 0; i < 40; i++ {
		req, _ := http.NewRequest("GET", "http://web:8080/", nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, resp.Header.Get(httpproxy.ErrorHeader))
		}
	}
	if seen[eps[0].String()] == 0 || seen[eps[1].String()] == 0 || seen[eps[0].String()]+seen[eps[1].String()] != 40 {
		t.Errorf("requests per endpoint: %v", seen)
	}
	if protos[eps[1].String()] != "HTTP/2.0 HTTP/1.1" || protos[eps[0].String()] != "HTTP/1.1 " {
		t.Errorf("protocols per endpoint: %v (want h2 with the original-protocol header to the proxy-marked endpoint only)", protos)
	}
	m := scrape(t, s)
	for _, want := range []string{
		`request_total{authority="web:8080",direction="outbound",dst_namespace="shop",dst_pod="web-1",dst_service="web",no_tls_reason="not_provided_by_service_discovery",target_addr="10.1.0.2:8080",target_ip="10.1.0.2",target_port="8080",tls="no_identity"}`,
		`dst_pod="web-0"`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// No endpoints: fail fast with 503 and the cause.
	dest.Set(path)
	for i := 0; ; i++ {
		resp, err := c.Get("http://web:8080/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 503 {
			if !strings.Contains(resp.Header.Get(httpproxy.ErrorHeader), "no endpoints") {
				t.Errorf("503 without the cause: %q", resp.Header.Get(httpproxy.ErrorHeader))
			}
			break
		}
		if i > 200 {
			t.Fatal("emptied service still served")
		}
	}
}

// scrape returns the server's metrics in the text format.
func scrape(t *testing.T, s *Server) string {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, mf := range mfs {
		expfmt.MetricFamilyToText(&b, mf)
	}
	return b.String()
}
