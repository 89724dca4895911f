// Package healthcheck runs ordered, categorised checks and reports their
// results as they happen, in the manner of linkerd's pkg/healthcheck.
//
// A check is data: a Checker with a description, a hint shown when it fails,
// whether a failure is only a warning, how long it may retry, which checks
// must have passed before it runs, and the function that does the work.
// Checks share what they learn through an explicit State filled by the checks
// that others declare as prerequisites (Requires), never through ordering
// alone: a check whose prerequisite did not pass is reported as skipped and
// not run. A fatal check that fails ends the run. Results go to an Observer
// as they are produced; the table and JSON renderers in this package are two
// such observers.
package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/internal/nodefacts"
)

// CategoryID names a group of checks, as shown above them in the table
// output and as "categoryName" in the JSON output.
type CategoryID string

// CheckID names a check so that others can require it.
type CheckID string

// Category is an ordered group of checks.
type Category struct {
	ID       CategoryID
	Checkers []Checker
}

// Checker is one check. Exactly one of Check and Expand is set.
type Checker struct {
	// ID names the check for Requires; it may be empty when nothing
	// requires the check.
	ID CheckID
	// Description says what is checked, as a statement that holds when the
	// check passes ("agent is reachable").
	Description string
	// Hint tells the user what to do when the check fails.
	Hint string
	// Warning makes a failure a warning: reported, but not failing the run.
	Warning bool
	// Fatal ends the run when the check fails: no later check runs or is
	// reported. For checks without which nothing else can say anything
	// useful (the cluster is reachable, Sluice is installed).
	Fatal bool
	// RetryDeadline is how long the check keeps retrying while it fails,
	// from its first attempt. Zero runs it once.
	RetryDeadline time.Duration
	// Requires lists checks, run earlier, that must have passed for this one
	// to run. A check that requires one that failed, warned or was skipped
	// is itself skipped.
	Requires []CheckID
	// Check does the work. It may read the State fields filled by the checks
	// it requires and fill those it is documented to fill. An error wrapped
	// with Warn is reported as a warning even when Warning is false.
	Check func(ctx context.Context, s *State) error
	// Expand, instead of Check, turns the checker into checks that are known
	// only once its prerequisites have run (one per feature the agent
	// probed, say). They are run in its place, under its category; the
	// checker's ID then stands for all of them and passes when none fails.
	Expand func(s *State) []Checker
	// Detail, if set, returns a short note shown after the description when
	// the check passes (where cgroup v2 is mounted, say), read from State.
	Detail func(s *State) string
	// Category, set on a checker that Expand returns, reports it (and what
	// it expands to) under that category instead of its parent's: one
	// category per node, say. Empty: the parent's.
	Category CategoryID
}

// State is the context shared by the checks of one run. Each field is filled
// by the check named in its comment; a check that reads a field must require
// that check, which guarantees the field is set when the check runs. Maps
// are keyed by node name, "" standing for the machine meshctl runs on; use
// the Set methods, which make them.
type State struct {
	// Cluster is the Kubernetes cluster under check; set by the kubecheck
	// "can reach the Kubernetes API" check.
	Cluster *Cluster
	// Agents are the node agents' statuses; set by the ebpfcheck "agent is
	// reachable" check (key "") and by each node's "agent status is
	// reachable" check.
	Agents map[string]*api.Status
	// AgentPods are the agent DaemonSet's pods, ordered by node; set by the
	// ebpfcheck "agent DaemonSet exists" check.
	AgentPods []corev1.Pod
	// NodeFacts are the kernel facts of every node, or why they could not be
	// read; set by the kubecheck "kernel facts are read from every node"
	// check.
	NodeFacts map[string]NodeFacts
	// TrustAnchorsPEM is the identity trust anchors' PEM bundle; set by the
	// kubecheck "trust anchors are valid" check.
	TrustAnchorsPEM []byte
}

