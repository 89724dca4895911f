package enroll

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/agent/api"
)

// answering serves one probe connection per accept with reply.
func answering(t *testing.T, reply string) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			if line == api.ProbeRequest {
				c.Write([]byte(reply))
			}
			c.Close()
		}
	}()
	return netip.MustParseAddrPort(l.Addr().String())
}

func TestProbeAddr(t *testing.T) {
	ctx := context.Background()
	if err := probeAddr(ctx, answering(t, api.ProbeReply)); err != nil {
		t.Errorf("a proxy that answers: %v", err)
	}
	if err := probeAddr(ctx, answering(t, "HTTP/1.1 400 Bad Request\r\n")); err == nil || !strings.Contains(err.Error(), "unexpected reply") {
		t.Errorf("a server that is not the proxy: %v", err)
	}
	// A closed port: refused, promptly.
	l, _ := net.Listen("tcp4", "127.0.0.1:0")
	addr := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	if err := probeAddr(ctx, addr); err == nil {
		t.Error("probe of a closed port succeeded")
	}
}

func TestProbePortMustNotBeSkipped(t *testing.T) {
	c := api.PodConfig{ProbePort: 4144, SkipInboundPorts: []api.PortRange{{Lo: 4000, Hi: 4200}}}.WithDefaults()
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "probe port") {
		t.Errorf("Validate = %v", err)
	}
}
