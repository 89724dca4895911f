package tap_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/proxy/tap"
)

// hangGuard bounds every wait of these tests; reaching it is a failure.
const hangGuard = 20 * time.Second

// clock is a fake clock that moves only when told.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// harness is a Hub served over gRPC on loopback, with a client.
type harness struct {
	hub    *tap.Hub
	clk    *clock
	client tappb.TapClient
}

func newHarness(t *testing.T, o tap.HubOptions) *harness {
	t.Helper()
	clk := &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	o.Now = clk.Now
	o.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	hub := tap.NewHub(o)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := grpc.NewServer()
	tappb.RegisterTapServer(srv, tap.NewServer(hub))
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc client: %v", err)
	}
	t.Cleanup(func() { cc.Close() })
	return &harness{hub: hub, clk: clk, client: tappb.NewTapClient(cc)}
}

// open starts an Observe stream and waits until the hub has taps open
// taps; the stream is cancelled at cleanup.
func (h *harness) open(t *testing.T, req *tappb.ObserveRequest, taps int) (tappb.Tap_ObserveClient, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	t.Cleanup(cancel)
	s, err := h.client.Observe(ctx, req)
	if err != nil {
		t.Fatalf("Observe: %v", err)
	}
	h.waitTaps(t, taps)
	return s, cancel
}

