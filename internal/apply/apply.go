// Package apply creates, updates and deletes Kubernetes objects given as
// unstructured manifests, with server-side apply: what `meshctl install`
// and `uninstall` do with the rendered chart, and what the end-to-end tests
// do with their fixtures.
package apply

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// Applier applies objects to one cluster.
type Applier struct {
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
	// FieldManager names the applier in managedFields.
	FieldManager string
}

// New returns an Applier for the cluster of cfg.
func New(cfg *rest.Config, fieldManager string) (*Applier, error) {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("make a dynamic client: %w", err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("make a discovery client: %w", err)
	}
	return &Applier{
		dyn:          dyn,
		mapper:       restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)),
		FieldManager: fieldManager,
	}, nil
}

// resource returns the client of obj's kind, in its namespace when the
// kind is namespaced.
func (a *Applier) resource(obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		// A kind registered since discovery was cached (a CRD, an APIService).
		a.mapper.Reset()
		m, err = a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: the cluster does not serve this kind: %w", gvk.Kind, obj.GetName(), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ns := obj.GetNamespace()
		if ns == "" {
			return nil, fmt.Errorf("%s %s is namespaced but has no namespace", gvk.Kind, obj.GetName())
		}
		return a.dyn.Resource(m.Resource).Namespace(ns), nil
	}
	return a.dyn.Resource(m.Resource), nil
}

// Apply applies each object in order with server-side apply, taking
// ownership of fields another manager set (as `kubectl apply
// --server-side --force-conflicts`). It stops at the first error, which
// names the object.
func (a *Applier) Apply(ctx context.Context, objs []*unstructured.Unstructured) error {
	force := true
	for _, obj := range objs {
		r, err := a.resource(obj)
		if err != nil {
			return err
		}
		if _, err := r.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: a.FieldManager, Force: force}); err != nil {
			return fmt.Errorf("apply %s %s: %w", obj.GetKind(), Name(obj), err)
		}
	}
	return nil
}

// Delete deletes the objects in reverse order, in the background; objects
// already gone, and kinds the cluster no longer serves, are skipped. It
// goes on after an error and returns them all.
func (a *Applier) Delete(ctx context.Context, objs []*unstructured.Unstructured) error {
	var errs []error
	policy := metav1.DeletePropagationBackground
	for i := len(objs) - 1; i >= 0; i-- {
		obj := objs[i]
		r, err := a.resource(obj)
		if err != nil {
			if meta.IsNoMatchError(errors.Unwrap(err)) {
				continue
			}
			errs = append(errs, err)
			continue
		}
		err = r.Delete(ctx, obj.GetName(), metav1.DeleteOptions{PropagationPolicy: &policy})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s %s: %w", obj.GetKind(), Name(obj), err))
		}
	}
	return errors.Join(errs...)
}

// Name is "namespace/name", or "name" for a cluster-scoped object.
func Name(obj *unstructured.Unstructured) string {
	if ns := obj.GetNamespace(); ns != "" {
		return ns + "/" + obj.GetName()
	}
	return obj.GetName()
}
