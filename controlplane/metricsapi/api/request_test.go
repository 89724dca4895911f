package api

import (
	"errors"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestParseStatRequest parses good query strings into requests, and
// checks that encoding the request gives the same request back.
func TestParseStatRequest(t *testing.T) {
	for _, tc := range []struct {
		query string
		want  StatRequest
	}{
		{"resource=deploy", StatRequest{Resource: Deployment, Window: time.Minute}},
		{"resource=Deployments&namespace=shop&name=web&window=30s",
			StatRequest{Resource: Deployment, Namespace: "shop", Name: "web", Window: 30 * time.Second}},
		{"resource=po&namespace=shop&to=svc/web", StatRequest{Resource: Pod, Namespace: "shop",
			To: &Resource{Namespace: "shop", Kind: Service, Name: "web"}, Window: time.Minute}},
		{"resource=deploy&namespace=shop&to=deploy&to_namespace=store", StatRequest{Resource: Deployment, Namespace: "shop",
			To: &Resource{Namespace: "store", Kind: Deployment}, Window: time.Minute}},
		{"resource=svc&namespace=shop&from=sts/db-0.x&window=1h", StatRequest{Resource: Service, Namespace: "shop",
			From: &Resource{Namespace: "shop", Kind: StatefulSet, Name: "db-0.x"}, Window: time.Hour}},
		{"resource=ns&namespace=ignored&name=shop&to=ns/store", StatRequest{Resource: Namespace, Name: "shop",
			To: &Resource{Kind: Namespace, Name: "store"}, Window: time.Minute}},
		{"resource=job&from=ds/agent&from_namespace=kube-system", StatRequest{Resource: Job,
			From: &Resource{Namespace: "kube-system", Kind: DaemonSet, Name: "agent"}, Window: time.Minute}},
	} {
		t.Run(tc.query, func(t *testing.T) {
			q, _ := url.ParseQuery(tc.query)
			got, err := ParseStatRequest(q)
			if err != nil {
				t.Fatalf("ParseStatRequest: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			again, err := ParseStatRequest(got.Values())
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Errorf("round trip through %s: %+v, %v", got.Values().Encode(), again, err)
			}
		})
	}
}

// TestBadRequests checks that bad parameters are refused with a 400 that
// names the parameter.
func TestBadRequests(t *testing.T) {
	for _, tc := range []struct {
		endpoint  string
		query     string
		param     string
		inMessage string
	}{
		{"stat", "", "resource", "required"},
		{"stat", "resource=widgets", "resource", `unknown resource type "widgets"`},
		{"stat", "resource=deploy&namespace=Shop", "namespace", `"Shop" is not a namespace name`},
		{"stat", "resource=deploy&name=web%22%7D", "name", `is not a deployment name`},
		{"stat", "resource=svc&name=a.b", "name", `is not a service name`},
		{"stat", "resource=deploy&window=forever", "window", "not a duration"},
		{"stat", "resource=deploy&window=500ms", "window", "not whole seconds from 1s to 24h0m0s"},
		{"stat", "resource=deploy&window=25h", "window", "not whole seconds"},
		{"stat", "resource=deploy&window=1.5s", "window", "not whole seconds"},
		{"stat", "resource=deploy&to=widget/x", "to", "unknown resource type"},
		{"stat", "resource=deploy&to=deploy/X", "to", "is not a deployment name"},
		{"stat", "resource=deploy&to_namespace=shop", "to_namespace", "given without to"},
		{"stat", "resource=deploy&to=deploy/a&to_namespace=a_b", "to_namespace", "not a namespace name"},
		{"stat", "resource=deploy&to=deploy/a&from=deploy/b", "from", "exclude each other"},
		{"stat", "resource=deploy&from=svc/web", "from", "from must be a workload"},
		{"edges", "resource=svc", "resource", "not services"},
		{"edges", "resource=deploy&name=web", "name", "not accepted"},
		{"top-routes", "resource=deploy&window=0s", "window", "not whole seconds"},
		{"top-routes", "resource=po&to=svc/", "", ""}, // an empty name is "any": accepted
	} {
		t.Run(tc.endpoint+"?"+tc.query, func(t *testing.T) {
			q, _ := url.ParseQuery(tc.query)
			var err error
			switch tc.endpoint {
			case "stat":
				_, err = ParseStatRequest(q)
			case "edges":
				_, err = ParseEdgesRequest(q)
			case "top-routes":
				_, err = ParseTopRoutesRequest(q)
			}
			if tc.param == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("got %v, want an *Error", err)
			}
			if e.Status != http.StatusBadRequest || e.Param != tc.param || !strings.Contains(e.Message, tc.inMessage) {
				t.Errorf("got %d %q %q, want 400 naming %q with %q", e.Status, e.Param, e.Message, tc.param, tc.inMessage)
			}
		})
	}
}

// TestParseResourceType accepts canonical names, plurals and short names.
func TestParseResourceType(t *testing.T) {
	for in, want := range map[string]ResourceType{
		"deploy": Deployment, "STS": StatefulSet, "daemonsets": DaemonSet, "jobs": Job,
		"po": Pod, "namespace": Namespace, "svc": Service,
	} {
		if got, err := ParseResourceType(in); err != nil || got != want {
			t.Errorf("ParseResourceType(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseResourceType("replicaset"); err == nil {
		t.Error("ParseResourceType accepted replicaset")
	}
}
