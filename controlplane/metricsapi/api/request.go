package api

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Windows the API accepts: whole seconds from MinWindow to MaxWindow;
// DefaultWindow when none is given.
const (
	DefaultWindow = time.Minute
	MinWindow     = time.Second
	MaxWindow     = 24 * time.Hour
)

// Query parameter names.
const (
	ParamResource      = "resource"
	ParamNamespace     = "namespace"
	ParamName          = "name"
	ParamTo            = "to"
	ParamToNamespace   = "to_namespace"
	ParamFrom          = "from"
	ParamFromNamespace = "from_namespace"
	ParamWindow        = "window"
)

// StatRequest asks for the stats of resources of one type.
type StatRequest struct {
	// Resource is the type to report on; required.
	Resource ResourceType
	// Namespace limits the rows to one namespace; "" means every
	// namespace. Ignored when Resource is Namespace.
	Namespace string
	// Name limits the rows to one resource; "" means all of them.
	Name string
	// To, when not nil, reports the rows' outbound traffic to the resources
	// it matches: its Kind is required, an empty Name matches every
	// resource of that kind, an empty Namespace means Namespace.
	To *Resource
	// From, when not nil, reports the traffic the resources it matches sent
	// to the rows (as To; its Kind may not be Service). To and From
	// exclude each other.
	From *Resource
	// Window is the time window of rates and quantiles; 0 means
	// DefaultWindow.
	Window time.Duration
}

// EdgesRequest asks for the edges between resources of one type.
type EdgesRequest struct {
	// Resource is the type of the edges' ends; required, not Service.
	Resource ResourceType
	// Namespace keeps the edges with an end in it; "" keeps all.
	Namespace string
}

// TopRoutesRequest asks for the traffic per authority of resources.
type TopRoutesRequest struct {
	// Resource, Namespace, Name, To and Window are as in StatRequest; the
	// routes are the inbound requests of the matching resources (with To:
	// their outbound requests to it; for a Service: the requests sent to
	// it), summed over them.
	Resource  ResourceType
	Namespace string
	Name      string
	To        *Resource
	Window    time.Duration
}

// Values encodes r as query parameters.
func (r StatRequest) Values() url.Values {
	v := url.Values{}
	setSelection(v, r.Resource, r.Namespace, r.Name)
	setTarget(v, ParamTo, ParamToNamespace, r.To)
	setTarget(v, ParamFrom, ParamFromNamespace, r.From)
	setWindow(v, r.Window)
	return v
}

// Values encodes r as query parameters.
func (r EdgesRequest) Values() url.Values {
	v := url.Values{}
	setSelection(v, r.Resource, r.Namespace, "")
	return v
}

// Values encodes r as query parameters.
func (r TopRoutesRequest) Values() url.Values {
	v := url.Values{}
	setSelection(v, r.Resource, r.Namespace, r.Name)
	setTarget(v, ParamTo, ParamToNamespace, r.To)
	setWindow(v, r.Window)
	return v
}

func setSelection(v url.Values, t ResourceType, ns, name string) {
	v.Set(ParamResource, string(t))
	if ns != "" {
		v.Set(ParamNamespace, ns)
	}
	if name != "" {
		v.Set(ParamName, name)
	}
}

func setTarget(v url.Values, param, nsParam string, r *Resource) {
	if r == nil {
		return
	}
	s := string(r.Kind)
	if r.Name != "" {
		s += "/" + r.Name
	}
	v.Set(param, s)
	if r.Namespace != "" {
		v.Set(nsParam, r.Namespace)
	}
}

func setWindow(v url.Values, w time.Duration) {
	if w != 0 {
		v.Set(ParamWindow, w.String())
	}
}

// ParseStatRequest parses and validates the query parameters of
// GET /api/v1/stat. A bad parameter gives an *Error with Status 400 that
// names it.
func ParseStatRequest(q url.Values) (StatRequest, error) {
	var r StatRequest
	var err error
	if r.Resource, r.Namespace, r.Name, err = parseSelection(q, true); err != nil {
		return r, err
	}
	if r.To, err = parseTarget(q, ParamTo, ParamToNamespace, r.Namespace); err != nil {
		return r, err
	}
	if r.From, err = parseTarget(q, ParamFrom, ParamFromNamespace, r.Namespace); err != nil {
		return r, err
	}
	if r.To != nil && r.From != nil {
		return r, badParam(ParamFrom, "to and from exclude each other")
	}
	if r.From != nil && !r.From.Kind.IsWorkload() {
		return r, badParam(ParamFrom, "a service sends no traffic: from must be a workload, pod or namespace")
	}
	r.Window, err = parseWindow(q)
	return r, err
}

