package tap

import (
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"net/netip"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap/tapapi"
)

// readBody reads r's body, at most MaxBodyBytes. The service reads it
// before it answers anything: a proxy in front (the API server) that is
// still sending a body the answer came before may otherwise never finish
// the exchange.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, *apiError) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			return nil, &apiError{code: http.StatusRequestEntityTooLarge, reason: metav1.StatusReasonRequestEntityTooLarge, outcome: outcomeBadRequest,
				msg: fmt.Sprintf("the request body is larger than %d bytes", mbe.Limit)}
		}
		return nil, badRequest("read request body: " + err.Error())
	}
	return b, nil
}

// decodeBody decodes the TapByResourceRequest in b, protobuf or JSON by
// the request's Content-Type. An empty body is an empty request.
func decodeBody(r *http.Request, b []byte) (*tappb.TapByResourceRequest, *apiError) {
	req := &tappb.TapByResourceRequest{}
	if len(b) == 0 {
		return req, nil
	}
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil && ct != "" {
		return nil, badRequest(fmt.Sprintf("parse Content-Type %q: %v", ct, err))
	}
	switch mt {
	case tapapi.ContentTypeProtobuf, tapapi.ContentTypeXProtobuf:
		err = proto.Unmarshal(b, req)
	case tapapi.ContentTypeJSON:
		err = protojson.Unmarshal(b, req)
	default:
		return nil, &apiError{code: http.StatusUnsupportedMediaType, reason: metav1.StatusReasonUnsupportedMediaType, outcome: outcomeBadRequest,
			msg: fmt.Sprintf("Content-Type %q is not %s, %s or %s", ct, tapapi.ContentTypeProtobuf, tapapi.ContentTypeXProtobuf, tapapi.ContentTypeJSON)}
	}
	if err != nil {
		return nil, badRequest(fmt.Sprintf("decode TapByResourceRequest (%s): %v", mt, err))
	}
	return req, nil
}

// wantsJSON tells from an Accept header whether the client wants the
// events as newline-delimited JSON: the first media type it names that
// this service knows decides; with none, protobuf.
func wantsJSON(accept string) bool {
	for part := range strings.SplitSeq(accept, ",") {
		mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		switch mt {
		case tapapi.ContentTypeJSON:
			return true
		case tapapi.ContentTypeProtobuf, tapapi.ContentTypeXProtobuf:
			return false
		}
	}
	return false
}

// normalize checks req against the target its path names, fills what it
// leaves out and puts its types in canonical form. pathTarget names a
// namespace (the namespace path) or one object.
func normalize(req *tappb.TapByResourceRequest, pathTarget *tappb.Resource) *apiError {
	ns := pathTarget.GetNamespace()
	t := req.GetTarget()
	if t == nil {
		t = &tappb.Resource{}
	}
	if t.GetNamespace() != "" && t.GetNamespace() != ns {
		return badRequest(fmt.Sprintf("target namespace %q is not the namespace %q of the request's path", t.GetNamespace(), ns))
	}
	target := proto.Clone(pathTarget).(*tappb.Resource)
	if t.GetType() != "" {
		bt, ok := tapapi.LookupType(t.GetType())
		if !ok {
			return badRequest(fmt.Sprintf("target: unknown type %q (want one of %s)", t.GetType(), strings.Join(tapapi.TypeNames(), ", ")))
		}
		switch {
		case pathTarget.GetType() == "namespace" && bt.Name != "namespace":
			// The namespace path taps every object of a type in it.
			if t.GetName() != "" {
				return badRequest(fmt.Sprintf("target %s/%s: a named target goes in the path, .../watch/namespaces/%s/%s/%s/tap", bt.Name, t.GetName(), ns, bt.Plural, t.GetName()))
			}
			target.Type, target.Name = bt.Name, ""
		case bt.Name != pathTarget.GetType():
			return badRequest(fmt.Sprintf("target type %q is not the type %q of the request's path", bt.Name, pathTarget.GetType()))
		}
	}
	if t.GetName() != "" && t.GetName() != target.GetName() {
		return badRequest(fmt.Sprintf("target name %q is not the name %q of the request's path", t.GetName(), target.GetName()))
	}
	req.Target = target

	if to := req.GetTo(); to != nil && (to.GetNamespace() != "" || to.GetType() != "" || to.GetName() != "") {
		tt, ok := tapapi.LookupType(to.GetType())
		if !ok {
			return badRequest(fmt.Sprintf("to: unknown type %q (want one of %s)", to.GetType(), strings.Join(tapapi.TypeNames(), ", ")))
		}
		to.Type = tt.Name
		if tt.Name == "namespace" {
			switch {
			case to.GetName() == "" && to.GetNamespace() == "":
				to.Name = ns
			case to.GetName() == "":
				to.Name = to.GetNamespace()
			case to.GetNamespace() != "" && to.GetNamespace() != to.GetName():
				return badRequest(fmt.Sprintf("to: namespace %q with namespace %q", to.GetName(), to.GetNamespace()))
			}
			to.Namespace = to.GetName()
		}
		if to.GetNamespace() == "" {
			to.Namespace = ns
		}
	} else {
		req.To = nil
	}

	if rps := req.GetMaxRps(); math.IsNaN(rps) || math.IsInf(rps, 0) || rps < 0 {
		return badRequest(fmt.Sprintf("max_rps %v is not a non-negative number", rps))
	}
	return nil
}

