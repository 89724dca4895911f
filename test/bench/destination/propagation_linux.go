package destination

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/proxy/discovery"
	"github.com/sluice-mesh/sluice/test/bench/benchkit"
)

// Size is one benchmark configuration.
type Size struct {
	// Services is how many services there are, each with a stream open.
	Services int
	// PerService is how many endpoints each has.
	PerService int
	// Changes is how many endpoint changes are timed, one at a time, over
	// the services in turn.
	Changes int
}

// Endpoints is the number of endpoints in all.
func (s Size) Endpoints() int { return s.Services * s.PerService }

// Result is what one Run measured.
type Result struct {
	Size Size
	// Latencies are the timed changes' propagation times, sorted.
	Latencies []time.Duration
	// RSS is the destination process's resident set (KiB) after every
	// stream was answered and after the changes; HWM its peak.
	RSSLoaded, RSSAfter, HWM int64
	// Setup is how long creating the objects and syncing took.
	Setup time.Duration
	// UpdatesSent is the destination service's own count of updates sent,
	// from its metrics.
	UpdatesSent float64
}

// Quantile returns the q-quantile (nearest rank) of the latencies.
func (r Result) Quantile(q float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(float64(len(r.Latencies))*q+0.5) - 1
	return r.Latencies[min(max(i, 0), len(r.Latencies)-1)]
}

// Config is what Run needs.
type Config struct {
	// Client is an admin client of the cluster; Kubeconfig the same
	// credentials as a file, for the destination process.
	Client     kubernetes.Interface
	Kubeconfig string
	// Controller is the sluice-controller program.
	Controller string
	// Log receives progress lines.
	Log io.Writer
}

// Run builds a namespace of s.Services services with s.PerService
// endpoints each, starts the destination service, opens a proxy discovery
// watch per service, times s.Changes endpoint changes, and removes
// everything it made, also on failure.
func Run(ctx context.Context, cfg Config, s Size) (Result, error) {
	res := Result{Size: s}
	start := time.Now()
	ns := fmt.Sprintf("dst-bench-%d-%d", s.Endpoints(), time.Now().UnixNano()%1e6)
	if _, err := cfg.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"sluice.test/bench": "destination"}}}, metav1.CreateOptions{}); err != nil {
		return res, fmt.Errorf("create namespace: %w", err)
	}
	defer deleteNamespace(cfg.Client, ns)
	if err := populate(ctx, cfg.Client, ns, s); err != nil {
		return res, err
	}
	fmt.Fprintf(cfg.Log, "destination bench: %d services × %d endpoints created in %s\n", s.Services, s.PerService, time.Since(start).Round(100*time.Millisecond))

	proc, err := startDestination(ctx, cfg)
	if err != nil {
		return res, err
	}
	defer proc.stop()

	conn, err := grpc.NewClient(proc.addr, append(discovery.DialOptions(discovery.Options{}), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		return res, err
	}
	defer conn.Close()
	dc := discovery.NewClient(conn, discovery.Options{ContextToken: fmt.Sprintf(`{"ns":%q}`, ns)})
	defer dc.Close()
	watches := make([]*discovery.Watch, s.Services)
	for i := range watches {
		watches[i] = dc.Watch(fmt.Sprintf("svc%d.%s.svc.cluster.local:80", i, ns))
		defer watches[i].Release()
	}
	for i, w := range watches {
		if err := waitEndpoints(ctx, w, s.PerService); err != nil {
			return res, fmt.Errorf("svc%d: %w", i, err)
		}
	}
	res.Setup = time.Since(start)
	if res.RSSLoaded, _, err = proc.memory(); err != nil {
		return res, err
	}

	slices := cfg.Client.DiscoveryV1().EndpointSlices(ns)
	for i := range s.Changes {
		// Each service in turn: its endpoint k/2 goes not ready (k even),
		// then ready again (k odd), so it holds PerService-1 or PerService.
		svc, k := i%s.Services, i/s.Services
		ep := (k / 2) % s.PerService
		ready := k%2 == 1
		want := s.PerService - 1
		if ready {
			want = s.PerService
		}
		sl, err := slices.Get(ctx, fmt.Sprintf("svc%d", svc), metav1.GetOptions{})
		if err != nil {
			return res, err
		}
		sl.Endpoints[ep].Conditions.Ready = ptr.To(ready)
		w := watches[svc]
		changed := w.Changed()
		t0 := time.Now()
		if _, err := slices.Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
			return res, fmt.Errorf("change %d: %w", i, err)
		}
		for len(w.Snapshot().Endpoints) != want {
			select {
			case <-changed:
				changed = w.Changed()
			case <-ctx.Done():
				return res, fmt.Errorf("change %d (svc%d endpoint %d ready=%t) never reached the proxy: it has %d endpoints, want %d", i, svc, ep, ready, len(w.Snapshot().Endpoints), want)
			}
		}
		res.Latencies = append(res.Latencies, time.Since(t0))
	}
	sort.Slice(res.Latencies, func(i, j int) bool { return res.Latencies[i] < res.Latencies[j] })
	if res.RSSAfter, res.HWM, err = proc.memory(); err != nil {
		return res, err
	}
	if m, err := benchkit.HTTPGet("http://" + proc.admin + "/metrics"); err == nil {
		res.UpdatesSent, _ = benchkit.SumMetric(string(m), "destination_updates_sent_total", "")
	}
	return res, nil
}