// ParseEdgesRequest parses and validates the query parameters of
// GET /api/v1/edges, as ParseStatRequest.
func ParseEdgesRequest(q url.Values) (EdgesRequest, error) {
	var r EdgesRequest
	var err error
	if r.Resource, r.Namespace, _, err = parseSelection(q, false); err != nil {
		return r, err
	}
	if !r.Resource.IsWorkload() {
		return r, badParam(ParamResource, "edges join workloads, pods or namespaces, not services")
	}
	return r, nil
}

// ParseTopRoutesRequest parses and validates the query parameters of
// GET /api/v1/top-routes, as ParseStatRequest.
func ParseTopRoutesRequest(q url.Values) (TopRoutesRequest, error) {
	var r TopRoutesRequest
	var err error
	if r.Resource, r.Namespace, r.Name, err = parseSelection(q, true); err != nil {
		return r, err
	}
	if r.To, err = parseTarget(q, ParamTo, ParamToNamespace, r.Namespace); err != nil {
		return r, err
	}
	r.Window, err = parseWindow(q)
	return r, err
}

// parseSelection parses resource, namespace and (when withName) name.
func parseSelection(q url.Values, withName bool) (t ResourceType, ns, name string, err error) {
	s := q.Get(ParamResource)
	if s == "" {
		return "", "", "", badParam(ParamResource, "required (one of deploy, sts, ds, job, po, ns, svc)")
	}
	if t, err = ParseResourceType(s); err != nil {
		return "", "", "", badParam(ParamResource, err.Error())
	}
	if ns, err = parseNamespace(q, ParamNamespace); err != nil {
		return "", "", "", err
	}
	if t == Namespace {
		ns = ""
	}
	if withName {
		name = q.Get(ParamName)
		if err := checkName(t, name, ParamName); err != nil {
			return "", "", "", err
		}
	} else if q.Has(ParamName) {
		return "", "", "", badParam(ParamName, "not accepted here")
	}
	return t, ns, name, nil
}

// parseTarget parses a "kind[/name]" parameter and its namespace
// parameter, which defaults to ns.
func parseTarget(q url.Values, param, nsParam, ns string) (*Resource, error) {
	s := q.Get(param)
	if s == "" {
		if q.Get(nsParam) != "" {
			return nil, badParam(nsParam, "given without "+param)
		}
		return nil, nil
	}
	kind, name, _ := strings.Cut(s, "/")
	t, err := ParseResourceType(kind)
	if err != nil {
		return nil, badParam(param, err.Error())
	}
	if err := checkName(t, name, param); err != nil {
		return nil, err
	}
	tns, err := parseNamespace(q, nsParam)
	if err != nil {
		return nil, err
	}
	if tns == "" {
		tns = ns
	}
	if t == Namespace {
		tns = ""
	}
	return &Resource{Namespace: tns, Kind: t, Name: name}, nil
}

func parseNamespace(q url.Values, param string) (string, error) {
	ns := q.Get(param)
	if ns == "" {
		return "", nil
	}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		return "", badParam(param, fmt.Sprintf("%q is not a namespace name: %s", ns, strings.Join(errs, "; ")))
	}
	return ns, nil
}

// checkName checks that name ("" is fine) can be the name of a t.
func checkName(t ResourceType, name, param string) error {
	if name == "" {
		return nil
	}
	var errs []string
	switch t {
	case Namespace, Service:
		errs = validation.IsDNS1123Label(name)
	default:
		errs = validation.IsDNS1123Subdomain(name)
	}
	if len(errs) > 0 {
		return badParam(param, fmt.Sprintf("%q is not a %s name: %s", name, t, strings.Join(errs, "; ")))
	}
	return nil
}

func parseWindow(q url.Values) (time.Duration, error) {
	s := q.Get(ParamWindow)
	if s == "" {
		return DefaultWindow, nil
	}
	w, err := time.ParseDuration(s)
	if err != nil {
		return 0, badParam(ParamWindow, fmt.Sprintf("%q is not a duration such as 30s, 1m or 1h", s))
	}
	if w < MinWindow || w > MaxWindow || w%time.Second != 0 {
		return 0, badParam(ParamWindow, fmt.Sprintf("%s is not whole seconds from %s to %s", s, MinWindow, MaxWindow))
	}
	return w, nil
}

func badParam(param, msg string) *Error {
	return &Error{Status: http.StatusBadRequest, Param: param, Message: msg}
}
