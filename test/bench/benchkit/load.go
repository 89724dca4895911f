package benchkit

// LoadResult is the JSON line of a run of test/cmd/loadgen, which writes
// it and the benchmarks decode it. Latencies are in nanoseconds.
type LoadResult struct {
	Mode  string  `json:"mode"` // http, grpc or tcp
	Load  string  `json:"load"` // fixed-rate, max or bulk (tcp)
	To    string  `json:"to"`
	Conns int     `json:"conns"`
	Rate  float64 `json:"rate,omitempty"` // scheduled requests per second
	// Requests that succeeded in the measured phase, and the rate they
	// completed at. tcp: connections whose whole payload the server
	// confirmed, over the time from the first write to the last
	// confirmation.
	Requests int64   `json:"requests"`
	Seconds  float64 `json:"seconds"`
	RPS      float64 `json:"rps"`
	// Latency of the measured requests: from the scheduled send time at a
	// fixed rate, from the actual send in a closed loop; with --new-conn it
	// includes the connect. tcp: each connection's transfer time, from its
	// first write to the server's count.
	P50Ns  int64 `json:"p50_ns"`
	P90Ns  int64 `json:"p90_ns"`
	P99Ns  int64 `json:"p99_ns"`
	P999Ns int64 `json:"p999_ns"`
	MaxNs  int64 `json:"max_ns"`
	MeanNs int64 `json:"mean_ns"`
	// Fixed rate: how late sends started against their schedule (the load
	// generator's own timing quality).
	SendLagP50Ns int64 `json:"send_lag_p50_ns,omitempty"`
	SendLagP99Ns int64 `json:"send_lag_p99_ns,omitempty"`
	// Failed requests (tcp: connections), warm-up included, and the first
	// failure.
	Errors     int64  `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
	// HTTP: keep-alive connections re-opened because the server closed one
	// (never counted with --new-conn, where every request has its own).
	Reconnects int64 `json:"reconnects"`
	// tcp: payload bytes over all confirmed connections, and MB (10^6
	// bytes) per second over Seconds.
	Bytes int64   `json:"bytes,omitempty"`
	MBps  float64 `json:"mb_per_s,omitempty"`
}
