// Package charts embeds Sluice's Helm chart (deploy/charts/sluice) and
// renders it with the Helm SDK into Kubernetes objects in install order, as
// `meshctl install` and the end-to-end tests do.
package charts

import (
	"embed"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	chartv2util "helm.sh/helm/v4/pkg/chart/v2/util"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

//go:embed all:sluice
var files embed.FS

// ChartName is the chart's folder and name.
const ChartName = "sluice"

// Load returns the embedded chart.
func Load() (*chart.Chart, error) {
	var bufs []*archive.BufferedFile
	err := fs.WalkDir(files, ChartName, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		bufs = append(bufs, &archive.BufferedFile{Name: strings.TrimPrefix(p, ChartName+"/"), Data: b})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the embedded chart: %w", err)
	}
	c, err := loader.LoadFiles(bufs)
	if err != nil {
		return nil, fmt.Errorf("load the embedded chart: %w", err)
	}
	return c, nil
}

// Options say how to render the chart.
type Options struct {
	// ReleaseName is the Helm release's name; default "sluice".
	ReleaseName string
	// Namespace is the control plane's namespace; default "sluice".
	Namespace string
	// Values override the chart's values.yaml (merged key by key).
	Values map[string]any
	// KubeVersion is the cluster's version, such as "v1.34.4", checked
	// against the chart's kubeVersion; empty: not checked.
	KubeVersion string
	// IsUpgrade renders for an upgrade of an installed release.
	IsUpgrade bool
}

// Render renders the chart and returns its objects in Helm's install order
// (namespaces, then RBAC, configuration, services, workloads, webhooks
// and API services), each with its namespace set when it is namespaced in
// the chart's templates.
func Render(o Options) ([]*unstructured.Unstructured, error) {
	if o.ReleaseName == "" {
		o.ReleaseName = "sluice"
	}
	if o.Namespace == "" {
		o.Namespace = "sluice"
	}
	c, err := Load()
	if err != nil {
		return nil, err
	}
	caps := common.DefaultCapabilities.Copy()
	if o.KubeVersion != "" {
		kv, err := common.ParseKubeVersion(o.KubeVersion)
		if err != nil {
			return nil, fmt.Errorf("kube version %q: %w", o.KubeVersion, err)
		}
		caps.KubeVersion = *kv
		if c.Metadata.KubeVersion != "" && !chartv2util.IsCompatibleRange(c.Metadata.KubeVersion, kv.String()) {
			return nil, fmt.Errorf("the chart needs Kubernetes %s; the cluster runs %s", c.Metadata.KubeVersion, kv.String())
		}
	}
	vals, err := chartutil.ToRenderValues(c, o.Values, common.ReleaseOptions{
		Name:      o.ReleaseName,
		Namespace: o.Namespace,
		IsInstall: !o.IsUpgrade,
		IsUpgrade: o.IsUpgrade,
		Revision:  1,
	}, caps)
	if err != nil {
		return nil, fmt.Errorf("chart values: %w", err)
	}
	rendered, err := engine.Render(c, vals)
	if err != nil {
		return nil, fmt.Errorf("render the chart: %w", err)
	}
	_, manifests, err := releaseutil.SortManifests(rendered, nil, releaseutil.InstallOrder)
	if err != nil {
		return nil, fmt.Errorf("sort the chart's manifests: %w", err)
	}
	var out []*unstructured.Unstructured
	for _, m := range manifests {
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(m.Content), &obj.Object); err != nil {
			return nil, fmt.Errorf("parse %s: %w", path.Base(m.Name), err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		if obj.GetKind() == "" || obj.GetAPIVersion() == "" {
			return nil, fmt.Errorf("%s renders an object without apiVersion or kind", m.Name)
		}
		out = append(out, obj)
	}
	return out, nil
}
