package metrics

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Help texts of the TCP families, as Linkerd's proxy writes them.
const (
	helpOpenTotal       = "Total count of opened connections"
	helpOpenConnections = "Number of currently-open connections"
	helpReadBytesTotal  = "Total count of bytes read from peers"
	helpWriteBytesTotal = "Total count of bytes written to peers"
	helpCloseTotal      = "Total count of closed connections"
	helpDurationMs      = "Connection lifetimes"
)

// TCPSeries records the connections of one target with one peer. Its
// methods are safe for concurrent use and allocate nothing once an errno
// has been seen.
type TCPSeries struct {
	series
	opens, reads, writes                     atomic.Uint64
	conns                                    atomic.Int64
	openDesc, connsDesc, readDesc, wroteDesc *prometheus.Desc
	closes                                   cowMap[string, *closeSeries]
}

// closeSeries holds the closes of one errno ("" for clean ones).
type closeSeries struct {
	n        atomic.Uint64
	duration histogram
	nDesc    *prometheus.Desc
	durDesc  *prometheus.Desc
}

// TCP returns the (shared, get-or-create) TCP series of a target for one
// peer: "src" for the side that connected to the proxy, "dst" for the side
// the proxy connected to. t.Authority is ignored.
func (r *Registry) TCP(t Target, peer string) *TCPSeries {
	l := targetLabels(t, false, peer)
	key := l.key()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tcp.get(key, func() *TCPSeries {
		s := &TCPSeries{
			series:    series{reg: r, key: key, labels: l},
			openDesc:  l.desc("tcp_open_total", helpOpenTotal),
			connsDesc: l.desc("tcp_open_connections", helpOpenConnections),
			readDesc:  l.desc("tcp_read_bytes_total", helpReadBytesTotal),
			wroteDesc: l.desc("tcp_write_bytes_total", helpWriteBytesTotal),
		}
		s.revive = func() { r.tcp.revive(s) }
		return s
	})
}

// Open counts an opened connection (tcp_open_total) and holds it open
// (tcp_open_connections) until Close. A series with an open connection is
// never retired.
func (s *TCPSeries) Open() {
	s.conns.Add(1)
	s.opens.Add(1)
	s.touch()
}

// Read counts n bytes the proxy read from this peer (tcp_read_bytes_total).
func (s *TCPSeries) Read(n int) {
	s.reads.Add(uint64(max(n, 0)))
	s.touch()
}

// Wrote counts n bytes the proxy wrote to this peer
// (tcp_write_bytes_total).
func (s *TCPSeries) Wrote(n int) {
	s.writes.Add(uint64(max(n, 0)))
	s.touch()
}

// Close records the end of a connection that lived d: tcp_close_total and
// tcp_connection_duration_ms, with classification "success" and no errno
// label when errno is "", else "failure" and errno (e.g. "ECONNRESET").
func (s *TCPSeries) Close(errno string, d time.Duration) {
	c := s.closes.get(errno, s.newClose)
	c.n.Add(1)
	c.duration.observe(d)
	s.conns.Add(-1)
	s.touch()
}

func (s *TCPSeries) newClose(errno string) *closeSeries {
	l := s.labels.with(labelPair{"classification", "success"})
	if errno != "" {
		l = s.labels.with(labelPair{"classification", "failure"}, labelPair{"errno", labelValue(errno)})
	}
	return &closeSeries{
		nDesc:   l.desc("tcp_close_total", helpCloseTotal),
		durDesc: l.desc("tcp_connection_duration_ms", helpDurationMs),
	}
}

// collect sends the series' metrics.
func (s *TCPSeries) collect(ch chan<- prometheus.Metric) {
	ch <- value(s.openDesc, prometheus.CounterValue, float64(s.opens.Load()))
	ch <- value(s.connsDesc, prometheus.GaugeValue, float64(s.conns.Load()))
	ch <- value(s.readDesc, prometheus.CounterValue, float64(s.reads.Load()))
	ch <- value(s.wroteDesc, prometheus.CounterValue, float64(s.writes.Load()))
	s.closes.each(func(c *closeSeries) {
		ch <- value(c.nDesc, prometheus.CounterValue, float64(c.n.Load()))
		ch <- c.duration.metric(c.durDesc)
	})
}
