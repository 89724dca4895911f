package meshctl

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"

	apinet "github.com/sluice-mesh/sluice/controlplane/api/net"
	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
)

// Kinds of tap events, the first word of a line.
const (
	tapRequest  = "req"
	tapResponse = "rsp"
	tapEnd      = "end"
)

// tapEventJSON is one line of `meshctl tap -o json`: the fields of the
// text line, the ends' labels, and the figures in microseconds and bytes.
// The fields of other kinds of events are left out.
type tapEventJSON struct {
	// Type is "req", "rsp" or "end".
	Type string `json:"type"`
	// ID is the request's stream id within its proxy, "base:stream".
	ID string `json:"id"`
	// Proxy is "in" or "out": which of the proxy's sides saw the request.
	Proxy string `json:"proxy"`
	// Src and Dst are "ip:port" ("[ip]:port" for IPv6), "" if unknown.
	Src string `json:"src"`
	Dst string `json:"dst"`
	// TLS is the hop's TLS status: "true", "no_identity", "disabled";
	// "" if the proxy did not say. Text lines show "-" for "".
	TLS string `json:"tls"`
	// SrcMeta and DstMeta are the ends' labels: tls, client_id and
	// server_id from the proxy, namespace, pod, owner from the tap service.
	SrcMeta map[string]string `json:"src_meta,omitempty"`
	DstMeta map[string]string `json:"dst_meta,omitempty"`

	// Of a request ("req").
	Method    string `json:"method,omitempty"`
	Scheme    string `json:"scheme,omitempty"`
	Authority string `json:"authority,omitempty"`
	Path      string `json:"path,omitempty"`

	// Of a response ("rsp"): its HTTP status and the microseconds from
	// the request's headers to the response's.
	Status    uint32 `json:"status,omitempty"`
	LatencyUs *int64 `json:"latency_us,omitempty"`

	// Of a response's end ("end"): the microseconds from the response's
	// headers to its end, the body's bytes, and how a gRPC or HTTP/2
	// stream ended when it said.
	DurationUs     *int64  `json:"duration_us,omitempty"`
	ResponseBytes  *uint64 `json:"response_bytes,omitempty"`
	GRPCStatus     *uint32 `json:"grpc_status,omitempty"`
	ResetErrorCode *uint32 `json:"reset_error_code,omitempty"`
}

// tapView is the JSON form of ev; ok is false for an event that is not
// an HTTP request's.
func tapView(ev *tappb.TapEvent) (v tapEventJSON, ok bool) {
	v = tapEventJSON{
		Proxy:   "unknown",
		Src:     formatTCPAddress(ev.GetSource()),
		Dst:     formatTCPAddress(ev.GetDestination()),
		SrcMeta: ev.GetSourceMeta().GetLabels(),
		DstMeta: ev.GetDestinationMeta().GetLabels(),
	}
	// The hop's TLS status is known to the side that terminates or
	// originates it: the client's on an inbound request, the server's on
	// an outbound one.
	switch ev.GetProxyDirection() {
	case tappb.TapEvent_INBOUND:
		v.Proxy, v.TLS = "in", v.SrcMeta["tls"]
	case tappb.TapEvent_OUTBOUND:
		v.Proxy, v.TLS = "out", v.DstMeta["tls"]
	}
	h := ev.GetHttp()
	var id *tappb.TapEvent_Http_StreamId
	switch {
	case h.GetRequestInit() != nil:
		r := h.GetRequestInit()
		v.Type, id = tapRequest, r.GetId()
		v.Method, v.Scheme, v.Authority, v.Path = r.GetMethod(), r.GetScheme(), r.GetAuthority(), r.GetPath()
	case h.GetResponseInit() != nil:
		r := h.GetResponseInit()
		v.Type, id = tapResponse, r.GetId()
		v.Status = r.GetHttpStatus()
		v.LatencyUs = new(r.GetSinceRequestInit().AsDuration().Microseconds())
	case h.GetResponseEnd() != nil:
		r := h.GetResponseEnd()
		v.Type, id = tapEnd, r.GetId()
		v.DurationUs = new(r.GetSinceResponseInit().AsDuration().Microseconds())
		v.ResponseBytes = new(r.GetResponseBytes())
		switch end := r.GetEos().GetEnd().(type) {
		case *tappb.Eos_GrpcStatusCode:
			v.GRPCStatus = new(end.GrpcStatusCode)
		case *tappb.Eos_ResetErrorCode:
			v.ResetErrorCode = new(end.ResetErrorCode)
		}
	default:
		return v, false
	}
	v.ID = fmt.Sprintf("%d:%d", id.GetBase(), id.GetStream())
	return v, true
}

// tapLine formats ev as a line of `meshctl tap`, without the newline:
//
//	req id=0:1 proxy=in src=10.0.0.1:4000 dst=10.0.0.2:80 tls=true :method=GET :authority=web :path=/
//	rsp id=0:1 proxy=in src=… dst=… tls=true :status=200 latency=1250µs
//	end id=0:1 proxy=in src=… dst=… tls=true duration=80µs response-length=12B
//
// An end adds grpc-status=<code name> or reset-error=<HTTP/2 error code>
// when the stream said how it ended. ok is false for an event that is not
// an HTTP request's.
func tapLine(ev *tappb.TapEvent) (line string, ok bool) {
	v, ok := tapView(ev)
	if !ok {
		return "", false
	}
	line = fmt.Sprintf("%s id=%s proxy=%s src=%s dst=%s tls=%s", v.Type, v.ID, v.Proxy, orNone(v.Src), orNone(v.Dst), orNone(v.TLS))
	switch v.Type {
	case tapRequest:
		line += fmt.Sprintf(" :method=%s :authority=%s :path=%s", v.Method, v.Authority, v.Path)
	case tapResponse:
		line += fmt.Sprintf(" :status=%d latency=%dµs", v.Status, *v.LatencyUs)
	case tapEnd:
		line += fmt.Sprintf(" duration=%dµs response-length=%dB", *v.DurationUs, *v.ResponseBytes)
		if v.GRPCStatus != nil {
			line += " grpc-status=" + codes.Code(*v.GRPCStatus).String()
		}
		if v.ResetErrorCode != nil {
			line += " reset-error=" + http2.ErrCode(*v.ResetErrorCode).String()
		}
	}
	return line, true
}

// renderTapEvent writes ev as one line of output (text or json); nothing
// for an event that is not an HTTP request's.
func renderTapEvent(w io.Writer, ev *tappb.TapEvent, output string) error {
	var b []byte
	if output == outputJSON {
		v, ok := tapView(ev)
		if !ok {
			return nil
		}
		var err error
		if b, err = json.Marshal(v); err != nil {
			return fmt.Errorf("encode tap event: %w", err)
		}
	} else {
		line, ok := tapLine(ev)
		if !ok {
			return nil
		}
		b = []byte(line)
	}
	_, err := w.Write(append(b, '\n'))
	return err
}

// formatTCPAddress is a as "ip:port" ("[ip]:port" for IPv6), an
// IPv4-mapped address as IPv4; "" when it has no valid IP.
func formatTCPAddress(a *apinet.TcpAddress) string {
	ip, ok := netip.AddrFromSlice(a.GetIp())
	if !ok {
		return ""
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(a.GetPort())).String()
}
