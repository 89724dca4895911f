package meshctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	metricsapi "github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
)

// queryFlags are the flags of the commands that read the metrics API
// (stat, top, edges): the cluster, the namespaces to report on, the
// traffic's other end, the time window and the output format. Each command
// binds the ones it takes; the others stay empty and are left out of the
// request.
type queryFlags struct {
	// typ and name are the arguments TYPE [NAME].
	typ           string
	name          string
	cluster       clusterFlags
	namespace     string
	allNamespaces bool
	to            string
	toNamespace   string
	from          string
	fromNamespace string
	window        time.Duration
	output        string
	// formats are the output formats the command takes.
	formats []string
}

// bindScope binds the cluster flags, -n and -A.
func (q *queryFlags) bindScope(cmd *cobra.Command) {
	q.cluster.bind(cmd)
	f := cmd.Flags()
	f.StringVarP(&q.namespace, "namespace", "n", "", "namespace of the resources (default: the kubeconfig context's namespace)")
	f.BoolVarP(&q.allNamespaces, "all-namespaces", "A", false, "report on the resources of every namespace")
}

// bindTo binds --to and --to-namespace.
func (q *queryFlags) bindTo(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&q.to, "to", "", "only the traffic to this resource: TYPE/NAME, or TYPE for any of that type (deploy/web, svc/web)")
	f.StringVar(&q.toNamespace, "to-namespace", "", "namespace of --to (default: --namespace)")
}

// bindFrom binds --from and --from-namespace.
func (q *queryFlags) bindFrom(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&q.from, "from", "", "only the traffic from this resource: TYPE/NAME, or TYPE for any of that type (not a service)")
	f.StringVar(&q.fromNamespace, "from-namespace", "", "namespace of --from (default: --namespace)")
}

// bindWindow binds -t.
func (q *queryFlags) bindWindow(cmd *cobra.Command) {
	q.window = metricsapi.DefaultWindow
	cmd.Flags().DurationVarP(&q.window, "time-window", "t", q.window,
		fmt.Sprintf("time window of rates and latencies: whole seconds from %s to %s", metricsapi.MinWindow, metricsapi.MaxWindow))
}

// bindOutput binds -o with the first of formats as default.
func (q *queryFlags) bindOutput(cmd *cobra.Command, formats ...string) {
	q.output, q.formats = formats[0], formats
	cmd.Flags().StringVarP(&q.output, "output", "o", q.output, "output format: "+strings.Join(formats, ", "))
}

// validate checks what the metrics API's own parameter checks do not:
// the output format, flags that exclude each other.
func (q *queryFlags) validate() error {
	if err := checkOutput(q.output, q.formats...); err != nil {
		return err
	}
	switch {
	case q.allNamespaces && q.namespace != "":
		return errors.New("--namespace and --all-namespaces exclude each other")
	case q.to != "" && q.from != "":
		return errors.New("--to and --from exclude each other: ask for one direction at a time")
	}
	return nil
}

// setArgs reads the arguments TYPE [NAME] or TYPE/NAME.
func (q *queryFlags) setArgs(args []string) error {
	var err error
	q.typ, q.name, err = splitTypeName(args)
	return err
}

// values returns the query parameters of a request about resources of
// type q.typ (as the user wrote it) named q.name ("" for all) in namespace
// ns ("" for all), with the flags' target, source and window. The metrics
// API's Parse functions then validate them, here as on the server.
func (q *queryFlags) values(ns string) url.Values {
	v := url.Values{}
	v.Set(metricsapi.ParamResource, q.typ)
	for param, value := range map[string]string{
		metricsapi.ParamNamespace:     ns,
		metricsapi.ParamName:          q.name,
		metricsapi.ParamTo:            q.to,
		metricsapi.ParamToNamespace:   q.toNamespace,
		metricsapi.ParamFrom:          q.from,
		metricsapi.ParamFromNamespace: q.fromNamespace,
	} {
		if value != "" {
			v.Set(param, value)
		}
	}
	v.Set(metricsapi.ParamWindow, q.window.String()) // edges ignore it
	return v
}

// scope is the namespace to ask about: "" (all) with -A, else -n, else
// the kubeconfig context's namespace.
func (q *queryFlags) scope(contextNamespace string) string {
	switch {
	case q.allNamespaces:
		return ""
	case q.namespace != "":
		return q.namespace
	}
	return contextNamespace
}

// check validates q and the request it makes, before connecting: the
// namespace, when not given, is filled in later.
func check[R any](q *queryFlags, request func(ns string) (R, error)) error {
	if err := q.validate(); err != nil {
		return err
	}
	_, err := request(q.namespace)
	return err
}

// prepare reaches the metrics API through the cluster's API server and
// makes the request for the namespace in scope.
func prepare[R any](ctx context.Context, q *queryFlags, request func(ns string) (R, error)) (*metricsapi.Client, R, error) {
	var req R
	cl, err := q.cluster.connect(ctx)
	if err != nil {
		return nil, req, err
	}
	if err := cl.requireSluice(ctx); err != nil {
		return nil, req, err
	}
	client, err := cl.metricsAPI()
	if err != nil {
		return nil, req, err
	}
	req, err = request(q.scope(cl.contextNamespace))
	return client, req, err
}

// paramFlags names the argument or flag each query parameter comes from.
var paramFlags = map[string]string{
	metricsapi.ParamResource:      "TYPE",
	metricsapi.ParamName:          "NAME",
	metricsapi.ParamNamespace:     "--namespace",
	metricsapi.ParamTo:            "--to",
	metricsapi.ParamToNamespace:   "--to-namespace",
	metricsapi.ParamFrom:          "--from",
	metricsapi.ParamFromNamespace: "--from-namespace",
	metricsapi.ParamWindow:        "--time-window",
}

// flagError words a parameter refused by the metrics API's checks after
// the argument or flag it came from.
func flagError(err error) error {
	var e *metricsapi.Error
	if errors.As(err, &e) && e.Param != "" {
		name := paramFlags[e.Param]
		if name == "" {
			name = e.Param
		}
		return fmt.Errorf("invalid %s: %s", name, e.Message)
	}
	return err
}

// metricsError turns a failed call of the metrics API into one line: a
// resource that does not exist, a refused parameter, or the API (or the
// API server's proxy in front of it) failing.
func metricsError(err error) error {
	var e *metricsapi.Error
	switch {
	case !errors.As(err, &e):
		return fmt.Errorf("query the metrics API: %w", err)
	case e.Status == http.StatusNotFound && e.Param != "":
		return errors.New(e.Message)
	case e.Status == http.StatusBadRequest && e.Param != "":
		return flagError(e)
	}
	return fmt.Errorf("the metrics API answered %d %s: %s", e.Status, http.StatusText(e.Status), statusMessage(e.Message))
}

// statusMessage shortens the text of an error answered by the API server
// rather than the metrics API (no endpoints, no such service), which
// carries a Kubernetes Status as JSON, to the Status's message.
func statusMessage(msg string) string {
	i := strings.Index(msg, "{")
	if i < 0 {
		return msg
	}
	var st metav1.Status
	if json.Unmarshal([]byte(msg[i:]), &st) != nil || st.Message == "" {
		return msg
	}
	return st.Message
}