// Cluster is a connection to a Kubernetes cluster with Sluice's control
// plane (to be) in Namespace.
type Cluster struct {
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	// Namespace is the control plane's.
	Namespace string
	// ContextNamespace is the kubeconfig context's namespace, else
	// "default": where checks create (dry-run or short-lived) pods.
	ContextNamespace string
	// Version is the API server's version.
	Version *version.Info
}

// NodeFacts are one node's kernel facts and where they came from.
type NodeFacts struct {
	Facts nodefacts.Facts
	// Source says how they were read: "agent sluice/sluice-agent-x7k2p",
	// "probe pod".
	Source string
	// Err is why they could not be read; Facts is then empty.
	Err error
}

// SetAgent records the status of node's agent.
func (s *State) SetAgent(node string, st api.Status) {
	if s.Agents == nil {
		s.Agents = map[string]*api.Status{}
	}
	s.Agents[node] = &st
}

// Outcome is what became of one check.
type Outcome string

// The outcomes, as written in the JSON output.
const (
	OutcomeSuccess Outcome = "success"
	OutcomeWarning Outcome = "warning"
	OutcomeError   Outcome = "error"
	OutcomeSkipped Outcome = "skipped"
)

// Result is one check's outcome, or one failed attempt of a check that will
// be retried (Retrying).
type Result struct {
	Category    CategoryID
	Description string
	// Hint is the checker's hint; renderers show it only on failure.
	Hint string
	// Detail is the checker's success note, if any.
	Detail  string
	Outcome Outcome
	// Err is why the check failed or warned, or why it was skipped.
	Err error
	// Retrying marks a failed attempt that will be retried: not the check's
	// final result, and Outcome is that of the failed attempt.
	Retrying bool
}

// Observer receives results as they happen, in order.
type Observer func(Result)

// Warn marks err as a warning: a check returning it is reported as warning
// rather than failing, whatever its Checker.Warning says. Warn(nil) is nil.
func Warn(err error) error {
	if err == nil {
		return nil
	}
	return &warning{err}
}

type warning struct{ err error }

func (w *warning) Error() string { return w.err.Error() }
func (w *warning) Unwrap() error { return w.err }

// Skip marks why a check does not apply (the agent runs in iptables mode,
// Prometheus is not installed): a check returning it is reported as skipped,
// its error reading "not run: <reason>", and is not retried. Skip(nil) is
// nil.
func Skip(reason error) error {
	if reason == nil {
		return nil
	}
	return &skipped{reason}
}

type skipped struct{ err error }

func (s *skipped) Error() string { return "not run: " + s.err.Error() }
func (s *skipped) Unwrap() error { return s.err }

// DefaultRetryInterval is the pause between attempts of a failing check that
// has a retry deadline.
const DefaultRetryInterval = time.Second

// Runner runs categories of checks. Its zero value is ready to use.
type Runner struct {
	// RetryInterval is the pause between attempts; zero means
	// DefaultRetryInterval.
	RetryInterval time.Duration
}

// Run runs the checks of categories in order, filling s, and reports every
// result to observe. It reports whether every check passed or only warned;
// skipped checks do not count as failures (whatever they depend on does).
// A check that requires an ID no earlier check has is skipped, and Validate
// catches such mistakes in tests.
func (r Runner) Run(ctx context.Context, categories []Category, s *State, observe Observer) bool {
	run := &run{Runner: r, state: s, observe: observe, done: map[CheckID]Result{}, ok: true}
	if run.RetryInterval <= 0 {
		run.RetryInterval = DefaultRetryInterval
	}
	for _, c := range categories {
		for _, ch := range c.Checkers {
			if run.stopped {
				return false
			}
			run.check(ctx, c.ID, ch)
		}
	}
	return run.ok
}

// Run runs categories with a zero Runner.
func Run(ctx context.Context, categories []Category, s *State, observe Observer) bool {
	return Runner{}.Run(ctx, categories, s, observe)
}

