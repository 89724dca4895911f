package netx_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/sluice-mesh/sluice/proxy/netx"
)

type fakeAddr string

func (fakeAddr) Network() string  { return "fake" }
func (a fakeAddr) String() string { return string(a) }

func TestAddrPortOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   net.Addr
		want string // "" for the zero AddrPort
	}{
		{"tcp v4", &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 80}, "10.0.0.1:80"},
		{"tcp v4 in v6 form", &net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.1"), Port: 80}, "10.0.0.1:80"},
		{"tcp v6", &net.TCPAddr{IP: net.ParseIP("fd00::1"), Port: 4143}, "[fd00::1]:4143"},
		{"tcp v6 zone", &net.TCPAddr{IP: net.ParseIP("fe80::1"), Port: 1, Zone: "eth0"}, "[fe80::1%eth0]:1"},
		{"udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}, "127.0.0.1:53"},
		{"mem", netx.MemAddr{AddrPort: netip.MustParseAddrPort("[::ffff:1.2.3.4]:5")}, "1.2.3.4:5"},
		{"mem pointer", &netx.MemAddr{AddrPort: netip.MustParseAddrPort("[::1]:5")}, "[::1]:5"},
		{"other parsable", fakeAddr("192.0.2.1:443"), "192.0.2.1:443"},
		{"other unparsable", fakeAddr("/run/sock"), ""},
		{"nil", nil, ""},
		{"nil tcp", (*net.TCPAddr)(nil), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want netip.AddrPort
			if tc.want != "" {
				want = netip.MustParseAddrPort(tc.want)
			}
			if got := netx.AddrPortOf(tc.in); got != want {
				t.Errorf("AddrPortOf(%v) = %v, want %v", tc.in, got, want)
			}
		})
	}
}

// wrapper hides the connection it wraps except through NetConn, as
// crypto/tls.Conn and the proxy's own wrappers do.
type wrapper struct {
	net.Conn
	inner net.Conn
}

func (w wrapper) NetConn() net.Conn { return w.inner }

// withOrig is a connection that knows its original destination itself.
type withOrig struct {
	net.Conn
	orig netip.AddrPort
}

func (w withOrig) OriginalDst() (netip.AddrPort, error) { return w.orig, nil }

func TestOriginalDstUnwraps(t *testing.T) {
	orig := netip.MustParseAddrPort("10.96.0.1:443")
	m := netx.NewMem()
	ctx := context.Background()
	ln, err := m.Listen(ctx, netip.MustParseAddrPort("127.0.0.1:4140"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := m.DialAs(ctx, netip.MustParseAddrPort("10.0.0.5:0"), netip.MustParseAddrPort("127.0.0.1:4140"), orig)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	accepted, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer accepted.Close()
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	other := netip.MustParseAddrPort("192.0.2.9:9")

	for _, tc := range []struct {
		name    string
		conn    net.Conn
		want    netip.AddrPort
		wantErr bool
	}{
		{"mem", accepted, orig, false},
		{"wrapped mem", wrapper{Conn: p1, inner: accepted}, orig, false},
		{"twice wrapped", wrapper{Conn: p1, inner: wrapper{Conn: p1, inner: accepted}}, orig, false},
		{"own answer first", withOrig{Conn: accepted, orig: other}, other, false},
		{"wrapped own answer", wrapper{Conn: p1, inner: withOrig{Conn: p1, orig: other}}, other, false},
		{"pipe", p1, netip.AddrPort{}, true},
		{"wrapped pipe", wrapper{Conn: p1, inner: p1}, netip.AddrPort{}, true},
		{"wrapper around nil", wrapper{Conn: p1}, netip.AddrPort{}, true},
		{"nil", nil, netip.AddrPort{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := netx.OriginalDst(tc.conn)
			if tc.wantErr {
				if !errors.Is(err, netx.ErrNoOriginalDst) {
					t.Errorf("OriginalDst = %v, %v; want ErrNoOriginalDst", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("OriginalDst = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// selfWrapper returns itself from NetConn.
type selfWrapper struct{ net.Conn }

func (s *selfWrapper) NetConn() net.Conn { return s }

func TestOriginalDstSelfWrapperTerminates(t *testing.T) {
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if _, err := netx.OriginalDst(&selfWrapper{p1}); !errors.Is(err, netx.ErrNoOriginalDst) {
		t.Errorf("OriginalDst(self-wrapping conn) error = %v, want ErrNoOriginalDst", err)
	}
}
