package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/test/proxytest"
)

// certLifetime is the proxies' certificate lifetime in these tests (the
// chart's identity.certLifetime): short, so that renewals happen while a
// test watches; they renew at 70 %, every 84 s.
const certLifetime = 2 * time.Minute

// renewalPeriod is how often the proxies renew with certLifetime.
const renewalPeriod = certLifetime * 7 / 10

// TestMTLSRenewal: with 2-minute certificates, a meshed client calling a
// meshed server in a steady loop sees its proxy renew its certificate
// twice with no failed request; then, with the identity service stopped
// for longer than a renewal period, requests keep working on the current
// certificates until one expires, and once identity returns both proxies
// renew and requests succeed again.
func TestMTLSRenewal(t *testing.T) {
	s := need(t)
	c := ctx(t, 10*time.Minute)
	ns := s.meshedNamespace(t, "renew")
	s.deployEcho(t, c, ns, "web", 1)
	client := s.clientLoop(t, c, ns, "client", "http://web."+ns+".svc.cluster.local/", 200*time.Millisecond)
	webID := meshmeta.IdentityName("default", ns, meshmeta.DefaultTrustDomain)

	// counts reads the client proxy's refreshes and its outbound responses.
	type counts struct{ refreshOK, refreshFailed, ok, failed float64 }
	read := func(c context.Context) counts {
		m := s.proxyMetrics(t, c, client)
		return counts{
			refreshOK:     m.Sum("identity_cert_refresh_total", proxytest.Labels{"result": "success"}),
			refreshFailed: m.Sum("identity_cert_refresh_total", proxytest.Labels{"result": "failure"}),
			ok:            m.Sum("response_total", proxytest.Labels{"direction": "outbound", "tls": "true", "server_id": webID, "classification": "success"}),
			failed:        m.Sum("response_total", proxytest.Labels{"direction": "outbound", "classification": "failure"}),
		}
	}
	start := read(c)
	if start.refreshOK < 1 || start.ok == 0 {
		t.Fatalf("client proxy at the start: %+v; want a certificate and mTLS responses", start)
	}
	waitFor(t, c, "two renewals of the client proxy's certificate", func(c context.Context) (bool, string, error) {
		now := read(c)
		if now.failed > 0 {
			return false, "", fmt.Errorf("%v failed requests during renewals", now.failed)
		}
		return now.refreshOK >= start.refreshOK+2, fmt.Sprintf("%+v", now), nil
	})
	renewed := read(c)
	if renewed.ok <= start.ok {
		t.Fatalf("no mTLS responses during the renewals: %+v → %+v", start, renewed)
	}

	// Identity stops right after a renewal of the client's certificate and
	// stays down for longer than a renewal period: the renewal due then
	// fails and is retried, and requests go on with the current
	// certificates. A failure is allowed only once one of the two proxies'
	// certificates has expired (if the outage reaches it).
	server := s.onlyPod(t, c, ns, "web")
	waitFor(t, c, "the client proxy's next renewal", func(c context.Context) (bool, string, error) {
		now := read(c)
		return now.refreshOK > renewed.refreshOK, fmt.Sprintf("%+v", now), nil
	})
	firstExpiry := func(c context.Context) time.Time {
		var first time.Time
		for _, p := range []*corev1.Pod{client, server} {
			at := time.Unix(int64(s.proxyMetrics(t, c, p).Sum("identity_cert_expiration_timestamp_seconds", nil)), 0)
			if first.IsZero() || at.Before(first) {
				first = at
			}
		}
		return first
	}
	renewed = read(c)
	expiry := firstExpiry(c)
	downAt := time.Now()
	s.scaleIdentity(t, c, 0)
	identityBack := false
	defer func() {
		if !identityBack {
			s.scaleIdentity(t, context.Background(), 1)
		}
	}()
	outage := renewalPeriod + 15*time.Second
	waitFor(t, c, fmt.Sprintf("a failed renewal and %v of identity down", outage), func(c context.Context) (bool, string, error) {
		now := read(c)
		if now.failed > 0 && time.Now().Before(expiry) {
			return false, "", fmt.Errorf("%v failed requests while identity is down, %v before the first certificate expires", now.failed, time.Until(expiry).Round(time.Second))
		}
		return now.refreshFailed > renewed.refreshFailed && time.Since(downAt) >= outage, fmt.Sprintf("%+v, down for %v", now, time.Since(downAt).Round(time.Second)), nil
	})
	down := read(c)
	if down.ok <= renewed.ok {
		t.Fatalf("no responses while identity was down: %+v → %+v", renewed, down)
	}
	s.scaleIdentity(t, c, 1)
	identityBack = true
	backAt := time.Now()
	waitFor(t, c, "both proxies to renew once identity is back", func(c context.Context) (bool, string, error) {
		now := read(c)
		if now.failed > down.failed && backAt.Before(expiry) && time.Now().Before(expiry) {
			return false, "", fmt.Errorf("%v failed requests before the first certificate expired", now.failed)
		}
		return now.refreshOK > down.refreshOK && firstExpiry(c).After(expiry), fmt.Sprintf("%+v", now), nil
	})
	// Recovered: requests succeed again.
	recovered := read(c)
	waitFor(t, c, "20 more responses after recovery", func(c context.Context) (bool, string, error) {
		now := read(c)
		if now.failed > recovered.failed {
			return false, "", fmt.Errorf("%v requests failed after both proxies renewed", now.failed-recovered.failed)
		}
		return now.ok >= recovered.ok+20, fmt.Sprintf("%+v", now), nil
	})
	end := read(c)
	t.Logf("identity down %v (renewal period %v); the first certificate %s; responses: %v ok, %v failed; refreshes: %v ok, %v failed",
		backAt.Sub(downAt).Round(time.Second), renewalPeriod, expiryNote(expiry, backAt), end.ok, end.failed, end.refreshOK, end.refreshFailed)
}

// expiryNote says whether the outage outlasted the first certificate.
func expiryNote(expiry, backAt time.Time) string {
	if expiry.Before(backAt) {
		return fmt.Sprintf("expired %v before identity came back", backAt.Sub(expiry).Round(time.Second))
	}
	return fmt.Sprintf("had %v left when identity came back", expiry.Sub(backAt).Round(time.Second))
}

// scaleIdentity sets the identity Deployment's replicas and waits until
// they are ready (or gone).
func (s *suite) scaleIdentity(t *testing.T, c context.Context, n int32) {
	t.Helper()
	s.scale(t, c, cpNamespace, meshmeta.IdentityService, n)
	waitFor(t, c, fmt.Sprintf("identity scaled to %d", n), func(c context.Context) (bool, string, error) {
		pods := s.pods(t, c, cpNamespace, map[string]string{"sluice.io/control-plane-component": "identity"})
		ready := 0
		for _, p := range pods {
			if podReady(&p) && p.DeletionTimestamp == nil {
				ready++
			}
		}
		if n == 0 {
			return len(pods) == 0, fmt.Sprintf("%d pods", len(pods)), nil
		}
		return ready == int(n), fmt.Sprintf("%d ready", ready), nil
	})
}