// populate creates the services, their pods (held back from scheduling by
// a gate, so no node runs them) and one EndpointSlice per service.
func populate(ctx context.Context, c kubernetes.Interface, ns string, s Size) error {
	if _, err := c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	work := make(chan func() error)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for f := range work {
				if err := f(); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := range s.Services {
		work <- func() error {
			svc := &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc%d", i)},
				// No selector: the benchmark writes the EndpointSlices.
				Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
			}
			_, err := c.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
			return err
		}
		for p := range s.PerService {
			work <- func() error {
				_, err := c.CoreV1().Pods(ns).Create(ctx, benchPod(i, p), metav1.CreateOptions{})
				return err
			}
		}
	}
	close(work)
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("create services and pods: %w (and %d more)", errs[0], len(errs)-1)
	}
	for i := range s.Services {
		sl := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				Name:   fmt.Sprintf("svc%d", i),
				Labels: map[string]string{discoveryv1.LabelServiceName: fmt.Sprintf("svc%d", i), discoveryv1.LabelManagedBy: "sluice-destination-bench"},
			},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
		}
		for p := range s.PerService {
			sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{podIP(i, p)},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: podName(i, p)},
			})
		}
		if _, err := c.DiscoveryV1().EndpointSlices(ns).Create(ctx, sl, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create EndpointSlice svc%d: %w", i, err)
		}
	}
	return nil
}

func podName(svc, p int) string { return fmt.Sprintf("svc%d-%d", svc, p) }

// podIP is a distinct address per endpoint in 10.200.0.0/16 and beyond.
func podIP(svc, p int) string {
	n := svc*1000 + p
	return fmt.Sprintf("10.%d.%d.%d", 200+n/65536, n/256%256, n%256)
}

// benchPod is a meshed pod that is never scheduled.
func benchPod(svc, p int) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:   podName(svc, p),
			Labels: map[string]string{"app": fmt.Sprintf("svc%d", svc), meshmeta.LabelControlPlaneNS: meshmeta.DefaultNamespace},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: "app",
			SchedulingGates:    []corev1.PodSchedulingGate{{Name: "sluice.io/destination-bench"}},
			Containers:         []corev1.Container{{Name: "app", Image: "sluice.test/never-runs:1"}},
		},
	}
}

// waitEndpoints waits until the watch holds n endpoints.
func waitEndpoints(ctx context.Context, w *discovery.Watch, n int) error {
	for {
		changed := w.Changed()
		snap := w.Snapshot()
		if len(snap.Endpoints) == n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("the proxy's watch holds %d endpoints (state %v), want %d: %w", len(snap.Endpoints), snap.State, n, ctx.Err())
		}
	}
}

// process is the running destination service.
type process struct {
	cmd         *exec.Cmd
	addr, admin string
	stderr      *benchkit.TailBuffer
	done        chan struct{}
}

func startDestination(ctx context.Context, cfg Config) (*process, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	p := &process{addr: addr, admin: admin, stderr: &benchkit.TailBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(cfg.Controller, "destination", "--kubeconfig", cfg.Kubeconfig, "--addr", addr, "--admin-addr", admin, "--log-level", "warn")
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the destination service: %w", err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	for {
		resp, err := http.Get("http://" + admin + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("the destination service exited: %s", p.stderr.String())
		case <-ctx.Done():
			p.stop()
			return nil, fmt.Errorf("the destination service never became ready: %w: %s", ctx.Err(), p.stderr.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// memory returns the process's VmRSS and VmHWM in KiB.
func (p *process) memory() (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read the destination service's memory: %w", err)
	}
	m, err := benchkit.ParseStatus(string(b))
	return m.RSS, m.HWM, err
}

func (p *process) stop() {
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// deleteNamespace deletes ns and waits (at most two minutes) until it is
// gone.
func deleteNamespace(c kubernetes.Interface, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		return
	}
	for ctx.Err() == nil {
		if _, err := c.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// Table renders results as a Markdown table.
func Table(rs []Result) string {
	var b strings.Builder
	b.WriteString("| endpoints | services × per service | changes | p50 | p90 | p99 | max | destination RSS loaded / after / peak | setup |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "| %d | %d × %d | %d | %s | %s | %s | %s | %.1f / %.1f / %.1f MB | %s |\n",
			r.Size.Endpoints(), r.Size.Services, r.Size.PerService, len(r.Latencies),
			ms(r.Quantile(0.5)), ms(r.Quantile(0.9)), ms(r.Quantile(0.99)), ms(r.Quantile(1)),
			benchkit.KiBToMB(r.RSSLoaded), benchkit.KiBToMB(r.RSSAfter), benchkit.KiBToMB(r.HWM),
			r.Setup.Round(time.Second))
	}
	return b.String()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
