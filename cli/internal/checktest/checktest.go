// Package checktest runs checks in tests and compares their results with
// the outcomes and error fragments a test expects.
package checktest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/cli/healthcheck"
)

// Expect is the wanted outcome of a check and fragments of its error.
type Expect struct {
	Outcome healthcheck.Outcome
	ErrHas  []string
}

// Pass is a check that passed.
var Pass = Expect{Outcome: healthcheck.OutcomeSuccess}

// Fails, Warns and Skips are a check that failed, warned or was skipped
// with an error containing every fragment.
func Fails(frags ...string) Expect { return Expect{healthcheck.OutcomeError, frags} }
func Warns(frags ...string) Expect { return Expect{healthcheck.OutcomeWarning, frags} }
func Skips(frags ...string) Expect { return Expect{healthcheck.OutcomeSkipped, frags} }

// Key is how Run keys a result: "<category>: <description>".
func Key(r healthcheck.Result) string { return string(r.Category) + ": " + r.Description }

// Run validates and runs cats, retrying every millisecond, and returns the
// final results by Key and whether the run passed. It fails t when a check
// is reported twice or fails without a hint.
func Run(t testing.TB, cats []healthcheck.Category) (map[string]healthcheck.Result, bool) {
	t.Helper()
	if err := healthcheck.Validate(cats); err != nil {
		t.Fatal(err)
	}
	got := map[string]healthcheck.Result{}
	ok := healthcheck.Runner{RetryInterval: time.Millisecond}.Run(context.Background(), cats, &healthcheck.State{}, func(r healthcheck.Result) {
		if r.Retrying {
			return
		}
		key := Key(r)
		if _, dup := got[key]; dup {
			t.Errorf("%s reported twice", key)
		}
		if r.Outcome != healthcheck.OutcomeSuccess && r.Outcome != healthcheck.OutcomeSkipped && r.Hint == "" {
			t.Errorf("%s failed without a hint", key)
		}
		got[key] = r
	})
	return got, ok
}

// Compare fails t for every check of want not reported as wanted, and for
// every reported check want does not have.
func Compare(t testing.TB, got map[string]healthcheck.Result, want map[string]Expect) {
	t.Helper()
	for key, w := range want {
		r, ok := got[key]
		if !ok {
			t.Errorf("%s: not reported", key)
			continue
		}
		if r.Outcome != w.Outcome {
			t.Errorf("%s: %s (%v), want %s", key, r.Outcome, r.Err, w.Outcome)
		}
		for _, frag := range w.ErrHas {
			if r.Err == nil || !strings.Contains(r.Err.Error(), frag) {
				t.Errorf("%s: error %v, want it to contain %q", key, r.Err, frag)
			}
		}
	}
	for key, r := range got {
		if _, ok := want[key]; !ok {
			t.Errorf("%s: reported (%s %v), not expected", key, r.Outcome, r.Err)
		}
	}
}
