// Package tapapi holds what the tap service and its clients agree on beyond
// the protobuf messages of controlplane/api/tap: the aggregated API group
// and version, the resource types one can tap with their plural and short
// names, the URL paths of a tap and the media types of its bodies.
package tapapi

import (
	"fmt"
	"net/url"
	"strings"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
)

// The aggregated API.
const (
	// Group is the API group the tap service serves.
	Group = "tap.sluice.io"
	// Version is its only version.
	Version = "v1alpha1"
	// GroupVersion is Group/Version.
	GroupVersion = Group + "/" + Version
	// APIServiceName is the name of the APIService that registers it.
	APIServiceName = Version + "." + Group
	// Subresource is the subresource of every type one taps, and Verb the
	// verb: a user needs "watch" on "<plural>/tap" in tap.sluice.io.
	Subresource = "tap"
	Verb        = "watch"
)

// Media types of a tap's request and response bodies.
const (
	// ContentTypeProtobuf is a TapByResourceRequest in protobuf's binary
	// form; ContentTypeXProtobuf is accepted as its synonym.
	ContentTypeProtobuf  = "application/vnd.sluice.tap.v1+protobuf"
	ContentTypeXProtobuf = "application/x-protobuf"
	// ContentTypeJSON is a TapByResourceRequest in protojson.
	ContentTypeJSON = "application/json"
	// StreamProtobuf is the response of a tap asked with any Accept but
	// application/json: TapEvents, each preceded by its length as a
	// varint (google.golang.org/protobuf/encoding/protodelim).
	StreamProtobuf = ContentTypeProtobuf + ";stream=delimited"
	// StreamJSON is the response of a tap asked with Accept:
	// application/json: one protojson TapEvent per line.
	StreamJSON = ContentTypeJSON + ";stream=newline"
)

// Type is a kind of resource one can tap.
type Type struct {
	// Name is the singular lowercase name, the canonical form in requests
	// and the key of the destination label that names such a resource
	// (deployment=web).
	Name string
	// Plural is the name in URLs, RBAC rules and SubjectAccessReviews.
	Plural string
	// Short are the short names kubectl knows it by.
	Short []string
	// Kind is the Kubernetes kind.
	Kind string
	// Namespaced is false for namespaces only.
	Namespaced bool
}

// types are the resource types one can tap, in the order discovery lists
// them.
var types = [...]Type{
	{Name: "namespace", Plural: "namespaces", Short: []string{"ns"}, Kind: "Namespace"},
	{Name: "pod", Plural: "pods", Short: []string{"po"}, Kind: "Pod", Namespaced: true},
	{Name: "deployment", Plural: "deployments", Short: []string{"deploy"}, Kind: "Deployment", Namespaced: true},
	{Name: "replicaset", Plural: "replicasets", Short: []string{"rs"}, Kind: "ReplicaSet", Namespaced: true},
	{Name: "statefulset", Plural: "statefulsets", Short: []string{"sts"}, Kind: "StatefulSet", Namespaced: true},
	{Name: "daemonset", Plural: "daemonsets", Short: []string{"ds"}, Kind: "DaemonSet", Namespaced: true},
	{Name: "job", Plural: "jobs", Kind: "Job", Namespaced: true},
	{Name: "cronjob", Plural: "cronjobs", Short: []string{"cj"}, Kind: "CronJob", Namespaced: true},
	{Name: "service", Plural: "services", Short: []string{"svc"}, Kind: "Service", Namespaced: true},
}

// Types returns the resource types one can tap.
func Types() []Type {
	out := make([]Type, len(types))
	copy(out, types[:])
	return out
}

// LookupType finds a type by its singular, plural or short name, in any
// case.
func LookupType(s string) (Type, bool) {
	s = strings.ToLower(s)
	for _, t := range types {
		if s == t.Name || s == t.Plural {
			return t, true
		}
		for _, sh := range t.Short {
			if s == sh {
				return t, true
			}
		}
	}
	return Type{}, false
}

// TypeNames returns the singular names of the types, for messages.
func TypeNames() []string {
	out := make([]string, len(types))
	for i, t := range types {
		out[i] = t.Name
	}
	return out
}

// ParseResource parses "type/name" (deploy/web) or a bare type (deploy,
// meaning every deployment) as kubectl does, in namespace ns. For type
// namespace, "ns/shop" names the namespace shop and a bare "ns" names ns.
func ParseResource(s, ns string) (*tappb.Resource, error) {
	typ, name, _ := strings.Cut(s, "/")
	t, ok := LookupType(typ)
	if !ok {
		return nil, fmt.Errorf("parse resource %q: unknown type %q (want one of %s)", s, typ, strings.Join(TypeNames(), ", "))
	}
	if strings.Contains(name, "/") {
		return nil, fmt.Errorf("parse resource %q: want type/name", s)
	}
	if t.Name == "namespace" {
		if name != "" {
			ns = name
		}
		name = ns
	}
	return &tappb.Resource{Namespace: ns, Type: t.Name, Name: name}, nil
}

// WatchPath returns the path, below the API server's root, to POST a tap
// of target to: .../watch/namespaces/{ns}/{plural}/{name}/tap for one
// object, a namespace included (namespaces/{ns}), and
// .../watch/namespaces/{ns}/tap for every object of a type in a namespace
// (the type then goes in the request's body), below
// /apis/tap.sluice.io/v1alpha1. The API server authorizes the first form
// as watch on <plural>/tap named {name}, exactly as the tap service does;
// it parses the second as resource "tap" in {ns}.
func WatchPath(target *tappb.Resource) (string, error) {
	if target.GetNamespace() == "" {
		return "", fmt.Errorf("tap target %s/%s: no namespace", target.GetType(), target.GetName())
	}
	t, ok := LookupType(target.GetType())
	if !ok {
		return "", fmt.Errorf("tap target: unknown type %q (want one of %s)", target.GetType(), strings.Join(TypeNames(), ", "))
	}
	base := "/apis/" + GroupVersion + "/watch/namespaces/" + url.PathEscape(target.GetNamespace())
	if target.GetName() == "" {
		return base + "/" + Subresource, nil
	}
	return base + "/" + t.Plural + "/" + url.PathEscape(target.GetName()) + "/" + Subresource, nil
}

// String formats r as users write it: "deployment/web in namespace shop",
// "namespace shop" or "every deployment in namespace shop".
func String(r *tappb.Resource) string {
	switch {
	case r.GetType() == "namespace":
		return "namespace " + r.GetName()
	case r.GetName() == "":
		return "every " + r.GetType() + " in namespace " + r.GetNamespace()
	}
	return r.GetType() + "/" + r.GetName() + " in namespace " + r.GetNamespace()
}
