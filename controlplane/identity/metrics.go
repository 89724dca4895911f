package identity

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mesh/sluice/internal/pki"
)

// Outcomes of Certify, the values of identity_certify_requests_total's
// outcome label.
const (
	OutcomeOK               = "ok"
	OutcomeInvalidIdentity  = "invalid_identity"
	OutcomeInvalidCSR       = "invalid_csr"
	OutcomeNoToken          = "no_token"
	OutcomeUnauthenticated  = "unauthenticated"
	OutcomeWrongAudience    = "wrong_audience"
	OutcomePermissionDenied = "permission_denied"
	OutcomeReviewFailed     = "token_review_failed"
	OutcomeIssuerExpired    = "issuer_expired"
	OutcomeSignFailed       = "sign_failed"
)

// metrics are the service's Prometheus metrics.
type metrics struct {
	certify *prometheus.CounterVec
	reloads *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, issuer func() *pki.Issuer, now func() time.Time) (*metrics, error) {
	m := &metrics{
		certify: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "identity_certify_requests_total",
			Help: "Certify requests by outcome: ok, or why the request was refused or failed.",
		}, []string{"outcome"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "identity_issuer_reloads_total",
			Help: "Changes of the issuer files seen, by result: ok (new issuer in use), rejected (invalid; the old one kept) or error (unreadable).",
		}, []string{"result"}),
	}
	expiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "identity_issuer_expiry_timestamp_seconds",
		Help: "When the issuer in use expires, in seconds since the Unix epoch.",
	}, func() float64 {
		return float64(issuer().Certificate().NotAfter.UnixNano()) / 1e9
	})
	remaining := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "identity_issuer_expires_in_seconds",
		Help: "Seconds until the issuer in use expires (negative once it has).",
	}, func() float64 {
		return issuer().Certificate().NotAfter.Sub(now()).Seconds()
	})
	for _, c := range []prometheus.Collector{m.certify, m.reloads, expiry, remaining} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register identity metrics: %w", err)
		}
	}
	m.certify.WithLabelValues(OutcomeOK)
	m.reloads.WithLabelValues("ok")
	return m, nil
}
