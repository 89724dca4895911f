package tap

import (
	"encoding/json"
	"net/http"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/controlplane/tap/tapapi"
)

// The discovery documents the aggregator reads (it falls back from
// aggregated discovery to these legacy ones) and probes for the
// APIService's Available condition. Only the tap subresources are listed,
// with the single verb watch: no list or delete, so that the garbage
// collector and the namespace controller, which walk every listable
// resource, never call this service.

func groupVersionForDiscovery() metav1.GroupVersionForDiscovery {
	return metav1.GroupVersionForDiscovery{GroupVersion: tapapi.GroupVersion, Version: tapapi.Version}
}

func apiGroup() metav1.APIGroup {
	return metav1.APIGroup{
		TypeMeta:         metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"},
		Name:             tapapi.Group,
		Versions:         []metav1.GroupVersionForDiscovery{groupVersionForDiscovery()},
		PreferredVersion: groupVersionForDiscovery(),
	}
}

func apiGroupList() metav1.APIGroupList {
	return metav1.APIGroupList{
		TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"},
		Groups:   []metav1.APIGroup{apiGroup()},
	}
}

func apiResourceList() metav1.APIResourceList {
	l := metav1.APIResourceList{
		TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
		GroupVersion: tapapi.GroupVersion,
	}
	for _, t := range tapapi.Types() {
		l.APIResources = append(l.APIResources, metav1.APIResource{
			Name:       t.Plural + "/" + tapapi.Subresource,
			Namespaced: t.Namespaced,
			Kind:       "Tap",
			Verbs:      metav1.Verbs{tapapi.Verb},
		})
	}
	return l
}

// serveDocument answers GET and HEAD with v in JSON.
func serveDocument(w http.ResponseWriter, r *http.Request, v any) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeStatus(w, &apiError{code: http.StatusMethodNotAllowed, reason: metav1.StatusReasonMethodNotAllowed, outcome: outcomeBadRequest,
			msg: r.Method + " is not allowed on " + r.URL.Path + ": discovery documents are read with GET"})
		return
	}
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Write(append(b, '\n'))
}
