package k8s_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/sluice-mesh/sluice/controlplane/k8s"
)

// hang bounds waits that should end far sooner; it is no assertion on time.
const hang = 20 * time.Second

// started starts api and waits for its caches; it stops in t.Cleanup.
func started(t *testing.T, api *k8s.API) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		api.Wait()
	})
	api.Start(ctx)
	sctx, scancel := context.WithTimeout(ctx, hang)
	defer scancel()
	if err := api.Sync(sctx); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

const workloads = `
apiVersion: v1
kind: Pod
metadata:
  name: bare
  namespace: default
---
# A Deployment's ReplicaSet and pod.
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web-5d9f7c
  namespace: default
  ownerReferences:
  - {apiVersion: apps/v1, kind: Deployment, name: web, uid: d1, controller: true}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-5d9f7c-abcde
  namespace: default
  labels: {pod-template-hash: 5d9f7c}
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: web-5d9f7c, uid: r1, controller: true}
  managedFields:
  - {manager: kubectl, operation: Update, apiVersion: v1}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: lonely
  namespace: default
---
apiVersion: v1
kind: Pod
metadata:
  name: lonely-xyz
  namespace: default
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: lonely, uid: r2, controller: true}
---
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: default
  ownerReferences:
  - {apiVersion: apps/v1, kind: StatefulSet, name: db, uid: s1, controller: true}
---
apiVersion: v1
kind: Pod
metadata:
  name: agent-q8x
  namespace: kube-system
  ownerReferences:
  - {apiVersion: apps/v1, kind: DaemonSet, name: agent, uid: ds1, controller: true}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: backup-2900
  namespace: default
  ownerReferences:
  - {apiVersion: batch/v1, kind: CronJob, name: backup, uid: cj1, controller: true}
---
apiVersion: v1
kind: Pod
metadata:
  name: backup-2900-p1
  namespace: default
  ownerReferences:
  - {apiVersion: batch/v1, kind: Job, name: backup-2900, uid: j1, controller: true}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: migrate
  namespace: default
---
apiVersion: v1
kind: Pod
metadata:
  name: migrate-p1
  namespace: default
  ownerReferences:
  - {apiVersion: batch/v1, kind: Job, name: migrate, uid: j2, controller: true}
---
# A pod whose ReplicaSet is not (yet) in the cache.
apiVersion: v1
kind: Pod
metadata:
  name: api-7c6b5-zzz
  namespace: default
  labels: {pod-template-hash: 7c6b5}
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: api-7c6b5, uid: r3, controller: true}
---
# A pod with an owner that is not its controller.
apiVersion: v1
kind: Pod
metadata:
  name: adopted
  namespace: default
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: lonely, uid: r2}
`

func TestGetOwnerKindAndName(t *testing.T) {
	full, err := k8s.NewFakeAPI(workloads)
	if err != nil {
		t.Fatal(err)
	}
	started(t, full)
	cs, err := k8s.NewFakeClientset(workloads)
	if err != nil {
		t.Fatal(err)
	}
	podsOnly := k8s.NewAPI(cs, k8s.Pod)
	started(t, podsOnly)

	tests := []struct {
		ns, pod string
		kind    string
		name    string
		// podsOnly: what an API without ReplicaSet and Job says.
		podsOnlyKind, podsOnlyName string
	}{
		{"default", "bare", "pod", "bare", "pod", "bare"},
		{"default", "web-5d9f7c-abcde", "deployment", "web", "deployment", "web"},
		{"default", "lonely-xyz", "replicaset", "lonely", "replicaset", "lonely"},
		{"default", "db-0", "statefulset", "db", "statefulset", "db"},
		{"kube-system", "agent-q8x", "daemonset", "agent", "daemonset", "agent"},
		{"default", "backup-2900-p1", "cronjob", "backup", "job", "backup-2900"},
		{"default", "migrate-p1", "job", "migrate", "job", "migrate"},
		{"default", "api-7c6b5-zzz", "deployment", "api", "deployment", "api"},
		{"default", "adopted", "pod", "adopted", "pod", "adopted"},
	}
	for _, tt := range tests {
		t.Run(tt.pod, func(t *testing.T) {
			pod, err := full.Pod().Lister().Pods(tt.ns).Get(tt.pod)
			if err != nil {
				t.Fatal(err)
			}
			if kind, name := full.GetOwnerKindAndName(pod); kind != tt.kind || name != tt.name {
				t.Errorf("GetOwnerKindAndName = %s/%s, want %s/%s", kind, name, tt.kind, tt.name)
			}
			if kind, name := podsOnly.GetOwnerKindAndName(pod); kind != tt.podsOnlyKind || name != tt.podsOnlyName {
				t.Errorf("without ReplicaSet and Job: GetOwnerKindAndName = %s/%s, want %s/%s", kind, name, tt.podsOnlyKind, tt.podsOnlyName)
			}
		})
	}
}

