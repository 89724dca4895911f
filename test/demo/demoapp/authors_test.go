package demoapp

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
)

// startAuthors runs the authors role with the failure rate and returns its
// base URL.
func startAuthors(t *testing.T, rate float64) string {
	t.Helper()
	addr, _ := serve(t, "authors", func(ctx context.Context, l net.Listener) error {
		return RunAuthors(ctx, l, AuthorsConfig{FailureRate: rate})
	})
	return "http://" + addr
}

// get sends GET url and returns the status and body.
func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

func TestAuthorsFailureRate(t *testing.T) {
	const requests = 2000
	tests := []struct {
		rate             float64
		minFail, maxFail int
	}{
		{rate: 0, minFail: 0, maxFail: 0},
		{rate: 0.5, minFail: requests * 40 / 100, maxFail: requests * 60 / 100},
		{rate: 1, minFail: requests, maxFail: requests},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("rate=%v", tt.rate), func(t *testing.T) {
			base := startAuthors(t, tt.rate)
			c := newHTTPClient(hangGuard, 1)
			defer c.CloseIdleConnections()
			failed := 0
			for range requests {
				code, body := get(t, c, base+"/authors/2")
				switch code {
				case http.StatusInternalServerError:
					failed++
				case http.StatusOK:
					var a Author
					if err := json.Unmarshal([]byte(body), &a); err != nil || a != catalogAuthors()["2"] {
						t.Fatalf("GET /authors/2 = %q (%v), want %+v", body, err, catalogAuthors()["2"])
					}
				default:
					t.Fatalf("GET /authors/2: status %d (%q), want 200 or 500", code, body)
				}
			}
			if failed < tt.minFail || failed > tt.maxFail {
				t.Errorf("rate %v: %d of %d requests failed, want %d to %d", tt.rate, failed, requests, tt.minFail, tt.maxFail)
			}
			// Readiness probes never fail.
			if code, _ := get(t, c, base+"/healthz"); code != http.StatusOK {
				t.Errorf("GET /healthz: status %d, want 200", code)
			}
		})
	}
}

func TestAuthorsNotFound(t *testing.T) {
	base := startAuthors(t, 0)
	c := newHTTPClient(hangGuard, 1)
	defer c.CloseIdleConnections()
	if code, body := get(t, c, base+"/authors/99"); code != http.StatusNotFound {
		t.Errorf("GET /authors/99: status %d (%q), want 404", code, body)
	}
}