// maxToIPs bounds the destination addresses a `to` match lists; beyond,
// it matches by destination labels only.
const maxToIPs = 256

// buildMatch returns the proxies' Match for req's filters, nil when there
// are none. `to` matches requests whose destination labels (from
// discovery, no "dst_" prefix) name it (namespace=<ns> and, for a named
// object, <type>=<name>), or whose destination is one of toIPs.
func buildMatch(req *tappb.TapByResourceRequest, toIPs []netip.Addr) *tappb.Match {
	var all []*tappb.Match
	addHTTP := func(h *tappb.Match_Http) { all = append(all, &tappb.Match{Match: &tappb.Match_Http_{Http: h}}) }
	exact := func(s string) *tappb.Match_Http_StringMatch {
		return &tappb.Match_Http_StringMatch{Match: &tappb.Match_Http_StringMatch_Exact{Exact: s}}
	}
	if m := req.GetMethod(); m != "" {
		addHTTP(&tappb.Match_Http{Match: &tappb.Match_Http_Method{Method: exact(m)}})
	}
	if a := req.GetAuthority(); a != "" {
		addHTTP(&tappb.Match_Http{Match: &tappb.Match_Http_Authority{Authority: exact(a)}})
	}
	if p := req.GetPath(); p != "" {
		addHTTP(&tappb.Match_Http{Match: &tappb.Match_Http_Path{Path: &tappb.Match_Http_StringMatch{
			Match: &tappb.Match_Http_StringMatch_Prefix{Prefix: p},
		}}})
	}
	if to := req.GetTo(); to != nil {
		all = append(all, toMatch(to, toIPs))
	}
	return allOf(all)
}

func toMatch(to *tappb.Resource, ips []netip.Addr) *tappb.Match {
	byLabel := []*tappb.Match{label("namespace", to.GetNamespace())}
	if to.GetType() != "namespace" && to.GetName() != "" {
		byLabel = append(byLabel, label(to.GetType(), to.GetName()))
	}
	m := allOf(byLabel)
	if len(ips) == 0 || len(ips) > maxToIPs {
		return m
	}
	anyOf := []*tappb.Match{m}
	for _, ip := range ips {
		anyOf = append(anyOf, &tappb.Match{Match: &tappb.Match_Destination{Destination: &tappb.Match_Tcp{
			Match: &tappb.Match_Tcp_Netmask_{Netmask: &tappb.Match_Tcp_Netmask{Ip: ip.AsSlice(), Mask: uint32(ip.BitLen())}},
		}}})
	}
	return &tappb.Match{Match: &tappb.Match_Any{Any: &tappb.Match_Seq{Matches: anyOf}}}
}

func label(k, v string) *tappb.Match {
	return &tappb.Match{Match: &tappb.Match_DestinationLabel{DestinationLabel: &tappb.Match_Label{Key: k, Value: v}}}
}

// allOf is the conjunction of ms: nil for none, the match itself for one.
func allOf(ms []*tappb.Match) *tappb.Match {
	switch len(ms) {
	case 0:
		return nil
	case 1:
		return ms[0]
	}
	return &tappb.Match{Match: &tappb.Match_All{All: &tappb.Match_Seq{Matches: ms}}}
}
