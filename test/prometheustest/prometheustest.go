// Package prometheustest runs Debian's real Prometheus (/usr/bin/prometheus,
// the "prometheus" package) for tests: on a free loopback port, with a
// temporary configuration and data directory, scraping the given static
// targets every second with the given target labels (as Kubernetes
// relabelling would add namespace, pod, deployment, ...). Start returns
// once Prometheus is ready and has scraped every target once; t.Cleanup
// stops it and removes everything it wrote.
//
// Without the binary, Start skips the test with a message saying what to
// install, or fails it in CI (environment CI=true).
package prometheustest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"sigs.k8s.io/yaml"
)

// Binary is where Debian's prometheus package installs Prometheus.
const Binary = "/usr/bin/prometheus"

// Target is an HTTP endpoint Prometheus scrapes.
type Target struct {
	// Addr is the target's host:port, such as "127.0.0.1:4191".
	Addr string
	// Path is its metrics path; "" means /metrics.
	Path string
	// Labels are added to every series scraped from it, such as
	// {"namespace": "shop", "pod": "web-1", "deployment": "web"}.
	Labels map[string]string
}

// Options of Start.
type Options struct {
	// Targets are the endpoints to scrape, all in one scrape job named
	// "sluice-proxy".
	Targets []Target
	// ScrapeInterval is how often each target is scraped; 0 means 1s.
	ScrapeInterval time.Duration
	// Binary is the Prometheus program; "" means Binary.
	Binary string
	// StartTimeout bounds the wait for readiness and the first scrapes;
	// 0 means one minute.
	StartTimeout time.Duration
}

// Prometheus is a running Prometheus.
type Prometheus struct {
	// URL is the base URL of its HTTP API: "http://127.0.0.1:<port>".
	URL string
	// API is a client of its HTTP API.
	API promv1.API
	// Dir holds its configuration (prometheus.yml), data (data/) and log
	// (prometheus.log); it is removed after the test.
	Dir string
}

// JobName is the scrape job of the targets (their "job" label).
const JobName = "sluice-proxy"

// Start runs Prometheus scraping o.Targets and returns once it is ready
// and every target has been scraped successfully once. It fails the test
// (with Prometheus' log and the targets' last errors) if that does not
// happen within o.StartTimeout.
func Start(t testing.TB, o Options) *Prometheus {
	t.Helper()
	if o.Binary == "" {
		o.Binary = Binary
	}
	if _, err := os.Stat(o.Binary); err != nil {
		msg := fmt.Sprintf("prometheustest: %s not found (apt-get install prometheus): %v", o.Binary, err)
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s (CI=true: failing instead of skipping)", msg)
		}
		t.Skip(msg)
	}
	if o.ScrapeInterval <= 0 {
		o.ScrapeInterval = time.Second
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = time.Minute
	}
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "prometheus.yml")
	cfg, err := config(o)
	if err != nil {
		t.Fatalf("prometheustest: %v", err)
	}
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		t.Fatalf("prometheustest: write config: %v", err)
	}
	logPath := filepath.Join(dir, "prometheus.log")

	// A free port may be taken between our probe and Prometheus' bind: try
	// a few.
	var p *Prometheus
	for attempt := 0; ; attempt++ {
		var retry bool
		p, retry = start(t, o, dir, cfgPath, logPath)
		if p != nil || !retry || attempt == 2 {
			break
		}
	}
	if p == nil {
		t.Fatalf("prometheustest: Prometheus did not start; log:\n%s", tail(logPath))
	}
	return p
}

