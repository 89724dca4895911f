package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// maxBody bounds the answers the Client reads.
const maxBody = 32 << 20

// Client calls the metrics API. It is safe for concurrent use.
type Client struct {
	base *url.URL
	hc   *http.Client
}

// NewClient returns a client of the metrics API at baseURL, the URL the
// API's paths are appended to: "http://sluice-metrics-api.sluice.svc:8085",
// or, through the Kubernetes API server's service proxy,
// "https://<apiserver>/api/v1/namespaces/sluice/services/sluice-metrics-api:8085/proxy"
// with an hc that authenticates to the API server. nil hc means
// http.DefaultClient.
func NewClient(baseURL string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("parse metrics API URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("metrics API URL %q is not an http(s) URL with a host", baseURL)
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{base: u, hc: hc}, nil
}

// Stat calls GET /api/v1/stat. An error answer is returned as an *Error.
func (c *Client) Stat(ctx context.Context, r StatRequest) (*StatResponse, error) {
	var out StatResponse
	if err := c.get(ctx, StatPath, r.Values(), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Edges calls GET /api/v1/edges. An error answer is returned as an *Error.
func (c *Client) Edges(ctx context.Context, r EdgesRequest) (*EdgesResponse, error) {
	var out EdgesResponse
	if err := c.get(ctx, EdgesPath, r.Values(), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// TopRoutes calls GET /api/v1/top-routes. An error answer is returned as
// an *Error.
func (c *Client) TopRoutes(ctx context.Context, r TopRoutesRequest) (*TopRoutesResponse, error) {
	var out TopRoutesResponse
	if err := c.get(ctx, TopRoutesPath, r.Values(), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *Client) get(ctx context.Context, path string, q url.Values, into any) error {
	u := *c.base
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	u.RawPath = ""
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("make request for %s: %w", path, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("call metrics API: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("read metrics API answer from %s: %w", u.Redacted(), err)
	}
	if resp.StatusCode != http.StatusOK {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(body, e) != nil || e.Message == "" {
			text := strings.TrimSpace(string(body))
			if len(text) > 512 {
				text = text[:512] + "..."
			}
			e.Message = fmt.Sprintf("%s from %s: %s", resp.Status, u.Redacted(), text)
		}
		return e
	}
	if err := json.Unmarshal(body, into); err != nil {
		return fmt.Errorf("decode metrics API answer from %s: %w", u.Redacted(), err)
	}
	return nil
}
