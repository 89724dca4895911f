package podwatch_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// fakeAPIServer serves just enough of the Kubernetes API for a pod
// informer in another process: listing and watching /api/v1/pods (as plain
// lists and watches, and as watch-lists with initial events) over pods the
// test creates and deletes. Selectors are ignored: every pod is on the
// test's node.
type fakeAPIServer struct {
	srv *httptest.Server

	mu      sync.Mutex
	rv      int
	pods    map[string]*corev1.Pod // by name
	history []podEvent
	changed chan struct{} // closed and replaced on every change
}

type podEvent struct {
	Type   string      `json:"type"`
	Object *corev1.Pod `json:"object"`
	rv     int
}

func startFakeAPIServer(t *testing.T) *fakeAPIServer {
	t.Helper()
	s := &fakeAPIServer{pods: map[string]*corev1.Pod{}, changed: make(chan struct{})}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

// kubeconfig writes a kubeconfig for the server and returns its path.
func (s *fakeAPIServer) kubeconfig(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster: {server: %q}
users:
- name: fake
  user: {}
contexts:
- name: fake
  context: {cluster: fake, user: fake}
current-context: fake
`, s.srv.URL)
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (s *fakeAPIServer) create(p *corev1.Pod) { s.record("ADDED", p.DeepCopy()) }

func (s *fakeAPIServer) delete(name string) {
	s.mu.Lock()
	p := s.pods[name]
	s.mu.Unlock()
	if p != nil {
		s.record("DELETED", p.DeepCopy())
	}
}

func (s *fakeAPIServer) record(typ string, p *corev1.Pod) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rv++
	p.ResourceVersion = strconv.Itoa(s.rv)
	if typ == "DELETED" {
		delete(s.pods, p.Name)
	} else {
		s.pods[p.Name] = p
	}
	s.history = append(s.history, podEvent{Type: typ, Object: p, rv: s.rv})
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *fakeAPIServer) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/api/v1/pods" {
		http.Error(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}`, http.StatusNotFound)
		return
	}
	q := r.URL.Query()
	w.Header().Set("Content-Type", "application/json")
	if q.Get("watch") != "true" && q.Get("watch") != "1" {
		s.mu.Lock()
		list := corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}, ListMeta: metav1.ListMeta{ResourceVersion: strconv.Itoa(s.rv)}}
		for _, p := range s.pods {
			list.Items = append(list.Items, *p)
		}
		s.mu.Unlock()
		_ = json.NewEncoder(w).Encode(list)
		return
	}
	fl, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	send := func(ev podEvent) bool {
		ev.Object.Kind, ev.Object.APIVersion = "Pod", "v1"
		if err := enc.Encode(ev); err != nil {
			return false
		}
		fl.Flush()
		return true
	}
	from, _ := strconv.Atoi(q.Get("resourceVersion"))
	s.mu.Lock()
	if q.Get("sendInitialEvents") == "true" {
		// A watch-list: the current pods, a bookmark, then changes.
		initial := make([]podEvent, 0, len(s.pods)+1)
		for _, p := range s.pods {
			initial = append(initial, podEvent{Type: "ADDED", Object: p.DeepCopy()})
		}
		from = s.rv
		initial = append(initial, podEvent{Type: "BOOKMARK", Object: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
			ResourceVersion: strconv.Itoa(s.rv), Annotations: map[string]string{metav1.InitialEventsAnnotationKey: "true"},
		}}})
		s.mu.Unlock()
		w.WriteHeader(http.StatusOK)
		for _, ev := range initial {
			if !send(ev) {
				return
			}
		}
	} else {
		s.mu.Unlock()
		w.WriteHeader(http.StatusOK)
		fl.Flush()
	}
	for {
		s.mu.Lock()
		var evs []podEvent
		for _, ev := range s.history {
			if ev.rv > from {
				evs = append(evs, podEvent{Type: ev.Type, Object: ev.Object.DeepCopy(), rv: ev.rv})
			}
		}
		changed := s.changed
		s.mu.Unlock()
		for _, ev := range evs {
			if !send(ev) {
				return
			}
			from = ev.rv
		}
		select {
		case <-r.Context().Done():
			return
		case <-changed:
		}
	}
}
