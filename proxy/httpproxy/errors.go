package httpproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"

	"github.com/sluice-mesh/sluice/proxy/mtls"
)

// Error is an answer the proxy gives instead of an upstream response.
type Error struct {
	Status int    // 502, 503 or 504 (or 4xx for the client's own faults)
	Reason string // the sluice-proxy-error header's value
	Label  string // the metrics' error label
	Err    error  // the cause, if any
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %v", e.Reason, e.Err)
	}
	return e.Reason
}

func (e *Error) Unwrap() error { return e.Err }

// GRPCCode is the gRPC status that stands for e: UNAVAILABLE (14) for 502
// and 503, DEADLINE_EXCEEDED (4) for 504, INTERNAL (13) otherwise.
func (e *Error) GRPCCode() int {
	switch e.Status {
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		return 14
	case http.StatusGatewayTimeout:
		return 4
	}
	return 13
}

func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Status: http.StatusBadGateway, Reason: "proxy error", Label: "unexpected", Err: err}
}

// upstreamError classifies a failed round trip.
func upstreamError(ctx context.Context, err error, x *exchange) *Error {
	addr := ""
	if x != nil {
		addr = x.t.Addr.String()
	}
	var op *net.OpError
	var te *mtls.Error
	switch {
	case ctx.Err() != nil:
		return &Error{Status: 499, Reason: "client canceled", Label: "canceled", Err: err}
	case errors.As(err, &te) && te.Reason == mtls.ReasonTimeout:
		return &Error{Status: http.StatusGatewayTimeout, Reason: te.Error() + " (" + addr + ")", Label: "tls_timeout", Err: err}
	case errors.As(err, &te):
		// The certificate problem itself, as "tls: server identity
		// mismatch: want X, got Y".
		return &Error{Status: http.StatusBadGateway, Reason: te.Error() + " (" + addr + ")", Label: "tls_" + te.Reason, Err: err}
	case errors.As(err, &op) && op.Op == "remote error":
		// The peer proxy refused the mutual-TLS handshake after ours
		// completed (TLS 1.3 clients learn it at their first read), as it
		// does for a certificate it does not trust.
		return &Error{Status: http.StatusBadGateway, Reason: "tls: " + addr + " refused the connection: " + op.Err.Error(),
			Label: "tls_" + mtls.ReasonPeerRefused, Err: err}
	case errors.Is(err, syscall.ECONNREFUSED):
		return &Error{Status: http.StatusBadGateway, Reason: "connection refused by " + addr, Label: "connect_refused", Err: err}
	case errors.As(err, &op) && op.Op == "dial" && op.Timeout(), errors.Is(err, context.DeadlineExceeded):
		return &Error{Status: http.StatusGatewayTimeout, Reason: "connect to " + addr + " timed out", Label: "connect_timeout", Err: err}
	case errors.As(err, &op) && op.Op == "dial":
		return &Error{Status: http.StatusBadGateway, Reason: "connect to " + addr + " failed", Label: "connect_failed", Err: err}
	case isTimeout(err):
		return &Error{Status: http.StatusGatewayTimeout, Reason: "response from " + addr + " timed out", Label: "response_timeout", Err: err}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return &Error{Status: http.StatusBadGateway, Reason: "connection to " + addr + " closed before a response", Label: "upstream_closed", Err: err}
	}
	return &Error{Status: http.StatusBadGateway, Reason: "request to " + addr + " failed", Label: "upstream_error", Err: err}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
