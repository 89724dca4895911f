package tap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/encoding/protojson"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap/tapapi"
)

// podStream is the Observe stream of one pod's proxy.
type podStream struct {
	pod    *corev1.Pod
	self   map[string]string // the pod's labels for events
	conn   *grpc.ClientConn
	events tappb.Tap_ObserveClient
}

// fanOut resolves req's pods, opens their proxies' streams and serves the
// merged events.
func (s *Server) fanOut(w http.ResponseWriter, r *http.Request, u userInfo, req *tappb.TapByResourceRequest) *apiError {
	target := tapapi.String(req.GetTarget())
	all, aerr := s.podsOf(r.Context(), req.GetTarget())
	if aerr != nil {
		return aerr
	}
	pods := running(all, true)
	if len(pods) == 0 {
		return &apiError{code: http.StatusNotFound, reason: metav1.StatusReasonNotFound, outcome: outcomeNoPods,
			msg: target + " has no running meshed pods"}
	}
	if len(pods) > s.cfg.MaxPods {
		return badRequest(fmt.Sprintf("%s has %d running meshed pods, more than the %d one tap may watch: tap a smaller resource", target, len(pods), s.cfg.MaxPods))
	}
	var toPods []*corev1.Pod
	var toIPs []netip.Addr
	if to := req.GetTo(); to != nil && to.GetType() != "namespace" {
		all, aerr := s.podsOf(r.Context(), to)
		if aerr != nil {
			aerr.msg = "to: " + aerr.msg
			return aerr
		}
		toPods = running(all, false)
		for _, p := range toPods {
			toIPs = append(toIPs, podIPs(p)...)
		}
	}

	rps := req.GetMaxRps()
	if rps == 0 {
		rps = s.cfg.DefaultMaxRPS
	}
	obs := &tappb.ObserveRequest{
		Limit:   req.GetLimit(),
		Match:   buildMatch(req, toIPs),
		Extract: req.GetExtract(),
		MaxRps:  rps / float64(len(pods)),
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	streams, errs := s.open(ctx, pods, obs)
	defer func() {
		cancel()
		for _, ps := range streams {
			ps.conn.Close()
		}
	}()
	log := s.log.With("user", u.name, "target", target)
	for _, err := range errs {
		s.m.proxyErrors.Inc()
		log.Warn("cannot tap a pod's proxy", "error", err.Error())
	}
	if len(streams) == 0 {
		return &apiError{code: http.StatusServiceUnavailable, reason: metav1.StatusReasonServiceUnavailable, outcome: outcomeUnavailable,
			msg: fmt.Sprintf("cannot reach the proxies of %s: %v", target, errors.Join(errs...))}
	}

	s.m.requests.WithLabelValues(outcomeOK).Inc()
	s.m.open.Inc()
	defer s.m.open.Dec()
	enc := encodeProtobuf
	w.Header().Set("Content-Type", tapapi.StreamProtobuf)
	if wantsJSON(r.Header.Get("Accept")) {
		enc = encodeJSON
		w.Header().Set("Content-Type", tapapi.StreamJSON)
	}
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()

	start := time.Now()
	log.Info("tap started", "pods", len(pods), "proxies", len(streams), "limit", req.GetLimit(), "max_rps", rps)
	pr := newPeers(s.cfg.Client, log, pods, toPods)
	reason, n := s.merge(ctx, cancel, streams, req.GetLimit(), pr, func(ev *tappb.TapEvent) error {
		if err := enc(w, ev); err != nil {
			return err
		}
		return rc.Flush()
	})
	log.Info("tap ended", "why", reason, "events", n, "duration", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// open dials every pod's proxy and starts its Observe stream, all at once;
// it returns the streams that started and an error for each pod whose did
// not.
func (s *Server) open(ctx context.Context, pods []*corev1.Pod, obs *tappb.ObserveRequest) ([]*podStream, []error) {
	res := make([]*podStream, len(pods))
	errs := make([]error, len(pods))
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Go(func() { res[i], errs[i] = s.openOne(ctx, p, obs) })
	}
	wg.Wait()
	var streams []*podStream
	var failed []error
	for i := range pods {
		if errs[i] != nil {
			failed = append(failed, errs[i])
			continue
		}
		streams = append(streams, res[i])
	}
	return streams, failed
}

func (s *Server) openOne(ctx context.Context, p *corev1.Pod, obs *tappb.ObserveRequest) (*podStream, error) {
	addr := netip.AddrPortFrom(podIP(p), s.cfg.TapPort)
	conn, err := grpc.NewClient("passthrough:///"+addr.String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return s.cfg.Dial(ctx, addr) }),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: s.cfg.ConnectTimeout}),
	)
	if err != nil {
		return nil, fmt.Errorf("pod %s (%s): %w", p.Name, addr, err)
	}
	// Without WaitForReady, Observe fails once the first connection
	// attempt does, within ConnectTimeout.
	st, err := tappb.NewTapClient(conn).Observe(ctx, obs)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("pod %s (%s): observe: %w", p.Name, addr, err)
	}
	return &podStream{pod: p, self: podMeta(p), conn: conn, events: st}, nil
}