// Validate reports the first mistake in categories' definitions: a checker
// with neither or both of Check and Expand, a duplicate ID, or a prerequisite
// that no earlier check has.
func Validate(categories []Category) error {
	seen := map[CheckID]bool{}
	for _, c := range categories {
		for _, ch := range c.Checkers {
			if (ch.Check == nil) == (ch.Expand == nil) {
				return fmt.Errorf("check %q: set exactly one of Check and Expand", ch.Description)
			}
			for _, req := range ch.Requires {
				if !seen[req] {
					return fmt.Errorf("check %q: requires %q, which no earlier check has", ch.Description, req)
				}
			}
			if ch.ID != "" {
				if seen[ch.ID] {
					return fmt.Errorf("check %q: duplicate ID %q", ch.Description, ch.ID)
				}
				seen[ch.ID] = true
			}
		}
	}
	return nil
}

type run struct {
	Runner
	state   *State
	observe Observer
	done    map[CheckID]Result
	ok      bool
	// stopped is set when a fatal check failed.
	stopped bool
}

// check runs one checker, or reports it skipped, and returns its outcome.
func (r *run) check(ctx context.Context, cat CategoryID, ch Checker) Outcome {
	if ch.Category != "" {
		cat = ch.Category
	}
	res := Result{Category: cat, Description: ch.Description, Hint: ch.Hint}
	if err := r.unmet(ch.Requires); err != nil {
		res.Outcome, res.Err = OutcomeSkipped, err
		return r.finish(ch.ID, res)
	}
	if ch.Expand != nil {
		res.Outcome = OutcomeSuccess
		for _, sub := range ch.Expand(r.state) {
			if r.stopped {
				break
			}
			switch r.check(ctx, cat, sub) {
			case OutcomeError:
				res.Outcome = OutcomeError
			case OutcomeWarning, OutcomeSkipped:
				if res.Outcome == OutcomeSuccess {
					res.Outcome = OutcomeWarning
				}
			}
		}
		if ch.ID != "" {
			r.done[ch.ID] = res
		}
		return res.Outcome
	}

	deadline := time.Now().Add(ch.RetryDeadline)
	for {
		err := ch.Check(ctx, r.state)
		res.Outcome, res.Err = outcome(ch, err)
		if res.Outcome == OutcomeSkipped || err == nil || ch.RetryDeadline <= 0 || ctx.Err() != nil || time.Now().Add(r.RetryInterval).After(deadline) {
			break
		}
		retry := res
		retry.Retrying = true
		r.observe(retry)
		select {
		case <-ctx.Done():
		case <-time.After(r.RetryInterval):
		}
	}
	if res.Outcome == OutcomeSuccess && ch.Detail != nil {
		res.Detail = ch.Detail(r.state)
	}
	out := r.finish(ch.ID, res)
	if out == OutcomeError && ch.Fatal {
		r.stopped = true
	}
	return out
}

func (r *run) finish(id CheckID, res Result) Outcome {
	if id != "" {
		r.done[id] = res
	}
	if res.Outcome == OutcomeError {
		r.ok = false
	}
	r.observe(res)
	return res.Outcome
}

// unmet returns why the first prerequisite in reqs that did not pass keeps a
// check from running, or nil.
func (r *run) unmet(reqs []CheckID) error {
	for _, id := range reqs {
		res, ok := r.done[id]
		switch {
		case !ok:
			return fmt.Errorf("not run: requires check %q, which has not run", id)
		case res.Outcome == OutcomeError:
			return fmt.Errorf("not run: requires %q, which failed", res.Description)
		case res.Outcome == OutcomeWarning:
			return fmt.Errorf("not run: requires %q, which warned", res.Description)
		case res.Outcome == OutcomeSkipped:
			return fmt.Errorf("not run: requires %q, which was skipped", res.Description)
		}
	}
	return nil
}

func outcome(ch Checker, err error) (Outcome, error) {
	var w *warning
	var sk *skipped
	switch {
	case err == nil:
		return OutcomeSuccess, nil
	case errors.As(err, &sk):
		return OutcomeSkipped, err
	case errors.As(err, &w):
		return OutcomeWarning, err
	case ch.Warning:
		return OutcomeWarning, err
	default:
		return OutcomeError, err
	}
}