func TestCachedObjectsHaveNoManagedFields(t *testing.T) {
	api, err := k8s.NewFakeAPI(workloads)
	if err != nil {
		t.Fatal(err)
	}
	started(t, api)
	pod, err := api.Pod().Lister().Pods("default").Get("web-5d9f7c-abcde")
	if err != nil {
		t.Fatal(err)
	}
	if len(pod.ManagedFields) != 0 {
		t.Errorf("cached pod has managedFields %v", pod.ManagedFields)
	}
	if pod.Labels["pod-template-hash"] != "5d9f7c" {
		t.Errorf("cached pod lost its labels: %v", pod.Labels)
	}
}

func TestInformersFollowChanges(t *testing.T) {
	api, err := k8s.NewFakeAPI()
	if err != nil {
		t.Fatal(err)
	}
	started(t, api)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "late", Namespace: "default"}}
	if _, err := api.Client().CoreV1().Pods("default").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(hang)
	for {
		if _, err := api.Pod().Lister().Pods("default").Get("late"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pod created through the client never reached the lister")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAccessorOfResourceNotAskedForPanics(t *testing.T) {
	cs, err := k8s.NewFakeClientset()
	if err != nil {
		t.Fatal(err)
	}
	api := k8s.NewAPI(cs, k8s.Pod, k8s.EndpointSlice)
	if !api.Serves(k8s.Pod) || api.Serves(k8s.Service) {
		t.Errorf("Serves(Pod)=%v Serves(Service)=%v, want true, false", api.Serves(k8s.Pod), api.Serves(k8s.Service))
	}
	api.Pod() // asked for: no panic
	defer func() {
		r := recover()
		msg, _ := r.(string)
		for _, want := range []string{"services", "k8s.Service", "Pod, EndpointSlice"} {
			if !strings.Contains(msg, want) {
				t.Errorf("panic %q does not mention %q", r, want)
			}
		}
	}()
	api.Service()
	t.Error("Service() did not panic on an API built without it")
}

func TestSync(t *testing.T) {
	t.Run("before start", func(t *testing.T) {
		api, err := k8s.NewFakeAPI()
		if err != nil {
			t.Fatal(err)
		}
		if err := api.Sync(context.Background()); !errors.Is(err, k8s.ErrNotStarted) {
			t.Errorf("Sync before Start = %v, want ErrNotStarted", err)
		}
		if api.HasSynced() {
			t.Error("HasSynced before Start")
		}
	})
	t.Run("a list that fails never syncs", func(t *testing.T) {
		cs, err := k8s.NewFakeClientset()
		if err != nil {
			t.Fatal(err)
		}
		cs.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, errors.New(`pods is forbidden: User "system:serviceaccount:sluice:sluice-destination" cannot list resource "pods"`)
		})
		api := k8s.NewAPI(cs, k8s.Service, k8s.Pod)
		ctx, cancel := context.WithCancel(context.Background())
		defer func() {
			cancel()
			api.Wait()
		}()
		api.Start(ctx)
		sctx, scancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer scancel()
		err = api.Sync(sctx)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "pods not synced") || strings.Contains(err.Error(), "services") {
			t.Errorf("Sync = %v, want a deadline error naming pods (only)", err)
		}
		if api.HasSynced() {
			t.Error("HasSynced with the pod list failing")
		}
	})
	t.Run("synced", func(t *testing.T) {
		api, err := k8s.NewFakeAPI(workloads)
		if err != nil {
			t.Fatal(err)
		}
		started(t, api)
		if !api.HasSynced() {
			t.Error("HasSynced false after Sync")
		}
		pods, err := api.Pod().Lister().List(labels.Everything())
		if err != nil || len(pods) != 9 {
			t.Errorf("lister has %d pods (err %v), want the manifest's 9", len(pods), err)
		}
	})
}

func TestDecodeManifests(t *testing.T) {
	tests := []struct {
		name      string
		manifests []string
		want      int
		err       string
	}{
		{"none", nil, 0, ""},
		{"empty and comment-only documents", []string{"", "---\n# nothing\n---\n"}, 0, ""},
		{"several documents and manifests", []string{workloads, "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"}, 14, ""},
		{"JSON", []string{`{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}`}, 1, ""},
		{"unknown kind", []string{"apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n"}, 0, "manifest 1, document 1"},
		{"not YAML", []string{"---\napiVersion: v1\nkind: Pod\n---\n: : :\n  - ["}, 0, "document 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := k8s.DecodeManifests(tt.manifests...)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Errorf("DecodeManifests error = %v, want one naming %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) != tt.want {
				t.Errorf("decoded %d objects, want %d", len(objs), tt.want)
			}
		})
	}
	if _, err := k8s.NewFakeClientset(workloads, workloads); err == nil || !strings.Contains(err.Error(), "Pod default/bare") {
		t.Errorf("NewFakeClientset with duplicates: %v, want an error naming Pod default/bare", err)
	}
}
