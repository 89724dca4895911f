package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// DefaultSocket is where the agent serves its admin API.
const DefaultSocket = "/run/sluice/agent.sock"

// ErrUnreachable wraps every error of a call that did not reach the agent.
var ErrUnreachable = errors.New("agent unreachable")

// Client calls the agent's admin API over its unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the agent listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// Enroll enrolls a pod and returns its enrollment.
func (c *Client) Enroll(ctx context.Context, req EnrollRequest) (Enrollment, error) {
	var out Enrollment
	err := c.do(ctx, http.MethodPost, "/v1/enrollments", req, &out)
	return out, err
}

// Unenroll removes the enrollment of the pod whose netns cookie is given.
func (c *Client) Unenroll(ctx context.Context, cookie uint64) error {
	return c.do(ctx, http.MethodDelete, fmt.Sprintf("/v1/enrollments/%d", cookie), nil, nil)
}

// List returns every enrollment.
func (c *Client) List(ctx context.Context) ([]Enrollment, error) {
	var out []Enrollment
	err := c.do(ctx, http.MethodGet, "/v1/enrollments", nil, &out)
	return out, err
}

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var out Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &out)
	return out, err
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, body)
	if err != nil {
		return fmt.Errorf("build %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w at %s: %w", ErrUnreachable, c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return &StatusError{Code: resp.StatusCode, Message: e.Error}
		}
		return &StatusError{Code: resp.StatusCode, Message: string(bytes.TrimSpace(data))}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode %s %s: %w", method, path, err)
	}
	return nil
}

// StatusError is an error answer of the agent.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string { return fmt.Sprintf("agent: %s (HTTP %d)", e.Message, e.Code) }
