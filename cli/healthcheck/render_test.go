package healthcheck

import (
	"bytes"
	"errors"
	"testing"

	"github.com/sluice-mesh/sluice/cli/internal/golden"
)

// sampleResults covers every outcome, a detail, a multi-line error and two
// categories.
var sampleResults = []Result{
	{Category: "kernel", Description: "kernel is 5.10 or newer", Hint: "upgrade", Detail: "6.18.44-fc-v669", Outcome: OutcomeSuccess},
	{Category: "kernel", Description: "BPF filesystem is mounted", Hint: "mount it: `mount -t bpf bpf /sys/fs/bpf`",
		Outcome: OutcomeError, Err: errors.New("/sys/fs/bpf is not a bpf filesystem")},
	{Category: "sluice-agent", Description: "agent is reachable", Hint: "start it", Outcome: OutcomeError,
		Err: errors.New("not yet"), Retrying: true},
	{Category: "sluice-agent", Description: "agent is reachable", Hint: "start it", Outcome: OutcomeSuccess},
	{Category: "sluice-agent", Description: "programs are attached", Hint: "restart the agent", Outcome: OutcomeError,
		Err: errors.New("2 programs are not attached:\n  a (sockops on /sys/fs/cgroup)\n  b (sk_msg on sock_pairs)")},
	{Category: "sluice-agent", Description: "maps have room", Hint: "raise max pods", Outcome: OutcomeWarning,
		Err: errors.New("map pods is 85% full (870/1024 entries)")},
	{Category: "sluice-agent", Description: "pins are present", Hint: "not shown", Outcome: OutcomeSkipped,
		Err: errors.New(`not run: requires "programs are attached", which failed`)},
}

func render(r Renderer, results []Result, success bool) error {
	for _, res := range results {
		r.Observe(res)
	}
	return r.Finish(success)
}

func TestTableRenderer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		results []Result
		success bool
	}{
		{"table_mixed", sampleResults, false},
		{"table_success", sampleResults[:1], true},
		{"table_empty", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := render(NewTableRenderer(&buf), tc.results, tc.success); err != nil {
				t.Fatal(err)
			}
			golden.Assert(t, tc.name, buf.Bytes())
		})
	}
}

func TestJSONRenderer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		results []Result
		success bool
	}{
		{"json_mixed", sampleResults, false},
		{"json_empty", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := render(NewJSONRenderer(&buf), tc.results, tc.success); err != nil {
				t.Fatal(err)
			}
			golden.Assert(t, tc.name, buf.Bytes())
		})
	}
}
