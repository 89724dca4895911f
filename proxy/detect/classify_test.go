package detect_test

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/proxy/detect"
)

const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// A TLS 1.3 ClientHello's first bytes: record type 22, version 3.1.
var clientHello = []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}

func TestClassify(t *testing.T) {
	longTarget := "/" + strings.Repeat("a", detect.MaxPeek)
	// A request line of exactly MaxPeek bytes.
	fits := "GET /" + strings.Repeat("b", detect.MaxPeek-len("GET / HTTP/1.1\r\n")) + " HTTP/1.1\r\n"
	for _, tc := range []struct {
		name  string
		in    string
		want  detect.Protocol
		final bool
	}{
		{"GET", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", detect.HTTP1, true},
		{"GET line only", "GET /index.html?q=1 HTTP/1.1\r\n", detect.HTTP1, true},
		{"POST HTTP/1.0", "POST /submit HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc", detect.HTTP1, true},
		{"OPTIONS *", "OPTIONS * HTTP/1.1\r\n", detect.HTTP1, true},
		{"CONNECT authority", "CONNECT example.com:443 HTTP/1.1\r\n", detect.HTTP1, true},
		{"absolute URI", "GET http://example.com:8080/a/b?c#d HTTP/1.1\r\n", detect.HTTP1, true},
		{"lowercase method is a token", "get / HTTP/1.1\r\n", detect.HTTP1, true},
		{"extension method", "M-SEARCH * HTTP/1.1\r\n", detect.HTTP1, true},
		{"line of exactly MaxPeek", fits, detect.HTTP1, true},
		{"h2 preface", preface, detect.HTTP2, true},
		{"h2 preface and frames", preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00", detect.HTTP2, true},

		{"empty", "", detect.Opaque, false},
		{"method prefix", "GE", detect.Opaque, false},
		{"method", "GET", detect.Opaque, false},
		{"method SP", "GET ", detect.Opaque, false},
		{"in target", "GET /ind", detect.Opaque, false},
		{"target SP", "GET / ", detect.Opaque, false},
		{"in version", "GET / HTTP/1.", detect.Opaque, false},
		{"before LF", "GET / HTTP/1.1\r", detect.Opaque, false},
		{"preface start", "PRI * HTTP/2.0\r\n", detect.Opaque, false},
		{"preface almost", preface[:len(preface)-1], detect.Opaque, false},
		{"P", "P", detect.Opaque, false},

		{"TLS ClientHello", string(clientHello), detect.TLS, true},
		{"TLS record header", "\x16\x03\x03", detect.TLS, true},
		{"TLS content type only", "\x16", detect.Opaque, false},
		{"TLS type and major version", "\x16\x03", detect.Opaque, false},
		{"TLS with an unknown minor version", "\x16\x03\x05\x00", detect.Opaque, true},
		{"not a TLS major version", "\x16\x02\x01", detect.Opaque, true},
		{"TLS alert record", "\x15\x03\x03\x00\x02", detect.Opaque, true},
		{"binary", "\x00\x01\x02\x03", detect.Opaque, true},
		{"bare LF", "GET / HTTP/1.1\n", detect.Opaque, true},
		{"HTTP/1.2", "GET / HTTP/1.2\r\n", detect.Opaque, true},
		{"HTTP/2.0 line", "GET / HTTP/2.0\r\n", detect.Opaque, true},
		{"HTTP/0.9", "GET /\r\n", detect.Opaque, true},
		{"lowercase version", "GET / http/1.1\r\n", detect.Opaque, true},
		{"two spaces", "GET  / HTTP/1.1\r\n", detect.Opaque, true},
		{"leading SP", " GET / HTTP/1.1\r\n", detect.Opaque, true},
		{"leading CRLF", "\r\nGET / HTTP/1.1\r\n", detect.Opaque, true},
		{"tab separator", "GET\t/ HTTP/1.1\r\n", detect.Opaque, true},
		{"non-ASCII target", "GET /\xc3\xa9 HTTP/1.1\r\n", detect.Opaque, true},
		{"preface mismatch", "PRI * HTTP/2.0\r\n\r\nXX", detect.Opaque, true},
		{"SSH banner", "SSH-2.0-OpenSSH_9.2\r\n", detect.Opaque, true},
		{"server-first reply", "220 smtp.example.com ESMTP\r\n", detect.Opaque, true},
		{"request line longer than MaxPeek", "GET " + longTarget + " HTTP/1.1\r\n", detect.Opaque, true},
		{"line cut at MaxPeek", "GET " + longTarget, detect.Opaque, true},
		{"method too long to complete", strings.Repeat("G", detect.MaxPeek-5), detect.Opaque, true},
		{"token that can still complete", strings.Repeat("G", detect.MaxPeek-13), detect.Opaque, false},
		{"one byte past fitting", "GET /" + strings.Repeat("b", detect.MaxPeek-len("GET / HTTP/1.1\r\n")+1) + " HTTP/1.1\r\n", detect.Opaque, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, final := detect.Classify([]byte(tc.in))
			if p != tc.want || final != tc.final {
				t.Errorf("Classify(%.40q) = %v, %v; want %v, %v", tc.in, p, final, tc.want, tc.final)
			}
		})
	}
}

func TestProtocolString(t *testing.T) {
	for p, want := range map[detect.Protocol]string{
		detect.Opaque: "opaque", detect.HTTP1: "http/1", detect.HTTP2: "h2", detect.TLS: "tls", 7: "Protocol(7)",
	} {
		if got := p.String(); got != want {
			t.Errorf("Protocol(%d).String() = %q, want %q", p, got, want)
		}
	}
}

// tlsHeaderRE is an independent statement of what Classify calls TLS; a
// TLS 1.2 record header is one of them.
var (
	tlsHeaderRE = regexp.MustCompile("^\x16\x03[\x00-\x04]")
	tlsHeader   = "\x16\x03\x03"
)

// requestLineRE is an independent statement of what Classify calls HTTP/1.
var requestLineRE = regexp.MustCompile("^[!#$%&'*+\\-.^_`|~0-9A-Za-z]+ [\\x21-\\x7e]+ HTTP/1\\.[01]\r\n")

// completions are the shortest suffixes that can complete a proper prefix of
// a request line or of the HTTP/2 preface.
func completions(b []byte) [][]byte {
	var out [][]byte
	for _, s := range []string{" / HTTP/1.1\r\n", "/ HTTP/1.1\r\n", " HTTP/1.1\r\n"} {
		out = append(out, append(bytes.Clone(b), s...))
	}
	for k := range len("HTTP/1.1\r\n") {
		out = append(out, append(bytes.Clone(b), "HTTP/1.1\r\n"[k:]...))
	}
	if len(b) < len(preface) {
		out = append(out, append(bytes.Clone(b), preface[len(b):]...))
	}
	if len(b) < len(tlsHeader) {
		out = append(out, append(bytes.Clone(b), tlsHeader[len(b):]...))
	}
	return out
}

func FuzzClassify(f *testing.F) {
	for _, s := range []string{
		"", "GET / HTTP/1.1\r\n", "POST /x HTTP/1.0\r\n\r\n", "OPTIONS * HTTP/1.1\r\n",
		"CONNECT h:443 HTTP/1.1\r\n", preface, preface[:10], string(clientHello), "GET / HTTP/1.1\n",
		"get http://a/ HTTP/1.1\r\n", "GET /" + strings.Repeat("x", 1100) + " HTTP/1.1\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, final := detect.Classify(b)
		if len(b) >= detect.MaxPeek && !final {
			t.Fatalf("not final with %d bytes", len(b))
		}
		if !final && p != detect.Opaque {
			t.Fatalf("not final but %v", p)
		}
		head := b[:min(len(b), detect.MaxPeek)]
		isH2 := bytes.HasPrefix(head, []byte(preface))
		isH1 := requestLineRE.Match(head)
		isTLS := tlsHeaderRE.Match(head)
		switch {
		case isTLS && (p != detect.TLS || !final):
			t.Fatalf("starts with a TLS record header but Classify = %v, %v", p, final)
		case isH2 && (p != detect.HTTP2 || !final):
			t.Fatalf("starts with the preface but Classify = %v, %v", p, final)
		case isH1 && (p != detect.HTTP1 || !final):
			t.Fatalf("starts with a request line but Classify = %v, %v", p, final)
		case !isH1 && !isH2 && !isTLS && p != detect.Opaque:
			t.Fatalf("neither preface, request line nor TLS record but Classify = %v", p)
		}
		// Consistency: a final answer for a prefix holds for the whole
		// (prefixes longer than MaxPeek all look the same).
		for i := range min(len(b), detect.MaxPeek+1) {
			if q, qf := detect.Classify(b[:i]); qf && q != p {
				t.Fatalf("Classify(b[:%d]) = %v (final) but Classify(b) = %v", i, q, p)
			}
		}
		// Not final means some continuation within MaxPeek is HTTP or TLS.
		if !final {
			ok := false
			for _, c := range completions(b) {
				if q, qf := detect.Classify(c); qf && q != detect.Opaque && len(c) <= detect.MaxPeek {
					ok = true
					break
				}
			}
			if !ok {
				t.Fatalf("not final, but no continuation of %q becomes HTTP", b)
			}
		}
	})
}