// waitTaps waits until the hub has n open taps.
func (h *harness) waitTaps(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for h.hub.Taps() != n {
		if time.Now().After(deadline) {
			t.Fatalf("hub has %d taps, want %d", h.hub.Taps(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// exchange runs one request through the hub: its response starts after
// 3 ms and ends 7 ms later on the fake clock.
func (h *harness) exchange(ri *tap.RequestInfo) {
	r := h.hub.Start(ri)
	h.clk.Advance(3 * time.Millisecond)
	r.ResponseInit(200, http.Header{"Content-Type": {"text/plain"}})
	h.clk.Advance(7 * time.Millisecond)
	r.ResponseEnd(42, tap.Eos{}, nil)
}

// collect reads s to its end, returning the events and the final status
// (nil for OK).
func collect(t *testing.T, s tappb.Tap_ObserveClient) ([]*tappb.TapEvent, error) {
	t.Helper()
	var evs []*tappb.TapEvent
	for {
		ev, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return evs, nil
		}
		if err != nil {
			if status.Code(err) == codes.DeadlineExceeded {
				t.Fatalf("stream did not end within %v (%d events so far)", hangGuard, len(evs))
			}
			return evs, err
		}
		evs = append(evs, ev)
	}
}

// requests are the requests of the filter tests; SourceLabels["i"] is each
// one's index.
func requests() []*tap.RequestInfo {
	ap := netip.MustParseAddrPort
	rs := []*tap.RequestInfo{
		{Method: "GET", Scheme: "http", Authority: "web.default:8080", Path: "/api/users",
			Source: ap("10.1.0.5:40000"), Destination: ap("10.2.0.7:8080"),
			DestinationLabels: map[string]string{"deployment": "web", "namespace": "default", "tls": "true"}},
		{Method: "POST", Scheme: "http", Authority: "web.default:8080", Path: "/api/orders",
			Source: ap("10.1.0.5:40001"), Destination: ap("10.2.0.8:8080"),
			DestinationLabels: map[string]string{"deployment": "web", "tls": "true"}},
		{Method: "GET", Scheme: "http", Authority: "books.default", Path: "/books/1",
			Source: ap("10.1.0.6:40000"), Destination: ap("10.3.0.9:7000"),
			DestinationLabels: map[string]string{"deployment": "books", "tls": "no_identity"}},
		{Method: "GET", Scheme: "http", Authority: "Web.Default.svc.cluster.local:8080", Path: "/",
			Source: ap("10.1.0.7:50000"), Destination: ap("[::ffff:10.2.0.9]:8080")},
		{Method: "DELETE", Scheme: "http", Authority: "web.default:8080", Path: "/api/users/1",
			Source: ap("[fd00::5]:5000"), Destination: ap("[fd00:1::7]:8080"),
			DestinationLabels: map[string]string{"deployment": "web"}},
		{Method: "GET", Scheme: "HTTPS", Authority: "api.example.com", Path: "/v1",
			Source: ap("10.1.0.5:40002"), Destination: ap("93.184.216.34:443")},
	}
	for i, r := range rs {
		r.Direction = tappb.TapEvent_OUTBOUND
		r.SourceLabels = map[string]string{"i": strconv.Itoa(i)}
	}
	return rs
}

// Match constructors.
func all(ms ...*tappb.Match) *tappb.Match {
	return &tappb.Match{Match: &tappb.Match_All{All: &tappb.Match_Seq{Matches: ms}}}
}

func anyOf(ms ...*tappb.Match) *tappb.Match {
	return &tappb.Match{Match: &tappb.Match_Any{Any: &tappb.Match_Seq{Matches: ms}}}
}

func not(m *tappb.Match) *tappb.Match { return &tappb.Match{Match: &tappb.Match_Not{Not: m}} }

func httpMatch(h *tappb.Match_Http) *tappb.Match {
	return &tappb.Match{Match: &tappb.Match_Http_{Http: h}}
}

func exact(s string) *tappb.Match_Http_StringMatch {
	return &tappb.Match_Http_StringMatch{Match: &tappb.Match_Http_StringMatch_Exact{Exact: s}}
}

func prefix(s string) *tappb.Match_Http_StringMatch {
	return &tappb.Match_Http_StringMatch{Match: &tappb.Match_Http_StringMatch_Prefix{Prefix: s}}
}

func method(sm *tappb.Match_Http_StringMatch) *tappb.Match {
	return httpMatch(&tappb.Match_Http{Match: &tappb.Match_Http_Method{Method: sm}})
}

func scheme(sm *tappb.Match_Http_StringMatch) *tappb.Match {
	return httpMatch(&tappb.Match_Http{Match: &tappb.Match_Http_Scheme{Scheme: sm}})
}

func authority(sm *tappb.Match_Http_StringMatch) *tappb.Match {
	return httpMatch(&tappb.Match_Http{Match: &tappb.Match_Http_Authority{Authority: sm}})
}

func path(sm *tappb.Match_Http_StringMatch) *tappb.Match {
	return httpMatch(&tappb.Match_Http{Match: &tappb.Match_Http_Path{Path: sm}})
}

func netmask(ip []byte, mask uint32) *tappb.Match_Tcp {
	return &tappb.Match_Tcp{Match: &tappb.Match_Tcp_Netmask_{Netmask: &tappb.Match_Tcp_Netmask{Ip: ip, Mask: mask}}}
}

func ports(lo, hi uint32) *tappb.Match_Tcp {
	return &tappb.Match_Tcp{Match: &tappb.Match_Tcp_Ports{Ports: &tappb.Match_Tcp_PortRange{Min: lo, Max: hi}}}
}

func src(m *tappb.Match_Tcp) *tappb.Match { return &tappb.Match{Match: &tappb.Match_Source{Source: m}} }

func dst(m *tappb.Match_Tcp) *tappb.Match {
	return &tappb.Match{Match: &tappb.Match_Destination{Destination: m}}
}

func label(k, v string) *tappb.Match {
	return &tappb.Match{Match: &tappb.Match_DestinationLabel{DestinationLabel: &tappb.Match_Label{Key: k, Value: v}}}
}

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

// requestIndexes returns the indexes of the requests whose request_init
// events are in evs, and checks that each has its response events.
func requestIndexes(t *testing.T, evs []*tappb.TapEvent) []int {
	t.Helper()
	var idx []int
	kinds := map[uint64]int{}
	for _, ev := range evs {
		h := ev.GetHttp()
		switch {
		case h.GetRequestInit() != nil:
			i, err := strconv.Atoi(ev.GetSourceMeta().GetLabels()["i"])
			if err != nil {
				t.Fatalf("request_init without its index label: %v", ev)
			}
			idx = append(idx, i)
			kinds[h.GetRequestInit().GetId().GetStream()]++
		case h.GetResponseInit() != nil:
			kinds[h.GetResponseInit().GetId().GetStream()]++
		case h.GetResponseEnd() != nil:
			kinds[h.GetResponseEnd().GetId().GetStream()]++
		}
	}
	for id, n := range kinds {
		if n != 3 {
			t.Errorf("stream %d has %d events, want 3", id, n)
		}
	}
	slices.Sort(idx)
	return idx
}

func TestFilters(t *testing.T) {
	h := newHarness(t, tap.HubOptions{})
	for _, tc := range []struct {
		name  string
		match *tappb.Match
		want  []int
	}{
		{"no match", nil, []int{0, 1, 2, 3, 4, 5}},
		{"empty match", &tappb.Match{}, []int{0, 1, 2, 3, 4, 5}},
		{"method exact", method(exact("GET")), []int{0, 2, 3, 5}},
		{"method prefix", method(prefix("P")), []int{1}},
		{"method is case-sensitive", anyOf(method(exact("get")), method(exact("DELETE"))), []int{4}},
		{"scheme exact, any case", scheme(exact("https")), []int{5}},
		{"authority exact", authority(exact("books.default")), []int{2}},
		{"authority prefix, any case", authority(prefix("web.default")), []int{0, 1, 3, 4}},
		{"path exact", path(exact("/api/users")), []int{0}},
		{"path prefix", path(prefix("/api/")), []int{0, 1, 4}},
		{"not", not(method(exact("GET"))), []int{1, 4}},
		{"any", anyOf(path(exact("/books/1")), method(exact("DELETE"))), []int{2, 4}},
		{"all", all(method(exact("GET")), authority(prefix("web."))), []int{0, 3}},
		{"empty all matches everything", all(), []int{0, 1, 2, 3, 4, 5}},
		{"nested", all(not(anyOf(method(exact("POST")), scheme(exact("https")))), path(prefix("/"))), []int{0, 2, 3, 4}},
		{"destination netmask v4 (and v4-mapped)", dst(netmask(ip("10.2.0.0"), 16)), []int{0, 1, 3}},
		{"destination netmask /32", dst(netmask(ip("10.3.0.9"), 32)), []int{2}},
		{"source netmask v6", src(netmask(ip("fd00::"), 64)), []int{4}},
		{"netmask /0 of v4 excludes v6", src(netmask(ip("0.0.0.0"), 0)), []int{0, 1, 2, 3, 5}},
		{"destination port range", dst(ports(7000, 7999)), []int{2}},
		{"source port alone", src(ports(40000, 0)), []int{0, 2}},
		{"source ports", src(ports(40000, 40002)), []int{0, 1, 2, 5}},
		{"destination label", label("deployment", "web"), []int{0, 1, 4}},
		{"tls label", label("tls", "true"), []int{0, 1}},
		{"label of another value", anyOf(label("deployment", "db"), path(exact("/v1"))), []int{5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// With limit = the expected count, the stream ends after the
			// expected requests; a wrong match ends it early with another
			// set, or never (the hang guard).
			s, _ := h.open(t, &tappb.ObserveRequest{Match: tc.match, Limit: uint32(len(tc.want)), MaxRps: 1000}, 1)
			for _, ri := range requests() {
				h.exchange(ri)
			}
			evs, err := collect(t, s)
			if err != nil {
				t.Fatalf("stream ended with %v, want OK", err)
			}
			if got := requestIndexes(t, evs); !slices.Equal(got, tc.want) {
				t.Errorf("tap saw requests %v, want %v", got, tc.want)
			}
			if h.hub.Active() {
				t.Errorf("hub still active after the only stream ended")
			}
		})
	}
}

func TestStartWithoutMatch(t *testing.T) {
	h := newHarness(t, tap.HubOptions{})
	h.open(t, &tappb.ObserveRequest{Match: method(exact("PUT"))}, 1)
	for _, ri := range requests() {
		if r := h.hub.Start(ri); r != nil {
			t.Errorf("Start(%s %s) = %v, want nil: no tap matches", ri.Method, ri.Path, r)
		}
	}
}

func TestInvalidRequests(t *testing.T) {
	h := newHarness(t, tap.HubOptions{})
	for _, tc := range []struct {
		name string
		req  *tappb.ObserveRequest
	}{
		{"netmask ip of 5 bytes", &tappb.ObserveRequest{Match: dst(netmask([]byte{1, 2, 3, 4, 5}, 8))}},
		{"netmask without ip", &tappb.ObserveRequest{Match: src(netmask(nil, 0))}},
		{"mask longer than v4", &tappb.ObserveRequest{Match: dst(netmask(ip("10.0.0.0"), 33))}},
		{"mask longer than v6", &tappb.ObserveRequest{Match: dst(netmask(ip("fd00::"), 129))}},
		{"port above 65535", &tappb.ObserveRequest{Match: dst(ports(70000, 0))}},
		{"port range reversed", &tappb.ObserveRequest{Match: dst(ports(9000, 8000))}},
		{"empty tcp", &tappb.ObserveRequest{Match: src(&tappb.Match_Tcp{})}},
		{"empty http", &tappb.ObserveRequest{Match: httpMatch(&tappb.Match_Http{})}},
		{"empty string match", &tappb.ObserveRequest{Match: path(&tappb.Match_Http_StringMatch{})}},
		{"not of nothing", &tappb.ObserveRequest{Match: not(nil)}},
		{"empty match nested", &tappb.ObserveRequest{Match: all(method(exact("GET")), &tappb.Match{})}},
		{"invalid deep inside", &tappb.ObserveRequest{Match: anyOf(not(all(dst(ports(1, 0)), src(netmask([]byte{1}, 0)))))}},
		{"label without key", &tappb.ObserveRequest{Match: label("", "x")}},
		{"negative max_rps", &tappb.ObserveRequest{MaxRps: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
			defer cancel()
			s, err := h.client.Observe(ctx, tc.req)
			if err == nil {
				_, err = s.Recv()
			}
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("Observe: %v, want InvalidArgument", err)
			}
			if h.hub.Active() {
				t.Errorf("an invalid request left a tap open")
			}
		})
	}
}

func TestEventDetails(t *testing.T) {
	h := newHarness(t, tap.HubOptions{})
	s, _ := h.open(t, &tappb.ObserveRequest{Limit: 1}, 1)
	r := h.hub.Start(&tap.RequestInfo{
		Direction:         tappb.TapEvent_INBOUND,
		Source:            netip.MustParseAddrPort("[::ffff:10.1.0.5]:40000"),
		Destination:       netip.MustParseAddrPort("[fd00::7]:8080"),
		SourceLabels:      map[string]string{"pod": "client"},
		DestinationLabels: map[string]string{"pod": "server", "tls": "true"},
		Method:            "POST", Scheme: "http", Authority: "svc:8080", Path: "/x.Svc/Call",
		Header: http.Header{"Content-Type": {"application/grpc"}},
	})
	if r == nil {
		t.Fatal("Start = nil with a tap matching everything")
	}
	h.clk.Advance(3 * time.Millisecond)
	r.ResponseInit(200, http.Header{"Content-Type": {"application/grpc"}})
	r.ResponseInit(500, nil) // only the first counts
	h.clk.Advance(7 * time.Millisecond)
	g := uint32(14)
	r.ResponseEnd(1234, tap.Eos{GRPCStatus: &g}, http.Header{"Grpc-Status": {"14"}})
	r.ResponseEnd(1, tap.Eos{}, nil) // only the first counts
	evs, err := collect(t, s)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	if len(evs) != 3 {
		t.Fatalf("got %d events, want 3: %v", len(evs), evs)
	}
	for _, ev := range evs {
		if got, _ := netip.AddrFromSlice(ev.GetSource().GetIp()); got != netip.MustParseAddr("10.1.0.5") || ev.GetSource().GetPort() != 40000 {
			t.Errorf("source %v", ev.GetSource())
		}
		if got, _ := netip.AddrFromSlice(ev.GetDestination().GetIp()); got != netip.MustParseAddr("fd00::7") || ev.GetDestination().GetPort() != 8080 {
			t.Errorf("destination %v", ev.GetDestination())
		}
		if ev.GetSourceMeta().GetLabels()["pod"] != "client" || ev.GetDestinationMeta().GetLabels()["pod"] != "server" || ev.GetDestinationMeta().GetLabels()["tls"] != "true" {
			t.Errorf("meta %v %v", ev.GetSourceMeta(), ev.GetDestinationMeta())
		}
		if ev.GetProxyDirection() != tappb.TapEvent_INBOUND {
			t.Errorf("direction %v", ev.GetProxyDirection())
		}
	}
	ri, rs, re := evs[0].GetHttp().GetRequestInit(), evs[1].GetHttp().GetResponseInit(), evs[2].GetHttp().GetResponseEnd()
	if ri == nil || rs == nil || re == nil {
		t.Fatalf("events out of order: %v", evs)
	}
	if ri.GetMethod() != "POST" || ri.GetScheme() != "http" || ri.GetAuthority() != "svc:8080" || ri.GetPath() != "/x.Svc/Call" {
		t.Errorf("request_init %v", ri)
	}
	if ri.GetId().GetStream() == 0 || ri.GetId().GetStream() != rs.GetId().GetStream() || rs.GetId().GetStream() != re.GetId().GetStream() ||
		ri.GetId().GetBase() != rs.GetId().GetBase() || rs.GetId().GetBase() != re.GetId().GetBase() {
		t.Errorf("ids %v %v %v, want one id", ri.GetId(), rs.GetId(), re.GetId())
	}
	if rs.GetHttpStatus() != 200 || rs.GetSinceRequestInit().AsDuration() != 3*time.Millisecond {
		t.Errorf("response_init %v, want 200 after 3ms", rs)
	}
	if re.GetSinceRequestInit().AsDuration() != 10*time.Millisecond || re.GetSinceResponseInit().AsDuration() != 7*time.Millisecond ||
		re.GetResponseBytes() != 1234 || re.GetEos().GetGrpcStatusCode() != 14 {
		t.Errorf("response_end %v, want 10ms, 7ms, 1234 bytes, grpc 14", re)
	}
	if ri.GetHeaders() != nil || rs.GetHeaders() != nil || re.GetTrailers() != nil {
		t.Errorf("headers sent though not asked for")
	}
	if h.hub.Start(&tap.RequestInfo{}) != nil {
		t.Errorf("Start matched after the limit")
	}
}

func TestEos(t *testing.T) {
	h := newHarness(t, tap.HubOptions{})
	s, _ := h.open(t, &tappb.ObserveRequest{Limit: 3}, 1)
	rst := uint32(8)
	for _, eos := range []tap.Eos{{}, {ResetCode: &rst}} {
		h.hub.Start(&tap.RequestInfo{}).ResponseEnd(0, eos, nil) // no response head
	}
	var nilReq *tap.Request
	nilReq.ResponseInit(200, nil)
	nilReq.ResponseEnd(0, tap.Eos{}, nil)
	h.exchange(&tap.RequestInfo{})
	evs, err := collect(t, s)
	if err != nil || len(evs) != 7 {
		t.Fatalf("got %d events, %v; want 7", len(evs), err)
	}
	clean, reset := evs[1].GetHttp().GetResponseEnd(), evs[3].GetHttp().GetResponseEnd()
	if clean.GetEos() != nil || clean.GetSinceResponseInit() != nil {
		t.Errorf("clean end without response head: %v, want no eos and no since_response_init", clean)
	}
	if reset.GetEos().GetResetErrorCode() != 8 {
		t.Errorf("reset end: %v, want reset_error_code 8", reset)
	}
}

func TestHeadersOnlyWhenAsked(t *testing.T) {
	h := newHarness(t, tap.HubOptions{})
	plain, _ := h.open(t, &tappb.ObserveRequest{Limit: 1}, 1)
	withHeaders, _ := h.open(t, &tappb.ObserveRequest{Limit: 1, Extract: &tappb.Extract{Extract: &tappb.Extract_Http_{
		Http: &tappb.Extract_Http{Extract: &tappb.Extract_Http_Headers_{Headers: &tappb.Extract_Http_Headers{}}}}}}, 2)
	r := h.hub.Start(&tap.RequestInfo{Method: "GET", Path: "/", Header: http.Header{"X-Request-Id": {"abc"}, "Accept": {"a", "b"}}})
	r.ResponseInit(200, http.Header{"Content-Type": {"text/plain"}})
	r.ResponseEnd(5, tap.Eos{}, http.Header{"Grpc-Status": {"0"}})

	evs, err := collect(t, plain)
	if err != nil || len(evs) != 3 {
		t.Fatalf("plain tap: %d events, %v", len(evs), err)
	}
	if evs[0].GetHttp().GetRequestInit().GetHeaders() != nil || evs[1].GetHttp().GetResponseInit().GetHeaders() != nil || evs[2].GetHttp().GetResponseEnd().GetTrailers() != nil {
		t.Errorf("tap that did not ask got headers: %v", evs)
	}
	evs, err = collect(t, withHeaders)
	if err != nil || len(evs) != 3 {
		t.Fatalf("headers tap: %d events, %v", len(evs), err)
	}
	type field struct{ name, value string }
	list := func(hs *tappb.Headers) []field {
		var out []field
		for _, h := range hs.GetHeaders() {
			out = append(out, field{h.GetName(), string(h.GetValue())})
		}
		return out
	}
	for _, tc := range []struct {
		name string
		got  *tappb.Headers
		want []field
	}{
		{"request", evs[0].GetHttp().GetRequestInit().GetHeaders(), []field{{"accept", "a"}, {"accept", "b"}, {"x-request-id", "abc"}}},
		{"response", evs[1].GetHttp().GetResponseInit().GetHeaders(), []field{{"content-type", "text/plain"}}},
		{"trailers", evs[2].GetHttp().GetResponseEnd().GetTrailers(), []field{{"grpc-status", "0"}}},
	} {
		if got := list(tc.got); !slices.Equal(got, tc.want) {
			t.Errorf("%s headers %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestLimitEndsStream(t *testing.T) {
	h := newHarness(t, tap.HubOptions{})
	s, _ := h.open(t, &tappb.ObserveRequest{Limit: 2}, 1)
	rs := requests()
	a, b := h.hub.Start(rs[0]), h.hub.Start(rs[1])
	if a == nil || b == nil {
		t.Fatal("Start = nil under the limit")
	}
	if c := h.hub.Start(rs[2]); c != nil {
		t.Fatal("Start admitted a third request with limit 2")
	}
	b.ResponseInit(200, nil)
	b.ResponseEnd(1, tap.Eos{}, nil)
	if !h.hub.Active() {
		t.Fatal("stream ended while an admitted request is in flight")
	}
	a.ResponseInit(200, nil)
	a.ResponseEnd(1, tap.Eos{}, nil)
	evs, err := collect(t, s)
	if err != nil {
		t.Fatalf("stream ended with %v, want OK", err)
	}
	if got := requestIndexes(t, evs); !slices.Equal(got, []int{0, 1}) {
		t.Errorf("saw requests %v, want [0 1]", got)
	}
	last := evs[len(evs)-1].GetHttp().GetResponseEnd()
	if last == nil || evs[len(evs)-1].GetSourceMeta().GetLabels()["i"] != "0" {
		t.Errorf("last event %v, want the response_end of the last request to end", evs[len(evs)-1])
	}
	h.waitTaps(t, 0)
}

func TestRateLimit(t *testing.T) {
	h := newHarness(t, tap.HubOptions{})
	s, _ := h.open(t, &tappb.ObserveRequest{MaxRps: 5, Limit: 8}, 1)
	admitted := func(n int) (got []int) {
		for i := range n {
			if r := h.hub.Start(&tap.RequestInfo{Path: "/" + strconv.Itoa(i)}); r != nil {
				got = append(got, i)
				r.ResponseEnd(0, tap.Eos{}, nil)
			}
		}
		return got
	}
	for _, step := range []struct {
		advance time.Duration
		want    int
	}{
		{0, 5},                      // a full bucket: one second's worth
		{0, 0},                      // empty
		{400 * time.Millisecond, 2}, // 5/s refills 2 in 400 ms
		{10 * time.Second, 1},       // refilled to 5, but the limit of 8 leaves 1
		{10 * time.Second, 0},       // the stream is done
	} {
		h.clk.Advance(step.advance)
		if got := admitted(12); len(got) != step.want {
			t.Errorf("after %v: admitted %v of 12, want %d", step.advance, got, step.want)
		}
	}
	evs, err := collect(t, s)
	if err != nil || len(evs) != 16 {
		t.Fatalf("got %d events, %v; want 8 requests' 16 events", len(evs), err)
	}
}

func TestDefaultMaxRPS(t *testing.T) {
	h := newHarness(t, tap.HubOptions{DefaultMaxRPS: 3})
	h.open(t, &tappb.ObserveRequest{}, 1)
	n := 0
	for range 10 {
		if r := h.hub.Start(&tap.RequestInfo{}); r != nil {
			n++
			r.ResponseEnd(0, tap.Eos{}, nil)
		}
	}
	if n != 3 {
		t.Errorf("admitted %d of 10 at once with DefaultMaxRPS 3, want 3", n)
	}
}

func TestSlowConsumer(t *testing.T) {
	h := newHarness(t, tap.HubOptions{QueueSize: 4})
	_, cancel := h.open(t, &tappb.ObserveRequest{MaxRps: 1e9}, 1) // never read
	done := make(chan struct{})
	go func() {
		defer close(done)
		hdr := http.Header{"X-Pad": {string(make([]byte, 1000))}}
		for range 20000 {
			r := h.hub.Start(&tap.RequestInfo{Path: "/", Header: hdr})
			r.ResponseInit(200, hdr)
			r.ResponseEnd(0, tap.Eos{}, hdr)
		}
	}()
	select {
	case <-done:
	case <-time.After(hangGuard):
		t.Fatal("the request path blocked on a tap client that does not read")
	}
	if h.hub.Dropped() == 0 {
		t.Errorf("no events dropped for a client that never reads 60000 events")
	}
	cancel()
	h.waitTaps(t, 0)
	if h.hub.Start(&tap.RequestInfo{}) != nil {
		t.Errorf("Start matched after the last tap ended")
	}
}

func TestActive(t *testing.T) {
	h := newHarness(t, tap.HubOptions{})
	if h.hub.Active() {
		t.Fatal("new hub is active")
	}
	var nilHub *tap.Hub
	if nilHub.Active() || nilHub.Start(&tap.RequestInfo{}) != nil {
		t.Fatal("nil hub is active")
	}
	_, cancel1 := h.open(t, &tappb.ObserveRequest{}, 1)
	_, cancel2 := h.open(t, &tappb.ObserveRequest{}, 2)
	if !h.hub.Active() {
		t.Fatal("hub with two taps is not active")
	}
	cancel1()
	h.waitTaps(t, 1)
	if !h.hub.Active() {
		t.Fatal("hub with one tap left is not active")
	}
	cancel2()
	h.waitTaps(t, 0)
	if h.hub.Active() {
		t.Fatal("hub still active after the last stream ended")
	}
}

func TestMaxTaps(t *testing.T) {
	h := newHarness(t, tap.HubOptions{MaxTaps: 2})
	_, cancel1 := h.open(t, &tappb.ObserveRequest{}, 1)
	h.open(t, &tappb.ObserveRequest{}, 2)
	refused := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
		defer cancel()
		s, err := h.client.Observe(ctx, &tappb.ObserveRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		return err
	}
	if err := refused(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third tap: %v, want ResourceExhausted", err)
	}
	cancel1()
	h.waitTaps(t, 1)
	s, _ := h.open(t, &tappb.ObserveRequest{Limit: 1}, 2)
	h.exchange(&tap.RequestInfo{})
	if evs, err := collect(t, s); err != nil || len(evs) != 3 {
		t.Errorf("tap opened after one closed: %d events, %v", len(evs), err)
	}
}

func TestConcurrentRequests(t *testing.T) {
	// Run with -race: many requests and taps at once.
	const taps, workers, each = 3, 4, 50
	h := newHarness(t, tap.HubOptions{QueueSize: 3 * workers * each})
	var streams []tappb.Tap_ObserveClient
	for i := range taps {
		s, _ := h.open(t, &tappb.ObserveRequest{Limit: workers * each, MaxRps: 1e9}, i+1)
		streams = append(streams, s)
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				r := h.hub.Start(&tap.RequestInfo{Path: "/" + strconv.Itoa(w*each+i)})
				r.ResponseInit(200, nil)
				r.ResponseEnd(uint64(i), tap.Eos{}, nil)
			}
		})
	}
	// Read while the requests run, so no event is dropped.
	results := make(chan int, taps)
	for _, s := range streams {
		go func() {
			evs, err := collect(t, s)
			if err != nil {
				t.Errorf("stream: %v", err)
			}
			results <- len(evs)
		}()
	}
	wg.Wait()
	for range taps {
		if n := <-results; n != 3*workers*each {
			t.Errorf("a tap got %d events, want %d", n, 3*workers*each)
		}
	}
}

func TestStartNoTapsAllocs(t *testing.T) {
	hub := tap.NewHub(tap.HubOptions{})
	ri := requests()[0]
	if n := testing.AllocsPerRun(1000, func() { hub.Start(ri).ResponseEnd(0, tap.Eos{}, nil) }); n != 0 {
		t.Errorf("Start without taps allocates %v times, want 0", n)
	}
}

func BenchmarkStartNoTaps(b *testing.B) {
	hub := tap.NewHub(tap.HubOptions{})
	ri := requests()[0]
	b.ReportAllocs()
	for b.Loop() {
		if hub.Start(ri) != nil {
			b.Fatal("Start matched without taps")
		}
	}
}
