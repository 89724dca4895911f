package proxytest

import (
	"strings"
	"testing"
)

const exposition = `# HELP request_total Total count of HTTP requests.
# TYPE request_total counter
request_total{authority="web:8080",direction="outbound",dst_service="web",target_addr="10.0.0.2:8080"} 3
request_total{authority="web:8080",direction="inbound",target_addr="10.0.0.2:8080"} 2
# HELP response_latency_ms Elapsed times.
# TYPE response_latency_ms histogram
response_latency_ms_bucket{direction="outbound",status_code="200",le="1"} 1
response_latency_ms_bucket{direction="outbound",status_code="200",le="50"} 3
response_latency_ms_bucket{direction="outbound",status_code="200",le="+Inf"} 4
response_latency_ms_sum{direction="outbound",status_code="200"} 120.5
response_latency_ms_count{direction="outbound",status_code="200"} 4
# TYPE tcp_open_connections gauge
tcp_open_connections{direction="inbound",peer="src"} 1
tcp_open_connections{direction="inbound",peer="dst",error=""} 2
`

func TestMetrics(t *testing.T) {
	m, err := ParseMetrics(strings.NewReader(exposition))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		match Labels
		n     int
		sum   float64
	}{
		{"request_total", nil, 2, 5},
		{"request_total", Labels{"direction": "outbound"}, 1, 3},
		{"request_total", Labels{"dst_service": "web"}, 1, 3},
		{"request_total", Labels{"dst_service": Absent}, 1, 2},
		{"request_total", Labels{"direction": "sideways"}, 0, 0},
		{"response_latency_ms_bucket", Labels{"le": "50"}, 1, 3},
		{"response_latency_ms_bucket", Labels{"le": "+Inf"}, 1, 4},
		{"response_latency_ms_bucket", Labels{"status_code": "200"}, 3, 8},
		{"response_latency_ms_count", nil, 1, 4},
		{"response_latency_ms_sum", nil, 1, 120.5},
		{"response_latency_ms", nil, 0, 0},
		{"tcp_open_connections", Labels{"peer": "dst", "error": Absent}, 1, 2},
		{"tcp_open_connections", nil, 2, 3},
		{"nope", nil, 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name+tc.match.String(), func(t *testing.T) {
			if got := m.Samples(tc.name, tc.match); len(got) != tc.n {
				t.Errorf("%d samples, want %d: %v", len(got), tc.n, got)
			}
			if got := m.Sum(tc.name, tc.match); got != tc.sum {
				t.Errorf("sum %g, want %g", got, tc.sum)
			}
		})
	}
	if f := m.Format("request_total", Labels{"direction": "inbound"}); f != `request_total{authority="web:8080",direction="inbound",target_addr="10.0.0.2:8080"} 2`+"\n" {
		t.Errorf("Format: %q", f)
	}
	if _, err := ParseMetrics(strings.NewReader("not metrics {")); err == nil {
		t.Error("garbage parsed")
	}
}

func TestLines(t *testing.T) {
	type r struct{ A int }
	got := Lines[r](t, []byte("{\"A\":1}\n{\"A\":2}\n"))
	if len(got) != 2 || got[1].A != 2 {
		t.Errorf("got %v", got)
	}
	if one := Line[r](t, []byte(`{"A":7}`)); one.A != 7 {
		t.Errorf("got %v", one)
	}
}
