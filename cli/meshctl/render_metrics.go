package meshctl

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"

	metricsapi "github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
)

// noValue stands in a cell for a figure that does not exist: no response
// in the window, no identity.
const noValue = "-"

// Lines printed instead of an empty table.
const (
	noTraffic = "No traffic found.\n"
	noEdges   = "No edges found.\n"
)

// statColumns are stat's columns, after NAMESPACE (with -A) and before the
// wide ones.
var statColumns = []string{"NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN"}

// renderStat writes stat's rows as output (table, wide or json). A table
// starts with a NAMESPACE column when withNamespace is set; wide adds the
// TCP byte rates and the row's status. json is the rows as the metrics API
// gives them, [] for none.
func renderStat(w io.Writer, rows []metricsapi.StatRow, output string, withNamespace bool) error {
	if output == outputJSON {
		return writeJSONArray(w, rows)
	}
	if len(rows) == 0 {
		_, err := io.WriteString(w, noTraffic)
		return err
	}
	wide := output == outputWide
	t := newTable(w)
	var head []string
	if withNamespace {
		head = append(head, "NAMESPACE")
	}
	head = append(head, statColumns...)
	if wide {
		head = append(head, "READ_BYTES/SEC", "WRITE_BYTES/SEC", "STATUS")
	}
	t.row(head...)
	for _, r := range rows {
		var cells []string
		if withNamespace {
			cells = append(cells, r.Namespace)
		}
		traffic := r.Status == metricsapi.StatusOK
		cells = append(cells, r.Name, fmt.Sprintf("%d/%d", r.MeshedPods, r.TotalPods))
		cells = append(cells, requestCells(r.SuccessRate, r.RequestRate, r.LatencyP50Ms, r.LatencyP95Ms, r.LatencyP99Ms)...)
		cells = append(cells, ifTraffic(traffic, fmt.Sprintf("%.0f", r.TCPConnections)))
		if wide {
			cells = append(cells,
				ifTraffic(traffic, formatByteRate(r.TCPReadBytesPerSec)),
				ifTraffic(traffic, formatByteRate(r.TCPWriteBytesPerSec)),
				r.Status)
		}
		t.row(cells...)
	}
	return t.flush()
}

// renderTopRoutes writes top's routes as output (table or json).
func renderTopRoutes(w io.Writer, routes []metricsapi.Route, output string) error {
	if output == outputJSON {
		return writeJSONArray(w, routes)
	}
	if len(routes) == 0 {
		_, err := io.WriteString(w, noTraffic)
		return err
	}
	t := newTable(w)
	t.row("AUTHORITY", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99")
	for _, r := range routes {
		t.row(append([]string{orNone(r.Authority)}, requestCells(r.SuccessRate, r.RequestRate, r.LatencyP50Ms, r.LatencyP95Ms, r.LatencyP99Ms)...)...)
	}
	return t.flush()
}

// renderEdges writes edges as output (table, wide or json); wide adds
// why traffic was not mutual TLS.
func renderEdges(w io.Writer, edges []metricsapi.Edge, output string) error {
	if output == outputJSON {
		return writeJSONArray(w, edges)
	}
	if len(edges) == 0 {
		_, err := io.WriteString(w, noEdges)
		return err
	}
	wide := output == outputWide
	t := newTable(w)
	head := []string{"SRC", "DST", "SRC_NS", "DST_NS", "SECURED", "CLIENT_ID", "SERVER_ID"}
	if wide {
		head = append(head, "NO_TLS_REASON")
	}
	t.row(head...)
	for _, e := range edges {
		secured := "no"
		if e.Secured {
			secured = "yes"
		}
		cells := []string{e.Src.Name, e.Dst.Name, orNone(e.Src.Namespace), orNone(e.Dst.Namespace),
			secured, orNone(e.ClientID), orNone(e.ServerID)}
		if wide {
			cells = append(cells, orNone(e.NoTLSReason))
		}
		t.row(cells...)
	}
	return t.flush()
}

// requestCells are the SUCCESS, RPS and latency cells of request figures;
// all are noValue when there was no response (success is nil).
func requestCells(success *float64, rps float64, p50, p95, p99 *float64) []string {
	cells := []string{noValue, noValue}
	if success != nil {
		cells = []string{fmt.Sprintf("%.2f%%", *success*100), fmt.Sprintf("%.1frps", rps)}
	}
	return append(cells, formatLatency(p50), formatLatency(p95), formatLatency(p99))
}

// formatLatency formats milliseconds: whole from 10 ms ("12ms"), with one
// decimal below ("1.5ms"); noValue for nil.
func formatLatency(ms *float64) string {
	if ms == nil {
		return noValue
	}
	if math.Round(*ms*10)/10 >= 10 {
		return fmt.Sprintf("%.0fms", *ms)
	}
	return fmt.Sprintf("%.1fms", *ms)
}

// formatByteRate formats bytes per second with one decimal ("512.0B/s").
func formatByteRate(v float64) string { return fmt.Sprintf("%.1fB/s", v) }

// ifTraffic is cell when the resource had traffic, else noValue.
func ifTraffic(traffic bool, cell string) string {
	if !traffic {
		return noValue
	}
	return cell
}

// orNone is s, or noValue for "".
func orNone(s string) string {
	if s == "" {
		return noValue
	}
	return s
}

// writeJSONArray writes items as an indented JSON array, [] for none.
func writeJSONArray[T any](w io.Writer, items []T) error {
	if items == nil {
		items = []T{}
	}
	b, err := json.MarshalIndent(items, "", "  ")
	if err != nil {
		return fmt.Errorf("encode JSON: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// table aligns rows of cells in columns two spaces apart.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer) *table {
	return &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
}

// row adds a row. Cells hold no tab or newline.
func (t *table) row(cells ...string) {
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

// flush writes the table out.
func (t *table) flush() error {
	if err := t.tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return nil
}
