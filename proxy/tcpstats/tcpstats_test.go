package tcpstats_test

import (
	"io"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mesh/sluice/proxy/metrics"
	"github.com/sluice-mesh/sluice/proxy/netx"
	"github.com/sluice-mesh/sluice/proxy/netx/netxtest"
	"github.com/sluice-mesh/sluice/proxy/tcpstats"
)

// gather returns the value of the family name for the series whose labels
// include tls.
func gather(t *testing.T, reg *metrics.Registry, name, tls string) float64 {
	t.Helper()
	pr := prometheus.NewPedanticRegistry()
	pr.MustRegister(reg)
	mfs, err := pr.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "tls" && l.GetValue() == tls {
					sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
				}
			}
		}
	}
	return sum
}

// A Pending connection counts nothing until Attach, which opens it in its
// series with the bytes seen before; one closed before Attach is recorded
// nowhere.
func TestPendingAttach(t *testing.T) {
	reg := metrics.New(metrics.Options{})
	target := metrics.Target{Direction: "inbound", Addr: netip.MustParseAddrPort("10.0.0.1:80"), TLS: metrics.TLS{Status: "true", ClientID: "web"}}
	client, server := netxtest.Pair(t, netx.NewMem(), netip.MustParseAddrPort("10.0.0.1:80"))
	c := tcpstats.Pending(server)
	netxtest.Write(t, client, "hello")
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if n := gather(t, reg, "tcp_open_total", "true"); n != 0 {
		t.Fatalf("tcp_open_total before Attach = %v", n)
	}
	c.Attach(reg.TCP(target, "src"))
	if _, err := c.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	for name, want := range map[string]float64{"tcp_open_total": 1, "tcp_read_bytes_total": 5, "tcp_write_bytes_total": 3, "tcp_close_total": 1, "tcp_open_connections": 0} {
		if got := gather(t, reg, name, "true"); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}

	_, server2 := netxtest.Pair(t, netx.NewMem(), netip.MustParseAddrPort("10.0.0.1:80"))
	tcpstats.Pending(server2).Close()
	if got := gather(t, reg, "tcp_open_total", "true"); got != 1 {
		t.Errorf("a Pending connection closed before Attach was counted: tcp_open_total = %v", got)
	}
}
