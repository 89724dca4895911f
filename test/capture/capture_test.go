package capture

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/test/netns"
)

func TestTLSRecords(t *testing.T) {
	rec := func(typ byte, n int) []byte {
		return append([]byte{typ, 3, 3, byte(n >> 8), byte(n)}, make([]byte, n)...)
	}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	for _, tc := range []struct {
		name    string
		stream  []byte
		appData int
		err     string
		midway  bool // the connection began before the capture
	}{
		{"handshake then data", cat(rec(22, 100), rec(20, 1), rec(23, 50), rec(23, 10)), 2, "", false},
		{"last record cut off", cat(rec(22, 100), rec(23, 50))[:120], 1, "", false},
		{"plaintext HTTP", []byte("GET / HTTP/1.1\r\nHost: web\r\n\r\n"), 0, "not TLS", false},
		{"starts with data", cat(rec(23, 10)), 0, "not a handshake", false},
		{"midway: starts with data", cat(rec(23, 10), rec(23, 5)), 2, "", true},
		{"midway: not at a record boundary", cat(rec(23, 10))[7:], 0, "not TLS", true},
		{"garbage after records", cat(rec(22, 10), []byte("secret body")), 0, "not TLS", false},
		{"empty", nil, 0, "empty", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := TLSRecords(tc.stream, !tc.midway)
			if tc.err == "" && (err != nil || n != tc.appData) {
				t.Fatalf("TLSRecords = %d, %v; want %d records of data", n, err, tc.appData)
			}
			if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("TLSRecords = %d, %v; want an error containing %q", n, err, tc.err)
			}
		})
	}
}

// TestCaptureLoopback: on the real loopback, a TLS exchange reassembles
// into TLS records only, with the body nowhere in its bytes, while the
// same body over plain HTTP is seen in the clear.
func TestCaptureLoopback(t *testing.T) {
	netns.RequireRoot(t)
	netns.RequireCommand(t, "tcpdump")
	const secret = "the plaintext of a known request body"
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(w, r.Body) })
	tlsSrv := httptest.NewUnstartedServer(h)
	tlsSrv.Listener = listen(t)
	tlsSrv.StartTLS()
	defer tlsSrv.Close()
	plain := httptest.NewUnstartedServer(h)
	plain.Listener = listen(t)
	plain.Start()
	defer plain.Close()
	tlsAddr := netip.MustParseAddrPort(tlsSrv.Listener.Addr().String())
	plainAddr := netip.MustParseAddrPort(plain.Listener.Addr().String())

	c, err := Start("lo", fmt.Sprintf("tcp and (port %d or port %d)", tlsAddr.Port(), plainAddr.Port()), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			c.Stop()
		}
	}()
	cl := tlsSrv.Client()
	cl.Transport.(*http.Transport).TLSClientConfig.MinVersion = tls.VersionTLS13
	for _, u := range []string{tlsSrv.URL, plain.URL} {
		resp, err := cl.Post(u, "text/plain", strings.NewReader(secret))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != secret {
			t.Fatalf("echo = %q", b)
		}
	}
	cl.CloseIdleConnections()
	ps, err := c.Stop()
	stopped = true
	if err != nil {
		t.Fatal(err)
	}
	var tlsFlows, plainFlows int
	for f, s := range Streams(ps) {
		switch {
		case f.Src == tlsAddr || f.Dst == tlsAddr:
			tlsFlows++
			if n, err := TLSRecords(s, true); err != nil || n == 0 {
				t.Errorf("%s: %d records of data, %v; want TLS only", f, n, err)
			}
			if bytes.Contains(s, []byte(secret)) {
				t.Errorf("%s: the body is in the clear", f)
			}
		case f.Src == plainAddr || f.Dst == plainAddr:
			plainFlows++
			if _, err := TLSRecords(s, true); err == nil {
				t.Errorf("%s: plain HTTP passed as TLS", f)
			}
		}
	}
	if tlsFlows != 2 || plainFlows != 2 {
		t.Fatalf("captured %d TLS and %d plain flows, want 2 of each (%d packets); tcpdump: %s", tlsFlows, plainFlows, len(ps), c.stderrText())
	}
	all := Streams(ps)
	found := false
	for f, s := range all {
		if (f.Dst == plainAddr) && bytes.Contains(s, []byte(secret)) {
			found = true
		}
	}
	if !found {
		t.Error("the plain HTTP body was not found in the capture: the capture misses data")
	}
}

func listen(t *testing.T) net.Listener {
	var lc net.ListenConfig
	l, err := lc.Listen(t.Context(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}