// Why a merge ended, for the log.
const (
	endClient  = "the client went away or the server is shutting down"
	endLimit   = "the limit was reached"
	endProxies = "every proxy's stream ended"
)

// merge forwards the streams' events to send, enriched, until ctx ends,
// send fails, limit requests have been seen to their end or every stream
// ended. It returns why it stopped and how many events it forwarded, once
// it cancelled the streams (opened with ctx, which cancel ends) and their
// readers returned.
func (s *Server) merge(ctx context.Context, cancel context.CancelFunc, streams []*podStream, limit uint32, pr *peers, send func(*tappb.TapEvent) error) (string, uint64) {
	type item struct {
		pod int
		ev  *tappb.TapEvent
	}
	type end struct {
		pod int
		err error
	}
	items := make(chan item)
	ended := make(chan end, len(streams))
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	for i, ps := range streams {
		wg.Go(func() {
			for {
				ev, err := ps.events.Recv()
				if err != nil {
					ended <- end{i, err}
					return
				}
				pr.enrich(ctx, ev, ps.self)
				select {
				case items <- item{i, ev}:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	lim := newLimiter(limit)
	var n uint64
	for open := len(streams); open > 0; {
		select {
		case <-ctx.Done():
			return endClient, n
		case e := <-ended:
			open--
			if !errors.Is(e.err, io.EOF) && status.Code(e.err) != codes.Canceled {
				s.m.proxyErrors.Inc()
				s.log.Warn("a proxy's tap stream failed", "pod", streams[e.pod].pod.Name, "error", e.err.Error())
			}
			if lim.streamEnded(e.pod) {
				return endLimit, n
			}
		case it := <-items:
			fwd, done := lim.admit(it.pod, it.ev)
			if fwd {
				if err := send(it.ev); err != nil {
					return endClient, n
				}
				n++
				s.m.events.Inc()
			}
			if done {
				return endLimit, n
			}
		}
	}
	return endProxies, n
}

// limiter enforces a tap's limit over all pods: it admits the first limit
// requests (by their request-init events) and their later events, and is
// done once each admitted request ended.
type limiter struct {
	limit, admitted uint32
	open            map[reqKey]struct{}
}

// reqKey identifies a request: the pod whose proxy saw it and its id there.
type reqKey struct {
	pod    int
	base   uint32
	stream uint64
}

func newLimiter(limit uint32) *limiter {
	return &limiter{limit: limit, open: map[reqKey]struct{}{}}
}

// admit says whether to forward ev, seen by pod's proxy, and whether the
// tap is complete after it.
func (l *limiter) admit(pod int, ev *tappb.TapEvent) (forward, done bool) {
	if l.limit == 0 {
		return true, false
	}
	var id *tappb.TapEvent_Http_StreamId
	var first, last bool
	switch e := ev.GetHttp().GetEvent().(type) {
	case *tappb.TapEvent_Http_RequestInit_:
		id, first = e.RequestInit.GetId(), true
	case *tappb.TapEvent_Http_ResponseInit_:
		id = e.ResponseInit.GetId()
	case *tappb.TapEvent_Http_ResponseEnd_:
		id, last = e.ResponseEnd.GetId(), true
	default:
		return l.admitted < l.limit, false
	}
	k := reqKey{pod: pod, base: id.GetBase(), stream: id.GetStream()}
	if first {
		if l.admitted >= l.limit {
			return false, false
		}
		l.admitted++
		l.open[k] = struct{}{}
		return true, false
	}
	if _, ok := l.open[k]; !ok {
		return false, false
	}
	if last {
		delete(l.open, k)
	}
	return true, l.complete()
}

// streamEnded forgets the open requests of pod, whose stream ended, and
// says whether the tap is complete.
func (l *limiter) streamEnded(pod int) bool {
	for k := range l.open {
		if k.pod == pod {
			delete(l.open, k)
		}
	}
	return l.complete()
}

func (l *limiter) complete() bool {
	return l.limit > 0 && l.admitted >= l.limit && len(l.open) == 0
}

// encodeProtobuf writes ev length-delimited.
func encodeProtobuf(w io.Writer, ev *tappb.TapEvent) error {
	_, err := protodelim.MarshalTo(w, ev)
	return err
}

// encodeJSON writes ev as one line of protojson.
func encodeJSON(w io.Writer, ev *tappb.TapEvent) error {
	b, err := protojson.Marshal(ev)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}