// start runs Prometheus once. It returns nil and retry=true when
// Prometheus exited early because its port was taken.
func start(t testing.TB, o Options, dir, cfgPath, logPath string) (*Prometheus, bool) {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatalf("prometheustest: %v", err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("prometheustest: open log: %v", err)
	}
	defer logf.Close()
	cmd := exec.Command(o.Binary,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--log.level=info",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		t.Fatalf("prometheustest: start %s: %v", o.Binary, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		select {
		case <-exited:
			return
		default:
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("prometheustest: Prometheus' log:\n%s", tail(logPath))
		}
	})

	url := "http://" + addr
	client, err := promapi.NewClient(promapi.Config{Address: url})
	if err != nil {
		t.Fatalf("prometheustest: %v", err)
	}
	p := &Prometheus{URL: url, API: promv1.NewAPI(client), Dir: dir}
	ctx, cancel := context.WithTimeout(context.Background(), o.StartTimeout)
	defer cancel()
	var last string
	for {
		select {
		case <-exited:
			log := tail(logPath)
			if strings.Contains(log, "address already in use") {
				return nil, true
			}
			t.Fatalf("prometheustest: Prometheus exited (%v) before it was ready; log:\n%s", cmd.ProcessState, log)
		case <-ctx.Done():
			t.Fatalf("prometheustest: Prometheus at %s not ready with every target scraped after %s: %s; log:\n%s", url, o.StartTimeout, last, tail(logPath))
		case <-time.After(100 * time.Millisecond):
		}
		var done bool
		done, last = p.scrapedAll(ctx, len(o.Targets))
		if done {
			return p, false
		}
	}
}

// scrapedAll reports whether Prometheus is ready and n targets are up, or
// says what it still waits for.
func (p *Prometheus) scrapedAll(ctx context.Context, n int) (bool, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+"/-/ready", nil)
	if err != nil {
		return false, err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, "not ready: " + err.Error()
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, "not ready: " + resp.Status
	}
	ts, err := p.API.Targets(ctx)
	if err != nil {
		return false, "list targets: " + err.Error()
	}
	var waiting []string
	up := 0
	for _, at := range ts.Active {
		if at.Health == promv1.HealthGood && !at.LastScrape.IsZero() {
			up++
			continue
		}
		waiting = append(waiting, fmt.Sprintf("%s: %s %s", at.ScrapeURL, at.Health, at.LastError))
	}
	if up >= n {
		return true, ""
	}
	return false, fmt.Sprintf("%d of %d targets up; waiting for %s", up, n, strings.Join(waiting, ", "))
}

// scrapeConfig and its parts are the subset of Prometheus' configuration
// Start writes.
type scrapeConfig struct {
	Global        globalConfig `json:"global"`
	ScrapeConfigs []scrapeJob  `json:"scrape_configs"`
}

type globalConfig struct {
	ScrapeInterval     string `json:"scrape_interval"`
	ScrapeTimeout      string `json:"scrape_timeout"`
	EvaluationInterval string `json:"evaluation_interval"`
}

type scrapeJob struct {
	JobName       string         `json:"job_name"`
	StaticConfigs []staticConfig `json:"static_configs"`
}

type staticConfig struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels,omitempty"`
}

// config returns Prometheus' configuration for o: one job, one static
// config per target (a target's path is its __metrics_path__ label).
func config(o Options) ([]byte, error) {
	interval := promDuration(o.ScrapeInterval)
	job := scrapeJob{JobName: JobName, StaticConfigs: []staticConfig{}}
	for _, tg := range o.Targets {
		if _, _, err := net.SplitHostPort(tg.Addr); err != nil {
			return nil, fmt.Errorf("target %q: %w", tg.Addr, err)
		}
		labels := map[string]string{}
		for k, v := range tg.Labels {
			labels[k] = v
		}
		if tg.Path != "" {
			labels["__metrics_path__"] = tg.Path
		}
		job.StaticConfigs = append(job.StaticConfigs, staticConfig{Targets: []string{tg.Addr}, Labels: labels})
	}
	b, err := yaml.Marshal(scrapeConfig{
		Global:        globalConfig{ScrapeInterval: interval, ScrapeTimeout: interval, EvaluationInterval: interval},
		ScrapeConfigs: []scrapeJob{job},
	})
	if err != nil {
		return nil, fmt.Errorf("marshal config: %w", err)
	}
	return b, nil
}

// promDuration writes d in Prometheus' duration syntax (milliseconds).
func promDuration(d time.Duration) string {
	return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tail returns the last 4 KiB of the file at path.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "(no log)"
		}
		return err.Error()
	}
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}
