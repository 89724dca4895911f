package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/test/proxytest/payload"
)

// httpOptions are the flags of `testapp http`.
type httpOptions struct {
	url, host, method string
	body              string
	uploadBytes       int64
	seed              uint64
	expectContinue    bool
	requests          int
	h2c               bool
	headers           []string
	timeout           time.Duration
	maxBody           int
}

// HTTPResult is the line printed per HTTP request.
type HTTPResult struct {
	N              int                 `json:"n"`
	Status         int                 `json:"status"`
	Proto          string              `json:"proto,omitempty"`
	Bytes          int64               `json:"bytes"`  // response body
	SHA256         string              `json:"sha256"` // of the response body
	Body           string              `json:"body,omitempty"`
	Headers        map[string][]string `json:"headers,omitempty"`
	Trailers       map[string][]string `json:"trailers,omitempty"`
	Sent           int64               `json:"sent"` // request body (what was to be sent)
	SentSHA256     string              `json:"sent_sha256,omitempty"`
	Got100Continue bool                `json:"got_100_continue"`
	Reused         bool                `json:"reused"` // the request went on a connection used before
	Conns          int64               `json:"conns"`  // connections dialled so far
	Err            string              `json:"err,omitempty"`
}

func newCmdHTTP() *cobra.Command {
	o := &httpOptions{}
	cmd := &cobra.Command{
		Use:   "http",
		Short: "Send HTTP requests with Go's net/http client and print status, size and hash of each answer",
		Long: `http sends --keepalive-requests requests one after the other, on one
keep-alive connection when the server allows, and prints one JSON line per
request: status, protocol, the answer's size, SHA-256, headers and trailers,
and how many connections were dialled so far.

--upload-bytes N sends a chunked body of N deterministic bytes (--seed), so
the server can check it by hash; --expect-continue asks for 100 Continue first
and reports whether it came; --h2c speaks HTTP/2 with prior knowledge.`,
		Args: cobra.NoArgs,
		RunE: runE(o.validate, o.run),
	}
	f := cmd.Flags()
	f.StringVar(&o.url, "url", "", "request URL (required)")
	f.StringVar(&o.host, "host", "", "Host header (default: from --url)")
	f.StringVarP(&o.method, "method", "X", "", "method (default GET, or POST with a body)")
	f.StringVar(&o.body, "body", "", "a literal request body (sent with Content-Length)")
	f.Int64Var(&o.uploadBytes, "upload-bytes", -1, "send a chunked body of this many deterministic bytes")
	f.Uint64Var(&o.seed, "seed", 1, "seed of the uploaded bytes")
	f.BoolVar(&o.expectContinue, "expect-continue", false, "send Expect: 100-continue and wait for it")
	f.IntVar(&o.requests, "keepalive-requests", 1, "requests to send, one after the other")
	f.BoolVar(&o.h2c, "h2c", false, "HTTP/2 with prior knowledge instead of HTTP/1.1")
	f.StringArrayVarP(&o.headers, "header", "H", nil, `extra request header "Name: value" (repeatable)`)
	f.DurationVar(&o.timeout, "timeout", 120*time.Second, "give up on a request after this long")
	f.IntVar(&o.maxBody, "max-body", 4096, "bodies up to this size are printed as text")
	return cmd
}

func (o *httpOptions) validate() error {
	switch {
	case o.url == "":
		return errors.New("validate flags: --url is required")
	case o.requests < 1:
		return errors.New("validate flags: --keepalive-requests must be positive")
	case o.body != "" && o.uploadBytes >= 0:
		return errors.New("validate flags: --body and --upload-bytes exclude each other")
	}
	for _, h := range o.headers {
		if name, _, ok := strings.Cut(h, ":"); !ok || strings.TrimSpace(name) == "" {
			return fmt.Errorf("validate flags: header %q is not \"Name: value\"", h)
		}
	}
	return nil
}

func (o *httpOptions) run(ctx context.Context, out *jsonOut) error {
	var dials atomic.Int64
	d := dialer(10 * time.Second)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return d.DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost:   1,
		ExpectContinueTimeout: 30 * time.Second, // wait for the 100 rather than send the body blind
		DisableCompression:    true,
	}
	var protos http.Protocols
	if o.h2c {
		protos.SetUnencryptedHTTP2(true)
	} else {
		protos.SetHTTP1(true)
	}
	tr.Protocols = &protos
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for i := range o.requests {
		res := o.one(ctx, client, i)
		res.Conns = dials.Load()
		out.line(res)
	}
	return nil
}

// one sends request n and reads its whole answer.
func (o *httpOptions) one(ctx context.Context, client *http.Client, n int) HTTPResult {
	res := HTTPResult{N: n}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn:        func(ci httptrace.GotConnInfo) { res.Reused = ci.Reused },
		Got100Continue: func() { res.Got100Continue = true },
	})
	method := o.method
	var body io.Reader
	switch {
	case o.uploadBytes >= 0:
		// A reader of unknown length: net/http sends it chunked.
		body = io.NopCloser(payload.NewReader(o.seed, o.uploadBytes))
		res.Sent, res.SentSHA256 = o.uploadBytes, payload.SHA256(o.seed, o.uploadBytes)
	case o.body != "":
		body = strings.NewReader(o.body)
		sum := sha256.Sum256([]byte(o.body))
		res.Sent, res.SentSHA256 = int64(len(o.body)), hex.EncodeToString(sum[:])
	}
	if method == "" {
		method = http.MethodGet
		if body != nil {
			method = http.MethodPost
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, o.url, body)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	if o.host != "" {
		req.Host = o.host
	}
	for _, h := range o.headers {
		name, value, _ := strings.Cut(h, ":")
		req.Header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	if o.expectContinue {
		req.Header.Set("Expect", "100-continue")
	}
	resp, err := client.Do(req)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer resp.Body.Close()
	res.Status, res.Proto, res.Headers = resp.StatusCode, resp.Proto, resp.Header
	h := sha256.New()
	var text strings.Builder
	res.Bytes, err = io.CopyBuffer(io.MultiWriter(h, &limitedWriter{w: &text, n: o.maxBody}), resp.Body, make([]byte, copyBufSize))
	res.SHA256 = hex.EncodeToString(h.Sum(nil))
	if res.Bytes <= int64(o.maxBody) {
		res.Body = text.String()
	}
	res.Trailers = resp.Trailer
	if err != nil {
		res.Err = fmt.Sprintf("read body: %v", err)
	}
	return res
}

// limitedWriter keeps the first n bytes written to it and drops the rest.
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		_, _ = l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
