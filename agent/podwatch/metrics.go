package podwatch

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of an attempt to enroll a pod (label outcome of
// sluice_agent_pod_enrollments_total).
const (
	OutcomeEnrolled = "enrolled"
	// OutcomeFailed: the agent refused or failed; the watcher retries.
	OutcomeFailed = "failed"
	// OutcomeRejected: a config annotation is bad; the pod is not enrolled
	// until it changes.
	OutcomeRejected = "rejected"
)

// Reasons of an unenrollment (label reason of
// sluice_agent_pod_unenrollments_total).
const (
	// ReasonDeleted: the pod is gone from the node.
	ReasonDeleted = "deleted"
	// ReasonFinished: the pod Succeeded or Failed.
	ReasonFinished = "finished"
	// ReasonUnmeshed: the pod lost its label, or is no longer one the agent
	// steers (mode, host network).
	ReasonUnmeshed = "unmeshed"
	// ReasonReplaced: a pod of the same name with another UID took its
	// place.
	ReasonReplaced = "replaced"
	// ReasonSandbox: the pod's network namespace changed (sandbox
	// recreated); it is enrolled again in the new one.
	ReasonSandbox = "sandbox_recreated"
)

type watchMetrics struct {
	enrollments   *prometheus.CounterVec
	unenrollments *prometheus.CounterVec
	pending       prometheus.Gauge
	reconciles    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*watchMetrics, error) {
	m := &watchMetrics{
		enrollments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_agent_pod_enrollments_total",
			Help: "Attempts of the pod watcher to enroll a meshed pod, by outcome (enrolled, failed, rejected).",
		}, []string{"outcome"}),
		unenrollments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_agent_pod_unenrollments_total",
			Help: "Pods the pod watcher unenrolled, by reason (deleted, finished, unmeshed, replaced, sandbox_recreated).",
		}, []string{"reason"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sluice_agent_pods_pending",
			Help: "Meshed pods whose proxy runs but whose processes the agent cannot find yet.",
		}),
		reconciles: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sluice_agent_pod_reconciles_total",
			Help: "Full passes of the pod watcher over the node's pods and the agent's enrollments.",
		}),
	}
	for _, o := range []string{OutcomeEnrolled, OutcomeFailed, OutcomeRejected} {
		m.enrollments.WithLabelValues(o)
	}
	for _, r := range []string{ReasonDeleted, ReasonFinished, ReasonUnmeshed, ReasonReplaced, ReasonSandbox} {
		m.unenrollments.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.enrollments, m.unenrollments, m.pending, m.reconciles} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register pod watcher metrics: %w", err)
		}
	}
	return m, nil
}
