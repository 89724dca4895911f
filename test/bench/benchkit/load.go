package benchkit

// LoadResult is the load generator's JSON line (test/cmd/loadgen Result).
// Latencies are in nanoseconds.
type LoadResult struct {
	Requests     int64   `json:"requests"`
	Seconds      float64 `json:"seconds"`
	RPS          float64 `json:"rps"`
	P50Ns        int64   `json:"p50_ns"`
	P90Ns        int64   `json:"p90_ns"`
	P99Ns        int64   `json:"p99_ns"`
	P999Ns       int64   `json:"p999_ns"`
	MaxNs        int64   `json:"max_ns"`
	MeanNs       int64   `json:"mean_ns"`
	SendLagP50Ns int64   `json:"send_lag_p50_ns"`
	SendLagP99Ns int64   `json:"send_lag_p99_ns"`
	Errors       int64   `json:"errors"`
	FirstError   string  `json:"first_error"`
	Reconnects   int64   `json:"reconnects"`
	// Bulk TCP: payload bytes over all connections and MB (10^6 bytes) per
	// second.
	Bytes int64   `json:"bytes"`
	MBps  float64 `json:"mb_per_s"`
}
