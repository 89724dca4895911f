// Package detect tells, from a connection's first bytes, whether it carries
// HTTP/2 (the client connection preface), HTTP/1 (a request line), TLS (a
// handshake record, as a ClientHello starts) or anything else, which the
// proxy then carries as opaque TCP; and Conn replays the bytes that
// detection read.
package detect

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Protocol is what a connection was detected to carry.
type Protocol uint8

// The protocols Classify tells apart.
const (
	// Opaque is anything that is neither HTTP/1 nor HTTP/2: carried as TCP.
	Opaque Protocol = iota
	// HTTP1 is HTTP/1.0 or HTTP/1.1.
	HTTP1
	// HTTP2 is HTTP/2 with prior knowledge (h2c): the client preface first.
	HTTP2
	// TLS is a TLS handshake record (as a ClientHello starts): the proxy
	// terminates it when it is for the proxy's identity and otherwise
	// carries it as opaque TCP.
	TLS
)

// String returns "opaque", "http/1", "h2" or "tls".
func (p Protocol) String() string {
	switch p {
	case Opaque:
		return "opaque"
	case HTTP1:
		return "http/1"
	case HTTP2:
		return "h2"
	case TLS:
		return "tls"
	}
	return "Protocol(" + strconv.Itoa(int(p)) + ")"
}

// MaxPeek is the most bytes detection reads: a request line must end within
// them.
const MaxPeek = 1024

// h2Preface is the HTTP/2 client connection preface (RFC 9113, section 3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Classify decides from the first bytes b of a connection: TLS if b starts
// with a TLS handshake record header (content type 22, then a record version
// 3.0 to 3.4: 0x16 0x03 0x00-0x04); HTTP2 if b starts
// with the full client preface "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"; HTTP1 if b
// starts with a well-formed HTTP/1.x request line (RFC 9112 section 3: a token
// method, SP, a request-target of visible ASCII, SP, "HTTP/1.0" or "HTTP/1.1",
// CRLF) within MaxPeek bytes; Opaque when b cannot become either. final is
// false when b is a proper prefix of a possible TLS, HTTP/1 or HTTP/2 start that
// can still complete within MaxPeek bytes: read more and ask again. The protocol
// is Opaque whenever final is false. Only b[:MaxPeek] is looked at, so final
// is true once len(b) >= MaxPeek, and a final answer for b is the answer for
// every b+more.
func Classify(b []byte) (p Protocol, final bool) {
	if len(b) > MaxPeek {
		b = b[:MaxPeek]
	}
	switch tls, final := classifyTLS(b); {
	case tls:
		return TLS, true
	case !final:
		return Opaque, false
	}
	h2 := false // b is a proper prefix of the preface
	if len(b) >= len(h2Preface) {
		if string(b[:len(h2Preface)]) == h2Preface {
			return HTTP2, true
		}
	} else {
		h2 = string(b) == h2Preface[:len(b)]
	}
	complete, need := requestLine(b)
	if complete {
		return HTTP1, true
	}
	if h2 || need > 0 && len(b)+need <= MaxPeek {
		return Opaque, false
	}
	return Opaque, true
}

// classifyTLS tells whether b starts with a TLS handshake record header:
// tls when it does, final false when b is a proper prefix of one.
func classifyTLS(b []byte) (tls, final bool) {
	switch {
	case len(b) == 0:
		return false, true // nothing yet: the other classifiers decide
	case b[0] != 0x16:
		return false, true
	case len(b) == 1:
		return false, false
	case b[1] != 0x03:
		return false, true
	case len(b) == 2:
		return false, false
	}
	return b[2] <= 0x04, true
}

// requestLine checks whether b starts with an HTTP/1.x request line. If not,
// need is the least number of bytes that must follow b to complete one, or 0
// when no bytes can.
func requestLine(b []byte) (complete bool, need int) {
	const version = "HTTP/1.x\r\n"
	i := 0
	for i < len(b) && isTchar(b[i]) {
		i++
	}
	switch {
	case i == len(b):
		return false, len(" / ") + len(version) // in the method (or nothing yet)
	case i == 0 || b[i] != ' ':
		return false, 0
	}
	i++
	start := i
	for i < len(b) && isVchar(b[i]) {
		i++
	}
	switch {
	case i == len(b) && i == start:
		return false, len("/ ") + len(version)
	case i == len(b):
		return false, len(" ") + len(version)
	case i == start || b[i] != ' ':
		return false, 0
	}
	i++
	for j := range len(version) {
		if i+j == len(b) {
			return false, len(version) - j
		}
		c := b[i+j]
		if j == len("HTTP/1.") {
			if c != '0' && c != '1' {
				return false, 0
			}
		} else if c != version[j] {
			return false, 0
		}
	}
	return true, 0
}

// isTchar reports whether c may appear in a token (RFC 9110, section 5.6.2).
func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return c != 0 && strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// isVchar reports whether c is visible ASCII (VCHAR).
func isVchar(c byte) bool { return 0x21 <= c && c <= 0x7e }

// Detect reads from c until Classify is final, MaxPeek bytes were read, c
// reaches EOF, or timeout elapses, and returns the protocol and a Conn that
// replays what was read. A timeout, or EOF after some bytes, gives Opaque
// with a nil error: a client that waits for the server to speak first is
// carried as TCP. EOF or another read error before any byte, and errors other
// than EOF or the timeout after some, give Opaque and the error (wrapped); the
// caller then closes the connection. timeout <= 0 means no time limit. Detect
// clears c's read deadline before returning, so it never blocks past timeout
// and leaves no deadline behind.
func Detect(c net.Conn, timeout time.Duration) (Protocol, *Conn, error) {
	return detect(c, timeout, Classify)
}

// DetectTLS is Detect for a connection that is either TLS or opaque, such as
// one to an opaque port: it reads only until the first bytes tell whether a
// TLS handshake record starts (three bytes, or fewer that cannot start one)
// and answers TLS or Opaque, with Detect's handling of timeouts and errors.
func DetectTLS(c net.Conn, timeout time.Duration) (Protocol, *Conn, error) {
	return detect(c, timeout, func(b []byte) (Protocol, bool) {
		if len(b) == 0 {
			return Opaque, false
		}
		tls, final := classifyTLS(b)
		if tls {
			return TLS, true
		}
		return Opaque, final
	})
}

func detect(c net.Conn, timeout time.Duration, classify func([]byte) (Protocol, bool)) (Protocol, *Conn, error) {
	deadline := time.Time{}
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	if err := c.SetReadDeadline(deadline); err != nil {
		return Opaque, NewConn(c, nil), fmt.Errorf("detect protocol: %w", err)
	}
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, MaxPeek)
	n := 0
	for {
		k, err := c.Read(buf[n:])
		n += k
		if p, final := classify(buf[:n]); final {
			return p, NewConn(c, buf[:n:n]), nil
		}
		if err == nil {
			continue
		}
		dc := NewConn(c, buf[:n:n])
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return Opaque, dc, nil
		case n > 0 && errors.Is(err, io.EOF):
			return Opaque, dc, nil
		}
		return Opaque, dc, fmt.Errorf("detect protocol: %w", err)
	}
}
