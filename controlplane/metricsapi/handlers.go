package metricsapi

import (
	"cmp"
	"context"
	"net/http"
	"slices"

	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"

	"github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// rowKey identifies a resource: namespace ("" for a namespace) and name.
type rowKey struct{ ns, name string }

func keyOf(r api.Resource) rowKey { return rowKey{r.Namespace, r.Name} }

// keyFrom reads the resource a sample is about from its labels.
func keyFrom(m model.Metric, nsLabel, nameLabel string) rowKey {
	k := rowKey{name: string(m[model.LabelName(nameLabel)])}
	if nsLabel != "" {
		k.ns = string(m[model.LabelName(nsLabel)])
	}
	return k
}

// stat answers GET /api/v1/stat.
func (s *Server) stat(r *http.Request) (any, error) {
	req, err := api.ParseStatRequest(r.URL.Query())
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	objs, err := s.objects(ctx, req.Resource, req.Namespace, req.Name)
	if err != nil {
		return nil, err
	}
	rows := make(map[rowKey]*api.StatRow, len(objs))
	if len(objs) > 0 {
		var pods map[string][]*corev1.Pod // a pod row is its own pod
		if req.Resource != api.Pod {
			podNS := req.Namespace
			if req.Resource == api.Namespace {
				podNS = req.Name
			}
			if pods, err = s.podsByNamespace(ctx, podNS); err != nil {
				return nil, err
			}
		}
		for _, o := range objs {
			row := &api.StatRow{Resource: o.res}
			row.MeshedPods, row.TotalPods = countPods(o.podsOf(pods))
			rows[keyOf(o.res)] = row
		}
	}

	sel := statSelection(req.Resource, req.Namespace, req.Name, req.To, req.From)
	q := buildStatQueries(sel, req.Window)
	vecs, err := s.queryAll(ctx, []namedQuery{
		{"stat_responses", q.responses},
		{"stat_latency_p50", q.latency[0]},
		{"stat_latency_p95", q.latency[1]},
		{"stat_latency_p99", q.latency[2]},
		{"stat_tcp_open_connections", q.tcpOpen},
		{"stat_tcp_read_bytes", q.tcpRead},
		{"stat_tcp_write_bytes", q.tcpWrite},
	})
	if err != nil {
		return nil, err
	}
	each := func(v model.Vector, f func(*api.StatRow, *model.Sample)) {
		for _, smp := range v {
			if row := rows[keyFrom(smp.Metric, sel.keyNS, sel.keyName)]; row != nil {
				f(row, smp)
			}
		}
	}
	success := map[*api.StatRow]float64{}
	each(vecs[0], func(row *api.StatRow, smp *model.Sample) {
		row.RequestRate += float64(smp.Value)
		if smp.Metric[labelClass] == classSuccess {
			success[row] += float64(smp.Value)
		}
	})
	for i, lat := range []func(*api.StatRow) **float64{
		func(r *api.StatRow) **float64 { return &r.LatencyP50Ms },
		func(r *api.StatRow) **float64 { return &r.LatencyP95Ms },
		func(r *api.StatRow) **float64 { return &r.LatencyP99Ms },
	} {
		each(vecs[1+i], func(row *api.StatRow, smp *model.Sample) { *lat(row) = number(float64(smp.Value)) })
	}
	each(vecs[4], func(row *api.StatRow, smp *model.Sample) { row.TCPConnections = float64(smp.Value) })
	each(vecs[5], func(row *api.StatRow, smp *model.Sample) { row.TCPReadBytesPerSec = float64(smp.Value) })
	each(vecs[6], func(row *api.StatRow, smp *model.Sample) { row.TCPWriteBytesPerSec = float64(smp.Value) })

	resp := &api.StatResponse{Window: req.Window.String(), Rows: make([]api.StatRow, 0, len(rows))}
	for _, row := range rows {
		if row.RequestRate > 0 {
			row.SuccessRate = number(success[row] / row.RequestRate)
		} else {
			// No response in the window: no latency either.
			row.LatencyP50Ms, row.LatencyP95Ms, row.LatencyP99Ms = nil, nil, nil
		}
		row.Status = rowStatus(row)
		resp.Rows = append(resp.Rows, *row)
	}
	slices.SortFunc(resp.Rows, func(a, b api.StatRow) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return resp, nil
}

// rowStatus says whether a row had traffic, and if not, why not.
func rowStatus(r *api.StatRow) string {
	switch {
	case r.RequestRate > 0 || r.TCPConnections > 0:
		return api.StatusOK
	case r.TotalPods == 0:
		return api.StatusNoPods
	case r.MeshedPods == 0:
		return api.StatusNotMeshed
	}
	return api.StatusNoTraffic
}

// topRoutes answers GET /api/v1/top-routes.
func (s *Server) topRoutes(r *http.Request) (any, error) {
	req, err := api.ParseTopRoutesRequest(r.URL.Query())
	if err != nil {
		return nil, err
	}
	q := buildRouteQueries(statSelection(req.Resource, req.Namespace, req.Name, req.To, nil), req.Window)
	vecs, err := s.queryAll(r.Context(), []namedQuery{
		{"routes_responses", q.responses},
		{"routes_latency_p50", q.latency[0]},
		{"routes_latency_p95", q.latency[1]},
		{"routes_latency_p99", q.latency[2]},
	})
	if err != nil {
		return nil, err
	}
	routes := map[string]*api.Route{}
	success := map[string]float64{}
	for _, smp := range vecs[0] {
		a := string(smp.Metric[labelAuthority])
		rt := routes[a]
		if rt == nil {
			rt = &api.Route{Authority: a}
			routes[a] = rt
		}
		rt.RequestRate += float64(smp.Value)
		if smp.Metric[labelClass] == classSuccess {
			success[a] += float64(smp.Value)
		}
	}
	for i, lat := range []func(*api.Route) **float64{
		func(r *api.Route) **float64 { return &r.LatencyP50Ms },
		func(r *api.Route) **float64 { return &r.LatencyP95Ms },
		func(r *api.Route) **float64 { return &r.LatencyP99Ms },
	} {
		for _, smp := range vecs[1+i] {
			if rt := routes[string(smp.Metric[labelAuthority])]; rt != nil {
				*lat(rt) = number(float64(smp.Value))
			}
		}
	}
	resp := &api.TopRoutesResponse{Window: req.Window.String(), Routes: []api.Route{}}
	for a, rt := range routes {
		if rt.RequestRate <= 0 {
			continue // seen, but not in the window
		}
		rt.SuccessRate = number(success[a] / rt.RequestRate)
		resp.Routes = append(resp.Routes, *rt)
	}
	slices.SortFunc(resp.Routes, func(a, b api.Route) int {
		return cmp.Or(cmp.Compare(b.RequestRate, a.RequestRate), cmp.Compare(a.Authority, b.Authority))
	})
	return resp, nil
}

// edges answers GET /api/v1/edges.
func (s *Server) edges(r *http.Request) (any, error) {
	req, err := api.ParseEdgesRequest(r.URL.Query())
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	q := buildEdgeQueries(req.Resource)
	vecs, err := s.queryAll(ctx, []namedQuery{{"edges_outbound", q.outbound}, {"edges_inbound", q.inbound}})
	if err != nil {
		return nil, err
	}
	srcNS, src := keyLabels("", req.Resource)
	dstNS, dst := keyLabels(dstPrefix, req.Resource)
	resource := func(k rowKey) api.Resource { return api.Resource{Namespace: k.ns, Kind: req.Resource, Name: k.name} }

	// The client identities each resource's proxies saw inbound.
	clients := map[rowKey]map[string]bool{}
	for _, smp := range vecs[1] {
		k := keyFrom(smp.Metric, srcNS, src)
		if clients[k] == nil {
			clients[k] = map[string]bool{}
		}
		clients[k][string(smp.Metric[labelClientID])] = true
	}

	type edge struct {
		api.Edge
		plain bool // some series were not mutual TLS
	}
	found := map[[2]rowKey]*edge{}
	for _, smp := range vecs[0] {
		from, to := keyFrom(smp.Metric, srcNS, src), keyFrom(smp.Metric, dstNS, dst)
		if req.Namespace != "" && namespaceOf(resource(from)) != req.Namespace && namespaceOf(resource(to)) != req.Namespace {
			continue
		}
		e := found[[2]rowKey{from, to}]
		if e == nil {
			e = &edge{Edge: api.Edge{Src: resource(from), Dst: resource(to)}}
			found[[2]rowKey{from, to}] = e
		}
		if smp.Metric[labelTLS] == "true" {
			e.ServerID = cmp.Or(e.ServerID, string(smp.Metric[labelServerID]))
		} else {
			e.plain = true
			e.NoTLSReason = cmp.Or(e.NoTLSReason, string(smp.Metric[labelNoTLSReason]))
		}
	}
	resp := &api.EdgesResponse{Edges: make([]api.Edge, 0, len(found))}
	for k, e := range found {
		e.Secured = !e.plain && e.ServerID != ""
		e.ClientID = s.clientID(ctx, e.Src, clients[k[1]])
		resp.Edges = append(resp.Edges, e.Edge)
	}
	slices.SortFunc(resp.Edges, func(a, b api.Edge) int {
		return cmp.Or(
			cmp.Compare(a.Src.Namespace, b.Src.Namespace), cmp.Compare(a.Src.Name, b.Src.Name),
			cmp.Compare(a.Dst.Namespace, b.Dst.Namespace), cmp.Compare(a.Dst.Name, b.Dst.Name))
	})
	return resp, nil
}

// namespaceOf returns the namespace r is in (or is).
func namespaceOf(r api.Resource) string {
	if r.Kind == api.Namespace {
		return r.Name
	}
	return r.Namespace
}

// clientID picks src's identity among the client identities ids a
// destination saw: the one of src's namespace, or when there are several
// (clients with different service accounts), the first whose service
// account src's pods run as. "" when none matches.
func (s *Server) clientID(ctx context.Context, src api.Resource, ids map[string]bool) string {
	ns := namespaceOf(src)
	var cands []string
	for id := range ids {
		if _, idNS, err := meshmeta.ParseIdentityName(id, s.trustDomain); err == nil && idNS == ns {
			cands = append(cands, id)
		}
	}
	slices.Sort(cands)
	switch len(cands) {
	case 0:
		return ""
	case 1:
		return cands[0]
	}
	sas, err := s.serviceAccounts(ctx, src)
	if err != nil {
		s.log.Warn("cannot tell an edge's client identity", "src", src.String(), "error", err)
		return ""
	}
	for _, id := range cands {
		if sa, _, _ := meshmeta.ParseIdentityName(id, s.trustDomain); sas[sa] {
			return id
		}
	}
	return ""
}
