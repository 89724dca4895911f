package mesh

import (
	"fmt"
	"strings"
	"time"

	"github.com/sluice-mesh/sluice/test/bench/benchkit"
)

// Handshakes is the measured cost of the proxy's mutual-TLS handshake.
type Handshakes struct {
	// Runs are one client at a time, then parallel clients.
	Runs []HandshakeRun
}

// HandshakeRun is one closed loop of handshakes.
type HandshakeRun struct {
	Clients            int
	Handshakes, Failed int64
	Wall               time.Duration
	// CPU is the process's CPU time, both sides of every handshake.
	CPU time.Duration
}

// PerSecond is the rate of completed handshakes.
func (r HandshakeRun) PerSecond() float64 {
	if r.Wall <= 0 {
		return 0
	}
	return float64(r.Handshakes) / r.Wall.Seconds()
}

// CPUPerHandshake is the CPU time of one handshake, client and server
// side together.
func (r HandshakeRun) CPUPerHandshake() time.Duration {
	if r.Handshakes <= 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Handshakes)
}

// ProxiesCPUPerReq is the CPU time of both proxies per request, µs.
var ProxiesCPUPerReq Figure = func(r Run) float64 {
	if r.Res.Requests <= 0 {
		return 0
	}
	return float64((r.ClientCPU + r.ServerCPU).Microseconds()) / float64(r.Res.Requests)
}

// ProxiesCPUPerGB is the CPU time of both proxies per GB of a bulk run, s.
var ProxiesCPUPerGB Figure = func(r Run) float64 { return perGB(r.ClientCPU+r.ServerCPU, r.Res.Bytes) }

// mtlsCost writes the section on the cost of mutual TLS: CaseMTLS against
// CaseSKMsg, which differ only in it, round by round, and the handshakes.
func (r *Report) mtlsCost(sb *strings.Builder) {
	plain, tlsCase := find(r.Cases, CaseSKMsg), find(r.Cases, CaseMTLS)
	if plain == nil || tlsCase == nil {
		return
	}
	sb.WriteString("\n## Cost of mutual TLS\n\n")
	fmt.Fprintf(sb, "\"%s\" is \"%s\" with mutual TLS 1.3 between the two proxies: identities from Sluice's identity service "+
		"(ECDSA P-256), the server's identity checked by the client proxy, the client's certificate by the server proxy. "+
		"\"mTLS − plaintext\" subtracts the plaintext case's figure of the same round; the proxies keep their TLS connections, "+
		"so a steady load pays for encryption, not for handshakes.\n\n", CaseMTLS, CaseSKMsg)
	sb.WriteString("| workload | p50 mTLS − plaintext (µs) | p99 mTLS − plaintext (µs) | proxies' CPU µs / request: plaintext | mTLS | mTLS − plaintext |\n")
	sb.WriteString("|---|---:|---:|---:|---:|---:|\n")
	for _, w := range r.Config.Workloads() {
		pr, tr := plain.Runs[w.Key], tlsCase.Runs[w.Key]
		switch w.Kind {
		case FixedRate:
			fmt.Fprintf(sb, "| %s | %s | %s | %s | %s | %s |\n", w.Title,
				benchkit.Added(tr, pr, P50).Format(0), benchkit.Added(tr, pr, P99).Format(0),
				benchkit.Over(pr, ProxiesCPUPerReq).Format(1), benchkit.Over(tr, ProxiesCPUPerReq).Format(1), benchkit.Added(tr, pr, ProxiesCPUPerReq).Format(1))
		}
	}
	sb.WriteString("\n| throughput | plaintext | mTLS | mTLS / plaintext | proxies' CPU: plaintext | mTLS |\n|---|---:|---:|---:|---:|---:|\n")
	for _, w := range r.Config.Workloads() {
		pr, tr := plain.Runs[w.Key], tlsCase.Runs[w.Key]
		switch w.Kind {
		case MaxRate:
			fmt.Fprintf(sb, "| %s (req/s; CPU µs / request) | %s | %s | %s | %s | %s |\n", w.Title, benchkit.Over(pr, RPS).Format(0), benchkit.Over(tr, RPS).Format(0),
				benchkit.Ratio(tr, pr, RPS).Format(2), benchkit.Over(pr, ProxiesCPUPerReq).Format(1), benchkit.Over(tr, ProxiesCPUPerReq).Format(1))
		case Bulk:
			fmt.Fprintf(sb, "| %s (MB/s; CPU s / GB) | %s | %s | %s | %s | %s |\n", w.Title, benchkit.Over(pr, MBps).Format(0), benchkit.Over(tr, MBps).Format(0),
				benchkit.Ratio(tr, pr, MBps).Format(2), benchkit.Over(pr, ProxiesCPUPerGB).Format(2), benchkit.Over(tr, ProxiesCPUPerGB).Format(2))
		}
	}
	if r.Handshakes == nil {
		return
	}
	sb.WriteString("\n**Handshakes.** Complete mutual-TLS handshakes with the proxy's own code (`proxy/mtls`: `Connect` on one side, " +
		"`DetectTLS` and `Accept` on the other, both certificates checked against the trust anchor and the identities) over loopback TCP, " +
		"a new connection each, in the benchmark process before anything else starts; CPU is the process's user and system time, both sides of each handshake.\n\n")
	sb.WriteString("| clients | handshakes/s | mean handshake (µs) | CPU per handshake, both sides (µs) | handshakes/s per core | failed |\n|---:|---:|---:|---:|---:|---:|\n")
	for _, h := range r.Handshakes.Runs {
		mean := 0.0
		if h.Handshakes > 0 {
			mean = float64(h.Wall.Microseconds()) * float64(h.Clients) / float64(h.Handshakes)
		}
		perCore := 0.0
		if c := h.CPUPerHandshake(); c > 0 {
			perCore = float64(time.Second) / float64(c)
		}
		fmt.Fprintf(sb, "| %d | %.0f | %.0f | %.0f | %.0f | %d |\n", h.Clients, h.PerSecond(), mean, float64(h.CPUPerHandshake().Nanoseconds())/1e3, perCore, h.Failed)
	}
}
