package metrics_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mesh/sluice/proxy/metrics"
)

var benchTarget = metrics.Target{
	Direction: "outbound",
	Authority: "web-svc.emojivoto.svc.cluster.local:80",
	Addr:      netip.MustParseAddrPort("10.42.0.7:8080"),
	TLS:       metrics.TLS{Status: "true", ServerID: "web.emojivoto.serviceaccount.identity.sluice.cluster.local"},
	Dst:       map[string]string{"namespace": "emojivoto", "service": "web-svc", "pod": "web-1"},
}

// TestHotPathAllocs checks that recording through a handle allocates
// nothing once the status, class and errno have been seen.
func TestHotPathAllocs(t *testing.T) {
	r := metrics.New(metrics.Options{})
	h := r.HTTP(benchTarget)
	s := r.TCP(benchTarget, "dst")
	for _, c := range []struct {
		name string
		f    func()
	}{
		{"Request", h.Request},
		{"Response", func() { h.Response(200, -1, "", 3*time.Millisecond) }},
		{"Response grpc", func() { h.Response(200, 14, "", 3*time.Millisecond) }},
		{"Response error", func() { h.Response(0, -1, "connect_refused", time.Second) }},
		{"Open", s.Open},
		{"Read", func() { s.Read(512) }},
		{"Wrote", func() { s.Wrote(512) }},
		{"Close", func() { s.Close("ECONNRESET", time.Minute) }},
	} {
		c.f() // first use creates the sub-series
		if n := testing.AllocsPerRun(1000, c.f); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", c.name, n)
		}
	}
}

func BenchmarkHTTPResponse(b *testing.B) {
	r := metrics.New(metrics.Options{})
	h := r.HTTP(benchTarget)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.Request()
			h.Response(200, -1, "", 3*time.Millisecond)
		}
	})
}

func BenchmarkTCPReadWrite(b *testing.B) {
	r := metrics.New(metrics.Options{})
	s := r.TCP(benchTarget, "src")
	b.ReportAllocs()
	for b.Loop() {
		s.Read(16 << 10)
		s.Wrote(16 << 10)
	}
}

func BenchmarkCollect(b *testing.B) {
	r := metrics.New(metrics.Options{})
	for i := range 100 {
		tg := benchTarget
		tg.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 42, 0, byte(i)}), 8080)
		h := r.HTTP(tg)
		h.Request()
		h.Response(200, -1, "", time.Millisecond)
	}
	b.ReportAllocs()
	for b.Loop() {
		ch := make(chan prometheus.Metric, 300)
		r.Collect(ch)
		if n := len(ch); n != 300 {
			b.Fatalf("collected %d metrics, want 300", n)
		}
	}
}
