package httpproxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/proxy/metrics"
)

// TestExpectContinueRefused: an upstream that answers 413 without reading
// the body makes the client see 413 and no 100 Continue, through one proxy
// and through two that carry HTTP/1 on HTTP/2.
func TestExpectContinueRefused(t *testing.T) {
	reg := metrics.New(metrics.Options{})
	app := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusRequestEntityTooLarge)
	}))
	in := start(t, "inbound", &inboundLike{reg: reg, app: app}, reg)
	paths := map[string]string{
		"one proxy":           start(t, "outbound", &staticRouter{reg: reg, to: app}, reg).String(),
		"two proxies over h2": start(t, "outbound", &staticRouter{reg: reg, to: in, proto: H2, origProto: true}, reg).String(),
	}
	for name, addr := range paths {
		t.Run(name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "PUT /up HTTP/1.1\r\nHost: web\r\nContent-Length: 10000000\r\nExpect: 100-continue\r\n\r\n")
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "HTTP/1.1 413") {
				t.Errorf("first answer %q %v, want 413 without 100 Continue", line, err)
			}
			io.Copy(io.Discard, c)
		})
	}
}
