package mesh

import (
	"time"

	"github.com/sluice-mesh/sluice/test/bench/benchkit"
)

// Figure is one value taken from a run.
type Figure func(r Run) float64

// The figures of a run.
var (
	P50  Figure = func(r Run) float64 { return float64(r.Res.P50Ns) / 1e3 }
	P90  Figure = func(r Run) float64 { return float64(r.Res.P90Ns) / 1e3 }
	P99  Figure = func(r Run) float64 { return float64(r.Res.P99Ns) / 1e3 }
	P999 Figure = func(r Run) float64 { return float64(r.Res.P999Ns) / 1e3 }
	RPS  Figure = func(r Run) float64 { return r.Res.RPS }
	MBps Figure = func(r Run) float64 { return r.Res.MBps }
	// ClientCPUPer1k, ServerCPUPer1k and PodsCPUPer1k are CPU seconds
	// per 1000 requests: of each proxy, and of both pods altogether.
	ClientCPUPer1k Figure = func(r Run) float64 { return per1k(r.ClientCPU, r.Res.Requests) }
	ServerCPUPer1k Figure = func(r Run) float64 { return per1k(r.ServerCPU, r.Res.Requests) }
	PodsCPUPer1k   Figure = func(r Run) float64 { return per1k(r.Pods, r.Res.Requests) }
	// ClientCPUPerGB, ServerCPUPerGB and PodsCPUPerGB are CPU seconds
	// per GB (10^9 bytes) of a bulk run.
	ClientCPUPerGB Figure = func(r Run) float64 { return perGB(r.ClientCPU, r.Res.Bytes) }
	ServerCPUPerGB Figure = func(r Run) float64 { return perGB(r.ServerCPU, r.Res.Bytes) }
	PodsCPUPerGB   Figure = func(r Run) float64 { return perGB(r.Pods, r.Res.Bytes) }
	// ClientRSS and ServerRSS are the proxies' peak VmRSS, MB.
	ClientRSS Figure = func(r Run) float64 { return benchkit.KiBToMB(r.ClientRSS) }
	ServerRSS Figure = func(r Run) float64 { return benchkit.KiBToMB(r.ServerRSS) }
)

func per1k(d time.Duration, n int64) float64 {
	if n <= 0 {
		return 0
	}
	return d.Seconds() * 1000 / float64(n)
}

func perGB(d time.Duration, bytes int64) float64 {
	if bytes <= 0 {
		return 0
	}
	return d.Seconds() * 1e9 / float64(bytes)
}
