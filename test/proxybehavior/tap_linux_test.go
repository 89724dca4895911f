package proxybehavior

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/proxy/discovery"
	"github.com/sluice-mesh/sluice/test/proxytest"
)

// tapPort is the proxy's tap port (proxy/README.md).
const tapPort = 4190

// A grpc-go client of the server proxy's tap port observes GET requests
// whose path starts with /status/ or is /delay, while a client sends those
// and others: it sees exactly the matching requests, in order, each with
// request_init, response_init carrying the status the client got, and
// response_end, with latencies that are positive and consistent. A tap
// with a limit ends after that many requests.
func TestTap(t *testing.T) {
	eachMode(t, ebpfOnly, func(t *testing.T, m *proxytest.Mesh) {
		web := m.AddPod(t, "web", proxytest.PodOptions{})
		web.App(t, "--http", fmt.Sprintf(":%d", appPort), "--name", "web")
		cc, err := grpc.NewClient(netip.AddrPortFrom(web.IPv4(), tapPort).String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		tc := tappb.NewTapClient(cc)
		hc := &http.Client{Timeout: 30 * time.Second}
		t.Cleanup(hc.CloseIdleConnections)
		do := func(t *testing.T, method, path string) tapRequest {
			t.Helper()
			req, err := http.NewRequest(method, web.URL(appPort, path), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
			defer resp.Body.Close()
			n, err := io.Copy(io.Discard, resp.Body)
			if err != nil {
				t.Fatalf("%s %s: read body: %v", method, path, err)
			}
			return tapRequest{method: method, path: req.URL.Path, authority: req.URL.Host, status: resp.StatusCode, bytes: n}
		}
		getStatus := tapHTTP(&tappb.Match_Http{Match: &tappb.Match_Http_Path{Path: &tappb.Match_Http_StringMatch{Match: &tappb.Match_Http_StringMatch_Prefix{Prefix: "/status/"}}}})
		getDelay := tapHTTP(&tappb.Match_Http{Match: &tappb.Match_Http_Path{Path: &tappb.Match_Http_StringMatch{Match: &tappb.Match_Http_StringMatch_Exact{Exact: "/delay"}}}})
		isGet := tapHTTP(&tappb.Match_Http{Match: &tappb.Match_Http_Method{Method: &tappb.Match_Http_StringMatch{Match: &tappb.Match_Http_StringMatch_Exact{Exact: "GET"}}}})
		filter := &tappb.Match{Match: &tappb.Match_All{All: &tappb.Match_Seq{Matches: []*tappb.Match{
			isGet,
			{Match: &tappb.Match_Any{Any: &tappb.Match_Seq{Matches: []*tappb.Match{getStatus, getDelay}}}},
		}}}}

		t.Run("filter", func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			stream, err := tc.Observe(ctx, &tappb.ObserveRequest{Match: filter, MaxRps: 10000})
			if err != nil {
				t.Fatalf("observe: %v", err)
			}
			ev := newTapEvents(stream)
			// The tap is open once it sees a request; these probes are
			// left out of the comparison.
			const probe = "/status/299"
			ev.waitOpen(t, func() { do(t, http.MethodGet, probe) }, probe)

			mix := []struct {
				method, path string
				match        bool
			}{
				{"GET", "/status/200", true},
				{"POST", "/status/200", false},
				{"GET", "/echo", false},
				{"GET", "/status/404", true},
				{"HEAD", "/status/200", false},
				{"GET", "/delay?d=50ms", true},
				{"PUT", "/delay?d=1ms", false},
				{"GET", "/status/503", true},
				{"GET", "/headers", false},
				{"DELETE", "/status/500", false},
				{"GET", "/status/201", true},
			}
			var want []tapRequest
			for _, r := range mix {
				got := do(t, r.method, r.path)
				if r.match {
					want = append(want, got)
				}
			}
			// A last matching request: once its response_end arrives, every
			// earlier request's events have arrived too.
			const marker = "/status/202"
			want = append(want, do(t, http.MethodGet, marker))
			seen := ev.until(t, marker)
			var got []*tapExchange
			for _, x := range seen {
				if x.path() != probe {
					got = append(got, x)
				}
			}
			if len(got) != len(want) {
				var paths []string
				for _, x := range got {
					paths = append(paths, x.init.GetMethod()+" "+x.path())
				}
				t.Fatalf("tap saw %d requests %v, want the %d matching ones %v", len(got), paths, len(want), want)
			}
			for i, x := range got {
				x.check(t, want[i], m.Node.GatewayV4(), netip.AddrPortFrom(web.IPv4(), appPort))
			}
			// The /delay request took at least its 50 ms at the app.
			for _, x := range got {
				if d := x.respInit.GetSinceRequestInit().AsDuration(); x.path() == "/delay" && d < 50*time.Millisecond {
					t.Errorf("GET /delay?d=50ms: response_init since_request_init %s, want ≥ 50ms", d)
				}
			}
		})

		t.Run("limit", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			const limit = 3
			stream, err := tc.Observe(ctx, &tappb.ObserveRequest{Match: getStatus, Limit: limit, MaxRps: 10000})
			if err != nil {
				t.Fatalf("observe: %v", err)
			}
			ev := newTapEvents(stream)
			// Keep sending matching requests until the tap ends.
			stop := make(chan struct{})
			stopSending := sync.OnceFunc(func() { close(stop) })
			defer stopSending()
			sent := make(chan int, 1)
			go func() {
				n := 0
				defer func() { sent <- n }()
				for {
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
					req, _ := http.NewRequest(http.MethodGet, web.URL(appPort, "/status/200"), nil)
					if resp, err := hc.Do(req); err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
					n++
				}
			}()
			xs, err := ev.all(t)
			stopSending()
			n := <-sent
			if err != nil {
				t.Fatalf("the tap ended with %v, want a clean end (io.EOF) after %d requests", err, limit)
			}
			if len(xs) != limit {
				t.Fatalf("the tap saw %d requests, want its limit %d (%d sent)", len(xs), limit, n)
			}
			for _, x := range xs {
				if x.init == nil || x.respInit == nil || x.respEnd == nil {
					t.Errorf("incomplete request %s before the tap ended: %+v", x.id, x)
				}
			}
		})

		t.Run("outbound", func(t *testing.T) {
			// A client pod calls the service "web" through its proxy; a tap
			// of that proxy sees the endpoint discovery chose, with its
			// labels.
			client := m.AddPod(t, "client", proxytest.PodOptions{})
			m.Dest.Set(proxytest.ServicePath("web", appPort), web.Endpoint(appPort, "web"))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			const limit = 5
			ccOut, err := grpc.NewClient(netip.AddrPortFrom(client.IPv4(), tapPort).String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer ccOut.Close()
			stream, err := tappb.NewTapClient(ccOut).Observe(ctx, &tappb.ObserveRequest{Match: isGet, Limit: limit, MaxRps: 10000})
			if err != nil {
				t.Fatalf("observe: %v", err)
			}
			ev := newTapEvents(stream)
			l := startLoop(t, client, "--url", fmt.Sprintf("http://%s:%d/echo", serviceIP, appPort), "--host", fmt.Sprintf("web:%d", appPort), "--interval", "20ms")
			xs, err := ev.all(t)
			rs := l.stop(t)
			if err != nil {
				t.Fatalf("the tap ended with %v, want a clean end after %d requests", err, limit)
			}
			if bad := failures(rs); len(bad) > 0 {
				t.Fatalf("requests failed: %v", bad)
			}
			if len(xs) != limit {
				t.Fatalf("the tap saw %d requests, want %d", len(xs), limit)
			}
			want := netip.AddrPortFrom(web.IPv4(), appPort)
			for _, x := range xs {
				if got := strings.Join(x.order, ","); got != "request_init,response_init,response_end" {
					t.Errorf("request %s: events %s", x.id, got)
					continue
				}
				if x.first.GetProxyDirection() != tappb.TapEvent_OUTBOUND || x.init.GetAuthority() != fmt.Sprintf("web:%d", appPort) || x.init.GetPath() != "/echo" || x.respInit.GetHttpStatus() != 200 {
					t.Errorf("request %s: %s %s %s → %d, want OUTBOUND GET web:8080 /echo → 200", x.id, x.first.GetProxyDirection(), x.init.GetAuthority(), x.init.GetPath(), x.respInit.GetHttpStatus())
				}
				if dst, ok := discovery.AddrFromAPI(x.first.GetDestination()); !ok || dst != want {
					t.Errorf("request %s: destination %v, want the endpoint %s", x.id, dst, want)
				}
				// The application connected to the proxy over loopback; tap
				// names it by the pod's address, as Linkerd's does.
				if src, ok := discovery.AddrFromAPI(x.first.GetSource()); !ok || src.Addr() != client.IPv4() || src.Port() == 0 {
					t.Errorf("request %s: source %v, want the client pod's address %s and its port", x.id, src, client.IPv4())
				}
				if labels := x.first.GetDestinationMeta().GetLabels(); labels["pod"] != "web" || labels["service"] != "web" || labels["namespace"] != proxytest.Namespace {
					t.Errorf("request %s: destination labels %v, want discovery's pod, service and namespace", x.id, labels)
				}
			}
		})
	})
}

func tapHTTP(h *tappb.Match_Http) *tappb.Match {
	return &tappb.Match{Match: &tappb.Match_Http_{Http: h}}
}

// tapRequest is a request as the client made and saw it.
type tapRequest struct {
	method, path, authority string
	status                  int
	bytes                   int64
}

// tapExchange is what a tap saw of one request, in the order it arrived.
type tapExchange struct {
	id       string
	order    []string
	first    *tappb.TapEvent
	init     *tappb.TapEvent_Http_RequestInit
	respInit *tappb.TapEvent_Http_ResponseInit
	respEnd  *tappb.TapEvent_Http_ResponseEnd
}

func (x *tapExchange) path() string { return x.init.GetPath() }

// check compares x with the request the client made.
func (x *tapExchange) check(t *testing.T, want tapRequest, clientIP netip.Addr, podAddr netip.AddrPort) {
	t.Helper()
	name := want.method + " " + want.path
	if got := strings.Join(x.order, ","); got != "request_init,response_init,response_end" {
		t.Errorf("%s: events %s, want request_init,response_init,response_end", name, got)
		return
	}
	if x.init.GetMethod() != want.method || x.init.GetPath() != want.path || x.init.GetAuthority() != want.authority || x.init.GetScheme() != "http" {
		t.Errorf("%s: request_init %s %s %s://%s, want %s %s http://%s", name,
			x.init.GetMethod(), x.init.GetPath(), x.init.GetScheme(), x.init.GetAuthority(), want.method, want.path, want.authority)
	}
	if got := int(x.respInit.GetHttpStatus()); got != want.status {
		t.Errorf("%s: response_init status %d, the client got %d", name, got, want.status)
	}
	if got := x.respEnd.GetResponseBytes(); got != uint64(want.bytes) {
		t.Errorf("%s: response_end response_bytes %d, the client read %d", name, got, want.bytes)
	}
	initLat := x.respInit.GetSinceRequestInit().AsDuration()
	endLat := x.respEnd.GetSinceRequestInit().AsDuration()
	if initLat <= 0 || endLat < initLat {
		t.Errorf("%s: since_request_init %s at response_init and %s at response_end, want 0 < first ≤ second", name, initLat, endLat)
	}
	if d := x.respEnd.GetSinceResponseInit().AsDuration(); d < 0 || d > endLat {
		t.Errorf("%s: response_end since_response_init %s, want between 0 and since_request_init %s", name, d, endLat)
	}
	if x.first.GetProxyDirection() != tappb.TapEvent_INBOUND {
		t.Errorf("%s: direction %s, want INBOUND", name, x.first.GetProxyDirection())
	}
	// The destination is where the client connected: the pod's address,
	// as Linkerd's tap shows it (not the app's loopback address).
	if dst, ok := discovery.AddrFromAPI(x.first.GetDestination()); !ok || dst != podAddr {
		t.Errorf("%s: destination %v, want %s", name, dst, podAddr)
	}
	if src, ok := discovery.AddrFromAPI(x.first.GetSource()); !ok || src.Addr() != clientIP {
		t.Errorf("%s: source %v, want the client's address %s", name, src, clientIP)
	}
}

// tapEvents groups a tap stream's events by request as they arrive.
type tapEvents struct {
	ch  chan *tappb.TapEvent
	err chan error
	xs  map[string]*tapExchange
	seq []*tapExchange // in the order of their first event
}

func newTapEvents(stream grpc.ServerStreamingClient[tappb.TapEvent]) *tapEvents {
	e := &tapEvents{ch: make(chan *tappb.TapEvent, 1024), err: make(chan error, 1), xs: map[string]*tapExchange{}}
	go func() {
		for {
			ev, err := stream.Recv()
			if err != nil {
				e.err <- err
				close(e.ch)
				return
			}
			e.ch <- ev
		}
	}()
	return e
}

// add files one event and returns its exchange and the event's kind.
func (e *tapEvents) add(ev *tappb.TapEvent) (*tapExchange, string) {
	h := ev.GetHttp()
	var id *tappb.TapEvent_Http_StreamId
	kind := "unknown"
	switch {
	case h.GetRequestInit() != nil:
		id, kind = h.GetRequestInit().GetId(), "request_init"
	case h.GetResponseInit() != nil:
		id, kind = h.GetResponseInit().GetId(), "response_init"
	case h.GetResponseEnd() != nil:
		id, kind = h.GetResponseEnd().GetId(), "response_end"
	}
	key := fmt.Sprintf("%d/%d", id.GetBase(), id.GetStream())
	x := e.xs[key]
	if x == nil {
		x = &tapExchange{id: key, first: ev}
		e.xs[key] = x
		e.seq = append(e.seq, x)
	}
	x.order = append(x.order, kind)
	switch kind {
	case "request_init":
		x.init = h.GetRequestInit()
	case "response_init":
		x.respInit = h.GetResponseInit()
	case "response_end":
		x.respEnd = h.GetResponseEnd()
	}
	return x, kind
}

// next returns the next event; nil and the stream's error once it ended;
// or timedOut when nothing came for wait.
func (e *tapEvents) next(wait time.Duration) (ev *tappb.TapEvent, timedOut bool, err error) {
	select {
	case ev, ok := <-e.ch:
		if !ok {
			return nil, false, <-e.err
		}
		return ev, false, nil
	case <-time.After(wait):
		return nil, true, nil
	}
}

// waitOpen sends probe requests (with send) until the tap sees one of
// them, whose path is probe, then returns with everything before and
// during that probe consumed.
func (e *tapEvents) waitOpen(t *testing.T, send func(), probe string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		send()
		for {
			ev, timedOut, err := e.next(200 * time.Millisecond)
			if timedOut {
				break
			}
			if err != nil {
				t.Fatalf("tap ended before it saw a request: %v", err)
			}
			if x, kind := e.add(ev); kind == "response_end" && x.path() == probe {
				return
			}
		}
	}
	t.Fatal("the tap saw none of a minute of probe requests (hang guard)")
}

// until collects events until the response_end of a request to path and
// returns the requests seen so far, in order.
func (e *tapEvents) until(t *testing.T, path string) []*tapExchange {
	t.Helper()
	for {
		ev, timedOut, err := e.next(time.Minute)
		if timedOut {
			t.Fatalf("no response_end for %s a minute after it was answered (hang guard)", path)
		}
		if err != nil {
			t.Fatalf("tap ended before the response_end of %s: %v", path, err)
		}
		if x, kind := e.add(ev); kind == "response_end" && x.path() == path {
			return e.seq
		}
	}
}

// all collects events until the stream ends and returns the requests seen
// and the stream's error: nil when it ended cleanly.
func (e *tapEvents) all(t *testing.T) ([]*tapExchange, error) {
	t.Helper()
	for {
		ev, timedOut, err := e.next(time.Minute)
		switch {
		case timedOut:
			t.Fatal("the tap neither sent events nor ended for a minute (hang guard)")
		case errors.Is(err, io.EOF):
			return e.seq, nil
		case err != nil:
			return e.seq, err
		}
		e.add(ev)
	}
}
